"""
Tests for :mod:`codebuddy.web.sse`: SSE framing, the bounded :class:`EventLog`, and
:class:`EventStream` both over a real twisted.web ``Site`` (``StubTreq``, in memory) and
against a fake request whose disconnects and producer registrations we control.

Time only moves through an injected :class:`Clock`; nothing touches the global reactor.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import treq
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from codebuddy.web.json import RESPONSE_WRITTEN
from codebuddy.web.sse import (
    Event,
    EventLog,
    EventLogClosed,
    EventStream,
    format_comment,
    format_event,
    resume_point,
    serve_log,
)

URL = "http://codebuddy.test/api/v1/stream"
CONNECTED = b": connected\n\n"
KEEPALIVE = b": keepalive\n\n"

PROPERTY_SETTINGS = settings(deadline=None, derandomize=True, max_examples=200)


# --------------------------------------------------------------------------- helpers


@attrs.frozen
class Frame:
    """One parsed SSE frame: an event (``data`` not None) or a comment-only block."""

    id: str | None
    event: str | None
    data: str | None
    comments: tuple[str, ...]


def parse_sse(body: bytes) -> list[Frame]:
    """
    Parse an SSE body strictly as we write it: LF line endings only, frames separated
    by a blank line, ``field: value`` with one space.
    """
    text = body.decode("utf-8")
    assert "\r" not in text, f"CR in SSE body: {text!r}"
    assert text == "" or text.endswith("\n\n"), f"unterminated frame: {text!r}"
    frames = []
    for block in text.split("\n\n")[:-1]:
        fields: dict[str, str] = {}
        data: list[str] = []
        comments: list[str] = []
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line[2:])
                continue
            name, sep, value = line.partition(": ")
            assert sep, f"field without ': ' in {line!r}"
            if name == "data":
                data.append(value)
            else:
                assert name not in fields, f"duplicate {name} in {block!r}"
                fields[name] = value
        frames.append(
            Frame(
                id=fields.get("id"),
                event=fields.get("event"),
                data="\n".join(data) if data else None,
                comments=tuple(comments),
            )
        )
    return frames


def event_frames(body: bytes) -> list[Frame]:
    """The frames of ``body`` that carry data (comments dropped)."""
    return [f for f in parse_sse(body) if f.data is not None]


def ids_of(body: bytes) -> list[int]:
    """Ids of the log events in ``body`` (named events such as ``gap`` excluded)."""
    return [int(f.id) for f in event_frames(body) if f.id is not None and f.event is None]


class SSEResource(Resource):
    """A leaf resource whose GET streams ``log`` with :func:`serve_log`."""

    isLeaf = True

    def __init__(self, log: EventLog, clock: Clock, **kw: Any) -> None:
        super().__init__()
        self.log = log
        self.clock = clock
        self.kw = kw
        self.requests: list[Any] = []
        self.results: list[Deferred[Any]] = []
        self.failures: list[Failure] = []

    def render_GET(self, request: Any) -> Any:
        """Stream the log to this request; remember the request and the result."""
        self.requests.append(request)
        d = serve_log(request, self.log, self.clock, **self.kw)
        self.results.append(d)
        d.addErrback(self.failures.append)
        return NOT_DONE_YET


@attrs.define
class Client:
    """One in-memory SSE client: the response, its chunks, and the server-side stream."""

    stub: StubTreq
    resource: SSEResource
    response: Any
    chunks: list[bytes]
    done: Deferred[Any]
    producer: EventStream | None
    result: Deferred[Any]

    @property
    def stream(self) -> EventStream:
        """The server-side stream (the producer the request had right after connecting)."""
        assert isinstance(self.producer, EventStream), self.producer
        return self.producer

    def body(self) -> bytes:
        """Everything received so far (after moving pending bytes across)."""
        self.stub.flush()
        return b"".join(self.chunks)

    def frames(self) -> list[Frame]:
        """The data-carrying frames received so far."""
        return event_frames(self.body())

    def ids(self) -> list[int]:
        """The log event ids received so far."""
        return ids_of(self.body())

    def disconnect(self) -> None:
        """Drop the connection from the client side (StubTreq has no public API for it)."""
        for pump in list(self.stub._agent._pumps):
            pump.clientIO.loseConnection()
            pump.flush()


class FakeRequest(DummyRequest):
    """
    A DummyRequest that accepts a push producer, refuses ``finish`` after a disconnect
    or twice (as twisted.web does), and can simulate the client going away.
    """

    _disconnected = False  # twisted.web.http.Request sets this on connectionLost

    def __init__(self, method: bytes = b"GET", headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__([b""])
        self.method = method
        self.producer: Any = None
        self.streaming: bool | None = None
        self.unregistered = 0
        self.disconnected = False
        for name, value in (headers or {}).items():
            self.requestHeaders.setRawHeaders(name, [value])

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Record the producer; a second registration is an error, as in twisted.web."""
        if self.producer is not None:
            raise RuntimeError("producer already registered")
        self.producer = producer
        self.streaming = streaming

    def unregisterProducer(self) -> None:
        """Forget the producer and count the call."""
        self.producer = None
        self.unregistered += 1

    def write(self, data: bytes) -> None:
        """Refuse writes after finish; drop them after a disconnect."""
        if self.finished:
            raise RuntimeError("write after finish")
        if not self.disconnected:
            super().write(data)

    def finish(self) -> None:
        """Refuse finishing after a disconnect or twice, as twisted.web does."""
        if self.disconnected:
            raise RuntimeError("finish after the connection was lost")
        if self.finished:
            raise RuntimeError("finish called twice")
        super().finish()

    def lose_connection(self) -> None:
        """What twisted.web does when the client goes away: errback notifyFinish."""
        self.disconnected = True
        self.processingFailed(Failure(ConnectionDone("client went away")))

    @property
    def body(self) -> bytes:
        """Everything written so far."""
        return b"".join(self.written)


class HTTPHarness(SynchronousTestCase):
    """Shared setup: a Clock and a way to open an SSE stream through StubTreq."""

    def setUp(self) -> None:
        """A fresh clock and log per test."""
        self.clock = Clock()
        self.log = EventLog()

    def connect(
        self,
        log: EventLog | None = None,
        url: str = URL,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> Client:
        """Open a stream through StubTreq (``headers`` name -> single value)."""
        resource = SSEResource(log if log is not None else self.log, self.clock, **kw)
        self.addCleanup(lambda: self.assertEqual(resource.failures, []))
        stub = StubTreq(resource)
        response = self.successResultOf(
            stub.get(
                url,
                headers=Headers({k: [v] for k, v in (headers or {}).items()}),
                unbuffered=True,
            )
        )
        chunks: list[bytes] = []
        done = treq.collect(response, chunks.append)
        producer = resource.requests[-1].producer
        return Client(stub, resource, response, chunks, done, producer, resource.results[-1])


def fill(log: EventLog, count: int) -> list[Event]:
    """Append ``count`` JSON events ``{"n": i}``."""
    return [log.append_json({"n": i}) for i in range(count)]


# --------------------------------------------------------------------------- framing


class FormatEventTests(SynchronousTestCase):
    """``format_event`` and ``format_comment`` produce the SSE wire format of ARCHITECTURE §5."""

    def test_data_only(self) -> None:
        """A bare payload is one ``data: `` line (one space) and a blank line."""
        self.assertEqual(format_event('{"a":1}'), b'data: {"a":1}\n\n')

    def test_fields_in_order(self) -> None:
        """``id``, ``event`` and ``retry`` precede the data, each ``name: value`` on a line."""
        self.assertEqual(
            format_event("x", event="output", id=7, retry=2500),
            b"id: 7\nevent: output\nretry: 2500\ndata: x\n\n",
        )

    def test_string_id(self) -> None:
        """A string id is written as it is."""
        self.assertEqual(format_event("x", id="abc"), b"id: abc\ndata: x\n\n")

    def test_multiline_data(self) -> None:
        """Each line of multi-line data gets its own ``data:`` line, whatever the line break."""
        self.assertEqual(
            format_event("a\nb\r\nc\rd"), b"data: a\ndata: b\ndata: c\ndata: d\n\n"
        )

    def test_lf_only(self) -> None:
        """No CR ever reaches the wire, even when the payload had CRLF line breaks."""
        self.assertNotIn(b"\r", format_event("one\r\ntwo\r\n", event="e", id=1))

    def test_empty_and_trailing_newline(self) -> None:
        """Empty data is one empty ``data:`` line; a trailing newline yields an empty last line."""
        self.assertEqual(format_event(""), b"data: \n\n")
        self.assertEqual(format_event("a\n"), b"data: a\ndata: \n\n")

    def test_unicode_is_utf8(self) -> None:
        """Non-ASCII text is encoded as UTF-8."""
        self.assertEqual(format_event("é✓"), "data: é✓\n\n".encode())

    def test_rejects_line_break_in_fields(self) -> None:
        """A line break in ``event`` or ``id`` would forge fields, so it is refused."""
        self.assertRaises(ValueError, format_event, "x", event="a\ndata: evil")
        self.assertRaises(ValueError, format_event, "x", id="1\r2")
        self.assertRaises(ValueError, format_event, "x", retry=-1)

    def test_comment(self) -> None:
        """A comment is ``: text`` and a blank line; multi-line comments stay comments."""
        self.assertEqual(format_comment("keepalive"), b": keepalive\n\n")
        self.assertEqual(format_comment("a\nb"), b": a\n: b\n\n")
        self.assertEqual(parse_sse(format_comment("a\nb")), [Frame(None, None, None, ("a", "b"))])

    @PROPERTY_SETTINGS
    @given(st.text(st.characters(exclude_categories=("Cs",))))
    def test_roundtrip(self, data: str) -> None:
        """Any text survives framing and parsing, line breaks normalised to LF."""
        expected = data.replace("\r\n", "\n").replace("\r", "\n")
        self.assertEqual(parse_sse(format_event(data)), [Frame(None, None, expected, ())])


class EventTests(SynchronousTestCase):
    """``Event`` holds one log entry and its wire bytes."""

    def test_encode_and_size(self) -> None:
        """``encode`` is the full frame with the id; ``size`` is its length in bytes."""
        item = Event(3, "status", '{"ok":true,"s":"é"}')
        wire = 'id: 3\nevent: status\ndata: {"ok":true,"s":"é"}\n\n'.encode()
        self.assertEqual(item.encode(), wire)
        self.assertEqual(item.size, len(wire))

    def test_encode_is_cached(self) -> None:
        """Encoding happens once: every call returns the same bytes object."""
        item = Event(1, None, "x")
        self.assertIs(item.encode(), item.encode())

    def test_value_semantics(self) -> None:
        """Events compare by id, name and data, and are immutable."""
        self.assertEqual(Event(1, None, "x"), Event(1, None, "x"))
        self.assertNotEqual(Event(1, None, "x"), Event(2, None, "x"))
        frozen = attrs.exceptions.FrozenInstanceError
        self.assertRaises(frozen, setattr, Event(1, None, "x"), "id", 2)

    def test_single_line(self) -> None:
        """Data and event name must be single lines (one JSON document per ``data:`` line)."""
        self.assertRaises(ValueError, Event, 1, None, "a\nb")
        self.assertRaises(ValueError, Event, 1, "a\rb", "x")


# --------------------------------------------------------------------------- EventLog


class RecordingListener:
    """An EventLog listener that records what it is told."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = 0

    def event_appended(self, event: Event) -> None:
        """Record the event."""
        self.events.append(event)

    def log_closed(self) -> None:
        """Count the close."""
        self.closed += 1


class EventLogTests(SynchronousTestCase):
    """The bounded, id-assigning history of one stream."""

    def test_ids_start_at_one(self) -> None:
        """Ids are consecutive integers from 1; ``first_id``/``last_id`` follow them."""
        log = EventLog()
        self.assertEqual((log.first_id, log.last_id, len(log)), (1, 0, 0))
        self.assertEqual([e.id for e in fill(log, 3)], [1, 2, 3])
        self.assertEqual((log.first_id, log.last_id, len(log)), (1, 3, 3))

    def test_append_json_compact(self) -> None:
        """``append_json`` writes compact single-line JSON and keeps non-ASCII text."""
        log = EventLog()
        item = log.append_json({"a": [1, 2], "text": "é\nx"}, event="output")
        self.assertEqual(item.data, '{"a":[1,2],"text":"é\\nx"}')
        self.assertEqual(item.event, "output")
        self.assertEqual(json.loads(item.data), {"a": [1, 2], "text": "é\nx"})

    def test_append_json_lone_surrogate(self) -> None:
        """Text that is not valid UTF-8 (lone surrogates) is sent as exact ASCII escapes."""
        item = EventLog().append_json({"path": "bad\udcff.txt"})
        self.assertEqual(json.loads(item.encode().decode("ascii")[len("id: 1\ndata: "):]),
                         {"path": "bad\udcff.txt"})

    def test_append_json_rejects_nan(self) -> None:
        """NaN is not JSON, so it is refused rather than sent."""
        self.assertRaises(ValueError, EventLog().append_json, {"x": float("nan")})

    def test_bad_append_consumes_no_id(self) -> None:
        """A refused append (multi-line data) leaves the log and its ids untouched."""
        log = EventLog()
        self.assertRaises(ValueError, log.append, "a\nb")
        self.assertEqual(log.append("ok").id, 1)

    def test_eviction_by_count(self) -> None:
        """Past ``max_events`` the oldest go; ids are never reused."""
        log = EventLog(max_events=3)
        fill(log, 5)
        self.assertEqual([e.id for e in log.events_after(0)], [3, 4, 5])
        self.assertEqual((log.first_id, log.last_id, len(log)), (3, 5, 3))
        self.assertEqual(log.append("x").id, 6)

    def test_eviction_by_bytes(self) -> None:
        """Past ``max_bytes`` of encoded frames the oldest go."""
        size = Event(1, None, '"xxxxxxxx"').size
        log = EventLog(max_bytes=size * 2 + size // 2)
        for _ in range(5):
            log.append('"xxxxxxxx"')
        self.assertEqual([e.id for e in log.events_after(0)], [4, 5])
        self.assertEqual(log.total_bytes, size * 2)

    def test_oversized_event_not_retained(self) -> None:
        """An event larger than ``max_bytes`` alone is delivered live but not kept."""
        log = EventLog(max_bytes=64)
        listener = RecordingListener()
        log.subscribe(listener)
        big = log.append('"' + "x" * 100 + '"')
        self.assertEqual(listener.events, [big])
        self.assertEqual((len(log), log.total_bytes, log.first_id), (0, 0, 2))
        self.assertTrue(log.gap(0))

    def test_events_after(self) -> None:
        """``events_after`` returns retained events with a larger id, oldest first."""
        log = EventLog(max_events=4)
        fill(log, 6)
        self.assertEqual([e.id for e in log.events_after(0)], [3, 4, 5, 6])
        self.assertEqual([e.id for e in log.events_after(-5)], [3, 4, 5, 6])
        self.assertEqual([e.id for e in log.events_after(4)], [5, 6])
        self.assertEqual(log.events_after(6), [])
        self.assertEqual(log.events_after(99), [])
        self.assertEqual(EventLog().events_after(0), [])

    def test_gap(self) -> None:
        """``gap`` is true exactly when an event after the given id was evicted."""
        log = EventLog(max_events=3)
        self.assertFalse(log.gap(0))
        self.assertFalse(log.gap(-1))
        fill(log, 3)  # nothing evicted yet
        self.assertEqual([log.gap(i) for i in (-1, 0, 2, 3)], [False, False, False, False])
        fill(log, 2)  # 1 and 2 evicted
        self.assertEqual([log.gap(i) for i in (-1, 0, 1, 2, 3, 5, 9)],
                         [True, True, True, False, False, False, False])

    def test_append_after_close_raises(self) -> None:
        """A closed log refuses appends; closing twice is harmless."""
        log = EventLog()
        log.append("1")
        log.close()
        log.close()
        self.assertTrue(log.closed)
        self.assertRaises(EventLogClosed, log.append, "2")
        self.assertRaises(EventLogClosed, log.append_json, 2)
        self.assertEqual(log.last_id, 1)

    def test_subscribe_notifies_synchronously(self) -> None:
        """Subscribers see each append as it happens and the close once."""
        log = EventLog()
        listener = RecordingListener()
        log.subscribe(listener)
        first = log.append("1")
        self.assertEqual(listener.events, [first])
        log.close()
        log.close()
        self.assertEqual(listener.closed, 1)
        self.assertEqual(log.subscriber_count, 0)

    def test_unsubscribe(self) -> None:
        """After unsubscribing (twice is fine) a listener hears nothing more."""
        log = EventLog()
        listener = RecordingListener()
        unsubscribe = log.subscribe(listener)
        log.append("1")
        unsubscribe()
        unsubscribe()
        log.append("2")
        log.close()
        self.assertEqual(([e.id for e in listener.events], listener.closed), ([1], 0))
        self.assertEqual(log.subscriber_count, 0)

    def test_unsubscribe_during_notification(self) -> None:
        """A listener removed by an earlier listener during an append is not called for it."""
        log = EventLog()
        second = RecordingListener()

        class Remover(RecordingListener):
            def event_appended(self, event: Event) -> None:
                unsubscribe_second()

        log.subscribe(Remover())
        unsubscribe_second = log.subscribe(second)
        log.append("1")
        self.assertEqual(second.events, [])

    def test_failing_listener_isolated(self) -> None:
        """A listener that raises is logged and does not stop the others or the append."""
        log = EventLog()

        class Broken(RecordingListener):
            def event_appended(self, event: Event) -> None:
                raise ZeroDivisionError("boom")

        log.subscribe(Broken())
        good = RecordingListener()
        log.subscribe(good)
        item = log.append("1")
        self.assertEqual(good.events, [item])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_subscribe_closed_log(self) -> None:
        """Subscribing to a closed log registers nothing and the unsubscribe is a no-op."""
        log = EventLog()
        log.close()
        unsubscribe = log.subscribe(RecordingListener())
        self.assertEqual(log.subscriber_count, 0)
        unsubscribe()


# --------------------------------------------------------------------------- resume_point


class ResumePointTests(SynchronousTestCase):
    """``resume_point`` reads where the client wants to resume."""

    def request(self, header: bytes | None = None, **args: bytes) -> DummyRequest:
        """A request with an optional Last-Event-ID header and query arguments."""
        request = DummyRequest([b""])
        if header is not None:
            request.requestHeaders.setRawHeaders(b"Last-Event-ID", [header])
        for name, value in args.items():
            request.args[name.encode()] = [value]
        return request

    def test_absent(self) -> None:
        """No header and no query argument: a fresh, live-only stream."""
        self.assertIsNone(resume_point(self.request()))

    def test_header(self) -> None:
        """``Last-Event-ID`` is read (surrounding spaces allowed)."""
        self.assertEqual(resume_point(self.request(b"42")), 42)
        self.assertEqual(resume_point(self.request(b" 7 ")), 7)
        self.assertEqual(resume_point(self.request(b"0")), 0)

    def test_query(self) -> None:
        """``?after=`` and ``?lastEventId=`` work when there is no header."""
        self.assertEqual(resume_point(self.request(after=b"5")), 5)
        self.assertEqual(resume_point(self.request(lastEventId=b"6")), 6)

    def test_header_wins(self) -> None:
        """A browser reconnecting to an ``?after=`` URL resumes from its Last-Event-ID."""
        self.assertEqual(resume_point(self.request(b"9", after=b"2")), 9)

    def test_invalid(self) -> None:
        """Anything but a plain non-negative integer is ignored (falls back, else None)."""
        for bad in (b"", b"abc", b"-1", b"1_000", b"+3", b"1.5", b"\xd9\xa3", b"9" * 40):
            self.assertIsNone(resume_point(self.request(bad)), bad)
        self.assertEqual(resume_point(self.request(b"abc", after=b"3")), 3)
        self.assertIsNone(resume_point(self.request(after=b"x")))


# --------------------------------------------------------------------------- over HTTP


class EventStreamHTTPTests(HTTPHarness):
    """An SSE stream served by a real twisted.web Site, read by treq in memory."""

    def test_headers_and_connected_comment(self) -> None:
        """The response is a 200 event stream that is not cached or buffered by proxies."""
        client = self.connect()
        self.assertEqual(client.response.code, 200)
        headers = client.response.headers
        self.assertEqual(
            headers.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"]
        )
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-cache"])
        self.assertEqual(headers.getRawHeaders(b"x-accel-buffering"), [b"no"])
        self.assertEqual(client.body(), CONNECTED)
        self.assertNoResult(client.done)

    def test_live_events(self) -> None:
        """Events appended after connecting arrive with ids from 1, framed exactly."""
        client = self.connect()
        self.log.append_json({"a": 1})
        self.log.append_json({"b": "two"}, event="status")
        self.assertEqual(
            client.body(),
            CONNECTED + b'id: 1\ndata: {"a":1}\n\nid: 2\nevent: status\ndata: {"b":"two"}\n\n',
        )
        self.assertEqual(client.stream.last_written_id, 2)
        self.assertNoResult(client.done)

    def test_fresh_connect_skips_history(self) -> None:
        """Without a resume point only events appended after connecting are sent."""
        fill(self.log, 3)
        client = self.connect()
        self.log.append("4")
        self.assertEqual(client.ids(), [4])

    def test_replay_from_last_event_id(self) -> None:
        """``Last-Event-ID: 2`` replays 3.. and continues live, without duplicates."""
        fill(self.log, 4)
        client = self.connect(headers={"Last-Event-ID": "2"})
        self.assertEqual(client.ids(), [3, 4])
        self.log.append("5")
        self.assertEqual(client.ids(), [3, 4, 5])
        self.assertEqual([f.event for f in client.frames()], [None, None, None])

    def test_replay_from_after_query(self) -> None:
        """``?after=1`` replays like Last-Event-ID."""
        fill(self.log, 3)
        client = self.connect(url=URL + "?after=1")
        self.assertEqual(client.ids(), [2, 3])

    def test_replay_from_zero(self) -> None:
        """``?after=0`` replays everything retained."""
        fill(self.log, 3)
        self.assertEqual(self.connect(url=URL + "?after=0").ids(), [1, 2, 3])

    def test_gap_event(self) -> None:
        """Resuming from an evicted id first says which events were lost, then replays the rest."""
        log = EventLog(max_events=3)
        fill(log, 6)  # 4, 5, 6 retained
        client = self.connect(log, headers={"Last-Event-ID": "1"})
        frames = client.frames()
        self.assertEqual(frames[0].event, "gap")
        self.assertIsNone(frames[0].id)
        self.assertEqual(
            json.loads(frames[0].data or ""), {"lastEventId": 1, "firstAvailableId": 4}
        )
        self.assertEqual(client.ids(), [4, 5, 6])

    def test_no_gap_when_nothing_lost(self) -> None:
        """Resuming right before the oldest retained event sends no gap."""
        log = EventLog(max_events=3)
        fill(log, 6)
        client = self.connect(log, headers={"Last-Event-ID": "3"})
        self.assertEqual([f.event for f in client.frames()], [None, None, None])
        self.assertEqual(client.ids(), [4, 5, 6])

    def test_stale_resume_point(self) -> None:
        """A Last-Event-ID from before a restart (beyond the log) gets a gap and all retained."""
        fill(self.log, 2)
        client = self.connect(headers={"Last-Event-ID": "40"})
        frames = client.frames()
        self.assertEqual(frames[0].event, "gap")
        self.assertEqual(
            json.loads(frames[0].data or ""), {"lastEventId": 40, "firstAvailableId": 1}
        )
        self.assertEqual(client.ids(), [1, 2])
        self.log.append("3")
        self.assertEqual(client.ids(), [1, 2, 3])

    def test_heartbeat(self) -> None:
        """A ``: keepalive`` comment goes out every 15 s on the injected clock, never before."""
        client = self.connect()
        self.clock.advance(14.9)
        self.assertNotIn(KEEPALIVE, client.body())
        self.clock.advance(0.1)
        self.assertEqual(client.body().count(KEEPALIVE), 1)
        self.clock.advance(15)
        self.assertEqual(client.body(), CONNECTED + KEEPALIVE + KEEPALIVE)
        self.assertNoResult(client.done)

    def test_custom_heartbeat(self) -> None:
        """The heartbeat interval is configurable."""
        client = self.connect(heartbeat=5.0)
        self.clock.advance(5)
        self.assertEqual(client.body(), CONNECTED + KEEPALIVE)

    def test_log_close_finishes_response(self) -> None:
        """Closing the log delivers everything and ends the response normally."""
        client = self.connect()
        fill(self.log, 2)
        self.log.close()
        self.assertEqual(client.ids(), [1, 2])
        self.successResultOf(client.done)
        self.assertIs(self.successResultOf(client.result), RESPONSE_WRITTEN)
        self.assertEqual(self.log.subscriber_count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closed_log_replays_then_finishes(self) -> None:
        """Connecting to a finished stream replays what was asked for and ends at once."""
        fill(self.log, 3)
        self.log.close()
        client = self.connect(url=URL + "?after=1")
        self.assertEqual(client.ids(), [2, 3])
        self.successResultOf(client.done)

    def test_pause_queues_resume_drains(self) -> None:
        """While paused events wait in the queue; resuming writes them in order."""
        client = self.connect()
        self.log.append("1")
        client.stream.pauseProducing()
        client.stream.pauseProducing()
        self.log.append("2")
        self.log.append("3")
        self.assertEqual(client.ids(), [1])
        self.assertEqual(client.stream.queued, 2)
        self.assertEqual(client.stream.last_written_id, 1)
        client.stream.resumeProducing()
        self.assertEqual(client.ids(), [1, 2, 3])
        self.assertEqual(client.stream.queued, 0)
        client.stream.resumeProducing()
        self.log.append("4")
        self.assertEqual(client.ids(), [1, 2, 3, 4])

    def test_no_heartbeat_while_paused(self) -> None:
        """Heartbeats are skipped while the transport has paused us."""
        client = self.connect()
        client.stream.pauseProducing()
        self.clock.advance(15)
        self.assertNotIn(KEEPALIVE, client.body())
        client.stream.resumeProducing()
        self.clock.advance(15)
        self.assertEqual(client.body().count(KEEPALIVE), 1)

    def test_close_while_paused_waits_for_resume(self) -> None:
        """A log closed while paused finishes only after the queue drains."""
        client = self.connect()
        client.stream.pauseProducing()
        fill(self.log, 2)
        self.log.close()
        self.assertEqual(client.ids(), [])
        self.assertNoResult(client.done)
        client.stream.resumeProducing()
        self.assertEqual(client.ids(), [1, 2])
        self.successResultOf(client.done)

    def test_overflow_while_paused_lags(self) -> None:
        """Too many queued events end the stream with ``lagged`` naming the last id written."""
        client = self.connect(max_queue_events=2)
        self.log.append("1")
        client.stream.pauseProducing()
        fill(self.log, 3)  # the third queued event overflows
        frames = client.frames()
        self.assertEqual(client.ids(), [1])
        self.assertEqual(frames[-1].event, "lagged")
        self.assertEqual(frames[-1].id, "1")
        self.assertEqual(json.loads(frames[-1].data or ""), {"lastEventId": 1})
        self.assertTrue(client.stream.lagged)
        self.assertEqual(client.stream.queued, 0)
        self.successResultOf(client.done)
        self.assertEqual(self.log.subscriber_count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_overflow_by_bytes(self) -> None:
        """The queue's byte bound ends a lagging stream too."""
        client = self.connect(url=URL + "?after=0", max_queue_bytes=100)
        client.stream.pauseProducing()
        self.log.append_json("x" * 40)
        self.assertNoResult(client.done)
        self.log.append_json("y" * 40)
        self.assertEqual(event_frames(client.body())[-1].event, "lagged")
        self.assertEqual(json.loads(client.frames()[-1].data or ""), {"lastEventId": 0})
        self.successResultOf(client.done)

    def test_lagged_live_only_resumes_from_connect_point(self) -> None:
        """A fresh client that lags before any event names the log position it joined at."""
        fill(self.log, 5)
        client = self.connect(max_queue_events=1)
        client.stream.pauseProducing()
        fill(self.log, 2)
        self.assertEqual(json.loads(client.frames()[-1].data or ""), {"lastEventId": 5})

    def test_client_disconnect_releases(self) -> None:
        """A client going away unsubscribes, stops the heartbeat and ends the stream quietly."""
        client = self.connect()
        self.log.append("1")
        client.body()
        self.assertEqual(self.log.subscriber_count, 1)
        client.disconnect()
        self.assertEqual(self.log.subscriber_count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIs(self.successResultOf(client.result), RESPONSE_WRITTEN)
        self.assertTrue(client.stream.ended)
        self.log.append("2")  # nobody to write to, and nothing raises
        self.failureResultOf(client.done)

    def test_two_clients(self) -> None:
        """Two clients of one log each get every live event; one leaving spares the other."""
        first = self.connect()
        second = self.connect()
        self.log.append("1")
        first.disconnect()
        self.log.append("2")
        self.assertEqual(second.ids(), [1, 2])
        self.assertEqual(self.log.subscriber_count, 1)
        self.failureResultOf(first.done)


# --------------------------------------------------------------------------- fake request


class EventStreamRequestTests(SynchronousTestCase):
    """EventStream against a fake request: lifecycle edges and resource release."""

    def setUp(self) -> None:
        """A fresh clock and log per test."""
        self.clock = Clock()
        self.log = EventLog()
        self.request = FakeRequest()

    def start(self, after: int | None = None, **kw: Any) -> tuple[EventStream, Deferred[Any]]:
        """Start a stream of ``self.log`` on ``self.request``."""
        stream = EventStream(self.request, self.log, self.clock, **kw)
        return stream, stream.start(after)

    def assertReleased(self) -> None:
        """Nothing of the stream is left: no subscription, timer or producer."""
        self.assertEqual(self.log.subscriber_count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.request.producer)

    def test_registers_streaming_producer(self) -> None:
        """The stream is registered as a push producer and provides IPushProducer."""
        stream, _ = self.start()
        self.assertIs(self.request.producer, stream)
        self.assertIs(self.request.streaming, True)
        self.assertTrue(IPushProducer.providedBy(stream))
        self.assertEqual(self.request.responseCode, 200)
        self.assertEqual(self.request.written, [CONNECTED])

    def test_disconnect_releases_everything(self) -> None:
        """notifyFinish's errback unsubscribes, stops the heartbeat, unregisters, never finishes."""
        stream, done = self.start()
        self.request.lose_connection()
        self.assertReleased()
        self.assertEqual(self.request.unregistered, 1)
        self.assertEqual(self.request.finished, 0)
        self.assertIs(self.successResultOf(done), RESPONSE_WRITTEN)
        written = list(self.request.written)
        self.log.append("1")
        self.clock.advance(60)
        stream.resumeProducing()
        stream.stop()
        self.assertEqual(self.request.written, written)

    def test_disconnect_while_paused(self) -> None:
        """A client lost while paused drops its queue."""
        stream, done = self.start()
        stream.pauseProducing()
        fill(self.log, 3)
        self.request.lose_connection()
        self.assertEqual(stream.queued, 0)
        self.assertReleased()
        self.successResultOf(done)

    def test_stop_producing_is_a_disconnect(self) -> None:
        """``stopProducing`` (the transport going away) releases without finishing."""
        stream, done = self.start()
        stream.stopProducing()
        self.assertReleased()
        self.assertEqual(self.request.finished, 0)
        self.successResultOf(done)

    def test_cancel_is_clean(self) -> None:
        """Cancelling the start Deferred ends the stream, finishes the request, no error."""
        stream, done = self.start()
        done.cancel()
        self.assertIs(self.successResultOf(done), RESPONSE_WRITTEN)
        self.assertEqual(self.request.finished, 1)
        self.assertReleased()
        self.assertTrue(stream.ended)

    def test_cancel_after_disconnect(self) -> None:
        """The web layer cancels after a disconnect: nothing is finished and nothing fails."""
        _, done = self.start()
        self.request.lose_connection()
        done.cancel()
        self.assertIs(self.successResultOf(done), RESPONSE_WRITTEN)
        self.assertEqual(self.request.finished, 0)

    def test_cancel_before_disconnect_seen(self) -> None:
        """A canceller run before our errback (the Request already lost) never finishes."""
        _, done = self.start()
        self.request._disconnected = True
        self.request.disconnected = True
        done.cancel()
        self.successResultOf(done)
        self.assertEqual(self.request.finished, 0)

    def test_stop(self) -> None:
        """``stop`` ends the stream from the server side and finishes the response once."""
        stream, done = self.start()
        stream.stop()
        stream.stop()
        self.assertEqual(self.request.finished, 1)
        self.assertReleased()
        self.successResultOf(done)

    def test_finish_unregisters_first(self) -> None:
        """The producer is unregistered before the request is finished."""
        order: list[str] = []
        unregister, finish = self.request.unregisterProducer, self.request.finish

        def record_unregister() -> None:
            order.append("unregister")
            unregister()

        def record_finish() -> None:
            order.append("finish")
            finish()

        self.request.unregisterProducer = record_unregister  # type: ignore[method-assign]
        self.request.finish = record_finish  # type: ignore[method-assign]
        self.start()
        self.log.close()
        self.assertEqual(order, ["unregister", "finish"])

    def test_start_twice(self) -> None:
        """A stream serves one request once."""
        stream, _ = self.start()
        self.assertRaises(RuntimeError, stream.start)

    def test_head_request(self) -> None:
        """HEAD gets the headers and an immediate end, with no subscription left behind."""
        self.request = FakeRequest(method=b"HEAD")
        _, done = self.start()
        self.successResultOf(done)
        self.assertEqual(self.request.finished, 1)
        self.assertEqual(self.request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"text/event-stream; charset=utf-8"])
        self.assertReleased()

    def test_already_disconnected(self) -> None:
        """A request lost before the stream started releases at once, without finishing."""
        self.request._disconnected = True
        self.request.disconnected = True
        _, done = self.start()
        self.successResultOf(done)
        self.assertEqual(self.request.finished, 0)
        self.assertReleased()

    def test_initial_events_on_fresh_connect(self) -> None:
        """``initial_events`` go first on a fresh connect, then live events."""
        snapshot = Event(0, "snapshot", '{"state":"running"}')
        self.start(initial_events=[snapshot])
        self.log.append("1")
        self.assertEqual(
            self.request.body, CONNECTED + snapshot.encode() + Event(1, None, "1").encode()
        )

    def test_initial_events_not_sent_on_resume(self) -> None:
        """A resuming client gets the replay instead of ``initial_events``."""
        fill(self.log, 2)
        self.start(after=1, initial_events=[Event(0, "snapshot", "{}")])
        self.assertEqual(ids_of(self.request.body), [2])
        self.assertNotIn(b"snapshot", self.request.body)

    def test_oversized_live_event_still_delivered(self) -> None:
        """An event too big for the log's history is still sent to connected clients."""
        self.log = EventLog(max_bytes=32)
        self.start()
        self.log.append('"' + "x" * 64 + '"')
        self.assertEqual(ids_of(self.request.body), [1])

    def test_replay_overflow_while_paused(self) -> None:
        """A replay that cannot fit in a paused client's queue ends with ``lagged``."""
        fill(self.log, 5)
        stream = EventStream(self.request, self.log, self.clock, max_queue_events=2)
        stream.pauseProducing()
        done = stream.start(after=0)
        frames = event_frames(self.request.body)
        self.assertEqual([f.event for f in frames], ["lagged"])
        self.assertEqual(json.loads(frames[0].data or ""), {"lastEventId": 0})
        self.successResultOf(done)
        self.assertReleased()

    def test_reentrant_append_keeps_order(self) -> None:
        """An event appended while a queued frame is being written waits its turn."""
        stream, _ = self.start()
        stream.pauseProducing()
        fill(self.log, 2)
        write = self.request.write

        def write_and_append(data: bytes) -> None:
            write(data)
            if b"id: 1\n" in data:
                self.log.append("3")  # e.g. a log observer feeding this very stream

        self.request.write = write_and_append  # type: ignore[method-assign]
        stream.resumeProducing()
        self.assertEqual(ids_of(self.request.body), [1, 2, 3])

    def test_heartbeat_failure_ends_stream(self) -> None:
        """An error while writing a heartbeat is logged and ends the stream."""
        stream, done = self.start()

        def broken(data: bytes) -> None:
            raise OSError("broken pipe")

        self.request.write = broken  # type: ignore[method-assign]
        self.clock.advance(15)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertTrue(stream.ended)
        self.successResultOf(done)
        self.assertReleased()

    @PROPERTY_SETTINGS
    @given(
        before=st.lists(st.text(max_size=12), max_size=12),
        max_events=st.integers(1, 8),
        max_bytes=st.integers(0, 300),
        resume=st.one_of(st.none(), st.integers(-2, 15)),
        after=st.lists(
            st.one_of(st.just("pause"), st.just("resume"), st.text(max_size=12)), max_size=15
        ),
    )
    def test_replay_then_live_property(
        self,
        before: list[str],
        max_events: int,
        max_bytes: int,
        resume: int | None,
        after: list[str],
    ) -> None:
        """For any appends and resume id: replay+live ids are exactly the retained ids past the
        resume point followed by every later id, strictly increasing, with a gap notice exactly
        when something was evicted (a resume id newer than the log replays all it holds)."""
        log = EventLog(max_events=max_events, max_bytes=max_bytes)
        for text in before:
            log.append_json(text)
        stale = resume is not None and resume > log.last_id
        expected = [] if resume is None else [e.id for e in log.events_after(resume)]
        gap_expected = resume is not None and (log.gap(resume) or stale)
        if stale:
            expected = [e.id for e in log.events_after(0)]
        request = FakeRequest()
        stream = EventStream(request, log, Clock())
        done = stream.start(resume)
        for op in after:
            if op == "pause":
                stream.pauseProducing()
            elif op == "resume":
                stream.resumeProducing()
            else:
                expected.append(log.append_json(op).id)
        stream.resumeProducing()
        log.close()
        self.successResultOf(done)
        self.assertEqual(request.finished, 1)
        ids = ids_of(request.body)
        self.assertEqual(ids, expected)
        self.assertEqual(ids, sorted(set(ids)))
        if resume is not None and not stale:
            self.assertTrue(all(i > resume for i in ids))
        events = [f.event for f in event_frames(request.body)]
        self.assertEqual(events.count("gap"), 1 if gap_expected else 0)
        self.assertEqual(log.subscriber_count, 0)
