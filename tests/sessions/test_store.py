"""The session store on a real temporary home: appends, the cached listing, rename, delete, history."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codebuddy.sessions import store as store_module
from codebuddy.sessions import transcript
from codebuddy.sessions.store import InvalidSessionId, SessionStore, UnknownSession
from codebuddy.sessions.transcript import project_id
from tests.sessions.helpers import T0, assistant, iso, line, tool_call, user, write_transcript

WS = "/home/u/app"
CLOCK = T0 / 1000


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> SessionStore:
    return SessionStore(home, clock=lambda: CLOCK)


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


class Counting:
    """Counts the lines the fold sees and the bytes read from transcripts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lines = 0
        original = transcript.Folder.line

        def counted(folder: Any, raw: bytes) -> None:
            self.lines += 1
            original(folder, raw)

        monkeypatch.setattr(store_module.Folder, "line", counted)


# --------------------------------------------------------------------------- append


def test_append_writes_whole_lines_with_defaults(store: SessionStore, home: Path) -> None:
    path = store.append("s1", WS, [user("hi"), {"type": "message", "role": "assistant", "content": "yo",
                                                "timestamp": "2020-01-01T00:00:00.000Z", "cwd": "/elsewhere"}])
    assert path == home / "projects" / "home-u-app" / "s1.jsonl"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    first, second = (json.loads(raw) for raw in path.read_bytes().splitlines())
    assert (first["sessionId"], first["cwd"], first["timestamp"]) == ("s1", WS, iso(T0))
    assert (second["timestamp"], second["cwd"]) == ("2020-01-01T00:00:00.000Z", "/elsewhere")  # kept
    assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == 2
    store.append("s1", WS, [{"type": "message", "role": "user", "content": "line\nbreak \ud800"}])
    assert path.read_bytes().count(b"\n") == 3  # newlines escaped; a lone surrogate as \\ud800
    assert store.append("s2", WS, []) == home / "projects" / "home-u-app" / "s2.jsonl"
    assert not (home / "projects" / "home-u-app" / "s2.jsonl").exists()


def test_append_refuses_bad_ids_and_relative_cwds(store: SessionStore, home: Path) -> None:
    for bad in ("../x", "a/b", ".", ""):
        with pytest.raises(InvalidSessionId):
            store.append(bad, WS, [user("x")])
    with pytest.raises(ValueError):
        store.append("s1", "relative/dir", [user("x")])
    with pytest.raises(ValueError):  # NaN is not JSON: nothing written
        store.append("s1", WS, [user("ok"), {"type": "message", "timestamp": float("nan")}])
    assert not (home / "projects").exists()


def test_concurrent_appends_never_interleave(store: SessionStore, home: Path) -> None:
    big = "y" * 100_000

    def writer(n: int) -> None:
        for i in range(20):
            store.append("s1", WS, [user(f"{n}-{i}-{big}")])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (home / "projects" / "home-u-app" / "s1.jsonl").read_bytes().splitlines()
    assert len(lines) == 80 and all(json.loads(raw)["role"] == "user" for raw in lines)


# --------------------------------------------------------------------------- listing


def test_rows_of_one_project_and_all(store: SessionStore, home: Path) -> None:
    write_transcript(home, WS, "a", [user("hello", T0), assistant("hi", T0 + 10)])
    write_transcript(home, "/srv/other", "b", [user("other", T0 + 5, cwd="/srv/other")])
    write_transcript(home, WS, "empty", [{"type": "file-history-snapshot"},
                                         {"type": "custom-title", "customTitle": "x"}])
    write_transcript(home, WS, "tools-only", [*tool_call(T0)])
    (home / "projects" / "home-u-app" / "notes.txt").write_text("not a transcript")
    (home / "projects" / "home-u-app" / ".hidden.jsonl").write_text(line(user("x")).decode())
    (home / "projects" / "home-u-app" / "tool-results").mkdir()
    (home / "projects" / "home-u-app" / "tool-results" / "c.jsonl").write_text(line(user("x")).decode())
    (home / "projects" / "stray.jsonl").write_text(line(user("x")).decode())
    rows = store.rows(project_id(WS))
    assert [row["id"] for row in rows] == ["a"]
    assert rows[0] == {
        "id": "a", "name": "hello", "createdAt": T0, "updatedAt": T0 + 10, "messageCount": 2, "isCurrent": False,
        "isUserDefinedTitle": 0, "projectId": "home-u-app", "cwd": WS, "status": "pending", "isPlayground": False,
    }
    assert sorted(by_id(store.rows())) == ["a", "b"]
    assert store.rows("nope") == [] and store.rows("..") == [] and store.rows("a/b") == []


def test_malformed_lines_are_skipped(store: SessionStore, home: Path) -> None:
    write_transcript(home, WS, "m", [
        b"\n", b"garbage\n", b"[1, 2]\n", b"\xff\xfe\x00\n", b'{"type": "message", "role":\n', b"null\n",
        b'{"type": "message", "role": "user", "content": 5, "timestamp": []}\n',
        user("real", T0), b'{"deep": ' + b"[" * 100_000 + b"\n",
        {"type": "custom-title", "customTitle": 42}, {"type": "message", "role": ["user"], "content": "x"},
        assistant("fine", T0 + 1),
    ])
    [row] = store.rows(project_id(WS))
    assert (row["name"], row["messageCount"], row["createdAt"], row["updatedAt"]) == ("real", 3, T0, T0 + 1)


def test_times_fall_back_to_the_file(store: SessionStore, home: Path) -> None:
    path = write_transcript(home, WS, "t", [user("no time", cwd=None)])
    os.utime(path, ns=(T0 * 1_000_000, (T0 + 7) * 1_000_000))
    [row] = store.rows(project_id(WS))
    assert (row["createdAt"], row["updatedAt"], row["cwd"]) == (T0 + 7, T0 + 7, None)


def test_playground(store: SessionStore, home: Path) -> None:
    cwd = str(home / "playground" / "p1")
    store.append("p", cwd, [user("play", cwd=None)])
    [row] = store.rows(project_id(cwd))
    assert row["isPlayground"] is True


# --------------------------------------------------------------------------- the cache


def test_unchanged_files_are_not_read_again(store: SessionStore, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(5):
        write_transcript(home, WS, f"s{n}", [user("q", T0), *tool_call(T0 + 1), assistant("a", T0 + 3)])
    counting = Counting(monkeypatch)
    first = store.rows()
    assert counting.lines == 20
    opened: list[str] = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: (opened.append(str(path)), real_open(path, *a, **k))[1])
    assert store.rows() == first
    assert counting.lines == 20 and opened == []


def test_a_grown_file_is_parsed_from_where_it_was(store: SessionStore, home: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Appends (a new turn, a rename at the end) are read alone; the row is the row of a full parse."""
    path = write_transcript(home, WS, "g", [user("first", T0), *tool_call(T0 + 1), assistant("a", T0 + 3)])
    counting = Counting(monkeypatch)
    store.rows()
    before = counting.lines
    write_transcript(home, WS, "g", [user("second", T0 + 10), {"type": "custom-title", "customTitle": "Renamed"}])
    [row] = store.rows()
    assert counting.lines - before == 2
    assert (row["name"], row["isUserDefinedTitle"], row["messageCount"], row["updatedAt"]) == ("Renamed", 1, 3, T0 + 10)
    assert row == SessionStore(store.home).rows()[0]
    assert path.stat().st_size > 0


def test_a_line_being_written_counts_once_complete(store: SessionStore, home: Path) -> None:
    path = write_transcript(home, WS, "w", [user("q", T0)])
    text = line(assistant("partial", T0 + 5))
    with open(path, "ab") as handle:
        handle.write(text[:20])
    [row] = store.rows()
    assert (row["messageCount"], row["updatedAt"]) == (1, T0)
    with open(path, "ab") as handle:
        handle.write(text[20:-1])  # complete JSON, no newline yet
    [row] = store.rows()
    assert (row["messageCount"], row["updatedAt"]) == (2, T0 + 5)
    with open(path, "ab") as handle:
        handle.write(b"\n" + line(assistant("more", T0 + 6)))
    [row] = store.rows()
    assert (row["messageCount"], row["updatedAt"]) == (3, T0 + 6)  # the fragment is not counted twice


def test_replaced_and_rewritten_files_are_parsed_again(store: SessionStore, home: Path) -> None:
    path = write_transcript(home, WS, "r", [user("old question", T0), assistant("a", T0 + 1), assistant("b", T0 + 2)])
    assert store.rows()[0]["name"] == "old question"
    # replaced (new inode), longer than before
    tmp = path.with_name("r.tmp")
    tmp.write_bytes(line(user("new question", T0 + 100)) + line(assistant("x" * 500, T0 + 101)))
    os.replace(tmp, path)
    [row] = store.rows()
    assert (row["name"], row["messageCount"], row["createdAt"]) == ("new question", 2, T0 + 100)
    # rewritten in place (truncated and written again: same inode), longer than before
    inode = path.stat().st_ino
    path.write_bytes(line(user("rewritten", T0 + 150)) + line(assistant("y" * 600, T0 + 151))
                     + line(user("later", T0 + 200)))
    assert path.stat().st_ino == inode
    [row] = store.rows()
    assert (row["name"], row["messageCount"], row["createdAt"]) == ("rewritten", 3, T0 + 150)
    # truncated
    with open(path, "r+b") as handle:
        handle.truncate(len(line(user("rewritten", T0 + 150))))
    [row] = store.rows()
    assert (row["messageCount"], row["updatedAt"]) == (1, T0 + 150)


def test_deleted_files_and_projects_leave_the_cache(store: SessionStore, home: Path) -> None:
    write_transcript(home, WS, "a", [user("a", T0)])
    write_transcript(home, "/srv/b", "b", [user("b", T0)])
    assert len(store.rows()) == 2
    (home / "projects" / "home-u-app" / "a.jsonl").unlink()
    assert [r["id"] for r in store.rows("home-u-app")] == []
    assert store._cache["home-u-app"] == {}
    (home / "projects" / "srv-b" / "b.jsonl").unlink()
    (home / "projects" / "srv-b").rmdir()
    assert store.rows() == []
    assert "srv-b" not in store._cache


@settings(max_examples=80)
@given(st.lists(st.integers(1, 400), max_size=12), st.booleans(), st.sampled_from([1, 7, 64, 1 << 20]))
def test_any_sequence_of_appends_lists_like_a_cold_parse(tmp_path_factory: Any, cuts: list[int], big: bool,
                                                         read_chunk: int) -> None:
    """
    However the bytes arrive (cut anywhere, mid-line too) and whatever the read size, the cached
    row equals the row a fresh store reads at once.
    """
    home = tmp_path_factory.mktemp("home")
    items = [user("q1", T0), *tool_call(T0 + 1, "o" * (5000 if big else 10)), assistant("a1", T0 + 3),
             {"type": "ai-title", "aiTitle": "AI"}, user("q2", T0 + 4), b"broken line\n",
             {"type": "custom-title", "customTitle": "Mine"}, assistant("a2", T0 + 6)]
    data = b"".join(item if isinstance(item, bytes) else line(item) for item in items)
    path = home / "projects" / "home-u-app" / "p.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    cached = SessionStore(home)
    position = 0
    for cut in [*cuts, len(data)]:
        chunk = data[position: position + cut]
        position += len(chunk)
        with open(path, "ab") as handle:
            handle.write(chunk)
        expected = SessionStore(home).rows()
        with mock.patch.object(store_module, "READ_CHUNK", read_chunk):
            assert cached.rows() == expected
    assert cached.rows()[0]["name"] == "Mine"


def test_overlong_lines_are_skipped(store: SessionStore, home: Path) -> None:
    with mock.patch.object(store_module, "MAX_LINE", 400), mock.patch.object(store_module, "READ_CHUNK", 16):
        items = [user("q", T0), assistant("x" * 1000, T0 + 9), assistant("a", T0 + 3)]
        path = write_transcript(home, WS, "long", items)
        [row] = store.rows()
        assert (row["messageCount"], row["updatedAt"]) == (2, T0 + 3)
        with open(path, "ab") as handle:
            handle.write(line(assistant("y" * 1000, T0 + 20))[:-1])  # an overlong line, not finished
        [row] = store.rows()
        assert (row["messageCount"], row["updatedAt"]) == (2, T0 + 3)
        write_transcript(home, WS, "long", [b"\n", user("after", T0 + 30)])
        [row] = store.rows()
        assert (row["messageCount"], row["updatedAt"]) == (3, T0 + 30)
        assert row == SessionStore(home).rows()[0]


# --------------------------------------------------------------------------- rename, delete, history


def test_rename_appends_a_custom_title(store: SessionStore, home: Path) -> None:
    path = write_transcript(home, WS, "s1", [user("q", T0), assistant("a", T0 + 1)])
    before = path.read_bytes()
    store.rename("s1", "Performance Optimization Discussion")
    after = path.read_bytes()
    assert after.startswith(before)
    assert json.loads(after[len(before):]) == {"type": "custom-title", "customTitle": "Performance Optimization "
                                               "Discussion", "sessionId": "s1", "timestamp": iso(T0)}
    [row] = store.rows()
    assert (row["name"], row["isUserDefinedTitle"], row["updatedAt"]) == ("Performance Optimization Discussion", 1,
                                                                           T0 + 1)
    with pytest.raises(UnknownSession):
        store.rename("nope", "x")
    with pytest.raises(InvalidSessionId):
        store.rename("../s1", "x")


def test_delete_removes_transcript_and_file_history_only(store: SessionStore, home: Path, tmp_path: Path) -> None:
    keep = write_transcript(home, WS, "keep", [user("k", T0)])
    gone = write_transcript(home, WS, "gone", [user("g", T0)])
    also = write_transcript(home, "/srv/x", "gone", [user("g", T0)])
    history = home / "file-history" / "gone"
    (history / "v1").mkdir(parents=True)
    (history / "v1" / "file.txt").write_text("backup")
    (home / "file-history" / "keep").mkdir()
    assert len(store.rows()) == 3
    store.delete("gone")
    assert not gone.exists() and not also.exists() and not history.exists()
    assert keep.exists() and (home / "file-history" / "keep").exists()
    assert [r["id"] for r in store.rows()] == ["keep"]
    with pytest.raises(UnknownSession):
        store.delete("gone")
    # a file-history symlink is removed, not followed
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    (home / "file-history" / "keep").rmdir()
    (home / "file-history" / "keep").symlink_to(outside)
    store.delete("keep")
    assert (outside / "precious").exists() and not (home / "file-history" / "keep").exists()


def test_history(store: SessionStore, home: Path) -> None:
    path = write_transcript(home, WS, "h", [user("do it", T0), assistant("done", T0 + 1), b"junk\n"])
    assert store.find("h") == [path]
    assert [item["role"] for item in store.items(path)] == ["user", "assistant"]
    history = store.history("h")
    assert (history.name, [(r.user_input, r.final_reply) for r in history.requests]) == ("do it", [("do it", "done")])
    with pytest.raises(UnknownSession):
        store.history("nope")


def test_workspaces(store: SessionStore, home: Path) -> None:
    write_transcript(home, WS, "a", [user("a", T0)])
    write_transcript(home, WS, "b", [user("b", T0 + 50, cwd="/home/u/app")])
    write_transcript(home, "/srv/new", "c", [user("c", T0 + 100, cwd="/srv/new")])
    write_transcript(home, "/srv/nocwd", "d", [user("d", T0 + 200, cwd=None)])
    assert [(w.path, w.label) for w in store.workspaces()] == [("/srv/new", "new"), (WS, "app")]
