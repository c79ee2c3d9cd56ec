"""
Terminals over a real daemon: real PTY shells driven over real sockets, through the WebSocket
(Autobahn; the Web UI's JSON protocol and ttyd's ``tty`` subprotocol), SSE and REST.

Commands typed into the shell print markers computed by the shell (``$((6*7))`` -> ``42``), so
a line like ``done-42`` comes from running the command, never from the terminal echoing it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted
import treq
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from tests.e2e.conftest import Daemon, start_daemon
from tests.e2e.ws_client import TIMEOUT, Client, HandshakeRefused, Waitable, connect, screen_lines, ws_url

pytestmark = pytest.mark.e2e
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


# The shell of the tests, for a predictable screen: readline echoes a typed line itself, so a command's
# output always starts on a line of its own (where the kernel echoes a line typed before the prompt
# was printed, as with dash, the output shares the prompt's line).
BASH = "/bin/bash"
# Waits for one SIGWINCH in the foreground, then prints the terminal size it sees.
SIGWINCH = ("import os, signal as s; s.pthread_sigmask(s.SIG_BLOCK, [s.SIGWINCH]); print(\"armed\", 6*7, flush=True); "
            "s.sigwait([s.SIGWINCH]); print(\"winch\", *os.get_terminal_size())")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def daemon(module_daemon: Daemon) -> Daemon:
    """One daemon for the module: every test works on terminals (and files) of its own."""
    return module_daemon


# ---------------------------------------------------------------------------- helpers


async def call(daemon: Daemon, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A request to ``/api/v1<path>``: (status, parsed JSON body or None)."""
    kwargs: dict[str, Any] = {"headers": headers or {}}
    if body is not None:
        kwargs["json"] = body
    response = await treq.request(method, daemon.url + "/api/v1" + path, **kwargs).addTimeout(TIMEOUT, _reactor())
    content = await response.content()
    return response.code, json.loads(content) if content else None


async def create(daemon: Daemon, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    """
    A new terminal running ``BASH`` unless ``shell`` says otherwise (``shell=None``: the login shell),
    with ``HOME`` set to the daemon's state directory: the shell reads no start-up files of the user
    running the tests (they may be slow, and a shell killed half-way through them, e.g. during a
    ``pyenv rehash``, can leave a lock behind that stalls every later login shell for a minute).
    """
    body = {"cols": 80, "rows": 24, "shell": BASH, "env": {"HOME": str(daemon.home)}, **body}
    status, answer = await call(daemon, "POST", "/pty", {k: v for k, v in body.items() if v is not None}, headers)
    assert status == 200, answer
    return answer["data"]  # type: ignore[no-any-return]


async def sessions(daemon: Daemon, headers: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    status, answer = await call(daemon, "GET", "/pty", headers=headers)
    assert status == 200, answer
    return {s["id"]: s for s in answer["data"]["sessions"]}


async def has_client(daemon: Daemon, terminal_id: str) -> bool:
    return bool((await sessions(daemon))[terminal_id]["hasClient"])


async def eventually(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``probe`` (every 50 ms) until it is true; AssertionError after ``timeout`` seconds."""
    deadline = _reactor().seconds() + timeout
    while not await probe():
        assert _reactor().seconds() < deadline, f"{what}: not within {timeout} s"
        await deferLater(_reactor(), 0.05)


async def send(daemon: Daemon, terminal_id: str, data: str) -> None:
    """Type ``data`` through ``POST /pty/<id>/input/send``."""
    status, answer = await call(daemon, "POST", f"/pty/{terminal_id}/input/send", {"data": data})
    assert (status, answer) == (200, {"data": {}}), answer


async def dispose(daemon: Daemon, terminal_id: str) -> None:
    """End a test's shell as a user would (``exit``) and delete the terminal; fine if it is already gone."""
    await call(daemon, "POST", f"/pty/{terminal_id}/input/send", {"data": "exit\r"})
    await call(daemon, "DELETE", f"/pty/{terminal_id}")


def pty_ws(daemon: Daemon, terminal_id: str, query: str = "") -> str:
    return ws_url(daemon.url, f"/api/v1/pty/{terminal_id}/ws{query}")


class Sse(Waitable, Protocol):
    """A terminal's SSE output read as it arrives: complete frames as (event, id, data)."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, int | None, Any]] = []
        self._rest = b""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's name)
        *complete, self._rest = (self._rest + data).split(b"\n\n")
        for raw in complete:
            fields: dict[str, str] = {}
            for line in raw.decode().split("\n"):
                if line and not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    fields[key] = value
            if "event" in fields:
                event_id = int(fields["id"]) if "id" in fields else None
                self.frames.append((fields["event"], event_id, json.loads(fields["data"])))
        self._check()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self.ended = f"the response ended: {reason.value!r}"
        self._check()

    def data(self) -> list[tuple[int | None, str]]:
        return [(event_id, d["pty"]) for event, event_id, d in self.frames if event == "data"]

    def text(self) -> str:
        return "".join(chunk for _id, chunk in self.data())

    def lines(self) -> list[str]:
        return screen_lines(self.text())

    async def wait_line(self, line: str) -> None:
        await self.wait_for(lambda s: line in s.lines(), what=f"SSE output line {line!r}")

    def close(self) -> None:
        """Drop the connection (as a browser closing an EventSource does)."""
        assert self.transport is not None
        self.transport.stopProducing()

    def _tail(self) -> str:
        return f"{len(self.frames)} frames, the last ones: {self.frames[-3:]!r}"[:3000]


async def open_sse(daemon: Daemon, terminal_id: str, last_event_id: int | None = None) -> Sse:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    response = await treq.get(daemon.url + f"/api/v1/pty/{terminal_id}/output", headers=headers,
                              unbuffered=True).addTimeout(TIMEOUT, _reactor())
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
    reader = Sse()
    response.deliverBody(reader)
    await reader.wait_for(lambda s: len(s.frames) > 0, what="the start event")
    assert reader.frames[0][0] == "start"
    return reader


def end_of(text: str, line: str) -> int:
    """The index just after the first output line ``line`` (with its CR LF) in raw terminal ``text``."""
    index = text.index(line + "\r\n")
    return index + len(line) + 2


# ---------------------------------------------------------------------------- basics


@pytest_twisted.ensureDeferred
async def test_echo_hi_over_the_websocket(daemon: Daemon) -> None:
    """Create a terminal, type ``echo hi`` over the WebSocket and see ``hi``; ping gets pong; an
    unknown message gets an error message; GET shows the shell's current directory after ``cd``. Without
    ``shell`` the terminal runs the user's login shell."""
    login = await create(daemon, shell=None, command="exit 0")
    assert os.path.isabs(login["shell"]) and os.access(login["shell"], os.X_OK)
    if os.path.isabs(os.environ.get("SHELL", "")) and os.access(os.environ["SHELL"], os.X_OK):
        assert login["shell"] == os.environ["SHELL"]  # the daemon was started with this environment

    async def exited() -> bool:
        return (await sessions(daemon))[login["id"]]["status"] == "exited"

    await eventually(exited, "the login shell running 'exit 0' to end")
    assert (await call(daemon, "DELETE", f"/pty/{login['id']}"))[0] == 200
    created = await create(daemon)
    terminal_id = created["sessionId"]
    try:
        assert created["id"] == terminal_id and created["pid"] > 0 and created["cwd"] == str(daemon.workspace)
        assert (created["cols"], created["rows"], created["status"], created["shell"]) == (80, 24, "running", BASH)
        assert isinstance(created["createdAt"], int) and created["hasClient"] is False
        assert psutil.Process(created["pid"]).exe() == os.path.realpath(BASH)
        client = await connect(pty_ws(daemon, terminal_id))
        assert client.negotiated is None
        client.type("echo hi\r")
        await client.wait_line("hi")
        assert all(m["type"] == "output" for m in client.json_messages())

        client.send_json({"type": "ping"})
        await client.wait_for(lambda c: {"type": "pong"} in c.json_messages(), what="pong")
        client.send_json({"type": "nonsense"})
        client.sendMessage(b"not json", isBinary=False)
        await client.wait_for(lambda c: len([m for m in c.json_messages() if m["type"] == "error"]) == 2,
                              what="two error messages")

        client.type("mkdir -p echo-sub && cd echo-sub && echo cd-$((6*7))\r")
        await client.wait_line("cd-42")
        status, shown = await call(daemon, "GET", f"/pty/{terminal_id}")
        assert status == 200 and shown["data"]["cwd"] == str(daemon.workspace / "echo-sub")
        assert shown["data"]["status"] == "running" and shown["data"]["hasClient"] is True
        await client.close()
    finally:
        await dispose(daemon, terminal_id)


@pytest_twisted.ensureDeferred
async def test_resize_over_websocket_and_rest_then_stty_size(daemon: Daemon) -> None:
    """``stty size`` shows the created size, then the size from a WebSocket ``resize`` message (the
    foreground program gets SIGWINCH), then the size from ``POST /pty/<id>/resize``."""
    terminal_id = (await create(daemon))["id"]
    try:
        client = await connect(pty_ws(daemon, terminal_id))
        client.type("stty size\r")
        await client.wait_line("24 80")

        client.type(f"python3 -c '{SIGWINCH}'\r")
        await client.wait_line("armed 42")
        client.send_json({"type": "resize", "cols": 100, "rows": 30})
        await client.wait_line("winch 100 30")
        client.type("stty size\r")
        await client.wait_line("30 100")

        status, answer = await call(daemon, "POST", f"/pty/{terminal_id}/resize", {"cols": 120, "rows": 40})
        assert (status, answer) == (200, {"data": {}})
        client.type("stty size\r")
        await client.wait_line("40 120")
        status, shown = await call(daemon, "GET", f"/pty/{terminal_id}")
        assert (shown["data"]["cols"], shown["data"]["rows"]) == (120, 40)

        client.send_json({"type": "resize", "cols": 0, "rows": 30})
        await client.wait_for(lambda c: any(m["type"] == "error" for m in c.json_messages()), what="error")
        status, answer = await call(daemon, "POST", f"/pty/{terminal_id}/resize", {"cols": 70000, "rows": 40})
        assert (status, answer["error"]["code"]) == (400, "BAD_REQUEST")
        client.type("stty size\r")
        await client.wait_for(lambda c: c.lines().count("40 120") == 2, what="the size unchanged")
        await client.close()
    finally:
        await dispose(daemon, terminal_id)


# ---------------------------------------------------------------------------- viewers


@pytest_twisted.ensureDeferred
async def test_two_websockets_and_sse_see_the_same_bytes(daemon: Daemon) -> None:
    """Two WebSockets and one SSE viewer get the same output; ``hasClient`` is true while any viewer is
    attached (SSE alone included) and false once all have gone."""
    terminal_id = (await create(daemon))["id"]
    try:
        assert await has_client(daemon, terminal_id) is False
        sse = await open_sse(daemon, terminal_id)
        assert sse.frames[0][1] == 0  # from the start: the whole output is the scrollback
        assert await has_client(daemon, terminal_id) is True
        first = await connect(pty_ws(daemon, terminal_id))
        second = await connect(pty_ws(daemon, terminal_id))

        first.type("seq 1 3000; echo same-$((6*7))\r")
        for viewer in (first, second, sse):
            await viewer.wait_line("same-42")
        views = [first.output(), second.output(), sse.text()]
        cut = [end_of(view, "same-42") for view in views]
        assert cut[0] == cut[1] == cut[2] and views[0][: cut[0]] == views[1][: cut[1]] == views[2][: cut[2]]
        assert "\r\n".join(str(n) for n in range(1, 3001)) in views[0]

        await first.close()
        assert await has_client(daemon, terminal_id) is True  # the second WebSocket and SSE remain
        await second.close()
        assert await has_client(daemon, terminal_id) is True  # SSE remains
        sse.close()

        async def detached() -> bool:
            return not await has_client(daemon, terminal_id)

        await eventually(detached, "hasClient false after every viewer left")
    finally:
        await dispose(daemon, terminal_id)


@pytest_twisted.ensureDeferred
async def test_reconnected_websocket_gets_the_scrollback(daemon: Daemon) -> None:
    """Close the WebSocket, type through REST, reconnect: the new viewer replays what the first one saw
    and then what was typed while nobody watched; the terminal itself lived on."""
    terminal_id = (await create(daemon))["id"]
    try:
        first = await connect(pty_ws(daemon, terminal_id))
        first.type("echo before-$((6*7))\r")
        await first.wait_line("before-42")
        await first.close()
        seen = first.output()

        await send(daemon, terminal_id, "echo away-$((6*7))\r")
        second = await connect(pty_ws(daemon, terminal_id))
        await second.wait_line("away-42")
        assert second.output().startswith(seen), "the reconnected viewer did not get the scrollback"
        assert "echo away-$((6*7))" in second.output()
        second.type("echo again-$((6*7))\r")
        await second.wait_line("again-42")
        await second.close()
    finally:
        await dispose(daemon, terminal_id)


@pytest_twisted.ensureDeferred
async def test_sse_last_event_id_resumes_exactly(daemon: Daemon) -> None:
    """An SSE viewer that drops and reconnects with ``Last-Event-ID`` gets exactly the bytes it missed:
    what it saw plus the resumed stream is the whole output, with no loss and no repeat (and a WebSocket
    opened with ``?offset=`` at that id gets the same bytes)."""
    terminal_id = (await create(daemon))["id"]
    try:
        first = await open_sse(daemon, terminal_id)
        start = first.frames[0][1]
        await send(daemon, terminal_id, "seq 1 2000; echo one-$((6*7))\r")
        await first.wait_line("one-42")
        first.close()
        # A snapshot: frames already in flight may still arrive after close(); they lie beyond last_id.
        seen = first.data()
        first_text = "".join(text for _id, text in seen)
        last_id = seen[-1][0]
        assert last_id is not None and all(event_id is not None for event_id, _text in seen)
        assert last_id == start + len(first_text.encode())

        await send(daemon, terminal_id, "seq 2001 4000; echo two-$((6*7))\r")
        second = await open_sse(daemon, terminal_id, last_event_id=last_id)
        assert second.frames[0][1] == last_id
        await second.wait_line("two-42")
        second.close()
        resumed = first_text + second.text()

        # A WebSocket viewer resumes the same way with ?offset=
        client = await connect(pty_ws(daemon, terminal_id, f"?offset={last_id}"))
        await client.wait_for(lambda c: len(c.output()) >= len(second.text()), what="the WebSocket resume")
        await client.close()
        assert client.output().startswith(second.text()), "the WebSocket resume lost or repeated bytes"

        whole = await open_sse(daemon, terminal_id, last_event_id=start)
        await whole.wait_for(lambda s: len(s.text()) >= len(resumed), what="the whole output")
        whole.close()
        assert whole.text()[: len(resumed)] == resumed, "resuming lost or repeated bytes"
        lines = screen_lines(resumed)
        assert [line for line in lines if line.isdigit()] == [str(n) for n in range(1, 4001)]
    finally:
        await dispose(daemon, terminal_id)


# ---------------------------------------------------------------------------- exit and delete


@pytest_twisted.ensureDeferred
async def test_exit_sends_the_exit_message_and_the_terminal_stays_listed(daemon: Daemon) -> None:
    """``exit 3``: the viewer gets ``{"type":"exit","exitCode":3}`` then a normal close; the terminal is
    listed as exited with code 3 until deleted; input and resize are 409; late viewers get the end."""
    terminal_id = (await create(daemon))["id"]
    try:
        client = await connect(pty_ws(daemon, terminal_id))
        client.type("exit 3\r")
        was_clean, code, _reason = await client.wait_closed()
        assert (was_clean, code) == (True, 1000)
        assert client.json_messages()[-1] == {"type": "exit", "exitCode": 3, "signal": None}
        assert [m["type"] for m in client.json_messages()].count("exit") == 1

        listed = (await sessions(daemon))[terminal_id]
        assert (listed["status"], listed["exitCode"], listed["hasClient"]) == ("exited", 3, False)
        status, shown = await call(daemon, "GET", f"/pty/{terminal_id}")
        assert status == 200 and (shown["data"]["status"], shown["data"]["exitCode"]) == ("exited", 3)
        status, answer = await call(daemon, "POST", f"/pty/{terminal_id}/input/send", {"data": "echo x\r"})
        assert (status, answer["error"]["code"]) == (409, "CONFLICT")
        status, answer = await call(daemon, "POST", f"/pty/{terminal_id}/resize", {"cols": 90, "rows": 20})
        assert (status, answer["error"]["code"]) == (409, "CONFLICT")

        late = await connect(pty_ws(daemon, terminal_id))
        assert (await late.wait_closed())[:2] == (True, 1000)
        assert late.output() == client.output()
        assert late.json_messages()[-1] == {"type": "exit", "exitCode": 3, "signal": None}
        sse = await open_sse(daemon, terminal_id)
        await sse.wait_for(lambda s: s.ended is not None, what="the end of the SSE response")
        assert sse.frames[-1][0] == "end" and sse.frames[-1][2]["exitCode"] == 3
        assert sse.text() == client.output()

        status, answer = await call(daemon, "DELETE", f"/pty/{terminal_id}")
        assert (status, answer) == (200, {"data": {}})
        status, answer = await call(daemon, "GET", f"/pty/{terminal_id}")
        assert (status, answer["error"]["code"]) == (404, "TERMINAL_NOT_FOUND")
        assert terminal_id not in await sessions(daemon)
    finally:
        await dispose(daemon, terminal_id)


def gone(pid: int) -> bool:
    """The process no longer runs (reaped, or a zombie whose parent has not reaped it yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def jobs(daemon: Daemon, terminal_id: str, shell: int) -> tuple[Client, list[int], int]:
    """Start ``sleep 1000 &``, ``nohup sleep 1002 &`` and a foreground ``sleep 1001`` in the terminal;
    (viewer, background pids, foreground pid)."""
    client = await connect(pty_ws(daemon, terminal_id))
    client.type("sleep 1000 & echo bg-pid=$!\r")
    client.type("nohup sleep 1002 >/dev/null 2>&1 & echo nohup-pid=$!\r")
    background: list[int] = []
    for name in ("bg", "nohup"):
        pattern = re.compile(name + r"-pid=(\d+)")
        await client.wait_for(lambda c, p=pattern: p.search(c.output()) is not None, what=f"the {name} pid")
        found = pattern.search(client.output())
        assert found is not None
        background.append(int(found.group(1)))
    client.type("sleep 1001\r")
    foreground: list[int] = []

    async def started() -> bool:
        foreground[:] = [p.pid for p in psutil.Process(shell).children() if p.cmdline() == ["sleep", "1001"]]
        return bool(foreground)

    await eventually(started, "the foreground sleep")
    assert [psutil.Process(pid).cmdline() for pid in background] == [["sleep", "1000"], ["sleep", "1002"]]
    return client, background, foreground[0]


@pytest_twisted.ensureDeferred
async def test_delete_kills_the_shell_and_its_children(daemon: Daemon) -> None:
    """DELETE forgets the terminal at once (GET 404, not listed), the viewer gets ``exit`` and a close, and
    the shell ends with its children: the foreground job and the background jobs (``sleep 1000 &``, and one
    started with ``nohup``, which ignores the hangup), which an interactive shell with job control puts
    in process groups of their own."""
    created = await create(daemon)
    terminal_id, shell = created["id"], created["pid"]
    client, background, foreground = await jobs(daemon, terminal_id, shell)
    try:
        status, answer = await call(daemon, "DELETE", f"/pty/{terminal_id}")
        assert (status, answer) == (200, {"data": {}})
        status, answer = await call(daemon, "GET", f"/pty/{terminal_id}")
        assert (status, answer["error"]["code"]) == (404, "TERMINAL_NOT_FOUND")
        assert terminal_id not in await sessions(daemon)

        async def ended() -> bool:
            return gone(shell) and gone(foreground)

        await eventually(ended, "the shell and its foreground job ending")
        await client.wait_closed()
        assert client.json_messages()[-1]["type"] == "exit"

        async def background_ended() -> bool:
            return all(gone(pid) for pid in background)

        # Everything the daemon does for a DELETE is done once the shell ended; allow a little slack.
        await eventually(background_ended, "the background jobs ending", timeout=3)
    finally:
        for pid in (shell, *background, foreground):
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- security


async def raw_upgrade(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    """A WebSocket upgrade request that the server is expected to refuse: (status, error body)."""
    response = await treq.get(url, headers={**UPGRADE, **headers}).addTimeout(TIMEOUT, _reactor())
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_websocket_origin_and_host_checked(daemon: Daemon) -> None:
    """An upgrade from a foreign Origin (or with a foreign Host, auth none) is refused 403 FORBIDDEN;
    the daemon's own origin and loopback origins are accepted."""
    terminal_id = (await create(daemon))["id"]
    url = daemon.url + f"/api/v1/pty/{terminal_id}/ws"
    try:
        status, answer = await raw_upgrade(url, {"Origin": "http://evil.example"})
        assert (status, answer["error"]["code"]) == (403, "FORBIDDEN")
        status, answer = await raw_upgrade(url, {"Host": "evil.example"})
        assert (status, answer["error"]["code"]) == (403, "FORBIDDEN")
        with pytest.raises(HandshakeRefused, match=r"\[403\]"):
            await connect(url, origin="http://evil.example")
        assert await has_client(daemon, terminal_id) is False

        for origin in (daemon.url, "http://localhost:5173", None):
            client = await connect(url, origin=origin)
            client.send_json({"type": "ping"})
            await client.wait_for(lambda c: {"type": "pong"} in c.json_messages(), what=f"pong ({origin})")
            await client.close()
    finally:
        await dispose(daemon, terminal_id)


@pytest_twisted.ensureDeferred
async def test_websocket_credentials_with_password_auth(tmp_path: Path) -> None:
    """With password auth, an upgrade without credentials is 401 AUTH_REQUIRED; ``?token=`` (the password
    or a login token), ``?password=`` and a Bearer header are accepted; a foreign Origin is 403 even then."""
    daemon = start_daemon(tmp_path, "--auth", "password", env={"CODEBUDDY_GATEWAY_PASSWORD": "pw"})
    bearer = {"Authorization": "Bearer pw"}
    try:
        status, answer = await call(daemon, "POST", "/pty", {"cols": 80, "rows": 24})
        assert (status, answer["error"]["code"]) == (401, "AUTH_REQUIRED")
        terminal_id = (await create(daemon, headers=bearer))["id"]
        url = daemon.url + f"/api/v1/pty/{terminal_id}/ws"

        status, answer = await raw_upgrade(url, {})
        assert (status, answer["error"]["code"]) == (401, "AUTH_REQUIRED")
        with pytest.raises(HandshakeRefused, match=r"\[401\]"):
            await connect(url)
        status, login = await call(daemon, "POST", "/auth/login", {"password": "pw"})
        assert status == 200 and login["token"]
        token = login["token"]

        for query, headers in (("?token=pw", {}), ("?password=pw", {}), (f"?token={token}", {}),
                               ("", {"Authorization": f"Bearer {token}"})):
            client = await connect(url + query, headers=headers)
            client.type("echo auth-$((6*7))\r")
            await client.wait_line("auth-42")
            await client.close()

        status, answer = await raw_upgrade(url + f"?token={token}", {"Origin": "http://evil.example"})
        assert (status, answer["error"]["code"]) == (403, "FORBIDDEN")
        status, answer = await raw_upgrade(url + "?token=wrong", {})
        assert (status, answer["error"]["code"]) == (401, "AUTH_INVALID")
        await call(daemon, "POST", f"/pty/{terminal_id}/input/send", {"data": "exit\r"}, bearer)
    finally:
        daemon.stop()


# ---------------------------------------------------------------------------- data


@pytest_twisted.ensureDeferred
async def test_one_megabyte_paste_arrives_intact(daemon: Daemon) -> None:
    """A ~1 MB paste in one ``input`` message (base64 lines) reaches ``cat > file`` byte for byte."""
    pasted = base64.encodebytes(os.urandom(786_432)).decode()  # 76 columns and a newline: 1,062,300 bytes
    assert len(pasted) > 1_000_000
    terminal_id = (await create(daemon))["id"]
    target = daemon.workspace / "paste.txt"
    try:
        client = await connect(pty_ws(daemon, terminal_id))
        client.type("stty -echo; echo ready-$((6*7)); cat > paste.txt; echo done-$((6*7))\r")
        await client.wait_line("ready-42")  # echo is off and cat comes next: the paste is typed-ahead input
        client.type(pasted)
        client.type("\x04")  # Ctrl-D at the start of a line: end of input for cat
        await client.wait_line("done-42", timeout=30)
        data = target.read_bytes()
        assert len(data) == len(pasted)
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(pasted.encode()).hexdigest()
        await client.close()
    finally:
        await dispose(daemon, terminal_id)


@pytest_twisted.ensureDeferred
async def test_utf8_output_never_split(daemon: Daemon) -> None:
    """``cat`` of 500 kB of 1-, 2-, 3- and 4-byte characters: the PTY's reads end inside characters (a
    ``tty`` viewer's raw frames show it), yet every JSON ``output`` message holds whole characters only:
    all arrive intact, no U+FFFD."""
    unit = "aé€😀"  # 10 bytes
    (daemon.workspace / "utf8.txt").write_text(unit * 50_000, encoding="utf-8")
    terminal_id = (await create(daemon))["id"]
    try:
        client = await connect(pty_ws(daemon, terminal_id))
        raw = await connect(pty_ws(daemon, terminal_id), protocols=["tty"])
        client.type("cat utf8.txt; echo; echo utf8-$((6*7))\r")
        await client.wait_line("utf8-42")
        await raw.wait_for(lambda c: b"\nutf8-42\r\n" in c.tty_output(), what="the tty viewer's output")

        def splits_a_character(frame: bytes) -> bool:
            try:
                frame.decode("utf-8")
            except UnicodeDecodeError:
                return True
            return False

        assert (unit * 50_000).encode() in raw.tty_output()
        assert any(splits_a_character(frame) for frame in raw.tty_frames(b"0")), "no read ended inside a character"
        assert unit * 50_000 in client.output()
        assert not any("\ufffd" in m.get("data", "") for m in client.json_messages())
        await client.close()
        await raw.close()
    finally:
        await dispose(daemon, terminal_id)


@pytest_twisted.ensureDeferred
async def test_tty_subprotocol(daemon: Daemon) -> None:
    """ttyd's framing: ``tty`` is negotiated, the server sends its title (1) and preferences (2), input
    is ``0``-prefixed bytes, output comes back ``0``-prefixed, and ``1{"columns","rows"}`` resizes (as
    does the client's initial JSON message)."""
    terminal_id = (await create(daemon))["id"]
    try:
        client = await connect(pty_ws(daemon, terminal_id), protocols=["tty"])
        assert client.negotiated == "tty"
        await client.wait_for(lambda c: len(c.messages) >= 2, what="title and preferences")
        (title, title_binary), (prefs, prefs_binary) = client.messages[:2]
        assert title_binary and title[:1] == b"1" and len(title) > 1
        assert prefs_binary and prefs[:1] == b"2" and isinstance(json.loads(prefs[1:]), dict)
        assert all(binary for _payload, binary in client.messages)

        client.sendMessage(json.dumps({"AuthToken": "", "columns": 85, "rows": 20}).encode(), isBinary=True)
        client.sendMessage(b"0echo tty-ok-$((6*7)); stty size\r", isBinary=True)

        def lines(c: Client) -> list[str]:
            return screen_lines(c.tty_output().decode("utf-8", "replace"))

        await client.wait_for(lambda c: "tty-ok-42" in lines(c) and "20 85" in lines(c), what="tty output")
        client.sendMessage(b'1{"columns":90,"rows":33}', isBinary=True)
        client.sendMessage(b"0stty size\r", isBinary=True)
        await client.wait_for(lambda c: "33 90" in lines(c), what="stty size 33 90")
        assert all(binary and payload[:1] in b"012" for payload, binary in client.messages)
        await client.close()
    finally:
        await dispose(daemon, terminal_id)
