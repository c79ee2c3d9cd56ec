"""The runs API over a scripted executor: bodies, queues, status, stream replay, cancel, timeout, restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from codebuddy.runs.manager import RunManager, RunRequest
from codebuddy.runs.records import RunStore
from tests.runs.helpers import RunsFixture, ScriptedExecutor
from tests.workers.test_routes import run_now


@pytest.fixture
def api(tmp_path: Path) -> RunsFixture:
    (tmp_path / "ws").mkdir()
    return RunsFixture(tmp_path / "home", tmp_path / "ws")


def start(api: RunsFixture, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    status, data, _ = api.json("POST", "/api/v1/runs", json=body, **kw)
    assert status == 202, data
    assert data["data"]["status"] == "accepted"
    return data["data"]  # type: ignore[no-any-return]


Frame = tuple[str, str, dict[str, Any]]


def events(api: RunsFixture, run_id: str, headers: dict[str, str] | None = None) -> list[Frame]:
    response, body = api.request("GET", f"/api/v1/runs/{run_id}/stream", headers=headers or {})
    assert response.code == 200
    out = []
    for frame in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            out.append((fields.get("id", ""), fields.get("event", ""), json.loads(fields["data"])))
    return out


def test_the_three_body_shapes(api: RunsFixture) -> None:
    spec = start(api, {"text": "Fix the failing test", "sender": {"id": "u1", "name": "Ann"}})
    again = start(api, {"text": "and the docs", "sender": {"id": "u1", "name": "Ann"}})
    assert spec["sessionId"] == again["sessionId"]  # one conversation per sender
    prompt = start(api, {"prompt": "hi"})
    gateway = start(api, {"id": "run-1", "type": "message", "payload": {"text": "hello"}})
    assert len({spec["sessionId"], prompt["sessionId"], gateway["sessionId"]}) == 3
    status, body, _ = api.json("GET", f"/api/v1/runs/{gateway['runId']}")
    assert (status, body["data"]["prompt"], body["data"]["status"]) == (200, "hello", "running")


def test_bad_requests(api: RunsFixture, tmp_path: Path) -> None:
    for body, field in (({}, "text"), ({"text": "  "}, "text"), ({"text": "x", "permissionMode": "yolo"},
                                                                   "permissionMode"),
                        ({"text": "x", "sessionId": "../etc"}, "sessionId")):
        status, data, _ = api.json("POST", "/api/v1/runs", json=body)
        assert (status, data["error"]["code"], data["error"]["details"][0]["field"]) == (400, "BAD_REQUEST", field)
    status, data, _ = api.json("POST", "/api/v1/runs", json={"text": "x", "cwd": str(tmp_path / "nope")})
    assert (status, data["error"]["code"]) == (400, "PATH_NOT_DIRECTORY")
    status, data, _ = api.json("POST", "/api/v1/runs", json={"text": "x"}, headers={"X-Codebuddy-Run-Timeout": "soon"})
    assert (status, data["error"]["code"]) == (400, "BAD_REQUEST")
    api.executor.model = None
    status, data, _ = api.json("POST", "/api/v1/runs", json={"text": "x"})
    assert (status, data["error"]["code"]) == (400, "MODEL_NOT_CONFIGURED")
    for path in ("/api/v1/runs/nope", "/api/v1/runs/nope/stream"):
        status, data, _ = api.json("GET", path)
        assert (status, data["error"]["code"]) == (404, "RUN_NOT_FOUND")
    status, data, _ = api.json("POST", "/api/v1/runs/nope/cancel")
    assert (status, data["error"]["code"]) == (404, "RUN_NOT_FOUND")


def test_runs_on_one_session_queue_and_others_run_at_once(api: RunsFixture) -> None:
    a = start(api, {"text": "one", "sessionId": "s1"})
    b = start(api, {"text": "two", "sessionId": "s1"})
    c = start(api, {"text": "three", "sessionId": "s2"})
    assert api.executor.started == [a["runId"], c["runId"]]
    assert api.json("GET", f"/api/v1/runs/{b['runId']}")[1]["data"]["status"] == "accepted"
    api.executor.finish(a["runId"])
    assert api.executor.started == [a["runId"], c["runId"]]  # b is admitted on the next reactor turn
    api.clock.advance(0)
    assert api.executor.started == [a["runId"], c["runId"], b["runId"]]
    record = api.json("GET", f"/api/v1/runs/{a['runId']}")[1]["data"]
    assert (record["status"], record["result"], record["numTurns"], record["stopReason"]) == (
        "completed", "hello", 1, "end_turn")
    assert record["finishedAt"] >= record["startedAt"] >= record["createdAt"]


def test_stream_replays_a_finished_run_and_resumes(api: RunsFixture) -> None:
    run = start(api, {"text": "hi", "sessionId": "s1"})
    api.executor.finish(run["runId"])
    got = events(api, run["runId"])
    assert [(i, e) for i, e, _ in got] == [("1", "run.started"), ("2", "message.delta"), ("3", "run.completed")]
    started, delta, completed = (d for _, _, d in got)
    assert (started["status"], started["model"], started["permissionMode"]) == ("running", "fake-model", "default")
    assert (delta["runId"], delta["sessionId"], delta["seq"], delta["text"]) == (run["runId"], "s1", 2, "hello")
    assert (completed["status"], completed["result"]) == ("completed", "hello")
    assert [i for i, _, _ in events(api, run["runId"], {"Last-Event-ID": "2"})] == ["3"]


def test_cancel(api: RunsFixture) -> None:
    running = start(api, {"text": "a", "sessionId": "s"})
    queued = start(api, {"text": "b", "sessionId": "s"})
    status, body, _ = api.json("POST", f"/api/v1/runs/{queued['runId']}/cancel")
    assert (status, body["data"]["status"]) == (200, "cancelled")
    status, body, _ = api.json("POST", f"/api/v1/runs/{running['runId']}/cancel")
    assert (status, body["data"]["status"], body["data"]["stopReason"]) == (200, "cancelled", "cancelled")
    assert api.executor.cancelled == [running["runId"]]
    assert api.executor.started == [running["runId"]]  # the queued run never ran
    status, body, _ = api.json("POST", f"/api/v1/runs/{running['runId']}/cancel")
    assert (status, body["error"]["code"]) == (409, "RUN_ALREADY_COMPLETED")
    assert events(api, running["runId"])[-1][2]["status"] == "cancelled"


def test_timeout_from_header_body_and_settings(api: RunsFixture) -> None:
    by_header = start(api, {"text": "a"}, headers={"X-Codebuddy-Run-Timeout": "60000"})
    by_body = start(api, {"text": "b", "timeoutMs": 0})
    api.settings["gateway"] = {"runTimeoutMs": 120000}
    by_settings = start(api, {"text": "c"})
    records = {r: api.json("GET", f"/api/v1/runs/{r}")[1]["data"]
               for r in (by_header["runId"], by_body["runId"], by_settings["runId"])}
    assert [rec["timeoutMs"] for rec in records.values()] == [60000, None, 120000]
    api.clock.advance(60)
    record = api.json("GET", f"/api/v1/runs/{by_header['runId']}")[1]["data"]
    assert (record["status"], record["error"]) == ("failed", {"code": "EXECUTION_ERROR",
                                                              "message": "Task timed out after 1min"})
    assert api.json("GET", f"/api/v1/runs/{by_settings['runId']}")[1]["data"]["status"] == "running"


def test_a_model_error_is_the_run_error(api: RunsFixture) -> None:
    class ModelError(Exception):
        code = "MODEL_AUTH_FAILED"
        message = "The model server refused the API key"

    run = start(api, {"text": "a"})
    api.executor.pending.pop(run["runId"]).errback(ModelError())
    api.clock.advance(0)  # runs are recorded as ended on the next reactor turn
    record = api.json("GET", f"/api/v1/runs/{run['runId']}")[1]["data"]
    assert (record["status"], record["error"]["code"]) == ("failed", "MODEL_AUTH_FAILED")


def test_records_survive_a_restart_and_interrupted_runs_fail(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    api = RunsFixture(tmp_path / "home", tmp_path / "ws")
    done = start(api, {"text": "a", "sessionId": "s1"})
    api.executor.finish(done["runId"])
    left = start(api, {"text": "b", "sessionId": "s2"})
    # A new daemon on the same home (the old one died without stopping its runs).
    again = RunsFixture(tmp_path / "home", tmp_path / "ws")
    record = again.json("GET", f"/api/v1/runs/{left['runId']}")[1]["data"]
    assert (record["status"], record["error"]["code"]) == ("failed", "INTERRUPTED")
    assert [e for _, e, _ in events(again, done["runId"])] == ["run.started", "message.delta", "run.completed"]


def test_shutdown_ends_active_runs_failed(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    executor = ScriptedExecutor()
    clock = Clock()
    manager = RunManager(store, executor, clock, run_now)
    manager.startService()
    results: list[Any] = []
    for session in ("a", "a"):
        ensureDeferred(manager.submit(RunRequest("p", session, str(tmp_path), "default", None))).addCallback(
            results.append)
    clock.advance(0)  # the first run starts; the second waits for it (same session)
    stopped: list[Any] = []
    manager.stopService().addCallback(stopped.append)
    clock.advance(0)  # the ends are recorded one per reactor turn
    assert stopped
    for record in results:
        saved = store.load(record.run_id)
        assert saved is not None and saved.status == "failed" and saved.error.code == "INTERRUPTED"
    assert executor.cancelled == [results[0].run_id]


def test_a_burst_of_runs_starts_one_per_reactor_turn(tmp_path: Path) -> None:
    """Runs accepted together are admitted one per turn, so other requests get the reactor in between."""
    executor = ScriptedExecutor()
    clock = Clock()
    manager = RunManager(RunStore(tmp_path), executor, clock, run_now)
    manager.startService()
    for session in ("a", "b", "c"):
        ensureDeferred(manager.submit(RunRequest("p", session, str(tmp_path), "default", None)))
    assert executor.started == []
    assert len(clock.getDelayedCalls()) == 1  # one admission at a time (each schedules the next for a later turn)
    clock.advance(0)  # a Clock runs the whole chain at once; the reactor runs one link per turn
    assert len(executor.started) == 3


def test_session_busy_while_a_run_is_accepted_or_running(api: RunsFixture) -> None:
    run = start(api, {"text": "a", "sessionId": "s1"})
    queued = start(api, {"text": "b", "sessionId": "s1"})
    assert api.manager.session_busy("s1") and not api.manager.session_busy("s2")
    api.executor.finish(run["runId"])
    api.clock.advance(0)
    assert api.manager.session_busy("s1")  # the queued run now runs
    api.executor.finish(queued["runId"])
    api.clock.advance(0)
    assert not api.manager.session_busy("s1")


def test_only_active_runs_are_marked(tmp_path: Path) -> None:
    """An active run has a marker in runs/active/ until it is recorded as ended; a restart reads only those."""
    (tmp_path / "ws").mkdir()
    api = RunsFixture(tmp_path / "home", tmp_path / "ws")
    run = start(api, {"text": "a"})
    marker = tmp_path / "home" / "runs" / "active" / run["runId"]
    assert marker.exists()
    api.executor.finish(run["runId"])
    api.clock.advance(0)
    assert not marker.exists()
    assert RunStore(tmp_path / "home").interrupted(0) == []
