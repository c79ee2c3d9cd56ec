"""
The terminal routes through the real resource tree (StubTreq, in memory) over a real Spawner:
shells and commands run in real PTYs on the real reactor, while the timers of the terminal and process tables
and the SSE heartbeats run on a ``Clock``.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from codebuddy.process.manager import ProcessManager
from codebuddy.process.spawn import ExitInfo, Spawner
from codebuddy.terminals.manager import Terminal, TerminalManager
from codebuddy.terminals.routes import TerminalRoutes
from codebuddy.web.auth import RequestGuard
from tests.helpers import ApiFixture
from tests.process.test_routes import parse_sse

WAIT = 10
ENDING_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGKILL)  # how a deleted terminal ends
UNKNOWN = "00000000-0000-0000-0000-000000000000"
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Fixture(ApiFixture):
    """ApiFixture with TerminalRoutes: real PTY children, the terminal and process tables on the fixture's Clock."""

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace

        def areas(guard: RequestGuard, clock: Clock) -> list[Any]:
            self.spawner = Spawner(_reactor(), environ={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                   default_cwd=workspace, kill_grace=2.0)
            self.spawner.startService()
            # The process table on the Clock too: the buffer announces its end from the clock, so an
            # in-memory SSE response of an exited terminal completes while the fixture pumps.
            processes = ProcessManager(self.spawner, workspace, clock)
            self.manager = TerminalManager(processes, clock, environ={"SHELL": "/bin/sh"}, idle_timeout=10,
                                           exited_retention=60)
            return [TerminalRoutes(self.manager, clock)]

        super().__init__(areas)

    def create(self, **body: Any) -> dict[str, Any]:
        status, answer, _r = self.json("POST", "/api/v1/pty", json={"cols": 80, "rows": 24, **body})
        assert status == 200, answer
        return answer["data"]  # type: ignore[no-any-return]

    async def finished(self, terminal_id: str) -> tuple[ExitInfo, list[dict[str, Any]]]:
        """Wait (bounded) for the terminal's process to end; its exit and its whole SSE output."""
        info = await self.manager.get(terminal_id).proc.ended().addTimeout(WAIT, _reactor())
        response, body = self.request("GET", f"/api/v1/pty/{terminal_id}/output")
        assert response.code == 200
        return info, parse_sse(body)


def text(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"]["pty"] for f in frames if f["event"] == "data")


@pytest.fixture
def api(tmp_path: Any) -> Iterator[Fixture]:
    fixture = Fixture(str(tmp_path))
    yield fixture
    for child in fixture.spawner.children():
        child.signal(signal.SIGKILL)


def assert_error(result: tuple[int, Any, Any], status: int, code: str) -> dict[str, Any]:
    actual, body, _response = result
    assert (actual, body["error"]["code"]) == (status, code), body
    assert isinstance(body["error"]["message"], str)
    return body["error"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- errors


def test_unknown_id_is_404_on_every_route(api: Fixture) -> None:
    """Every /pty/<id> route answers 404 TERMINAL_NOT_FOUND for an id that is not a terminal."""
    for method, path, kwargs in [
        ("GET", "", {}),
        ("DELETE", "", {}),
        ("POST", "/input/send", {"json": {"data": "x"}}),
        ("POST", "/resize", {"json": {"cols": 80, "rows": 24}}),
        ("GET", "/output", {"headers": {"Accept": "text/event-stream"}}),
        ("GET", "/ws", {}),
        ("GET", "/ws", {"headers": UPGRADE}),
    ]:
        for terminal_id in (UNKNOWN, "nope"):
            result = api.json(method, f"/api/v1/pty/{terminal_id}{path}", **kwargs)
            assert_error(result, 404, "TERMINAL_NOT_FOUND")


@pytest.mark.parametrize("size", [0, -1, 70000, 65536, "80", "", True, False, 1.5, None, [80], {"n": 1}])
def test_bad_sizes_are_400_on_create(api: Fixture, size: Any) -> None:
    """cols and rows must be integers in 1..65535 (not strings, booleans, floats or null); nothing starts."""
    for body in ({"cols": size, "rows": 24}, {"cols": 80, "rows": size}):
        assert_error(api.json("POST", "/api/v1/pty", json=body), 400, "BAD_REQUEST")
    assert api.manager.terminals() == [] and api.spawner.children() == []


@pytest.mark.parametrize("command", [123, True, {"cmd": "ls"}, [1, 2], ["echo", 1], ["echo", None], []])
def test_bad_command_types_are_400(api: Fixture, command: Any) -> None:
    """command is a string or a non-empty list of strings."""
    assert_error(api.json("POST", "/api/v1/pty", json={"cols": 80, "rows": 24, "command": command}), 400,
                 "BAD_REQUEST")
    assert api.manager.terminals() == []


def test_bad_create_bodies_are_400(api: Fixture, tmp_path: Any) -> None:
    """A missing shell, a missing cwd, a non-object body, env that is not strings: 400, nothing listed."""
    for body in ({"shell": str(tmp_path / "no-such-shell")}, {"shell": "/nonexistent/bin/zsh"},
                 {"command": ["/nonexistent/prog"]}, {"cwd": "no/such/dir"}, {"env": {"A": 1}}, {"env": ["A=1"]},
                 {"shell": 5}, {"cwd": 5}):
        assert_error(api.json("POST", "/api/v1/pty", json={"cols": 80, "rows": 24, **body}), 400, "BAD_REQUEST")
    for raw in (b"[]", b"not json", b'"x"'):
        result = api.json("POST", "/api/v1/pty", data=raw, headers={"Content-Type": "application/json"})
        assert_error(result, 400, "BAD_REQUEST")
    assert api.json("GET", "/api/v1/pty")[1] == {"data": {"sessions": []}}


def test_non_upgrade_get_on_ws_is_400(api: Fixture) -> None:
    """A plain GET on the WebSocket route is 400 BAD_REQUEST; so is a negative resume offset."""
    terminal = api.create(command=["sleep", "30"])
    error = assert_error(api.json("GET", f"/api/v1/pty/{terminal['id']}/ws"), 400, "BAD_REQUEST")
    assert "websocket" in error["message"].lower()
    assert_error(api.json("GET", f"/api/v1/pty/{terminal['id']}/ws?offset=-1", headers=UPGRADE), 400, "BAD_REQUEST")
    assert_error(api.json("GET", f"/api/v1/pty/{terminal['id']}/ws?offset=x", headers=UPGRADE), 400, "BAD_REQUEST")
    assert api.manager.get(terminal["id"]).viewers == 0


def test_bad_input_and_resize_bodies_are_400(api: Fixture) -> None:
    """input/send: bad base64, an unknown encoding, non-string data; resize: bad sizes. All 400."""
    terminal = api.create(command=["sleep", "30"])
    base = f"/api/v1/pty/{terminal['id']}"
    for body in ({"data": "not base64!", "encoding": "base64"}, {"data": "QUJ", "encoding": "base64"},
                 {"data": "x", "encoding": "hex"}, {"data": 5}, {"data": None}, {}, {"data": ["x"]}):
        assert_error(api.json("POST", base + "/input/send", json=body), 400, "BAD_REQUEST")
    for cols, rows in ((0, 24), (-1, 24), (70000, 24), (80, 65536), ("80", 24), (True, 24), (80, False), (None, 24)):
        assert_error(api.json("POST", base + "/resize", json={"cols": cols, "rows": rows}), 400, "BAD_REQUEST")
    assert_error(api.json("POST", base + "/resize", json={"cols": 80}), 400, "BAD_REQUEST")
    shown = api.json("GET", base)[1]["data"]
    assert (shown["cols"], shown["rows"]) == (80, 24)


# ---------------------------------------------------------------------------- real terminals


@pytest_twisted.ensureDeferred
async def test_command_line_runs_in_the_shell(api: Fixture) -> None:
    """``command: "echo x"`` is run by the shell (variables expand; TERM is set) and the terminal is then
    listed as exited with its code; GET shows it, and it answers with the fields the Web UI reads."""
    created = api.create(command="echo x $((6*7)) $TERM $FOO; exit 5", env={"FOO": "bar"}, cols=100, rows=30)
    assert created["sessionId"] == created["id"] and created["pid"] > 0
    assert (created["cols"], created["rows"], created["shell"]) == (100, 30, "/bin/sh")
    assert created["cwd"] == api.workspace and isinstance(created["createdAt"], int)
    assert created["status"] == "running" and created["hasClient"] is False and created["exitCode"] is None
    info, frames = await api.finished(created["id"])
    assert info == ExitInfo(5, None)
    assert text(frames) == "x 42 xterm-256color bar\r\n"
    assert frames[-1]["event"] == "end" and frames[-1]["data"]["exitCode"] == 5
    shown = api.json("GET", f"/api/v1/pty/{created['id']}")[1]["data"]
    assert (shown["status"], shown["exitCode"], shown["pid"]) == ("exited", 5, created["pid"])
    (listed,) = api.json("GET", "/api/v1/pty")[1]["data"]["sessions"]
    assert listed == shown
    assert_error(api.json("POST", f"/api/v1/pty/{created['id']}/input/send", json={"data": "x"}), 409, "CONFLICT")
    assert_error(api.json("POST", f"/api/v1/pty/{created['id']}/resize", json={"cols": 90, "rows": 20}), 409,
                 "CONFLICT")


@pytest_twisted.ensureDeferred
async def test_command_list_runs_argv_directly(api: Fixture) -> None:
    """``command: ["printf", "a b"]`` runs printf with the one argument ``a b`` (no shell splitting)."""
    created = api.create(command=["printf", "a b"])
    info, frames = await api.finished(created["id"])
    assert info == ExitInfo(0, None) and text(frames) == "a b"


@pytest_twisted.ensureDeferred
async def test_input_send_text_and_base64_and_resize(api: Fixture) -> None:
    """Text input, base64 input and a resize all reach a real shell: ``stty size`` shows the new size."""
    created = api.create(shell="/bin/sh", cwd=".")
    base = f"/api/v1/pty/{created['id']}"
    assert api.json("POST", base + "/resize", json={"cols": 123, "rows": 45})[:2] == (200, {"data": {}})
    assert api.json("POST", base + "/input/send", json={"data": "stty size; "})[0] == 200
    raw = "echo é-$((6*7)); exit 7\r".encode()
    assert api.json("POST", base + "/input/send", json={"data": _b64(raw), "encoding": "base64"})[0] == 200
    info, frames = await api.finished(created["id"])
    assert info == ExitInfo(7, None)
    # dash echoes nothing itself: a line typed before its prompt shows before it, and the output follows
    # the prompt on the same line; so look at how lines end.
    lines = text(frames).split("\r\n")
    assert any(line.endswith("45 123") for line in lines) and any(line.endswith("é-42") for line in lines), lines
    shown = api.json("GET", base)[1]["data"]
    assert (shown["cols"], shown["rows"]) == (123, 45)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


@pytest_twisted.ensureDeferred
async def test_sse_resume_and_scrollback(api: Fixture) -> None:
    """SSE ids are byte offsets: ``Last-Event-ID`` resumes exactly; without it a viewer gets the scrollback."""
    created = api.create(command=["seq", "1", "3000"])
    _info, frames = await api.finished(created["id"])
    whole = text(frames)
    assert whole == "".join(f"{n}\r\n" for n in range(1, 3001))
    assert frames[0]["event"] == "start" and frames[0]["id"] == "0"
    for cut in (1, len(whole) // 2, len(whole) - 1):
        response, body = api.request("GET", f"/api/v1/pty/{created['id']}/output",
                                     headers={"Last-Event-ID": str(cut)})
        rest = parse_sse(body)
        assert rest[0]["id"] == str(cut) and text(rest) == whole[cut:]
    response, body = api.request("GET", f"/api/v1/pty/{created['id']}/output?after=10")
    assert text(parse_sse(body)) == whole[10:]


@pytest_twisted.ensureDeferred
async def test_delete_ends_the_process_and_forgets_the_terminal(api: Fixture) -> None:
    """DELETE answers at once; the terminal is no longer listed, GET is 404, and the shell ends."""
    created = api.create(command="exec sleep 60")
    proc = api.manager.get(created["id"]).proc
    assert api.json("DELETE", f"/api/v1/pty/{created['id']}")[:2] == (200, {"data": {}})
    assert_error(api.json("GET", f"/api/v1/pty/{created['id']}"), 404, "TERMINAL_NOT_FOUND")
    assert api.json("GET", "/api/v1/pty")[1]["data"]["sessions"] == []
    info = await proc.ended().addTimeout(WAIT, _reactor())
    assert info.exit_code is None and info.signal in ENDING_SIGNALS, info
    assert_error(api.json("DELETE", f"/api/v1/pty/{created['id']}"), 404, "TERMINAL_NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_idle_reaping_and_expiry_through_the_api(api: Fixture) -> None:
    """On the fixture's clock: a terminal nobody views is ended after the idle timeout; an SSE viewer on
    another keeps it alive and shows ``hasClient``; exited terminals expire after the retention."""
    idle = api.create(command="exec sleep 60")
    viewed = api.create(command="exec sleep 60")
    viewed_terminal: Terminal = api.manager.get(viewed["id"])
    viewed_terminal.attach()  # what the SSE and WebSocket routes do for their viewers
    sessions = {s["id"]: s for s in api.json("GET", "/api/v1/pty")[1]["data"]["sessions"]}
    assert sessions[viewed["id"]]["hasClient"] is True and sessions[idle["id"]]["hasClient"] is False
    idle_proc = api.manager.get(idle["id"]).proc
    api.clock.advance(10.5)
    assert [s["id"] for s in api.json("GET", "/api/v1/pty")[1]["data"]["sessions"]] == [viewed["id"]]
    assert (await idle_proc.ended().addTimeout(WAIT, _reactor())).signal in ENDING_SIGNALS
    viewed_terminal.detach()
    assert api.json("GET", f"/api/v1/pty/{viewed['id']}")[1]["data"]["hasClient"] is False

    short = api.create(command=["true"])
    await api.manager.get(short["id"]).proc.ended().addTimeout(WAIT, _reactor())
    api.clock.advance(59)
    assert api.json("GET", f"/api/v1/pty/{short['id']}")[1]["data"]["status"] == "exited"
    api.clock.advance(2)
    assert_error(api.json("GET", f"/api/v1/pty/{short['id']}"), 404, "TERMINAL_NOT_FOUND")


# ---------------------------------------------------------------------------- OpenAPI


def test_openapi_lists_every_pty_route(api: Fixture) -> None:
    """/api/openapi.json documents every terminal route with its method."""
    status, doc, _r = api.json("GET", "/api/openapi.json")
    assert status == 200
    ops = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    expected = {
        ("POST", "/api/v1/pty"),
        ("GET", "/api/v1/pty"),
        ("GET", "/api/v1/pty/{terminal_id}"),
        ("DELETE", "/api/v1/pty/{terminal_id}"),
        ("POST", "/api/v1/pty/{terminal_id}/input/send"),
        ("POST", "/api/v1/pty/{terminal_id}/resize"),
        ("GET", "/api/v1/pty/{terminal_id}/output"),
        ("GET", "/api/v1/pty/{terminal_id}/ws"),
    }
    assert expected <= ops, expected - ops
    assert {op for op in ops if op[1].startswith("/api/v1/pty")} == expected
    create = doc["paths"]["/api/v1/pty"]["post"]
    assert "requestBody" in create and json.dumps(create).count("TERMINAL_NOT_FOUND") == 0
