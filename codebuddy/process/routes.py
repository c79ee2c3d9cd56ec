# -*- test-case-name: tests.process.test_routes -*-
"""
Process endpoints: ``/process/*`` (E2B ``process.proto``, ARCHITECTURE.md §5).

Input and output are UTF-8 text by default; ``"encoding": "base64"`` on start, connect and
input/send carries exact bytes (E2B's form). ``process/start`` answers JSON at once
(``{pid, tag}``), JSON at exit with ``"wait": true``, or Server-Sent Events when the request
has ``Accept: text/event-stream`` (see :class:`codebuddy.process.manager.OutputStream`).

``process/input/stream`` applies stdin as the request body arrives. Its body is
newline-delimited JSON: the first line selects the process (``{"process": {"pid"|"tag"}}``,
optionally with ``"encoding": "base64"``), every later line is ``{"input": {"stdin"|"pty": ...}}``
(E2B's ``StreamInputRequest`` ``start``/``data`` events are accepted too; ``keepalive`` lines and
blank lines are ignored). The answer (``{}`` or the first error) comes when the body is complete.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from codebuddy.process.manager import (
    OutputStream,
    ProcessManager,
    ProcessSpec,
    collect_output,
    end_payload,
    parse_signal,
)
from codebuddy.process.spawn import SpawnError, StdinClosedError
from codebuddy.web.errors import ApiError
from codebuddy.web.json import Empty, also_as, json_route, structure
from codebuddy.web.server import StreamedBody
from codebuddy.web.sse import resume_point

TAGS = ("Processes",)
MAX_TIMEOUT_MS = 10 * 365 * 24 * 3600 * 1000  # ten years: anything longer is "no timeout" by another name
_SELECTOR_ERRORS = ("BAD_REQUEST", "PROCESS_NOT_FOUND", "CONFLICT")


@attrs.frozen
class ProcessConfig:
    """The command: ``cmd`` with ``args`` (no shell), ``envs`` over the daemon's, ``cwd`` relative to the workspace."""

    cmd: str
    args: list[str] = attrs.field(factory=list)
    envs: dict[str, str] = attrs.field(factory=dict)
    cwd: str | None = None


@attrs.frozen
class PtySize:
    """Terminal size."""

    cols: int
    rows: int


@attrs.frozen
class Pty:
    """A pseudo-terminal of ``size``."""

    size: PtySize


@attrs.frozen
class StartRequest:
    """E2B ``StartRequest`` plus ``encoding``, ``wait`` and ``timeoutMs``."""

    process: ProcessConfig
    tag: str | None = None
    pty: Pty | None = None
    stdin: Any = attrs.field(default=None, metadata={"doc": "true (default): stdin is a pipe; false: closed; "
                                                             "a string: written, then stdin closed"})
    encoding: str = "text"
    wait: bool = False
    timeout_ms: int | None = attrs.field(default=None, metadata=also_as("timeout_ms"))


@attrs.frozen
class Selector:
    """A process by ``pid`` or ``tag``."""

    pid: int | None = None
    tag: str | None = None


@attrs.frozen
class ProcessInput:
    """Bytes for stdin, or keystrokes for the PTY."""

    stdin: str | None = None
    pty: str | None = None


@attrs.frozen
class SendInputRequest:
    """E2B ``SendInputRequest`` plus ``encoding``."""

    process: Selector
    input: ProcessInput
    encoding: str = "text"


@attrs.frozen
class SignalRequest:
    """A signal (number or name such as ``SIGTERM``) for the process's group."""

    process: Selector
    signal: Any = 15


@attrs.frozen
class SelectorRequest:
    """Just a process selector."""

    process: Selector


@attrs.frozen
class UpdateRequest:
    """Resize the process's PTY."""

    process: Selector
    pty: Pty | None = None


@attrs.frozen
class ConnectRequest:
    """Re-attach to a process's output from ``offset`` (default: the oldest retained byte)."""

    process: Selector
    offset: int | None = None
    encoding: str = "text"


@attrs.frozen
class Started:
    """The new process."""

    pid: int
    tag: str | None = None


@attrs.frozen
class Finished:
    """A process that was waited for."""

    pid: int
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool
    status: str
    tag: str | None = None
    error: str | None = None


@attrs.frozen
class ProcessEntry:
    """One row of ``process/list``."""

    pid: int
    tag: str | None
    config: ProcessConfig
    status: str
    exit_code: int | None
    exit_status: str | None
    pty: bool


@attrs.frozen
class ProcessList:
    """Running processes and those that exited in the last 60 s."""

    processes: list[ProcessEntry]


def _check_encoding(encoding: str) -> str:
    if encoding not in ("text", "base64"):
        raise ApiError("BAD_REQUEST", "encoding must be 'text' or 'base64'",
                       [{"field": "encoding", "message": "invalid value"}])
    return encoding


def _decode(value: str, encoding: str, field: str) -> bytes:
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError("BAD_REQUEST", f"{field} is not valid base64",
                           [{"field": field, "message": "invalid base64"}]) from None
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ApiError("BAD_REQUEST", f"{field} holds a lone surrogate, which is not text",
                       [{"field": field, "message": "invalid text"}]) from None


def _wants_sse(request: Any) -> bool:
    accept = request.getHeader(b"accept") or b""
    return b"text/event-stream" in accept.lower()


class ProcessRoutes:
    """The process area's HTTP surface."""

    app = Klein()

    def __init__(self, manager: ProcessManager, clock: IReactorTime, allowed: Callable[[Any], bool] | None = None):
        self.manager = manager
        self.clock = clock
        self.body_openers = {("POST", "/process/input/stream"): InputStreamOpener(self, allowed)}

    def _select(self, selector: Selector) -> Any:
        return self.manager.get(selector.pid, selector.tag)

    @json_route(app, "POST", "/process/start", body=StartRequest, response=Started, stream=True, tags=TAGS,
                errors=("BAD_REQUEST", "CONFLICT"), summary="Start a process (JSON or SSE)")
    def start(self, request: Any, body: StartRequest) -> Any:
        """
        Start ``process.cmd`` with ``process.args``. JSON: ``{pid, tag}`` at once, or with
        ``wait: true`` ``{pid, exitCode, stdout, stderr, truncated, status}`` at exit. With
        ``Accept: text/event-stream``: ``start``, ``data``..., ``keepalive``, ``end`` events.
        """
        encoding = _check_encoding(body.encoding)
        stdin: bool | bytes = True
        if body.stdin is None or isinstance(body.stdin, bool):
            stdin = True if body.stdin is None else body.stdin
        elif isinstance(body.stdin, str):
            stdin = _decode(body.stdin, encoding, "stdin")
        else:
            raise ApiError("BAD_REQUEST", "stdin must be a boolean or a string",
                           [{"field": "stdin", "message": "invalid value"}])
        if body.timeout_ms is not None and not 0 <= body.timeout_ms <= MAX_TIMEOUT_MS:
            raise ApiError("BAD_REQUEST", f"timeoutMs must be between 0 (no timeout) and {MAX_TIMEOUT_MS}",
                           [{"field": "timeoutMs", "message": "out of range"}])
        pty = None if body.pty is None else _pty_size(body.pty)
        config = body.process
        spec = ProcessSpec(config.cmd, list(config.args), dict(config.envs), config.cwd)
        try:
            proc = self.manager.start(
                spec, tag=body.tag, pty=pty, stdin=stdin,
                timeout=body.timeout_ms / 1000.0 if body.timeout_ms else None,
            )
        except SpawnError as exc:
            raise ApiError("BAD_REQUEST", str(exc)) from None
        if _wants_sse(request):
            return OutputStream(request, proc, self.clock, encoding=encoding).start(0)
        if not body.wait:
            return Started(proc.pid, proc.tag)

        def finished(_info: Any) -> Finished:
            info = proc.exit_info
            assert info is not None
            out = collect_output(proc.buffer, encoding)
            stdout = out.get("pty", "") + out["stdout"] if proc.pty else out["stdout"]
            end = end_payload(info, proc.timed_out)
            return Finished(proc.pid, end["exitCode"], stdout, out["stderr"], proc.buffer.truncated,
                            info.status, proc.tag, end.get("error"))

        return proc.ended().addCallback(finished)

    @json_route(app, "GET", "/process/list", response=ProcessList, tags=TAGS, summary="List processes")
    def list_processes(self, request: Any) -> ProcessList:
        """Running processes and those that exited within the last 60 s, with their exit status."""
        rows = []
        for proc in self.manager.processes():
            info = proc.exit_info
            rows.append(ProcessEntry(
                pid=proc.pid,
                tag=proc.tag,
                config=ProcessConfig(proc.spec.cmd, list(proc.spec.args), dict(proc.spec.envs), proc.spec.cwd),
                status="running" if info is None else "exited",
                exit_code=None if info is None else (info.exit_code if info.exit_code is not None else -1),
                exit_status=None if info is None else info.status,
                pty=proc.pty,
            ))
        return ProcessList(rows)

    @json_route(app, "POST", "/process/connect", body=ConnectRequest, stream=True, tags=TAGS,
                errors=_SELECTOR_ERRORS, summary="Attach to a process's output (SSE)")
    def connect(self, request: Any, body: ConnectRequest) -> Deferred[Any]:
        """The same events as ``start``, replayed from ``Last-Event-ID``/``offset`` (default: all retained)."""
        encoding = _check_encoding(body.encoding)
        proc = self._select(body.process)
        offset = resume_point(request)
        if offset is None:
            offset = body.offset
        if offset is not None and offset < 0:
            raise ApiError("BAD_REQUEST", "offset must not be negative", [{"field": "offset", "message": "negative"}])
        return OutputStream(request, proc, self.clock, encoding=encoding).start(offset)

    @json_route(app, "POST", "/process/input/send", body=SendInputRequest, response=Empty, tags=TAGS,
                errors=_SELECTOR_ERRORS, summary="Send input to a process")
    def send_input(self, request: Any, body: SendInputRequest) -> Empty:
        """Write ``input.stdin`` (or ``input.pty``) to the process."""
        encoding = _check_encoding(body.encoding)
        proc = self._select(body.process)
        apply_input(proc, body.input, encoding)
        return Empty()

    @json_route(app, "POST", "/process/input/stream", response=Empty, tags=TAGS, max_body=2**62,
                errors=_SELECTOR_ERRORS, summary="Stream input to a process (NDJSON body)")
    def stream_input(self, request: Any) -> Empty:
        """First line ``{"process": {...}}``, then ``{"input": {"stdin": "..."}}`` lines, applied as they arrive."""
        sink = request.content
        if not isinstance(sink, InputSink):
            raise ApiError("BAD_REQUEST", "The input stream could not be received")
        sink.finish()
        if sink.error is not None:
            raise sink.error
        return Empty()

    @json_route(app, "POST", "/process/signal/send", body=SignalRequest, response=Empty, tags=TAGS,
                errors=_SELECTOR_ERRORS, summary="Signal a process group")
    def send_signal(self, request: Any, body: SignalRequest) -> Empty:
        """Send ``signal`` (15, 9, 2, 1..., or a name like ``"SIGTERM"``) to the process's whole group."""
        try:
            signum = parse_signal(body.signal)
        except ValueError as exc:
            raise ApiError("BAD_REQUEST", str(exc), [{"field": "signal", "message": str(exc)}]) from None
        child = self._select(body.process).require_running()
        child.signal(signum, group=True)
        return Empty()

    @json_route(app, "POST", "/process/stdin/close", body=SelectorRequest, response=Empty, tags=TAGS,
                errors=_SELECTOR_ERRORS, summary="Close a process's stdin")
    def close_stdin(self, request: Any, body: SelectorRequest) -> Empty:
        """EOF on stdin (a PTY process gets ^D); idempotent."""
        self._select(body.process).require_running().close_stdin()
        return Empty()

    @json_route(app, "POST", "/process/update", body=UpdateRequest, response=Empty, tags=TAGS,
                errors=_SELECTOR_ERRORS, summary="Resize a process's PTY")
    def update(self, request: Any, body: UpdateRequest) -> Empty:
        """Set the PTY size (``pty.size.cols``/``rows``)."""
        child = self._select(body.process).require_running()
        if body.pty is None:
            return Empty()
        cols, rows = _pty_size(body.pty)
        if not child.pty:
            raise ApiError("BAD_REQUEST", "tty not assigned to process")
        child.resize(cols, rows)
        return Empty()


def _pty_size(pty: Any) -> tuple[int, int]:
    """(cols, rows) of a ``pty`` field, or 400 when either is outside 1..65535 (a tty's limits)."""
    cols, rows = pty.size.cols, pty.size.rows
    if not (0 < cols < 65536 and 0 < rows < 65536):
        raise ApiError("BAD_REQUEST", "pty size must be between 1 and 65535 columns and rows",
                       [{"field": "pty.size", "message": f"invalid size {cols}x{rows}"}])
    return cols, rows


def apply_input(proc: Any, value: ProcessInput, encoding: str) -> None:
    """Write one ``ProcessInput`` to ``proc`` (409 when it exited or stdin is closed)."""
    child = proc.require_running()
    text = value.stdin if value.stdin is not None else value.pty
    if text is None:
        raise ApiError("BAD_REQUEST", "input needs stdin or pty", [{"field": "input", "message": "empty"}])
    data = _decode(text, encoding, "input")
    try:
        child.write(data)
    except StdinClosedError as exc:
        raise ApiError("CONFLICT", str(exc)) from None


class InputSink(StreamedBody):
    """The body of ``process/input/stream``: NDJSON lines applied as they arrive."""

    MAX_LINE = 16 * 1024 * 1024

    def __init__(self, routes: ProcessRoutes) -> None:
        self.routes = routes
        self.error: ApiError | None = None
        self._pending = b""
        self._proc: Any = None
        self._encoding = "text"

    def consume(self, data: bytes) -> None:
        if self.error is not None:
            return
        self._pending += data
        while b"\n" in self._pending and self.error is None:
            line, self._pending = self._pending.split(b"\n", 1)
            self._line(line)
        if len(self._pending) > self.MAX_LINE:
            self._fail(ApiError("PAYLOAD_TOO_LARGE", "input line too long"))

    def finish(self) -> None:
        if self.error is None and self._pending.strip():
            line, self._pending = self._pending, b""
            self._line(line)
        if self.error is None and self._proc is None:
            self._fail(ApiError("BAD_REQUEST", 'the body must start with {"process": {...}}'))

    def _fail(self, error: ApiError) -> None:
        if self.error is None:
            self.error = error
        self._pending = b""

    def _line(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            message = json.loads(raw)
            if not isinstance(message, dict):
                raise ValueError("not an object")
            if "keepalive" in message:
                return
            if self._proc is None:
                start = message.get("start", message)
                selector = structure(start.get("process"), Selector)
                self._encoding = _check_encoding(start.get("encoding", message.get("encoding", "text")))
                self._proc = self.routes._select(selector)
                return
            data = message.get("data", message)
            value = structure(data.get("input"), ProcessInput)
            apply_input(self._proc, value, self._encoding)
        except ApiError as exc:
            self._fail(exc)
        except (ValueError, TypeError, AttributeError) as exc:
            self._fail(ApiError("BAD_REQUEST", f"invalid input line: {exc}"))


class InputStreamOpener:
    """Receives ``process/input/stream`` bodies as they arrive (see :class:`InputSink`)."""

    def __init__(self, routes: ProcessRoutes, allowed: Callable[[Any], bool] | None) -> None:
        self.routes = routes
        self.allowed = allowed

    def open_body(self, request: Any, uri: bytes, length: int | None) -> Any:
        if self.allowed is not None and not self.allowed(request):
            return None
        return InputSink(self.routes)
