"""
A small Autobahn WebSocket client for the e2e tests: it records every message and the close,
and lets a test wait, with a bounded timeout, until a condition on what it received holds.

    client = await connect(daemon.url + "/api/v1/pty/<id>/ws")
    client.send_json({"type": "input", "data": "echo hi\\r"})
    await client.wait_for(lambda c: "hi" in screen_lines(c.output()))
    await client.close()

Waiting is driven by what arrives (a condition is checked again on each message and on the
close), never by sleeping: a condition still false after ``timeout`` seconds, or when the
connection ends first, fails the test with the last few messages in the error.
:class:`Waitable` is that machinery, for other incremental readers (SSE) too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Self
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint

__all__ = ["TIMEOUT", "Client", "HandshakeRefused", "Waitable", "connect", "screen_lines", "ws_url"]

TIMEOUT = 15.0
# CSI sequences (colours, bracketed paste on/off), OSC sequences (window titles), keypad modes.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>]")


def screen_lines(text: str) -> list[str]:
    """Terminal output as lines without escape sequences (a line ends at CR or LF)."""
    return re.split(r"\r\n|\r|\n", _ESCAPES.sub("", text))


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Waitable:
    """
    Bounded waits on something that receives data incrementally. Subclasses call
    :meth:`_check` whenever they received something, and set :attr:`ended` (a description)
    when nothing more can arrive.
    """

    ended: str | None = None

    def _waiting(self) -> list[tuple[Callable[[Any], bool], Deferred[None]]]:
        waiters = self.__dict__.get("_waiters")
        if waiters is None:
            waiters = self.__dict__["_waiters"] = []
        return waiters  # type: ignore[no-any-return]

    async def wait_for(self, condition: Callable[[Self], bool], timeout: float = TIMEOUT,
                       what: str = "condition") -> None:
        """Until ``condition(self)`` holds; AssertionError after ``timeout`` s or if it ends first."""
        if condition(self):
            return
        if self.ended is not None:
            raise AssertionError(f"{what}: ended first ({self.ended}); {self._tail()}")
        d: Deferred[None] = Deferred()
        entry = (condition, d)
        self._waiting().append(entry)
        d.addTimeout(timeout, _reactor())
        try:
            await d
        except TimeoutError:
            raise AssertionError(f"{what}: not met within {timeout} s; {self._tail()}") from None
        finally:
            if entry in self._waiting():
                self._waiting().remove(entry)

    def _check(self) -> None:
        for entry in list(self._waiting()):
            condition, d = entry
            if d.called:
                continue
            if condition(self):
                self._waiting().remove(entry)
                d.callback(None)
            elif self.ended is not None:
                self._waiting().remove(entry)
                d.errback(AssertionError(f"ended first ({self.ended}); {self._tail()}"))

    def _tail(self) -> str:
        return ""


class HandshakeRefused(Exception):
    """The server did not switch protocols (the reason names the HTTP status, e.g. ``[403]``)."""


class Client(Waitable, WebSocketClientProtocol):
    """One WebSocket connection: its messages (``(payload, is_binary)``) and its close."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[bytes, bool]] = []
        self.negotiated: str | None = None
        self.close_info: tuple[bool, int | None, str | None] | None = None
        self.opened: Deferred[Client] = Deferred()

    # -- Autobahn callbacks -----------------------------------------------------------------------

    def onConnect(self, response: Any) -> None:  # noqa: N802 (Autobahn's name)
        self.negotiated = response.protocol

    def onOpen(self) -> None:  # noqa: N802
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        self.messages.append((payload, isBinary))
        self._check()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        self.close_info = (wasClean, code, reason)
        self.ended = f"closed: {self.close_info}"
        if not self.opened.called:
            self.opened.errback(HandshakeRefused(reason or "connection closed during the handshake"))
        self._check()

    # -- reading ----------------------------------------------------------------------------------

    def json_messages(self) -> list[dict[str, Any]]:
        """The text messages, parsed (the JSON protocol)."""
        return [json.loads(payload) for payload, binary in self.messages if not binary]

    def output(self) -> str:
        """The ``data`` of every ``{"type": "output"}`` message so far, joined."""
        return "".join(m["data"] for m in self.json_messages() if m.get("type") == "output")

    def lines(self) -> list[str]:
        """:func:`screen_lines` of :meth:`output`."""
        return screen_lines(self.output())

    def tty_frames(self, command: bytes) -> list[bytes]:
        """The bodies of the binary ``tty`` frames whose command byte is ``command``."""
        return [payload[1:] for payload, binary in self.messages if binary and payload[:1] == command]

    def tty_output(self) -> bytes:
        """The output bytes of the ``tty`` protocol so far (frames ``0``), joined."""
        return b"".join(self.tty_frames(b"0"))

    # -- writing ----------------------------------------------------------------------------------

    def send_json(self, message: Any) -> None:
        self.sendMessage(json.dumps(message).encode(), isBinary=False)

    def type(self, keys: str) -> None:
        """Send keystrokes as a JSON ``input`` message."""
        self.send_json({"type": "input", "data": keys})

    # -- waiting ----------------------------------------------------------------------------------

    async def wait_line(self, line: str, timeout: float = TIMEOUT) -> None:
        """Until ``line`` is one of the output's :meth:`lines` (JSON protocol)."""
        await self.wait_for(lambda c: line in c.lines(), timeout, f"output line {line!r}")

    async def wait_closed(self, timeout: float = TIMEOUT) -> tuple[bool, int | None, str | None]:
        """The close as (was_clean, code, reason), waiting (bounded) for it."""
        await self.wait_for(lambda c: c.close_info is not None, timeout, "close")
        assert self.close_info is not None
        return self.close_info

    async def close(self, timeout: float = TIMEOUT) -> None:
        """Start the closing handshake and wait (bounded) until the connection is gone."""
        if self.close_info is None:
            self.sendClose(code=1000)
            await self.wait_closed(timeout)

    def _tail(self) -> str:
        return f"{len(self.messages)} messages, the last ones: {self.messages[-3:]!r}"[:3000]


def ws_url(http_url: str, path: str = "") -> str:
    """``http://host:port`` + ``path`` as a ``ws://`` URL."""
    return "ws" + http_url.removeprefix("http") + path


async def connect(url: str, *, protocols: list[str] | None = None, origin: str | None = None,
                  headers: dict[str, str] | None = None, timeout: float = TIMEOUT) -> Client:
    """
    Open a WebSocket to ``url`` (``ws://`` or ``http://``); the open :class:`Client`, or
    :class:`HandshakeRefused` when the server answers the upgrade with anything but 101.
    """
    if url.startswith("http"):
        url = ws_url(url)
    factory = WebSocketClientFactory(url, origin=origin, protocols=protocols or [], headers=headers or {})
    factory.protocol = Client
    # No size limit on what we receive (the tests look at whole outputs); no fragmentation of what we send.
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0, openHandshakeTimeout=timeout)
    parts = urlsplit(url)
    endpoint = TCP4ClientEndpoint(_reactor(), parts.hostname or "127.0.0.1", parts.port or 80, timeout=int(timeout))
    client: Client = await endpoint.connect(factory).addTimeout(timeout, _reactor())
    await client.opened.addTimeout(timeout, _reactor())
    return client
