# -*- test-case-name: tests.workers.test_logs -*-
"""
A worker's logs (acp-codebuddy.md §2.13, §2.15): where each type lives, the last lines of
one, and a Server-Sent Events tail that follows it.

Log types, in the order the automatic choice tries them:

- ``telemetry``: ``<home>/logs/<YYYY-MM-DD>/<projectId>.log``, the structured log of every
  codebuddy process working in that workspace (the newest day that has one);
- ``process``: the worker's stdout/stderr, its registry ``logPath`` (``CODEBUDDY_SESSION_LOG``),
  else ``<home>/logs/<name>.log`` (bg workers and daemons);
- ``debug``: ``<home>/debug/<sessionId>.txt`` (written with ``--debug``);
- ``transcript``: ``<home>/projects/<projectId>/<sessionId>.jsonl``, the conversation.

``projectId`` is CodeBuddy's "compressed working directory": ``/``, ``\\`` and ``:`` become
``-``, runs of ``-`` collapse, leading and trailing ``-`` go (``/home/u/my.app`` ->
``home-u-my.app``).

:class:`LogFollower` polls the file's size on the injected clock (every 0.5 s) and sends what
was appended as ``data: {"content": "..."}`` events whose ``id`` is the byte offset just after
the content, so ``Last-Event-ID`` resumes exactly. Text is UTF-8; a character split across two
writes is held back until complete.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from codebuddy.web.errors import ApiError
from codebuddy.web.sse import (
    DEFAULT_HEARTBEAT,
    begin_stream,
    close_response,
    compact_json,
    format_comment,
    format_event,
)
from codebuddy.workers.registry import WorkerRecord

__all__ = [
    "LOG_TYPES",
    "LogFollower",
    "LogTail",
    "complete_utf8",
    "log_sources",
    "project_id",
    "read_tail",
    "select_log",
    "telemetry_path",
]

LOG_TYPES = ("telemetry", "process", "debug", "transcript")
DEFAULT_TAIL = 200
MAX_TAIL = 100_000
MAX_TAIL_BYTES = 8 * 1024 * 1024
POLL_INTERVAL = 0.5
READ_CHUNK = 64 * 1024
MAX_READ_PER_POLL = 1024 * 1024
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SEPARATORS = re.compile(r"[/\\:]+")


def project_id(path: str) -> str:
    """CodeBuddy's project id of a directory (``/home/u/my.app`` -> ``home-u-my.app``; ``/`` -> ``root``)."""
    compressed = re.sub(r"-+", "-", _SEPARATORS.sub("-", path)).strip("-")
    return compressed or "root"


def telemetry_path(home: Path, cwd: str, day: str) -> Path:
    """The telemetry log of the workspace ``cwd`` for ``day`` (``YYYY-MM-DD``)."""
    return home / "logs" / day / f"{project_id(cwd)}.log"


def _newest_telemetry(home: Path, cwd: str) -> Path | None:
    try:
        days = sorted((d for d in os.listdir(home / "logs") if _DAY.fullmatch(d)), reverse=True)
    except OSError:
        return None
    for day in days:
        path = telemetry_path(home, cwd, day)
        if path.is_file():
            return path
    return None


def log_sources(home: Path, record: WorkerRecord) -> dict[str, Path]:
    """The log files of ``record`` that exist, by type, in the automatic choice's order."""
    candidates: dict[str, Path | None] = {
        "telemetry": _newest_telemetry(home, record.cwd) if record.cwd else None,
        "process": Path(record.log_path) if record.log_path
        else (home / "logs" / f"{record.name}.log" if record.name and "/" not in record.name else None),
        "debug": home / "debug" / f"{record.session_id}.txt" if record.session_id else None,
        "transcript": home / "projects" / project_id(record.cwd) / f"{record.session_id}.jsonl"
        if record.cwd and record.session_id else None,
    }
    return {kind: path for kind, path in candidates.items() if path is not None and path.is_file()}


@attrs.frozen
class LogChoice:
    """The log a request asked for: its type, path, and every type the worker has."""

    type: str
    path: Path
    available: list[str]


def select_log(home: Path, record: WorkerRecord, wanted: str | None) -> LogChoice:
    """
    ``wanted`` (one of :data:`LOG_TYPES`) or, when None, the first type that exists.
    404 ``WORKER_NO_LOGS`` when there is none (or not the one asked for).
    """
    sources = log_sources(home, record)
    available = list(sources)
    if wanted is not None:
        if wanted not in sources:
            raise ApiError("WORKER_NO_LOGS", f"Worker {record.pid} has no {wanted} log",
                           {"availableTypes": available})
        return LogChoice(wanted, sources[wanted], available)
    if not sources:
        raise ApiError("WORKER_NO_LOGS", f"Worker {record.pid} has no logs", {"availableTypes": []})
    first = available[0]
    return LogChoice(first, sources[first], available)


@attrs.frozen
class LogTail:
    """The last lines of a file and the byte offset just after them (the size read)."""

    content: str
    offset: int


def read_tail(path: Path, lines: int, max_bytes: int = MAX_TAIL_BYTES) -> LogTail:
    """The last ``lines`` lines of ``path`` (at most its last ``max_bytes`` bytes). Blocking."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return LogTail("", 0)
        handle.seek(size - 1)
        search_end = size - 1 if handle.read(1) == b"\n" else size
        start = 0
        found = 0
        pos = search_end
        clipped = False
        while pos > 0:
            read_from = max(0, pos - READ_CHUNK)
            handle.seek(read_from)
            block = handle.read(pos - read_from)
            index = len(block)
            while found < lines:
                index = block.rfind(b"\n", 0, index)
                if index < 0:
                    break
                found += 1
                if found == lines:
                    start = read_from + index + 1
            if found >= lines:
                break
            pos = read_from
            if size - pos > max_bytes:
                start, clipped = size - max_bytes, True
                break
        if size - start > max_bytes:
            start, clipped = size - max_bytes, True
        handle.seek(start)
        data = handle.read(size - start)
    end = start + len(data)
    if clipped:
        # Start at a character boundary.
        skip = 0
        while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
            skip += 1
        data = data[skip:]
    keep = complete_utf8(data)
    return LogTail(data[:keep].decode("utf-8", "replace"), end - (len(data) - keep))


def complete_utf8(data: bytes) -> int:
    """The length of the longest prefix of ``data`` that does not end inside a UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead byte
        if byte < 0x80:
            return len(data)
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return len(data) if back >= need else len(data) - back
    return len(data)


@implementer(IPushProducer)
class LogFollower:
    """
    One client's SSE tail of a log file (see the module docstring).

    Frames: ``: connected``; ``event: info`` (``{type, logPath, availableTypes}``); the initial
    content, if any, as one ``data`` event; then one ``data`` event per poll that found new
    bytes; ``event: truncated`` (``{"offset": 0}``) when the file shrank (it is then read again
    from the start); ``: keepalive`` comments every ``heartbeat`` seconds. While the client's
    connection is paused (it reads slowly) nothing is read: the file itself is the buffer.
    """

    log = Logger()

    def __init__(
        self,
        request: Any,
        path: Path,
        clock: IReactorTime,
        info: dict[str, Any],
        *,
        poll: float = POLL_INTERVAL,
        heartbeat: float | None = DEFAULT_HEARTBEAT,
    ) -> None:
        self._request = request
        self.path = path
        self._clock = clock
        self._info = info
        self._poll_interval = poll
        self._heartbeat_interval = heartbeat
        self.offset = 0
        self._paused = False
        self._ended = False
        self._registered = False
        self._disconnected = False
        self._loops: list[LoopingCall] = []
        self._done: Deferred[Any] = Deferred(canceller=lambda _d: self._end())

    @property
    def ended(self) -> bool:
        return self._ended

    def start(self, offset: int, initial: str | None = None) -> Deferred[Any]:
        """Headers, ``info``, ``initial`` (content up to ``offset``), then what is appended after ``offset``."""
        request = self._request
        self.offset = max(0, offset)
        if not begin_stream(request):
            self._disconnected = True
            self._end()
            return self._done
        request.notifyFinish().addErrback(self._connection_lost)
        request.registerProducer(self, True)
        self._registered = True
        request.write(format_comment("connected"))
        request.write(format_event(compact_json(self._info), event="info", id=self.offset))
        if initial:
            request.write(format_event(compact_json({"content": initial}), id=self.offset))
        for interval, call in ((self._poll_interval, self._poll), (self._heartbeat_interval, self._beat)):
            if interval:
                loop = LoopingCall(call)
                loop.clock = self._clock
                loop.start(interval, now=False).addErrback(self._failed)
                self._loops.append(loop)
        return self._done

    # IPushProducer
    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's name)
        self._paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        if self._ended:
            return
        self._paused = False
        self._poll()

    def stopProducing(self) -> None:  # noqa: N802
        self._disconnected = True
        self._end()

    # internals
    def _poll(self) -> None:
        if self._ended or self._paused:
            return
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < self.offset:
                    self.offset = 0
                    self._request.write(format_event(compact_json({"offset": 0}), event="truncated", id=0))
                sent = 0
                while not self._paused and not self._ended and self.offset < size and sent < MAX_READ_PER_POLL:
                    handle.seek(self.offset)
                    data = handle.read(min(READ_CHUNK, size - self.offset))
                    if not data:
                        break
                    keep = complete_utf8(data)
                    if keep == 0:
                        break  # only the start of a character so far
                    self.offset += keep
                    sent += keep
                    text = data[:keep].decode("utf-8", "replace")
                    self._request.write(format_event(compact_json({"content": text}), id=self.offset))
                    if keep < len(data) and self.offset + (len(data) - keep) >= size:
                        break  # the rest is an incomplete character at the end of the file
        except FileNotFoundError:
            return  # rotated or removed: follow it again if it comes back
        except OSError as exc:
            self.log.warn("Cannot read log {path}: {error}", path=str(self.path), error=str(exc))
            self._end()

    def _beat(self) -> None:
        if not self._ended and not self._paused:
            self._request.write(format_comment("keepalive"))

    def _failed(self, failure: Failure) -> None:
        self.log.failure("Log follower failed", failure)
        self._end()

    def _connection_lost(self, _reason: Failure) -> None:
        self._disconnected = True
        self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        gone = self._disconnected or bool(getattr(self._request, "_disconnected", False))
        registered, self._registered = self._registered, False
        close_response(self._request, registered=registered, gone=gone, done=self._done)
