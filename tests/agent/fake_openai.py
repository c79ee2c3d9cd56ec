"""
A scripted OpenAI-compatible chat-completions server on a real loopback port, for tests
(pytest-twisted, e2e daemons pointed at it) and bench scripts.

Quick start::

    from tests.agent.fake_openai import FakeOpenAI, text_reply, tool_reply

    fake = FakeOpenAI()                       # FakeOpenAI(reactor) to choose the reactor
    base_url = await fake.start()             # "http://127.0.0.1:PORT/v1"
    fake.enqueue(tool_reply("Read", {"path": "a.txt"}), text_reply("Done."))
    config = fake.model_config(api_key="sk-test")        # a codebuddy ModelConfig for ChatClient
    env = fake.environ(api_key="sk-test")     # CODEBUDDY_BASE_URL/MODEL/API_KEY for a daemon
    ...
    assert fake.requests[0].messages[-1] == {"role": "user", "content": "hi"}
    assert fake.requests[0].headers["authorization"] == "Bearer sk-test"
    await fake.stop()

or, in a pytest module, the ``fake_openai`` fixture (started, stopped after the test)::

    from tests.agent.fake_openai import fake_openai  # noqa: F401 (a fixture)

    @pytest_twisted.ensureDeferred
    async def test_x(fake_openai: FakeOpenAI) -> None: ...

Serving
-------
``POST <anything>/chat/completions`` takes the next scripted reply from the queue
(:meth:`FakeOpenAI.enqueue`); with an empty queue it calls ``fake.default(request)``, which
echoes the last user message's text as a streamed reply (``fake.strict = True`` answers 500
instead, to catch unexpected calls). ``GET <anything>/models`` lists ``fake.models``. Anything
else is a JSON 404.

Replies (each an attrs class; build them directly or with the helpers):

- :class:`Streamed` ``(items, finish_reason=None, usage=True, delay=0.0, finish=True,
  done=True, model=None, reasoning_field="reasoning_content", status=200, headers={})``: an SSE
  stream like OpenAI's: a role chunk, one chunk per item, a chunk with ``finish_reason``
  (default ``"tool_calls"`` if there are calls, else ``"stop"``; ``finish=False`` leaves it out),
  a usage chunk (only if the request asked with ``stream_options.include_usage``; ``usage=True``
  estimates counts, a dict is sent as is, ``False`` sends none), and ``data: [DONE]``
  (``done=False`` leaves it out). Items:

  - :class:`Text` ``(text)``: ``delta.content``; :class:`Think` ``(text)``: reasoning in
    ``delta.<reasoning_field>`` (``"reasoning"`` for the OpenRouter/Ollama spelling);
  - :class:`Call` ``(name, arguments, id=None, fragments=3, send_id=True)``: a tool call, its
    arguments (a dict is JSON-encoded) split into ``fragments`` argument deltas after a first
    delta carrying ``id``/``name``; calls are numbered by ``index`` in order; ``id=None`` makes
    ``call_<reply>_<n>`` (unique across the fake's replies), ``send_id=False`` leaves the id out;
  - :class:`Pause` ``(seconds)``: wait (``reactor.callLater``) before the next frame (``delay``
    does this before every frame);
  - :class:`Raw` ``(data)``: bytes/str written as they are (malformed streams);
  - :class:`Hang` ``()``: stop here and keep the connection open until the client leaves
    (cancellation, idle timeouts); :class:`Drop` ``()``: abort the connection here.

  A ``Streamed`` reply to a request with ``"stream": false`` is sent as the equivalent JSON
  completion (a real server's behaviour).
- :class:`Completion` ``(text=None, reasoning=None, calls=(), finish_reason=None, usage=True,
  reasoning_field="reasoning_content")``: one JSON ``chat.completion``, whatever the request
  asked (a server that ignores ``stream: true``).
- :class:`ErrorReply` ``(status=500, message="fake failure", type="server_error", code=None,
  headers={}, body=None)``: a JSON error ``{"error": {"message", "type", "code"}}`` (or ``body``
  verbatim), e.g. ``ErrorReply(429, headers={"Retry-After": "2"})``, ``ErrorReply(401)``.
- :class:`Hang` ``()``: never answer (first-byte timeouts); :class:`Drop` ``()``: close the
  connection without answering (connection failures).

Helpers: :func:`text_reply` ``(text, pieces=3, reasoning=None, **streamed)`` splits the text
into ``pieces`` deltas; :func:`tool_reply` ``(name, arguments, *, id=None, text=None,
fragments=3, **streamed)`` is "call tool ``name`` with ``arguments``", optionally after some
text; :func:`calls_reply` ``(*calls, text=None, **streamed)`` several calls in one turn.

Recording
---------
``fake.requests`` lists every request as a :class:`FakeRequest`: ``method``, ``path``,
``headers`` (lower-case names, last value), ``body`` (parsed JSON or None), ``raw`` (bytes),
``reply`` (what was played), and shortcuts ``messages``, ``tools``, ``model``, ``stream``,
``authorization``, ``last_user_text``. ``await fake.request(n)`` waits until request number
``n`` (from 0) has arrived; ``await fake.requests[n].wait_closed()`` until its connection is
done, with True if the client went away before the answer was complete (a cancel) and False if
the answer was sent whole. ``fake.pending`` counts the replies still queued.

``await fake.stop()`` cancels timers, aborts every open connection and closes the port.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

try:
    import pytest_twisted
except ImportError:  # pragma: no cover (bench scripts outside the test environment)
    pytest_twisted = None  # type: ignore[assignment]
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = [
    "Call",
    "Completion",
    "Drop",
    "ErrorReply",
    "FakeOpenAI",
    "FakeRequest",
    "Hang",
    "Pause",
    "Raw",
    "Streamed",
    "Text",
    "Think",
    "calls_reply",
    "echo_reply",
    "fake_openai",
    "text_reply",
    "tool_reply",
]

DEFAULT_MODEL = "fake-model"


# --------------------------------------------------------------------------- script items


@attrs.frozen
class Text:
    """A piece of answer text (``delta.content``)."""

    text: str


@attrs.frozen
class Think:
    """A piece of reasoning (``delta.reasoning_content`` or the reply's ``reasoning_field``)."""

    text: str


@attrs.frozen
class Call:
    """A tool call; ``arguments`` (str, or a dict to JSON-encode) is sent in ``fragments`` pieces."""

    name: str
    arguments: str | Mapping[str, Any] = "{}"
    id: str | None = None
    fragments: int = 3
    send_id: bool = True

    @property
    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments))


@attrs.frozen
class Pause:
    """Wait this long before the next frame."""

    seconds: float


@attrs.frozen
class Raw:
    """Bytes written as they are."""

    data: bytes | str


@attrs.frozen
class Hang:
    """As an item: stop and keep the connection open. As a reply: never answer."""


@attrs.frozen
class Drop:
    """As an item: abort the connection here. As a reply: abort it without answering."""


Item = Text | Think | Call | Pause | Raw | Hang | Drop


# --------------------------------------------------------------------------- replies


@attrs.frozen
class Streamed:
    """An SSE chat-completions stream (see the module doc)."""

    items: Sequence[Item] = ()
    finish_reason: str | None = None
    usage: bool | Mapping[str, Any] = True
    delay: float = 0.0
    finish: bool = True
    done: bool = True
    model: str | None = None
    reasoning_field: str = "reasoning_content"
    status: int = 200
    headers: Mapping[str, str] = attrs.Factory(dict)

    def as_completion(self) -> Completion:
        text = "".join(i.text for i in self.items if isinstance(i, Text)) or None
        reasoning = "".join(i.text for i in self.items if isinstance(i, Think)) or None
        calls = tuple(i for i in self.items if isinstance(i, Call))
        return Completion(text=text, reasoning=reasoning, calls=calls, finish_reason=self.finish_reason,
                          usage=self.usage, model=self.model, reasoning_field=self.reasoning_field)


@attrs.frozen
class Completion:
    """One JSON ``chat.completion``."""

    text: str | None = None
    reasoning: str | None = None
    calls: Sequence[Call] = ()
    finish_reason: str | None = None
    usage: bool | Mapping[str, Any] = True
    model: str | None = None
    reasoning_field: str = "reasoning_content"


@attrs.frozen
class ErrorReply:
    """An HTTP error with an OpenAI-style JSON body (or ``body`` verbatim)."""

    status: int = 500
    message: str = "fake failure"
    type: str = "server_error"
    code: str | None = None
    headers: Mapping[str, str] = attrs.Factory(dict)
    body: bytes | str | None = None


Reply = Streamed | Completion | ErrorReply | Hang | Drop


def _split(text: str, pieces: int) -> list[str]:
    pieces = max(1, min(pieces, len(text)))
    if not text:
        return []
    size, extra = divmod(len(text), pieces)
    parts, start = [], 0
    for number in range(pieces):
        end = start + size + (1 if number < extra else 0)
        parts.append(text[start:end])
        start = end
    return parts


def text_reply(text: str, pieces: int = 3, reasoning: str | None = None, **streamed: Any) -> Streamed:
    """A streamed answer: optional reasoning, then ``text`` in ``pieces`` deltas."""
    items: list[Item] = [Think(p) for p in _split(reasoning or "", pieces)]
    items += [Text(p) for p in _split(text, pieces)]
    return Streamed(items, **streamed)


def tool_reply(name: str, arguments: str | Mapping[str, Any] = "{}", *, id: str | None = None,
               text: str | None = None, fragments: int = 3, **streamed: Any) -> Streamed:
    """A streamed turn that calls tool ``name`` with ``arguments`` (optionally after ``text``)."""
    return calls_reply(Call(name, arguments, id=id, fragments=fragments), text=text, **streamed)


def calls_reply(*calls: Call, text: str | None = None, **streamed: Any) -> Streamed:
    """A streamed turn with several tool calls (optionally after ``text``)."""
    items: list[Item] = [Text(text)] if text else []
    return Streamed([*items, *calls], **streamed)


def echo_reply(request: FakeRequest) -> Reply:
    """The default behaviour: stream the last user message's text back."""
    return text_reply(request.last_user_text or "(no user message)")


# --------------------------------------------------------------------------- recording


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


@attrs.define(eq=False)
class FakeRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    reply: Reply | None = None
    closed: bool | None = None
    """None while open; True if the client left before the answer was complete; False if sent whole."""
    _waiters: list[Deferred[bool]] = attrs.Factory(list)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        return self.body.get("tools") if isinstance(self.body, dict) else None

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream")) if isinstance(self.body, dict) else False

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options") if isinstance(self.body, dict) else None
        return isinstance(options, dict) and bool(options.get("include_usage"))

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def last_user_text(self) -> str | None:
        for message in reversed(self.messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
        return None

    def wait_closed(self) -> Deferred[bool]:
        """Fires when the connection is done: True if the client went away first, False if answered whole."""
        if self.closed is not None:
            return succeed(self.closed)
        d: Deferred[bool] = Deferred()
        self._waiters.append(d)
        return d

    def _close(self, client_gone: bool) -> None:
        if self.closed is not None:
            return
        self.closed = client_gone
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(client_gone)


# --------------------------------------------------------------------------- the server


class _Channel(HTTPChannel):
    """An HTTPChannel the fake can find and abort on stop."""

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        self.lost: Deferred[None] = Deferred()
        self.factory._channels.add(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        super().connectionLost(reason)
        self.factory._channels.discard(self)  # type: ignore[attr-defined]
        self.lost.callback(None)


class _Site(Site):
    noisy = False
    protocol = _Channel  # type: ignore[assignment]  # plain HTTP/1.1 (Site's default also offers h2)

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self._channels: set[_Channel] = set()

    def log(self, request: Any) -> None:
        """No access log."""


def _estimate_tokens(text: str) -> int:
    return len(text) // 4 + 1


class _Player:
    """Writes one reply to one request, frame by frame, on the reactor."""

    def __init__(self, fake: FakeOpenAI, request: Request, recorded: FakeRequest) -> None:
        self.fake = fake
        self.request = request
        self.recorded = recorded
        self.steps: deque[tuple[float, bytes | Hang | Drop]] = deque()
        self.timer: IDelayedCall | None = None
        self.gone = False
        request.notifyFinish().addCallbacks(lambda _: self._closed(False), lambda _: self._closed(True))

    def _closed(self, gone: bool) -> None:
        self.gone = gone
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.fake._players.discard(self)
        self.recorded._close(gone)

    def play(self, steps: Iterable[tuple[float, bytes | Hang | Drop]]) -> None:
        self.steps.extend(steps)
        self.fake._players.add(self)
        self._next()

    def _next(self) -> None:
        self.timer = None
        while self.steps and not self.gone:
            delay, step = self.steps[0]
            if delay > 0:
                self.steps[0] = (0.0, step)
                self.timer = self.fake.reactor.callLater(delay, self._next)
                return
            self.steps.popleft()
            if isinstance(step, Hang):
                return
            if isinstance(step, Drop):
                self.abort(flush=True)
                return
            self.request.write(step)
        if not self.gone and not self.request.finished:
            self.request.finish()

    def abort(self, flush: bool = False) -> None:
        """Close the connection mid-answer (``flush``: after what was written so far is sent)."""
        self.steps.clear()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        transport: Any = self.request.channel.transport if self.request.channel else None
        if transport is not None:
            if flush:
                transport.loseConnection()
            else:
                transport.abortConnection()


class _Root(Resource):
    isLeaf = True

    def __init__(self, fake: FakeOpenAI) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request: Request) -> Any:  # type: ignore[override]
        return self.fake._serve(request)


class FakeOpenAI:
    """The scripted server (see the module doc)."""

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor
        self.queue: deque[Reply] = deque()
        self.requests: list[FakeRequest] = []
        self.default: Callable[[FakeRequest], Reply] = echo_reply
        self.strict = False
        self.models: list[str] = [DEFAULT_MODEL]
        self.url = ""
        self._port: Any = None
        self._site: _Site | None = None
        self._players: set[_Player] = set()
        self._arrivals: list[tuple[int, Deferred[FakeRequest]]] = []
        self._counter = 0

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    # -- lifecycle

    def start(self) -> Deferred[str]:
        """Listen on 127.0.0.1 (a free port); fires with the base URL ``http://127.0.0.1:PORT/v1``."""
        self._site = _Site(_Root(self))
        self._port = self.reactor.listenTCP(0, self._site, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self._port.getHost().port}/v1"
        return succeed(self.url)

    def stop(self) -> Deferred[Any]:
        """Cancel timers, abort open connections, close the port."""
        for player in list(self._players):
            player.abort()
        waits: list[Deferred[Any]] = []
        if self._site is not None:
            for channel in list(self._site._channels):
                waits.append(channel.lost)
                transport: Any = channel.transport
                if transport is not None:
                    transport.abortConnection()
        if self._port is not None:
            waits.append(Deferred.fromCoroutine(self._stop_listening()))
            self._port = None
        return DeferredList(waits, consumeErrors=True)

    async def _stop_listening(self) -> None:
        port = self._port
        if port is not None:
            await port.stopListening()

    # -- scripting

    def enqueue(self, *replies: Reply) -> None:
        """Add replies, served in order to the next chat-completions requests."""
        self.queue.extend(replies)

    @property
    def pending(self) -> int:
        return len(self.queue)

    def request(self, number: int) -> Deferred[FakeRequest]:
        """Fires once request ``number`` (0-based) has arrived."""
        if number < len(self.requests):
            return succeed(self.requests[number])
        d: Deferred[FakeRequest] = Deferred()
        self._arrivals.append((number, d))
        return d

    def model_config(self, model: str = DEFAULT_MODEL, api_key: str | None = None, **fields: Any) -> Any:
        """A :class:`codebuddy.agent.model.ModelConfig` pointing here."""
        from codebuddy.agent.model import ModelConfig

        return ModelConfig(base_url=self.url, model=model, api_key=api_key, source="fake", **fields)

    def environ(self, model: str = DEFAULT_MODEL, api_key: str | None = None) -> dict[str, str]:
        """The ``CODEBUDDY_*`` environment variables that point a daemon here."""
        env = {"CODEBUDDY_BASE_URL": self.url, "CODEBUDDY_MODEL": model}
        if api_key is not None:
            env["CODEBUDDY_API_KEY"] = api_key
        return env

    # -- serving

    def _serve(self, request: Request) -> Any:
        method = (request.method or b"").decode("ascii", "replace")
        path = (request.path or b"").decode("utf-8", "replace")
        raw = request.content.read() if request.content is not None else b""
        headers = {name.decode("latin-1").lower(): values[-1].decode("latin-1")
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded = FakeRequest(method, path, headers, body, raw)
        self.requests.append(recorded)
        number = len(self.requests) - 1
        ready = [d for n, d in self._arrivals if n == number]
        self._arrivals = [(n, d) for n, d in self._arrivals if n != number]
        # Waiters resume on a later reactor turn, not inside this render call.
        for d in ready:
            self.reactor.callLater(0, d.callback, recorded)
        return self._answer(request, recorded, method, path)

    def _answer(self, request: Request, recorded: FakeRequest, method: str, path: str) -> Any:
        if method == "GET" and path.rstrip("/").endswith("/models"):
            recorded.closed = False
            return self._json(request, 200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]})
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            recorded.closed = False
            return self._json(request, 404, {"error": {"message": f"no route {method} {path}",
                                                       "type": "invalid_request_error", "code": None}})
        if self.queue:
            reply = self.queue.popleft()
        elif self.strict:
            reply = ErrorReply(500, "FakeOpenAI: no scripted reply left (strict mode)")
        else:
            reply = self.default(recorded)
        if isinstance(reply, Streamed) and not recorded.stream:
            reply = reply.as_completion()
        recorded.reply = reply
        player = _Player(self, request, recorded)
        if isinstance(reply, Hang):
            self._players.add(player)
            return NOT_DONE_YET
        if isinstance(reply, Drop):
            player.abort()
            return NOT_DONE_YET
        if isinstance(reply, ErrorReply):
            for name, value in reply.headers.items():
                request.setHeader(name, value)
            if reply.body is not None:
                data = reply.body.encode() if isinstance(reply.body, str) else reply.body
                request.setResponseCode(reply.status)
                return data
            return self._json(request, reply.status, {"error": {"message": reply.message, "type": reply.type,
                                                                "code": reply.code}})
        if isinstance(reply, Completion):
            return self._json(request, 200, self._completion(reply, recorded))
        request.setResponseCode(reply.status)
        request.setHeader("content-type", "text/event-stream; charset=utf-8")
        request.setHeader("cache-control", "no-cache")
        for name, value in reply.headers.items():
            request.setHeader(name, value)
        player.play(self._frames(reply, recorded))
        return NOT_DONE_YET

    @staticmethod
    def _json(request: Request, status: int, data: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader("content-type", "application/json")
        return json.dumps(data).encode()

    def _next_id(self) -> str:
        self._counter += 1
        return f"chatcmpl-fake-{self._counter}"

    def _usage(self, usage: bool | Mapping[str, Any], recorded: FakeRequest, output: str) -> dict[str, Any] | None:
        if usage is False:
            return None
        if isinstance(usage, Mapping):
            return dict(usage)
        prompt = _estimate_tokens(json.dumps(recorded.messages))
        completion = _estimate_tokens(output)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _frames(self, reply: Streamed, recorded: FakeRequest) -> list[tuple[float, bytes | Hang | Drop]]:
        chunk_id = self._next_id()
        model = reply.model or recorded.model or DEFAULT_MODEL

        def frame(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> bytes:
            chunk: dict[str, Any] = {"id": chunk_id, "object": "chat.completion.chunk", "created": 0, "model": model,
                                     "choices": [] if delta is None else
                                     [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage is not None:
                chunk["usage"] = usage
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        steps: list[tuple[float, bytes | Hang | Drop]] = [(0.0, frame({"role": "assistant", "content": ""}))]
        pause = reply.delay
        output: list[str] = []
        calls = 0
        for item in reply.items:
            if isinstance(item, Pause):
                pause += item.seconds
                continue
            datas: list[bytes | Hang | Drop] = []
            if isinstance(item, Text):
                output.append(item.text)
                datas.append(frame({"content": item.text}))
            elif isinstance(item, Think):
                output.append(item.text)
                datas.append(frame({reply.reasoning_field: item.text}))
            elif isinstance(item, Call):
                index = calls
                calls += 1
                first: dict[str, Any] = {"index": index, "type": "function",
                                         "function": {"name": item.name, "arguments": ""}}
                if item.send_id:
                    first["id"] = item.id or f"call_{self._counter}_{index}"
                datas.append(frame({"tool_calls": [first]}))
                arguments = item.arguments_text
                output.append(item.name + arguments)
                for piece in _split(arguments, item.fragments):
                    datas.append(frame({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
            elif isinstance(item, Raw):
                datas.append(item.data.encode() if isinstance(item.data, str) else item.data)
            else:
                datas.append(item)
            for data in datas:
                steps.append((pause, data))
                pause = reply.delay
        if reply.finish:
            finish = reply.finish_reason or ("tool_calls" if calls else "stop")
            steps.append((pause, frame({}, finish)))
            pause = reply.delay
        usage = self._usage(reply.usage, recorded, "".join(output))
        if usage is not None and recorded.include_usage:
            steps.append((pause, frame(None, usage=usage)))
            pause = reply.delay
        if reply.done:
            steps.append((pause, b"data: [DONE]\n\n"))
        return steps

    def _completion(self, reply: Completion, recorded: FakeRequest) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.reasoning:
            message[reply.reasoning_field] = reply.reasoning
        if reply.calls:
            message["tool_calls"] = [
                {**({"id": call.id or f"call_{self._counter}_{n}"} if call.send_id else {}), "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments_text}}
                for n, call in enumerate(reply.calls)
            ]
        finish = reply.finish_reason or ("tool_calls" if reply.calls else "stop")
        output = (reply.text or "") + (reply.reasoning or "") + "".join(c.name + c.arguments_text for c in reply.calls)
        data: dict[str, Any] = {"id": self._next_id(), "object": "chat.completion", "created": 0,
                                "model": reply.model or recorded.model or DEFAULT_MODEL,
                                "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
        usage = self._usage(reply.usage, recorded, output)
        if usage is not None:
            data["usage"] = usage
        return data


async def _fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A started :class:`FakeOpenAI`, stopped after the test."""
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


# The fixture needs pytest-twisted; bench scripts import this module without it.
fake_openai = (pytest_twisted.async_yield_fixture(name="fake_openai")(_fake_openai) if pytest_twisted is not None
               else None)
