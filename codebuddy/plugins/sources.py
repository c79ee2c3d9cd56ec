# -*- test-case-name: tests.plugins.test_sources -*-
"""
Where marketplaces and plugins come from, and fetching them.

A marketplace source is what a user types (Claude Code's forms): ``owner/repo`` (GitHub, unless
the workspace has a path of that name), a git
URL (``https://host/x.git``, ``git@host:x.git``, ``ssh://``, ``git://``, ``file://``; ``#ref``
picks a branch or tag), an ``http(s)`` URL of a ``marketplace.json``, a local folder or a path
to a ``marketplace.json`` (relative paths resolve against the workspace, ``~`` against the
user's home). It is stored as Claude Code stores it in ``known_marketplaces.json``:
``{"source": "github", "repo"}``, ``{"source": "git", "url"}``, ``{"source": "url", "url"}``,
``{"source": "directory", "path"}``, ``{"source": "file", "path"}`` (plus ``ref``).

Git repositories are cloned with ``git clone --depth 1`` in a child process of its own session,
called from a thread (``run_blocking``), never prompting (no terminal, ssh in batch mode) and
killed with its group after a timeout. URLs are fetched with treq, bounded in time and size.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from codebuddy.fs.paths import Resolver
from codebuddy.plugins.manifest import GITHUB_REPO_RE, MAX_MANIFEST_BYTES
from codebuddy.web.client import BodyTooLarge, discard_body, read_body
from codebuddy.web.errors import ApiError

__all__ = ["Git", "ManifestFetcher", "Source", "parse_marketplace_source", "source_from_object"]

CLONE_TIMEOUT = 120.0
FETCH_TIMEOUT = 30.0
GIT_HOSTS = ("github.com", "gitlab.com", "bitbucket.org")
_SCP_RE = re.compile(r"^[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+:[^\s]+$")
_KEYS = {"github": "repo", "git": "url", "url": "url", "directory": "path", "file": "path"}
_ACCEPTED = ('"owner/repo" (GitHub), a git URL (https://host/repo.git, git@host:repo.git, file:///path/repo), '
             "an https:// URL of a marketplace.json, or a local folder or marketplace.json path")


@attrs.frozen
class Source:
    """
    Where something comes from. ``kind``: github, git (a repository to clone), url (a
    marketplace.json to download), directory, file. ``location``: the repo, URL or absolute
    path; ``ref``: a branch or tag; ``path``: a folder inside a cloned repository.
    """

    kind: str
    location: str
    ref: str | None = None
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Claude Code's form (``known_marketplaces.json``)."""
        out: dict[str, Any] = {"source": self.kind, _KEYS[self.kind]: self.location}
        if self.ref:
            out["ref"] = self.ref
        if self.path:
            out["path"] = self.path
        return out

    @property
    def is_git(self) -> bool:
        return self.kind in ("github", "git")

    @property
    def clone_url(self) -> str:
        return f"https://github.com/{self.location}.git" if self.kind == "github" else self.location

    def display(self) -> str:
        """One line for messages (credentials in URLs removed)."""
        text = self.location if self.kind in ("github", "directory", "file") else redact(self.location)
        return f"{text}#{self.ref}" if self.ref else text


def redact(url: str) -> str:
    """``https://user:secret@host/x`` -> ``https://***@host/x`` (messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.scheme and "@" in parts.netloc and parts.scheme != "ssh":
        return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
    return url


def _bad(message: str, field: str = "source") -> ApiError:
    return ApiError("BAD_REQUEST", message, [{"field": field, "message": message}])


def _split_ref(text: str) -> tuple[str, str | None]:
    base, sep, ref = text.partition("#")
    return base, (ref or None) if sep else None


def parse_marketplace_source(text: str, resolver: Resolver) -> Source:
    """A typed marketplace source (blocking: local paths are looked at). 400 when it is none of the forms."""
    text = text.strip()
    if not text:
        raise _bad(f"source is empty: give {_ACCEPTED}")
    if "\0" in text or any(c in text for c in "\r\n"):
        raise _bad("source contains a control character")
    lowered = text.lower()
    if lowered.startswith(("http://", "https://")):
        base, ref = _split_ref(text)
        try:
            parts = urlsplit(base)
            parts.port  # noqa: B018 (validates the port)
        except ValueError as exc:
            raise _bad(f"source is not a valid URL ({exc})") from None
        if not parts.hostname:
            raise _bad("source URL has no host")
        segments = [s for s in parts.path.split("/") if s]
        if parts.path.endswith(".git") or (parts.hostname.lower() in GIT_HOSTS and len(segments) == 2):
            return Source("git", base, ref)
        return Source("url", text)
    if lowered.startswith(("ssh://", "git://", "file://")) or _SCP_RE.match(text):
        base, ref = _split_ref(text)
        return Source("git", base, ref)
    local = text.startswith(("/", "./", "../", "~")) or text in (".", "..")
    path = resolver.resolve(text, "source")
    if not local and not os.path.exists(path):  # "owner/repo" unless the workspace has that path
        base, ref = _split_ref(text)
        if GITHUB_REPO_RE.match(base) and not base.startswith("."):
            return Source("github", base, ref)
    if os.path.isdir(path):
        return Source("directory", path)
    if os.path.isfile(path):
        return Source("file", path)
    if local:
        raise _bad(f"source {text!r} does not exist ({path})")
    raise _bad(f"source {text!r} is not a known form: give {_ACCEPTED}")


def source_from_object(value: Any, resolver: Resolver | None = None, field: str = "source") -> Source:
    """A source object (settings' ``extraKnownMarketplaces`` form, a plugin entry's ``source``)."""
    if not isinstance(value, dict):
        raise _bad(f"{field} must be a string or a source object", field)
    kind = value.get("source")
    if kind not in _KEYS:
        raise _bad(f"{field}.source must be one of {', '.join(_KEYS)}", field)
    key = _KEYS[kind]
    location = value.get(key)
    if not isinstance(location, str) or not location.strip():
        raise _bad(f'a {kind} source needs "{key}"', field)
    ref = value.get("ref")
    sub = value.get("path") if kind in ("github", "git", "url") else None
    if ref is not None and not isinstance(ref, str):
        raise _bad(f"{field}.ref must be a string", field)
    if sub is not None and (not isinstance(sub, str) or ".." in Path(sub).parts):
        raise _bad(f"{field}.path must be a folder inside the repository", field)
    if kind == "github" and not GITHUB_REPO_RE.match(location):
        raise _bad(f'{field}.repo must look like "owner/repo"', field)
    if kind in ("directory", "file"):
        if resolver is None:
            raise _bad(f"{field}: a {kind} source is not allowed here", field)
        location = resolver.resolve(location, field)
        if not (os.path.isdir(location) if kind == "directory" else os.path.isfile(location)):
            raise _bad(f"{field}: {kind} {location} does not exist", field)
    return Source(kind, location.strip(), ref or None, sub or None)


# --------------------------------------------------------------------------- git


class Git:
    """``git clone --depth 1`` and ``rev-parse HEAD``, bounded in time (blocking: call from a thread)."""

    def __init__(self, executable: str | None = None, timeout: float = CLONE_TIMEOUT,
                 environ: Mapping[str, str] | None = None) -> None:
        self.executable = executable
        self.timeout = timeout
        base = dict(os.environ if environ is None else environ)
        for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
            base.pop(name, None)
        base["GIT_TERMINAL_PROMPT"] = "0"
        base["GCM_INTERACTIVE"] = "never"
        base.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        self.environ = base

    def _git(self) -> str:
        found = self.executable or shutil.which("git", path=self.environ.get("PATH"))
        if not found:
            raise ApiError("SERVICE_UNAVAILABLE", "git is not installed on the daemon's machine: install git to add "
                                                  "git or GitHub marketplaces and plugins")
        return found

    def _run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        """(exit status, stdout, stderr); ``TimeoutExpired`` once the group is killed."""
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=self.environ, start_new_session=True)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.communicate()
            raise
        return process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def clone(self, source: Source, dest: Path) -> None:
        """Clone ``source`` into ``dest`` (which must not exist). 502 ``SOURCE_UNREACHABLE`` on failure."""
        argv = [self._git(), "-c", "protocol.ext.allow=never", "-c", "advice.detachedHead=false",
                "clone", "--depth", "1", "--quiet"]
        if source.ref:
            argv += ["--branch", source.ref]
        argv += ["--", source.clone_url, str(dest)]
        shown = source.display()
        try:
            code, _out, err = self._run(argv, self.timeout)
        except subprocess.TimeoutExpired:
            shutil.rmtree(dest, ignore_errors=True)
            raise ApiError("SOURCE_UNREACHABLE", f"git clone of {shown} did not finish within {self.timeout:g} s",
                           {"source": shown}) from None
        if code != 0:
            shutil.rmtree(dest, ignore_errors=True)
            lines = [line.strip() for line in err.splitlines() if line.strip()]
            fatal = [line.split(":", 1)[1].strip() for line in lines if line.startswith(("fatal:", "error:"))]
            reason = redact(fatal[0] if fatal else lines[-1]) if lines else f"exit status {code}"
            raise ApiError("SOURCE_UNREACHABLE", f"git clone of {shown} failed: {reason}", {"source": shown})

    def head(self, repo: Path) -> str | None:
        """The commit checked out in ``repo`` (None when it is not a repository or git is missing)."""
        if not (repo / ".git").exists():
            return None
        try:
            code, out, _err = self._run([self._git(), "-C", str(repo), "rev-parse", "HEAD"], 10.0)
        except (ApiError, subprocess.TimeoutExpired, OSError):
            return None
        sha = out.strip()
        return sha if code == 0 and re.fullmatch(r"[0-9a-f]{40,64}", sha) else None


# --------------------------------------------------------------------------- http


class ManifestFetcher:
    """GET a ``marketplace.json`` with treq: redirects followed, bounded in time and size."""

    def __init__(self, http: Any, clock: IReactorTime, timeout: float = FETCH_TIMEOUT,
                 max_bytes: int = MAX_MANIFEST_BYTES) -> None:
        self.http = http
        self.clock = clock
        self.timeout = timeout
        self.max_bytes = max_bytes

    def fetch(self, url: str) -> Deferred[bytes]:
        """The body of a 200 answer; 502 ``SOURCE_UNREACHABLE`` for anything else."""
        return self._bounded(self._fetch(url), url)

    async def _fetch(self, url: str) -> bytes:
        response = await self.http.request("GET", url, headers={"Accept": "application/json"},
                                           allow_redirects=True, unbuffered=True)
        if response.code != 200:
            await discard_body(response)
            raise ApiError("SOURCE_UNREACHABLE", f"{redact(url)} answered HTTP {response.code}",
                           {"source": redact(url), "status": response.code})
        return await read_body(response, self.max_bytes)

    def _bounded(self, coroutine: Coroutine[Any, Any, bytes], url: str) -> Deferred[bytes]:
        d = ensureDeferred(coroutine).addTimeout(self.timeout, self.clock)
        shown = redact(url)

        def failed(failure: Failure) -> Any:
            if failure.check(ApiError):
                return failure
            if failure.check(TimeoutError):
                reason = f"no answer within {self.timeout:g} s"
            elif failure.check(BodyTooLarge):
                reason = str(failure.value)
            else:
                value = failure.value
                inner = getattr(value, "reasons", None)
                if inner:
                    value = getattr(inner[0], "value", inner[0])
                reason = f"{type(value).__name__}: {value}".rstrip(": ")
            raise ApiError("SOURCE_UNREACHABLE", f"cannot download {shown}: {reason}", {"source": shown})

        d.addErrback(failed)
        return d
