# -*- test-case-name: tests.runs.test_manager -*-
"""
The run table: accepts runs, queues them per session, runs them through an :class:`Executor`
(the agent), streams their events and keeps their records (:mod:`codebuddy.runs.records`).

- **Queues.** Runs on one session run one after the other, in the order they were accepted;
  runs on different sessions run at the same time.
- **Events** (acp-codebuddy.md §5.3) go to the run's :class:`~codebuddy.web.sse.EventLog`: the
  SSE ``id`` is the event's ``seq``, the SSE ``event`` its ``type``, and the data
  ``{runId, sessionId, seq, ts, type, ...}``. ``run.started`` comes first and
  ``run.completed`` (with the final status, result, usage and error) last, then the log closes.
- **Ending.** ``cancel`` (or a timeout, or the daemon stopping) cancels the executor's
  Deferred, which stops the model request and kills running tools; the run ends
  ``cancelled`` (by a client), or ``failed`` with ``EXECUTION_ERROR`` (timeout) or
  ``INTERRUPTED`` (shutdown). An executor failure that carries ``code`` and ``message`` (a
  model error) is the run's error as it is; anything else is logged and reported as
  ``INTERNAL_ERROR`` without details.
- **Memory.** Active runs and the last ``keep`` finished ones are held; older ones are read
  back from disk when asked for.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from codebuddy.runs.records import RunError, RunRecord, RunStore, Sender, Usage
from codebuddy.web.errors import ApiError
from codebuddy.web.sse import EventLog, compact_json

__all__ = ["ActiveRun", "Executor", "RunManager", "RunRequest"]

MAX_EVENTS = 50_000
MAX_EVENT_BYTES = 32 * 1024 * 1024
KEEP = 200


@attrs.frozen
class RunRequest:
    """What ``POST /api/v1/runs`` asked for, resolved (session, cwd, mode and timeout decided)."""

    prompt: str
    session_id: str
    cwd: str
    permission_mode: str
    timeout_ms: int | None
    sender: Sender | None = None


class ActiveRun:
    """A run being executed: its record (updated by the executor as it goes) and its event log."""

    def __init__(self, record: RunRecord, clock: IReactorTime, plan: Any = None) -> None:
        self.record = record
        self.plan = plan  # what Executor.plan answered for it
        self.clock = clock
        self.events = EventLog(max_events=MAX_EVENTS, max_bytes=MAX_EVENT_BYTES)
        self.end_reason: str | None = None  # cancelled, timeout or shutdown
        self.deferred: Deferred[Any] | None = None
        self.finished: Deferred[RunRecord] = Deferred()
        self.timer: IDelayedCall | None = None
        self.finishing = False  # its end is queued (OnePerTurn)

    def when_finished(self) -> Deferred[RunRecord]:
        """A Deferred of its own that fires with the record once the run is recorded as ended."""
        d: Deferred[RunRecord] = Deferred()

        def tell(record: Any) -> Any:
            d.callback(record)
            return record

        self.finished.addBoth(tell)
        return d

    @property
    def usage(self) -> Usage:
        return self.record.usage

    def emit(self, type_: str, **payload: Any) -> None:
        """Append one event (``type_`` such as ``message.delta``) with the envelope fields."""
        if self.events.closed:
            return
        r = self.record
        body = {"runId": r.run_id, "sessionId": r.session_id, "seq": self.events.last_id + 1,
                "ts": int(self.clock.seconds() * 1000), "type": type_, **payload}
        self.events.append(compact_json(body), event=type_)


class OnePerTurn:
    """
    Calls made one per reactor turn, in order. Runs accepted together (or ending together, their
    model streams closing in one turn) would otherwise do all their start (or end) work in one
    reactor turn, and every other request (health, streams) would wait for all of it.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()

    def add(self, fn: Callable[..., Any], *args: Any) -> None:
        self._calls.append((fn, args))
        if len(self._calls) == 1:
            self.clock.callLater(0, self._next)

    def _next(self) -> None:
        fn, args = self._calls[0]
        try:
            fn(*args)
        finally:
            self._calls.popleft()
            if self._calls:
                self.clock.callLater(0, self._next)


class Executor(Protocol):
    """The agent, as the run table uses it."""

    def plan(self, request: RunRequest) -> Deferred[Any]:
        """
        What the run will use (the agent: its model's configuration), whose ``model`` names the
        model; kept as the run's ``plan``. Fails with an ApiError (``MODEL_NOT_CONFIGURED``) when
        there is none.
        """

    def execute(self, run: ActiveRun) -> Deferred[Any]:
        """Run the turn: emit events, set ``record.result``/``usage``/``num_turns``/``stop_reason``."""


class RunManager(Service):
    """See the module docstring."""

    log = Logger()

    def __init__(self, store: RunStore, executor: Executor, clock: IReactorTime,
                 run_blocking: Callable[..., Deferred[Any]], keep: int = KEEP) -> None:
        self.store = store
        self.executor = executor
        self.clock = clock
        self.run_blocking = run_blocking
        self.keep = keep
        self.active: dict[str, ActiveRun] = {}
        self._finished: OrderedDict[str, ActiveRun] = OrderedDict()
        self._tails: dict[str, Deferred[None]] = {}
        self._turns = OnePerTurn(clock)
        self._stopping = False

    def _now(self) -> int:
        return int(self.clock.seconds() * 1000)

    def startService(self) -> None:
        super().startService()
        marked = self.store.interrupted(self._now())
        for record in marked:
            self.log.warn("Run {run} was interrupted by the previous daemon's end; marked failed", run=record.run_id)

    # -- accepting

    async def submit(self, request: RunRequest) -> RunRecord:
        if self._stopping:
            raise ApiError("SERVICE_UNAVAILABLE", "The daemon is stopping; runs are not accepted")
        plan = await self.executor.plan(request)
        record = RunRecord(run_id=str(uuid.uuid4()), status="accepted", session_id=request.session_id,
                           cwd=request.cwd, permission_mode=request.permission_mode, prompt=request.prompt,
                           created_at=self._now(), model=plan.model, sender=request.sender,
                           timeout_ms=request.timeout_ms)
        run = ActiveRun(record, self.clock, plan)
        self.active[record.run_id] = run
        await self.run_blocking(self.store.save, record)
        previous = self._tails.get(record.session_id)
        done: Deferred[None] = Deferred()
        self._tails[record.session_id] = done

        def release(result: Any) -> Any:
            if self._tails.get(record.session_id) is done:
                del self._tails[record.session_id]
            done.callback(None)
            return result

        run.finished.addBoth(release)
        if previous is None:
            self._admit(run)
        else:
            previous.addCallback(lambda _: self._admit(run))
        return record

    # -- running

    def _admit(self, run: ActiveRun) -> None:
        """Start ``run`` on a later reactor turn, one run per turn (see :class:`OnePerTurn`)."""
        self._turns.add(self._start, run)

    def _start(self, run: ActiveRun) -> None:
        if run.end_reason is not None or self._stopping:  # cancelled (or shut down) while queued
            run.end_reason = run.end_reason or "shutdown"
            self._finish(run, Failure(CancelledError()))
            return
        record = run.record
        record.status = "running"
        record.started_at = self._now()
        run.emit("run.started", status="running", model=record.model, cwd=record.cwd,
                 permissionMode=record.permission_mode, prompt=record.prompt)
        # Not saved again here: "running" lives in memory (a daemon that dies marks the saved
        # "accepted" record failed, as it would a running one), which spares every start a write.
        if record.timeout_ms:
            run.timer = self.clock.callLater(record.timeout_ms / 1000, self._end, run, "timeout")
        d = run.deferred = maybeDeferred(self.executor.execute, run)
        d.addBoth(lambda result: self._finish_later(run, result))

    def _end(self, run: ActiveRun, reason: str) -> None:
        if run.end_reason is None:
            run.end_reason = reason
        if run.timer is not None and run.timer.active() and reason != "timeout":
            run.timer.cancel()
        if run.deferred is not None and not run.deferred.called:
            run.deferred.cancel()
        elif run.deferred is None and run.record.status == "accepted" and reason in ("cancelled", "shutdown"):
            self._finish(run, Failure(CancelledError()))

    def _finish_later(self, run: ActiveRun, result: Any) -> None:
        """Record the end on a later reactor turn, one run per turn (runs often end together)."""
        if run.finishing:
            return
        run.finishing = True
        self._turns.add(self._finish, run, result)

    def _finish(self, run: ActiveRun, result: Any) -> None:
        record = run.record
        if record.finished:
            return
        if run.timer is not None and run.timer.active():
            run.timer.cancel()
        record.finished_at = self._now()
        if record.started_at is not None:
            record.duration_ms = record.finished_at - record.started_at
        if not isinstance(result, Failure):
            record.status = "completed"
            record.stop_reason = record.stop_reason or "end_turn"
        elif result.check(CancelledError) or run.end_reason is not None:
            self._ended(run)
        else:
            record.status = "failed"
            code, message = getattr(result.value, "code", None), getattr(result.value, "message", None)
            if isinstance(code, str) and isinstance(message, str):
                record.error = RunError(code, message)
            else:
                self.log.failure("Run {run} failed", result, run=record.run_id)
                record.error = RunError("INTERNAL_ERROR", "The agent failed unexpectedly; the daemon log has "
                                        "the details")
        run.emit("run.completed", **record.completed_payload())
        run.events.close()
        self.active.pop(record.run_id, None)
        self._finished[record.run_id] = run
        while len(self._finished) > self.keep:
            self._finished.popitem(last=False)
        events = [(e.event or "message", e.data) for e in run.events.events_after(0)]
        saved = self.run_blocking(self.store.save, attrs.evolve(record))
        saved.addCallback(lambda _: self.run_blocking(self.store.save_events, record.run_id, events))
        saved.addErrback(lambda f: self.log.failure("Saving run {run}", f, run=record.run_id))
        saved.addBoth(lambda _: run.finished.callback(record))

    def _ended(self, run: ActiveRun) -> None:
        record = run.record
        reason = run.end_reason or "cancelled"
        if reason == "timeout":
            record.status = "failed"
            ms = record.timeout_ms or 0
            after = f"{ms / 60000:g}min" if ms >= 60000 and ms % 60000 == 0 else f"{ms / 1000:g}s"
            record.error = RunError("EXECUTION_ERROR", f"Task timed out after {after}")
            record.stop_reason = "cancelled"
        elif reason == "shutdown":
            record.status = "failed"
            record.error = RunError("INTERRUPTED", "The daemon stopped before this run finished")
            record.stop_reason = "cancelled"
        else:
            record.status = "cancelled"
            record.stop_reason = "cancelled"

    # -- reading and cancelling

    def session_busy(self, session_id: str) -> bool:
        """Whether a run on ``session_id`` is accepted or running (reverts wait for it)."""
        return any(run.record.session_id == session_id for run in self.active.values())

    def _held(self, run_id: str) -> ActiveRun | None:
        return self.active.get(run_id) or self._finished.get(run_id)

    async def get(self, run_id: str) -> RunRecord:
        run = self._held(run_id)
        if run is not None:
            return run.record
        record = await self.run_blocking(self.store.load, run_id)
        if record is None:
            raise ApiError("RUN_NOT_FOUND", f"No run {run_id!r}")
        return record  # type: ignore[no-any-return]

    async def events(self, run_id: str) -> EventLog:
        """The run's event log; a finished run's is read back from disk when no longer held."""
        run = self._held(run_id)
        if run is not None:
            return run.events
        await self.get(run_id)
        stored = await self.run_blocking(self.store.load_events, run_id)
        log = EventLog(max_events=MAX_EVENTS, max_bytes=MAX_EVENT_BYTES)
        for event, data in stored:
            log.append(data, event=event)
        log.close()
        return log

    async def cancel(self, run_id: str) -> RunRecord:
        run = self.active.get(run_id)
        if run is None:
            record = await self.get(run_id)
            raise ApiError("RUN_ALREADY_COMPLETED", f"Run {run_id} already ended ({record.status})",
                           {"status": record.status})
        self._end(run, "cancelled")
        return await run.when_finished()

    def stopService(self) -> Deferred[Any]:
        """Cancel every active run (they end ``failed``/``INTERRUPTED``) and wait until they are recorded."""
        self._stopping = True
        super().stopService()
        runs = list(self.active.values())
        if not runs:
            return succeed(None)
        for run in runs:  # first mark them all, so no queued run starts when the one before it ends
            run.end_reason = run.end_reason or "shutdown"
        for run in runs:
            self._end(run, "shutdown")
        return DeferredList([run.when_finished() for run in runs], consumeErrors=True)
