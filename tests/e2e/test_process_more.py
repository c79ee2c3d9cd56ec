"""
The process area over a real daemon, beyond the spec's examples: no fd or child leaks over many
start/exit cycles, backpressure without loss, input applied as a streamed body arrives, PTY resize,
and resuming with ``Last-Event-ID`` without loss or repeat.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import pytest_twisted
import treq
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.e2e
TIMEOUT = 15.0
SSE_HEADERS = {"Accept": "text/event-stream", "Content-Type": "application/json"}


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def daemon(drained_daemon: Daemon) -> Daemon:
    """The tests here start many processes, and the daemon logs a line per start: drain its output."""
    return drained_daemon


# ---------------------------------------------------------------------------- blocking HTTP helpers


class Connection(http.client.HTTPConnection):
    """An HTTP connection whose socket gets ``SO_RCVBUF`` before connecting (a small TCP window)."""

    def __init__(self, daemon: Daemon, rcvbuf: int | None = None, timeout: float = TIMEOUT) -> None:
        url = urlsplit(daemon.url)
        super().__init__(url.hostname or "127.0.0.1", url.port, timeout=timeout)
        self.rcvbuf = rcvbuf

    def connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = sock


def post(daemon: Daemon, path: str, body: Any) -> tuple[int, Any]:
    """A JSON POST to ``/api/v1/process/<path>`` on its own connection: (status, parsed body)."""
    conn = Connection(daemon)
    try:
        conn.request("POST", "/api/v1/process/" + path, body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def listing(daemon: Daemon) -> list[dict[str, Any]]:
    conn = Connection(daemon)
    try:
        conn.request("GET", "/api/v1/process/list")
        return json.loads(conn.getresponse().read())["data"]["processes"]
    finally:
        conn.close()


class Events:
    """An SSE response read incrementally: frames as (event, id, data) as they complete."""

    def __init__(self, daemon: Daemon, path: str, body: Any, headers: dict[str, str] | None = None,
                 rcvbuf: int | None = None) -> None:
        self.conn = Connection(daemon, rcvbuf)
        self.conn.request("POST", "/api/v1/process/" + path, body=json.dumps(body),
                          headers={**SSE_HEADERS, **(headers or {})})
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.getheader("content-type", "").startswith("text/event-stream")
        self._tail = b""
        self.eof = False

    def read(self, size: int = 65536) -> list[tuple[str, int | None, Any]]:
        """The frames completed by one read of at most ``size`` bytes (blocks; [] at EOF)."""
        data = self.response.read1(size)
        if not data:
            self.eof = True
            return []
        *frames, self._tail = (self._tail + data).split(b"\n\n")
        out = []
        for frame in frames:
            fields: dict[str, str] = {}
            for line in frame.decode().split("\n"):
                if line and not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    fields[key] = value
            if "event" in fields:
                out.append((fields["event"], int(fields["id"]) if "id" in fields else None, json.loads(fields["data"])))
        return out

    def frames(self) -> Iterator[tuple[str, int | None, Any]]:
        """Every remaining frame, to the end of the response."""
        while not self.eof:
            yield from self.read()

    def until(self, condition: Callable[[list[tuple[str, int | None, Any]]], bool],
              seen: list[tuple[str, int | None, Any]] | None = None) -> list[tuple[str, int | None, Any]]:
        """Read (bounded by the socket timeout and a deadline) until ``condition(frames so far)``."""
        seen = [] if seen is None else seen
        deadline = time.monotonic() + TIMEOUT
        while not condition(seen):
            assert not self.eof, f"the stream ended first: {seen[-5:]}"
            assert time.monotonic() < deadline, f"condition not met in {TIMEOUT}s: {seen[-5:]}"
            seen.extend(self.read())
        return seen

    def close(self) -> None:
        self.conn.close()


def text(frames: list[tuple[str, int | None, Any]], stream: str = "stdout") -> str:
    return "".join(data.get(stream, "") for event, _id, data in frames if event == "data")


def poll(condition: Callable[[], bool], timeout: float = TIMEOUT, interval: float = 0.05) -> bool:
    """True as soon as ``condition()`` is; False after ``timeout`` seconds without it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# ---------------------------------------------------------------------------- start/exit cycles

TRUE = {"process": {"cmd": "true"}, "wait": True}
BATCH = 20


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, status) of every descendant, zombies included."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            out.append((child.pid, child.status()))
        except psutil.NoSuchProcess:
            pass
    return out


async def start_true(daemon: Daemon, pool: HTTPConnectionPool) -> tuple[int, Any]:
    response = await treq.post(daemon.url + "/api/v1/process/start", json=TRUE, pool=pool).addTimeout(
        TIMEOUT, _reactor()
    )
    return response.code, json.loads(await response.content())


async def cycles(daemon: Daemon, pool: HTTPConnectionPool, count: int) -> list[Any]:
    """``count`` waited-for starts of ``true``, ``BATCH`` at a time; their answers' data."""
    answers = []
    for first in range(0, count, BATCH):
        batch = [ensureDeferred(start_true(daemon, pool)) for _ in range(min(BATCH, count - first))]
        for status, body in await gatherResults(batch, consumeErrors=True):
            assert status == 200 and body["data"]["exitCode"] == 0, body
            answers.append(body["data"])
    return answers


async def settle(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """:func:`poll` without blocking the reactor."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await deferLater(_reactor(), 0.05)
    return True


@pytest_twisted.ensureDeferred
async def test_start_exit_cycles_leave_no_fds_or_children(daemon: Daemon) -> None:
    """1,000 start/exit cycles of ``true`` over one pool leave the daemon's fd count and children as they were."""
    pid = daemon.process.pid
    pool = HTTPConnectionPool(_reactor(), persistent=True)
    pool.maxPersistentPerHost = BATCH
    try:
        await cycles(daemon, pool, BATCH)  # warm up: connections, lazily created reactor fds
        fds, kids = fd_count(pid), children(pid)
        await cycles(daemon, pool, 1000)
        await settle(lambda: fd_count(pid) <= fds + 2 and children(pid) == kids)
        assert children(pid) == kids, "children (zombies included) left after 1,000 cycles"
        assert fd_count(pid) <= fds + 2, (fds, sorted(os.listdir(f"/proc/{pid}/fd"), key=int))
    finally:
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_fast_exits_report_their_pid(daemon: Daemon) -> None:
    """Every waited-for ``true`` answers with its real pid, however fast it exits (up to 500 tries)."""
    pool = HTTPConnectionPool(_reactor(), persistent=True)
    pool.maxPersistentPerHost = BATCH
    try:
        for _ in range(500 // BATCH):
            for answer in await cycles(daemon, pool, BATCH):
                assert isinstance(answer["pid"], int) and answer["pid"] > 0, answer
    finally:
        await pool.closeCachedConnections()


# ---------------------------------------------------------------------------- backpressure

MIB = 1024 * 1024
ZEROS = 50 * MIB


def test_backpressure_pauses_child_and_loses_nothing(daemon: Daemon) -> None:
    """
    ``head -c 50M /dev/zero | base64`` to an SSE client that stalls after the ``start`` event: the
    child is paused (it blocks with at most a few MiB written and stays ``running``) instead of its
    output being dropped; once the client reads, every byte arrives exactly once and every ``data``
    id is the byte offset just after its data.
    """
    expected = base64.encodebytes(bytes(ZEROS))  # GNU base64's layout: 76 columns, a final newline
    assert len(expected) == 4 * -(-ZEROS // 3) + -(-4 * -(-ZEROS // 3) // 76)
    command = {"process": {"cmd": "/bin/sh", "args": ["-c", "head -c 50M /dev/zero | base64"]}, "tag": "bp"}
    events = Events(daemon, "start", command, rcvbuf=16 * 1024)
    try:
        first = events.until(lambda seen: len(seen) > 0)
        assert first[0][0] == "start"
        leader = psutil.Process(first[0][2]["pid"])

        def encoder() -> psutil.Process | None:
            found = [p for p in leader.children(recursive=True) if p.name() == "base64"]
            return found[0] if found else None

        assert poll(lambda: encoder() is not None), "base64 did not start"
        child = encoder()
        assert child is not None
        samples: list[int] = []

        def blocked() -> bool:
            samples.append(child.io_counters().write_chars)
            return len(samples) >= 4 and len(set(samples[-4:])) == 1

        # The client reads nothing now. Stay well within the daemon's 10 s stall bound.
        assert poll(blocked, timeout=6.0, interval=0.1), f"the child never blocked: wrote {samples[-4:]}"
        written = samples[-1]
        assert child.is_running() and written < 16 * MIB, f"the child wrote {written} bytes to a stalled client"
        rows = [r for r in listing(daemon) if r["pid"] == leader.pid]
        assert rows and rows[0]["status"] == "running", rows

        digest = hashlib.sha256()
        received = 0
        end = None
        for event, event_id, data in events.frames():
            assert event != "lagged", "the stalled client was detached"
            if event == "data":
                chunk = data["stdout"].encode()
                digest.update(chunk)
                received += len(chunk)
                assert event_id == received, f"data id {event_id} after {received} bytes"
            elif event == "end":
                end = data
        assert end == {"exitCode": 0, "exited": True, "status": "exit status 0"}, end
        assert received == len(expected)
        assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
    finally:
        events.close()


# ---------------------------------------------------------------------------- input/stream


def test_input_stream_applies_lines_as_the_body_arrives(daemon: Daemon) -> None:
    """A chunked ``input/stream`` body's first input line reaches ``cat`` (seen on its SSE stream) before
    the body is finished; the answer comes at the end of the body; the full output is exact."""
    assert post(daemon, "start", {"process": {"cmd": "cat"}, "tag": "in"})[0] == 200
    events = Events(daemon, "connect", {"process": {"tag": "in"}})
    url = urlsplit(daemon.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=TIMEOUT)

    def chunk(payload: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(payload), payload)

    try:
        sock.sendall(
            b"POST /api/v1/process/input/stream HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % url.netloc.encode()
        )
        sock.sendall(chunk(b'{"process": {"tag": "in"}}\n{"input": {"stdin": "first line\\n"}}\n'))
        seen = events.until(lambda frames: text(frames) == "first line\n")
        assert select.select([sock], [], [], 0)[0] == [], "answered before the body was finished"
        sock.sendall(chunk(b'{"input": {"stdin": "second'))
        sock.sendall(chunk(b' line\\n"}}\n') + b"0\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, json.loads(response.read())) == (200, {"data": {}})
    finally:
        sock.close()
    try:
        assert post(daemon, "stdin/close", {"process": {"tag": "in"}})[0] == 200
        seen.extend(events.frames())
        assert text(seen) == "first line\nsecond line\n"
        assert seen[-1][0] == "end" and seen[-1][2]["exitCode"] == 0
    finally:
        events.close()


# ---------------------------------------------------------------------------- PTY resize


def test_pty_resize_via_update(daemon: Daemon) -> None:
    """``stty size`` in a PTY shell shows the start size, then the size set by ``process/update``."""
    status, body = post(daemon, "start", {"process": {"cmd": "/bin/sh"}, "tag": "tty",
                                          "pty": {"size": {"cols": 80, "rows": 24}}})
    assert status == 200, body
    events = Events(daemon, "connect", {"process": {"tag": "tty"}})
    try:
        assert post(daemon, "input/send", {"process": {"tag": "tty"}, "input": {"pty": "stty size\n"}})[0] == 200
        seen = events.until(lambda frames: "24 80\r\n" in text(frames, "pty"))
        mark = len(text(seen, "pty"))
        status, body = post(daemon, "update", {"process": {"tag": "tty"}, "pty": {"size": {"cols": 100, "rows": 30}}})
        assert (status, body) == (200, {"data": {}})
        assert post(daemon, "input/send", {"process": {"tag": "tty"}, "input": {"pty": "stty size\n"}})[0] == 200
        events.until(lambda frames: "30 100\r\n" in text(frames, "pty")[mark:], seen)
        assert post(daemon, "input/send", {"process": {"tag": "tty"}, "input": {"pty": "exit\n"}})[0] == 200
        seen.extend(events.frames())
        assert seen[-1][0] == "end" and seen[-1][2]["exitCode"] == 0, seen[-1]
    finally:
        events.close()


# ---------------------------------------------------------------------------- Last-Event-ID


def test_last_event_id_resumes_exactly_after_exit(daemon: Daemon) -> None:
    """For several event ids of a finished process's stream, what was read up to the id plus a reconnect
    with ``Last-Event-ID: <id>`` is exactly the whole output."""
    status, body = post(daemon, "start", {"process": {"cmd": "seq", "args": ["1", "100000"]}, "wait": True})
    assert status == 200 and body["data"]["truncated"] is False
    whole = body["data"]["stdout"]
    assert whole == "".join(f"{n}\n" for n in range(1, 100001))
    pid = body["data"]["pid"]
    events = Events(daemon, "connect", {"process": {"pid": pid}})
    try:
        frames = list(events.frames())
    finally:
        events.close()
    data = [(event_id, payload["stdout"]) for event, event_id, payload in frames if event == "data"]
    assert "".join(chunk for _id, chunk in data) == whole and len(data) > 3, len(data)
    assert all(event_id is not None for event_id, _chunk in data)
    for index in sorted({0, 1, len(data) // 3, len(data) // 2, len(data) - 2, len(data) - 1}):
        last_id = data[index][0]
        seen = "".join(chunk for _id, chunk in data[: index + 1])
        resumed = Events(daemon, "connect", {"process": {"pid": pid}}, headers={"Last-Event-ID": str(last_id)})
        try:
            rest = list(resumed.frames())
        finally:
            resumed.close()
        assert rest[0][:2] == ("start", last_id) and rest[-1][0] == "end", (rest[0], rest[-1])
        assert seen + text(rest) == whole, f"resume from id {last_id} lost or repeated bytes"


def test_last_event_id_resumes_exactly_while_running(daemon: Daemon) -> None:
    """A client that drops mid-stream and reconnects with ``Last-Event-ID`` while more output arrives
    gets exactly the bytes it had not seen."""
    assert post(daemon, "start", {"process": {"cmd": "cat"}, "tag": "resume"})[0] == 200
    lines = [f"line {n:04d}\n" for n in range(300)]

    def send(batch: list[str]) -> None:
        status, _ = post(daemon, "input/send", {"process": {"tag": "resume"}, "input": {"stdin": "".join(batch)}})
        assert status == 200

    first = Events(daemon, "connect", {"process": {"tag": "resume"}})
    try:
        for n in range(0, 100, 10):
            send(lines[n : n + 10])
        seen = first.until(lambda frames: text(frames).endswith(lines[99]))
    finally:
        first.close()
    last_id = [event_id for event, event_id, _data in seen if event_id is not None][-1]
    assert last_id == len("".join(lines[:100]))
    for n in range(100, 300, 10):
        send(lines[n : n + 10])
    assert post(daemon, "stdin/close", {"process": {"tag": "resume"}})[0] == 200
    second = Events(daemon, "connect", {"process": {"tag": "resume"}}, headers={"Last-Event-ID": str(last_id)})
    try:
        rest = list(second.frames())
    finally:
        second.close()
    assert rest[-1][0] == "end"
    assert text(seen) + text(rest) == "".join(lines)
