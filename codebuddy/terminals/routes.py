# -*- test-case-name: tests.terminals.test_routes -*-
"""
Terminal endpoints: ``/pty*`` (spec "PTY (Terminal)"; webui-contract.md §6).

``POST /pty`` starts a login shell (or ``command``) in a PTY; ``GET /pty`` lists terminals
with ``hasClient``; ``GET /pty/:id`` shows one with its current cwd; ``DELETE /pty/:id`` ends
its process group. Output: ``GET /pty/:id/output`` (SSE, the process area's events: ``start``,
``data`` with ``{"pty": text}``, ``keepalive``, ``end``; ids are byte offsets, so
``Last-Event-ID`` resumes exactly) or the WebSocket ``/pty/:id/ws`` (:mod:`codebuddy.terminals.ws`).
Input: ``POST /pty/:id/input/send {data}`` (text; ``"encoding": "base64"`` for bytes), size:
``POST /pty/:id/resize {cols, rows}``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import attrs
from autobahn.twisted.resource import WebSocketResource
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from codebuddy.process.manager import OutputStream, end_payload
from codebuddy.terminals.manager import Terminal, TerminalManager
from codebuddy.terminals.ws import TerminalSocketFactory
from codebuddy.web.errors import ApiError
from codebuddy.web.json import Empty, also_as, json_route
from codebuddy.web.sse import resume_point

__all__ = ["TerminalRoutes"]

TAGS = ("Terminals",)
_ERRORS = ("BAD_REQUEST", "TERMINAL_NOT_FOUND", "CONFLICT")


@attrs.frozen
class CreateRequest:
    """A new terminal: size, and optionally where and what to run."""

    cols: int = attrs.field(default=80, metadata={"doc": "Columns, 1-65535"})
    rows: int = attrs.field(default=24, metadata={"doc": "Rows, 1-65535"})
    cwd: str | None = attrs.field(default=None, metadata={"doc": "Start directory (relative to the workspace)"})
    shell: str | None = attrs.field(default=None, metadata={"doc": "Shell to run (default: the user's login shell)"})
    env: dict[str, str] = attrs.field(factory=dict, metadata={"doc": "Extra environment variables"})
    command: Any = attrs.field(
        default=None, metadata={"doc": "Run this instead of an interactive shell: a command line for the shell, "
                                       "or an argv list run as it is"})


@attrs.frozen
class TerminalInfo:
    """One terminal."""

    session_id: str = attrs.field(metadata={"doc": "The terminal's id"})
    id: str = attrs.field(metadata={"doc": "Same as sessionId"})
    pid: int
    cwd: str = attrs.field(metadata={"doc": "The shell's current directory"})
    shell: str
    cols: int
    rows: int
    created_at: int = attrs.field(metadata={"doc": "Epoch milliseconds"})
    status: str = attrs.field(metadata={"doc": "running or exited"})
    exit_code: int | None = attrs.field(metadata={"doc": "Exit code (-1 after a signal); null while running"})
    has_client: bool = attrs.field(metadata={"doc": "A WebSocket or SSE viewer is attached"})


@attrs.frozen
class TerminalList:
    """Every terminal (running, and exited ones not yet deleted or expired)."""

    sessions: list[TerminalInfo]


@attrs.frozen
class InputRequest:
    """Keystrokes: text by default, bytes with ``"encoding": "base64"``."""

    data: str
    encoding: str = "text"


@attrs.frozen
class ResizeRequest:
    """The new window size."""

    cols: int
    rows: int


@attrs.frozen
class WsQuery:
    """Where a WebSocket viewer starts."""

    offset: int | None = attrs.field(default=None, metadata=also_as(
        doc="Resume from this byte offset (default: the recent scrollback)"))


def _info(terminal: Terminal) -> TerminalInfo:
    info = terminal.exit_info
    return TerminalInfo(
        session_id=terminal.id,
        id=terminal.id,
        pid=terminal.pid,
        cwd=terminal.current_cwd(),
        shell=terminal.shell,
        cols=terminal.cols,
        rows=terminal.rows,
        created_at=int(terminal.created_at * 1000),
        status="running" if info is None else "exited",
        exit_code=None if info is None else end_payload(info)["exitCode"],
        has_client=terminal.has_client,
    )


class TerminalRoutes:
    """The terminal area's HTTP surface."""

    app = Klein()

    def __init__(self, manager: TerminalManager, clock: IReactorTime):
        self.manager = manager
        self.clock = clock

    @json_route(app, "POST", "/pty", body=CreateRequest, response=TerminalInfo, tags=TAGS,
                errors=("BAD_REQUEST",), summary="Create a terminal")
    def create(self, request: Any, body: CreateRequest) -> TerminalInfo:
        """Start the user's login shell (or ``command``) in a PTY of ``cols`` x ``rows``."""
        command = body.command
        if command is not None and not isinstance(command, str) and not (
            isinstance(command, list) and all(isinstance(a, str) for a in command)
        ):
            raise ApiError("BAD_REQUEST", "command must be a string or a list of strings",
                           [{"field": "command", "message": "invalid value"}])
        terminal = self.manager.create(body.cols, body.rows, cwd=body.cwd, shell=body.shell, env=body.env,
                                       command=command)
        return _info(terminal)

    @json_route(app, "GET", "/pty", response=TerminalList, tags=TAGS, summary="List terminals")
    def list_terminals(self, request: Any) -> TerminalList:
        """Every terminal with ``hasClient`` (true while a viewer is attached)."""
        return TerminalList([_info(t) for t in self.manager.terminals()])

    @json_route(app, "GET", "/pty/<terminal_id>", response=TerminalInfo, tags=TAGS, errors=("TERMINAL_NOT_FOUND",),
                summary="Show a terminal")
    def show(self, request: Any, terminal_id: str) -> TerminalInfo:
        """One terminal, with the shell's current directory and its status."""
        return _info(self.manager.get(terminal_id))

    @json_route(app, "DELETE", "/pty/<terminal_id>", response=Empty, tags=TAGS, errors=("TERMINAL_NOT_FOUND",),
                summary="Delete a terminal")
    def delete(self, request: Any, terminal_id: str) -> Empty:
        """End the terminal's process group (SIGTERM, then SIGKILL after 5 s) and forget it."""
        self.manager.delete(terminal_id)
        return Empty()

    @json_route(app, "POST", "/pty/<terminal_id>/input/send", body=InputRequest, response=Empty, tags=TAGS,
                errors=_ERRORS, summary="Type into a terminal")
    def input_send(self, request: Any, terminal_id: str, body: InputRequest) -> Empty:
        """Write ``data`` to the terminal as if typed (409 once the shell has exited)."""
        terminal = self.manager.get(terminal_id)
        if body.encoding == "base64":
            try:
                data = base64.b64decode(body.data, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError("BAD_REQUEST", "data is not valid base64",
                               [{"field": "data", "message": "invalid base64"}]) from None
        elif body.encoding == "text":
            try:
                data = body.data.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise ApiError("BAD_REQUEST", "data holds a lone surrogate, which is not text",
                               [{"field": "data", "message": "invalid text"}]) from None
        else:
            raise ApiError("BAD_REQUEST", "encoding must be 'text' or 'base64'",
                           [{"field": "encoding", "message": "invalid value"}])
        terminal.write(data)
        return Empty()

    @json_route(app, "POST", "/pty/<terminal_id>/resize", body=ResizeRequest, response=Empty, tags=TAGS,
                errors=_ERRORS, summary="Resize a terminal")
    def resize(self, request: Any, terminal_id: str, body: ResizeRequest) -> Empty:
        """Set the window size (TIOCSWINSZ; the foreground job gets SIGWINCH)."""
        self.manager.get(terminal_id).resize(body.cols, body.rows)
        return Empty()

    @json_route(app, "GET", "/pty/<terminal_id>/output", stream=True, tags=TAGS, errors=("TERMINAL_NOT_FOUND",),
                content_type="text/event-stream", summary="Follow a terminal's output (SSE)")
    def output(self, request: Any, terminal_id: str) -> Deferred[Any]:
        """Recent scrollback, then live output, as the process events ``start``, ``data``
        (``{"pty": text}``), ``keepalive`` and ``end``; ``Last-Event-ID`` resumes exactly."""
        terminal = self.manager.get(terminal_id)
        offset = resume_point(request)
        if offset is None:
            offset = terminal.scrollback_offset()
        terminal.attach()
        done = OutputStream(request, terminal.proc, self.clock).start(offset)
        return done.addBoth(_detached, terminal)

    @json_route(app, "GET", "/pty/<terminal_id>/ws", query=WsQuery, stream=True, tags=TAGS,
                errors=("BAD_REQUEST", "TERMINAL_NOT_FOUND"), summary="Terminal WebSocket")
    def websocket(self, request: Any, terminal_id: str, query: WsQuery) -> Deferred[Any]:
        """Upgrade to the terminal WebSocket: JSON messages by default, ttyd's framing with the
        ``tty`` subprotocol (see docs/terminals.md)."""
        terminal = self.manager.get(terminal_id)
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade != b"websocket":
            raise ApiError("BAD_REQUEST", "this is a WebSocket endpoint: send an Upgrade: websocket request")
        if query.offset is not None and query.offset < 0:
            raise ApiError("BAD_REQUEST", "offset must not be negative",
                           [{"field": "offset", "message": "negative"}])
        channel = request.channel
        if hasattr(channel, "setTimeout"):
            channel.setTimeout(None)  # the connection now belongs to the WebSocket
        WebSocketResource(TerminalSocketFactory(terminal, offset=query.offset)).render(request)
        return Deferred()  # never fires: the HTTP request is over, the socket lives on


def _detached(result: Any, terminal: Terminal) -> Any:
    terminal.detach()
    return result
