"""Marketplace source forms, git clones (bounded, never prompting) and bounded manifest downloads."""

from __future__ import annotations

import os
import select
import stat
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from codebuddy.fs.paths import Resolver
from codebuddy.plugins.sources import (
    Git,
    ManifestFetcher,
    Source,
    parse_marketplace_source,
    redact,
    source_from_object,
)
from codebuddy.web.errors import ApiError
from tests.helpers import _result
from tests.plugins.helpers import Hanging, Pages, PumpedStub, git, git_commit, needs_git


@pytest.fixture
def resolver(tmp_path: Path) -> Resolver:
    return Resolver(tmp_path, home=tmp_path / "user")


@pytest.mark.parametrize(("text", "expected"), [
    ("anthropics/claude-code", Source("github", "anthropics/claude-code")),
    ("owner/repo#v1.2", Source("github", "owner/repo", "v1.2")),
    ("https://example.com/marketplace", Source("url", "https://example.com/marketplace")),
    ("https://example.com/m/marketplace.json", Source("url", "https://example.com/m/marketplace.json")),
    ("https://gitlab.example/team/plugins.git", Source("git", "https://gitlab.example/team/plugins.git")),
    ("https://github.com/owner/repo", Source("git", "https://github.com/owner/repo")),
    ("https://github.com/owner/repo.git#main", Source("git", "https://github.com/owner/repo.git", "main")),
    ("git@github.com:owner/repo.git", Source("git", "git@github.com:owner/repo.git")),
    ("ssh://git@host:2222/x/y.git", Source("git", "ssh://git@host:2222/x/y.git")),
    ("file:///srv/repos/market", Source("git", "file:///srv/repos/market")),
    ("  owner/repo  ", Source("github", "owner/repo")),
])
def test_remote_forms(text: str, expected: Source, resolver: Resolver) -> None:
    assert parse_marketplace_source(text, resolver) == expected


def test_local_forms(tmp_path: Path, resolver: Resolver) -> None:
    """Folders and files; relative to the workspace; ~ is the user's home."""
    (tmp_path / "market").mkdir()
    (tmp_path / "market" / "marketplace.json").write_text("{}")
    (tmp_path / "user" / "m").mkdir(parents=True)
    assert parse_marketplace_source("./market", resolver) == Source("directory", str(tmp_path / "market"))
    assert parse_marketplace_source(str(tmp_path / "market"), resolver).kind == "directory"
    assert parse_marketplace_source("market/marketplace.json", resolver) == Source(
        "file", str(tmp_path / "market" / "marketplace.json"))
    assert parse_marketplace_source("~/m", resolver) == Source("directory", str(tmp_path / "user" / "m"))
    assert parse_marketplace_source("market", resolver).kind == "directory"


@pytest.mark.parametrize(("text", "words"), [
    ("", "source is empty"),
    ("./missing", "does not exist"),
    ("not a source", "is not a known form"),
    ("https://", "has no host"),
    ("https://host:99999/x", "not a valid URL"),
    ("a\nb", "control character"),
])
def test_bad_forms(text: str, words: str, resolver: Resolver) -> None:
    with pytest.raises(ApiError) as caught:
        parse_marketplace_source(text, resolver)
    assert caught.value.code == "BAD_REQUEST" and words in caught.value.message
    assert caught.value.details[0]["field"] == "source"


def test_source_objects(tmp_path: Path, resolver: Resolver) -> None:
    assert source_from_object({"source": "github", "repo": "o/r", "ref": "v2"}, resolver) == Source(
        "github", "o/r", "v2")
    assert source_from_object({"source": "url", "url": "https://h/r.git", "path": "sub"}) == Source(
        "url", "https://h/r.git", None, "sub")
    assert source_from_object({"source": "directory", "path": "."}, resolver) == Source("directory", str(tmp_path))
    assert Source("github", "o/r", "v2").to_json() == {"source": "github", "repo": "o/r", "ref": "v2"}
    assert Source("file", "/x/m.json").to_json() == {"source": "file", "path": "/x/m.json"}
    for bad in ({"source": "npm", "package": "x"}, {"source": "github"}, {"source": "github", "repo": "x"},
                {"source": "git", "url": "u", "path": "../x"}, {"source": "directory", "path": "/nope"}, "x"):
        with pytest.raises(ApiError):
            source_from_object(bad, resolver)
    with pytest.raises(ApiError, match="not allowed here"):
        source_from_object({"source": "directory", "path": "."})


def test_redact() -> None:
    assert redact("https://user:secret@host/x.git") == "https://***@host/x.git"
    assert redact("https://host/x.git") == "https://host/x.git"
    assert Source("git", "https://u:p@h/r.git").display() == "https://***@h/r.git"


# --------------------------------------------------------------------------- git


@needs_git
def test_clone_depth_one_and_ref(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("one")
    first = git_commit(repo, "one")
    git(repo, "tag", "v1")
    (repo / "a.txt").write_text("two")
    second = git_commit(repo, "two")
    g = Git()
    g.clone(Source("git", f"file://{repo}"), tmp_path / "head")
    assert (tmp_path / "head" / "a.txt").read_text() == "two" and g.head(tmp_path / "head") == second
    assert git(tmp_path / "head", "rev-list", "--count", "HEAD") == "1"
    g.clone(Source("git", f"file://{repo}", "v1"), tmp_path / "tag")
    assert (tmp_path / "tag" / "a.txt").read_text() == "one" and g.head(tmp_path / "tag") == first
    assert g.head(tmp_path) is None


@needs_git
def test_clone_failure_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ApiError) as caught:
        Git().clone(Source("git", f"file://{tmp_path}/missing.git"), tmp_path / "x")
    assert caught.value.code == "SOURCE_UNREACHABLE" and caught.value.status == 502
    assert caught.value.message.startswith(f"git clone of file://{tmp_path}/missing.git failed: ")
    assert "does not appear to be a git repository" in caught.value.message
    assert not (tmp_path / "x").exists()


def test_clone_never_prompts_and_is_killed_after_its_timeout(tmp_path: Path) -> None:
    """A git that hangs (waiting for a password, a dead server) is killed with its group."""
    fake = tmp_path / "git"
    marker = tmp_path / "child.pid"
    fake.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {marker}\necho \"$GIT_TERMINAL_PROMPT $GIT_SSH_COMMAND\" "
                    f"> {tmp_path}/env\nwait\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    g = Git(executable=str(fake), timeout=0.5, environ={"PATH": os.environ["PATH"], "GIT_DIR": "/elsewhere"})
    with pytest.raises(ApiError) as caught:
        g.clone(Source("github", "o/r"), tmp_path / "dest")
    assert (caught.value.code, caught.value.message) == (
        "SOURCE_UNREACHABLE", "git clone of o/r did not finish within 0.5 s")
    assert (tmp_path / "env").read_text().strip() == "0 ssh -o BatchMode=yes"
    grandchild = int(marker.read_text())
    try:
        fd = os.pidfd_open(grandchild)
    except ProcessLookupError:
        pass  # already gone and reaped
    else:
        try:  # readable once it has exited (it got SIGKILL with its group)
            assert select.select([fd], [], [], 10)[0]
        finally:
            os.close(fd)
    assert "GIT_DIR" not in g.environ


def test_no_git(tmp_path: Path) -> None:
    g = Git(environ={"PATH": str(tmp_path)})
    with pytest.raises(ApiError) as caught:
        g.clone(Source("github", "o/r"), tmp_path / "x")
    assert caught.value.code == "SERVICE_UNAVAILABLE" and "git is not installed" in caught.value.message


# --------------------------------------------------------------------------- downloads


def fetch(fetcher: ManifestFetcher, url: str) -> Any:
    results: list[Any] = []
    fetcher.fetch(url).addBoth(results.append)
    return results


def test_fetch_ok_and_http_errors() -> None:
    pages = Pages({"/m.json": (200, b'{"name": "m"}'), "/gone": (410, b"gone")})
    fetcher = ManifestFetcher(PumpedStub(pages), Clock())
    assert _result(fetcher.fetch("https://example.com/m.json")) == b'{"name": "m"}'
    [failure] = fetch(fetcher, "https://example.com/gone")
    assert (failure.value.code, failure.value.message) == ("SOURCE_UNREACHABLE",
                                                           "https://example.com/gone answered HTTP 410")


def test_fetch_bounded_in_size_and_time() -> None:
    pages = Pages({"/big": (200, b"x" * 2048)})
    [failure] = fetch(ManifestFetcher(PumpedStub(pages), Clock(), max_bytes=1024), "https://h/big")
    assert failure.value.message == "cannot download https://h/big: the answer is larger than 1024 bytes"
    clock = Clock()
    hanging = Hanging()
    results = fetch(ManifestFetcher(hanging, clock, timeout=30), "https://u:p@h/slow")
    assert results == [] and len(hanging.pending) == 1
    clock.advance(30)
    [failure] = results
    assert (failure.value.code, failure.value.message) == (
        "SOURCE_UNREACHABLE", "cannot download https://***@h/slow: no answer within 30 s")
