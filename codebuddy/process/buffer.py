# -*- test-case-name: tests.process.test_buffer -*-
"""
Bounded, byte-offset output history of one process, with flow-controlled subscribers
(ARCHITECTURE.md §3 "Processes"; e2b.md §6 rows 3-4).

- :class:`OutputBuffer` is an append-only log of :class:`Chunk` s (``stdout``, ``stderr``
  or ``pty`` bytes). Every byte ever appended has an absolute offset, counted across all
  streams from 0 and never reused. At most ``capacity`` bytes are retained: the oldest
  chunk is *split* on eviction so exactly ``capacity`` bytes stay, and
  ``start_offset == end_offset - retained`` always holds.
- :meth:`OutputBuffer.read` replays from any offset and reports bytes already evicted as
  ``missed``.
- :class:`Subscription` is one live reader. The buffer only *notifies*
  (:meth:`BufferReader.data_available`); readers *pull* with :meth:`Subscription.take`,
  so nothing is ever queued per subscriber beyond the shared ring.
- Flow control: while any attached subscriber has more than ``high_water`` bytes pending
  the buffer pauses its ``producer`` (the child's output transport) until every
  subscriber is back to ``low_water`` or less. A subscriber that keeps the producer paused
  (more than ``low_water`` pending while paused) for ``stall_timeout`` seconds is
  detached with :meth:`BufferReader.lagged`; so is one whose unread bytes would be
  evicted (only possible without a producer or when the child overruns the slack between
  ``high_water`` and ``capacity``). A subscriber that was never lagged therefore never
  loses a byte. Without subscribers the producer is never paused and old output is
  simply overwritten.
- :class:`Utf8Splitter` turns byte chunks into text without splitting characters;
  :func:`b64` is the base64 form.

Nothing here touches the global reactor: time comes from an injected ``IReactorTime``.
"""

from __future__ import annotations

import base64
import codecs
from bisect import bisect_right
from typing import Any, Literal, Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_READ_BYTES",
    "DEFAULT_STALL_TIMEOUT",
    "STREAMS",
    "BufferClosed",
    "BufferReader",
    "Chunk",
    "OutputBuffer",
    "ReadResult",
    "Stream",
    "Subscription",
    "Utf8Splitter",
    "b64",
]

Stream = Literal["stdout", "stderr", "pty"]
STREAMS: tuple[Stream, ...] = ("stdout", "stderr", "pty")

DEFAULT_CAPACITY = 4 * 1024 * 1024
DEFAULT_READ_BYTES = 64 * 1024
DEFAULT_STALL_TIMEOUT = 10.0

# Consecutive small appends to the same stream are merged into one chunk up to this size,
# so a PTY echoing one byte at a time does not cost one object per byte.
_COALESCE_BYTES = 1024
# Evicted list slots are dropped in bulk once at least this many have accumulated.
_COMPACT_AFTER = 256


class BufferClosed(RuntimeError):
    """Raised when appending to an :class:`OutputBuffer` after :meth:`~OutputBuffer.close`."""


@attrs.frozen
class Chunk:
    """``data`` from one ``stream``; its first byte has absolute offset ``offset``."""

    stream: Stream
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        """The offset just after this chunk."""
        return self.offset + len(self.data)


@attrs.frozen
class ReadResult:
    """
    The answer to a read or take: ``chunks`` in order, the ``next_offset`` to continue
    from, ``missed`` bytes that were requested but already evicted (they lie just before
    the first chunk), and ``eof`` when the buffer is closed and nothing is left after
    ``next_offset``.
    """

    chunks: list[Chunk]
    next_offset: int
    missed: int = 0
    eof: bool = False

    @property
    def size(self) -> int:
        """Total bytes in ``chunks``."""
        return sum(len(c.data) for c in self.chunks)


class BufferReader(Protocol):
    """What a subscriber implements; every call comes from the buffer, synchronously."""

    def data_available(self) -> None:
        """New bytes were appended (called on every append); pull them with ``take``."""

    def buffer_closed(self) -> None:
        """The process ended and this subscriber has taken everything (called once, last)."""

    def lagged(self, next_offset: int) -> None:
        """Detached for falling behind; resume by reading (or re-subscribing) from ``next_offset``."""


_ATTACHED = "attached"
_FINISHED = "finished"
_LAGGED = "lagged"
_CANCELLED = "cancelled"


class Subscription:
    """
    One reader's position in an :class:`OutputBuffer` (made by
    :meth:`OutputBuffer.subscribe`). While attached it counts for flow control; it ends
    finished (closed and drained), lagged, or cancelled.
    """

    def __init__(self, buffer: OutputBuffer, reader: BufferReader, offset: int, missed: int) -> None:
        self._buffer = buffer
        self.reader = reader
        self._offset = offset
        self._missed = missed
        self._state = _ATTACHED
        self._stall: IDelayedCall | None = None
        self._closing: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self._state} offset={self._offset} pending={self.pending_bytes}>"

    @property
    def offset(self) -> int:
        """The next offset this subscriber will be given."""
        return self._offset

    @property
    def pending_bytes(self) -> int:
        """Bytes appended but not yet taken (0 once detached)."""
        if self._state != _ATTACHED:
            return 0
        return self._buffer.end_offset - self._offset

    @property
    def attached(self) -> bool:
        """True until the subscription finishes, lags or is cancelled."""
        return self._state == _ATTACHED

    @property
    def lagged(self) -> bool:
        """True when the buffer detached this subscriber for falling behind."""
        return self._state == _LAGGED

    @property
    def stalled(self) -> bool:
        """True while a stall timer runs for this subscriber (it is holding the producer paused)."""
        return self._stall is not None

    def take(self, max_bytes: int = DEFAULT_READ_BYTES) -> ReadResult:
        """
        Up to ``max_bytes`` of the pending bytes, advancing this subscriber. ``missed`` is
        reported once, on the first take after subscribing from an evicted offset. A lagged
        or cancelled subscription gets an empty result.
        """
        if self._state in (_LAGGED, _CANCELLED):
            return ReadResult([], self._offset)
        result = self._buffer.read(self._offset, max_bytes)
        missed, self._missed = self._missed, 0
        self._offset = result.next_offset
        self._buffer._taken(self)
        return attrs.evolve(result, missed=missed)

    def cancel(self) -> None:
        """Detach without any further callback (a client went away). Idempotent."""
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        self._closing = None
        if self._state == _ATTACHED:
            self._buffer._detach(self, _CANCELLED)
        elif self._state == _FINISHED:
            self._state = _CANCELLED


class OutputBuffer:
    """
    Bounded output history of one process, with pull-based subscribers and flow control
    of ``producer`` (see the module docstring).

    ``high_water`` defaults to ``capacity // 2`` and ``low_water`` to ``capacity // 4``;
    the gap between ``high_water`` and ``capacity`` is the slack for bytes the child sends
    after being paused.
    """

    log = Logger()

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        clock: IReactorTime,
        high_water: int | None = None,
        low_water: int | None = None,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        producer: IPushProducer | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.high_water = capacity // 2 if high_water is None else high_water
        self.low_water = capacity // 4 if low_water is None else low_water
        if not 0 <= self.low_water < self.high_water <= capacity:
            raise ValueError(
                f"need 0 <= low_water < high_water <= capacity, got {self.low_water}, {self.high_water}, {capacity}"
            )
        self.stall_timeout = stall_timeout
        self._clock = clock
        self._chunks: list[Chunk] = []
        self._head = 0
        self._start = 0
        self._end = 0
        self._closed = False
        self._exit_info: Any = None
        self._subs: dict[Subscription, None] = {}
        self._paused = False
        self._producer: IPushProducer | None = producer

    # ------------------------------------------------------------------ state

    @property
    def start_offset(self) -> int:
        """Offset of the oldest retained byte (equals bytes ever evicted)."""
        return self._start

    @property
    def end_offset(self) -> int:
        """Offset the next appended byte will get (equals bytes ever appended)."""
        return self._end

    @property
    def retained_bytes(self) -> int:
        """Bytes currently held, at most ``capacity``."""
        return self._end - self._start

    @property
    def truncated(self) -> bool:
        """True once any byte has been evicted."""
        return self._start > 0

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def exit_info(self) -> Any:
        """Whatever was passed to :meth:`close` (e.g. the exit status)."""
        return self._exit_info

    @property
    def paused(self) -> bool:
        """True while the buffer holds the producer paused."""
        return self._paused

    @property
    def subscribers(self) -> list[Subscription]:
        """The attached subscriptions, oldest first."""
        return list(self._subs)

    @property
    def producer(self) -> IPushProducer | None:
        """The child's output transport; a new one is paused at once if the buffer is paused."""
        return self._producer

    @producer.setter
    def producer(self, producer: IPushProducer | None) -> None:
        self._producer = producer
        if producer is not None and self._paused:
            producer.pauseProducing()

    # ------------------------------------------------------------------ writing

    def append(self, stream: Stream, data: bytes) -> int:
        """
        Record ``data`` from ``stream`` and notify subscribers; returns the offset of its
        first byte. Empty data is ignored. Raises :class:`BufferClosed` after :meth:`close`.
        """
        if self._closed:
            raise BufferClosed("output buffer is closed")
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}")
        offset = self._end
        if not data:
            return offset
        data = bytes(data)
        last = self._chunks[-1] if len(self._chunks) > self._head else None
        if last is not None and last.stream == stream and len(last.data) + len(data) <= _COALESCE_BYTES:
            self._chunks[-1] = Chunk(stream, last.offset, last.data + data)
        else:
            self._chunks.append(Chunk(stream, offset, data))
        self._end += len(data)

        new_start = max(self._start, self._end - self.capacity)
        overtaken = [s for s in self._subs if s._offset < new_start]
        for sub in overtaken:
            self._detach(sub, _LAGGED, update=False)
        self._evict(new_start)
        for sub in overtaken:
            self.log.info(
                "Output subscriber overrun: {missed} unread bytes evicted",
                missed=new_start - sub._offset,
            )
            self._tell(sub, "lagged", sub._offset)
        for sub in list(self._subs):
            if sub._state == _ATTACHED:
                self._tell(sub, "data_available")
        self._update_flow()
        return offset

    def _tell(self, sub: Subscription, event: str, *args: Any) -> None:
        """Call one reader; a reader that fails is logged and cancelled, never the others' problem."""
        try:
            getattr(sub.reader, event)(*args)
        except Exception:
            self.log.failure("output subscriber failed in {event}; detaching it", event=event)
            if sub._state == _ATTACHED:
                self._detach(sub, _CANCELLED)

    def _evict(self, new_start: int) -> None:
        excess = new_start - self._start
        while excess > 0:
            chunk = self._chunks[self._head]
            if len(chunk.data) <= excess:
                excess -= len(chunk.data)
                self._head += 1
            else:
                self._chunks[self._head] = Chunk(chunk.stream, chunk.offset + excess, chunk.data[excess:])
                excess = 0
        self._start = new_start
        if self._head >= _COMPACT_AFTER and self._head * 2 >= len(self._chunks):
            del self._chunks[: self._head]
            self._head = 0

    def close(self, exit_info: Any = None) -> None:
        """
        Mark end of output (the process ended). Subscribers that have taken everything get
        :meth:`BufferReader.buffer_closed` (from the clock, after the current call); the
        others get it after the take that drains them. Flow control stops and the producer
        is forgotten. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._exit_info = exit_info
        self._paused = False
        self._producer = None
        for sub in list(self._subs):
            self._cancel_stall(sub)
            if sub._offset == self._end:
                self._finish(sub)

    # ------------------------------------------------------------------ reading

    def read(self, offset: int, max_bytes: int = DEFAULT_READ_BYTES) -> ReadResult:
        """
        Up to ``max_bytes`` bytes from ``offset`` onwards, as chunks (a chunk is cut when it
        starts before ``offset`` or runs past the budget). An ``offset`` already evicted is
        moved up to ``start_offset`` and the difference reported as ``missed``. Raises
        ``ValueError`` for a negative offset, one past ``end_offset``, or ``max_bytes < 1``.
        """
        if offset < 0 or offset > self._end:
            raise ValueError(f"offset {offset} outside 0..{self._end}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        missed = max(0, self._start - offset)
        pos = max(offset, self._start)
        out: list[Chunk] = []
        if pos < self._end:
            i = bisect_right(self._chunks, pos, lo=self._head, key=_chunk_offset) - 1
            budget = max_bytes
            while budget > 0 and i < len(self._chunks):
                chunk = self._chunks[i]
                skip = pos - chunk.offset
                if skip == 0 and len(chunk.data) <= budget:
                    piece = chunk
                else:
                    piece = Chunk(chunk.stream, pos, chunk.data[skip : skip + budget])
                out.append(piece)
                pos += len(piece.data)
                budget -= len(piece.data)
                i += 1
        return ReadResult(out, pos, missed, eof=self._closed and pos == self._end)

    def subscribe(self, reader: BufferReader, offset: int | None = None) -> Subscription:
        """
        Attach ``reader`` from ``offset`` (``None``: from now, i.e. ``end_offset``). An
        offset already evicted starts at ``start_offset``; the first take reports the
        ``missed`` bytes. Existing bytes are not announced: take them right away. On a closed
        buffer the subscriber drains the history and then gets ``buffer_closed``.
        """
        if offset is None:
            offset = self._end
        if offset < 0 or offset > self._end:
            raise ValueError(f"offset {offset} outside 0..{self._end}")
        sub = Subscription(self, reader, max(offset, self._start), max(0, self._start - offset))
        self._subs[sub] = None
        if self._closed:
            if sub._offset == self._end:
                self._finish(sub)
        else:
            self._update_flow()
        return sub

    # ------------------------------------------------------------------ internals

    def _taken(self, sub: Subscription) -> None:
        if sub._state != _ATTACHED:
            return
        if self._closed:
            if sub._offset == self._end:
                self._finish(sub)
        else:
            self._update_flow()

    def _finish(self, sub: Subscription) -> None:
        self._subs.pop(sub, None)
        sub._state = _FINISHED
        self._cancel_stall(sub)

        def deliver() -> None:
            sub._closing = None
            if sub._state == _FINISHED:
                self._tell(sub, "buffer_closed")

        sub._closing = self._clock.callLater(0, deliver)

    def _detach(self, sub: Subscription, state: str, update: bool = True) -> None:
        self._subs.pop(sub, None)
        sub._state = state
        self._cancel_stall(sub)
        if update:
            self._update_flow()

    def _cancel_stall(self, sub: Subscription) -> None:
        if sub._stall is not None:
            if sub._stall.active():
                sub._stall.cancel()
            sub._stall = None

    def _stalled(self, sub: Subscription) -> None:
        sub._stall = None
        if sub._state != _ATTACHED:
            return
        self.log.info(
            "Output subscriber stalled for {timeout}s with {pending} bytes pending; detaching",
            timeout=self.stall_timeout,
            pending=sub.pending_bytes,
        )
        self._detach(sub, _LAGGED)
        self._tell(sub, "lagged", sub._offset)

    def _update_flow(self) -> None:
        """Pause/resume the producer and start/stop stall timers from the subscribers' backlog."""
        if self._closed:
            return
        subs = list(self._subs)
        if not self._paused:
            if any(s.pending_bytes > self.high_water for s in subs):
                self._paused = True
                if self._producer is not None:
                    self._producer.pauseProducing()
        elif all(s.pending_bytes <= self.low_water for s in subs):
            self._paused = False
            if self._producer is not None:
                self._producer.resumeProducing()
        for sub in subs:
            holding = self._paused and sub.pending_bytes > self.low_water
            if holding and sub._stall is None:
                sub._stall = self._clock.callLater(self.stall_timeout, self._stalled, sub)
            elif not holding:
                self._cancel_stall(sub)


def _chunk_offset(chunk: Chunk) -> int:
    return chunk.offset


class Utf8Splitter:
    """
    Incremental UTF-8 decoding for text mode, one decoder per stream: a character split
    across chunks is held back until its last byte arrives; invalid bytes become U+FFFD
    exactly as ``bytes.decode("utf-8", "replace")`` would. Call :meth:`flush` at close to
    turn a dangling incomplete sequence into replacement characters. Reading from an offset
    inside a character yields U+FFFD for its continuation bytes.
    """

    def __init__(self) -> None:
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}

    def _decoder(self, stream: str) -> codecs.IncrementalDecoder:
        decoder = self._decoders.get(stream)
        if decoder is None:
            decoder = self._decoders[stream] = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return decoder

    def feed(self, stream: Stream, data: bytes) -> str:
        """The text completed by ``data`` on ``stream`` (possibly empty)."""
        return self._decoder(stream).decode(data)

    def flush(self, stream: Stream) -> str:
        """Whatever ``stream`` still holds, with incomplete bytes replaced; resets it."""
        decoder = self._decoders.pop(stream, None)
        return "" if decoder is None else decoder.decode(b"", final=True)

    def flush_all(self) -> list[tuple[Stream, str]]:
        """:meth:`flush` for every stream that still holds something, in ``STREAMS`` order."""
        out = [(s, self.flush(s)) for s in STREAMS]
        self._decoders.clear()
        return [(s, text) for s, text in out if text]

    def reset(self) -> None:
        """Drop all held bytes (e.g. after a gap in the output)."""
        self._decoders.clear()


def b64(data: bytes) -> str:
    """``data`` as standard base64 text (the E2B JSON form of ``bytes`` fields)."""
    return base64.b64encode(data).decode("ascii")
