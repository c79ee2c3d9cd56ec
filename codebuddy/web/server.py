"""
The HTTP server: our ``Site`` and ``Request`` classes and the service that listens.

* :class:`CodeBuddyRequest` bounds the memory and disk a request body may use: bodies are
  kept in memory up to 1 MiB, spooled to an unlinked temporary file up to the site's cap,
  and counted but dropped past it (the route then answers 413) — twisted.web alone would
  store any body, however large.
* :class:`CodeBuddySite` writes access-log lines without passwords or tokens.
* :class:`HTTPService` listens on a Twisted endpoint, tells systemd ``READY=1`` once the
  port exists and ``STOPPING=1`` on the way down.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import time
import weakref
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from codebuddy.systemd import sd_notify
from codebuddy.web.json import internal_error, render_error

MEMORY_BODY_LIMIT = 1024 * 1024
DEFAULT_BODY_CAP = 16 * 1024 * 1024


class BoundedBody:
    """
    A request body sink: memory, then a temporary file, then nothing.

    Past ``limit`` bytes it only counts (``overflowed`` becomes true) so that a huge
    body cannot fill memory or the disk; :func:`codebuddy.web.json.read_body` turns
    that into 413 ``PAYLOAD_TOO_LARGE``.
    """

    def __init__(self, limit: int, memory_limit: int = MEMORY_BODY_LIMIT):
        self.limit = limit
        self.memory_limit = memory_limit
        self.received = 0
        self.overflowed = False
        self._file: Any = io.BytesIO()

    def write(self, data: bytes) -> int:
        self.received += len(data)
        if self.overflowed:
            return len(data)
        if self.received > self.limit:
            self.overflowed = True
            self._file.close()
            self._file = io.BytesIO()
            return len(data)
        if isinstance(self._file, io.BytesIO) and self.received > self.memory_limit:
            spooled = tempfile.TemporaryFile()
            spooled.write(self._file.getvalue())
            self._file = spooled
        self._file.write(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._file.seek(offset, whence))

    def tell(self) -> int:
        return int(self._file.tell())

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._file.read(size)
        return data

    def close(self) -> None:
        self._file.close()


class StreamedBody:
    """
    Base of the bodies that body openers return: twisted.web writes every chunk to
    ``request.content`` and asks for its size, but the bytes go elsewhere as they arrive
    (:meth:`consume`), so there is nothing to read back. ``received`` counts what came in.
    """

    received = 0

    def write(self, data: bytes) -> None:
        self.received += len(data)
        self.consume(data)

    def consume(self, data: bytes) -> None:
        """Use one chunk of the body (nothing by default: the body is dropped)."""

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.received

    def tell(self) -> int:
        return self.received

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        """The request is over (answered, or its connection lost)."""


class CodeBuddyRequest(Request):
    """A request whose body is bounded (see :class:`BoundedBody`)."""

    guard: Any = None

    def processingFailed(self, reason: Failure) -> Failure:
        """An error escaped every handler: answer a JSON 500 naming an incident id, never HTML."""
        body = render_error(self, internal_error(self, reason))
        if not self.finished and not self._disconnected:
            self.setHeader(b"content-length", b"%d" % len(body))
            self.write(body)
            self.finish()
        return reason

    def gotLength(self, length: int | None) -> None:
        """
        The headers are in: choose where the body goes. A route that streams its body
        (uploads) registered an opener for its method and path with the Site; everything
        else gets a :class:`BoundedBody`.
        """
        site = getattr(self.channel, "site", None)
        openers = getattr(site, "body_openers", None)
        if openers:
            uri: bytes = getattr(self.channel, "_path", b"")
            command: bytes = getattr(self.channel, "_command", b"")
            opener = openers.get((command, uri.split(b"?", 1)[0]))
            if opener is not None:
                body = opener.open_body(self, uri, length)
                if body is not None:
                    self.content = body
                    return
        self.content = BoundedBody(getattr(site, "body_cap", DEFAULT_BODY_CAP))  # type: ignore[assignment]


_SECRET_QUERY = re.compile(rb"([?&](?:password|token|access_token|signature|secret)=)[^&#]*", re.I)


def redact_uri(uri: bytes) -> bytes:
    """``/x?token=abc&y=1`` -> ``/x?token=***&y=1``."""
    return _SECRET_QUERY.sub(rb"\1***", uri)


def access_log_line(timestamp: str, request: Any) -> str:
    """One combined-log-format line with secrets removed from the URL."""
    referrer = _quote(request.getHeader(b"referer") or b"-")
    agent = _quote(request.getHeader(b"user-agent") or b"-")
    addr = request.getClientAddress()
    ip = getattr(addr, "host", None) or "-"
    line = '{ip} - - {ts} "{method} {uri} {proto}" {code} {length} "{ref}" "{agent}"'.format(
        ip=ip,
        ts=timestamp,
        method=_quote(request.method),
        uri=_quote(redact_uri(request.uri)),
        proto=_quote(request.clientproto),
        code=request.code,
        length=request.sentLength or "-",
        ref=redact_uri(referrer.encode()).decode(),
        agent=agent,
    )
    return line


def _quote(value: bytes) -> str:
    return value.decode("latin-1").replace('"', "%22").replace("\\", "%5C")


class CodeBuddySite(Site):
    """The daemon's ``Site``: bounded bodies, redacted access logs, optional access log."""

    requestFactory = CodeBuddyRequest
    body_cap = DEFAULT_BODY_CAP

    def __init__(
        self,
        resource: IResource,
        access_log: str | None = "-",
        body_openers: dict[tuple[bytes, bytes], Any] | None = None,
        **kwargs: Any,
    ):
        log_path = access_log if access_log not in (None, "-", "none") else None
        # Form parsing would read whole multipart bodies into memory; no route uses it.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, logPath=log_path, logFormatter=access_log_line, **kwargs)
        self.body_openers = dict(body_openers or {})
        self.access_log_enabled = access_log not in (None, "none")
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()

    def log(self, request: Any) -> None:
        if self.access_log_enabled:
            super().log(request)

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 (Twisted's name)
        channel = super().buildProtocol(addr)
        if channel is not None:
            self.channels.add(channel)
        return channel

    def close_connections(self, clock: IReactorTime, grace: float = 2.0) -> Deferred[None]:
        """
        Close every open connection once what was written to it has been sent (the last
        events of streams that ended during shutdown); abort those still open after ``grace``
        seconds. Fires when all are closed. Twisted's own shutdown drops connections with
        their unsent data.

        The closing starts one clock turn later: areas finish their streams from the clock
        (an output buffer reports its end that way), after the call that stopped them.
        """
        done: Deferred[None] = Deferred()
        deadline = clock.seconds() + grace
        transports: list[Any] = []

        def start() -> None:
            transports.extend(t for t in map(_transport_of, list(self.channels)) if t is not None)
            for transport in transports:
                transport.loseConnection()
            check()

        def check() -> None:
            open_ = [t for t in transports if not getattr(t, "disconnected", True)]
            if not open_:
                done.callback(None)
            elif clock.seconds() >= deadline:
                for transport in open_:
                    transport.abortConnection()
                done.callback(None)
            else:
                clock.callLater(0.02, check)

        clock.callLater(0, start)
        return done


def _transport_of(channel: Any) -> Any:
    """The TCP transport of a channel built by a Site (which wraps HTTPChannel in a generic
    protocol that picks HTTP/1.1 or HTTP/2 and does not expose ``transport`` itself)."""
    transport = getattr(channel, "transport", None)
    if transport is None:
        transport = getattr(getattr(channel, "_channel", None), "transport", None)
    return transport


class HTTPService(Service):
    """
    Listen on ``endpoint`` with ``site``; report readiness to systemd.

    A listen failure that is known at once (port in use, bad socket path) raises
    :class:`ListenError` from ``startService`` so that twistd exits with one line.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        site: Site,
        description: str,
        on_listening: Callable[[IListeningPort], None] | None = None,
        notify: Callable[[bytes], bool] = sd_notify,
    ):
        self.endpoint = endpoint
        self.site = site
        self.description = description
        self.on_listening = on_listening
        self.notify = notify
        self.port: IListeningPort | None = None
        self.started_at = time.time()
        self._listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        failures: list[Failure] = []
        d = self.endpoint.listen(self.site)
        self._listening = d
        d.addCallbacks(self._listened, failures.append)
        if failures:
            self.running = False
            raise ListenError(f"cannot listen on {self.description}: {_reason(failures[0])}")
        d.addErrback(self._failed_later)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        if self.on_listening is not None:
            self.on_listening(port)
        self.log.info("codebuddy listening on {url}", url=self.url)
        self.notify(b"READY=1\nSTATUS=listening on " + self.url.encode())
        return port

    def _failed_later(self, failure: Failure) -> None:
        self.log.critical("cannot listen on {where}: {reason}", where=self.description, reason=_reason(failure))
        from twisted.internet import reactor

        reactor.stop()  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:8080`` (or ``unix:/path``) once listening."""
        if self.port is None:
            return self.description
        host: Any = self.port.getHost()
        if hasattr(host, "port"):
            address = host.host
            if ":" in address:
                address = f"[{address}]"
            return f"http://{address}:{host.port}"
        name = getattr(host, "name", "")
        return f"unix:{os.fsdecode(name) if isinstance(name, bytes) else name}"

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.notify(b"STOPPING=1")
        if self.port is not None:
            port, self.port = self.port, None
            stopped = port.stopListening()
            return stopped if isinstance(stopped, Deferred) else None
        return None


class ListenError(Exception):
    """The daemon could not listen where it was told to."""


def _reason(failure: Failure) -> str:
    value = failure.value
    inner = getattr(value, "socketError", None)
    if inner is not None:
        return str(getattr(inner, "strerror", None) or inner)
    return str(value) or failure.type.__name__  # type: ignore[union-attr]


__all__ = [
    "BoundedBody",
    "CodeBuddyRequest",
    "CodeBuddySite",
    "HTTPService",
    "ListenError",
    "access_log_line",
    "redact_uri",
]
