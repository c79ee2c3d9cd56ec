# -*- test-case-name: tests.workers.test_remote -*-
"""
Talking to remote codebuddy daemons (workers added with ``POST /workers``) with treq.

Every call is bounded on the injected clock (3 s by default, longer for a proxied DELETE,
which waits for the remote worker to end); redirects are not followed (the credential must
not travel to another host); bodies are capped. Failures of any kind (refused, timed out,
not JSON, too big) raise :class:`RemoteError` with a one-line reason, which listings show as
the worker's ``error`` with status ``offline``.

``open_stream`` relays a remote Server-Sent Events stream (a log tail) to a request as it
arrives, passing the client's flow control through to the remote connection.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from codebuddy.web.client import BodyTooLarge, read_body
from codebuddy.web.json import RESPONSE_WRITTEN
from codebuddy.web.sse import begin_stream, close_response

__all__ = ["RemoteClient", "RemoteError", "StreamRelay", "quiet_pool"]

DEFAULT_TIMEOUT = 3.0
MAX_BODY = 16 * 1024 * 1024


class QuietClientFactory(_HTTP11ClientFactory):
    """twisted.web's client connection factory without its "Starting/Stopping factory" log lines
    (one pair per request to a remote: noise in the daemon log and the telemetry log)."""

    noisy = False


def quiet_pool(reactor: Any) -> HTTPConnectionPool:
    """A non-persistent connection pool whose connections do not log their start and stop."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    pool._factory = QuietClientFactory  # type: ignore[misc]
    return pool


class RemoteError(Exception):
    """A remote daemon could not be asked (the message says why)."""


def _describe(failure: Failure) -> str:
    value = failure.value
    name = type(value).__name__
    reasons = getattr(value, "reasons", None)
    if reasons:  # ResponseNeverReceived and friends wrap the real reasons
        inner = reasons[0]
        value = getattr(inner, "value", inner)
        name = type(value).__name__
    text = str(value).strip()
    return f"{name}: {text}" if text and text != name else name


class RemoteClient:
    """Bounded JSON requests to other codebuddy daemons."""

    log = Logger()
    connect_timeout = DEFAULT_TIMEOUT

    def __init__(self, http: Any, clock: IReactorTime, timeout: float = DEFAULT_TIMEOUT,
                 max_body: int = MAX_BODY) -> None:
        self.http = http
        self.clock = clock
        self.timeout = timeout
        self.max_body = max_body

    @staticmethod
    def headers(credential: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "X-CodeBuddy-Request": "1", **(extra or {})}
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        return headers

    def fetch_json(self, method: str, url: str, credential: str | None,
                   timeout: float | None = None) -> Deferred[tuple[int, Any]]:
        """``(status, parsed JSON body or None)``; :class:`RemoteError` when there is no usable answer."""
        return self._bounded(self._fetch(method, url, credential), timeout)

    async def _fetch(self, method: str, url: str, credential: str | None) -> tuple[int, Any]:
        response = await self.http.request(method, url, headers=self.headers(credential),
                                           allow_redirects=False, unbuffered=True)
        body = await read_body(response, self.max_body)
        if not body.strip():
            return response.code, None
        try:
            return response.code, json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise RemoteError(f"HTTP {response.code} with a body that is not JSON") from None

    def open_stream(self, url: str, credential: str | None,
                    extra: dict[str, str] | None = None) -> Deferred[Any]:
        """
        Start a GET whose answer is a stream; fires with the response once its headers arrived
        (bounded like every call). The body is not read: hand the response to :class:`StreamRelay`,
        or read it with :meth:`read_json`.
        """
        headers = self.headers(credential, extra)
        return self._bounded(self._open(url, headers), None)

    async def _open(self, url: str, headers: dict[str, str]) -> Any:
        return await self.http.request("GET", url, headers=headers, allow_redirects=False, unbuffered=True)

    def read_json(self, response: Any) -> Deferred[Any]:
        """The (bounded) JSON body of a response from :meth:`open_stream` (None when not JSON)."""

        async def read() -> Any:
            body = await read_body(response, self.max_body)
            try:
                return json.loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError):
                return None

        return self._bounded(read(), None)

    def _bounded(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None) -> Deferred[Any]:
        limit = self.timeout if timeout is None else timeout
        d = ensureDeferred(coroutine).addTimeout(limit, self.clock)

        def failed(failure: Failure) -> Any:
            if failure.check(RemoteError, CancelledError):
                return failure
            if failure.check(TimeoutError):
                raise RemoteError(f"no answer within {limit:g} s")
            if failure.check(BodyTooLarge):
                raise RemoteError(f"answer larger than {self.max_body} bytes")
            raise RemoteError(_describe(failure))

        d.addErrback(failed)
        return d


@implementer(IPushProducer)
class StreamRelay(Protocol):
    """
    Writes a remote response's body to ``request`` as it arrives (an SSE stream passed through
    unchanged: its ids are the remote's). Pausing the request pauses the remote connection;
    a client that goes away closes it.
    """

    log = Logger()

    def __init__(self, request: Any) -> None:
        self.request = request
        self.done: Deferred[Any] = Deferred(canceller=lambda _d: self._close())
        self._registered = False
        self._gone = False
        self._ended = False

    def relay(self, response: Any) -> Deferred[Any]:
        request = self.request
        if not begin_stream(request):
            self._gone = True
            response.deliverBody(self)
            self._close()
            return self.done
        request.notifyFinish().addErrback(self._client_gone)
        request.registerProducer(self, True)
        self._registered = True
        response.deliverBody(self)
        return self.done

    # Protocol (the remote body)
    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's name)
        if not self._ended and not self._gone:
            self.request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if not reason.check(ResponseDone, PotentialDataLoss, ConnectionDone) and not self._gone:
            StreamRelay.log.info("Remote stream ended: {reason}", reason=_describe(reason))
        self._finish()

    # IPushProducer (our client)
    def pauseProducing(self) -> None:  # noqa: N802
        transport: Any = self.transport
        if transport is not None:
            transport.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        transport: Any = self.transport
        if transport is not None:
            transport.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        self._gone = True
        self._close()

    def _client_gone(self, _reason: Failure) -> None:
        self._gone = True
        self._close()

    def _close(self) -> None:
        transport: Any = self.transport
        if transport is not None and not self._ended:
            transport.stopProducing()
        self._finish()

    def _finish(self) -> None:
        if self._ended:
            return
        self._ended = True
        gone = self._gone or bool(getattr(self.request, "_disconnected", False))
        registered, self._registered = self._registered, False
        close_response(self.request, registered=registered, gone=gone, done=self.done)
        if not self.done.called:
            self.done.callback(RESPONSE_WRITTEN)
