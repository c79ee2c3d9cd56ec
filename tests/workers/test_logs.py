"""Log locations, the automatic type choice, tails and UTF-8 boundaries."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codebuddy.web.errors import ApiError
from codebuddy.workers.logs import complete_utf8, log_sources, project_id, read_tail, select_log, telemetry_path
from codebuddy.workers.registry import WorkerRecord


def test_project_id() -> None:
    """CodeBuddy's compressed working directory (acp-codebuddy.md §2.15)."""
    assert project_id("/home/u/my.app") == "home-u-my.app"
    assert project_id("C:\\Users\\x") == "C-Users-x"
    assert project_id("/a//b/-c/") == "a-b-c"
    assert project_id("/") == "root"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_sources_and_automatic_choice(tmp_path: Path) -> None:
    """telemetry > process > debug > transcript; availableTypes lists what exists, in that order."""
    record = WorkerRecord(pid=7, cwd="/srv/app", session_id="s1", name="job")
    with pytest.raises(ApiError) as caught:
        select_log(tmp_path, record, None)
    assert (caught.value.code, caught.value.details) == ("WORKER_NO_LOGS", {"availableTypes": []})

    write(tmp_path / "projects" / "srv-app" / "s1.jsonl", '{"type":"message"}\n')
    assert select_log(tmp_path, record, None).type == "transcript"
    write(tmp_path / "debug" / "s1.txt", "debug\n")
    assert select_log(tmp_path, record, None).type == "debug"
    write(tmp_path / "logs" / "job.log", "out\n")
    assert select_log(tmp_path, record, None).type == "process"
    write(telemetry_path(tmp_path, "/srv/app", "2024-01-01"), "old\n")
    newest = write(telemetry_path(tmp_path, "/srv/app", "2024-01-02"), "new\n")
    write(tmp_path / "logs" / "2024-01-03" / "other.log", "someone else's workspace\n")
    choice = select_log(tmp_path, record, None)
    assert (choice.type, choice.path, choice.available) == (
        "telemetry", newest, ["telemetry", "process", "debug", "transcript"])
    assert select_log(tmp_path, record, "debug").path == tmp_path / "debug" / "s1.txt"

    # An explicit logPath wins over <home>/logs/<name>.log for the process log.
    own = write(tmp_path / "elsewhere" / "out.log", "mine\n")
    assert log_sources(tmp_path, WorkerRecord(pid=7, name="job", log_path=str(own)))["process"] == own
    bare = WorkerRecord(pid=8)
    with pytest.raises(ApiError) as caught:
        select_log(tmp_path, bare, "telemetry")
    assert caught.value.code == "WORKER_NO_LOGS"


def test_tail(tmp_path: Path) -> None:
    """The last N lines, with or without a final newline; fewer lines give the whole file."""
    path = write(tmp_path / "a.log", "".join(f"line {i}\n" for i in range(1000)))
    tail = read_tail(path, 3)
    assert tail.content == "line 997\nline 998\nline 999\n" and tail.offset == path.stat().st_size
    write(path, "a\nb\nc")
    assert read_tail(path, 2).content == "b\nc"
    assert read_tail(path, 1).content == "c"
    assert read_tail(path, 10).content == "a\nb\nc"
    write(path, "")
    assert read_tail(path, 5) == read_tail(path, 5).__class__("", 0)
    write(path, "\n\n\n")
    assert read_tail(path, 2).content == "\n\n"


def test_tail_across_blocks_and_clipped(tmp_path: Path) -> None:
    """Lines longer than a read block; a tail bigger than max_bytes starts at a character boundary."""
    long_line = "é" * 50_000
    path = write(tmp_path / "b.log", f"first\n{long_line}\nlast\n")
    assert read_tail(path, 2).content == f"{long_line}\nlast\n"
    clipped = read_tail(path, 2, max_bytes=1001)
    assert clipped.content.endswith("last\n") and "\ufffd" not in clipped.content
    assert clipped.offset == path.stat().st_size


def test_tail_holds_back_a_split_character(tmp_path: Path) -> None:
    """A character cut by a writer mid-way is not sent; offset stops before it."""
    path = write(tmp_path / "c.log", b"ok\n" + "€".encode()[:2])
    tail = read_tail(path, 5)
    assert tail.content == "ok\n" and tail.offset == 3


@given(st.text(), st.integers(min_value=0))
def test_complete_utf8_property(text: str, cut: int) -> None:
    """Any prefix of valid UTF-8 cut at complete_utf8 decodes, and loses at most 3 bytes."""
    data = text.encode("utf-8", "surrogatepass")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return
    prefix = data[: cut % (len(data) + 1)]
    keep = complete_utf8(prefix)
    prefix[:keep].decode("utf-8")
    assert len(prefix) - keep <= 3
