"""A scripted executor and the runs routes around it, on a Clock."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred, succeed

from codebuddy.runs.manager import ActiveRun, RunManager, RunRequest
from codebuddy.runs.records import RunStore
from codebuddy.runs.routes import RunRoutes
from codebuddy.web.errors import ApiError
from tests.helpers import ApiFixture
from tests.workers.test_routes import run_now


class ScriptedExecutor:
    """Each run emits one delta, then waits on a Deferred the test fires (or fails)."""

    def __init__(self) -> None:
        self.model: str | None = "fake-model"
        self.pending: dict[str, Deferred[Any]] = {}
        self.started: list[str] = []
        self.cancelled: list[str] = []

    def plan(self, request: RunRequest) -> Deferred[Any]:
        if self.model is None:
            raise ApiError("MODEL_NOT_CONFIGURED", "no model")
        return succeed(SimpleNamespace(model=self.model))

    def execute(self, run: ActiveRun) -> Deferred[Any]:
        self.started.append(run.record.run_id)
        run.emit("message.delta", messageId="m1", text="hello")
        d: Deferred[Any] = Deferred(lambda _: self.cancelled.append(run.record.run_id))
        self.pending[run.record.run_id] = d

        def done(result: Any) -> Any:
            run.record.result = "hello"
            run.record.num_turns = 1
            return result

        return d.addCallback(done)

    def finish(self, run_id: str) -> None:
        self.pending.pop(run_id).callback(None)


class RunsFixture(ApiFixture):
    def __init__(self, home: Path, workspace: Path, settings: Mapping[str, Any] | None = None) -> None:
        self.executor = ScriptedExecutor()
        self.store = RunStore(home)
        self.settings = dict(settings or {})

        def areas(guard: Any, clock: Any) -> list[Any]:
            self.manager = RunManager(self.store, self.executor, clock, run_now)
            self.manager.startService()
            return [RunRoutes(self.manager, workspace, lambda: succeed(self.settings), clock)]

        super().__init__(areas)
