"""
Properties of the process area: SSE keepalive and ``lagged`` on the injected clock (in memory, with a
fake spawner), and request shapes that must never produce a 500, in memory and with real processes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import treq
from hypothesis import event, given, settings
from hypothesis import strategies as st

from codebuddy.process.buffer import DEFAULT_STALL_TIMEOUT
from codebuddy.web.sse import DEFAULT_HEARTBEAT
from tests.helpers import _result
from tests.process.test_routes import SSE, Fixture, Live, _reactor, parse_sse

URL = "http://127.0.0.1:8080/api/v1/process/"


class Stream:
    """An SSE response read as it arrives over StubTreq's in-memory connection."""

    def __init__(self, api: Fixture, path: str, body: Any, headers: dict[str, str] | None = None) -> None:
        self.api = api
        agent = api.treq._agent
        before = set(agent._pumps)
        d = api.treq.request("POST", URL + path, json=body, headers=headers or SSE)
        new = set(agent._pumps) - before
        assert len(new) == 1, "expected one new in-memory connection"
        self.pump = new.pop()
        api._pump(d)
        self.response = _result(d)
        self.chunks: list[bytes] = []
        self.finished: list[Any] = []
        treq.collect(self.response, self.chunks.append).addBoth(self.finished.append)
        self.flush()

    def flush(self) -> None:
        for _ in range(200):
            self.api.treq.flush()
            self.api.clock.advance(0)

    def frames(self) -> list[dict[str, Any]]:
        return parse_sse(b"".join(self.chunks))

    def _channel(self) -> Any:
        protocol = self.pump.serverIO.protocol
        return getattr(protocol, "_channel", protocol)

    def stop_reading(self) -> None:
        """What a full TCP window does: the server's transport pauses the HTTP channel."""
        self._channel().pauseProducing()

    def resume_reading(self) -> None:
        self._channel().resumeProducing()
        self.flush()


@pytest.fixture
def api() -> Fixture:
    return Fixture()


def test_keepalive_every_heartbeat(api: Fixture) -> None:
    """A quiet SSE stream gets ``event: keepalive`` (no id) every heartbeat interval, then data and end."""
    stream = Stream(api, "start", {"process": {"cmd": "sleep", "args": ["30"]}})
    child = api.spawner.children[0]
    assert [f["event"] for f in stream.frames()] == ["start"]
    api.clock.advance(DEFAULT_HEARTBEAT - 0.1)
    stream.flush()
    assert [f["event"] for f in stream.frames()] == ["start"]
    api.clock.advance(0.1)
    stream.flush()
    assert b"\n\nevent: keepalive\ndata: {}\n\n" in b"".join(stream.chunks)
    api.clock.advance(DEFAULT_HEARTBEAT)
    stream.flush()
    child.emit("stdout", b"done\n")
    child.finish(0)
    stream.flush()
    frames = stream.frames()
    assert [f["event"] for f in frames] == ["start", "keepalive", "keepalive", "data", "end"]
    assert [f["id"] for f in frames[1:3]] == [None, None] and frames[3]["id"] == "5"
    assert stream.finished, "the stream did not end after the process ended"
    api.clock.advance(DEFAULT_HEARTBEAT * 3)
    stream.flush()
    assert len(stream.frames()) == 5, "keepalives after end"


@pytest.mark.parametrize("read_first", [0, 1000], ids=["never-reads", "reads-then-stalls"])
def test_stalled_client_gets_lagged_and_process_survives(api: Fixture, read_first: int) -> None:
    """
    A client that stops reading (at once, or after some data) holds the child paused for the stall
    bound (on the clock), then gets a final ``lagged`` with ``nextOffset`` = the bytes it received; the
    child is resumed, not killed, and the rest of its output is still readable from ``nextOffset``.
    """
    api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "producer"}, "tag": "t"})
    child = api.spawner.children[0]
    flow: list[str] = []
    child.pause_output = lambda: flow.append("pause")  # type: ignore[method-assign]
    child.resume_output = lambda: flow.append("resume")  # type: ignore[method-assign]
    proc = api.manager.get(tag="t")
    burst = proc.buffer.high_water + 1

    stream = Stream(api, "connect", {"process": {"tag": "t"}})
    child.emit("stdout", b"a" * read_first)
    stream.flush()
    assert text_of(stream.frames()) == "a" * read_first

    stream.stop_reading()
    child.emit("stdout", b"b" * burst)
    stream.flush()
    assert flow == ["pause"], "the child's output was not paused for the stalled client"
    api.clock.advance(DEFAULT_STALL_TIMEOUT - 0.5)
    assert not stream.finished and proc.buffer.paused
    api.clock.advance(0.5)
    stream.resume_reading()

    frames = stream.frames()
    assert [f["event"] for f in frames] == ["start"] + ["data"] * bool(read_first) + ["lagged"]
    assert frames[-1]["data"] == {"nextOffset": read_first} and frames[-1]["id"] == str(read_first)
    assert stream.finished, "the lagged stream was not ended"
    assert flow == ["pause", "resume"] and not proc.buffer.paused
    assert child.signals == [] and proc.running
    rows = api.json("GET", "/api/v1/process/list")[1]["data"]["processes"]
    assert [(r["tag"], r["status"]) for r in rows] == [("t", "running")]

    child.emit("stdout", b"c")
    child.finish(0)
    _, body = api.request("POST", "/api/v1/process/connect", json={"process": {"tag": "t"}, "offset": read_first})
    rest = parse_sse(body)
    assert text_of(rest) == "b" * burst + "c" and rest[-1]["event"] == "end"


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"]["stdout"] for f in frames if f["event"] == "data")


# ---------------------------------------------------------------------------- request shapes

# Text that survives JSON and UTF-8 (and os.fsencode): no lone surrogates except surrogateescape's.
# Lone surrogates elsewhere are a known 500 (see test_lone_surrogates_are_400).
ODD = ["", "\x00", "a\x00b", "=", "a=b", "~", "~nobody", "..", "/", ".", "-", "\udcff", "😀", " ", "\n", "é" * 40]
odd_text = st.sampled_from(ODD) | st.text(st.characters(codec="utf-8"), max_size=6)
json_scalars = (
    st.none() | st.booleans() | st.integers(-(10**300), 10**300)
    | st.floats(allow_nan=False, allow_infinity=False) | odd_text
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3), max_leaves=6
)


def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any] = json_values) -> st.SearchStrategy[Any]:
    """``usual`` seven times in eight, else ``odd`` (so that many requests get past validation)."""
    return st.integers(0, 7).flatmap(lambda n: odd if n == 7 else usual)


numbers = mostly(
    st.integers(0, 100_000),
    st.integers(-(10**300), 10**300) | st.sampled_from([-1, 0, 1, 65535, 65536, 2**31, 2**63, 10**20])
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4),
)
sizes = mostly(st.fixed_dictionaries({"cols": mostly(st.integers(1, 500), numbers),
                                      "rows": mostly(st.integers(1, 500), numbers)}),
               st.fixed_dictionaries({}, optional={"cols": numbers, "rows": numbers}) | json_values)
ptys = mostly(st.fixed_dictionaries({"size": sizes}))
args = mostly(st.lists(st.text(max_size=6) | odd_text, max_size=4),
              st.lists(odd_text | json_values, min_size=1, max_size=3) | json_values)
envs = mostly(st.dictionaries(odd_text, odd_text, max_size=3),
              st.dictionaries(odd_text, json_values, min_size=1, max_size=3) | json_values)
configs = mostly(st.fixed_dictionaries(
    {"cmd": mostly(st.sampled_from(["a", "missing", "true"]) | odd_text)},
    optional={"args": args, "envs": envs, "cwd": mostly(odd_text)},
))
start_bodies = st.fixed_dictionaries(
    {"process": configs},
    optional={
        "tag": mostly(odd_text),
        "timeoutMs": numbers,
        "timeout_ms": numbers,
        "pty": ptys,
        "stdin": mostly(st.booleans() | odd_text),
        "encoding": mostly(st.sampled_from(["text", "base64"]), st.sampled_from(["hex", ""]) | json_values),
        "wait": mostly(st.booleans()),
        "extra": json_values,
    },
)
selectors = mostly(
    st.fixed_dictionaries({"pid": mostly(st.just(1001), numbers)})
    | st.fixed_dictionaries({"tag": mostly(st.just("t"), odd_text)}),
    st.fixed_dictionaries({}, optional={"pid": numbers, "tag": odd_text}) | json_values,
)


def assert_envelope(status: int, body: Any) -> None:
    """200 with ``data``, or a 4xx with a JSON error envelope; never a 5xx."""
    assert isinstance(body, dict), body
    if status == 200:
        assert "data" in body, body
    else:
        assert 400 <= status < 500, (status, body)
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body


def test_start_shapes_never_500_in_memory(api: Fixture) -> None:
    """Arbitrary JSON for every process/start field answers 200 or a 4xx envelope (fake spawner)."""

    @settings(max_examples=150, deadline=None)
    @given(body=start_bodies)
    def check(body: dict[str, Any]) -> None:
        api.spawner.script = [("exit", 0)]  # so that "wait": true completes
        status, data, _ = api.json("POST", "/api/v1/process/start", json=body)
        event(f"status {status}")
        assert_envelope(status, data)

    check()


def test_other_shapes_never_500_in_memory(api: Fixture) -> None:
    """input/send, signal/send, stdin/close, update and connect with arbitrary shapes: 200 or a 4xx envelope."""
    api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "a"}, "tag": "t", "pty": {"size": {"cols": 8,
                                                                                                          "rows": 2}}})
    api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "b"}, "tag": "gone"})
    api.spawner.children[1].finish(0)
    gone_pid = api.spawner.children[1].pid
    extras = {
        "input/send": {"input": mostly(st.fixed_dictionaries({"stdin": odd_text}) | st.fixed_dictionaries(
                                           {"pty": odd_text}), st.fixed_dictionaries({}, optional={"stdin": odd_text,
                                                                                                  "pty": odd_text})),
                       "encoding": mostly(st.sampled_from(["text", "base64"]))},
        "signal/send": {"signal": mostly(st.sampled_from([10, 12, "SIGUSR1", "usr2", "SIGNAL_SIGUSR1"]),
                                         numbers | st.sampled_from(["SIGTERM", "kill", "NO"]) | json_values)},
        "stdin/close": {},
        "update": {"pty": ptys},
    }

    @settings(max_examples=150, deadline=None)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(extras)))
        body = data.draw(st.fixed_dictionaries({"process": selectors, **extras[path]}))
        status, answer, _ = api.json("POST", "/api/v1/process/" + path, json=body)
        event(f"{path} {status}")
        assert_envelope(status, answer)
        api.spawner.children[0].stdin_closed = False  # keep the target writable for later examples

    @settings(max_examples=60, deadline=None)
    @given(process=st.fixed_dictionaries({}, optional={"pid": st.just(gone_pid) | numbers.filter(lambda n: n != 1001),
                                                         "tag": st.just("gone")}),
           offset=numbers | json_values, encoding=st.sampled_from(["text", "base64"]) | json_values,
           last_event_id=st.none() | st.sampled_from(["0", "3", "-1", "x", "99999999999999999999", ""]))
    def check_connect(process: dict[str, Any], offset: Any, encoding: Any, last_event_id: str | None) -> None:
        headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
        response, raw = api.request("POST", "/api/v1/process/connect",
                                    json={"process": process, "offset": offset, "encoding": encoding}, headers=headers)
        if response.code == 200:
            assert parse_sse(raw)[-1]["event"] == "end"
        else:
            assert_envelope(response.code, json.loads(raw))

    check()
    check_connect()


def test_input_stream_shapes_never_500_in_memory(api: Fixture) -> None:
    """input/stream NDJSON bodies of arbitrary lines (odd JSON, broken bytes, lone surrogates): 200 or a 4xx."""
    api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "a"}, "tag": "t"})
    texts = odd_text | st.sampled_from(["\ud800", "AAE=", "@@"])
    selecting = st.fixed_dictionaries({"process": selectors},
                                      optional={"encoding": mostly(st.sampled_from(["text", "base64"]))})
    first = mostly(selecting | selecting.map(lambda d: {"start": d}))
    inputs = st.fixed_dictionaries({"input": mostly(st.fixed_dictionaries({"stdin": texts})
                                                    | st.fixed_dictionaries({"pty": texts}))})
    later = mostly(inputs | inputs.map(lambda d: {"data": d}) | st.just({"keepalive": {}}))
    lines = st.tuples(first, st.lists(later, max_size=4)).map(lambda t: [t[0], *t[1]])

    @settings(max_examples=150, deadline=None)
    @given(lines=lines, garbage=st.lists(st.binary(max_size=8), max_size=2), newline_at_end=st.booleans())
    def check(lines: list[Any], garbage: list[bytes], newline_at_end: bool) -> None:
        body = b"\n".join([json.dumps(line).encode() for line in lines] + garbage)
        status, answer, _ = api.json("POST", "/api/v1/process/input/stream", data=body + b"\n" * newline_at_end)
        event(f"status {status}")
        assert_envelope(status, answer)

    check()


def test_huge_timeout_is_not_500_in_memory(api: Fixture) -> None:
    """A timeoutMs too large for a float is a 400 (or accepted), not a 500."""
    status, body, _ = api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "a"}, "timeoutMs": 10**400})
    assert_envelope(status, body)
    assert status == 400 and body["error"]["details"][0]["field"] == "timeoutMs"


# ---------------------------------------------------------------------------- real processes


@pytest_twisted.async_yield_fixture(scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    """ProcessRoutes over a real Spawner on a loopback port, shared by the module's real-process tests."""
    where = tmp_path_factory.mktemp("live")
    (where / "sub dir").mkdir()
    server = Live(where)
    yield server
    await server.close()
    assert server.spawner.children() == []


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    return False


@pytest_twisted.ensureDeferred
async def test_nul_in_args_env_cwd_is_400(live: Live) -> None:
    """NUL in cmd, an argument, an environment name or value, or cwd: 400 BAD_REQUEST and nothing started."""
    before = len(live.manager.processes())
    for config in [
        {"cmd": "true", "args": ["a\x00b"]},
        {"cmd": "true", "args": ["ok", "\x00"]},
        {"cmd": "tr\x00ue"},
        {"cmd": "/bin/tr\x00ue"},
        {"cmd": "true", "envs": {"A": "x\x00y"}},
        {"cmd": "true", "envs": {"A\x00B": "x"}},
        {"cmd": "true", "cwd": "a\x00b"},
    ]:
        status, body = await live.call("start", {"process": config, "wait": True})
        assert (status, body["error"]["code"]) == (400, "BAD_REQUEST"), (config, body)
    assert len(live.manager.processes()) == before


@settings(max_examples=150, deadline=None)
@given(
    config=st.fixed_dictionaries(
        {"cmd": mostly(st.sampled_from(["true", "/bin/true"]), st.sampled_from(["./missing", "sub dir"]) | odd_text)},
        optional={
            "args": args,
            "envs": mostly(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True), odd_text,
                                           max_size=3), envs),
            "cwd": mostly(st.sampled_from(["sub dir", "/", "~", ""]), odd_text),
        },
    ),
    extra=st.fixed_dictionaries(
        {}, optional={"tag": mostly(odd_text), "timeoutMs": numbers, "pty": ptys, "stdin": st.booleans()}
    ),
)
@pytest_twisted.ensureDeferred
async def test_start_shapes_never_500_real_spawner(live: Live, config: dict[str, Any], extra: dict[str, Any]) -> None:
    """
    Odd args/envs/cwd/tag/timeoutMs/pty for a real ``true`` (waited for): 200 with exit code 0 (or a
    timeout kill) or a 4xx envelope, and any NUL in cmd, args, envs or cwd is a 400.
    """
    status, body = await live.call("start", {"process": config, "wait": True, **extra})
    event(f"status {status}")
    assert_envelope(status, body)
    if _contains_nul([config.get("cmd"), config.get("args"), config.get("envs"), config.get("cwd")]):
        assert (status, body["error"]["code"]) == (400, "BAD_REQUEST"), (config, body)
    if status == 200:
        assert body["data"]["exitCode"] == 0 or body["data"]["status"] == "signal: killed", body


SURROGATE = "\ud800"  # valid JSON ("\\ud800"), not encodable as UTF-8 even with surrogateescape


@pytest.mark.parametrize("request_body", [
    {"process": {"cmd": "true", "args": [SURROGATE]}},
    {"process": {"cmd": SURROGATE}},
    {"process": {"cmd": "true", "envs": {SURROGATE: "x"}}},
    {"process": {"cmd": "true", "envs": {"A": SURROGATE}}},
    {"process": {"cmd": "true"}, "stdin": SURROGATE},
], ids=["arg", "cmd", "env-name", "env-value", "stdin"])
@pytest_twisted.ensureDeferred
async def test_lone_surrogates_are_400(live: Live, request_body: dict[str, Any]) -> None:
    """A string the child cannot be given (a lone surrogate) is a 400, like a NUL."""
    status, body = await live.call("start", {**request_body, "wait": True})
    assert (status, body["error"]["code"]) == (400, "BAD_REQUEST"), body


def test_lone_surrogate_input_is_400(api: Fixture) -> None:
    """input/send with a lone surrogate in text input is a 400 (input/stream already answers 400 for it)."""
    api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "cat"}, "tag": "t"})
    status, body, _ = api.json("POST", "/api/v1/process/input/send",
                               json={"process": {"tag": "t"}, "input": {"stdin": SURROGATE}})
    assert (status, body["error"]["code"]) == (400, "BAD_REQUEST"), body


async def _pty_cat(live: Live) -> Any:
    status, body = await live.call("start", {"process": {"cmd": "cat"}, "pty": {"size": {"cols": 8, "rows": 2}}})
    assert status == 200, body
    return live.manager.get(pid=body["data"]["pid"])


async def _kill(live: Live, proc: Any) -> None:
    await live.call("signal/send", {"process": {"pid": proc.pid}, "signal": 9})
    await proc.ended().addTimeout(10, _reactor())


@pytest.mark.parametrize("size", [{"cols": 70000, "rows": 5}, {"cols": 80, "rows": -1}, {"cols": 10**30, "rows": 1}],
                         ids=["cols-too-big", "rows-negative", "cols-huge"])
@pytest_twisted.ensureDeferred
async def test_update_out_of_range_size_is_400(live: Live, size: dict[str, int]) -> None:
    """Resizing a real PTY to a size a winsize cannot hold is a 400, as it is at start."""
    proc = await _pty_cat(live)
    try:
        status, body = await live.call("update", {"process": {"pid": proc.pid}, "pty": {"size": size}})
        assert (status, body["error"]["code"]) == (400, "BAD_REQUEST"), body
    finally:
        await _kill(live, proc)


@settings(max_examples=40, deadline=None)
@given(cols=st.integers(1, 65535), rows=st.integers(1, 65535))
@pytest_twisted.ensureDeferred
async def test_update_in_range_sizes_real_pty(live: Live, cols: int, rows: int) -> None:
    """Resizing a real PTY to any size that start accepts answers 200."""
    proc = await _pty_cat(live)
    try:
        status, body = await live.call("update", {"process": {"pid": proc.pid}, "pty": {"size": {"cols": cols,
                                                                                              "rows": rows}}})
        assert (status, body) == (200, {"data": {}})
    finally:
        await _kill(live, proc)
