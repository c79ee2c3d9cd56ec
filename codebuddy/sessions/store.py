# -*- test-case-name: tests.sessions.test_store -*-
"""
The session store: transcripts in ``<home>/projects/<projectId>/<sessionId>.jsonl`` and file
history in ``<home>/file-history/<sessionId>/`` (acp-codebuddy.md §2.15).

Everything here is blocking file I/O: the routes call it through ``run_blocking``. Other areas
(the agent) write transcripts with :meth:`SessionStore.append`.

**Listing fast.** A listing stats every transcript (``scandir`` + ``stat``) and keeps, per
file, what it parsed: the summary of its complete lines, the byte offset they end at, the
bytes just before that offset, and the finished list row, also encoded as JSON (a warm
listing of 10,000 sessions joins cached bytes instead of encoding 10,000 objects). For each file:

- same inode, mtime and size as cached: the cached row, nothing read;
- same inode, not shorter than the parsed offset, and the first and the last 64 bytes before
  that offset unchanged (the file only grew, e.g. an appended turn or rename): only the bytes
  after the offset are read and folded into a copy of the cached summary;
- anything else (new, replaced, truncated, rewritten): the whole file is parsed again.

A rewrite in place that keeps the length (or grows the file) *and* those 128 bytes is not
noticed: writers append, or replace a file (new inode), as CodeBuddy does. Parsing reads
complete lines only; a last line without its newline (a writer in the middle of
a line) counts for the row if it parses, but is read again next time. Within a file, only the
lines that can change the row are JSON-decoded (see :class:`~codebuddy.sessions.transcript.Folder`).
Cached entries of files that disappeared are dropped by the next listing of their project.
The cache may be used from several threads: entries are immutable and replaced whole.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from codebuddy.sessions.transcript import (
    Folder,
    SessionHistory,
    Summary,
    history_of,
    iso_timestamp,
    loads,
    project_id,
    valid_project_id,
    valid_session_id,
)
from codebuddy.web.errors import ApiError
from codebuddy.web.json import dumps

__all__ = ["BASE_FIELDS", "InvalidSessionId", "Listed", "SessionStore", "SessionWorkspace", "UnknownSession",
           "checked_session_id", "session_api_error"]

SUFFIX = ".jsonl"
READ_CHUNK = 1 << 20
TAIL_CHECK = 64
MAX_LINE = 64 << 20  # longer lines are skipped without being kept in memory
PLAYGROUND = "playground"
# The fields of a row listed without ?cwd=, in wire order; the other four follow with ?cwd=.
BASE_FIELDS = ("id", "name", "createdAt", "updatedAt", "messageCount", "isCurrent", "isUserDefinedTitle")


class InvalidSessionId(ValueError):
    """The id is not a safe file name (``/``, ``..``, empty, too long...)."""


class UnknownSession(LookupError):
    """No transcript has this session id."""


def checked_session_id(session_id: str, field: str) -> str:
    """``session_id`` when it can name a transcript file; else 400 ``BAD_REQUEST`` naming ``field``."""
    if not valid_session_id(session_id):
        raise ApiError("BAD_REQUEST", f"{session_id[:100]!r} is not a valid session id", [
            {"field": field, "message": "letters, digits, '_', '-' and '.' only, not starting with '.'"}])
    return session_id


def session_api_error(exc: UnknownSession | InvalidSessionId, session_id: str) -> ApiError:
    """How the API answers a store's failure to find a session (404) or to accept its id (400)."""
    if isinstance(exc, UnknownSession):
        return ApiError("SESSION_NOT_FOUND", f"Session {session_id} not found")
    return ApiError("BAD_REQUEST", f"{session_id[:100]!r} is not a valid session id")


@attrs.frozen
class SessionWorkspace:
    """A workspace that has sessions: its path and a short label."""

    path: str
    label: str


@attrs.frozen
class Listed:
    """One listed session: its row (every field, ``isCurrent`` false), sort key and JSON forms."""

    row: dict[str, Any]
    key: tuple[int, str] = attrs.field(metadata={"doc": "(updatedAt, id): sort descending for newest first"})
    full: bytes = attrs.field(metadata={"doc": "dumps(row)"})
    base: bytes = attrs.field(metadata={"doc": "dumps of the BASE_FIELDS of row"})

    @classmethod
    def of(cls, row: dict[str, Any]) -> Listed:
        return cls(row, (row["updatedAt"], row["id"]), dumps(row), dumps({k: row[k] for k in BASE_FIELDS}))


@attrs.frozen
class _Entry:
    """What a listing keeps of one transcript file (never mutated)."""

    ino: int
    mtime_ns: int
    size: int
    offset: int
    state: Summary
    head: bytes
    tail: bytes
    listed: Listed | None


def _json_line(record: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # lone surrogates
        return json.dumps(record, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def _write_lines(path: Path, lines: list[bytes]) -> None:
    """Append whole lines with O_APPEND, one ``write`` per line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        for line in lines:
            view = memoryview(line)
            while view:
                written = os.write(fd, view)
                view = view[written:]
    finally:
        os.close(fd)


class SessionStore:
    """Transcripts under ``home``; ``clock()`` gives epoch seconds for the records it writes."""

    def __init__(self, home: Path, clock: Callable[[], float] = time.time) -> None:
        self.home = Path(home)
        self.projects = self.home / "projects"
        self.file_history = self.home / "file-history"
        self.playground = self.home / PLAYGROUND
        self.clock = clock
        self._cache: dict[str, dict[str, _Entry]] = {}
        self._lock = threading.Lock()

    # -- paths

    def transcript_path(self, session_id: str, cwd: str) -> Path:
        """``<home>/projects/<project_id(cwd)>/<session_id>.jsonl``."""
        self._check_id(session_id)
        if not os.path.isabs(cwd):
            raise ValueError(f"cwd must be an absolute path, got {cwd!r}")
        return self.projects / project_id(cwd) / f"{session_id}{SUFFIX}"

    @staticmethod
    def _check_id(session_id: str) -> None:
        if not valid_session_id(session_id):
            raise InvalidSessionId(session_id)

    def _project_names(self) -> list[str]:
        try:
            with os.scandir(self.projects) as entries:
                return [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return []

    def find(self, session_id: str) -> list[Path]:
        """Every transcript of ``session_id`` (normally one); InvalidSessionId for an unsafe id."""
        self._check_id(session_id)
        name = session_id + SUFFIX
        found = []
        for project in sorted(self._project_names()):
            path = self.projects / project / name
            if path.is_file():
                found.append(path)
        return found

    # -- writing

    def append(self, session_id: str, cwd: str, items: Iterable[Mapping[str, Any]]) -> Path:
        """
        Append ``items`` to the session's transcript in the project of ``cwd`` (created, mode
        0600, with its folders). Each item gets ``sessionId``, ``cwd`` and ``timestamp`` unless
        it has them. Items are encoded first (a bad one writes nothing), then written with
        O_APPEND, one write per line, so concurrent writers never interleave inside a line.
        """
        path = self.transcript_path(session_id, cwd)
        stamp = iso_timestamp(self.clock())
        lines = [
            _json_line({"sessionId": session_id, "cwd": cwd, "timestamp": stamp, **item}) for item in items
        ]
        if lines:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_lines(path, lines)
        return path

    def rename(self, session_id: str, name: str) -> None:
        """Append a ``custom-title`` record (history is never rewritten); UnknownSession if there is no transcript."""
        paths = self.find(session_id)
        if not paths:
            raise UnknownSession(session_id)
        record = {"type": "custom-title", "customTitle": name, "sessionId": session_id,
                  "timestamp": iso_timestamp(self.clock())}
        for path in paths:
            _write_lines(path, [_json_line(record)])

    def delete(self, session_id: str) -> None:
        """
        Remove the session's transcript(s) and ``file-history/<id>/``; UnknownSession if it has
        no transcript. A symlink is removed, never followed.
        """
        paths = self.find(session_id)
        if not paths:
            raise UnknownSession(session_id)
        for path in paths:
            path.unlink(missing_ok=True)
            with self._lock:
                self._cache.get(path.parent.name, {}).pop(path.name, None)
        history = self.file_history / session_id
        if history.is_symlink() or history.is_file():
            history.unlink(missing_ok=True)
        elif history.is_dir():
            shutil.rmtree(history, ignore_errors=True)

    # -- reading

    def history(self, session_id: str) -> SessionHistory:
        """The session's requests and final replies (whole transcript read)."""
        paths = self.find(session_id)
        if not paths:
            raise UnknownSession(session_id)
        return history_of(session_id, self.items(paths[0]))

    @staticmethod
    def items(path: Path) -> Iterator[dict[str, Any]]:
        """The items of a transcript file (from :meth:`find`), in order; malformed lines skipped."""
        with open(path, "rb") as handle:
            for raw in handle:
                item = loads(raw)
                if item is not None:
                    yield item

    _items = items  # the earlier name, used by the agent area

    def listed(self, project: str | None = None) -> list[Listed]:
        """
        The non-empty sessions of ``project`` (a projectId), or of every project, in no order.
        They are shared with the cache: copy a row before changing it.
        """
        if project is None:
            names = self._project_names()
            found: list[Listed] = []
            for name in names:
                found.extend(self._project_listed(name))
            with self._lock:
                for gone in set(self._cache) - set(names):
                    del self._cache[gone]
            return found
        if not valid_project_id(project):
            return []
        return self._project_listed(project)

    def rows(self, project: str | None = None) -> list[dict[str, Any]]:
        """The rows of :meth:`listed` (every field, ``isCurrent`` false, in no order)."""
        return [listed.row for listed in self.listed(project)]

    def workspaces(self) -> list[SessionWorkspace]:
        """
        Each project with listed sessions, newest first: its path is the ``cwd`` recorded by its
        most recently updated session that has one (projects with none are left out).
        """
        best: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            if row["cwd"] is None:
                continue
            current = best.get(row["projectId"])
            if current is None or row["updatedAt"] > current["updatedAt"]:
                best[row["projectId"]] = row
        ordered = sorted(best.values(), key=lambda r: (r["updatedAt"], r["projectId"]), reverse=True)
        return [SessionWorkspace(r["cwd"], os.path.basename(r["cwd"].rstrip("/\\")) or r["cwd"]) for r in ordered]

    def _project_listed(self, project: str) -> list[Listed]:
        directory = self.projects / project
        with self._lock:
            cached = self._cache.get(project, {})
        fresh: dict[str, _Entry] = {}
        rows: list[Listed] = []
        try:
            scan = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            with self._lock:
                self._cache.pop(project, None)
            return []
        with scan as entries:
            for entry in entries:
                name = entry.name
                old = cached.get(name)
                if old is None and (not name.endswith(SUFFIX) or not valid_session_id(name[: -len(SUFFIX)])):
                    continue
                try:
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                    if old is not None and old.mtime_ns == st.st_mtime_ns and old.size == st.st_size \
                            and old.ino == st.st_ino:
                        found = old  # unchanged: the common case, kept inline
                    else:
                        found = self._scan(entry.path, st, old, name[: -len(SUFFIX)], project)
                except OSError:  # gone since the scandir, unreadable
                    continue
                fresh[name] = found
                if found.listed is not None:
                    rows.append(found.listed)
        with self._lock:
            self._cache[project] = fresh
        return rows

    def _scan(self, path: str, st: os.stat_result, old: _Entry | None, session_id: str, project: str) -> _Entry:
        with open(path, "rb") as handle:
            offset, state, head, window = 0, Summary(), b"", b""
            if old is not None and old.ino == st.st_ino and old.offset and st.st_size >= old.offset:
                same = handle.read(len(old.head)) == old.head
                handle.seek(old.offset - len(old.tail))
                if same and handle.read(len(old.tail)) == old.tail:
                    offset, state, head, window = old.offset, old.state.copy(), old.head, old.tail
                else:
                    handle.seek(0)
            folder = Folder(state)
            tail = window  # the TAIL_CHECK bytes before ``offset``; ``window``: before what was read
            parts: list[bytes] = []  # the line being read (empty once it is known to be too long)
            size = 0  # its length so far
            while chunk := handle.read(READ_CHUNK):
                if not head and not offset:
                    head = chunk[:TAIL_CHECK]
                end = chunk.rfind(b"\n")
                if end < 0:
                    size += len(chunk)
                    parts = parts + [chunk] if size <= MAX_LINE else []
                    window = (window + chunk[-TAIL_CHECK:])[-TAIL_CHECK:]
                    continue
                lines = chunk[:end].split(b"\n")
                if size + len(lines[0]) > MAX_LINE:
                    lines[0] = b""  # a line too long to matter (or to hold in memory) is skipped
                elif parts:
                    lines[0] = b"".join(parts) + lines[0]
                for line in lines:
                    folder.line(line)
                offset += size + end + 1
                tail = window = (window + chunk[: end + 1][-TAIL_CHECK:])[-TAIL_CHECK:]
                rest = chunk[end + 1 :]
                parts, size = ([rest] if rest else []), len(rest)
                window = (window + rest[-TAIL_CHECK:])[-TAIL_CHECK:]
        head = head[:offset]
        state = folder.finish()
        summary = state
        fragment = b"".join(parts)
        if fragment.strip():
            item = loads(fragment)
            if item is not None:
                summary = state.copy()
                summary.add(item)
        row = self._row(session_id, project, summary, st)
        listed = None if row is None else Listed.of(row)
        return _Entry(st.st_ino, st.st_mtime_ns, st.st_size, offset, state, head, tail, listed)

    def _row(self, session_id: str, project: str, summary: Summary, st: os.stat_result) -> dict[str, Any] | None:
        if summary.message_count == 0:
            return None
        mtime = st.st_mtime_ns // 1_000_000
        cwd = summary.cwd
        playground = cwd is not None and (cwd == str(self.playground) or cwd.startswith(str(self.playground) + os.sep))
        return {
            "id": session_id,
            "name": summary.name,
            "createdAt": summary.first_at if summary.first_at is not None else mtime,
            "updatedAt": summary.last_at if summary.last_at is not None else mtime,
            "messageCount": summary.message_count,
            "isCurrent": False,
            "isUserDefinedTitle": 1 if summary.custom_title else 0,
            "projectId": project,
            "cwd": cwd,
            "status": "pending",
            "isPlayground": playground,
        }
