"""The settings files: scopes, the stat-keyed cache, malformed files, modes, git exclude, locked updates."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from codebuddy.settings import store as store_module
from codebuddy.settings.store import LOCAL_EXCLUDE, SettingsFileError, SettingsStore, scope_name
from codebuddy.web.errors import ApiError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> SettingsStore:
    (tmp_path / "ws").mkdir()
    return SettingsStore(tmp_path / "home", tmp_path / "ws")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def hand_edit(path: Path, text: str) -> None:
    """Rewrite ``path`` in place (same inode, as an editor saving in place) with a new mtime."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 5_000_000_000, before + 5_000_000_000))


def increment(data: dict[str, Any]) -> None:
    data["n"] = data.get("n", 0) + 1


# -- scopes and paths


def test_paths(store: SettingsStore, tmp_path: Path) -> None:
    assert store.path("user") == tmp_path / "home" / "settings.json"
    assert store.path("project") == tmp_path / "ws" / ".codebuddy" / "settings.json"
    assert store.path("local") == tmp_path / "ws" / ".codebuddy" / "settings.local.json"


def test_scope_names() -> None:
    assert scope_name(None) == "user"
    assert scope_name("") == "user"
    assert scope_name(None, default="project") == "project"
    assert [scope_name(s) for s in ("user", "project", "local", "project-local", "projectLocal")] == [
        "user", "project", "local", "local", "local"]
    for bad in ("cli", "USER", "global", "policy"):
        with pytest.raises(ApiError) as caught:
            scope_name(bad)
        assert caught.value.code == "BAD_REQUEST"
        assert caught.value.details == [{"field": "scope", "message": "unknown scope"}]


# -- read and update


def test_missing_files_read_empty(store: SettingsStore) -> None:
    assert [store.read(s) for s in ("user", "project", "local")] == [{}, {}, {}]
    assert store.version("user") is None
    assert store.read_all() == ({"user": {}, "project": {}, "local": {}}, [])


def test_update_then_read(store: SettingsStore) -> None:
    result = store.update("user", lambda d: d.update(theme="dark", permissions={"allow": ["Read(**)"]}))
    assert result == {"theme": "dark", "permissions": {"allow": ["Read(**)"]}}
    assert store.read("user") == result
    assert json.loads(store.path("user").read_text()) == result
    assert store.path("user").read_text().endswith("}\n")
    store.update("user", lambda d: d.__setitem__("model", "m"))
    assert store.read("user") == {"theme": "dark", "permissions": {"allow": ["Read(**)"]}, "model": "m"}
    # the other scopes are other files
    store.update("project", lambda d: d.__setitem__("model", "p"))
    store.update("local", lambda d: d.__setitem__("model", "l"))
    scopes, problems = store.read_all()
    assert problems == []
    assert (scopes["user"]["model"], scopes["project"]["model"], scopes["local"]["model"]) == ("m", "p", "l")


def test_update_keeps_unknown_keys_and_unicode(store: SettingsStore) -> None:
    path = store.path("user")
    path.parent.mkdir(parents=True)
    path.write_text('{"fromANewerVersion": {"x": [1, 2]}, "name": "Zoë ✓"}')
    store.update("user", lambda d: d.__setitem__("theme", "dark"))
    assert json.loads(path.read_text()) == {"fromANewerVersion": {"x": [1, 2]}, "name": "Zoë ✓", "theme": "dark"}
    assert "Zoë ✓" in path.read_text(encoding="utf-8")


def test_read_returns_a_copy(store: SettingsStore) -> None:
    store.update("user", lambda d: d.__setitem__("env", {"A": "1"}))
    first = store.read("user")
    first["env"]["A"] = "changed"
    first["new"] = True
    assert store.read("user") == {"env": {"A": "1"}}


def test_empty_file_is_empty_settings(store: SettingsStore) -> None:
    path = store.path("user")
    path.parent.mkdir(parents=True)
    path.write_text("  \n")
    assert store.read("user") == {}
    store.update("user", increment)
    assert store.read("user") == {"n": 1}


def test_a_mutation_that_raises_writes_nothing(store: SettingsStore) -> None:
    store.update("user", lambda d: d.__setitem__("theme", "dark"))
    before = store.path("user").read_bytes()

    def fail(data: dict[str, Any]) -> None:
        data["theme"] = "light"
        raise ApiError("BAD_REQUEST", "no")

    with pytest.raises(ApiError):
        store.update("user", fail)
    assert store.path("user").read_bytes() == before
    assert store.read("user") == {"theme": "dark"}
    assert [p.name for p in store.path("user").parent.iterdir() if p.name.endswith(".tmp")] == []


# -- the cache


def test_cache_picks_up_a_hand_edit(store: SettingsStore) -> None:
    store.update("user", lambda d: d.__setitem__("theme", "dark"))
    assert store.read("user") == {"theme": "dark"}
    version = store.version("user")
    # same size, same inode: only the content and the mtime differ
    hand_edit(store.path("user"), store.path("user").read_text().replace("dark", "blue"))
    assert store.version("user") != version
    assert store.read("user") == {"theme": "blue"}


def test_unchanged_file_is_parsed_once(store: SettingsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    path = store.path("project")
    path.parent.mkdir(parents=True)
    path.write_text('{"model": "x"}')
    calls: list[str] = []
    original = store_module.parse

    def counting(scope: str, where: Path, text: str) -> dict[str, Any]:
        calls.append(scope)
        return original(scope, where, text)

    monkeypatch.setattr(store_module, "parse", counting)
    for _ in range(3):
        assert store.read("project") == {"model": "x"}
    assert calls == ["project"]
    hand_edit(path, '{"model": "y"}')
    assert store.read("project") == {"model": "y"}
    assert calls == ["project", "project"]


def test_file_removed_reads_empty(store: SettingsStore) -> None:
    store.update("local", increment)
    assert store.read("local") == {"n": 1}
    store.path("local").unlink()
    assert store.read("local") == {}


def test_a_change_while_reading_is_not_cached_as_current(store: SettingsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write landing between the read of the text and the cache entry is seen by the next read."""
    path = store.path("user")
    path.parent.mkdir(parents=True)
    path.write_text('{"theme": "dark"}')
    original = Path.read_text
    edits: list[bool] = []

    def read_then_edit(self: Path, *args: Any, **kwargs: Any) -> str:
        text = original(self, *args, **kwargs)
        if self == path and not edits:
            edits.append(True)
            hand_edit(path, '{"theme": "changed meanwhile"}')
        return text

    monkeypatch.setattr(Path, "read_text", read_then_edit)
    assert store.read("user") == {"theme": "dark"}
    assert store.read("user") == {"theme": "changed meanwhile"}


def test_a_hand_edit_right_after_an_update_is_seen(store: SettingsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache entry of an update never stands for a file changed since the update wrote it."""
    original = store_module.atomic_write
    path = store.path("user")

    def write_then_edit(target: Path, data: bytes, mode: int = 0o644) -> None:
        original(target, data, mode)
        hand_edit(target, '{"theme": "edited by hand"}')

    monkeypatch.setattr(store_module, "atomic_write", write_then_edit)
    store.update("user", lambda d: d.__setitem__("theme", "dark"))
    assert json.loads(path.read_text()) == {"theme": "edited by hand"}
    assert store.read("user") == {"theme": "edited by hand"}


# -- malformed files


@pytest.mark.parametrize(("text", "line", "column", "reason"), [
    ('{\n  "theme": "dark",\n  "model": oops\n}\n', 3, 12, "not valid JSON: Expecting value"),
    ('{"a": 1,}', 1, 9, "not valid JSON: Expecting property name enclosed in double quotes"),
    ('{\n\n  "a": 1\n  "b": 2\n}', 4, 3, "not valid JSON: Expecting ',' delimiter"),
    ('["Allow: Read(**)"]', 1, 1, "the top level must be a JSON object"),
    ('"dark"', 1, 1, "the top level must be a JSON object"),
])
def test_malformed_file(store: SettingsStore, text: str, line: int, column: int, reason: str) -> None:
    path = store.path("user")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    os.chmod(path, 0o640)
    before = path.read_bytes()
    with pytest.raises(SettingsFileError) as caught:
        store.read("user")
    error = caught.value
    found = (error.scope, error.path, error.line, error.column, error.reason)
    assert found == ("user", str(path), line, column, reason)
    assert str(error) == f"{path}:{line}:{column}: {reason}"
    assert error.to_json() == {"scope": "user", "path": str(path), "line": line, "column": column, "message": reason}
    api = error.api_error()
    assert (api.code, api.status, api.details) == ("SETTINGS_INVALID", 409, error.to_json())
    # the cached error is raised again; an update never overwrites the file
    with pytest.raises(SettingsFileError):
        store.read("user")
    with pytest.raises(SettingsFileError) as again:
        store.update("user", increment)
    assert (again.value.line, again.value.column) == (line, column)
    assert path.read_bytes() == before
    assert mode(path) == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["locks", "settings.json"]
    # the other scopes still work
    store.update("project", increment)
    scopes, problems = store.read_all()
    assert scopes == {"project": {"n": 1}, "local": {}}
    assert [p.to_json() for p in problems] == [error.to_json()]
    # fixed by hand: usable again
    hand_edit(path, '{"theme": "dark"}')
    store.update("user", increment)
    assert store.read("user") == {"theme": "dark", "n": 1}


def test_not_utf8(store: SettingsStore) -> None:
    path = store.path("local")
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"theme": "\xff"}')
    with pytest.raises(SettingsFileError) as caught:
        store.read("local")
    assert (caught.value.scope, caught.value.line, caught.value.column) == ("local", 1, 1)
    assert caught.value.reason.startswith("not UTF-8 text")
    with pytest.raises(SettingsFileError):
        store.update("local", increment)
    assert path.read_bytes() == b'{"theme": "\xff"}'


def test_unreadable_file_is_a_problem_in_read_all(store: SettingsStore) -> None:
    store.path("project").mkdir(parents=True)  # stat works, reading fails (even for root)
    scopes, [problem] = store.read_all()
    assert scopes == {"user": {}, "local": {}}
    assert (problem.scope, problem.path, problem.line, problem.column) == ("project", str(store.path("project")), 0, 0)
    assert problem.reason.startswith("cannot read")


# -- modes


def test_new_files_modes(store: SettingsStore) -> None:
    old = os.umask(0o022)
    try:
        for scope in ("user", "project", "local"):
            store.update(scope, increment)
    finally:
        os.umask(old)
    assert mode(store.path("user")) == 0o600
    assert mode(store.path("user").parent) == 0o700
    assert mode(store.path("project")) == 0o644
    assert mode(store.path("local")) == 0o644
    locks = store.home / "locks"
    assert mode(locks) == 0o700
    assert all(mode(lock) == 0o600 for lock in locks.iterdir())


def test_existing_mode_is_kept(store: SettingsStore) -> None:
    path = store.path("user")
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    os.chmod(path, 0o640)
    store.update("user", increment)
    assert mode(path) == 0o640
    os.chmod(path, 0o604)
    store.update("user", increment)
    assert mode(path) == 0o604
    assert store.read("user") == {"n": 2}


def test_update_replaces_the_file_atomically(store: SettingsStore) -> None:
    store.update("user", increment)
    inode = store.path("user").stat().st_ino
    link = store.path("user").with_name("reader-holds-this")
    os.link(store.path("user"), link)  # a reader holding the old file keeps reading it whole
    store.update("user", increment)
    assert store.path("user").stat().st_ino != inode
    assert json.loads(link.read_text()) == {"n": 1}
    assert store.read("user") == {"n": 2}


# -- git exclude


def test_local_file_is_excluded_from_git_once(store: SettingsStore) -> None:
    (store.workspace / ".git" / "info").mkdir(parents=True)
    exclude = store.workspace / ".git" / "info" / "exclude"
    exclude.write_text("# git ls-files --others --exclude-from=.git/info/exclude\n*.swp")
    store.update("local", increment)
    assert exclude.read_text() == (
        "# git ls-files --others --exclude-from=.git/info/exclude\n*.swp\n" + LOCAL_EXCLUDE + "\n")
    store.update("local", increment)
    store.path("local").unlink()
    store.update("local", increment)  # created again: the line is there already
    assert exclude.read_text().splitlines().count(LOCAL_EXCLUDE) == 1
    assert LOCAL_EXCLUDE == ".codebuddy/settings.local.json"


def test_git_exclude_created_when_missing(store: SettingsStore) -> None:
    (store.workspace / ".git").mkdir()
    store.update("local", increment)
    assert (store.workspace / ".git" / "info" / "exclude").read_text() == LOCAL_EXCLUDE + "\n"


def test_no_git_no_exclude(store: SettingsStore) -> None:
    store.update("local", increment)
    assert not (store.workspace / ".git").exists()
    (store.workspace / ".git").write_text("gitdir: /elsewhere\n")  # a worktree's .git file is left alone
    store.path("local").unlink()
    store.update("local", increment)
    assert (store.workspace / ".git").read_text() == "gitdir: /elsewhere\n"


def test_other_scopes_do_not_touch_git(store: SettingsStore) -> None:
    (store.workspace / ".git").mkdir()
    store.update("project", increment)
    store.update("user", increment)
    assert not (store.workspace / ".git" / "info").exists()


# -- concurrent writers

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from codebuddy.settings.store import SettingsStore

    home, workspace, me, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = SettingsStore(Path(home), Path(workspace))

    def change(data, i):
        data["n"] = data.get("n", 0) + 1
        data.setdefault("ids", []).append(f"{me}-{i}")

    print("ready", flush=True)
    sys.stdin.read()  # wait until every writer is ready
    for i in range(count):
        store.update("user", lambda data: change(data, i))
""")


def test_concurrent_processes_never_lose_an_update(store: SettingsStore) -> None:
    writers, count = 3, 100
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    processes = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(store.home), str(store.workspace), f"w{w}", str(count)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(REPO))
        for w in range(writers)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline() == b"ready\n"
        for process in processes:  # start them together
            assert process.stdin is not None
            process.stdin.close()
        for process in processes:
            assert process.wait(120) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    data = store.read("user")
    assert data["n"] == writers * count
    assert sorted(data["ids"]) == sorted(f"w{w}-{i}" for w in range(writers) for i in range(count))
    for w in range(writers):  # each writer's own updates in its order
        assert [x for x in data["ids"] if x.startswith(f"w{w}-")] == [f"w{w}-{i}" for i in range(count)]


@pytest.mark.parametrize("shared", [True, False], ids=["one store", "a store each"])
def test_concurrent_threads_never_lose_an_update(tmp_path: Path, shared: bool) -> None:
    (tmp_path / "ws").mkdir()
    first = SettingsStore(tmp_path / "home", tmp_path / "ws")
    stores = [first if shared else SettingsStore(tmp_path / "home", tmp_path / "ws") for _ in range(4)]
    count = 100
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def writer(store: SettingsStore) -> None:
        try:
            barrier.wait(30)
            for _ in range(count):
                store.update("project", increment)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert not any(t.is_alive() for t in threads)
    assert first.read("project") == {"n": len(stores) * count}
