"""The transcript rules: projectId, ids, timestamps, names, message counts, the list's fold and the history."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from codebuddy.sessions.transcript import (
    FALLBACK_NAME,
    Folder,
    Summary,
    content_text,
    history_of,
    loads,
    project_id,
    short_name,
    timestamp_ms,
    valid_project_id,
    valid_session_id,
)
from tests.sessions.helpers import T0, assistant, iso, tool_call, user


def reference_project_id(cwd: str) -> str:
    """The rule as the reference states it, one character at a time."""
    out: list[str] = []
    for char in cwd:
        char = "-" if char in "/\\:" else char
        if char == "-" and out and out[-1] == "-":
            continue
        out.append(char)
    return "".join(out).strip("-") or "-"


# --------------------------------------------------------------------------- projectId


def test_project_id_examples() -> None:
    assert project_id("/home/u/my.app") == "home-u-my.app"
    assert project_id("C:\\Users\\x") == "C-Users-x"
    assert project_id("/path/to/workspace") == "path-to-workspace"
    assert project_id("/home/u/app/") == "home-u-app"
    assert project_id("//srv//a--b:/c") == "srv-a-b-c"
    assert project_id("/") == "-"


@given(st.text(alphabet=st.sampled_from("ab.-/\\: é_"), max_size=40) | st.text(max_size=40))
def test_project_id_rule(cwd: str) -> None:
    """Same as the stated rule; no separators, no edge or double dashes; idempotent; never empty."""
    result = project_id(cwd)
    assert result == reference_project_id(cwd)
    assert not re.search(r"[/\\:]", result)
    assert "--" not in result
    assert result == "-" or not (result.startswith("-") or result.endswith("-"))
    assert project_id(result) == result
    assert result


@given(st.lists(st.text(alphabet="abc.", min_size=1, max_size=5), min_size=1, max_size=5), st.data())
def test_project_id_ignores_the_separator_kind(parts: list[str], data: st.DataObject) -> None:
    """Paths that differ only in which separators (and how many) join them share a project."""
    seps = [data.draw(st.sampled_from(["/", "\\", ":", "//", "-/", "\\:"])) for _ in range(len(parts) + 1)]
    mixed = seps[0] + "".join(p + s for p, s in zip(parts, seps[1:], strict=True))
    assert project_id(mixed) == project_id("/" + "/".join(parts))


def test_ids() -> None:
    for good in ("b7f3c2d0-1a2b-4c5d-8e9f-001122334455", "s1", "a.b_c-d", "_x"):
        assert valid_session_id(good), good
    for bad in ("", ".", "..", ".hidden", "a/b", "..\\x", "a\0b", "x" * 201, "a b", "é"):
        assert not valid_session_id(bad), bad
    assert valid_project_id("home-u-app") and valid_project_id("-")
    for bad in ("", ".", "..", "a/b", "a\\b", "a:b"):
        assert not valid_project_id(bad), bad


# --------------------------------------------------------------------------- values


def test_timestamps() -> None:
    assert timestamp_ms("2025-06-15T15:06:40.000Z") == T0
    assert timestamp_ms("2025-06-15T15:06:40.250+00:00") == T0 + 250
    assert timestamp_ms("2025-06-15T17:06:40+02:00") == T0
    assert timestamp_ms("2025-06-15T15:06:40") == T0  # naive: UTC
    assert timestamp_ms(T0) == T0
    assert timestamp_ms(T0 / 1000) == T0  # seconds
    for bad in (None, "", "yesterday", True, [], {}, float("nan"), float("inf"), -5):
        assert timestamp_ms(bad) is None, bad


def test_content_text() -> None:
    assert content_text("plain") == "plain"
    parts = [{"type": "input_text", "text": "a"}, {"type": "input_image", "image_url": "x"},
             {"type": "output_text", "text": "b"}, {"text": "c"}, "junk", {"type": "text", "text": 5},
             {"type": ["input_text"], "text": "unhashable type"}]
    assert content_text(parts) == "a\nb\nc"
    assert content_text(None) == content_text(5) == ""


def test_short_name() -> None:
    assert short_name("  fix\n\tthe   bug  ") == "fix the bug"
    long = "word " * 40
    name = short_name(long)
    assert len(name) <= 80 and name.endswith("…") and not name[:-1].endswith(" ")
    assert short_name("x" * 100) == "x" * 79 + "…"  # no space to cut at


# --------------------------------------------------------------------------- the summary


def summarize(items: list[Any]) -> Summary:
    summary = Summary()
    for item in items:
        summary.add(item)
    return summary


def test_name_precedence() -> None:
    """The last custom title, else the last AI title, else the first user message, else the fallback."""
    base = [user("first question", T0), assistant("answer", T0 + 1), user("second question", T0 + 2)]
    assert summarize(base).name == "first question"
    ai = [*base, {"type": "ai-title", "aiTitle": "AI one"}, {"type": "ai-title", "aiTitle": "AI two"}]
    assert summarize(ai).name == "AI two"
    custom = [{"type": "custom-title", "customTitle": "Mine"}, *ai, {"type": "custom-title", "customTitle": "Later"},
              {"type": "ai-title", "aiTitle": "AI three"}]
    summary = summarize(custom)
    assert (summary.name, summary.custom_title) == ("Later", "Later")
    assert summarize([{"type": "custom-title", "title": "via title"}]).name == "via title"
    assert summarize([{"type": "custom-title", "customTitle": "  "}, *base]).name == "first question"
    assert summarize([assistant("only me")]).name == FALLBACK_NAME
    reminder = user("<system-reminder>context</system-reminder>\n  Real   question  ")
    assert summarize([user("<system-reminder>only</system-reminder>"), reminder]).name == "Real question"


def test_message_count_and_times() -> None:
    items = [
        {"type": "file-history-snapshot", "timestamp": iso(T0 - 5)},
        user("q", T0, parts=False),
        *tool_call(T0 + 1),
        {"role": "assistant", "content": "easy message without type", "timestamp": iso(T0 + 3)},
        {"type": "message", "role": "system", "content": "sys", "timestamp": iso(T0 + 4)},
        {"type": "message", "role": "developer", "content": "dev"},
        assistant("a", T0 + 5),
        {"type": "custom-title", "customTitle": "t", "timestamp": iso(T0 + 99)},
        {"type": "summary", "summary": "s"},
    ]
    summary = summarize(items)
    assert summary.message_count == 3
    assert (summary.first_at, summary.last_at) == (T0 - 5, T0 + 5)  # title records do not move a session
    assert summary.cwd == "/home/u/app"


# Lines a transcript can hold: kinds the fold parses and kinds it skips, with or without timestamps.
def _lines() -> st.SearchStrategy[bytes]:
    at = st.integers(T0, T0 + 10**6)
    text = st.text(max_size=30)
    items = st.one_of(
        st.builds(lambda t, a: user(t, a), text, at),
        st.builds(lambda t: user(t, None, cwd=None), text),
        st.builds(lambda t, a: assistant(t, a), text, at),
        st.builds(lambda a: tool_call(a)[0], at),
        st.builds(lambda a: tool_call(a)[1], at),
        st.builds(lambda t: {"type": "custom-title", "customTitle": t}, text),
        st.builds(lambda t, a: {"type": "ai-title", "aiTitle": t, "timestamp": iso(a)}, text, at),
        st.builds(lambda a: {"type": "file-history-snapshot", "timestamp": iso(a)}, at),
    )
    encoded = items.map(lambda item: json.dumps(item).encode())
    junk = st.sampled_from([b"", b"   ", b"not json", b"[1,2]", b'{"type": "message", "role": "user"', b"\xff\xfe"])
    return st.one_of(encoded, encoded, encoded, junk)


@given(st.lists(_lines(), max_size=40))
def test_folder_matches_parsing_every_line(lines: list[bytes]) -> None:
    """Skipping the lines that cannot change the row gives the row of parsing them all."""
    undated = 0
    for raw in reversed(lines):  # the fold keeps the last 8 skipped lines: at most 8 undated at the end
        item = loads(raw)
        if item is not None and timestamp_ms(item.get("timestamp")) is not None:
            break
        undated += 1
    assume(undated <= 8)
    folder = Folder(Summary())
    for raw in lines:
        folder.line(raw)
    naive = summarize([item for raw in lines if (item := loads(raw)) is not None])
    assert folder.finish() == naive


# --------------------------------------------------------------------------- history


def test_history_pairs_requests_with_final_replies() -> None:
    items = [
        user("<system-reminder>x</system-reminder>"),
        user("first"),
        assistant("thinking out loud"),
        *tool_call(),
        assistant("final one"),
        user("second"),
        user("third"),
        assistant("r" * 600),
        {"type": "custom-title", "customTitle": "Named"},
    ]
    history = history_of("s1", items)
    assert history.session_id == "s1" and history.name == "Named"
    assert [(r.user_input, r.final_reply) for r in history.requests] == [
        ("first", "final one"), ("second", None), ("third", "r" * 500)]
