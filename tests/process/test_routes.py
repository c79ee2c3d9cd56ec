"""The process area's routes: in memory with a fake spawner, and with real processes on the real reactor."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import pytest_twisted
import treq

from codebuddy.process.manager import ProcessManager
from codebuddy.process.routes import ProcessRoutes
from codebuddy.process.spawn import Spawner
from codebuddy.web.auth import GatewaySettings, RequestGuard
from codebuddy.web.root import build_root
from codebuddy.web.server import CodeBuddySite
from tests.helpers import ApiFixture
from tests.process.test_manager import FakeSpawner

SSE = {"Accept": "text/event-stream"}


def parse_sse(body: bytes) -> list[dict[str, Any]]:
    """Frames as dicts with ``event``, ``id`` (or None) and parsed ``data``."""
    frames = []
    for raw in body.decode().split("\n\n"):
        if not raw.strip() or raw.startswith(":"):
            continue
        frame: dict[str, Any] = {"id": None}
        for line in raw.split("\n"):
            key, _, value = line.partition(": ")
            frame[key] = json.loads(value) if key == "data" else value
        frames.append(frame)
    return frames


class Fixture(ApiFixture):
    """ApiFixture with ProcessRoutes over a FakeSpawner."""

    def __init__(self) -> None:
        def areas(guard: Any, clock: Any) -> list[Any]:
            self.spawner = FakeSpawner(clock)
            self.manager = ProcessManager(self.spawner, "/ws", clock)  # type: ignore[arg-type]
            return [ProcessRoutes(self.manager, clock, guard.admits)]

        super().__init__(areas)
        self.site.body_openers = dict(self.v1.body_openers)


@pytest.fixture
def api() -> Fixture:
    return Fixture()


def test_start_json_and_errors(api: Fixture) -> None:
    """JSON start answers {pid, tag}; SpawnError is 400; a running tag is 409; bad bodies are 400."""
    body = {"process": {"cmd": "python3", "args": ["script.py"]}, "tag": "my-script"}
    status, data, _ = api.json("POST", "/api/v1/process/start", json=body)
    assert status == 200 and data["data"] == {"pid": 1001, "tag": "my-script"}
    assert api.spawner.calls[0]["argv"] == ["python3", "script.py"]
    assert api.json("POST", "/api/v1/process/start", json=body)[1]["error"]["code"] == "CONFLICT"
    status, data, _ = api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "missing"}})
    assert (status, data["error"]["code"]) == (400, "BAD_REQUEST") and "missing" in data["error"]["message"]
    assert api.json("POST", "/api/v1/process/start", json={"process": {}})[0] == 400
    assert api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "a"}, "encoding": "hex"})[0] == 400


def test_selector_errors(api: Fixture) -> None:
    """Unknown pid/tag is 404 PROCESS_NOT_FOUND; input or signal to an exited process is 409."""
    for path, extra in [("input/send", {"input": {"stdin": "x"}}), ("signal/send", {"signal": 9}),
                        ("stdin/close", {}), ("connect", {})]:
        status, data, _ = api.json("POST", f"/api/v1/process/{path}", json={"process": {"pid": 5}, **extra})
        assert (status, data["error"]["code"]) == (404, "PROCESS_NOT_FOUND")
    api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "a"}, "tag": "t"})
    api.spawner.children[0].finish(0)
    for path, extra in [("input/send", {"input": {"stdin": "x"}}), ("signal/send", {"signal": "SIGTERM"})]:
        status, data, _ = api.json("POST", f"/api/v1/process/{path}", json={"process": {"tag": "t"}, **extra})
        assert (status, data["error"]["code"]) == (409, "CONFLICT")
    status, _, _ = api.json("POST", "/api/v1/process/signal/send", json={"process": {"tag": "t"}, "signal": "NOPE"})
    assert status == 400


def test_input_signal_update(api: Fixture) -> None:
    """input/send writes text or base64, signal goes to the group, update resizes only PTYs."""
    api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "a"}, "tag": "t"})
    child = api.spawner.children[0]
    assert api.json("POST", "/api/v1/process/input/send",
                    json={"process": {"tag": "t"}, "input": {"stdin": "hé\n"}})[0] == 200
    api.json("POST", "/api/v1/process/input/send",
             json={"process": {"pid": child.pid}, "input": {"stdin": "AAE="}, "encoding": "base64"})
    assert child.written == ["hé\n".encode(), b"\x00\x01"]
    api.json("POST", "/api/v1/process/signal/send", json={"process": {"tag": "t"}, "signal": "SIGINT"})
    assert child.signals == [2]
    upd = {"process": {"tag": "t"}, "pty": {"size": {"cols": 100, "rows": 30}}}
    assert api.json("POST", "/api/v1/process/update", json=upd)[0] == 400
    for cols, rows in ((70000, 30), (-1, 30), (0, 0), (80, 65536)):
        bad = {"process": {"tag": "t"}, "pty": {"size": {"cols": cols, "rows": rows}}}
        status, answer = api.json("POST", "/api/v1/process/update", json=bad)[:2]
        assert status == 400 and answer["error"]["details"][0]["field"] == "pty.size"
    api.json("POST", "/api/v1/process/stdin/close", json={"process": {"tag": "t"}})
    assert child.stdin_closed
    assert api.json("POST", "/api/v1/process/input/send",
                    json={"process": {"tag": "t"}, "input": {"stdin": "x"}})[0] == 409


def test_input_stream(api: Fixture) -> None:
    """input/stream applies NDJSON input lines to the selected process."""
    api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "a"}, "tag": "t"})
    body = b'{"process": {"tag": "t"}}\n{"input": {"stdin": "one\\n"}}\n{"keepalive": {}}\n{"input": {"stdin": "two"}}'
    assert api.json("POST", "/api/v1/process/input/stream", data=body)[0] == 200
    assert api.spawner.children[0].written == [b"one\n", b"two"]
    status, data, _ = api.json("POST", "/api/v1/process/input/stream", data=b'{"process": {"tag": "x"}}\n')
    assert (status, data["error"]["code"]) == (404, "PROCESS_NOT_FOUND")


def test_sse_order_unicode_and_resume(api: Fixture) -> None:
    """SSE: start, data with a split emoji joined, end; ids are byte offsets; Last-Event-ID resumes exactly."""
    emoji = "😀".encode()
    api.spawner.script = [("stdout", b"ab" + emoji[:2]), ("stderr", b"E"), ("stdout", emoji[2:] + b"c"), ("exit", 1)]
    response, body = api.request("POST", "/api/v1/process/start", json={"process": {"cmd": "a"}}, headers=SSE)
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
    frames = parse_sse(body)
    assert [f["event"] for f in frames] == ["start", "data", "data", "data", "end"]
    assert frames[0]["data"] == {"pid": 1001}
    assert [f["data"] for f in frames[1:4]] == [{"stdout": "ab"}, {"stderr": "E"}, {"stdout": "😀c"}]
    assert [f["id"] for f in frames] == ["0", "2", None, "8", "8"]
    assert frames[-1]["data"] == {"exitCode": 1, "exited": True, "status": "exit status 1", "error": "exit status 1"}
    _, body = api.request("POST", "/api/v1/process/connect", json={"process": {"pid": 1001}},
                          headers={"Last-Event-ID": "2"})
    replay = parse_sse(body)
    assert [f["data"] for f in replay[1:-1]] == [{"stderr": "E"}, {"stdout": "😀c"}]
    _, body = api.request("POST", "/api/v1/process/connect",
                          json={"process": {"pid": 1001}, "offset": 7, "encoding": "base64"})
    assert [f["data"] for f in parse_sse(body)[1:-1]] == [{"stdout": base64.b64encode(b"c").decode()}]


def test_list(api: Fixture) -> None:
    """list shows config, running/exited status and exit status; exited entries expire after 60 s."""
    api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "a", "args": ["1"], "cwd": "d"}, "tag": "t"})
    api.json("POST", "/api/v1/process/start", json={"process": {"cmd": "b"}})
    api.spawner.children[1].finish(0)
    rows = api.json("GET", "/api/v1/process/list")[1]["data"]["processes"]
    assert rows[0]["config"] == {"cmd": "a", "args": ["1"], "envs": {}, "cwd": "d"}
    assert [(r["status"], r["exitCode"]) for r in rows] == [("running", None), ("exited", 0)]
    api.clock.advance(61)
    assert len(api.json("GET", "/api/v1/process/list")[1]["data"]["processes"]) == 1


# ---------------------------------------------------------------------------- real processes


class Live:
    """ProcessRoutes over a real Spawner, served on a loopback port."""

    def __init__(self, tmp_path: Any) -> None:
        from twisted.internet import reactor

        self.spawner = Spawner(reactor, environ={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                               default_cwd=str(tmp_path))
        self.manager = ProcessManager(self.spawner, str(tmp_path), reactor)
        guard = RequestGuard(reactor, GatewaySettings())
        root, v1 = build_root(guard, [ProcessRoutes(self.manager, reactor, guard.admits)])
        site = CodeBuddySite(root, access_log="none", body_openers=v1.body_openers)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/api/v1/process"

    async def call(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        response = await treq.post(f"{self.url}/{path}", json=body, **kw).addTimeout(10, _reactor())
        return response.code, json.loads(await response.content())

    async def sse(self, path: str, body: Any) -> list[dict[str, Any]]:
        response = await treq.post(f"{self.url}/{path}", json=body, headers=SSE).addTimeout(10, _reactor())
        return parse_sse(await response.content())

    async def close(self) -> None:
        await self.spawner.stopService()
        await self.port.stopListening()


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest_twisted.ensureDeferred
async def test_live_wait_stdin_signal_base64(tmp_path: Any) -> None:
    """Real processes: wait collects output; stdin reaches cat; signal by tag ends it; base64 is exact."""
    live = Live(tmp_path)
    try:
        shell = {"cmd": "/bin/sh", "args": ["-c", "echo hi; echo no >&2; exit 4"]}
        code, body = await live.call("start", {"process": shell, "wait": True})
        assert body["data"]["stdout"] == "hi\n" and body["data"]["stderr"] == "no\n"
        assert body["data"]["exitCode"] == 4 and body["data"]["truncated"] is False

        _, body = await live.call("start", {"process": {"cmd": "cat"}, "tag": "cat"})
        proc = live.manager.get(tag="cat")
        await live.call("input/send", {"process": {"tag": "cat"}, "input": {"stdin": "hello\n"}})
        await live.call("stdin/close", {"process": {"tag": "cat"}})
        await proc.ended().addTimeout(10, _reactor())
        frames = await live.sse("connect", {"process": {"tag": "cat"}})
        assert [f["event"] for f in frames] == ["start", "data", "end"] and frames[1]["data"] == {"stdout": "hello\n"}

        await live.call("start", {"process": {"cmd": "sleep", "args": ["30"]}, "tag": "sleeper"})
        sleeper = live.manager.get(tag="sleeper")
        code, _ = await live.call("signal/send", {"process": {"tag": "sleeper"}, "signal": "SIGKILL"})
        info = await sleeper.ended().addTimeout(10, _reactor())
        assert code == 200 and info.status == "signal: killed"

        script = "import sys,time;w=sys.stdout.buffer;w.write(b'\\xf0\\x9f');w.flush();time.sleep(0.2);" \
                 "w.write(b'\\x98\\x80\\xff');w.flush()"
        frames = await live.sse("start", {"process": {"cmd": "python3", "args": ["-c", script]}, "stdin": False})
        assert frames[0]["event"] == "start" and frames[-1]["event"] == "end"
        assert "".join(f["data"].get("stdout", "") for f in frames if f["event"] == "data") == "😀\ufffd"
        pid = frames[0]["data"]["pid"]
        raw = await live.sse("connect", {"process": {"pid": pid}, "encoding": "base64"})
        data = b"".join(base64.b64decode(f["data"]["stdout"]) for f in raw if f["event"] == "data")
        assert data == "😀".encode() + b"\xff"
    finally:
        await live.close()


@pytest_twisted.ensureDeferred
async def test_live_timeout_kills_group(tmp_path: Any) -> None:
    """timeoutMs kills the process group; the end event reports the kill."""
    live = Live(tmp_path)
    try:
        frames = await live.sse("start", {"process": {"cmd": "/bin/sh", "args": ["-c", "sleep 30 & sleep 30"]},
                                          "timeoutMs": 200})
        assert frames[-1]["event"] == "end" and frames[-1]["data"]["status"] == "signal: killed"
        assert live.spawner.children() == []
    finally:
        await live.close()
