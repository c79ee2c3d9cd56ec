"""
Model access: configuration (environment, both models.json files, ${VAR}, errors that say what
to set) and the chat client against the fake OpenAI server over real loopback sockets
(streaming text, reasoning, tool calls, usage, JSON answers, retries, errors, cancel, timeouts).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from codebuddy.agent.model import (
    ChatClient,
    ModelConfig,
    ModelError,
    ModelEvent,
    ModelNotConfigured,
    ModelTurn,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStarted,
    Usage,
    _SSEDecoder,
    _TurnBuilder,
    list_models,
    make_http_client,
    resolve_model,
)
from tests.agent.fake_openai import (
    Call,
    Completion,
    Drop,
    ErrorReply,
    FakeOpenAI,
    Hang,
    Raw,
    Streamed,
    Text,
    Think,
    calls_reply,
    fake_openai,  # noqa: F401 (a fixture)
    text_reply,
)

# --------------------------------------------------------------------------- configuration


def write_models(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    home, workspace = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    workspace.mkdir()
    return home, workspace


def test_environment_model(dirs: tuple[Path, Path]) -> None:
    """The three variables make a model; the key never shows in repr; a full endpoint URL is accepted."""
    home, workspace = dirs
    env = {"CODEBUDDY_BASE_URL": "https://llm.example/v1/chat/completions/", "CODEBUDDY_MODEL": "gpt-x",
           "CODEBUDDY_API_KEY": "sk-secret-1"}
    config = resolve_model(env, home, workspace)
    assert (config.base_url, config.model, config.name, config.api_key) == (
        "https://llm.example/v1", "gpt-x", "gpt-x", "sk-secret-1")
    assert config.chat_url == "https://llm.example/v1/chat/completions"
    assert (config.context_window, config.max_output_tokens) == (128000, None)
    assert "CODEBUDDY_BASE_URL" in config.source
    assert "sk-secret-1" not in repr(config)
    without_key = resolve_model({**env, "CODEBUDDY_API_KEY": ""}, home, workspace)
    assert without_key.api_key is None


def test_environment_beats_models_json(dirs: tuple[Path, Path]) -> None:
    home, workspace = dirs
    write_models(home / "models.json", [{"id": "file-model", "url": "http://file/v1"}])
    env = {"CODEBUDDY_BASE_URL": "http://env/v1", "CODEBUDDY_MODEL": "env-model"}
    assert resolve_model(env, home, workspace).model == "env-model"
    assert resolve_model(env, home, workspace, requested="file-model").model == "file-model"
    assert [m.model for m in list_models(env, home, workspace)] == ["env-model", "file-model"]


def test_models_json_both_places(dirs: tuple[Path, Path]) -> None:
    """Workspace entries come first and override the home's field by field; requested picks by id or name."""
    home, workspace = dirs
    write_models(home / "models.json", {"models": [
        {"id": "shared", "name": "Shared", "url": "https://home.example/v1/chat/completions", "apiKey": "home-key",
         "maxInputTokens": 64000},
        {"id": "home-only", "url": "https://home.example/v1", "maxOutputTokens": 4096},
    ]})
    write_models(workspace / ".codebuddy" / "models.json", [
        {"id": "ws-only", "url": "http://127.0.0.1:11434/v1/chat/completions"},
        {"id": "shared", "apiKey": "ws-key"},
    ])
    config = resolve_model({}, home, workspace)
    assert (config.model, config.base_url, config.api_key) == ("ws-only", "http://127.0.0.1:11434/v1", None)
    assert config.source == str(workspace / ".codebuddy" / "models.json")
    shared = resolve_model({}, home, workspace, requested="Shared")
    assert (shared.model, shared.name, shared.base_url, shared.api_key, shared.context_window) == (
        "shared", "Shared", "https://home.example/v1", "ws-key", 64000)
    home_only = resolve_model({}, home, workspace, requested="home-only")
    assert (home_only.max_output_tokens, home_only.source) == (4096, str(home / "models.json"))
    assert [m.model for m in list_models({}, home, workspace)] == ["ws-only", "shared", "home-only"]
    with pytest.raises(ModelNotConfigured, match=r"'nope' is not configured .*ws-only, shared, home-only"):
        resolve_model({}, home, workspace, requested="nope")


def test_default_entry_available_models_and_env_model_selects(dirs: tuple[Path, Path]) -> None:
    home, workspace = dirs
    write_models(home / "models.json", {"models": [
        {"id": "a", "url": "http://a/v1"}, {"id": "b", "url": "http://b/v1", "default": True},
        {"id": "c", "url": "http://c/v1"}], "availableModels": ["a", "c"]})
    assert resolve_model({}, home, workspace).model == "a"  # b is marked default but not available
    write_models(home / "models.json", [{"id": "a", "url": "http://a/v1"}, {"id": "b", "url": "http://b/v1",
                                                                           "default": True}])
    assert resolve_model({}, home, workspace).model == "b"
    assert resolve_model({"CODEBUDDY_MODEL": "a"}, home, workspace).base_url == "http://a/v1"


def test_variable_expansion_and_missing_variable(dirs: tuple[Path, Path]) -> None:
    home, workspace = dirs
    path = write_models(home / "models.json", [
        {"id": "m", "url": "https://${HOST}/v1", "apiKey": "${MY_KEY}"},
        {"id": "other", "url": "http://other/v1"},
    ])
    config = resolve_model({"HOST": "llm.example", "MY_KEY": "sk-from-env"}, home, workspace)
    assert (config.base_url, config.api_key) == ("https://llm.example/v1", "sk-from-env")
    with pytest.raises(ModelNotConfigured) as info:
        resolve_model({"HOST": "llm.example"}, home, workspace)
    assert "MY_KEY" in str(info.value) and str(path) in str(info.value) and "apiKey" in str(info.value)
    # A listing leaves the unusable entry out instead of failing.
    assert [m.model for m in list_models({"HOST": "h"}, home, workspace)] == ["other"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"models": [\n  {"id": "a",}\n]}', "line 2, column"),
        ("", "line 1, column 1"),
        ('{"models": {"id": "a"}}', "models must be a list"),
        ('[{"url": "http://x/v1"}]', "[0].id is required"),
        ('{"models": [{"id": "a", "maxOutputTokens": "many"}]}', "models[0].maxOutputTokens must be a positive"),
        ('"just a string"', "must hold"),
    ],
)
def test_malformed_models_json(dirs: tuple[Path, Path], content: str, expected: str) -> None:
    home, workspace = dirs
    path = write_models(workspace / ".codebuddy" / "models.json", content)
    with pytest.raises(ModelNotConfigured) as info:
        resolve_model({}, home, workspace)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_nothing_configured_says_what_to_set(dirs: tuple[Path, Path]) -> None:
    home, workspace = dirs
    with pytest.raises(ModelNotConfigured) as info:
        resolve_model({}, home, workspace)
    message = str(info.value)
    for needed in ("CODEBUDDY_BASE_URL", "CODEBUDDY_MODEL", "CODEBUDDY_API_KEY", str(home / "models.json"),
                   '"url"', '"apiKey"'):
        assert needed in message
    assert list_models({}, home, workspace) == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CODEBUDDY_MODEL": "gpt-x"}, "CODEBUDDY_BASE_URL is not"),
        ({"CODEBUDDY_BASE_URL": "http://x/v1"}, "CODEBUDDY_MODEL is not"),
        ({"CODEBUDDY_BASE_URL": "ftp://x", "CODEBUDDY_MODEL": "m"}, "CODEBUDDY_BASE_URL must be an http"),
    ],
)
def test_partial_environment(dirs: tuple[Path, Path], env: dict[str, str], expected: str) -> None:
    with pytest.raises(ModelNotConfigured, match=expected):
        resolve_model(env, *dirs)


def test_entry_without_url(dirs: tuple[Path, Path]) -> None:
    home, workspace = dirs
    write_models(home / "models.json", [{"id": "m"}])
    with pytest.raises(ModelNotConfigured, match=r"model 'm' has no \"url\""):
        resolve_model({}, home, workspace)


# --------------------------------------------------------------------------- stream parsing units


def test_sse_decoder_line_endings_comments_multiline() -> None:
    decoder = _SSEDecoder()
    stream = b": ok\r\n\r\ndata: a\rdata:b\r\rid: 3\nevent: x\ndata: {\"k\": 1}\n\nretry: 5\n\ndata: tail"
    events = decoder.feed(stream) + decoder.close()
    assert events == ["a\nb", '{"k": 1}', "tail"]


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_sse_decoder_any_split(cuts: list[int]) -> None:
    """Split anywhere (even between CR and LF, inside UTF-8 characters), the events are the same."""
    stream = ("data: {\"x\": \"héllo\"}\r\n\r\n: comment\ndata: [DONE]\r\rdata: one\ndata: two\n\n").encode()
    whole = _SSEDecoder()
    expected = whole.feed(stream) + whole.close()
    decoder = _SSEDecoder()
    events: list[str] = []
    start = 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]:
        events += decoder.feed(stream[start:cut])
        start = cut
    assert events + decoder.close() == expected == ['{"x": "héllo"}', "[DONE]", "one\ntwo"]


def build(chunks: list[dict[str, Any]]) -> tuple[ModelTurn, list[ModelEvent]]:
    events: list[ModelEvent] = []
    builder = _TurnBuilder(events.append)
    for delta in chunks:
        builder.chunk({"choices": [{"index": 0, "delta": delta}]})
    return builder.result(), events


def test_tool_calls_numbered_by_id_when_providers_reuse_index_or_omit_it() -> None:
    """Some providers number every call 0 or leave index out; distinct ids still make distinct calls."""
    turn, events = build([
        {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "one", "arguments": '{"x"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},
        {"tool_calls": [{"index": 0, "id": "b", "function": {"name": "two", "arguments": "{}"}}]},
        {"tool_calls": [{"id": "c", "function": {"name": "three", "arguments": {"y": 2}}}]},
    ])
    assert turn.tool_calls == [ToolCall("a", "one", '{"x": 1}'), ToolCall("b", "two", "{}"),
                               ToolCall("c", "three", '{"y": 2}')]
    assert [e.index for e in events if isinstance(e, ToolCallStarted)] == [0, 1, 2]


def test_arguments_before_name_are_held_back() -> None:
    turn, events = build([
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]},
        {"tool_calls": [{"index": 0, "function": {"name": "late", "arguments": ": 1}"}}]},
    ])
    [call] = turn.tool_calls
    assert (call.name, call.arguments) == ("late", '{"a": 1}') and call.id.startswith("call_")
    assert events == [ToolCallStarted(0, call.id, "late"), ToolCallDelta(0, '{"a": 1}')]


def test_assistant_message() -> None:
    turn = ModelTurn(text="", tool_calls=[ToolCall("c1", "Read", '{"p": 1}')])
    assert turn.assistant_message() == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "Read", "arguments": '{"p": 1}'}}]}
    assert ModelTurn(text="hi").assistant_message() == {"role": "assistant", "content": "hi"}


# --------------------------------------------------------------------------- the client over loopback


@pytest_twisted.async_yield_fixture
async def http() -> AsyncIterator[Any]:
    """The daemon's kind of client (persistent pool), its connections closed afterwards."""
    from twisted.internet import reactor
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    yield make_http_client(reactor, pool=pool)
    await pool.closeCachedConnections()


def real_clock() -> Any:
    from twisted.internet import reactor

    return reactor


class WatchedClock(Clock):
    """
    A Clock that tells when something is scheduled with a delay matching a predicate (the waiter
    resumes on a later turn of the real reactor, never inside the code that scheduled).
    """

    def __init__(self) -> None:
        super().__init__()
        self.waiters: list[tuple[Callable[[float], bool], Deferred[float]]] = []

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> Any:  # noqa: N802
        call = super().callLater(delay, callable, *args, **kw)
        for waiter in list(self.waiters):
            if waiter[0](delay):
                self.waiters.remove(waiter)
                real_clock().callLater(0, waiter[1].callback, delay)
        return call

    def scheduled(self, predicate: Callable[[float], bool]) -> Deferred[float]:
        d: Deferred[float] = Deferred()
        self.waiters.append((predicate, d))
        return d

    def pending(self) -> list[float]:
        return [c.getTime() - self.seconds() for c in self.getDelayedCalls() if c.active()]


FIRST_BYTE, IDLE = 100.0, 200.0


def is_backoff(delay: float) -> bool:
    return delay not in (FIRST_BYTE, IDLE)


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {
    "name": "read", "description": "read a file",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]


async def run(client: ChatClient, config: ModelConfig, tools: list[dict[str, Any]] | None = None,
              **kwargs: Any) -> tuple[ModelTurn, list[ModelEvent]]:
    events: list[ModelEvent] = []
    turn = await client.stream(config, MESSAGES, tools, events.append, **kwargs)
    return turn, events


@pytest_twisted.ensureDeferred
async def test_streamed_text_and_request(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    fake_openai.enqueue(text_reply("Hello there", pieces=3), text_reply("again"))
    client = ChatClient(http, real_clock())
    turn, events = await run(client, fake_openai.model_config(api_key="sk-test-key"))
    assert events[:3] == [TextDelta("Hell"), TextDelta("o th"), TextDelta("ere")]
    assert isinstance(events[3], Usage) and len(events) == 4
    assert (turn.text, turn.reasoning, turn.tool_calls, turn.finish_reason) == ("Hello there", "", [], "stop")
    assert turn.usage == events[3] and turn.usage.completion_tokens > 0
    [request] = fake_openai.requests
    assert request.path == "/v1/chat/completions"
    assert request.body == {"model": "fake-model", "messages": MESSAGES, "stream": True,
                            "stream_options": {"include_usage": True}}
    assert request.authorization == "Bearer sk-test-key"
    assert request.headers["user-agent"].startswith("codebuddy/")
    assert await request.wait_closed() is False
    # No key, no Authorization header; the persistent connection is reused or not, either works.
    turn, _ = await run(client, fake_openai.model_config())
    assert turn.text == "again" and fake_openai.requests[1].authorization is None


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
@pytest_twisted.ensureDeferred
async def test_reasoning(fake_openai: FakeOpenAI, http: Any, field: str) -> None:  # noqa: F811
    fake_openai.enqueue(Streamed([Think("Let me "), Think("think."), Text("42")], reasoning_field=field,
                                 usage=False))
    turn, events = await run(ChatClient(http, real_clock()), fake_openai.model_config())
    assert events == [ReasoningDelta("Let me "), ReasoningDelta("think."), TextDelta("42")]
    assert (turn.reasoning, turn.text, turn.usage) == ("Let me think.", "42", None)


@pytest_twisted.ensureDeferred
async def test_tool_calls_assembled_across_chunks(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    fake_openai.enqueue(calls_reply(Call("read", {"path": "a.txt"}, id="call_a", fragments=4),
                                    Call("grep", '{"pattern": "x"}', send_id=False, fragments=2),
                                    text="Let me look."))
    turn, events = await run(ChatClient(http, real_clock()), fake_openai.model_config(), tools=TOOLS)
    generated = turn.tool_calls[1].id
    assert generated.startswith("call_")
    assert turn.tool_calls == [ToolCall("call_a", "read", '{"path": "a.txt"}'),
                               ToolCall(generated, "grep", '{"pattern": "x"}')]
    assert (turn.text, turn.finish_reason) == ("Let me look.", "tool_calls")
    kinds = [(type(e).__name__, getattr(e, "index", None)) for e in events]
    assert kinds == [("TextDelta", None), ("ToolCallStarted", 0), *[("ToolCallDelta", 0)] * 4,
                     ("ToolCallStarted", 1), *[("ToolCallDelta", 1)] * 2, ("Usage", None)]
    assert events[1] == ToolCallStarted(0, "call_a", "read")
    assert "".join(e.arguments for e in events if isinstance(e, ToolCallDelta) and e.index == 0) == '{"path": "a.txt"}'
    assert fake_openai.requests[0].tools == TOOLS


@pytest_twisted.ensureDeferred
async def test_usage_with_cached_tokens(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    fake_openai.enqueue(text_reply("ok", usage={"prompt_tokens": 1200, "completion_tokens": 7, "total_tokens": 1207,
                                                "prompt_tokens_details": {"cached_tokens": 1024}}))
    turn, events = await run(ChatClient(http, real_clock()), fake_openai.model_config())
    assert turn.usage == events[-1] == Usage(1200, 7, cached=1024)
    assert turn.usage.total_tokens == 1207


@pytest_twisted.ensureDeferred
async def test_non_streaming_answer(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    """A server that ignores stream=true answers one JSON completion: same events, same turn."""
    fake_openai.enqueue(Completion(text="Reading.", reasoning="hmm", calls=[Call("read", {"path": "b"}, id="c9")],
                                   usage={"prompt_tokens": 5, "completion_tokens": 3}))
    turn, events = await run(ChatClient(http, real_clock()), fake_openai.model_config())
    assert events == [ReasoningDelta("hmm"), TextDelta("Reading."), ToolCallStarted(0, "c9", "read"),
                      ToolCallDelta(0, '{"path": "b"}'), Usage(5, 3)]
    assert (turn.text, turn.reasoning, turn.finish_reason) == ("Reading.", "hmm", "tool_calls")
    assert turn.tool_calls == [ToolCall("c9", "read", '{"path": "b"}')]


@pytest_twisted.ensureDeferred
async def test_extra_body_and_stream_false(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    """extra_body reaches the provider; with stream false the fake answers JSON, which is parsed."""
    fake_openai.enqueue(text_reply("plain"))
    turn, _ = await run(ChatClient(http, real_clock()), fake_openai.model_config(),
                        extra_body={"stream": False, "temperature": 0})
    assert turn.text == "plain"
    assert fake_openai.requests[0].body["temperature"] == 0 and fake_openai.requests[0].stream is False


@pytest_twisted.ensureDeferred
async def test_default_reply_echoes(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    turn, _ = await run(ChatClient(http, real_clock()), fake_openai.model_config())
    assert turn.text == "hi"
    fake_openai.strict = True
    with pytest.raises(ModelError) as info:
        await run(ChatClient(http, real_clock(), retries=0), fake_openai.model_config())
    assert "no scripted reply" in info.value.message


@pytest_twisted.ensureDeferred
async def test_rate_limited_then_success_honours_retry_after(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    clock = WatchedClock()
    fake_openai.enqueue(ErrorReply(429, "slow down", type="rate_limit_error", headers={"Retry-After": "7"}),
                        ErrorReply(503, headers={"Retry-After": "120"}), text_reply("ok"))
    client = ChatClient(http, clock, first_byte_timeout=FIRST_BYTE, idle_timeout=IDLE)
    events: list[ModelEvent] = []
    d = client.stream(fake_openai.model_config(), MESSAGES, None, events.append)
    assert await clock.scheduled(is_backoff) == 7.0
    assert events == []
    clock.advance(7)
    assert await clock.scheduled(is_backoff) == 30.0  # Retry-After capped at max_retry_after
    clock.advance(30)
    turn = await d
    assert turn.text == "ok" and len(fake_openai.requests) == 3


@pytest_twisted.ensureDeferred
async def test_backoff_doubles_then_gives_up(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    clock = WatchedClock()
    fake_openai.enqueue(*[ErrorReply(500, "boom")] * 3)
    client = ChatClient(http, clock, retries=2, first_byte_timeout=FIRST_BYTE, idle_timeout=IDLE)
    d = client.stream(fake_openai.model_config(), MESSAGES)
    for expected in (0.5, 1.0):
        assert await clock.scheduled(is_backoff) == expected
        clock.advance(expected)
    with pytest.raises(ModelError) as info:
        await d
    error = info.value
    assert (error.code, error.status, error.retryable) == ("MODEL_UNAVAILABLE", 500, True)
    assert "boom" in error.message and "after 3 attempts" in error.message
    assert len(fake_openai.requests) == 3 and clock.pending() == []


@pytest_twisted.ensureDeferred
async def test_rate_limited_after_retries(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    fake_openai.enqueue(*[ErrorReply(429, "quota", headers={"Retry-After": "0"})] * 2)
    with pytest.raises(ModelError) as info:
        await run(ChatClient(http, real_clock(), retries=1, backoff=0.001), fake_openai.model_config())
    assert (info.value.code, info.value.status) == ("MODEL_RATE_LIMITED", 429)
    assert len(fake_openai.requests) == 2


@pytest_twisted.ensureDeferred
async def test_auth_failure_names_url_never_the_key(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    fake_openai.enqueue(ErrorReply(401, "Incorrect API key provided: sk-very-secret", type="invalid_request_error",
                                   code="invalid_api_key"))
    config = fake_openai.model_config(api_key="sk-very-secret")
    config = ModelConfig(base_url=fake_openai.url + "?key=sk-very-secret", model=config.model,
                         api_key=config.api_key, source="test")
    with pytest.raises(ModelError) as info:
        await run(ChatClient(http, real_clock()), config)
    error = info.value
    assert (error.code, error.status, error.retryable, error.provider_code) == (
        "MODEL_AUTH_FAILED", 401, False, "invalid_api_key")
    assert fake_openai.url in error.message and "CODEBUDDY_API_KEY" in error.message
    assert "sk-very-secret" not in error.message and "sk-very-secret" not in repr(error)
    assert len(fake_openai.requests) == 1  # not retried


@pytest.mark.parametrize(
    ("reply", "code", "fragment"),
    [
        (ErrorReply(404, "The model `fake-model` does not exist", type="invalid_request_error",
                    code="model_not_found"), "MODEL_NOT_FOUND", "does not exist"),
        (ErrorReply(400, "This model's maximum context length is 8192 tokens", type="invalid_request_error",
                    code="context_length_exceeded"), "MODEL_BAD_REQUEST", "maximum context length"),
        (ErrorReply(422, body="<html>unprocessable</html>"), "MODEL_BAD_REQUEST", "unprocessable"),
        (ErrorReply(501, "not implemented"), "MODEL_UNAVAILABLE", "not implemented"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_other_errors(fake_openai: FakeOpenAI, http: Any, reply: ErrorReply, code: str,  # noqa: F811
                            fragment: str) -> None:
    fake_openai.enqueue(reply)
    with pytest.raises(ModelError) as info:
        await run(ChatClient(http, real_clock()), fake_openai.model_config())
    assert (info.value.code, info.value.status, info.value.retryable) == (code, reply.status, False)
    assert fragment in info.value.message
    assert len(fake_openai.requests) == 1


@pytest_twisted.ensureDeferred
async def test_error_body_read_bounded(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    """A huge error page is read up to 64 KiB only; the message keeps a short excerpt."""
    fake_openai.enqueue(ErrorReply(400, body="<html>" + "x" * 500_000 + "</html>"))
    with pytest.raises(ModelError) as info:
        await run(ChatClient(http, real_clock()), fake_openai.model_config())
    assert info.value.code == "MODEL_BAD_REQUEST" and len(info.value.message) < 600


@pytest_twisted.ensureDeferred
async def test_done_then_silence_still_completes(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    """After [DONE] the rest of the body gets a short grace, then the turn is complete anyway."""
    clock = WatchedClock()
    fake_openai.enqueue(Streamed([Text("x"), Raw("data: [DONE]\n\n"), Hang()], finish=False, done=False))
    d = ChatClient(http, clock, first_byte_timeout=FIRST_BYTE, idle_timeout=IDLE).stream(
        fake_openai.model_config(), MESSAGES)
    grace = await clock.scheduled(is_backoff)
    clock.advance(grace)
    turn = await d
    assert (turn.text, turn.finish_reason) == ("x", None)
    assert await fake_openai.requests[0].wait_closed() is True


@pytest_twisted.ensureDeferred
async def test_stream_options_refused_retried_without(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    fake_openai.enqueue(ErrorReply(400, "Unrecognized request argument supplied: stream_options",
                                   type="invalid_request_error"), text_reply("ok"))
    turn, _ = await run(ChatClient(http, real_clock(), retries=0), fake_openai.model_config())
    assert turn.text == "ok"
    assert "stream_options" in fake_openai.requests[0].body
    assert "stream_options" not in fake_openai.requests[1].body


@pytest_twisted.ensureDeferred
async def test_connection_failures_retried(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    """A dropped connection before any output is retried; a refused port ends as MODEL_UNAVAILABLE."""
    fake_openai.enqueue(Drop(), text_reply("ok"))
    turn, _ = await run(ChatClient(http, real_clock(), backoff=0.001), fake_openai.model_config())
    assert turn.text == "ok" and len(fake_openai.requests) == 2
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = ModelConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m")
    with pytest.raises(ModelError) as info:
        await run(ChatClient(http, real_clock(), retries=1, backoff=0.001), config)
    assert (info.value.code, info.value.retryable) == ("MODEL_UNAVAILABLE", True)
    assert "Cannot reach" in info.value.message and "after 2 attempts" in info.value.message


@pytest_twisted.ensureDeferred
async def test_failure_after_output_is_not_retried(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    fake_openai.enqueue(Streamed([Text("partial"), Drop()]), text_reply("never"))
    events: list[ModelEvent] = []
    with pytest.raises(ModelError) as info:
        await ChatClient(http, real_clock(), backoff=0.001).stream(fake_openai.model_config(), MESSAGES, None,
                                                                   events.append)
    assert info.value.code == "MODEL_UNAVAILABLE" and "before the model finished" in info.value.message
    assert events == [TextDelta("partial")] and len(fake_openai.requests) == 1


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Streamed([Raw("data: {not json\n\n")]), "MODEL_BAD_RESPONSE"),
        (Streamed([Text("a")], finish=False, done=False), "MODEL_UNAVAILABLE"),
        (Streamed([Raw('data: {"error": {"message": "bad tool schema", "type": "invalid_request_error"}}\n\n')]),
         "MODEL_BAD_REQUEST"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_broken_streams(fake_openai: FakeOpenAI, http: Any, reply: Streamed, code: str) -> None:  # noqa: F811
    fake_openai.enqueue(reply)
    with pytest.raises(ModelError) as info:
        await run(ChatClient(http, real_clock(), retries=0), fake_openai.model_config())
    assert info.value.code == code


@pytest_twisted.ensureDeferred
async def test_finish_without_done_is_complete(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    fake_openai.enqueue(Streamed([Text("fine")], done=False, usage=False))
    turn, _ = await run(ChatClient(http, real_clock(), retries=0), fake_openai.model_config())
    assert (turn.text, turn.finish_reason) == ("fine", "stop")


def first_event() -> tuple[Deferred[ModelEvent], Callable[[ModelEvent], None]]:
    d: Deferred[ModelEvent] = Deferred()

    def on_event(event: ModelEvent) -> None:
        if not d.called:
            d.callback(event)

    return d, on_event


@pytest_twisted.ensureDeferred
async def test_cancel_while_streaming(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    """Events arrive as they are sent; cancel closes the connection and fails with CancelledError."""
    fake_openai.enqueue(Streamed([Text("first"), Hang()]))
    seen, on_event = first_event()
    d = ChatClient(http, real_clock()).stream(fake_openai.model_config(), MESSAGES, None, on_event)
    assert await seen == TextDelta("first")
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    assert await fake_openai.requests[0].wait_closed() is True
    assert len(fake_openai.requests) == 1


@pytest_twisted.ensureDeferred
async def test_cancel_token_before_answer_and_during_backoff(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    clock = WatchedClock()
    client = ChatClient(http, clock, first_byte_timeout=FIRST_BYTE, idle_timeout=IDLE)
    fake_openai.enqueue(Hang())
    token: Deferred[None] = Deferred()
    d = client.stream(fake_openai.model_config(), MESSAGES, cancel=token)
    await fake_openai.request(0)
    token.callback(None)
    with pytest.raises(CancelledError):
        await d
    assert await fake_openai.requests[0].wait_closed() is True
    fake_openai.enqueue(ErrorReply(503))
    token = Deferred()
    d = client.stream(fake_openai.model_config(), MESSAGES, cancel=token)
    assert await clock.scheduled(is_backoff) == 0.5
    token.callback(None)
    with pytest.raises(CancelledError):
        await d
    assert clock.pending() == [] and len(fake_openai.requests) == 2


@pytest_twisted.ensureDeferred
async def test_idle_timeout(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    """Silence after output started ends the turn (no retry: output was shown) and closes the connection."""
    clock = WatchedClock()
    fake_openai.enqueue(Streamed([Text("first"), Hang()]))
    seen, on_event = first_event()
    d = ChatClient(http, clock, first_byte_timeout=FIRST_BYTE, idle_timeout=IDLE).stream(
        fake_openai.model_config(), MESSAGES, None, on_event)
    await seen
    clock.advance(IDLE)
    with pytest.raises(ModelError) as info:
        await d
    assert info.value.code == "MODEL_UNAVAILABLE" and "sent nothing for 200 s" in info.value.message
    assert await fake_openai.requests[0].wait_closed() is True
    assert len(fake_openai.requests) == 1


@pytest_twisted.ensureDeferred
async def test_first_byte_timeout_retried(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    clock = WatchedClock()
    fake_openai.enqueue(Hang(), Hang())
    d = ChatClient(http, clock, retries=1, first_byte_timeout=FIRST_BYTE, idle_timeout=IDLE).stream(
        fake_openai.model_config(), MESSAGES)
    await fake_openai.request(0)
    clock.advance(FIRST_BYTE)
    assert await fake_openai.requests[0].wait_closed() is True
    clock.advance(0.5)
    await fake_openai.request(1)
    clock.advance(FIRST_BYTE)
    with pytest.raises(ModelError) as info:
        await d
    assert info.value.code == "MODEL_UNAVAILABLE"
    assert "did not answer within 100 s" in info.value.message and "after 2 attempts" in info.value.message
    assert await fake_openai.requests[1].wait_closed() is True


@pytest_twisted.ensureDeferred
async def test_on_event_exception_stops_the_request(fake_openai: FakeOpenAI, http: Any) -> None:  # noqa: F811
    fake_openai.enqueue(Streamed([Text("a"), Hang()]))

    def explode(event: ModelEvent) -> None:
        raise RuntimeError("consumer bug")

    with pytest.raises(RuntimeError, match="consumer bug"):
        await ChatClient(http, real_clock()).stream(fake_openai.model_config(), MESSAGES, None, explode)
    assert await fake_openai.requests[0].wait_closed() is True
