"""
Tests for ``codebuddy.agent.loop``: the transcript → messages fold (:func:`history_messages`),
the context budget (:func:`trim_messages`), and the :class:`Agent` behind a real
:class:`~codebuddy.runs.manager.RunManager` on the real reactor, talking to a
:class:`~tests.agent.fake_openai.FakeOpenAI` over loopback.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import deferLater

from codebuddy.agent.loop import CHARS_PER_TOKEN, Agent, history_messages, trim_messages
from codebuddy.agent.model import ChatClient, make_http_client
from codebuddy.checkpoints.store import CheckpointStore
from codebuddy.process.manager import ProcessManager
from codebuddy.process.spawn import Spawner
from codebuddy.runs.manager import RunManager, RunRequest
from codebuddy.runs.records import RunRecord, RunStore
from codebuddy.sessions.store import SessionStore
from codebuddy.settings.store import SettingsStore
from codebuddy.tap import blocking_runner
from tests.agent.fake_openai import (
    Call,
    ErrorReply,
    FakeOpenAI,
    Hang,
    Streamed,
    Text,
    calls_reply,
    text_reply,
    tool_reply,
)

WAIT = 15.0


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# --------------------------------------------------------------------------- history_messages


def user(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}], **extra}


def assistant(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def call(call_id: str, name: str = "Read", arguments: str = '{"file_path": "a"}') -> dict[str, Any]:
    return {"type": "function_call", "callId": call_id, "name": name, "arguments": arguments, "id": "i-" + call_id}


def result(call_id: str, text: str) -> dict[str, Any]:
    return {"type": "function_call_result", "callId": call_id, "output": {"type": "text", "text": text}}


def tool_call(call_id: str, name: str = "Read", arguments: str = '{"file_path": "a"}') -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_history_plain_conversation() -> None:
    items = [user("hi"), assistant("hello"), {"type": "custom-title", "customTitle": "x"},
             {"type": "file-history-snapshot", "snapshot": {}}, user("again"), assistant("yes")]
    assert history_messages(items) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"}, {"role": "assistant", "content": "yes"},
    ]
    assert history_messages([]) == []


def test_history_groups_calls_under_the_assistant_message() -> None:
    """Calls right after an assistant text join its tool_calls; calls after results open a new message."""
    items = [
        user("fix it"),
        assistant("Let me look."), call("c1"), call("c2", "Grep", '{"pattern": "x"}'),
        result("c1", "one"), result("c2", "two"),
        call("c3", "Bash", '{"command": "make"}'), result("c3", "ok"),
        assistant("Done."),
    ]
    assert history_messages(items) == [
        {"role": "user", "content": "fix it"},
        {"role": "assistant", "content": "Let me look.",
         "tool_calls": [tool_call("c1"), tool_call("c2", "Grep", '{"pattern": "x"}')]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
        {"role": "assistant", "content": "", "tool_calls": [tool_call("c3", "Bash", '{"command": "make"}')]},
        {"role": "tool", "tool_call_id": "c3", "content": "ok"},
        {"role": "assistant", "content": "Done."},
    ]


def test_history_a_call_without_result_gets_a_synthetic_one() -> None:
    """A run cancelled mid-tool leaves a call without a result: the next message closes it."""
    items = [user("run it"), call("c1", "Bash", '{"command": "sleep 60"}'), user("what happened?")]
    messages = history_messages(items)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]
    synthetic = messages[2]
    assert synthetic["tool_call_id"] == "c1" and "interrupted" in synthetic["content"]
    assert "Bash" in synthetic["content"]
    # also at the very end of the transcript, and for the calls of a turn that lost only some results
    messages = history_messages([user("go"), call("a"), call("b"), result("b", "B done")])
    assert [(m["role"], m.get("tool_call_id")) for m in messages] == [
        ("user", None), ("assistant", None), ("tool", "b"), ("tool", "a")]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["a", "b"]
    assert "interrupted" in messages[3]["content"]


def test_history_results_without_their_call_and_odd_outputs() -> None:
    items = [user("x"), result("ghost", "lost"), call("c1"), {"type": "function_call_result", "callId": "c1",
                                                               "output": "plain text"},
             call("c2"), {"type": "function_call_result", "callId": "c2", "output": None}]
    messages = history_messages(items)
    assert {"role": "tool", "tool_call_id": "ghost", "content": "lost"} not in messages
    assert [m for m in messages if m["role"] == "tool"] == [
        {"role": "tool", "tool_call_id": "c1", "content": "plain text"},
        {"role": "tool", "tool_call_id": "c2", "content": ""}]
    # a call without an id gets one, and its arguments default to {}
    [_, with_id] = history_messages([user("y"), {"type": "function_call", "name": "LS"}])[:2]
    assert with_id["tool_calls"][0]["function"] == {"name": "LS", "arguments": "{}"} and with_id["tool_calls"][0]["id"]


# --------------------------------------------------------------------------- trim_messages


def size(message: dict[str, Any]) -> int:
    return len(json.dumps(message, ensure_ascii=False)) // CHARS_PER_TOKEN + 4


SYSTEM = {"role": "system", "content": "You are a test."}


def turn(n: int, output: str = "result") -> list[dict[str, Any]]:
    """One user turn: a question, a call, its result, an answer."""
    return [
        {"role": "user", "content": f"question {n}"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call(f"c{n}")]},
        {"role": "tool", "tool_call_id": f"c{n}", "content": output},
        {"role": "assistant", "content": f"answer {n}"},
    ]


def test_trim_keeps_everything_that_fits() -> None:
    history = turn(1) + turn(2) + [{"role": "user", "content": "now"}]
    assert trim_messages(SYSTEM, history, 100_000) == [SYSTEM, *history]


def test_trim_drops_the_oldest_whole_turns() -> None:
    history = turn(1) + turn(2) + turn(3) + [{"role": "user", "content": "now"}]
    last_two = turn(3) + [{"role": "user", "content": "now"}]
    budget = size(SYSTEM) + sum(size(m) for m in last_two)
    assert trim_messages(SYSTEM, history, budget) == [SYSTEM, *last_two]
    assert trim_messages(SYSTEM, history, budget + size(turn(2)[0])) == [SYSTEM, *last_two]  # not half a turn
    # the last turn is kept even when nothing else fits
    assert trim_messages(SYSTEM, history, 1) == [SYSTEM, {"role": "user", "content": "now"}]


def test_trim_cuts_the_longest_tool_results_of_the_last_turn() -> None:
    big, bigger, small = "a" * 30_000, "b" * 60_000, "c" * 1_000
    history = turn(1) + [
        {"role": "user", "content": "read them"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call("x"), tool_call("y"), tool_call("z")]},
        {"role": "tool", "tool_call_id": "x", "content": big},
        {"role": "tool", "tool_call_id": "y", "content": bigger},
        {"role": "tool", "tool_call_id": "z", "content": small},
    ]
    trimmed = trim_messages(SYSTEM, history, 8_000)
    assert trimmed[1] == {"role": "user", "content": "read them"}  # the older turn went first
    x, y, z = trimmed[3:]
    assert (x["tool_call_id"], y["tool_call_id"], z["tool_call_id"]) == ("x", "y", "z")
    assert z["content"] == small  # short results are never cut
    for message, original in ((x, big), (y, bigger)):
        assert len(message["content"]) < len(original)
        assert message["content"].endswith("[... output cut to fit the context window ...]")
        assert original.startswith(message["content"].split("\n[...")[0])
    assert sum(size(m) for m in trimmed) <= 8_000
    assert history[-2]["content"] == bigger  # the caller's messages are not changed


def test_trim_gives_up_cutting_when_only_short_results_are_left() -> None:
    history = [{"role": "user", "content": "q" * 40_000}, {"role": "assistant", "content": "a"}]
    assert trim_messages(SYSTEM, history, 100) == [SYSTEM, *history]


def test_trim_without_any_user_message() -> None:
    history = [{"role": "assistant", "content": "hello"}]
    assert trim_messages(SYSTEM, history, 1) == [SYSTEM, *history]


@st.composite
def histories(draw: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for n in range(draw(st.integers(1, 6))):
        messages.append({"role": "user", "content": "u" * draw(st.integers(1, 400))})
        for step in range(draw(st.integers(0, 3))):
            calls = [f"t{n}-{step}-{k}" for k in range(draw(st.integers(1, 2)))]
            messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call(c) for c in calls]})
            for c in calls:
                messages.append({"role": "tool", "tool_call_id": c, "content": "r" * draw(st.integers(0, 6000))})
        messages.append({"role": "assistant", "content": "a" * draw(st.integers(0, 300))})
    return messages


@given(histories(), st.integers(1, 8000))
def test_trim_properties(history: list[dict[str, Any]], budget: int) -> None:
    trimmed = trim_messages(SYSTEM, history, budget)
    assert trimmed[0] == SYSTEM
    kept = trimmed[1:]
    start = len(history) - len(kept)
    assert kept[0]["role"] == "user"  # whole turns only
    last_user = max(i for i, m in enumerate(history) if m["role"] == "user")
    assert start <= last_user  # the last turn is always there
    for mine, original in zip(kept, history[start:], strict=True):
        assert (mine["role"], mine.get("tool_call_id"), mine.get("tool_calls")) == (
            original["role"], original.get("tool_call_id"), original.get("tool_calls"))
        if mine["content"] != original["content"]:  # only the last turn's long tool results are cut
            assert mine["role"] == "tool" and history.index(original) > last_user and len(original["content"]) > 2000
    calls = {c["id"] for m in kept for c in m.get("tool_calls") or ()}
    results = {m["tool_call_id"] for m in kept if m["role"] == "tool"}
    assert results <= calls and calls <= results  # a call never without its result, nor the reverse
    if start > 0:  # maximal: the turn before the first kept one would not have fitted
        previous = max(i for i, m in enumerate(history[:start]) if m["role"] == "user")
        assert size(SYSTEM) + sum(size(m) for m in history[previous:]) > budget


# --------------------------------------------------------------------------- the Agent, in-process


class Rig:
    """An Agent and its RunManager over real stores, processes and the fake model."""

    def __init__(self, tmp_path: Path, fake: FakeOpenAI, environ: dict[str, str] | None = None,
                 max_turns: int = 50) -> None:
        reactor = _reactor()
        self.home = tmp_path / "home"
        self.workspace = tmp_path / "ws"
        self.home.mkdir()
        self.workspace.mkdir()
        self.fake = fake
        self.spawner = Spawner(reactor, environ={"PATH": os.environ["PATH"], "LANG": "C.UTF-8",
                                                 "HOME": str(tmp_path)}, default_cwd=str(self.workspace),
                               kill_grace=0.5)
        self.spawner.startService()
        self.processes = ProcessManager(self.spawner, str(self.workspace), reactor)
        self.processes.startService()
        self.sessions = SessionStore(self.home)
        self.checkpoints = CheckpointStore(self.home, self.sessions)
        self.settings = SettingsStore(self.home, self.workspace)
        run_blocking = blocking_runner(reactor)
        chat = ChatClient(make_http_client(reactor, persistent=False), reactor, backoff=0.01)
        env = fake.environ() if environ is None else environ
        self.agent = Agent(self.home, self.workspace, env, chat, self.sessions, self.checkpoints,
                           self.settings, self.processes, run_blocking, reactor, max_turns=max_turns)
        self.manager = RunManager(RunStore(self.home), self.agent, reactor, run_blocking)
        self.manager.startService()

    async def close(self) -> None:
        await self.manager.stopService()
        self.processes.stopService()
        for child in self.spawner.children():
            child.signal(signal.SIGKILL)

    def request(self, prompt: str, session_id: str = "s1", mode: str = "default", **kw: Any) -> RunRequest:
        return RunRequest(prompt=prompt, session_id=session_id, cwd=str(self.workspace.resolve()),
                          permission_mode=mode, timeout_ms=kw.pop("timeout_ms", None), **kw)

    async def submit(self, prompt: str, **kw: Any) -> RunRecord:
        return await self.manager.submit(self.request(prompt, **kw))

    async def finished(self, record: RunRecord) -> RunRecord:
        run = self.manager.active.get(record.run_id)
        if run is not None:
            await run.when_finished().addTimeout(WAIT, _reactor())
        return await self.manager.get(record.run_id)

    async def run(self, prompt: str, **kw: Any) -> RunRecord:
        return await self.finished(await self.submit(prompt, **kw))

    async def events(self, record: RunRecord) -> list[dict[str, Any]]:
        log = await self.manager.events(record.run_id)
        return [json.loads(e.data) for e in log.events_after(0)]


@pytest_twisted.async_yield_fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    server.strict = True  # an unexpected model call fails the run loudly
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture
async def rig(tmp_path: Path, fake: FakeOpenAI) -> AsyncIterator[Rig]:
    made = Rig(tmp_path, fake)
    yield made
    await made.close()


async def until(predicate: Any, what: str) -> None:
    """Poll ``predicate`` every 50 ms, for at most WAIT seconds."""
    for _ in range(int(WAIT / 0.05)):
        if predicate():
            return
        await deferLater(_reactor(), 0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest_twisted.ensureDeferred
async def test_a_run_reads_edits_and_records_everything(rig: Rig) -> None:
    (rig.workspace / "app.py").write_text("print('hi')\n")
    rig.fake.enqueue(
        tool_reply("Read", {"file_path": "app.py"}, id="r1", text="Looking."),
        tool_reply("Edit", {"file_path": "app.py", "old_string": "hi", "new_string": "hello"}, id="e1"),
        text_reply("Changed the greeting.", reasoning="Simple."),
    )
    record = await rig.run("Say hello", mode="acceptEdits")
    assert (record.status, record.stop_reason, record.num_turns, record.result) == (
        "completed", "end_turn", 3, "Changed the greeting.")
    assert (rig.workspace / "app.py").read_text() == "print('hello')\n"
    assert record.usage.input_tokens > 0 and record.usage.output_tokens > 0
    events = await rig.events(record)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "run.started" and kinds[-1] == "run.completed"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {"message.delta", "thought.delta", "tool.started", "tool.updated", "tool.completed", "usage"} <= set(kinds)
    edit = next(e for e in events if e["type"] == "tool.completed" and e["toolCallId"] == "e1")
    assert edit["diff"] == {"path": str(rig.workspace.resolve() / "app.py"), "oldText": "print('hi')\n",
                            "newText": "print('hello')\n"}
    # the model saw the tool results, the schemas and the conversation in order
    second = rig.fake.requests[1]
    assert {t["function"]["name"] for t in second.tools or []} >= {"Read", "Edit", "Bash"}
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant", "tool"]
    assert second.messages[2]["tool_calls"][0]["id"] == "r1"
    assert second.messages[3] == {"role": "tool", "tool_call_id": "r1", "content": "     1\tprint('hi')"}
    # the transcript holds the conversation, read back as the same messages
    [path] = rig.sessions.find("s1")
    history = history_messages(list(rig.sessions.items(path)))
    assert history[0] == {"role": "user", "content": "Say hello"}
    assert history[-1] == {"role": "assistant", "content": "Changed the greeting."}
    # and a checkpoint for the message, with the edited file
    [checkpoint] = rig.checkpoints.checkpoints("s1")
    assert checkpoint.label == "Say hello" and checkpoint.files == [str(rig.workspace.resolve() / "app.py")]


@pytest_twisted.ensureDeferred
async def test_memory_files_reach_the_system_prompt(rig: Rig) -> None:
    (rig.workspace / "CODEBUDDY.md").write_text("Use tabs.\n")
    (rig.workspace / "AGENTS.md").write_text("Run make test.\n")
    (rig.workspace / ".codebuddy").mkdir()
    (rig.workspace / ".codebuddy" / "CODEBUDDY.md").write_text("Prefer pathlib.\n")
    (rig.workspace / "CODEBUDDY.local.md").write_text("My local note.\n")
    (rig.home / "CODEBUDDY.md").write_text("Answer briefly.\n")
    rig.fake.enqueue(text_reply("ok"))
    record = await rig.run("hi")
    assert record.status == "completed"
    system = rig.fake.requests[0].messages[0]
    assert system["role"] == "system"
    text = system["content"]
    for needle in ("Use tabs.", "Run make test.", "Prefer pathlib.", "My local note.", "Answer briefly.",
                   str(rig.workspace.resolve())):
        assert needle in text, needle
    assert text.index("Answer briefly.") < text.index("Use tabs.")  # the user's file first


@pytest_twisted.ensureDeferred
async def test_resume_continues_the_session(rig: Rig) -> None:
    rig.fake.enqueue(text_reply("The answer is 4."), text_reply("And 8."))
    await rig.run("What is 2+2?", session_id="math")
    record = await rig.run("Double it", session_id="math")
    assert record.result == "And 8."
    assert rig.fake.requests[1].messages[1:] == [
        {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "The answer is 4."},
        {"role": "user", "content": "Double it"}]


@pytest_twisted.ensureDeferred
async def test_cancel_mid_tool_then_resume(rig: Rig) -> None:
    """The cancelled call has no result in the transcript; the next run sends a synthetic one."""
    rig.fake.enqueue(tool_reply("Bash", {"command": "echo $$ > shell.pid; sleep 60"}, id="long"))
    record = await rig.submit("wait a minute", mode="bypassPermissions")
    pid_file = rig.workspace / "shell.pid"
    await until(lambda: pid_file.exists() and pid_file.read_text().strip(), "the command to start")
    pid = int(pid_file.read_text())
    cancelled = await rig.manager.cancel(record.run_id)
    assert (cancelled.status, cancelled.stop_reason) == ("cancelled", "cancelled")
    await until(lambda: not _alive(pid), "the shell to die")
    events = await rig.events(cancelled)
    assert [(e["type"], e.get("status")) for e in events[-3:]] == [
        ("tool.updated", "in_progress"), ("tool.completed", "cancelled"), ("run.completed", "cancelled")]
    assert (events[-2]["toolCallId"], events[-2]["isError"]) == ("long", True)
    rig.fake.enqueue(text_reply("It was interrupted."))
    again = await rig.run("what happened?")
    assert again.status == "completed"
    messages = rig.fake.requests[1].messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[3]["tool_call_id"] == "long" and "interrupted" in messages[3]["content"]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest_twisted.ensureDeferred
async def test_refused_and_broken_calls_are_reported_to_the_model(rig: Rig) -> None:
    rig.fake.enqueue(
        calls_reply(Call("Bash", {"command": "rm -rf build"}, id="b1"), Call("Nope", {}, id="n1"),
                    Call("Read", "{not json", id="j1")),
        text_reply("I could not do it."),
    )
    record = await rig.run("clean up")
    assert record.status == "completed"
    [denial] = record.permission_denials
    assert (denial["toolName"], denial["toolCallId"], denial["input"]) == ("Bash", "b1", {"command": "rm -rf build"})
    assert "permissions.allow" in denial["reason"]
    events = await rig.events(record)
    completed = {e["toolCallId"]: e for e in events if e["type"] == "tool.completed"}
    assert {k: (v["status"], v["isError"]) for k, v in completed.items()} == {
        "b1": ("failed", True), "n1": ("failed", True), "j1": ("failed", True)}
    assert completed["b1"]["permission"]["behavior"] == "ask"
    assert not any(e["type"] == "tool.updated" for e in events)  # nothing ran
    tools = {m["tool_call_id"]: m["content"] for m in rig.fake.requests[1].messages if m["role"] == "tool"}
    assert tools["b1"] == denial["reason"]
    assert "no tool named 'Nope'" in tools["n1"] and "not a JSON object" in tools["j1"]
    assert events[-1]["permissionDenials"] == record.permission_denials


@pytest_twisted.ensureDeferred
async def test_max_turns(tmp_path: Path, fake: FakeOpenAI) -> None:
    rig = Rig(tmp_path, fake, max_turns=2)
    try:
        fake.enqueue(tool_reply("LS", {}, id="1"), tool_reply("LS", {}, id="2"))
        record = await rig.run("loop forever")
        assert (record.status, record.stop_reason, record.num_turns) == ("completed", "max_turn_requests", 2)
        assert len(fake.requests) == 2
    finally:
        await rig.close()


@pytest_twisted.ensureDeferred
async def test_model_errors_fail_the_run(rig: Rig) -> None:
    rig.fake.enqueue(ErrorReply(401, "bad key"))
    record = await rig.run("hi")
    assert record.status == "failed" and record.error is not None
    assert record.error.code == "MODEL_AUTH_FAILED" and "bad key" in record.error.message
    rig.fake.enqueue(ErrorReply(429, "slow down", headers={"Retry-After": "0"}), text_reply("fine"))
    record = await rig.run("again")
    assert (record.status, record.result, len(rig.fake.requests)) == ("completed", "fine", 3)


@pytest_twisted.ensureDeferred
async def test_no_model_configured(tmp_path: Path, fake: FakeOpenAI) -> None:
    from codebuddy.web.errors import ApiError

    rig = Rig(tmp_path, fake, environ={})
    try:
        with pytest.raises(ApiError) as raised:
            await rig.submit("hi")
        assert raised.value.code == "MODEL_NOT_CONFIGURED"
        assert not rig.manager.active
    finally:
        await rig.close()


@pytest_twisted.ensureDeferred
async def test_cancel_while_the_model_streams(rig: Rig) -> None:
    rig.fake.enqueue(Streamed([Text("Part"), Hang()]))
    record = await rig.submit("talk")
    await until(lambda: any(e.event == "message.delta" for e in rig.manager.active[record.run_id].events
                            .events_after(0)), "the first delta")
    cancelled = await rig.manager.cancel(record.run_id)
    assert cancelled.status == "cancelled"
    assert await rig.fake.requests[0].wait_closed().addTimeout(WAIT, _reactor()) is True


@pytest_twisted.ensureDeferred
async def test_long_history_is_trimmed_to_a_tiny_context(tmp_path: Path, fake: FakeOpenAI) -> None:
    """A models.json entry with a tiny maxInputTokens: older turns leave the request, the newest stay."""
    rig = Rig(tmp_path, fake, environ={"FAKE_URL": fake.url, "FAKE_KEY": "sk-tiny"})
    try:
        config = rig.workspace / ".codebuddy"
        config.mkdir()
        (config / "models.json").write_text(json.dumps({"models": [
            {"id": "tiny", "url": "${FAKE_URL}", "apiKey": "${FAKE_KEY}", "maxInputTokens": 3000}]}))
        for n in range(8):
            fake.enqueue(text_reply(f"answer {n} " + "x" * 800))
            record = await rig.run(f"question {n} " + "y" * 800, session_id="long")
            assert record.status == "completed", record.error
        last = fake.requests[-1]
        assert last.model == "tiny" and last.authorization == "Bearer sk-tiny"
        users = [m["content"].split()[1] for m in last.messages if m["role"] == "user"]
        assert users[-1] == "7" and "0" not in users  # the newest turns are there, the oldest went
        assert 1 < len(users) < 8
        assert users == [str(n) for n in range(8 - len(users), 8)]  # a contiguous, newest tail
        assert len(json.dumps(last.messages)) // CHARS_PER_TOKEN <= 3000
    finally:
        await rig.close()


@pytest_twisted.ensureDeferred
async def test_one_session_queues_while_others_run(rig: Rig) -> None:
    rig.fake.enqueue(Hang())
    first = await rig.submit("slow", session_id="a")
    await rig.fake.request(0).addTimeout(WAIT, _reactor())
    second = await rig.submit("queued", session_id="a")
    rig.fake.enqueue(text_reply("other"))
    other = await rig.run("meanwhile", session_id="b")
    assert other.status == "completed"
    assert (await rig.manager.get(second.run_id)).status == "accepted"
    rig.fake.enqueue(text_reply("second done"))
    await rig.manager.cancel(first.run_id)
    done = await rig.finished(second)
    assert (done.status, done.result) == ("completed", "second done")


@pytest_twisted.ensureDeferred
async def test_shutdown_interrupts_active_runs(rig: Rig) -> None:
    rig.fake.enqueue(Hang())
    record = await rig.submit("hang")
    await rig.fake.request(0).addTimeout(WAIT, _reactor())
    await rig.manager.stopService()
    stored = RunStore(rig.home).load(record.run_id)
    assert stored is not None and stored.status == "failed" and stored.error is not None
    assert stored.error.code == "INTERRUPTED"
    rig.manager.startService()  # the fixture stops it again


@pytest_twisted.ensureDeferred
async def test_a_read_deny_rule_also_hides_the_file_from_searches(rig: Rig) -> None:
    (rig.workspace / ".env").write_text("TOKEN=hunter2\n")
    (rig.workspace / "app.py").write_text("TOKEN = read_env()\n")
    rig.settings.update("user", lambda d: d.update(permissions={"deny": ["Read(./.env)"]}))
    rig.fake.enqueue(
        calls_reply(Call("Grep", {"pattern": "TOKEN", "output_mode": "content"}, id="g1"),
                    Call("Glob", {"pattern": "**/*"}, id="g2"), Call("Read", {"file_path": ".env"}, id="r1")),
        text_reply("Searched."),
    )
    record = await rig.run("find the token")
    assert record.status == "completed"
    tools = {m["tool_call_id"]: m["content"] for m in rig.fake.requests[1].messages if m["role"] == "tool"}
    assert "hunter2" not in tools["g1"] and "app.py:1:TOKEN = read_env()" in tools["g1"]
    assert ".env" not in tools["g2"] and "app.py" in tools["g2"]
    assert [d["toolCallId"] for d in record.permission_denials] == ["r1"]
