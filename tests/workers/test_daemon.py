"""Daemon control in memory: fake registry files, real child processes, a Clock and StubTreq."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from codebuddy.workers.control import Terminator
from codebuddy.workers.daemon import DaemonControl, start_argv
from codebuddy.workers.registry import Registry
from codebuddy.workers.remote import RemoteClient
from codebuddy.workers.routes import DaemonRoutes
from codebuddy.workers.units import SystemdUnit
from tests.workers.helpers import end, record_for, sleeper
from tests.workers.test_routes import SELF, Fixture, NoNetwork, error, run_now


class DaemonFixture(Fixture):
    """The daemon routes over a registry in ``home``; ``stopped`` records calls of the stop callable."""

    def __init__(self, home: Path, launcher: Any = None, **options: Any) -> None:
        self.home = home
        self.stopped: list[float] = []
        self.unit = home / "codebuddy.service"
        self.launched: list[list[str]] = []

        def areas(guard: Any, clock: Clock) -> list[Any]:
            self.registry = Registry(home)
            extra = {"launcher": launcher} if launcher is not None else {}
            extra.setdefault("unit_of", lambda pid: None)  # whatever runs the tests: not a systemd service
            extra.update(options)
            self.control = DaemonControl(
                self.registry, RemoteClient(NoNetwork(), clock), Terminator(clock), clock, run_now,
                lambda: self.stopped.append(clock.seconds()), "/ws", {}, own_pid=SELF,
                units=lambda: [self.unit], start_timeout=3.0, **extra)
            return [DaemonRoutes(self.control)]

        super(Fixture, self).__init__(areas)


@pytest.fixture
def api(tmp_path: Path) -> DaemonFixture:
    return DaemonFixture(tmp_path / "home")


def test_status_stopped_without_a_daemon(api: DaemonFixture) -> None:
    """No registered daemon (other kinds do not count): ``{"status": "stopped"}`` only."""
    api.registry.register(record_for(SELF, kind="interactive"))
    status, body, _ = api.json("GET", "/api/v1/daemon/status")
    assert (status, body) == (200, {"data": {"status": "stopped"}})


def test_status_running_with_system_service(api: DaemonFixture) -> None:
    """The live daemon's registration, and the systemd unit once it exists; a dead daemon's file is ignored."""
    child = sleeper()
    try:
        api.registry.register(record_for(child.pid, kind="daemon", name="daemon", started_at=5,
                                         endpoint="http://127.0.0.1:9999"))
        status, body, _ = api.json("GET", "/api/v1/daemon/status")
        assert (status, body["data"]) == (200, {
            "status": "running", "pid": child.pid, "endpoint": "http://127.0.0.1:9999", "startedAt": 5,
            "name": "daemon", "systemService": {"installed": False, "backend": None, "configPath": None}})
        api.unit.write_text("[Unit]\n")
        _, body, _ = api.json("GET", "/api/v1/daemon/status")
        assert body["data"]["systemService"] == {"installed": True, "backend": "systemd",
                                                 "configPath": str(api.unit)}
        end(child)
        _, body, _ = api.json("GET", "/api/v1/daemon/status")
        assert body["data"] == {"status": "stopped"}
    finally:
        end(child)


def test_stop_terminates_the_daemon(api: DaemonFixture) -> None:
    """SIGTERM to the daemon's group, answered once it is gone, registry file removed."""
    child = sleeper()
    try:
        path = api.registry.register(record_for(child.pid, kind="daemon", name="daemon"))
        d = api.begin("POST", "/api/v1/daemon/stop")
        assert child.wait() == -signal.SIGTERM
        api.clock.advance(0.2)
        status, body = api.finish(d)
        assert (status, body["data"]["status"], body["data"]["pid"], body["data"]["signal"]) == (
            200, "stopped", child.pid, "SIGTERM")
        assert not path.exists() and api.stopped == []
        assert error(api.json("POST", "/api/v1/daemon/stop")) == (409, "DAEMON_NOT_RUNNING")
        assert error(api.json("POST", "/api/v1/daemon/restart")) == (409, "DAEMON_NOT_RUNNING")
    finally:
        end(child)


def test_stop_self_answers_first(api: DaemonFixture) -> None:
    """This process is the daemon: ``stopping`` is answered, then the stop callable runs on the next turn."""
    api.registry.register(record_for(SELF, kind="daemon", name="daemon"))
    d = api.begin("POST", "/api/v1/daemon/stop")
    answered: list[Any] = []
    d.addCallback(lambda response: (answered.append(api.stopped[:]), response)[1])
    status, body = api.finish(d)
    assert (status, body["data"]["status"], body["data"]["pid"]) == (200, "stopping", SELF)
    assert answered == [[]]  # not stopped when the answer came
    api.clock.advance(0)
    assert len(api.stopped) == 1


def test_start_is_idempotent(api: DaemonFixture) -> None:
    """A running daemon is answered with alreadyRunning, nothing is started."""
    api.registry.register(record_for(SELF, kind="daemon", name="daemon", endpoint="http://127.0.0.1:1"))
    status, body, _ = api.json("POST", "/api/v1/daemon/start", json={"port": 8123})
    assert (status, body["data"]["alreadyRunning"], body["data"]["pid"]) == (200, True, SELF)
    assert error(api.json("POST", "/api/v1/daemon/start", json={"port": 70000})) == (400, "BAD_REQUEST")


def test_start_failure_reports_the_log_tail(tmp_path: Path) -> None:
    """A daemon that exits at start: DAEMON_START_FAILED with its log's new lines and the reason."""
    calls: list[list[str]] = []

    def launcher(argv: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
        calls.append(argv)
        assert (env["CODEBUDDY_SESSION_KIND"], env["CODEBUDDY_SESSION_LOG"]) == ("daemon", str(log))
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as handle:
            handle.write("codebuddy: cannot listen on 127.0.0.1:8123: Address already in use\n")
        return subprocess.Popen(["false"])

    api = DaemonFixture(tmp_path / "home", launcher=launcher)
    (tmp_path / "home" / "logs").mkdir(parents=True)
    (tmp_path / "home" / "logs" / "daemon.log").write_text("an old line\n")
    d = api.begin("POST", "/api/v1/daemon/start", json={"port": 8123, "host": "127.0.0.2"})
    answered: list[Any] = []
    d.addBoth(lambda r: (answered.append(r), r)[1])
    for _ in range(100):
        if answered:
            break
        time.sleep(0.02)
        api.clock.advance(0.25)
        api.treq.flush()
    status, body = api.finish(d)
    assert (status, body["error"]["code"]) == (502, "DAEMON_START_FAILED")
    assert "Address already in use" in body["error"]["message"]
    assert body["error"]["details"]["logTail"] == (
        "codebuddy: cannot listen on 127.0.0.1:8123: Address already in use\n")
    [argv] = calls
    assert argv[1:] == ["-n", "--pidfile", str(api.home / "daemon.pid"), "--logfile",
                        str(api.home / "logs" / "daemon.log"), "codebuddy", "--port", "8123", "--host",
                        "127.0.0.2", "--home", str(api.home), "--cwd", "/ws"]
    assert os.path.basename(argv[0]).startswith("twistd")


def test_restart_self_hands_over_to_the_relaunch_helper(tmp_path: Path) -> None:
    """
    The answering daemon (no systemd): the detached helper is started with the same port, host and
    workspace, ``restarting`` is answered, and only then does the daemon stop.
    """
    launched: list[tuple[list[str], Mapping[str, str], Path]] = []

    def launcher(argv: list[str], env: Mapping[str, str], log: Path) -> Any:
        launched.append((argv, env, log))
        return None

    api = DaemonFixture(tmp_path / "home", launcher=launcher)
    api.registry.register(record_for(SELF, kind="daemon", name="daemon", cwd="/srv/app",
                                     endpoint="http://10.1.2.3:8123"))
    d = api.begin("POST", "/api/v1/daemon/restart")
    answered: list[Any] = []
    d.addCallback(lambda response: (answered.append(api.stopped[:]), response)[1])
    status, body = api.finish(d)
    assert (status, body["data"]["status"], body["data"]["pid"]) == (200, "restarting", SELF)
    assert answered == [[]]
    [(argv, env, log)] = launched
    assert argv[:6] == [sys.executable, "-m", "codebuddy.workers.relaunch", str(SELF), "60", "--"]
    assert argv[6:] == start_argv(api.home, 8123, "10.1.2.3", "/srv/app")
    assert (env["CODEBUDDY_SESSION_KIND"], log) == ("daemon", api.home / "logs" / "daemon.log")
    api.clock.advance(0)
    assert len(api.stopped) == 1


def test_restart_self_as_a_systemd_user_service(tmp_path: Path) -> None:
    """A daemon in a user unit answers, then queues ``systemctl --user --no-block restart`` and does not stop itself."""
    calls: list[list[str]] = []
    api = DaemonFixture(tmp_path / "home", unit_of=lambda pid: SystemdUnit("codebuddy.service", True),
                        systemctl=lambda argv: calls.append(argv) or subprocess.CompletedProcess(argv, 0))
    api.registry.register(record_for(SELF, kind="daemon", name="daemon", endpoint="http://127.0.0.1:8123"))
    d = api.begin("POST", "/api/v1/daemon/restart")
    answered: list[Any] = []
    d.addCallback(lambda response: (answered.append(calls[:]), response)[1])
    status, body = api.finish(d)
    assert (status, body["data"]["status"], answered) == (200, "restarting", [[]])
    api.clock.advance(0)
    assert calls == [["systemctl", "--user", "--no-block", "restart", "codebuddy.service"]]
    assert api.stopped == []


def test_restart_of_a_system_service_needs_root(tmp_path: Path) -> None:
    """A system unit and a daemon that is not root: 409 naming the command, nothing done."""
    calls: list[list[str]] = []
    api = DaemonFixture(tmp_path / "home", unit_of=lambda pid: SystemdUnit("codebuddy.service", False),
                        systemctl=calls.append, euid=1000)
    api.registry.register(record_for(SELF, kind="daemon", name="daemon"))
    status, body, _ = api.json("POST", "/api/v1/daemon/restart")
    assert (status, body["error"]["code"]) == (409, "CONFLICT")
    assert "sudo systemctl restart codebuddy.service" in body["error"]["message"]
    api.clock.advance(0)
    assert (calls, api.stopped) == ([], [])


def test_restart_another_systemd_daemon(tmp_path: Path) -> None:
    """Another daemon in a system unit, this one root: ``systemctl restart`` (blocking), then the status."""
    child = sleeper()
    calls: list[list[str]] = []

    def systemctl(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 1 if len(calls) > 1 else 0, "", "Job failed. See journalctl")

    try:
        api = DaemonFixture(tmp_path / "home", unit_of=lambda pid: SystemdUnit("codebuddy.service", False),
                            systemctl=systemctl, euid=0)
        api.registry.register(record_for(child.pid, kind="daemon", name="daemon"))
        status, body, _ = api.json("POST", "/api/v1/daemon/restart")
        assert (status, body["data"]["status"], body["data"]["pid"]) == (200, "running", child.pid)
        assert calls == [["systemctl", "restart", "codebuddy.service"]]
        status, body, _ = api.json("POST", "/api/v1/daemon/restart")
        assert (status, body["error"]["code"]) == (502, "DAEMON_START_FAILED")
        assert "Job failed" in body["error"]["message"]
    finally:
        end(child)
