# -*- test-case-name: tests.web.test_sse -*-
"""
Server-Sent Events plumbing shared by every streaming area (ARCHITECTURE.md §3, §5).

- :func:`format_event` / :func:`format_comment` produce SSE frames: LF line endings,
  ``field: value`` with exactly one space, a blank line after each frame.
- :class:`EventLog` is the bounded history of one stream (process output, an agent run,
  ACP, an fs watch): integer ids from 1, never reused, oldest events evicted past a count
  or byte bound, live subscribers notified synchronously.
- :class:`EventStream` is one client's view of an :class:`EventLog`, written to a
  twisted.web request: replay from ``Last-Event-ID``/``?after=``, a comment heartbeat,
  and flow control as an ``IPushProducer`` with a bounded per-client queue (a client that
  falls behind past the bound gets a final ``event: lagged`` and must reconnect).
- :func:`serve_log` wires the two for a handler: ``return serve_log(request, log, clock)``.

Nothing here touches the global reactor: time comes from an injected ``IReactorTime``.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from codebuddy.web.json import RESPONSE_WRITTEN

__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_EVENTS",
    "Event",
    "EventLog",
    "EventLogClosed",
    "EventLogListener",
    "EventStream",
    "begin_stream",
    "format_comment",
    "format_event",
    "format_json_frame",
    "resume_point",
    "serve_log",
]

DEFAULT_MAX_EVENTS = 1000
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_HEARTBEAT = 15.0

CONTENT_TYPE = b"text/event-stream; charset=utf-8"

# The SSE grammar's line terminators: CRLF, lone CR, lone LF (nothing else, unlike
# str.splitlines, which would also split on U+2028 and friends).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_RESUME_ID = re.compile(rb"[0-9]{1,18}")


# --------------------------------------------------------------------------- framing


def _check_field(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"SSE {name} must not contain a line break: {value!r}")
    return value


def format_event(
    data: str,
    *,
    event: str | None = None,
    id: int | str | None = None,
    retry: int | None = None,
) -> bytes:
    """
    One SSE frame: ``id:``, ``event:``, ``retry:`` (each when given), then one ``data:``
    line per line of ``data``, then a blank line. LF line endings, one space after each
    colon, UTF-8. Raises ``ValueError`` for a line break in ``event`` or ``id`` or a
    negative ``retry``.
    """
    lines: list[str] = []
    if id is not None:
        lines.append(f"id: {_check_field('id', str(id))}")
    if event is not None:
        lines.append(f"event: {_check_field('event', event)}")
    if retry is not None:
        if retry < 0:
            raise ValueError(f"SSE retry must be >= 0, got {retry}")
        lines.append(f"retry: {int(retry)}")
    if "\n" in data or "\r" in data:
        lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    else:  # the usual case (one JSON document): no regex over a possibly large payload
        lines.append("data: " + data)
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def begin_stream(request: Any) -> bool:
    """
    Answer ``request`` as an event stream: status 200 and the SSE headers (content type,
    ``no-cache``, ``x-accel-buffering: no`` so proxies do not hold events back). Returns
    False when the client already left (then ``notifyFinish`` would never fire).
    """
    request.setResponseCode(200)
    request.setHeader(b"content-type", CONTENT_TYPE)
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"x-accel-buffering", b"no")
    return not getattr(request, "_disconnected", False)


def format_json_frame(*payload: bytes, event: str, id: int | None = None) -> bytes:
    """
    :func:`format_event` for a payload that is already one line of UTF-8 JSON (compact JSON
    never holds a raw line break), given in pieces and joined once: the hot path of output
    streams, where a piece can be 256 KiB.
    """
    head = b"event: %s\ndata: " % event.encode() if id is None else b"id: %d\nevent: %s\ndata: " % (id, event.encode())
    return b"".join((head, *payload, b"\n\n"))


def format_comment(text: str = "") -> bytes:
    """A comment frame, ``: text`` then a blank line (one ``: `` line per line of ``text``)."""
    lines = [f": {line}" if line else ":" for line in _LINE_BREAK.split(text)]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def compact_json(obj: Any) -> str:
    """Compact single-line JSON; ASCII escapes when the text cannot be encoded as UTF-8."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (e.g. file names decoded with surrogateescape) cannot be sent
        # as UTF-8; ASCII escapes keep the JSON exact.
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text


# --------------------------------------------------------------------------- events


def _single_line(_instance: object, attribute: attrs.Attribute, value: Any) -> None:  # type: ignore[type-arg]
    if value is not None:
        _check_field(attribute.name, value)


@attrs.frozen
class Event:
    """
    One event of an :class:`EventLog`: its id, optional event name and ``data``, an
    already serialised single-line JSON string. The wire bytes are computed once.
    """

    id: int
    event: str | None = attrs.field(validator=_single_line)
    data: str = attrs.field(validator=_single_line)
    _wire: bytes = attrs.field(init=False, repr=False, eq=False)

    @_wire.default
    def _encode_wire(self) -> bytes:
        return format_event(self.data, event=self.event, id=self.id)

    def encode(self) -> bytes:
        """The SSE frame for this event (``id:``, ``event:``, ``data:``, blank line)."""
        return self._wire

    @property
    def size(self) -> int:
        """Length of :meth:`encode` in bytes."""
        return len(self._wire)


class EventLogClosed(RuntimeError):
    """Raised when appending to an :class:`EventLog` that was closed."""


class EventLogListener(Protocol):
    """What :meth:`EventLog.subscribe` notifies, synchronously."""

    def event_appended(self, event: Event) -> None:
        """``event`` was just appended to the log."""

    def log_closed(self) -> None:
        """The log was closed; nothing more will be appended."""


class EventLog:
    """
    The bounded history of one stream.

    Ids are consecutive integers from 1, never reused; the oldest events are evicted
    once more than ``max_events`` are held or their encoded frames exceed ``max_bytes``
    (an event larger than ``max_bytes`` on its own is delivered live but not retained).
    """

    log = Logger()

    def __init__(
        self, max_events: int = DEFAULT_MAX_EVENTS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_events < 0 or max_bytes < 0:
            raise ValueError("EventLog bounds must be >= 0")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: deque[Event] = deque()
        self._bytes = 0
        self._next_id = 1
        self._closed = False
        self._listeners: dict[int, EventLogListener] = {}
        self._next_token = 0

    # -- state

    @property
    def first_id(self) -> int:
        """Id of the oldest retained event; ``last_id + 1`` when none is retained."""
        return self._events[0].id if self._events else self._next_id

    @property
    def last_id(self) -> int:
        """Id of the newest event ever appended (retained or not); 0 before the first."""
        return self._next_id - 1

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def total_bytes(self) -> int:
        """Encoded size of the retained events."""
        return self._bytes

    @property
    def subscriber_count(self) -> int:
        """How many listeners are subscribed."""
        return len(self._listeners)

    def __len__(self) -> int:
        """Number of retained events."""
        return len(self._events)

    # -- reading

    def events_after(self, last_id: int) -> list[Event]:
        """The retained events whose id is greater than ``last_id``, oldest first."""
        if not self._events:
            return []
        start = max(0, last_id + 1 - self._events[0].id)
        if start == 0:
            return list(self._events)
        if start >= len(self._events):
            return []
        return [self._events[i] for i in range(start, len(self._events))]

    def gap(self, last_id: int) -> bool:
        """True when some event with an id greater than ``last_id`` was already evicted."""
        return max(last_id, 0) + 1 < self.first_id

    # -- writing

    def append(self, data: str, event: str | None = None) -> Event:
        """
        Append one event (``data`` is a single line, usually JSON), evict past the bounds
        and notify subscribers. Raises :class:`EventLogClosed` after :meth:`close` and
        ``ValueError`` for a line break in ``data`` or ``event``.
        """
        if self._closed:
            raise EventLogClosed("cannot append to a closed EventLog")
        item = Event(id=self._next_id, event=event, data=data)
        self._next_id += 1
        self._events.append(item)
        self._bytes += item.size
        while self._events and (
            len(self._events) > self.max_events or self._bytes > self.max_bytes
        ):
            self._bytes -= self._events.popleft().size
        for token, listener in list(self._listeners.items()):
            if token in self._listeners:
                try:
                    listener.event_appended(item)
                except Exception:  # noqa: BLE001 - one bad listener must not starve the others
                    self.log.failure("SSE listener {listener!r} failed", listener=listener)
        return item

    def append_json(self, obj: Any, event: str | None = None) -> Event:
        """Append ``obj`` serialised as compact single-line JSON."""
        return self.append(compact_json(obj), event)

    def close(self) -> None:
        """Mark the stream finished and tell every subscriber; idempotent."""
        if self._closed:
            return
        self._closed = True
        listeners = list(self._listeners.values())
        self._listeners.clear()
        for listener in listeners:
            try:
                listener.log_closed()
            except Exception:  # noqa: BLE001 - one bad listener must not starve the others
                self.log.failure("SSE listener {listener!r} failed", listener=listener)

    def subscribe(self, listener: EventLogListener) -> Callable[[], None]:
        """
        Notify ``listener`` of every later append and of :meth:`close`. Returns the
        (idempotent) unsubscribe function. A closed log never notifies again, so
        subscribing to one registers nothing: check :attr:`closed` first.
        """
        if self._closed:
            return lambda: None
        token = self._next_token
        self._next_token += 1
        self._listeners[token] = listener

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe


# --------------------------------------------------------------------------- resume point


def _parse_id(raw: bytes | str | None) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    raw = raw.strip()
    return int(raw) if _RESUME_ID.fullmatch(raw) else None


def resume_point(request: Any) -> int | None:
    """
    Where a client resumes: the ``Last-Event-ID`` header, else the ``after`` (or
    ``lastEventId``) query argument. ``None`` when absent or not a non-negative integer.
    """
    found = _parse_id(request.getHeader(b"last-event-id"))
    if found is not None:
        return found
    args = getattr(request, "args", None) or {}
    for name in (b"after", b"lastEventId"):
        values = args.get(name)
        if values:
            found = _parse_id(values[0])
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------- stream


@implementer(IPushProducer)
class EventStream:
    """
    One client's view of an :class:`EventLog`, written to a twisted.web ``request``.

    :meth:`start` sends the headers and a ``: connected`` comment, replays what the client
    missed, then forwards live events. The request's transport pauses and resumes us
    (``IPushProducer``); while paused, events are queued up to ``max_queue_events`` /
    ``max_queue_bytes``, past which the client gets a final ``event: lagged`` and the
    response ends. A comment heartbeat goes out every ``heartbeat`` seconds while not
    paused (``None`` or 0 disables it).
    """

    log = Logger()

    def __init__(
        self,
        request: Any,
        log: EventLog,
        clock: IReactorTime,
        *,
        heartbeat: float | None = DEFAULT_HEARTBEAT,
        max_queue_events: int = DEFAULT_MAX_EVENTS,
        max_queue_bytes: int = DEFAULT_MAX_BYTES,
        initial_events: Sequence[Event] = (),
    ) -> None:
        self._request = request
        self._event_log = log
        self._clock = clock
        self._heartbeat_interval = heartbeat
        self.max_queue_events = max_queue_events
        self.max_queue_bytes = max_queue_bytes
        self._initial_events = tuple(initial_events)

        self.last_written_id = 0
        """Id of the last log event written to the client (before any: where it started)."""
        self.lagged = False
        """True when the stream ended because the client fell behind."""

        self._queue: deque[tuple[bytes, int | None]] = deque()
        self._queued_bytes = 0
        self._paused = False
        self._draining = False
        self._closing = False
        self._started = False
        self._ended = False
        self._disconnected = False
        self._registered = False
        self._unsubscribe: Callable[[], None] | None = None
        self._heartbeat: LoopingCall | None = None
        self._done: Deferred[Any] = Deferred(canceller=self._cancelled)

    # -- introspection

    @property
    def queued(self) -> int:
        """Frames waiting for the transport to resume us."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Size of the queued frames."""
        return self._queued_bytes

    @property
    def paused(self) -> bool:
        """True while the transport has paused us."""
        return self._paused

    @property
    def ended(self) -> bool:
        """True once the stream has ended for any reason."""
        return self._ended

    # -- lifecycle

    def start(self, after: int | None = None) -> Deferred[Any]:
        """
        Begin streaming: status, headers and a ``: connected`` comment at once.

        With ``after`` (the client's last id) replay the retained events after it,
        preceded by ``event: gap`` when some were evicted (an ``after`` beyond the log's
        ``last_id`` belongs to an earlier log: gap, then every retained event). Without
        it send ``initial_events`` (their ids count as written), then only live events.
        Returns a Deferred firing with ``RESPONSE_WRITTEN`` when the stream ends for any
        reason; cancelling it ends the stream (finishing the response if still connected).
        """
        if self._started:
            raise RuntimeError("EventStream.start called twice")
        self._started = True
        request = self._request
        self.last_written_id = after if after is not None else self._event_log.last_id

        if not begin_stream(request) or self._request_gone():
            # notifyFinish would never fire: the client left while we were getting ready.
            self._disconnected = True
            self._end()
            return self._done
        if getattr(request, "method", b"GET") == b"HEAD":
            request.write(b"")
            self._end()
            return self._done

        request.notifyFinish().addCallbacks(lambda _: None, self._connection_lost)
        request.registerProducer(self, True)
        self._registered = True
        # Headers alone are not enough for some proxies and clients, which wait for the
        # first body bytes before reporting the stream open.
        request.write(format_comment("connected"))

        if not self._event_log.closed:
            self._unsubscribe = self._event_log.subscribe(self)
        if after is not None:
            # A resume point past anything this log issued comes from an earlier log (the
            # daemon restarted and ids began again at 1): treat everything as missed.
            stale = after > self._event_log.last_id
            if stale or self._event_log.gap(after):
                gap = {"lastEventId": after, "firstAvailableId": self._event_log.first_id}
                self._send(format_event(compact_json(gap), event="gap"), None)
            backlog = self._event_log.events_after(0 if stale else after)
        else:
            backlog = list(self._initial_events)
        for item in backlog:
            self._send(item.encode(), item.id)
        if self._ended:
            return self._done
        if self._event_log.closed:
            self.log_closed()
            return self._done

        if self._heartbeat_interval:
            self._heartbeat = LoopingCall(self._beat)
            self._heartbeat.clock = self._clock
            self._heartbeat.start(self._heartbeat_interval, now=False).addErrback(
                self._heartbeat_failed
            )
        return self._done

    def stop(self) -> None:
        """End the stream from the server side (e.g. shutdown); queued frames are dropped."""
        self._end()

    # -- EventLogListener

    def event_appended(self, event: Event) -> None:
        """Forward a live event (queued while paused)."""
        self._send(event.encode(), event.id)

    def log_closed(self) -> None:
        """Finish the response once everything queued has been written."""
        if self._ended:
            return
        self._closing = True
        self._unsubscribe = None
        self._drain()

    # -- IPushProducer

    def pauseProducing(self) -> None:
        """The transport's buffer is full: queue instead of writing."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The transport drained: write what is queued."""
        if self._ended:
            return
        self._paused = False
        self._drain()

    def stopProducing(self) -> None:
        """The connection is going away: release everything, never finish the request."""
        self._disconnected = True
        self._end()

    # -- internals

    def _request_gone(self) -> bool:
        # twisted.web.http.Request documents ``_disconnected``; finish() raises once it is set.
        return self._disconnected or bool(getattr(self._request, "_disconnected", False))

    def _send(self, frame: bytes, event_id: int | None) -> None:
        if self._ended:
            return
        if self._paused or self._queue:
            self._queue.append((frame, event_id))
            self._queued_bytes += len(frame)
            if (
                len(self._queue) > self.max_queue_events
                or self._queued_bytes > self.max_queue_bytes
            ):
                self._lag()
            return
        self._write(frame, event_id)

    def _write(self, frame: bytes, event_id: int | None) -> None:
        self._request.write(frame)
        if event_id is not None:
            self.last_written_id = event_id

    def _drain(self) -> None:
        if self._draining or self._ended:
            return
        self._draining = True
        try:
            while self._queue and not self._paused and not self._ended:
                frame, event_id = self._queue.popleft()
                self._queued_bytes -= len(frame)
                self._write(frame, event_id)
        finally:
            self._draining = False
        if self._closing and not self._queue:
            self._end()

    def _lag(self) -> None:
        self._queue.clear()
        self._queued_bytes = 0
        self.lagged = True
        data = compact_json({"lastEventId": self.last_written_id})
        # Written even while paused: the transport buffers this one small frame.
        self._request.write(format_event(data, event="lagged", id=self.last_written_id))
        self.log.info(
            "SSE client lagged behind; ending its stream at id {last_id}",
            last_id=self.last_written_id,
        )
        self._end()

    def _beat(self) -> None:
        if not self._ended and not self._paused and not self._queue:
            self._request.write(format_comment("keepalive"))

    def _heartbeat_failed(self, failure: Failure) -> None:
        self.log.failure("SSE heartbeat failed", failure)
        self._end()

    def _connection_lost(self, _reason: Failure) -> None:
        self._disconnected = True
        self._end()

    def _cancelled(self, _done: Deferred[Any]) -> None:
        self._end()

    def _end(self) -> None:
        """Release everything; finish the request unless the client is gone; fire the result."""
        if self._ended:
            return
        self._ended = True
        self._closing = False
        self._queue.clear()
        self._queued_bytes = 0
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        registered, self._registered = self._registered, False
        close_response(self._request, registered=registered, gone=self._request_gone(), done=self._done)


def close_response(request: Any, *, registered: bool, gone: bool, done: Deferred[Any]) -> None:
    """
    End a streamed response: unregister the stream's producer, finish the request unless the
    client is ``gone``, then fire ``done`` with ``RESPONSE_WRITTEN`` (once). Shared by every
    stream that writes to a request itself (event logs, process output).
    """
    if registered and not (gone and getattr(request, "channel", True) is None):
        # A real Request drops its channel on connectionLost; nothing is left to unregister then.
        request.unregisterProducer()
    try:
        if not gone:
            request.finish()
    finally:
        if not done.called:
            done.callback(RESPONSE_WRITTEN)


def serve_log(
    request: Any, log: EventLog, clock: IReactorTime, *, from_start: bool = False, **kw: Any
) -> Deferred[Any]:
    """
    Stream ``log`` to ``request`` from the client's :func:`resume_point`; see EventStream.
    Without a resume point a client gets only new events, or, with ``from_start``, every
    event the log still holds (for streams whose first events matter, like a watch's start).
    """
    after = resume_point(request)
    if after is None and from_start:
        after = 0
    return EventStream(request, log, clock, **kw).start(after)
