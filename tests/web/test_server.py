"""Site, request bodies, access logs and the listening service."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from codebuddy.web.server import BoundedBody, CodeBuddySite, HTTPService, ListenError, access_log_line, redact_uri


class BoundedBodyTests(SynchronousTestCase):
    def test_memory_then_file(self) -> None:
        """Small bodies stay in memory, larger ones spill to a file, both read back whole."""
        for size in (10, 3000):
            body = BoundedBody(limit=10_000, memory_limit=1000)
            data = bytes(range(256)) * (size // 256 + 1)
            body.write(data[:size])
            body.seek(0)
            self.assertEqual(body.read(), data[:size])
            self.assertFalse(body.overflowed)

    def test_overflow_drops(self) -> None:
        """Past the limit the body only counts bytes and keeps none."""
        body = BoundedBody(limit=100, memory_limit=50)
        for _ in range(10):
            body.write(b"x" * 30)
        self.assertTrue(body.overflowed)
        self.assertEqual(body.received, 300)
        body.seek(0, 2)
        self.assertEqual(body.tell(), 0)


class AccessLogTests(SynchronousTestCase):
    def test_redact(self) -> None:
        """Passwords, tokens and signatures are removed from logged URLs."""
        self.assertEqual(
            redact_uri(b"/api/v1/x?password=hunter2&a=1&token=abc&Signature=s"),
            b"/api/v1/x?password=***&a=1&token=***&Signature=***",
        )
        self.assertEqual(redact_uri(b"/api/v1/x?passwords=1"), b"/api/v1/x?passwords=1")

    def test_line(self) -> None:
        """The access-log line carries method, redacted URI and status, never the secret."""
        request = DummyRequest([b""])
        request.method = b"GET"
        request.uri = b"/api/v1/sessions?password=hunter2"
        request.clientproto = b"HTTP/1.1"
        request.code = 200
        request.sentLength = 12
        line = access_log_line("[ts]", request)
        self.assertNotIn("hunter2", line)
        self.assertIn('"GET /api/v1/sessions?password=*** HTTP/1.1" 200 12', line)

    def test_disabled(self) -> None:
        """access_log='none' writes nothing."""
        site = CodeBuddySite(Resource(), access_log="none")
        written: list[str] = []
        site._logFile = type("F", (), {"write": written.append})()  # type: ignore[assignment]
        site.log(DummyRequest([b""]))
        self.assertEqual(written, [])


class _Endpoint:
    def __init__(self, result: Any):
        self.result = result

    def listen(self, factory: Any) -> Any:
        return self.result


class _Port:
    def __init__(self) -> None:
        self.stopped = False

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 8080)

    def stopListening(self) -> Any:
        self.stopped = True
        return succeed(None)


def record(notes: list[bytes]) -> Any:
    """A notify function that records what it is sent."""

    def notify(state: bytes) -> bool:
        notes.append(state)
        return True

    return notify


class HTTPServiceTests(SynchronousTestCase):
    def test_ready_after_listen(self) -> None:
        """READY=1 is sent once the port listens, STOPPING=1 on stop, and the port is closed."""
        notes: list[bytes] = []
        port = _Port()
        service = HTTPService(_Endpoint(succeed(port)), CodeBuddySite(Resource()), "tcp:8080", notify=record(notes))  # type: ignore[arg-type]
        service.startService()
        self.assertEqual(service.url, "http://127.0.0.1:8080")
        self.assertTrue(notes[0].startswith(b"READY=1"))
        service.stopService()
        self.assertEqual(notes[-1], b"STOPPING=1")
        self.assertTrue(port.stopped)

    def test_listen_failure(self) -> None:
        """A port that cannot be bound raises ListenError with one readable reason, no READY."""
        notes: list[bytes] = []
        error = CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use"))
        service = HTTPService(_Endpoint(fail(error)), CodeBuddySite(Resource()), "tcp:8080", notify=record(notes))
        with self.assertRaises(ListenError) as caught:
            service.startService()
        self.assertIn("Address already in use", str(caught.exception))
        self.assertEqual(notes, [])

    def test_real_endpoint(self) -> None:
        """With a real TCP endpoint on a memory reactor, the site is what listens."""
        reactor = MemoryReactorClock()
        site = CodeBuddySite(Resource())
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        service = HTTPService(endpoint, site, "tcp:0", notify=record([]))
        service.startService()
        self.assertIs(reactor.tcpServers[0][1], site)
