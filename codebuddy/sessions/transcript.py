# -*- test-case-name: tests.sessions.test_transcript -*-
"""
What a transcript line means: CodeBuddy's projectId rule, safe session ids, and the fold of a
transcript's items into what the session list and the history need.

A transcript is JSON Lines, one OpenAI-Agents-style item per line (acp-codebuddy.md §2.15)::

    {"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}],
     "id":"...","parentId":"...","timestamp":"2025-06-01T10:00:00.000Z","cwd":"/home/u/app","sessionId":"..."}
    {"type":"function_call", ...}  {"type":"function_call_result", ...}
    {"type":"custom-title","customTitle":"Release notes","sessionId":"..."}
    {"type":"ai-title","aiTitle":"...", ...}  {"type":"file-history-snapshot", ...}  {"type":"summary", ...}

Rules (docs/sessions.md repeats them for users):

- **messageCount**: items whose ``type`` is ``"message"`` (or absent, OpenAI's "easy input
  message") and whose ``role`` is ``"user"`` or ``"assistant"``, one per item. Tool calls, tool
  results, system/developer messages and the extra record types do not count. A session whose
  count is 0 is "empty" and not listed.
- **name**: the ``customTitle`` (or ``title``) of the last ``custom-title`` record, else the
  ``aiTitle`` (or ``title``) of the last ``ai-title`` record, else the first user message's text
  (``<system-reminder>`` blocks removed, whitespace collapsed, cut at a word boundary to at most
  80 characters with ``…``), else ``"Untitled session"``. ``isUserDefinedTitle`` is 1 when a
  ``custom-title`` gave the name.
- **createdAt / updatedAt**: the ``timestamp`` of the first and of the last item that has one
  (ISO 8601 text, or a number of milliseconds, or of seconds when below 10^11), title records
  excepted: a rename does not move a session in the list. Without any, the file's mtime.
- **cwd / projectId**: the ``cwd`` of the first item that has one; the projectId of a path is
  :func:`project_id`.

Malformed lines (not JSON, not an object, wrong field types) are skipped.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import attrs

__all__ = [
    "FALLBACK_NAME",
    "SessionHistory",
    "SessionRequest",
    "Summary",
    "content_text",
    "history_of",
    "project_id",
    "short_name",
    "timestamp_ms",
    "valid_project_id",
    "valid_session_id",
]

FALLBACK_NAME = "Untitled session"
NAME_LIMIT = 80
REPLY_LIMIT = 500
TITLE_TYPES = frozenset({"custom-title", "ai-title"})
CONVERSATION_ROLES = frozenset({"user", "assistant"})
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})

_SEPARATORS = re.compile(r"[/\\:]")
_DASHES = re.compile(r"-{2,}")
_SESSION_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")
_REMINDER = re.compile(r"<system-reminder>.*?(?:</system-reminder>|\Z)", re.DOTALL)
_SPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------- names


def project_id(cwd: str) -> str:
    """
    CodeBuddy's "compressed working directory": each ``/``, ``\\`` and ``:`` becomes ``-``, runs
    of ``-`` collapse to one, leading and trailing ``-`` go. ``/home/u/my.app`` ->
    ``home-u-my.app``, ``C:\\Users\\x`` -> ``C-Users-x``. A path made only of separators (``/``)
    has no name left; it is ``-``, which the rule cannot produce otherwise.
    """
    compressed = _DASHES.sub("-", _SEPARATORS.sub("-", cwd)).strip("-")
    return compressed or "-"


def valid_session_id(session_id: str) -> bool:
    """A session id usable as a file name: letters, digits, ``_``, ``-``, ``.``; not starting with ``.``; ≤ 200."""
    return _SESSION_ID.fullmatch(session_id) is not None


def valid_project_id(name: str) -> bool:
    """A projectId that names a folder of ``projects/`` (no separators, not ``.`` or ``..``)."""
    return bool(name) and name not in (".", "..") and not _SEPARATORS.search(name) and "\0" not in name


# --------------------------------------------------------------------------- values


def timestamp_ms(value: Any) -> int | None:
    """
    Milliseconds since the epoch of an item's ``timestamp``: ISO 8601 text (``Z`` or an
    offset; naive means UTC), or a number (milliseconds; seconds when below 10^11).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        ms = value if value >= 1e11 else value * 1000
        if not 0 <= ms < 1e16:  # NaN, negative, infinite, or past the year 300,000
            return None
        return int(ms)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    return None


def iso_timestamp(seconds: float) -> str:
    """``2025-06-01T10:00:00.123Z`` for an epoch time (the form transcripts use)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or the ``text`` of its text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict)
            and isinstance(part.get("text"), str)
            and (part.get("type") is None or _text(part, "type") in TEXT_PARTS)
        ]
        return "\n".join(texts)
    return ""


def plain_text(content: Any) -> str:
    """A message's text without ``<system-reminder>`` blocks, stripped."""
    return _REMINDER.sub("", content_text(content)).strip()


def short_name(text: str, limit: int = NAME_LIMIT) -> str:
    """One line of at most ``limit`` characters: whitespace collapsed, cut at a word boundary with ``…``."""
    text = _SPACE.sub(" ", text).strip()
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def _text(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    return value if isinstance(value, str) else None


def _title(item: dict[str, Any], key: str) -> str | None:
    for name in (key, "title"):
        value = item.get(name)
        if isinstance(value, str) and value.strip():
            return short_name(value, 200)
    return None


def is_conversation_message(item: dict[str, Any]) -> bool:
    """A user or assistant message item (``type`` ``"message"`` or absent)."""
    return item.get("type", "message") == "message" and _text(item, "role") in CONVERSATION_ROLES


_decode = json.JSONDecoder().decode


def loads(raw: bytes) -> dict[str, Any] | None:
    """One UTF-8 line as a JSON object, or None (blank, not JSON, not UTF-8, not an object)."""
    try:
        item = _decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return item if isinstance(item, dict) else None


# --------------------------------------------------------------------------- the list's fold


@attrs.define
class Summary:
    """What the session list needs from a transcript; :meth:`add` folds one item in."""

    first_at: int | None = None
    last_at: int | None = None
    message_count: int = 0
    first_prompt: str | None = None
    custom_title: str | None = None
    ai_title: str | None = None
    cwd: str | None = None

    def copy(self) -> Summary:
        return attrs.evolve(self)

    def add(self, item: dict[str, Any]) -> bool:
        """Fold ``item`` in; True if it carried a (non-title) timestamp."""
        kind = item.get("type")
        if kind == "custom-title":
            self.custom_title = _title(item, "customTitle") or self.custom_title
            return False
        if kind == "ai-title":
            self.ai_title = _title(item, "aiTitle") or self.ai_title
            return False
        if self.cwd is None:
            cwd = item.get("cwd")
            if isinstance(cwd, str) and cwd:
                self.cwd = cwd
        if is_conversation_message(item):
            self.message_count += 1
            if self.first_prompt is None and item.get("role") == "user":
                text = plain_text(item.get("content"))
                if text:
                    self.first_prompt = short_name(text)
        at = timestamp_ms(item.get("timestamp"))
        if at is None:
            return False
        if self.first_at is None:
            self.first_at = at
        self.last_at = at
        return True

    @property
    def name(self) -> str:
        return self.custom_title or self.ai_title or self.first_prompt or FALLBACK_NAME


# Lines without the bytes "message" (quotes included), "role" or title" cannot be a message, a
# title record, or an item with a role: the list needs only their timestamp, and only the last
# one's. Inside JSON strings a quote is escaped (\"), so these appear unescaped only as real
# keys or values (false positives, e.g. a string ending in `\"message`, only cost a parse).
# The last few skipped lines are kept to find the last timestamp.
_SKIPPED_KEPT = 8


class Folder:
    """
    Folds complete transcript lines into a :class:`Summary`, parsing only the lines that can
    change it: the first ones (until ``cwd`` and a first timestamp are known), messages, title
    records. Other lines (tool calls and results: most of a transcript's bytes) are only kept,
    the last few, until :meth:`finish` takes ``updatedAt`` from the last of them that has a
    timestamp (if no parsed line came after it).
    """

    def __init__(self, summary: Summary) -> None:
        self.summary = summary
        self._skipped: deque[bytes] = deque(maxlen=_SKIPPED_KEPT)

    def line(self, raw: bytes) -> None:
        summary = self.summary
        if (summary.cwd is not None and summary.first_at is not None
                and b'"message"' not in raw and b'"role"' not in raw and b'title"' not in raw):
            if raw.strip():
                self._skipped.append(raw)
            return
        item = loads(raw)
        if item is not None and summary.add(item):
            self._skipped.clear()

    def finish(self) -> Summary:
        """Take ``updatedAt`` from the skipped lines at the end, if they have one."""
        while self._skipped:
            item = loads(self._skipped.pop())
            if item is None or _text(item, "type") in TITLE_TYPES:
                continue
            at = timestamp_ms(item.get("timestamp"))
            if at is not None:
                self.summary.last_at = at
                break
        self._skipped.clear()
        return self.summary


# --------------------------------------------------------------------------- history


@attrs.frozen
class SessionRequest:
    """One user request and the assistant's last reply to it."""

    user_input: str
    final_reply: str | None = attrs.field(
        metadata={"doc": f"The last assistant message before the next request, at most {REPLY_LIMIT} characters; "
                  "null when none came"})


@attrs.frozen
class SessionHistory:
    """A session's user requests and final replies, oldest first."""

    session_id: str
    name: str
    requests: list[SessionRequest]


def history_of(session_id: str, items: Iterable[dict[str, Any]]) -> SessionHistory:
    """
    The requests of a transcript: each user message with text (after removing
    ``<system-reminder>`` blocks) starts one; the text of the last assistant message with text
    before the next one is its ``finalReply``, cut to 500 characters.
    """
    summary = Summary()
    requests: list[tuple[str, str | None]] = []
    for item in items:
        summary.add(item)
        if not is_conversation_message(item):
            continue
        text = plain_text(item.get("content"))
        if not text:
            continue
        if item.get("role") == "user":
            requests.append((text, None))
        elif requests:
            requests[-1] = (requests[-1][0], text[:REPLY_LIMIT])
    return SessionHistory(session_id, summary.name, [SessionRequest(u, r) for u, r in requests])
