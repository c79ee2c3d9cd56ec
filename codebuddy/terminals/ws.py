# -*- test-case-name: tests.terminals.test_ws -*-
"""
The terminal WebSocket, ``/api/v1/pty/:id/ws`` (ARCHITECTURE.md §5; webui-contract.md §6).

Two protocols, chosen by the client's ``Sec-WebSocket-Protocol``:

- **JSON** (no subprotocol; what the official CodeBuddy Web UI speaks). Text frames holding one
  JSON object. In: ``{"type":"input","data":"<keystrokes>"}``, ``{"type":"resize","cols":C,"rows":R}``,
  ``{"type":"ping"}``. Out: ``{"type":"output","data":"<text>"}`` (UTF-8 decoded without ever
  splitting a character across messages), ``{"type":"exit","exitCode":N,"signal":S}`` (then the
  server closes the connection), ``{"type":"pong"}``, and ``{"type":"error","message":...}`` for a
  message it cannot use.
- **tty** (ttyd's binary framing, for terminal clients that speak it). Frames whose first byte is a
  command. In: ``0`` input bytes, ``1`` resize ``{"columns":C,"rows":R}``, ``2`` pause, ``3``
  resume, and the initial ``{"AuthToken":..,"columns":..,"rows":..}``. Out: ``0`` output bytes,
  ``1`` window title, ``2`` preferences (``{}``). The exit is a normal close.

A new viewer first gets the recent scrollback, then live output (``?offset=N`` resumes from an
exact byte offset instead). Output is pulled from the terminal's output buffer only while the
socket's transport accepts more (this protocol is the transport's push producer, after the HTTP
channel that handled the upgrade is unregistered): a slow client pauses the shell's output, and
one that stays stalled is detached (closed with code 4000, "lagged"), never the terminal.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from codebuddy.process.buffer import Subscription
from codebuddy.process.manager import TextAssembler, end_payload
from codebuddy.terminals.manager import Terminal
from codebuddy.web.errors import ApiError
from codebuddy.web.json import utf8_json_string_parts

__all__ = ["MAX_MESSAGE", "TerminalSocket", "TerminalSocketFactory"]

MAX_MESSAGE = 16 * 1024 * 1024  # a large paste fits; anything bigger is refused (close 1009)
TAKE_BYTES = 256 * 1024
CLOSE_LAGGED = 4000
TTY_PROTOCOL = "tty"
_OUTPUT_PREFIX = b'{"type":"output","data":'


class TerminalSocketFactory(WebSocketServerFactory):
    """One factory per upgrade request: it carries the terminal and where to start reading."""

    def __init__(self, terminal: Terminal, *, offset: int | None = None, ping_interval: float = 30.0) -> None:
        super().__init__()
        self.terminal = terminal
        self.offset = offset
        # Origin and credentials were checked by the request guard before the upgrade.
        self.setProtocolOptions(
            maxMessagePayloadSize=MAX_MESSAGE,
            maxFramePayloadSize=MAX_MESSAGE,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_interval * 4,  # a paused client cannot answer pings promptly
            openHandshakeTimeout=10,
            closeHandshakeTimeout=10,  # a client behind on reading needs time to reach the close frame
            failByDrop=False,  # protocol errors (1009 too big, ...) send a close frame before dropping
            allowedOrigins=["*"],
            allowNullOrigin=True,
            webStatus=False,
            tcpNoDelay=True,
        )


@implementer(IPushProducer)
class TerminalSocket(WebSocketServerProtocol):
    """One viewer of a terminal over a WebSocket."""

    # Not ``log``: Autobahn's own ``log`` (txaio, filtered at info) carries its frame-level debug.
    _log = Logger()
    factory: TerminalSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.terminal: Terminal | None = None
        self.tty = False
        self._sub: Subscription | None = None
        self._text = TextAssembler()
        self._paused = False
        self._pumping = False
        self._attached = False
        self._done = False

    # -- handshake --------------------------------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> str | None:  # noqa: N802 (Autobahn's name)
        self.terminal = self.factory.terminal
        if TTY_PROTOCOL in request.protocols:
            self.tty = True
            return TTY_PROTOCOL
        return None

    def onOpen(self) -> None:  # noqa: N802
        try:
            self._open()
        except Exception:
            self._log.failure("terminal WebSocket failed to open")
            self.dropConnection(abort=True)

    def _open(self) -> None:
        terminal = self.terminal
        assert terminal is not None
        # The HTTP channel that handled the upgrade is still the transport's producer.
        transport: Any = self.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self, True)
        terminal.attach()
        self._attached = True
        if self.tty:
            title = f"{terminal.shell} ({terminal.id[:8]})".encode()
            self._emit(b"1" + title, True)
            self._emit(b"2{}", True)
        buffer = terminal.buffer
        offset = self.factory.offset
        if offset is None:
            offset = terminal.scrollback_offset()
        else:  # as SSE resumes: clamped to what is retained
            offset = min(max(offset, buffer.start_offset), buffer.end_offset)
        self._sub = buffer.subscribe(self, offset)
        self._pump()

    # -- output (BufferReader) --------------------------------------------------------------------

    def data_available(self) -> None:
        self._pump()

    def buffer_closed(self) -> None:
        if self._done:
            return
        for _stream, held in self._text.flush():
            self._send_output(held)
        terminal = self.terminal
        info = terminal.exit_info if terminal is not None else None
        self._done = True
        if not self.tty:
            end = end_payload(info) if info is not None else {"exitCode": -1}
            message = {"type": "exit", "exitCode": end["exitCode"],
                       "signal": info.signal if info is not None else None}
            self._emit(json.dumps(message, separators=(",", ":")).encode(), False)
        self._close(1000, "terminal exited")

    def lagged(self, next_offset: int) -> None:
        if self._done:
            return
        self._done = True
        self._log.info("terminal {id}: a WebSocket viewer stalled; detaching it", id=self._terminal_id)
        self._close(CLOSE_LAGGED, f"lagged; resume from offset {next_offset}")

    def _pump(self) -> None:
        if self._pumping or self._done or self._sub is None:
            return
        self._pumping = True
        try:
            while not self._paused and not self._done and self._sub.pending_bytes > 0:
                result = self._sub.take(TAKE_BYTES)
                if not result.chunks:
                    break
                for chunk in result.chunks:
                    if self.tty:
                        self._emit(b"0" + chunk.data, True)
                    else:
                        self._send_output(self._text.feed("pty", chunk.data))
        finally:
            self._pumping = False

    def _send_output(self, data: bytes) -> None:
        if data:
            self._emit(b"".join((_OUTPUT_PREFIX, *utf8_json_string_parts(data), b"}")), False)

    def _emit(self, payload: bytes, binary: bool) -> None:
        """Send one message while the socket is open; once it is closing, stop reading output."""
        if self.state != self.STATE_OPEN:
            self._done = True
            self._release()
            return
        self.sendMessage(payload, isBinary=binary)

    def _close(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose(code=code, reason=reason)

    # -- flow control (IPushProducer for the socket's transport) ----------------------------------

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's name)
        self._paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:  # noqa: N802
        self._paused = True
        self._release()

    # -- input ------------------------------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803 (Autobahn's names)
        try:
            if self.tty:
                self._tty_message(payload)
            else:
                self._json_message(payload)
        except ApiError as exc:
            self._error(exc.message)

    def _json_message(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self._error("messages must be JSON objects")
            return
        if not isinstance(message, dict):
            self._error("messages must be JSON objects")
            return
        kind = message.get("type")
        terminal = self.terminal
        assert terminal is not None
        if kind == "input":
            data = message.get("data")
            if not isinstance(data, str):
                self._error("input needs a string 'data'")
                return
            if data:
                terminal.write(data.encode("utf-8", "surrogatepass"))
        elif kind == "resize":
            terminal.resize(message.get("cols"), message.get("rows"))
        elif kind == "ping":
            self._emit(b'{"type":"pong"}', False)
        else:
            self._error(f"unknown message type {kind!r}")

    def _tty_message(self, payload: bytes) -> None:
        if not payload:
            return
        terminal = self.terminal
        assert terminal is not None
        command, body = payload[:1], payload[1:]
        if command == b"0":
            if body:
                terminal.write(body)
        elif command in (b"1", b"{"):
            try:
                size = json.loads(body if command == b"1" else payload)
            except (ValueError, UnicodeDecodeError):
                return
            if isinstance(size, dict) and "columns" in size and "rows" in size:
                terminal.resize(size["columns"], size["rows"])
        elif command == b"2":
            self.pauseProducing()
        elif command == b"3":
            self.resumeProducing()

    def _error(self, message: str) -> None:
        if not self.tty and not self._done:
            self._emit(json.dumps({"type": "error", "message": message}, separators=(",", ":")).encode(), False)

    # -- end --------------------------------------------------------------------------------------

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        self._release()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._release()
        super().connectionLost(reason)

    def _release(self) -> None:
        if self._sub is not None:
            self._sub.cancel()
            self._sub = None
        if self._attached and self.terminal is not None:
            self._attached = False
            self.terminal.detach()

    @property
    def _terminal_id(self) -> str:
        return self.terminal.id if self.terminal is not None else "?"


TerminalSocketFactory.protocol = TerminalSocket  # defined after the factory, which names it
