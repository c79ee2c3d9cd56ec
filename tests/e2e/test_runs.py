"""
The runs API (``/api/v1/runs``) against real daemons over real sockets, the agent talking to a
scripted OpenAI-compatible server (:class:`~tests.agent.fake_openai.FakeOpenAI`) on loopback:
a run that reads, edits and runs a command; permission refusals and rules; cancel while the
model streams and while a shell command runs (its children die); a provider's 429 then success
and its 401; resumed sessions; the stream's events, ids and replay; checkpoints made by runs,
their diff and every revert scope; sessions listed; queues; timeouts; restarts; a models.json
with ``${ENV}`` and a tiny context; memory files in the system prompt.

Every wait is a bounded poll (50 ms steps, at most ``WAIT`` seconds); nothing sleeps to
synchronise and nothing asserts on timing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.agent.fake_openai import (
    Call,
    ErrorReply,
    FakeOpenAI,
    Hang,
    Pause,
    Streamed,
    Text,
    Think,
    text_reply,
    tool_reply,
)
from tests.e2e.conftest import Daemon, start_daemon

pytestmark = pytest.mark.e2e

WAIT = 15.0
STEP = 0.05
API_KEY = "sk-e2e-secret-key"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# --------------------------------------------------------------------------- helpers


async def call(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any]:
    response = await treq.request(method, url, **kwargs).addTimeout(WAIT, _reactor())
    body = await response.content()
    return response.code, json.loads(body) if body else None


async def start_run(daemon: Daemon, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    status, answer = await call(daemon.url + "/api/v1/runs", "POST", json=body, **kwargs)
    assert status == 202, answer
    assert answer["data"]["status"] == "accepted"
    return answer["data"]  # type: ignore[no-any-return]


async def until(predicate: Callable[[], Any], what: str) -> Any:
    """Poll ``predicate`` every STEP seconds until it answers something true; at most WAIT seconds."""
    for _ in range(int(WAIT / STEP)):
        value = predicate()
        if value:
            return value
        await deferLater(_reactor(), STEP)
    raise AssertionError(f"timed out after {WAIT} s waiting for {what}")


async def record(daemon: Daemon, run_id: str) -> dict[str, Any]:
    status, body = await call(f"{daemon.url}/api/v1/runs/{run_id}")
    assert status == 200, body
    return body["data"]  # type: ignore[no-any-return]


async def finished(daemon: Daemon, run_id: str) -> dict[str, Any]:
    """The run's record once it has ended (bounded polling)."""
    for _ in range(int(WAIT / STEP)):
        got = await record(daemon, run_id)
        if got["status"] in ("completed", "failed", "cancelled"):
            return got
        await deferLater(_reactor(), STEP)
    raise AssertionError(f"run {run_id} did not end within {WAIT} s: {got}")


Frame = tuple[str, str, dict[str, Any]]


def parse_frames(raw: bytes) -> list[Frame]:
    """(id, event, data) of each complete SSE frame; comments skipped."""
    frames = []
    text = raw.decode("utf-8")
    complete = text[: text.rfind("\n\n") + 2] if "\n\n" in text else ""
    for block in complete.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":") or ": " not in line:
                continue
            name, value = line.split(": ", 1)
            fields[name] = value
        if "data" in fields:
            frames.append((fields.get("id", ""), fields.get("event", ""), json.loads(fields["data"])))
    return frames


class StreamReader:
    """One SSE client of ``/runs/:id/stream``, reading as the events arrive."""

    def __init__(self) -> None:
        self.raw = b""
        self.done: Deferred[Any] | None = None
        self.headers: Any = None

    async def open(self, url: str, headers: Any = None) -> StreamReader:
        response = await treq.get(url, headers=headers or {}, unbuffered=True).addTimeout(WAIT, _reactor())
        assert response.code == 200, await response.content()
        self.headers = response.headers
        self.done = treq.collect(response, self._data)
        return self

    def _data(self, data: bytes) -> None:
        self.raw += data

    @property
    def frames(self) -> list[Frame]:
        return parse_frames(self.raw)

    def has(self, event: str) -> bool:
        return any(e == event for _, e, _ in self.frames)

    async def closed(self) -> list[Frame]:
        assert self.done is not None
        await self.done.addTimeout(WAIT, _reactor())
        return self.frames


async def stream(daemon: Daemon, run_id: str, headers: dict[str, str] | None = None,
                 query: str = "") -> list[Frame]:
    """The whole stream of a run (it closes after run.completed)."""
    reader = await StreamReader().open(f"{daemon.url}/api/v1/runs/{run_id}/stream{query}", headers)
    return await reader.closed()


def pid_in(path: Path) -> int | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") and text.strip().isdigit() else None


def alive(pid: int) -> bool:
    """Running, not a zombie (a zombie has died; only its parent has not reaped it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _drain(daemon: Daemon) -> None:
    stream_: Any = daemon.process.stdout
    assert stream_ is not None
    while chunk := stream_.read1(65536):
        daemon.output.append(chunk.decode("utf-8", "replace"))


@pytest.fixture
def drained() -> Iterator[Callable[[Daemon], Daemon]]:
    """Read started daemons' output continuously (a chatty daemon never blocks on its pipe); stop them after."""
    started: list[tuple[Daemon, threading.Thread]] = []

    def drain(daemon: Daemon) -> Daemon:
        reader = threading.Thread(target=_drain, args=(daemon,), name="daemon-output", daemon=True)
        reader.start()
        started.append((daemon, reader))
        return daemon

    yield drain
    for daemon, reader in started:
        try:
            daemon.stop()
        finally:
            reader.join(WAIT)


# --------------------------------------------------------------------------- fixtures


@pytest_twisted.async_yield_fixture(scope="module")
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def daemon(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon pointed at the fake (with an API key), shared by the module's tests."""
    running = start_daemon(tmp_path_factory.mktemp("runs"), env=fake.environ(api_key=API_KEY))
    reader = threading.Thread(target=_drain, args=(running,), name="daemon-output", daemon=True)
    reader.start()
    yield running
    try:
        running.stop()
    finally:
        reader.join(WAIT)


@pytest.fixture(autouse=True)
def fresh_script(request: pytest.FixtureRequest) -> None:
    """Each test scripts its own replies (an unscripted request echoes the prompt)."""
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").queue.clear()


def workspace(daemon: Daemon) -> Path:
    return daemon.workspace.resolve()


# --------------------------------------------------------------------------- a whole run


@pytest_twisted.ensureDeferred
async def test_the_spec_example_and_the_sender_rule(daemon: Daemon, fake: FakeOpenAI) -> None:
    """The spec's body verbatim; the same sender's next message continues the same conversation."""
    fake.enqueue(text_reply("Profiling first: which entry point is slow?"), text_reply("Then run it under cProfile."))
    first = len(fake.requests)
    status, body = await call(daemon.url + "/api/v1/runs", "POST", headers={"Content-Type": "application/json"},
                              data=b'{"text": "Help me analyze code performance", '
                                   b'"sender": {"id": "dev", "name": "Developer"}}')
    assert status == 202 and set(body) == {"data"}
    assert body["data"]["status"] == "accepted" and body["data"]["runId"]
    run = await finished(daemon, body["data"]["runId"])
    assert (run["status"], run["result"], run["sender"]) == (
        "completed", "Profiling first: which entry point is slow?", {"id": "dev", "name": "Developer"})
    assert fake.requests[first].authorization == f"Bearer {API_KEY}"
    assert fake.requests[first].model == "fake-model"

    again = await start_run(daemon, {"text": "It is main.py", "sender": {"id": "dev", "name": "Developer"}})
    assert again["sessionId"] == body["data"]["sessionId"]
    assert (await finished(daemon, again["runId"]))["status"] == "completed"
    assert fake.requests[first + 1].messages[1:] == [
        {"role": "user", "content": "Help me analyze code performance"},
        {"role": "assistant", "content": "Profiling first: which entry point is slow?"},
        {"role": "user", "content": "It is main.py"}]
    other = await start_run(daemon, {"text": "hello", "sender": {"id": "someone-else"}})
    assert other["sessionId"] != body["data"]["sessionId"]
    await finished(daemon, other["runId"])


@pytest_twisted.ensureDeferred
async def test_a_run_reads_edits_and_runs_a_command(daemon: Daemon, fake: FakeOpenAI) -> None:
    ws = workspace(daemon)
    (ws / "greet.py").write_text("print('hi')\n")
    fake.enqueue(
        tool_reply("Read", {"file_path": "greet.py"}, id="read-1", text="Let me look."),
        tool_reply("Edit", {"file_path": "greet.py", "old_string": "'hi'", "new_string": "'hello'"}, id="edit-1"),
        tool_reply("Bash", {"command": "python3 greet.py", "description": "Run it"}, id="bash-1"),
        text_reply("greet.py now prints hello.", reasoning="It printed hi."),
    )
    first = len(fake.requests)
    run = await start_run(daemon, {"prompt": "Make greet.py say hello and run it",
                                   "permissionMode": "bypassPermissions"})
    done = await finished(daemon, run["runId"])
    assert (done["status"], done["stopReason"], done["numTurns"], done["result"]) == (
        "completed", "end_turn", 4, "greet.py now prints hello.")
    assert done["error"] is None and done["permissionDenials"] == []
    assert done["usage"]["inputTokens"] > 0 and done["usage"]["outputTokens"] > 0
    assert done["finishedAt"] >= done["startedAt"] >= done["createdAt"]
    assert (ws / "greet.py").read_text() == "print('hello')\n"
    # each tool result went back to the model, with the assistant's calls before it
    results = {m["tool_call_id"]: m["content"] for m in fake.requests[first + 3].messages if m["role"] == "tool"}
    assert results == {"read-1": "     1\tprint('hi')", "edit-1": results["edit-1"], "bash-1": "hello"}
    assert "Edited" in results["edit-1"]

    frames = await stream(daemon, run["runId"])
    tools = {d["toolCallId"]: d for _, e, d in frames if e == "tool.completed"}
    assert [(k, v["status"]) for k, v in tools.items()] == [
        ("read-1", "completed"), ("edit-1", "completed"), ("bash-1", "completed")]
    assert tools["bash-1"]["output"] == "hello"
    assert tools["edit-1"]["diff"] == {"path": str(ws / "greet.py"), "oldText": "print('hi')\n",
                                       "newText": "print('hello')\n"}
    started = [d["toolCallId"] for _, e, d in frames if e == "tool.started"]
    assert started == list(tools)

    # the transcript is listed by the sessions API, with the prompt as its name
    status, body = await call(daemon.url + "/api/v1/sessions")
    [row] = [s for s in body["data"]["sessions"] if s["id"] == run["sessionId"]]
    assert (row["name"], row["messageCount"]) == ("Make greet.py say hello and run it", 3)
    status, body = await call(daemon.url + "/api/v1/sessions?cwd=*")
    [row] = [s for s in body["data"]["sessions"] if s["id"] == run["sessionId"]]
    assert row["cwd"] == str(ws)
    status, body = await call(f"{daemon.url}/api/v1/sessions/{run['sessionId']}/history")
    assert status == 200 and body["data"]["requests"] == [
        {"userInput": "Make greet.py say hello and run it", "finalReply": "greet.py now prints hello."}]


# --------------------------------------------------------------------------- the stream


ENVELOPE = {"runId", "sessionId", "seq", "ts", "type"}
PAYLOADS = {
    "run.started": {"status", "model", "cwd", "permissionMode"},
    "message.delta": {"messageId", "text"},
    "thought.delta": {"messageId", "text"},
    "tool.started": {"toolCallId", "name", "title", "kind", "input"},
    "tool.updated": {"toolCallId", "status"},
    "tool.completed": {"toolCallId", "status", "output", "isError"},
    "usage": {"inputTokens", "outputTokens", "cacheRead", "contextUsed", "contextSize"},
    "run.completed": {"status", "stopReason", "result", "durationMs", "numTurns", "usage"},
}


@pytest_twisted.ensureDeferred
async def test_stream_events_ids_and_replay(daemon: Daemon, fake: FakeOpenAI) -> None:
    """
    Two clients follow a live run (one from the start, one resuming with Last-Event-ID); the run
    waits in a shell command for the test's go-ahead, so both are connected while it is live.
    """
    ws = workspace(daemon)
    gate = ws / "stream.go"
    fake.enqueue(
        Streamed([Think("Plan: "), Think("wait."), Text("Waiting "), Text("for the gate."),
                  Call("Bash", {"command": f"while [ ! -f {gate} ]; do sleep 0.05; done; echo open"}, id="gate-1")]),
        text_reply("The gate opened."),
    )
    run = await start_run(daemon, {"text": "Wait for the gate", "permissionMode": "bypassPermissions"})
    url = f"{daemon.url}/api/v1/runs/{run['runId']}/stream"
    live = await StreamReader().open(url)
    assert live.headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
    await until(lambda: live.has("tool.updated"), "the command to start")
    resumed = await StreamReader().open(url, {"Last-Event-ID": "2"})
    await until(lambda: resumed.has("tool.updated"), "the resumed client to catch up")
    gate.write_text("")
    frames = await live.closed()
    tail = await resumed.closed()

    assert [int(i) for i, _, _ in frames] == list(range(1, len(frames) + 1))
    assert tail == frames[2:]
    events = [e for _, e, _ in frames]
    assert events[0] == "run.started" and events[-1] == "run.completed"
    assert set(events) == set(PAYLOADS)
    for id_, event, data in frames:
        assert data.keys() >= ENVELOPE | PAYLOADS[event], (event, data)
        assert (data["type"], data["seq"], data["runId"], data["sessionId"]) == (
            event, int(id_), run["runId"], run["sessionId"])
    by_type: dict[str, list[dict[str, Any]]] = {}
    for _, event, data in frames:
        by_type.setdefault(event, []).append(data)
    assert by_type["run.started"][0]["permissionMode"] == "bypassPermissions"
    assert by_type["run.started"][0]["cwd"] == str(ws)
    assert "".join(d["text"] for d in by_type["thought.delta"]) == "Plan: wait."
    assert "".join(d["text"] for d in by_type["message.delta"]) == "Waiting for the gate.The gate opened."
    assert [d["status"] for d in by_type["tool.updated"]] == ["in_progress"]
    tool = by_type["tool.started"][0]
    assert (tool["toolCallId"], tool["name"], tool["kind"]) == ("gate-1", "Bash", "execute") and tool["title"]
    assert tool["input"]["command"].startswith("while [ ! -f ")
    assert by_type["tool.completed"][0]["output"] == "open"
    assert len(by_type["usage"]) == 2 and by_type["usage"][0]["contextSize"] > 0
    completed = by_type["run.completed"][0]
    assert (completed["status"], completed["stopReason"], completed["result"], completed["numTurns"]) == (
        "completed", "end_turn", "The gate opened.", 2)

    # a finished run replays everything, or from Last-Event-ID / ?after=, and closes
    assert await stream(daemon, run["runId"]) == frames
    assert await stream(daemon, run["runId"], {"Last-Event-ID": str(len(frames) - 2)}) == frames[-2:]
    assert await stream(daemon, run["runId"], query="?after=3") == frames[3:]
    assert await stream(daemon, run["runId"], {"Last-Event-ID": str(len(frames))}) == []


# --------------------------------------------------------------------------- cancel


@pytest_twisted.ensureDeferred
async def test_cancel_while_the_model_streams(daemon: Daemon, fake: FakeOpenAI) -> None:
    fake.enqueue(Streamed([Text("Thinking about "), Hang()]))
    first = len(fake.requests)
    run = await start_run(daemon, {"text": "Write an essay"})
    live = await StreamReader().open(f"{daemon.url}/api/v1/runs/{run['runId']}/stream")
    await until(lambda: live.has("message.delta"), "the first delta")
    status, body = await call(f"{daemon.url}/api/v1/runs/{run['runId']}/cancel", "POST")
    assert (status, body["data"]["status"], body["data"]["stopReason"]) == (200, "cancelled", "cancelled")
    frames = await live.closed()
    assert [e for _, e, _ in frames] == ["run.started", "message.delta", "run.completed"]
    assert frames[-1][2]["status"] == "cancelled"
    # the model request was abandoned: its connection closed before the answer was complete
    assert await fake.requests[first].wait_closed().addTimeout(WAIT, _reactor()) is True
    # cancelling again is a conflict
    status, body = await call(f"{daemon.url}/api/v1/runs/{run['runId']}/cancel", "POST")
    assert (status, body["error"]["code"], body["error"]["details"]) == (
        409, "RUN_ALREADY_COMPLETED", {"status": "cancelled"})


@pytest_twisted.ensureDeferred
async def test_cancel_during_a_long_shell_command_kills_its_children(daemon: Daemon, fake: FakeOpenAI) -> None:
    ws = workspace(daemon)
    for name in ("child.pid", "shell.pid"):
        (ws / name).unlink(missing_ok=True)
    fake.enqueue(tool_reply("Bash", {"command": "sleep 60 & echo $! > child.pid; echo $$ > shell.pid; sleep 60"},
                            id="long-1"))
    run = await start_run(daemon, {"text": "Sleep a while", "permissionMode": "bypassPermissions"})
    child = await until(lambda: pid_in(ws / "child.pid"), "the background child's pid file")
    shell = await until(lambda: pid_in(ws / "shell.pid"), "the shell's pid file")
    assert alive(child) and alive(shell)
    status, body = await call(f"{daemon.url}/api/v1/runs/{run['runId']}/cancel", "POST")
    assert (status, body["data"]["status"]) == (200, "cancelled")
    await until(lambda: not alive(child) and not alive(shell), "the shell and its child to die")
    frames = await stream(daemon, run["runId"])
    assert [(e, d.get("status")) for _, e, d in frames[-2:]] == [
        ("tool.completed", "cancelled"), ("run.completed", "cancelled")]
    # the process table shows the agent's command as ended
    status, body = await call(daemon.url + "/api/v1/process/list")
    assert status == 200
    assert not [p for p in body["data"]["processes"]
                if (p["tag"] or "").startswith("agent-bash-") and p["status"] == "running"], body


# --------------------------------------------------------------------------- the provider's errors


@pytest_twisted.ensureDeferred
async def test_provider_429_then_success(daemon: Daemon, fake: FakeOpenAI) -> None:
    fake.enqueue(ErrorReply(429, "Rate limit reached", type="rate_limit_error", headers={"Retry-After": "0"}),
                 text_reply("Second time lucky."))
    first = len(fake.requests)
    run = await start_run(daemon, {"text": "hi"})
    done = await finished(daemon, run["runId"])
    assert (done["status"], done["result"], done["error"]) == ("completed", "Second time lucky.", None)
    assert len(fake.requests) - first == 2
    assert fake.requests[first].messages == fake.requests[first + 1].messages  # the same request again


@pytest_twisted.ensureDeferred
async def test_provider_401_fails_the_run(daemon: Daemon, fake: FakeOpenAI) -> None:
    fake.enqueue(ErrorReply(401, f"Incorrect API key provided: {API_KEY}", type="invalid_request_error",
                            code="invalid_api_key"))
    first = len(fake.requests)
    run = await start_run(daemon, {"text": "hi"})
    done = await finished(daemon, run["runId"])
    assert done["status"] == "failed" and done["error"]["code"] == "MODEL_AUTH_FAILED"
    assert "CODEBUDDY_API_KEY" in done["error"]["message"] and "HTTP 401" in done["error"]["message"]
    assert API_KEY not in done["error"]["message"]  # the provider echoed the key; it is redacted
    assert len(fake.requests) - first == 1  # never retried
    frames = await stream(daemon, run["runId"])
    assert frames[-1][2]["error"] == done["error"] and frames[-1][2]["status"] == "failed"


# --------------------------------------------------------------------------- permissions


@pytest_twisted.ensureDeferred
async def test_permission_refusals_and_rules(daemon: Daemon, fake: FakeOpenAI) -> None:
    ws = workspace(daemon)
    (ws / "notes.txt").write_text("keep me\n")
    (ws / "secret.txt").write_text("s3cret\n")
    # default mode: an edit and a command are refused (a run cannot ask), the model is told why
    fake.enqueue(
        tool_reply("Edit", {"file_path": "notes.txt", "old_string": "keep", "new_string": "lose"}, id="edit-x"),
        tool_reply("Bash", {"command": "rm notes.txt"}, id="bash-x"),
        text_reply("I was not allowed."),
    )
    first = len(fake.requests)
    run = await start_run(daemon, {"text": "Change the notes"})
    done = await finished(daemon, run["runId"])
    assert (done["status"], done["result"]) == ("completed", "I was not allowed.")
    assert [(d["toolName"], d["toolCallId"]) for d in done["permissionDenials"]] == [
        ("Edit", "edit-x"), ("Bash", "bash-x")]
    assert (ws / "notes.txt").read_text() == "keep me\n"
    refusal = next(m for m in fake.requests[first + 1].messages if m.get("tool_call_id") == "edit-x")["content"]
    assert "needs approval" in refusal and "acceptEdits" in refusal
    frames = await stream(daemon, run["runId"])
    completed = [d for _, e, d in frames if e == "tool.completed"]
    assert [(d["status"], d["permission"]["behavior"]) for d in completed] == [("failed", "ask"), ("failed", "ask")]
    assert frames[-1][2]["permissionDenials"] == done["permissionDenials"]

    # rules from the settings: allow echo, deny reading the secret (even in bypassPermissions)
    settings = daemon.home / "settings.json"
    settings.write_text(json.dumps({"permissions": {"allow": ["Bash(echo:*)"], "deny": ["Read(./secret.txt)"]}}))
    try:
        fake.enqueue(tool_reply("Bash", {"command": "echo allowed"}, id="echo-1"), text_reply("ok"))
        done = await finished(daemon, (await start_run(daemon, {"text": "echo"}))["runId"])
        assert (done["status"], done["permissionDenials"]) == ("completed", [])
        fake.enqueue(tool_reply("Read", {"file_path": "secret.txt"}, id="read-s"), text_reply("denied"))
        first = len(fake.requests)
        done = await finished(daemon, (await start_run(daemon, {"text": "read the secret",
                                                                "permissionMode": "bypassPermissions"}))["runId"])
        [denial] = done["permissionDenials"]
        assert "Read(./secret.txt)" in denial["reason"] and "permissions.deny" in denial["reason"]
        assert "s3cret" not in json.dumps(fake.requests[first + 1].messages)
        # plan mode refuses changes
        fake.enqueue(tool_reply("Write", {"file_path": "plan.txt", "content": "x"}, id="w-p"), text_reply("planned"))
        done = await finished(daemon, (await start_run(daemon, {"text": "plan", "permissionMode": "plan"}))["runId"])
        assert "plan mode" in done["permissionDenials"][0]["reason"] and not (ws / "plan.txt").exists()
    finally:
        settings.unlink()


# --------------------------------------------------------------------------- sessions and checkpoints


@pytest_twisted.ensureDeferred
async def test_resume_a_session_by_id(daemon: Daemon, fake: FakeOpenAI) -> None:
    fake.enqueue(text_reply("Noted: the build uses make."), text_reply("Run `make test`."))
    first = len(fake.requests)
    a = await start_run(daemon, {"text": "We build with make", "sessionId": "resume-1"})
    assert a["sessionId"] == "resume-1"
    await finished(daemon, a["runId"])
    b = await start_run(daemon, {"text": "How do I test?", "sessionId": "resume-1"})
    assert (await finished(daemon, b["runId"]))["result"] == "Run `make test`."
    assert fake.requests[first + 1].messages[1:] == [
        {"role": "user", "content": "We build with make"},
        {"role": "assistant", "content": "Noted: the build uses make."},
        {"role": "user", "content": "How do I test?"}]
    status, body = await call(daemon.url + "/api/v1/sessions")
    [row] = [s for s in body["data"]["sessions"] if s["id"] == "resume-1"]
    assert (row["name"], row["messageCount"]) == ("We build with make", 4)


@pytest_twisted.ensureDeferred
async def test_checkpoints_of_runs_diff_and_revert_each_scope(daemon: Daemon, fake: FakeOpenAI) -> None:
    ws = workspace(daemon)
    session = "checkpoints-1"
    api = daemon.url + "/api/v1/file-changes"
    app, added = ws / "cp_app.py", ws / "cp_added.py"
    app.write_text("print('v0')\n")
    added.unlink(missing_ok=True)

    async def run(prompt: str, *replies: Any) -> dict[str, Any]:
        fake.enqueue(*replies)
        started = await start_run(daemon, {"text": prompt, "sessionId": session, "permissionMode": "acceptEdits"})
        done = await finished(daemon, started["runId"])
        assert done["status"] == "completed", done
        return done

    await run("Version one",
              tool_reply("Edit", {"file_path": "cp_app.py", "old_string": "v0", "new_string": "v1"}, id="e1"),
              tool_reply("Write", {"file_path": "cp_added.py", "content": "added = 1\n"}, id="w1"),
              text_reply("v1 and a new file."))
    await run("Version two",
              tool_reply("Edit", {"file_path": "cp_app.py", "old_string": "v1", "new_string": "v2"}, id="e2"),
              text_reply("v2."))
    assert app.read_text() == "print('v2')\n"

    status, body = await call(f"{api}/checkpoints?sessionId={session}")
    assert status == 200
    listed = [(c["label"], c["files"], c["additions"], c["deletions"]) for c in body["checkpoints"]]
    assert listed == [("Version two", [str(app)], 1, 1), ("Version one", [str(app), str(added)], 2, 1)]
    two, one = (c["id"] for c in body["checkpoints"])
    status, body = await call(f"{api}/diff?sessionId={session}&path={app}")
    assert (status, body["oldText"], body["newText"]) == (200, "print('v1')\n", "print('v2')\n")

    # by paths: back to the latest checkpoint's start
    status, body = await call(api + "/revert", "POST", json={"sessionId": session, "paths": [str(app)]})
    assert (status, body["revertedFiles"]) == (200, [str(app)])
    assert app.read_text() == "print('v1')\n"
    # Conversation: "Version two" leaves the transcript, the files stay; the next run does not see it
    status, body = await call(api + "/revert", "POST", json={"sessionId": session, "checkpointId": two,
                                                             "scope": "Conversation"})
    assert (status, body["removedMessages"]) == (200, 2)
    first = len(fake.requests)
    await run("What did we do?", text_reply("Version one."))
    users = [m["content"] for m in fake.requests[first].messages if m["role"] == "user"]
    assert users == ["Version one", "What did we do?"]
    # Code: every file back to "Version one"'s start; the file it created is deleted
    status, body = await call(api + "/revert", "POST", json={"sessionId": session, "checkpointId": one,
                                                             "scope": "Code"})
    assert status == 200 and body["deletedFiles"] == [str(added)]
    assert app.read_text() == "print('v0')\n" and not added.exists()
    # CodeAndConversation: nothing of the session is left
    status, body = await call(api + "/revert", "POST", json={"sessionId": session, "checkpointId": one,
                                                             "scope": "CodeAndConversation"})
    assert status == 200
    status, body = await call(f"{api}/checkpoints?sessionId={session}")
    assert body["checkpoints"] == []


# --------------------------------------------------------------------------- queues, timeouts, errors


@pytest_twisted.ensureDeferred
async def test_one_session_queues_other_sessions_run_at_once(daemon: Daemon, fake: FakeOpenAI) -> None:
    fake.enqueue(Hang())
    first = len(fake.requests)
    slow = await start_run(daemon, {"text": "slow", "sessionId": "queue-a"})
    await fake.request(first).addTimeout(WAIT, _reactor())
    queued = await start_run(daemon, {"text": "queued", "sessionId": "queue-a"})
    fake.enqueue(text_reply("other session"))
    other = await start_run(daemon, {"text": "other", "sessionId": "queue-b"})
    assert (await finished(daemon, other["runId"]))["status"] == "completed"
    assert (await record(daemon, slow["runId"]))["status"] == "running"
    assert (await record(daemon, queued["runId"]))["status"] == "accepted"
    fake.enqueue(text_reply("queued done"))
    status, _ = await call(f"{daemon.url}/api/v1/runs/{slow['runId']}/cancel", "POST")
    assert status == 200
    done = await finished(daemon, queued["runId"])
    assert (done["status"], done["result"]) == ("completed", "queued done")
    assert done["startedAt"] >= (await record(daemon, slow["runId"]))["finishedAt"]


@pytest_twisted.ensureDeferred
async def test_timeouts(daemon: Daemon, fake: FakeOpenAI) -> None:
    fake.enqueue(Hang())
    run = await start_run(daemon, {"text": "never answered"}, headers={"X-Codebuddy-Run-Timeout": "300"})
    done = await finished(daemon, run["runId"])
    assert (done["status"], done["timeoutMs"], done["error"]["code"]) == ("failed", 300, "EXECUTION_ERROR")
    assert done["error"]["message"].startswith("Task timed out after")
    fake.enqueue(Streamed([Text("slow"), Pause(0.01), Text(" but fine")]))
    run = await start_run(daemon, {"text": "no limit", "timeoutMs": 0})
    done = await finished(daemon, run["runId"])
    assert (done["status"], done["timeoutMs"]) == ("completed", None)


@pytest_twisted.ensureDeferred
async def test_error_codes(daemon: Daemon, fake: FakeOpenAI) -> None:
    for method, path in (("GET", "/api/v1/runs/no-such-run"), ("GET", "/api/v1/runs/no-such-run/stream"),
                         ("POST", "/api/v1/runs/no-such-run/cancel")):
        status, body = await call(daemon.url + path, method)
        assert (status, body["error"]["code"]) == (404, "RUN_NOT_FOUND"), path
    fake.enqueue(text_reply("done"))
    run = await start_run(daemon, {"type": "message", "id": "gw-1", "payload": {"text": "gateway form"}})
    assert (await finished(daemon, run["runId"]))["prompt"] == "gateway form"
    status, body = await call(f"{daemon.url}/api/v1/runs/{run['runId']}/cancel", "POST")
    assert (status, body["error"]["code"]) == (409, "RUN_ALREADY_COMPLETED")
    for bad in ({}, {"text": "x", "permissionMode": "yolo"}, {"text": "x", "sessionId": "../x"}):
        status, body = await call(daemon.url + "/api/v1/runs", "POST", json=bad)
        assert (status, body["error"]["code"]) == (400, "BAD_REQUEST"), bad
    status, body = await call(daemon.url + "/api/v1/runs", "POST", json={"text": "x", "cwd": "no/such/dir"})
    assert (status, body["error"]["code"]) == (400, "PATH_NOT_DIRECTORY")


# --------------------------------------------------------------------------- configuration


@pytest_twisted.ensureDeferred
async def test_no_model_then_models_json_memory_files_and_a_tiny_context(
        tmp_path: Path, drained: Callable[[Daemon], Daemon]) -> None:
    """
    Without a model a run is refused (400 MODEL_NOT_CONFIGURED); a models.json written afterwards
    (with ${ENV} in url and apiKey, a tiny maxInputTokens) is used by the next run, without a
    restart; CODEBUDDY.md and AGENTS.md reach the system prompt; a long session is trimmed.
    """
    fake = FakeOpenAI()
    await fake.start()
    try:
        daemon = drained(start_daemon(tmp_path, env={"TINY_URL": fake.url, "TINY_KEY": "sk-tiny"}))
        status, body = await call(daemon.url + "/api/v1/runs", "POST", json={"text": "hi"})
        assert (status, body["error"]["code"]) == (400, "MODEL_NOT_CONFIGURED")
        assert "CODEBUDDY_BASE_URL" in body["error"]["message"] and "models.json" in body["error"]["message"]
        assert fake.requests == []

        (daemon.home / "models.json").write_text(json.dumps({"models": [
            {"id": "tiny-model", "name": "Tiny", "url": "${TINY_URL}/chat/completions", "apiKey": "${TINY_KEY}",
             "maxInputTokens": 3000, "maxOutputTokens": 500}]}))
        (daemon.workspace / "CODEBUDDY.md").write_text("Always use tabs.\n")
        (daemon.workspace / "AGENTS.md").write_text("The tests run with make check.\n")
        for n in range(8):
            fake.enqueue(text_reply(f"answer {n} " + "a" * 900))
            run = await start_run(daemon, {"text": f"question {n} " + "q" * 900, "sessionId": "tiny"})
            done = await finished(daemon, run["runId"])
            assert (done["status"], done["model"]) == ("completed", "tiny-model"), done
        request = fake.requests[0]
        assert (request.model, request.authorization) == ("tiny-model", "Bearer sk-tiny")
        system = fake.requests[0].messages[0]
        assert system["role"] == "system"
        assert "Always use tabs." in system["content"] and "The tests run with make check." in system["content"]
        # the last request holds only the newest turns that fit the budget, oldest dropped whole
        last = fake.requests[-1].messages
        numbers = [m["content"].split()[1] for m in last if m["role"] == "user"]
        assert numbers[-1] == "7" and 1 < len(numbers) < 8
        assert numbers == [str(n) for n in range(8 - len(numbers), 8)]
        assert last[1]["role"] == "user"
        frames = await stream(daemon, run["runId"])
        assert [d["contextSize"] for _, e, d in frames if e == "usage"] == [3000]

        # an unset ${VAR} is a clear MODEL_NOT_CONFIGURED
        (daemon.home / "models.json").write_text(json.dumps({"models": [
            {"id": "m", "url": "${NOT_SET_ANYWHERE}"}]}))
        status, body = await call(daemon.url + "/api/v1/runs", "POST", json={"text": "hi"})
        assert (status, body["error"]["code"]) == (400, "MODEL_NOT_CONFIGURED")
        assert "NOT_SET_ANYWHERE" in body["error"]["message"]
    finally:
        await fake.stop()


# --------------------------------------------------------------------------- restarts


@pytest_twisted.ensureDeferred
async def test_records_survive_a_restart_and_interrupted_runs_fail(
        tmp_path: Path, fake: FakeOpenAI, drained: Callable[[Daemon], Daemon]) -> None:
    env = fake.environ()
    first = drained(start_daemon(tmp_path, env=env))
    fake.enqueue(text_reply("All done."), Hang())
    done_run = await start_run(first, {"text": "finish me"})
    done = await finished(first, done_run["runId"])
    full = await stream(first, done_run["runId"])
    before = len(fake.requests)
    hung = await start_run(first, {"text": "hang forever"})
    await fake.request(before).addTimeout(WAIT, _reactor())
    assert (await record(first, hung["runId"]))["status"] == "running"
    first.stop()  # SIGTERM: the daemon ends the run and records why before it exits

    second = drained(start_daemon(tmp_path, env=env))
    interrupted = await record(second, hung["runId"])
    assert (interrupted["status"], interrupted["error"]["code"]) == ("failed", "INTERRUPTED")
    assert "daemon stopped" in interrupted["error"]["message"]
    assert interrupted["finishedAt"] is not None
    assert await record(second, done_run["runId"]) == done
    assert await stream(second, done_run["runId"]) == full  # the finished run's stream replays, then closes
    frames = await stream(second, hung["runId"])
    assert frames[-1][1] == "run.completed" and frames[-1][2]["error"]["code"] == "INTERRUPTED"

    # a daemon killed outright: the next one marks its active run failed, with the reason
    fake.enqueue(Hang())
    before = len(fake.requests)
    killed = await start_run(second, {"text": "hang again"})
    await fake.request(before).addTimeout(WAIT, _reactor())
    second.process.kill()
    second.process.wait(WAIT)
    third = drained(start_daemon(tmp_path, env=env))
    after = await record(third, killed["runId"])
    assert (after["status"], after["error"]["code"]) == ("failed", "INTERRUPTED")
    frames = await stream(third, killed["runId"])
    assert [e for _, e, _ in frames][-1:] == ["run.completed"]
    assert frames[-1][2]["status"] == "failed" and frames[-1][2]["error"]["code"] == "INTERRUPTED"
    # and the session's transcript is still listed
    status, body = await call(third.url + "/api/v1/sessions")
    assert killed["sessionId"] in [s["id"] for s in body["data"]["sessions"]]

