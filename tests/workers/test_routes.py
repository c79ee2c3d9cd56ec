"""The workers routes in memory: real child processes, a Clock, and remote daemons behind StubTreq."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import treq
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from codebuddy.web.auth import GatewaySettings
from codebuddy.workers.control import Terminator
from codebuddy.workers.logs import telemetry_path
from codebuddy.workers.registry import Registry
from codebuddy.workers.remote import RemoteClient
from codebuddy.workers.routes import WorkersRoutes
from tests.helpers import ApiFixture, _result
from tests.workers.helpers import dead_pid, end, record_for, sleeper, stubborn, write_record

SELF = os.getpid()


def run_now(fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    return maybeDeferred(fn, *args, **kwargs)


class NoNetwork:
    """An HTTP client for tests that must not talk to any remote."""

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        raise AssertionError(f"unexpected remote request {args}")


class Refused:
    """Every connection is refused."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.calls.append((method, url, kwargs.get("headers")))
        return fail(ConnectionRefusedError("Connection refused"))


class Hanging:
    """Requests are never answered."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d


class Fixture(ApiFixture):
    """The workers area over a registry in ``home``; ``http`` answers its remote requests."""

    def __init__(self, home: Path, http: Any = None, clock: Clock | None = None,
                 settings: GatewaySettings | None = None) -> None:
        self.home = home

        def areas(guard: Any, clock: Clock) -> list[Any]:
            self.registry = Registry(home)
            self.remote = RemoteClient(http if http is not None else NoNetwork(), clock)
            self.routes = WorkersRoutes(self.registry, self.remote, Terminator(clock), clock, run_now, own_pid=SELF)
            return [self.routes]

        super().__init__(areas, settings=settings, clock=clock)

    def begin(self, method: str, path: str, **kwargs: Any) -> Deferred[Any]:
        """Send a request without waiting for its answer."""
        d = self.treq.request(method, "http://127.0.0.1:8080" + path, **kwargs)
        self.treq.flush()
        return d

    def finish(self, d: Deferred[Any]) -> tuple[int, Any]:
        """(status, JSON body) of a request sent with :meth:`begin`."""
        self._pump(d)
        response = _result(d)
        body = treq.content(response)
        self._pump(body)
        return response.code, json.loads(_result(body))

    def stream(self, path: str, headers: dict[str, str] | None = None) -> Stream:
        d = self.treq.request("GET", "http://127.0.0.1:8080" + path, headers=headers, unbuffered=True)
        self._pump(d)
        response = _result(d)
        stream = Stream(self, response)
        return stream


class Stream:
    """An SSE response being received."""

    def __init__(self, api: Fixture, response: Any) -> None:
        self.api = api
        self.response = response
        self.chunks: list[bytes] = []
        self.done = treq.collect(response, self.chunks.append)
        api.treq.flush()

    def frames(self, flush: Any = None) -> list[dict[str, Any]]:
        if flush is not None:
            flush()
        self.api.treq.flush()
        frames = []
        for raw in b"".join(self.chunks).decode().split("\n\n"):
            if not raw.strip() or raw.startswith(":"):
                continue
            frame: dict[str, Any] = {"event": "message", "id": None}
            for line in raw.split("\n"):
                key, _, value = line.partition(": ")
                frame[key] = json.loads(value) if key == "data" else value
            frames.append(frame)
        return frames

    def disconnect(self) -> None:
        self.done.addErrback(lambda _failure: None)  # the body ends with ResponseFailed: expected
        for pump in list(self.api.treq._agent._pumps):
            pump.clientIO.loseConnection()
            pump.flush()


class PumpedStub:
    """An HTTP client that asks another in-memory daemon and moves the bytes at once."""

    def __init__(self, remote: Fixture) -> None:
        self.remote = remote
        self.calls: list[tuple[str, str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.calls.append((method, url, kwargs.get("headers")))
        d = self.remote.treq.request(method, url, **kwargs)
        self.remote.treq.flush()
        return d


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def api(home: Path) -> Fixture:
    return Fixture(home)


@pytest.fixture
def child() -> Iterator[Any]:
    process = sleeper()
    yield process
    end(process)


def error(result: tuple[int, Any, Any] | tuple[int, Any]) -> tuple[int, str]:
    return result[0], result[1]["error"]["code"]


# --------------------------------------------------------------------------- list and show


def test_list_filter_and_show(api: Fixture, child: Any) -> None:
    """Live workers oldest first, the answering daemon marked current; kind filters; pid or name finds one."""
    api.registry.register(record_for(SELF, kind="daemon", name="daemon", started_at=1, endpoint="http://127.0.0.1:1"))
    api.registry.register(record_for(child.pid, kind="bg", name="job", started_at=2, log_path="/tmp/job.log"))
    stale = write_record(api.home, pid=dead_pid(), kind="bg", name="stale")
    status, body, _ = api.json("GET", "/api/v1/workers")
    assert status == 200
    rows = body["data"]
    assert [(r["id"], r["kind"], r["name"], r["current"], r["status"], r["mode"]) for r in rows] == [
        (str(SELF), "daemon", "daemon", True, "running", "local"),
        (str(child.pid), "bg", "job", False, "running", "local"),
    ]
    assert set(rows[1]) == {"id", "pid", "name", "kind", "status", "mode", "endpoint", "url", "cwd", "sessionId",
                            "startedAt", "version", "hostname", "logPath", "current"}
    assert rows[0]["endpoint"] == rows[0]["url"] == "http://127.0.0.1:1" and rows[1]["logPath"] == "/tmp/job.log"
    assert not stale.exists()

    assert [r["name"] for r in api.json("GET", "/api/v1/workers?kind=bg")[1]["data"]] == ["job"]
    assert api.json("GET", "/api/v1/workers?kind=daemon-worker&local=true")[1]["data"] == []
    assert error(api.json("GET", "/api/v1/workers?kind=robot")) == (400, "BAD_REQUEST")
    assert error(api.json("GET", "/api/v1/workers?local=maybe")) == (400, "BAD_REQUEST")

    assert api.json("GET", f"/api/v1/workers/{child.pid}")[1]["data"] == rows[1]
    assert api.json("GET", "/api/v1/workers/job")[1]["data"] == rows[1]
    for missing in ("nobody", str(dead_pid()), "manual-00000000", "manual-00000000:1", "job:1"):
        assert error(api.json("GET", f"/api/v1/workers/{missing}")) == (404, "WORKER_NOT_FOUND"), missing


# --------------------------------------------------------------------------- delete


def test_delete_terminates_the_group(api: Fixture) -> None:
    """SIGTERM reaches every process of the worker's group; answered once they are gone; file removed."""
    leader = sleeper(group=0)
    member = sleeper(group=leader.pid)
    try:
        path = api.registry.register(record_for(leader.pid, name="job"))
        d = api.begin("DELETE", "/api/v1/workers/job")
        assert leader.wait() == -signal.SIGTERM and member.wait() == -signal.SIGTERM
        api.clock.advance(0.2)
        status, body = api.finish(d)
        assert (status, body["data"]) == (200, {"id": str(leader.pid), "pid": leader.pid, "status": "terminated",
                                                "signal": "SIGTERM"})
        assert not path.exists()
        assert error(api.json("GET", f"/api/v1/workers/{leader.pid}")) == (404, "WORKER_NOT_FOUND")
    finally:
        end(leader)
        end(member)


def test_delete_in_a_shared_group_signals_the_worker_only(api: Fixture) -> None:
    """A worker inside this test's own process group: its pid gets the signal, never the group."""
    import subprocess

    worker = subprocess.Popen(["sleep", "60"])  # pytest's group: a group signal would end this test run
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        assert os.getpgid(worker.pid) == os.getpgrp() != worker.pid
        api.registry.register(record_for(worker.pid))
        d = api.begin("DELETE", f"/api/v1/workers/{worker.pid}")
        assert worker.wait() == -signal.SIGTERM
        api.clock.advance(0.2)
        status, body = api.finish(d)
        assert (status, body["data"]["signal"]) == (200, "SIGTERM")
        assert bystander.poll() is None
    finally:
        end(worker)
        end(bystander)


def test_delete_escalates_to_sigkill_after_5_seconds(api: Fixture) -> None:
    """A worker that ignores SIGTERM gets SIGKILL once 5 s have passed on the clock, not before."""
    worker = stubborn()
    try:
        api.registry.register(record_for(worker.pid))
        d = api.begin("DELETE", f"/api/v1/workers/{worker.pid}")
        answered: list[Any] = []
        d.addCallback(lambda response: (answered.append(response), response)[1])
        api.clock.advance(4.8)
        api.treq.flush()
        assert not answered and worker.poll() is None
        api.clock.advance(0.2)
        assert worker.wait() == -signal.SIGKILL
        api.clock.advance(0.2)
        status, body = api.finish(d)
        assert (status, body["data"]["signal"]) == (200, "SIGKILL")
    finally:
        end(worker)


def test_delete_refusals(api: Fixture, child: Any) -> None:
    """The answering daemon is not deleted here (409); nor a worker registered by another host."""
    api.registry.register(record_for(SELF, kind="daemon", name="daemon"))
    result = api.json("DELETE", "/api/v1/workers/daemon")
    assert error(result) == (409, "CONFLICT") and "daemon/stop" in result[1]["error"]["message"]
    write_record(api.home, pid=child.pid, hostname="elsewhere", name="far")
    assert error(api.json("DELETE", "/api/v1/workers/far")) == (409, "CONFLICT")
    assert child.poll() is None
    assert error(api.json("DELETE", "/api/v1/workers/ghost")) == (404, "WORKER_NOT_FOUND")


# --------------------------------------------------------------------------- logs


def test_logs_choice_tail_and_errors(api: Fixture, child: Any) -> None:
    """Without type the first existing of telemetry > process > debug > transcript; tail N lines."""
    api.registry.register(record_for(child.pid, name="job", cwd="/srv/app", session_id="s1"))
    assert error(api.json("GET", f"/api/v1/workers/{child.pid}/logs")) == (404, "WORKER_NO_LOGS")
    process_log = api.home / "logs" / "job.log"
    process_log.parent.mkdir(parents=True)
    process_log.write_text("".join(f"out {i}\n" for i in range(300)))
    status, body, _ = api.json("GET", "/api/v1/workers/job/logs")
    data = body["data"]
    assert (status, data["type"], data["availableTypes"], data["logPath"]) == (
        200, "process", ["process"], str(process_log))
    assert data["content"].splitlines() == [f"out {i}" for i in range(100, 300)]  # default tail 200
    assert data["offset"] == process_log.stat().st_size

    telemetry = telemetry_path(api.home, "/srv/app", "2024-02-03")
    telemetry.parent.mkdir(parents=True)
    telemetry.write_text('{"message":"a"}\n{"message":"b"}\n')
    data = api.json("GET", "/api/v1/workers/job/logs?tail=1")[1]["data"]
    assert (data["type"], data["content"], data["availableTypes"]) == ("telemetry", '{"message":"b"}\n',
                                                                      ["telemetry", "process"])
    data = api.json("GET", "/api/v1/workers/job/logs?type=process&tail=2")[1]["data"]
    assert data["content"] == "out 298\nout 299\n"

    result = api.json("GET", "/api/v1/workers/job/logs?type=debug")
    assert error(result) == (404, "WORKER_NO_LOGS")
    assert result[1]["error"]["details"] == {"availableTypes": ["telemetry", "process"]}
    for query in ("type=stdout", "tail=0", "tail=100001", "tail=x"):
        assert error(api.json("GET", f"/api/v1/workers/job/logs?{query}")) == (400, "BAD_REQUEST"), query
    assert error(api.json("GET", "/api/v1/workers/nobody/logs"))[1] == "WORKER_NOT_FOUND"


def test_follow(api: Fixture, child: Any) -> None:
    """SSE tail: info, the last lines, then appended bytes each poll; ids are byte offsets; resume; split UTF-8."""
    api.registry.register(record_for(child.pid, name="job"))
    log = api.home / "logs" / "job.log"
    log.parent.mkdir(parents=True)
    log.write_text("one\ntwo\nthree\n")
    stream = api.stream("/api/v1/workers/job/logs?follow=true&tail=2")
    assert stream.response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    info, tail = stream.frames()
    assert (info["event"], info["id"], info["data"]) == (
        "info", "14", {"type": "process", "logPath": str(log), "availableTypes": ["process"]})
    assert (tail["id"], tail["data"]) == ("14", {"content": "two\nthree\n"})

    with log.open("ab") as handle:
        handle.write("four €".encode()[:-1])  # the euro sign cut after two of its three bytes
    api.clock.advance(0.5)
    frames = stream.frames()
    assert frames[2:] == [{"event": "message", "id": "19", "data": {"content": "four "}}]
    with log.open("ab") as handle:
        handle.write("€".encode()[-1:] + b"\nfive\n")
    api.clock.advance(0.5)
    assert stream.frames()[3:] == [{"event": "message", "id": "28", "data": {"content": "€\nfive\n"}}]
    api.clock.advance(0.5)
    assert len(stream.frames()) == 4  # nothing new, nothing sent

    log.write_text("new\n")  # truncated (rotated in place)
    api.clock.advance(0.5)
    assert [(f["event"], f["id"], f["data"]) for f in stream.frames()[4:]] == [
        ("truncated", "0", {"offset": 0}), ("message", "4", {"content": "new\n"})]
    api.clock.advance(15)
    stream.frames()
    assert b": keepalive" in b"".join(stream.chunks)
    stream.disconnect()
    assert stream.done.called

    # Resume from an offset: only what came after it.
    resumed = api.stream("/api/v1/workers/job/logs?follow=true", headers={"Last-Event-ID": "1"})
    assert [(f["event"], f["id"], f["data"]) for f in resumed.frames()] == [
        ("info", "1", {"type": "process", "logPath": str(log), "availableTypes": ["process"]})]
    api.clock.advance(0.5)
    assert resumed.frames()[1:] == [{"event": "message", "id": "4", "data": {"content": "ew\n"}}]
    resumed.disconnect()
    # An EventSource (Accept: text/event-stream) gets the stream without follow=true.
    accepted = api.stream("/api/v1/workers/job/logs", headers={"Accept": "text/event-stream"})
    assert accepted.frames()[0]["event"] == "info"
    accepted.disconnect()


# --------------------------------------------------------------------------- remote daemons


@pytest.fixture
def remote(tmp_path: Path, api: Fixture) -> Fixture:
    """A second daemon (its own home) on the same clock."""
    return Fixture(tmp_path / "remote-home", clock=api.clock)


def linked(api: Fixture, remote: Fixture) -> PumpedStub:
    stub = PumpedStub(remote)
    api.remote.http = stub
    return stub


def test_add_validation(api: Fixture) -> None:
    """POST /workers: bad URLs, names, both credentials and missing fields are 400; a used name 409."""
    api.remote.http = Refused()
    cases = [
        {"url": "ftp://h", "name": "a"}, {"url": "http://", "name": "a"}, {"url": "http://u:p@h", "name": "a"},
        {"url": "http://h?x=1", "name": "a"}, {"url": "http://h:99999", "name": "a"}, {"url": "h:80", "name": "a"},
        {"url": "http://h", "name": "a/b"}, {"url": "http://h", "name": "123"}, {"url": "http://h", "name": ""},
        {"url": "http://h", "name": "a", "token": "t", "password": "p"}, {"name": "a"}, {"url": "http://h"},
        {"url": 5, "name": "a"},
    ]
    for body in cases:
        result = api.json("POST", "/api/v1/workers", json=body)
        assert error(result) == (400, "BAD_REQUEST"), body
        assert result[1]["error"].get("details"), body
    status, body, _ = api.json("POST", "/api/v1/workers", json={"url": "http://h:1/", "name": "box"})
    assert status == 201 and body["data"]["url"] == "http://h:1" and body["data"]["status"] == "offline"
    assert error(api.json("POST", "/api/v1/workers", json={"url": "http://h:2", "name": "box"})) == (
        409, "ALREADY_EXISTS")


def test_remote_merge(api: Fixture, remote: Fixture, child: Any) -> None:
    """Without local=true each remote daemon's own local list is merged under <manualId>:<id>."""
    stub = linked(api, remote)
    api.registry.register(record_for(SELF, kind="daemon", name="gateway"))
    remote.registry.register(record_for(child.pid, kind="bg", name="job", cwd="/far"))
    status, body, _ = api.json("POST", "/api/v1/workers", json={"url": "http://127.0.0.1:8081", "name": "box2",
                                                               "token": "s3cret"})
    assert status == 201 and body["data"]["status"] == "running" and "error" not in body["data"]
    manual = body["data"]["id"]
    assert manual.startswith("manual-")
    assert stub.calls[-1][1] == "http://127.0.0.1:8081/api/v1/workers?local=true"
    assert stub.calls[-1][2]["Authorization"] == "Bearer s3cret"

    rows = api.json("GET", "/api/v1/workers")[1]["data"]
    assert [(r["id"], r["mode"], r["kind"], r["status"]) for r in rows] == [
        (str(SELF), "local", "daemon", "running"),
        (manual, "remote", "daemon", "running"),
        (f"{manual}:{child.pid}", "remote", "bg", "running"),
    ]
    far = rows[2]
    assert (far["via"], far["remoteId"], far["url"], far["cwd"], far["name"]) == (
        manual, str(child.pid), "http://127.0.0.1:8081", "/far", "job")
    assert "token" not in json.dumps(rows) and "s3cret" not in json.dumps(rows)
    assert [r["id"] for r in api.json("GET", "/api/v1/workers?local=true")[1]["data"]] == [str(SELF)]
    assert [r["id"] for r in api.json("GET", "/api/v1/workers?kind=bg")[1]["data"]] == [f"{manual}:{child.pid}"]

    # One remote worker, by remote id, by name, through the daemon's name, with the colon escaped.
    for key in (f"{manual}:{child.pid}", f"{manual}:job", "box2:job", f"{manual}%3A{child.pid}"):
        assert api.json("GET", f"/api/v1/workers/{key}")[1]["data"] == far, key
    result = api.json("GET", f"/api/v1/workers/{manual}:nobody")
    assert error(result) == (404, "WORKER_NOT_FOUND") and "box2" in result[1]["error"]["message"]
    assert api.json("GET", "/api/v1/workers/box2")[1]["data"]["id"] == manual


def test_remote_logs_and_delete_are_proxied(api: Fixture, remote: Fixture) -> None:
    """logs (JSON and SSE) and DELETE of a remote worker go to its daemon; removing the registration."""
    linked(api, remote)
    leader = sleeper()
    try:
        remote.registry.register(record_for(leader.pid, name="job"))
        log = remote.home / "logs" / "job.log"
        log.parent.mkdir(parents=True)
        log.write_text("a\nb\n")
        added = api.json("POST", "/api/v1/workers", json={"url": "http://127.0.0.1:8081", "name": "box2"})
        manual = added[1]["data"]["id"]

        data = api.json("GET", "/api/v1/workers/box2:job/logs?tail=1")[1]["data"]
        assert data == {"content": "b\n", "type": "process", "availableTypes": ["process"], "logPath": str(log),
                        "offset": 4}
        result = api.json("GET", "/api/v1/workers/box2:job/logs?type=debug")
        assert error(result) == (404, "WORKER_NO_LOGS") and result[1]["error"]["details"]["availableTypes"] == [
            "process"]
        assert error(api.json("GET", "/api/v1/workers/box2/logs")) == (404, "WORKER_NO_LOGS")

        stream = api.stream("/api/v1/workers/box2:job/logs?follow=true&tail=1")
        assert [f["data"] for f in stream.frames(remote.treq.flush)] == [
            {"type": "process", "logPath": str(log), "availableTypes": ["process"]}, {"content": "b\n"}]
        with log.open("a") as handle:
            handle.write("c\n")
        api.clock.advance(0.5)
        assert stream.frames(remote.treq.flush)[-1] == {"event": "message", "id": "6", "data": {"content": "c\n"}}
        stream.disconnect()
        remote.treq.flush()
        assert stream.done.called

        d = api.begin("DELETE", "/api/v1/workers/box2:job")
        assert leader.wait() == -signal.SIGTERM
        api.clock.advance(0.2)
        remote.treq.flush()
        status, body = api.finish(d)
        assert (status, body["data"]) == (200, {"id": f"{manual}:{leader.pid}", "pid": leader.pid,
                                                "status": "terminated", "signal": "SIGTERM"})
        assert remote.registry.local_workers() == []

        assert api.json("DELETE", f"/api/v1/workers/{manual}")[1]["data"] == {
            "id": manual, "pid": None, "status": "removed", "signal": None}
        assert api.registry.remotes() == []
    finally:
        end(leader)


def test_unreachable_remotes_are_offline(api: Fixture, home: Path) -> None:
    """A refused or silent remote is listed offline with the reason; the list itself never fails."""
    refused = Refused()
    api.remote.http = refused
    api.registry.register(record_for(SELF, name="me"))
    api.registry.add_remote("http://down:1", "down", None, "pw", 1)
    rows = api.json("GET", "/api/v1/workers")[1]["data"]
    assert [(r["name"], r["status"]) for r in rows] == [("me", "running"), ("down", "offline")]
    assert "ConnectionRefusedError" in rows[1]["error"]
    assert refused.calls[0][2]["Authorization"] == "Bearer pw"
    assert error(api.json("GET", "/api/v1/workers/down:1")) == (502, "WORKER_UNREACHABLE")
    assert error(api.json("DELETE", "/api/v1/workers/down:1")) == (502, "WORKER_UNREACHABLE")
    assert error(api.json("GET", "/api/v1/workers/down:1/logs")) == (502, "WORKER_UNREACHABLE")
    assert error(api.json("GET", "/api/v1/workers/down:1/logs?follow=true")) == (502, "WORKER_UNREACHABLE")

    hanging = Hanging()
    api.remote.http = hanging
    d = api.begin("GET", "/api/v1/workers")
    answered: list[Any] = []
    d.addCallback(lambda response: (answered.append(response), response)[1])
    api.clock.advance(2.9)
    api.treq.flush()
    assert not answered
    api.clock.advance(0.1)
    status, body = api.finish(d)
    assert status == 200 and body["data"][1]["status"] == "offline"
    assert body["data"][1]["error"] == "no answer within 3 s"


def test_remote_credentials_refused(api: Fixture, tmp_path: Path) -> None:
    """A remote with password auth: the right password works; a wrong one is offline / 502, never a 401 here."""
    remote = Fixture(tmp_path / "locked", clock=api.clock, settings=GatewaySettings(mode="password", password="pw"))
    linked(api, remote)
    good = api.json("POST", "/api/v1/workers",
                    json={"url": "http://127.0.0.1:1", "name": "good", "password": "pw"})[1]["data"]
    bad = api.json("POST", "/api/v1/workers",
                   json={"url": "http://127.0.0.1:2", "name": "bad", "token": "nope"})[1]["data"]
    assert (good["status"], bad["status"]) == ("running", "offline")
    assert "refused the stored credentials" in bad["error"]
    result = api.json("GET", "/api/v1/workers/bad:1")
    assert error(result) == (502, "WORKER_UNREACHABLE") and result[1]["error"]["details"]["status"] == 401


def test_refused_credentials_back_off(api: Fixture, tmp_path: Path) -> None:
    """After a 401, listings leave that remote alone for 15 min (its login limiter counts each try)."""
    remote = Fixture(tmp_path / "locked", clock=api.clock, settings=GatewaySettings(mode="password", password="pw"))
    stub = linked(api, remote)
    api.json("POST", "/api/v1/workers", json={"url": "http://127.0.0.1:2", "name": "bad", "token": "nope"})
    asked = len(stub.calls)
    [row] = api.json("GET", "/api/v1/workers")[1]["data"]
    assert row["status"] == "offline" and "not asked again for 900 s" in row["error"]
    assert len(stub.calls) == asked
    api.clock.advance(901)
    api.json("GET", "/api/v1/workers")
    assert len(stub.calls) == asked + 1
    # Asking for it by id always asks.
    api.json("GET", f"/api/v1/workers/{row['id']}")
    assert len(stub.calls) == asked + 2
    # The remote's rate limit is its refusal of this daemon, not of the client: 502, not 429.
    for _ in range(12):
        api.json("GET", "/api/v1/workers/bad:1")
    result = api.json("GET", "/api/v1/workers/bad:1")
    assert error(result) == (502, "WORKER_UNREACHABLE") and result[1]["error"]["details"]["status"] == 429


def test_remote_answers_garbage(api: Fixture, tmp_path: Path) -> None:
    """A remote that is not a codebuddy daemon (404 HTML, wrong shapes) is offline, not an error."""

    class Garbage:
        def __init__(self, fixture: Fixture) -> None:
            self.fixture = fixture

        def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
            return PumpedStub(self.fixture).request(method, "http://x/nothing-here", **kwargs)

    other = Fixture(tmp_path / "other", clock=api.clock)
    api.remote.http = Garbage(other)
    row = api.json("POST", "/api/v1/workers", json={"url": "http://a", "name": "odd"})[1]["data"]
    assert row["status"] == "offline" and "No route" in row["error"]


@settings(max_examples=50)
@given(key=st.text(min_size=1, max_size=40).filter(lambda k: "/" not in k and "?" not in k and "#" not in k),
       query=st.dictionaries(st.sampled_from(["kind", "local", "type", "tail", "follow"]), st.text(max_size=8)))
def test_never_a_500(tmp_path_factory: Any, key: str, query: dict[str, str]) -> None:
    """Whatever the id and query, the answer is a JSON success or a catalogue error, never a 500."""
    from urllib.parse import quote, urlencode

    api = Fixture(tmp_path_factory.mktemp("h"), http=Refused())
    api.registry.add_remote("http://r:1", "r", None, None, 1)
    path = f"/api/v1/workers/{quote(key, safe='')}"
    q = "?" + urlencode({k: v for k, v in query.items() if k != "follow"})
    calls = (("GET", path + q), ("GET", path + "/logs" + q), ("DELETE", path), ("GET", "/api/v1/workers" + q))
    for method, url in calls:
        status, body, _ = api.json(method, url)
        assert status != 500 and ("data" in body or "error" in body), (method, url, body)
