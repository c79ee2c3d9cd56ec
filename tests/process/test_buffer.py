"""
Tests for :mod:`codebuddy.process.buffer`: the byte-offset :class:`OutputBuffer`, its
pull-based subscribers and flow control of the child's output, and the text helpers.

Time only moves through an injected :class:`Clock`; the producer is a fake that counts calls.
"""

from __future__ import annotations

import base64

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from codebuddy.process.buffer import (
    BufferClosed,
    Chunk,
    OutputBuffer,
    ReadResult,
    Subscription,
    Utf8Splitter,
    b64,
)


@implementer(IPushProducer)
@attrs.define
class FakeProducer:
    """Counts pause/resume calls and tracks the resulting state."""

    pauses: int = 0
    resumes: int = 0
    paused: bool = False

    def pauseProducing(self) -> None:
        self.pauses += 1
        self.paused = True

    def resumeProducing(self) -> None:
        self.resumes += 1
        self.paused = False

    def stopProducing(self) -> None:
        raise AssertionError("the buffer never stops the producer")


@attrs.define
class Reader:
    """Records the buffer's callbacks; with ``eager`` it takes everything on each notification."""

    eager: bool = False
    events: list[object] = attrs.Factory(list)
    received: bytearray = attrs.Factory(bytearray)
    sub: Subscription | None = None

    def data_available(self) -> None:
        self.events.append("data")
        if self.eager and self.sub is not None:
            self.drain()

    def buffer_closed(self) -> None:
        self.events.append("closed")

    def lagged(self, next_offset: int) -> None:
        self.events.append(("lagged", next_offset))

    def take(self, n: int = 1 << 20) -> ReadResult:
        assert self.sub is not None
        result = self.sub.take(n)
        for chunk in result.chunks:
            self.received += chunk.data
        return result

    def drain(self) -> None:
        assert self.sub is not None
        while self.sub.pending_bytes:
            self.take()


def joined(result: ReadResult) -> bytes:
    """All bytes of a read result."""
    return b"".join(c.data for c in result.chunks)


def subscribed(buf: OutputBuffer, offset: int | None = None, eager: bool = False) -> Reader:
    """A :class:`Reader` subscribed to ``buf``."""
    reader = Reader(eager=eager)
    reader.sub = buf.subscribe(reader, offset)
    return reader


class OffsetsAndReadsTests(SynchronousTestCase):
    """Offsets, eviction and :meth:`OutputBuffer.read`."""

    def setUp(self) -> None:
        self.clock = Clock()

    def test_offsets_count_all_streams(self) -> None:
        """Offsets are absolute, count bytes of every stream, and each chunk keeps its stream."""
        buf = OutputBuffer(100, clock=self.clock)
        self.assertEqual(buf.append("stdout", b"abc"), 0)
        self.assertEqual(buf.append("stderr", b"de"), 3)
        self.assertEqual(buf.append("pty", b"f"), 5)
        self.assertEqual(buf.append("stdout", b""), 6)
        self.assertEqual((buf.start_offset, buf.end_offset, buf.truncated), (0, 6, False))
        result = buf.read(0)
        self.assertEqual(
            result.chunks,
            [Chunk("stdout", 0, b"abc"), Chunk("stderr", 3, b"de"), Chunk("pty", 5, b"f")],
        )
        self.assertEqual((result.next_offset, result.missed, result.eof), (6, 0, False))

    def test_unknown_stream_rejected(self) -> None:
        """Only stdout, stderr and pty are streams."""
        buf = OutputBuffer(100, clock=self.clock)
        self.assertRaises(ValueError, buf.append, "stdin", b"x")  # type: ignore[arg-type]

    def test_small_appends_to_one_stream_coalesce(self) -> None:
        """Consecutive small appends to one stream become one chunk with correct offsets."""
        buf = OutputBuffer(100, clock=self.clock)
        self.assertEqual(buf.append("pty", b"a"), 0)
        self.assertEqual(buf.append("pty", b"b"), 1)
        self.assertEqual(buf.read(0).chunks, [Chunk("pty", 0, b"ab")])
        self.assertEqual(buf.read(1).chunks, [Chunk("pty", 1, b"b")])

    def test_eviction_splits_oldest_chunk(self) -> None:
        """Past capacity exactly ``capacity`` bytes stay; the oldest chunk is cut; missed is reported."""
        buf = OutputBuffer(10, clock=self.clock)
        buf.append("stdout", b"012345")
        buf.append("stderr", b"6789AB")
        self.assertEqual((buf.start_offset, buf.end_offset, buf.retained_bytes), (2, 12, 10))
        self.assertTrue(buf.truncated)
        result = buf.read(0)
        self.assertEqual(result.missed, 2)
        self.assertEqual(result.chunks, [Chunk("stdout", 2, b"2345"), Chunk("stderr", 6, b"6789AB")])
        self.assertEqual(buf.read(2).missed, 0)

    def test_eviction_of_whole_chunks_and_oversized_chunk(self) -> None:
        """A chunk larger than capacity keeps only its last ``capacity`` bytes."""
        buf = OutputBuffer(4, clock=self.clock)
        buf.append("stdout", b"ab")
        buf.append("stderr", b"cdefgh")
        self.assertEqual(buf.start_offset, 4)
        result = buf.read(1)
        self.assertEqual(result.missed, 3)
        self.assertEqual(result.chunks, [Chunk("stderr", 4, b"efgh")])

    def test_many_evictions_keep_reads_correct(self) -> None:
        """After thousands of evicted chunks (list compaction) reads still find the right bytes."""
        buf = OutputBuffer(3000, clock=self.clock)
        data = bytearray()
        for i in range(5000):
            piece = bytes([65 + i % 26]) * 2000
            buf.append("stdout" if i % 2 else "stderr", piece)
            data += piece
        self.assertEqual(buf.retained_bytes, 3000)
        for offset in (buf.start_offset, buf.start_offset + 1, buf.end_offset - 1999, buf.end_offset):
            self.assertEqual(joined(buf.read(offset, 10_000)), bytes(data[offset:]))

    def test_read_from_middle_and_budget(self) -> None:
        """A read inside a chunk returns its tail; ``max_bytes`` cuts the last chunk."""
        buf = OutputBuffer(100, clock=self.clock)
        buf.append("stdout", b"hello")
        buf.append("stderr", b"world")
        self.assertEqual(buf.read(3).chunks, [Chunk("stdout", 3, b"lo"), Chunk("stderr", 5, b"world")])
        result = buf.read(3, max_bytes=4)
        self.assertEqual(result.chunks, [Chunk("stdout", 3, b"lo"), Chunk("stderr", 5, b"wo")])
        self.assertEqual(result.next_offset, 7)
        self.assertEqual(result.size, 4)
        self.assertEqual(buf.read(10), ReadResult([], 10))

    def test_read_rejects_bad_arguments(self) -> None:
        """Offsets outside 0..end and non-positive budgets are errors."""
        buf = OutputBuffer(100, clock=self.clock)
        buf.append("stdout", b"abc")
        self.assertRaises(ValueError, buf.read, 4)
        self.assertRaises(ValueError, buf.read, -1)
        self.assertRaises(ValueError, buf.read, 0, 0)

    def test_close(self) -> None:
        """Close records exit info, is idempotent, sets eof on reads and forbids appends."""
        buf = OutputBuffer(100, clock=self.clock)
        buf.append("stdout", b"abc")
        buf.close({"exitCode": 3})
        buf.close("ignored")
        self.assertTrue(buf.closed)
        self.assertEqual(buf.exit_info, {"exitCode": 3})
        self.assertTrue(buf.read(0).eof)
        self.assertFalse(buf.read(0, 1).eof)
        self.assertRaises(BufferClosed, buf.append, "stdout", b"x")

    def test_bad_configuration(self) -> None:
        """Water marks must satisfy 0 <= low < high <= capacity."""
        self.assertRaises(ValueError, OutputBuffer, 0, clock=self.clock)
        self.assertRaises(ValueError, OutputBuffer, 10, clock=self.clock, high_water=11)
        self.assertRaises(ValueError, OutputBuffer, 10, clock=self.clock, high_water=4, low_water=4)


class SubscriptionTests(SynchronousTestCase):
    """Subscribing, notifications, taking and closing."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.buf = OutputBuffer(100, clock=self.clock)

    def test_subscribe_from_now(self) -> None:
        """Without an offset a subscriber only sees bytes appended after subscribing."""
        self.buf.append("stdout", b"old")
        reader = subscribed(self.buf)
        self.assertEqual(reader.sub and reader.sub.pending_bytes, 0)
        self.buf.append("stderr", b"new")
        result = reader.take()
        self.assertEqual(result.chunks, [Chunk("stderr", 3, b"new")])
        self.assertEqual(result.missed, 0)

    def test_subscribe_from_offset(self) -> None:
        """A subscriber from an offset replays from there, then gets live bytes."""
        self.buf.append("stdout", b"abcdef")
        reader = subscribed(self.buf, 2)
        self.buf.append("stdout", b"g")
        assert reader.sub is not None
        self.assertEqual(reader.sub.pending_bytes, 5)
        reader.drain()
        self.assertEqual(bytes(reader.received), b"cdefg")
        self.assertEqual(reader.sub.offset, 7)

    def test_subscribe_from_before_start_reports_missed_once(self) -> None:
        """Subscribing from an evicted offset reports the gap on the first take only."""
        buf = OutputBuffer(4, clock=self.clock)
        buf.append("stdout", b"abcdef")
        reader = subscribed(buf, 0)
        first = reader.take(1)
        self.assertEqual((first.missed, joined(first)), (2, b"c"))
        second = reader.take()
        self.assertEqual((second.missed, joined(second)), (0, b"def"))

    def test_subscribe_rejects_future_offset(self) -> None:
        """An offset past end_offset is an error."""
        self.assertRaises(ValueError, self.buf.subscribe, Reader(), 1)

    def test_data_available_on_every_append(self) -> None:
        """Each non-empty append notifies every attached subscriber once."""
        a, b = subscribed(self.buf), subscribed(self.buf)
        self.buf.append("stdout", b"x")
        self.buf.append("stdout", b"")
        self.buf.append("stderr", b"y")
        self.assertEqual(a.events, ["data", "data"])
        self.assertEqual(b.events, ["data", "data"])

    def test_cancel_stops_notifications(self) -> None:
        """A cancelled subscription gets no callbacks and empty takes."""
        reader = subscribed(self.buf)
        assert reader.sub is not None
        reader.sub.cancel()
        reader.sub.cancel()
        self.buf.append("stdout", b"x")
        self.buf.close()
        self.clock.advance(0)
        self.assertEqual(reader.events, [])
        self.assertFalse(reader.sub.attached)
        self.assertEqual(reader.take(), ReadResult([], 0))

    def test_close_after_rest_is_taken(self) -> None:
        """buffer_closed comes only after the subscriber has taken the remaining bytes."""
        reader = subscribed(self.buf)
        self.buf.append("stdout", b"tail")
        self.buf.close(0)
        self.clock.advance(0)
        self.assertEqual(reader.events, ["data"])
        first = reader.take(2)
        self.assertFalse(first.eof)
        last = reader.take()
        self.assertTrue(last.eof)
        self.assertEqual(reader.events, ["data"], "buffer_closed must come after the take returns")
        self.clock.advance(0)
        self.assertEqual(reader.events, ["data", "closed"])
        self.assertEqual(bytes(reader.received), b"tail")
        assert reader.sub is not None
        self.assertTrue(reader.take().eof)

    def test_close_when_drained(self) -> None:
        """A subscriber with nothing pending gets buffer_closed right after close."""
        reader = subscribed(self.buf)
        self.buf.close()
        self.clock.advance(0)
        self.assertEqual(reader.events, ["closed"])
        self.assertEqual(self.buf.subscribers, [])

    def test_cancel_before_close_delivery(self) -> None:
        """Cancelling between close and delivery suppresses buffer_closed."""
        reader = subscribed(self.buf)
        self.buf.close()
        assert reader.sub is not None
        reader.sub.cancel()
        self.clock.advance(0)
        self.assertEqual(reader.events, [])

    def test_subscribe_to_closed_buffer_replays_history(self) -> None:
        """Subscribing after close replays the history, then signals close."""
        self.buf.append("stdout", b"done")
        self.buf.close()
        reader = subscribed(self.buf, 0)
        reader.drain()
        self.clock.advance(0)
        self.assertEqual(bytes(reader.received), b"done")
        self.assertEqual(reader.events, ["closed"])
        late = subscribed(self.buf)
        self.clock.advance(0)
        self.assertEqual(late.events, ["closed"])


class FlowControlTests(SynchronousTestCase):
    """Pausing the producer for slow subscribers, and detaching stalled ones."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.producer = FakeProducer()
        self.buf = OutputBuffer(100, clock=self.clock, producer=self.producer, stall_timeout=10.0)
        self.assertEqual((self.buf.high_water, self.buf.low_water), (50, 25))

    def test_pause_over_high_water_resume_under_low(self) -> None:
        """Pause once past high water (not at it); resume only at or below low water."""
        reader = subscribed(self.buf)
        self.buf.append("stdout", b"x" * 50)
        self.assertEqual(self.producer.pauses, 0)
        self.buf.append("stdout", b"x")
        self.assertEqual((self.producer.pauses, self.buf.paused), (1, True))
        self.buf.append("stdout", b"x" * 10)
        self.assertEqual(self.producer.pauses, 1, "pause is idempotent")
        reader.take(30)  # 31 pending: between low and high
        self.assertEqual(self.producer.resumes, 0)
        reader.take(6)  # 25 pending
        self.assertEqual((self.producer.resumes, self.buf.paused), (1, False))
        reader.take(5)
        self.assertEqual(self.producer.resumes, 1, "resume is idempotent")
        self.assertEqual(reader.events, ["data"] * 3)

    def test_no_pause_without_subscribers(self) -> None:
        """With nobody subscribed, output overwrites the ring and the producer runs on."""
        for _ in range(10):
            self.buf.append("stdout", b"y" * 60)
        self.assertEqual(self.producer.pauses, 0)
        self.assertEqual(self.buf.retained_bytes, 100)

    def test_subscriber_from_old_offset_pauses(self) -> None:
        """A new subscriber replaying a big backlog pauses the producer until it catches up."""
        self.buf.append("stdout", b"z" * 80)
        reader = subscribed(self.buf, 0)
        self.assertEqual(self.producer.pauses, 1)
        reader.drain()
        self.assertEqual(self.producer.resumes, 1)

    def test_stall_timeout_detaches_and_resumes(self) -> None:
        """A subscriber holding the producer paused for stall_timeout lags out; the producer resumes."""
        reader = subscribed(self.buf)
        self.buf.append("stdout", b"s" * 60)
        self.assertTrue(self.producer.paused)
        assert reader.sub is not None
        self.assertTrue(reader.sub.stalled)
        reader.take(10)  # progress, but still above low water: the timer keeps running
        self.clock.advance(9.9)
        self.assertEqual(reader.events, ["data"])
        self.clock.advance(0.1)
        self.assertEqual(reader.events, ["data", ("lagged", 10)])
        self.assertTrue(reader.sub.lagged)
        self.assertFalse(reader.sub.attached)
        self.assertEqual((self.producer.pauses, self.producer.resumes), (1, 1))
        self.assertEqual(reader.take(), ReadResult([], 10))
        self.buf.append("stdout", b"more")
        self.assertEqual(reader.events, ["data", ("lagged", 10)])
        self.assertEqual(self.buf.read(10).missed, 0, "the lagged subscriber can resume from next_offset")

    def test_draining_cancels_stall_timer(self) -> None:
        """A subscriber that catches up in time is not detached."""
        reader = subscribed(self.buf)
        self.buf.append("stdout", b"s" * 60)
        self.clock.advance(5)
        reader.drain()
        assert reader.sub is not None
        self.assertFalse(reader.sub.stalled)
        self.clock.advance(20)
        self.assertTrue(reader.sub.attached)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_slow_subscriber_governs_until_it_lags(self) -> None:
        """With a fast and a slow subscriber the slow one holds the producer until it lags out."""
        fast = subscribed(self.buf, eager=True)
        slow = subscribed(self.buf)
        self.buf.append("stdout", b"a" * 40)
        self.assertEqual(self.producer.pauses, 0)
        self.buf.append("stdout", b"b" * 20)
        self.assertEqual(self.producer.pauses, 1)
        self.assertEqual(bytes(fast.received), b"a" * 40 + b"b" * 20)
        self.clock.advance(10)
        self.assertEqual(slow.events[-1], ("lagged", 0))
        self.assertEqual(self.producer.resumes, 1)
        self.buf.append("stdout", b"c" * 60)
        self.assertEqual(self.producer.pauses, 1, "the fast subscriber keeps up, so no new pause")
        assert fast.sub is not None
        self.assertTrue(fast.sub.attached)

    def test_subscriber_between_marks_is_also_held_to_the_bound(self) -> None:
        """A stuck subscriber between low and high water cannot keep the producer paused forever."""
        stuck = subscribed(self.buf)
        self.buf.append("stdout", b"a" * 30)  # stuck: 30 pending, between marks
        slow = subscribed(self.buf, 0)
        self.buf.append("stdout", b"b" * 30)  # both over high water
        self.assertTrue(self.buf.paused)
        assert slow.sub is not None and stuck.sub is not None
        slow.take(35)  # slow: 25 pending; stuck: 60
        stuck.take(30)  # stuck: 30 pending, still above low water
        self.assertTrue(self.buf.paused)
        self.clock.advance(10)
        self.assertTrue(stuck.sub.lagged)
        self.assertFalse(self.buf.paused)
        self.assertTrue(slow.sub.attached)

    def test_cancel_releases_pause(self) -> None:
        """A slow client that disconnects no longer holds the producer."""
        reader = subscribed(self.buf)
        self.buf.append("stdout", b"x" * 60)
        assert reader.sub is not None
        reader.sub.cancel()
        self.assertEqual((self.producer.resumes, self.buf.paused), (1, False))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_overrun_without_producer_lags(self) -> None:
        """When unread bytes would be evicted (nobody to pause) the subscriber lags at once."""
        buf = OutputBuffer(10, clock=self.clock)
        reader = subscribed(buf)
        buf.append("stdout", b"123456")
        buf.append("stdout", b"789ABC")
        self.assertEqual(reader.events, ["data", ("lagged", 0)])
        assert reader.sub is not None
        self.assertTrue(reader.sub.lagged)
        self.assertEqual(buf.read(0).missed, 2)

    def test_new_producer_is_paused_if_buffer_is_paused(self) -> None:
        """Setting the producer while paused pauses it; close forgets it without resuming."""
        subscribed(self.buf)
        self.buf.append("stdout", b"x" * 60)
        other = FakeProducer()
        self.buf.producer = other
        self.assertEqual(other.pauses, 1)
        self.buf.close()
        self.assertIsNone(self.buf.producer)
        self.assertFalse(self.buf.paused)
        self.assertEqual(self.clock.getDelayedCalls(), [])


# --------------------------------------------------------------------------- model test

_op = st.one_of(
    st.tuples(st.just("append"), st.sampled_from(["stdout", "stderr", "pty"]), st.binary(min_size=0, max_size=40)),
    st.tuples(st.just("take"), st.integers(0, 3), st.integers(1, 50)),
    st.tuples(st.just("subscribe"), st.booleans(), st.integers(0, 200)),
    st.tuples(st.just("advance"), st.floats(0, 6)),
    st.tuples(st.just("cancel"), st.integers(0, 3)),
)


class ModelTests(SynchronousTestCase):
    """Randomised checks against a plain byte-string model."""

    @settings(max_examples=300, deadline=None)
    @given(ops=st.lists(_op, max_size=60), with_producer=st.booleans(), eager=st.booleans())
    def test_unlagged_subscribers_see_every_byte_once(
        self, ops: list[tuple[object, ...]], with_producer: bool, eager: bool
    ) -> None:
        """Every never-lagged subscriber receives exactly the bytes appended after its start, in order."""
        clock = Clock()
        producer = FakeProducer() if with_producer else None
        buf = OutputBuffer(64, clock=clock, producer=producer, stall_timeout=10.0)
        model = bytearray()
        readers: list[tuple[Reader, int]] = []
        for op in ops:
            if op[0] == "append":
                _, stream, data = op
                assert isinstance(data, bytes)
                self.assertEqual(buf.append(stream, data), len(model))  # type: ignore[arg-type]
                model += data
            elif op[0] == "take" and readers:
                _, index, n = op
                assert isinstance(index, int) and isinstance(n, int)
                readers[index % len(readers)][0].take(n)
            elif op[0] == "subscribe":
                _, from_now, back = op
                assert isinstance(back, int)
                offset = None if from_now else max(buf.start_offset, buf.end_offset - back)
                reader = subscribed(buf, offset, eager=eager and len(readers) % 2 == 0)
                assert reader.sub is not None
                readers.append((reader, reader.sub.offset))
            elif op[0] == "advance":
                assert isinstance(op[1], float)
                clock.advance(op[1])
            elif op[0] == "cancel" and readers:
                assert isinstance(op[1], int)
                reader = readers.pop(op[1] % len(readers))[0]
                assert reader.sub is not None
                reader.sub.cancel()
            self.assertLessEqual(buf.retained_bytes, 64)
            self.assertEqual(buf.end_offset, len(model))
            if producer is not None:
                self.assertEqual(producer.paused, buf.paused)
                self.assertIn(producer.pauses - producer.resumes, (0, 1))
            if not buf.subscribers:
                self.assertFalse(buf.paused)
        buf.close()
        for reader, start in readers:
            assert reader.sub is not None
            if reader.sub.lagged:
                self.assertIn(("lagged", start + len(reader.received)), reader.events)
                self.assertEqual(bytes(reader.received), bytes(model[start : start + len(reader.received)]))
                continue
            reader.drain()
            clock.advance(0)
            self.assertEqual(bytes(reader.received), bytes(model[start:]))
            self.assertEqual(reader.events.count("closed"), 1)
            self.assertEqual(reader.events[-1], "closed")

    @settings(max_examples=200, deadline=None)
    @given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=20))
    def test_read_any_offset_matches_model(self, data: bytes, cuts: list[int]) -> None:
        """Appending pieces then reading from any offset gives the model's tail and missed count."""
        buf = OutputBuffer(50, clock=Clock())
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        for i, (a, b) in enumerate(zip(points, points[1:], strict=False)):
            buf.append("stdout" if i % 3 else "stderr", data[a:b])
        for offset in range(len(data) + 1):
            result = buf.read(offset, 1000)
            self.assertEqual(joined(result), data[max(offset, buf.start_offset) :])
            self.assertEqual(result.missed, max(0, buf.start_offset - offset))
            for chunk in result.chunks:
                self.assertEqual(data[chunk.offset : chunk.end], chunk.data)


# --------------------------------------------------------------------------- text helpers


class Utf8SplitterTests(SynchronousTestCase):
    """Incremental decoding that never splits a character."""

    def test_multibyte_characters_split_at_every_point(self) -> None:
        """2-, 3- and 4-byte characters split anywhere decode whole, with nothing emitted early."""
        for char in ("é", "€", "😀"):
            encoded = char.encode("utf-8")
            for cut in range(1, len(encoded)):
                splitter = Utf8Splitter()
                self.assertEqual(splitter.feed("stdout", b"a" + encoded[:cut]), "a")
                self.assertEqual(splitter.feed("stdout", encoded[cut:] + b"b"), char + "b")
                self.assertEqual(splitter.flush("stdout"), "")

    def test_byte_at_a_time(self) -> None:
        """Feeding one byte at a time yields each character exactly when complete."""
        splitter = Utf8Splitter()
        text = "a€😀é"
        out = [splitter.feed("pty", bytes([b])) for b in text.encode("utf-8")]
        self.assertEqual("".join(out), text)
        self.assertEqual(out[1:4], ["", "", "€"])

    def test_streams_are_independent(self) -> None:
        """A partial character on stdout does not mix with stderr bytes."""
        splitter = Utf8Splitter()
        euro = "€".encode()
        self.assertEqual(splitter.feed("stdout", euro[:1]), "")
        self.assertEqual(splitter.feed("stderr", b"x"), "x")
        self.assertEqual(splitter.feed("stdout", euro[1:]), "€")

    def test_flush_replaces_incomplete_tail(self) -> None:
        """At close an incomplete trailing sequence becomes a replacement character."""
        splitter = Utf8Splitter()
        self.assertEqual(splitter.feed("stdout", b"ok\xe2\x82"), "ok")
        self.assertEqual(splitter.feed("stderr", b"\xf0"), "")
        self.assertEqual(splitter.flush_all(), [("stdout", "\ufffd"), ("stderr", "\ufffd")])
        self.assertEqual(splitter.flush_all(), [])

    def test_reset_drops_partial_bytes(self) -> None:
        """After reset a dangling lead byte is forgotten."""
        splitter = Utf8Splitter()
        splitter.feed("stdout", b"\xe2")
        splitter.reset()
        self.assertEqual(splitter.feed("stdout", b"a"), "a")

    @settings(max_examples=500, deadline=None)
    @given(
        data=st.one_of(st.binary(max_size=64), st.text(max_size=32).map(lambda s: s.encode("utf-8"))),
        cuts=st.lists(st.integers(0, 64), max_size=10),
    )
    def test_any_split_decodes_like_whole(self, data: bytes, cuts: list[int]) -> None:
        """For any bytes split anywhere, joined output plus flush equals decoding the whole with replace."""
        splitter = Utf8Splitter()
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        out = [splitter.feed("stdout", data[a:b]) for a, b in zip(points, points[1:], strict=False)]
        out.append(splitter.flush("stdout"))
        self.assertEqual("".join(out), data.decode("utf-8", "replace"))


class B64Tests(SynchronousTestCase):
    """The base64 helper."""

    def test_b64_round_trips(self) -> None:
        """b64 gives standard padded base64 text."""
        self.assertEqual(b64(b"\x00\xffhi"), "AP9oaQ==")
        self.assertEqual(base64.b64decode(b64(bytes(range(256)))), bytes(range(256)))
        self.assertEqual(b64(b""), "")
