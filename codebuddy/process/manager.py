# -*- test-case-name: tests.process.test_manager -*-
"""
The process table (ARCHITECTURE.md §3 "Processes", §5; e2b.md §2, §6 rows 1-4).

- :class:`ProcessManager` starts commands through the one :class:`~codebuddy.process.spawn.Spawner`,
  gives each an :class:`~codebuddy.process.buffer.OutputBuffer` (bounded, byte offsets) and keeps
  it listed while it runs and for ``retain`` seconds after it exited (on the injected clock), so late
  clients can still read its status and output.
- Tags are unique among *running* processes; a tag lookup prefers the running one, then the most
  recently exited one.
- :class:`OutputStream` writes one process's output as Server-Sent Events: ``start`` (``{"pid"}``),
  ``data`` (``{"stdout"|"stderr"|"pty": text-or-base64}``), ``keepalive`` every ``heartbeat`` seconds,
  then exactly one ``end`` (``{"exitCode", "exited", "status", "error"?}``), or ``lagged``
  (``{"nextOffset"}``) when the client fell too far behind. Every ``start``/``data``/``end``
  event's ``id:`` is the absolute byte offset just after the output it carries, so a client that
  reconnects with ``Last-Event-ID`` gets exactly the bytes it has not seen. In text mode a character
  split across reads is held back until complete; while one stream holds such a partial character
  and another stream's data goes out, that event carries no ``id`` (a resume then repeats a few bytes
  rather than losing any).
"""

from __future__ import annotations

import base64
import os
import signal as _signal
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from codebuddy.process.buffer import DEFAULT_CAPACITY, Chunk, OutputBuffer, Stream, Subscription, b64
from codebuddy.process.spawn import Child, ExitInfo, Spawner, SpawnError
from codebuddy.web.errors import ApiError
from codebuddy.web.json import utf8_json_string_parts
from codebuddy.web.sse import (
    DEFAULT_HEARTBEAT,
    begin_stream,
    close_response,
    compact_json,
    format_event,
    format_json_frame,
)

__all__ = [
    "DEFAULT_RETAIN",
    "ManagedProcess",
    "OutputStream",
    "ProcessManager",
    "ProcessSpec",
    "SpawnError",
    "collect_output",
    "end_payload",
    "parse_signal",
]

DEFAULT_RETAIN = 60.0


@attrs.frozen
class ProcessSpec:
    """What was asked for: the command as given (``cwd`` unresolved), as ``list`` shows it."""

    cmd: str
    args: list[str] = attrs.field(factory=list)
    envs: dict[str, str] = attrs.field(factory=dict)
    cwd: str | None = None


@implementer(IPushProducer)
class _OutputControl:
    """The buffer's view of the child's output: pausing it stops reading the pipes."""

    def __init__(self, child: Child) -> None:
        self._child = child

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's name)
        self._child.pause_output()

    def resumeProducing(self) -> None:  # noqa: N802
        self._child.resume_output()

    def stopProducing(self) -> None:  # noqa: N802
        self._child.resume_output()


class ManagedProcess:
    """One started process: its child, output buffer and (once ended) exit status."""

    def __init__(self, manager: ProcessManager, spec: ProcessSpec, tag: str | None, pty: bool, capacity: int) -> None:
        self.manager = manager
        self.spec = spec
        self.tag = tag
        self.pty = pty
        self.buffer = OutputBuffer(capacity, clock=manager.clock)
        self.child: Child | None = None
        self.exit_info: ExitInfo | None = None
        self._waiters: list[Deferred[ExitInfo]] = []

    @property
    def pid(self) -> int:
        return self.child.pid if self.child is not None else 0

    @property
    def running(self) -> bool:
        """True until ``exited`` was delivered (all output is in the buffer after that)."""
        return self.exit_info is None

    @property
    def timed_out(self) -> bool:
        return bool(self.child is not None and self.child.timed_out)

    # ChildProtocol
    def output(self, stream: str, data: bytes) -> None:
        if not self.buffer.closed:
            self.buffer.append(stream, data)  # type: ignore[arg-type]

    def exited(self, info: ExitInfo) -> None:
        self.exit_info = info
        self.buffer.close(info)
        self.manager._exited(self)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(info)

    def ended(self) -> Deferred[ExitInfo]:
        """Fires with the :class:`ExitInfo` once the process ended and its output is complete."""
        if self.exit_info is not None:
            return succeed(self.exit_info)
        d: Deferred[ExitInfo] = Deferred()
        self._waiters.append(d)
        return d

    def require_running(self) -> Child:
        """The child, or 409 ``CONFLICT`` when the process has exited."""
        if self.exit_info is not None or self.child is None:
            raise ApiError("CONFLICT", f"process {self.pid} has exited")
        return self.child


def end_payload(info: ExitInfo, timed_out: bool = False) -> dict[str, Any]:
    """E2B's ``EndEvent``: exit code (-1 for a signal), ``exited``, Go's status text, ``error`` if failed."""
    code = info.exit_code if info.exit_code is not None else -1
    out: dict[str, Any] = {"exitCode": code, "exited": info.signal is None, "status": info.status}
    if code != 0:
        out["error"] = "timeout exceeded: " + info.status if timed_out else info.status
    return out


def parse_signal(value: Any) -> int:
    """15, ``"SIGTERM"``, ``"TERM"`` or ``"SIGNAL_SIGTERM"`` -> 15; ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError("signal must be a number or a name")
    if isinstance(value, int):
        if 1 <= value < _signal.NSIG:
            return value
        raise ValueError(f"invalid signal {value}")
    if isinstance(value, str):
        name = value.strip().upper()
        if name.isdigit():
            return parse_signal(int(name))
        name = name.removeprefix("SIGNAL_")
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return int(_signal.Signals[name])
        except KeyError:
            raise ValueError(f"unknown signal {value!r}") from None
    raise ValueError("signal must be a number or a name")


class ProcessManager(Service):
    """The table of processes started through the API (running, and exited within ``retain`` s)."""

    log = Logger()
    name = "processes"

    def __init__(
        self,
        spawner: Spawner,
        workspace: str,
        clock: IReactorTime,
        *,
        capacity: int = DEFAULT_CAPACITY,
        retain: float = DEFAULT_RETAIN,
    ) -> None:
        self.spawner = spawner
        self.workspace = workspace
        self.clock = clock
        self.capacity = capacity
        self.retain = retain
        self._procs: dict[int, ManagedProcess] = {}
        self._expiry: dict[int, IDelayedCall] = {}

    def resolve_cwd(self, cwd: str | None) -> str:
        """``cwd`` as the child gets it: relative to the workspace, ``~`` expanded."""
        if not cwd:
            return self.workspace
        return os.path.normpath(os.path.join(self.workspace, os.path.expanduser(cwd)))

    def start(
        self,
        spec: ProcessSpec,
        *,
        tag: str | None = None,
        pty: tuple[int, int] | None = None,
        stdin: bool | bytes = True,
        timeout: float | None = None,
    ) -> ManagedProcess:
        """Start ``spec``; ``stdin`` False closes stdin at once, bytes are written then stdin closed.
        Raises :class:`SpawnError` (nothing started) or 409 ``CONFLICT`` for a running tag."""
        if tag is not None and any(p.tag == tag and p.running for p in self._procs.values()):
            raise ApiError("CONFLICT", f"a running process already has the tag {tag!r}")
        proc = ManagedProcess(self, spec, tag, pty is not None, self.capacity)
        child = self.spawner.spawn(
            [spec.cmd, *spec.args],
            env=spec.envs,
            cwd=self.resolve_cwd(spec.cwd),
            pty=pty,
            protocol=proc,
            timeout=timeout,
        )
        proc.child = child
        if proc.exit_info is None:
            proc.buffer.producer = _OutputControl(child)
        old = self._procs.pop(child.pid, None)
        if old is not None:
            self._cancel_expiry(child.pid)
        self._procs[child.pid] = proc
        if pty is None and child.running:
            if isinstance(stdin, bytes):
                child.write(stdin)
                child.close_stdin()
            elif stdin is False:
                child.close_stdin()
        elif pty is not None and isinstance(stdin, bytes) and child.running:
            child.write(stdin)
        if proc.exit_info is not None:
            self._exited(proc)
        self.log.info("started process {pid} {cmd!r} tag {tag!r}", pid=child.pid, cmd=spec.cmd, tag=tag)
        return proc

    def get(self, pid: int | None = None, tag: str | None = None) -> ManagedProcess:
        """The process by pid or tag (running first), or 404 ``PROCESS_NOT_FOUND``."""
        if pid is not None:
            proc = self._procs.get(pid)
            if proc is not None:
                return proc
            raise ApiError("PROCESS_NOT_FOUND", f"process with pid {pid} not found")
        if tag is not None:
            matches = [p for p in self._procs.values() if p.tag == tag]
            running = [p for p in matches if p.running]
            if running:
                return running[0]
            if matches:
                return matches[-1]
            raise ApiError("PROCESS_NOT_FOUND", f"process with tag {tag!r} not found")
        raise ApiError("BAD_REQUEST", "process selector needs a pid or a tag",
                       [{"field": "process", "message": "pid or tag required"}])

    def processes(self) -> list[ManagedProcess]:
        """Running processes and those that exited within ``retain`` seconds, oldest first."""
        return list(self._procs.values())

    def _exited(self, proc: ManagedProcess) -> None:
        pid = proc.pid
        if not pid or pid in self._expiry or self._procs.get(pid) is not proc:
            return
        self._expiry[pid] = self.clock.callLater(self.retain, self._expire, pid, proc)

    def _expire(self, pid: int, proc: ManagedProcess) -> None:
        self._expiry.pop(pid, None)
        if self._procs.get(pid) is proc:
            del self._procs[pid]

    def _cancel_expiry(self, pid: int) -> None:
        call = self._expiry.pop(pid, None)
        if call is not None and call.active():
            call.cancel()

    def stopService(self) -> Any:  # noqa: N802 (Twisted's name)
        """Forget expiry timers; the Spawner's own stopService terminates the children."""
        super().stopService()
        for pid in list(self._expiry):
            self._cancel_expiry(pid)
        return None


# --------------------------------------------------------------------------- output


def _complete_prefix(data: bytes) -> int:
    """Length of ``data`` without a trailing incomplete UTF-8 sequence (at most 3 bytes held)."""
    n = len(data)
    for back in range(1, min(3, n) + 1):
        byte = data[n - back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        if byte & 0x80 == 0:
            return n
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return n - back if back < need else n
    return n


class TextAssembler:
    """Cuts chunks into per-stream UTF-8 text without splitting characters (bytes held per stream)."""

    def __init__(self) -> None:
        self.held: dict[str, bytes] = {}

    def feed(self, stream: str, data: bytes) -> bytes:
        """The complete characters of what was held plus ``data``; holds back a partial one."""
        held = self.held.pop(stream, None)
        if held:
            data = held + data
        cut = _complete_prefix(data)
        if cut < len(data):
            self.held[stream] = data[cut:]
            return data[:cut]
        return data

    def flush(self) -> list[tuple[str, bytes]]:
        """What is still held (incomplete characters, sent as U+FFFD)."""
        out = [(s, d) for s, d in self.held.items() if d]
        self.held.clear()
        return out


def collect_output(buffer: OutputBuffer, encoding: str) -> dict[str, str]:
    """Everything retained, per stream (``stdout``, ``stderr``, and ``pty`` when any)."""
    parts: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    offset = buffer.start_offset
    while offset < buffer.end_offset:
        result = buffer.read(offset, 1024 * 1024)
        for chunk in result.chunks:
            parts.setdefault(chunk.stream, []).append(chunk.data)
        offset = result.next_offset
    joined = {k: b"".join(v) for k, v in parts.items()}
    if encoding == "base64":
        return {k: b64(v) for k, v in joined.items()}
    return {k: v.decode("utf-8", "replace") for k, v in joined.items()}



STREAM_BUFFER = 1024 * 1024
_DATA_PREFIX = {stream: b'{"' + stream.encode() + b'":' for stream in ("stdout", "stderr", "pty")}


def _data_frame(stream: str, literal: tuple[bytes, ...], event_id: int | None) -> bytes:
    """A ``data`` event: ``{"<stream>": <literal>}`` where ``literal`` is a JSON string in pieces."""
    return format_json_frame(_DATA_PREFIX[stream], *literal, b"}", event="data", id=event_id)


@implementer(IPushProducer)
class OutputStream:
    """One client's SSE view of a process's output (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        request: Any,
        proc: ManagedProcess,
        clock: IReactorTime,
        *,
        encoding: str = "text",
        heartbeat: float | None = DEFAULT_HEARTBEAT,
    ) -> None:
        self._request = request
        self._proc = proc
        self._clock = clock
        self._base64 = encoding == "base64"
        self._text = TextAssembler()
        self._heartbeat_interval = heartbeat
        self._heartbeat: LoopingCall | None = None
        self._sub: Subscription | None = None
        self._paused = False
        self._pumping = False
        self._ended = False
        self._registered = False
        self._disconnected = False
        self._done: Deferred[Any] = Deferred()

    def start(self, offset: int | None = None) -> Deferred[Any]:
        """Headers, ``start``, then output from ``offset`` (default: the oldest retained byte)."""
        request = self._request
        buffer = self._proc.buffer
        if offset is None or offset < buffer.start_offset:
            offset = buffer.start_offset
        offset = min(offset, buffer.end_offset)
        if not begin_stream(request):
            self._disconnected = True
            self._end()
            return self._done
        request.notifyFinish().addErrback(self._connection_lost)
        transport = getattr(getattr(request, "channel", None), "transport", None)
        if transport is not None and getattr(transport, "bufferSize", STREAM_BUFFER) < STREAM_BUFFER:
            # Twisted pauses a producer once 64 KiB wait to be sent: one pipe read is up to 256 KiB.
            transport.bufferSize = STREAM_BUFFER
        request.registerProducer(self, True)
        self._registered = True
        request.write(format_event(compact_json({"pid": self._proc.pid}), event="start", id=offset))
        self._sub = buffer.subscribe(self, offset)
        if self._heartbeat_interval:
            self._heartbeat = LoopingCall(self._beat)
            self._heartbeat.clock = self._clock
            self._heartbeat.start(self._heartbeat_interval, now=False).addErrback(lambda f: self._end())
        self._pump()
        return self._done

    # BufferReader
    def data_available(self) -> None:
        self._pump()

    def buffer_closed(self) -> None:
        if self._ended:
            return
        for stream, text in self._text.flush():
            self._request.write(_data_frame(stream, utf8_json_string_parts(text), None))
        info = self._proc.exit_info
        payload = end_payload(info, self._proc.timed_out) if info is not None else {"exited": False}
        self._request.write(format_event(compact_json(payload), event="end", id=self._proc.buffer.end_offset))
        self._end()

    def lagged(self, next_offset: int) -> None:
        if self._ended:
            return
        self._request.write(format_event(compact_json({"nextOffset": next_offset}), event="lagged", id=next_offset))
        self._end()

    # IPushProducer
    def pauseProducing(self) -> None:  # noqa: N802
        self._paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:  # noqa: N802
        self._disconnected = True
        self._end()

    # internals
    def _pump(self) -> None:
        if self._pumping or self._ended or self._sub is None:
            return
        self._pumping = True
        try:
            while not self._paused and not self._ended and self._sub.pending_bytes > 0:
                result = self._sub.take()
                if not result.chunks:
                    break
                for chunk in result.chunks:
                    self._send(chunk)
        finally:
            self._pumping = False

    def _send(self, chunk: Chunk) -> None:
        stream: Stream = chunk.stream
        if self._base64:
            self._request.write(_data_frame(stream, (b'"', base64.b64encode(chunk.data), b'"'), chunk.end))
            return
        text = self._text.feed(stream, chunk.data)
        held = self._text.held
        # An id promises "everything before this offset was sent": not while another stream holds bytes.
        own = len(held.get(stream, b""))
        event_id = chunk.end - own if not held or sum(len(v) for v in held.values()) == own else None
        if text:
            self._request.write(_data_frame(stream, utf8_json_string_parts(text), event_id))

    def _beat(self) -> None:
        if not self._ended and not self._paused:
            self._request.write(format_event("{}", event="keepalive"))

    def _connection_lost(self, _reason: Failure) -> None:
        self._disconnected = True
        self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        if self._sub is not None:
            self._sub.cancel()
        gone = self._disconnected or bool(getattr(self._request, "_disconnected", False))
        registered, self._registered = self._registered, False
        close_response(self._request, registered=registered, gone=gone, done=self._done)

