"""
The ``codebuddy daemon`` command against real daemons: start one detached, see it, read its logs,
restart it through the API it serves (it hands over to its replacement), stop it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.conftest import REPO, daemon_env

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def codebuddy(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "codebuddy.cli", *argv], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=daemon_env({"CODEBUDDY_CONFIG_DIR": str(home)}))


def get(url: str, method: str = "GET") -> Any:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def until(predicate: Any, timeout: float = 30.0) -> Any:
    """Poll ``predicate`` until it returns something true (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def gone(pid: int) -> bool:
    """Exited (a zombie until whoever it was reparented to reaps it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def status(home: Path) -> dict[str, Any]:
    result = codebuddy(home, "daemon", "status", "--json")
    data: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == (0 if data["status"] == "running" else 3)
    return data


def test_start_restart_itself_and_stop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    workspace = tmp_path / "ws"
    workspace.mkdir()
    port = free_port()
    pids: list[int] = []
    try:
        started = codebuddy(home, "daemon", "start", "--port", str(port), "--cwd", str(workspace))
        assert started.returncode == 0, started.stderr
        first = status(home)
        pids.append(first["pid"])
        endpoint = f"http://127.0.0.1:{port}"
        assert started.stdout == f"started: pid {first['pid']}, endpoint {endpoint}\n"
        assert (first["endpoint"], first["systemService"]["installed"]) == (endpoint, False)
        again = codebuddy(home, "daemon", "start", "--port", str(port))
        assert again.stdout.startswith(f"already running: pid {first['pid']}")

        ps = json.loads(codebuddy(home, "ps", "--json").stdout)
        assert [(w["pid"], w["kind"], w["name"]) for w in ps] == [(first["pid"], "daemon", "daemon")]
        logs = codebuddy(home, "logs", "daemon", "--type", "process")
        assert f"codebuddy listening on {endpoint}" in logs.stdout

        # The daemon restarts itself: it answers, exits, and its replacement takes the same port.
        answer = get(f"{endpoint}/api/v1/daemon/restart", "POST")["data"]
        assert (answer["status"], answer["pid"]) == ("restarting", first["pid"])
        second = until(lambda: (s := status(home))["status"] == "running" and s["pid"] != first["pid"] and s)
        pids.append(second["pid"])
        assert second["endpoint"] == endpoint
        assert get(f"{endpoint}/api/v1/daemon/status")["data"]["pid"] == second["pid"]
        assert get(f"{endpoint}/api/v1/info")["data"]["cwd"] == str(workspace)
        assert gone(first["pid"])
        assert not (home / "sessions" / f"{first['pid']}.json").exists()

        stopped = codebuddy(home, "daemon", "stop")
        assert stopped.stdout == f"Stopped the daemon (pid {second['pid']}) with SIGTERM\n"
        assert status(home) == {"status": "stopped"}
        assert not (home / "sessions" / f"{second['pid']}.json").exists()
        assert gone(second["pid"])
    finally:
        for pid in pids:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
