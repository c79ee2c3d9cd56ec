"""The daemon as a worker: identity from the environment, its registry file, its telemetry log."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, LogPublisher, globalLogPublisher
from twisted.python.failure import Failure

from codebuddy.tap import Options, makeService
from codebuddy.workers.registry import Registry
from codebuddy.workers.service import RegistryService, TelemetryLog, identity


def test_identity() -> None:
    """kind from CODEBUDDY_SESSION_KIND (else interactive), name and log path from the environment."""
    assert identity({}, 42) == ("interactive", "interactive-42", None)
    assert identity({"CODEBUDDY_SESSION_KIND": "daemon"}, 42) == ("daemon", "daemon", None)
    assert identity({"CODEBUDDY_SESSION_KIND": "bogus"}, 42) == ("interactive", "interactive-42", None)
    env = {"CODEBUDDY_SESSION_KIND": "bg", "CODEBUDDY_SESSION_NAME": "job", "CODEBUDDY_SESSION_LOG": "/l/job.log"}
    assert identity(env, 42) == ("bg", "job", "/l/job.log")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_telemetry_lines(tmp_path: Path) -> None:
    """One JSON object per line, mode 0600, no secret fields, tracebacks for failures, a file per day."""
    publisher = LogPublisher()
    telemetry = TelemetryLog(tmp_path / "logs", "/srv/my app", pid=99)
    publisher.addObserver(telemetry)
    day1 = time.mktime((2024, 5, 1, 12, 0, 0, 0, 0, -1))
    day2 = day1 + 86400
    publisher({"log_format": "hello {who}", "who": "you", "password": "pw", "apiToken": "t", "obj": object(),
               "log_level": LogLevel.info, "log_namespace": "test", "log_time": day1})
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        publisher({"log_format": "it broke", "log_failure": Failure(), "log_level": LogLevel.critical,
                   "log_namespace": "test", "log_time": day1 + 1})
    publisher({"log_format": "next day", "log_level": LogLevel.warn, "log_namespace": "test", "log_time": day2})
    telemetry.close()
    first = tmp_path / "logs" / "2024-05-01" / "srv-my app.log"
    second = tmp_path / "logs" / "2024-05-02" / "srv-my app.log"
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700
    hello, broken = lines(first)
    assert hello["message"] == "hello you" and hello["who"] == "you" and hello["pid"] == 99
    assert hello["level"] == "info" and hello["namespace"] == "test" and hello["timestamp"].startswith("2024-05-01T")
    assert "password" not in hello and "apiToken" not in hello and hello["obj"].startswith("<object")
    [warned] = lines(second)
    assert broken["level"] == "critical" and "ZeroDivisionError" in broken["traceback"]
    assert warned["message"] == "next day" and warned["level"] == "warn"
    assert telemetry.failures == 0


class Fixture:
    def __init__(self, tmp_path: Path, environ: dict[str, str]) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.publisher = LogPublisher()
        self.registry = Registry(tmp_path / "home")
        self.endpoint: str | None = None
        self.service = RegistryService(
            self.registry, session_id="sess", workspace="/srv/ws", environ=environ,
            endpoint=lambda: self.endpoint, clock=self.clock, publisher=self.publisher,
        )


def test_service_registers_and_unregisters(tmp_path: Path) -> None:
    """Start: <pid>.json (kind, name, logPath from the environment); listening: endpoint; stop: gone."""
    env = {"CODEBUDDY_SESSION_KIND": "daemon", "CODEBUDDY_SESSION_LOG": "/var/log/cb.log"}
    f = Fixture(tmp_path, env)
    f.service.startService()
    path = f.registry.path_for(os.getpid())
    data = json.loads(path.read_text())
    assert (data["kind"], data["name"], data["logPath"], data["sessionId"], data["cwd"]) == (
        "daemon", "daemon", "/var/log/cb.log", "sess", "/srv/ws")
    assert data["startedAt"] == 1_700_000_000_000 and "endpoint" not in data
    assert abs(data["processStartTime"] - f.registry.probe.start_time(os.getpid())) < 1  # type: ignore[operator]
    f.endpoint = "http://127.0.0.1:8123"
    f.service.listening()
    assert json.loads(path.read_text())["endpoint"] == "http://127.0.0.1:8123"
    assert [w.record.pid for w in f.registry.local_workers()] == [os.getpid()]

    Logger(namespace="area", observer=f.publisher).info("area started")
    f.service.stopService()
    assert not path.exists()
    Logger(namespace="area", observer=f.publisher).info("after stop")
    assert f.service.telemetry.path is not None
    messages = [line["message"] for line in lines(f.service.telemetry.path)]
    assert "area started" in messages and "after stop" not in messages


def test_daemon_registers_itself(tmp_path: Path) -> None:
    """makeService: the daemon's own file appears at start with its URL and is gone after a stop."""
    home = tmp_path / "home"
    reactor = MemoryReactorClock()
    options = Options()
    options.parseOptions(["--home", str(home), "--port", "tcp:8123:interface=127.0.0.1", "--cwd", str(tmp_path)])
    observers = len(globalLogPublisher._observers)
    service = makeService(options, reactor=reactor, environ={"CODEBUDDY_SESSION_KIND": "daemon"})
    service.startService()
    path = home / "sessions" / f"{os.getpid()}.json"
    try:
        data = json.loads(path.read_text())
        assert data["endpoint"].endswith(":8123") and data["kind"] == "daemon"
        assert len(globalLogPublisher._observers) == observers + 1
    finally:
        service.stopService()
    assert not path.exists()
    assert len(globalLogPublisher._observers) == observers
    assert list((home / "logs").glob(f"*/{str(tmp_path).strip('/').replace('/', '-')}.log"))
