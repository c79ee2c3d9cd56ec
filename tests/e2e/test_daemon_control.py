"""Daemon control against real daemons: one daemon starts, reports and stops a second one."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.e2e.conftest import start_daemon

pytestmark = pytest.mark.e2e


async def call(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any]:
    response = await treq.request(method, url, **kwargs)
    body = await response.content()
    return response.code, json.loads(body) if body else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_start_status_stop_a_second_daemon(tmp_path: Path) -> None:
    """POST /daemon/start brings up a detached daemon; status shows it; stop ends it and its file."""
    first = start_daemon(tmp_path)  # interactive: not "the daemon"
    second_pid = None
    try:
        api = first.url + "/api/v1/daemon"
        assert await call(api + "/status") == (200, {"data": {"status": "stopped"}})
        port = free_port()
        status, body = await call(api + "/start", "POST", json={"port": port})
        assert status == 200, body
        data = body["data"]
        second_pid = data["pid"]
        assert (data["status"], data["endpoint"], data["name"]) == ("running", f"http://127.0.0.1:{port}", "daemon")
        assert second_pid != first.process.pid
        assert psutil.Process(second_pid).ppid() == first.process.pid
        assert (first.home / "daemon.pid").read_text().strip() == str(second_pid)

        status, body = await call(api + "/status")
        assert (status, body["data"]["pid"], body["data"]["status"]) == (200, second_pid, "running")
        status, body = await call(f"http://127.0.0.1:{port}/api/v1/daemon/status")
        assert body["data"]["pid"] == second_pid  # the second daemon sees itself
        status, body = await call(api + "/start", "POST", json={})
        assert (status, body["data"]["alreadyRunning"], body["data"]["pid"]) == (200, True, second_pid)

        status, body = await call(first.url + "/api/v1/workers?local=true")
        rows = {row["pid"]: row for row in body["data"]}
        assert (rows[second_pid]["kind"], rows[second_pid]["name"]) == ("daemon", "daemon")
        assert rows[first.process.pid]["kind"] == "interactive"
        status, body = await call(first.url + f"/api/v1/workers/{second_pid}/logs?type=process&tail=50")
        assert status == 200 and body["data"]["type"] == "process"
        assert f"codebuddy listening on http://127.0.0.1:{port}" in body["data"]["content"]
        status, body = await call(first.url + "/api/v1/workers/daemon/logs")
        assert (status, body["data"]["type"]) == (200, "telemetry")

        status, body = await call(api + "/stop", "POST")
        assert (status, body["data"]["status"], body["data"]["signal"]) == (200, "stopped", "SIGTERM")
        registry_file = first.home / "sessions" / f"{second_pid}.json"
        for _ in range(50):
            if not registry_file.exists():
                break
            await sleep(0.1)
        assert not registry_file.exists()
        assert not psutil.pid_exists(second_pid) or psutil.Process(second_pid).status() == psutil.STATUS_ZOMBIE
        assert await call(api + "/status") == (200, {"data": {"status": "stopped"}})
        status, body = await call(first.url + f"/api/v1/workers/{second_pid}")
        assert (status, body["error"]["code"]) == (404, "WORKER_NOT_FOUND")
        status, body = await call(api + "/stop", "POST")
        assert (status, body["error"]["code"]) == (409, "DAEMON_NOT_RUNNING")
        log = (first.home / "logs" / "daemon.log").read_text()
        assert f"codebuddy listening on http://127.0.0.1:{port}" in log
    finally:
        if second_pid is not None and psutil.pid_exists(second_pid):
            try:
                psutil.Process(second_pid).kill()
            except psutil.Error:
                pass
        first.stop()


