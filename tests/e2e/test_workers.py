"""
Workers against real daemons: registry files over a daemon's life, a second daemon merged
as a remote worker, an unreachable one offline, and a worker killed with its children.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted
import treq

from tests.e2e.conftest import Daemon, start_daemon

pytestmark = pytest.mark.e2e


async def call(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any]:
    response = await treq.request(method, url, **kwargs)
    body = await response.content()
    return response.code, json.loads(body) if body else None


def registry_file(daemon: Daemon) -> Path:
    return daemon.home / "sessions" / f"{daemon.process.pid}.json"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_twisted.ensureDeferred
async def test_own_registry_file_lives_with_the_daemon(tmp_path: Path) -> None:
    """The file appears at start with the daemon's URL, is listed as current, and is gone after SIGTERM."""
    daemon = start_daemon(tmp_path, env={"CODEBUDDY_SESSION_KIND": "daemon", "CODEBUDDY_SESSION_NAME": "main"})
    try:
        path = registry_file(daemon)
        data = json.loads(path.read_text())
        assert (data["pid"], data["kind"], data["name"], data["endpoint"], data["mode"]) == (
            daemon.process.pid, "daemon", "main", daemon.url, "local")
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        status, body = await call(daemon.url + "/api/v1/workers")
        assert status == 200
        [me] = body["data"]
        assert (me["id"], me["current"], me["status"], me["cwd"]) == (
            str(daemon.process.pid), True, "running", str(daemon.workspace.resolve()))
        status, body = await call(daemon.url + "/api/v1/workers/main/logs?tail=50")
        assert status == 200 and body["data"]["type"] == "telemetry"
        assert "codebuddy listening on" in body["data"]["content"]
        status, body = await call(daemon.url + "/api/v1/workers/main", method="DELETE")
        assert (status, body["error"]["code"]) == (409, "CONFLICT")
    finally:
        assert daemon.stop() in (0, -15)  # twistd exits with the signal that stopped it
    assert not path.exists()


@pytest_twisted.ensureDeferred
async def test_remote_daemon_merged_and_unreachable_offline(tmp_path: Path) -> None:
    """A second daemon added with POST /workers is merged; a closed port is offline; both stop cleanly."""
    (tmp_path / "gateway").mkdir()
    (tmp_path / "box").mkdir()
    gateway = start_daemon(tmp_path / "gateway")
    box = start_daemon(tmp_path / "box", env={"CODEBUDDY_SESSION_KIND": "daemon", "CODEBUDDY_SESSION_NAME": "box"})
    try:
        assert registry_file(gateway).exists() and registry_file(box).exists()
        status, body = await call(gateway.url + "/api/v1/workers", "POST", json={"url": box.url, "name": "box2"})
        assert status == 201 and body["data"]["status"] == "running"
        manual = body["data"]["id"]
        status, body = await call(gateway.url + "/api/v1/workers", "POST",
                                  json={"url": f"http://127.0.0.1:{closed_port()}", "name": "down"})
        assert status == 201 and body["data"]["status"] == "offline"

        status, body = await call(gateway.url + "/api/v1/workers")
        assert status == 200
        rows = {row["id"]: row for row in body["data"]}
        remote_id = f"{manual}:{box.process.pid}"
        assert set(rows) == {str(gateway.process.pid), manual, remote_id, body["data"][-1]["id"]}
        assert rows[remote_id]["kind"] == "daemon" and rows[remote_id]["mode"] == "remote"
        assert rows[remote_id]["endpoint"] == box.url and rows[remote_id]["name"] == "box"
        down = body["data"][-1]
        assert down["name"] == "down" and down["status"] == "offline" and "refused" in down["error"].lower()

        # The remote worker's logs, read through the gateway.
        status, body = await call(f"{gateway.url}/api/v1/workers/box2:box/logs?tail=20")
        assert status == 200 and body["data"]["type"] == "telemetry"
        assert box.url in body["data"]["content"]

        # Local only: the remote daemons are left out.
        status, body = await call(gateway.url + "/api/v1/workers?local=true")
        assert [row["id"] for row in body["data"]] == [str(gateway.process.pid)]

        assert box.stop() in (0, -15)
        assert not registry_file(box).exists()
        status, body = await call(gateway.url + "/api/v1/workers")
        assert status == 200
        statuses = {row["name"]: row["status"] for row in body["data"] if row["mode"] == "remote"}
        assert statuses == {"box2": "offline", "down": "offline"}
    finally:
        box.stop()
        gateway.stop()
    assert not registry_file(gateway).exists()


WORKER = textwrap.dedent("""
    import json, os, subprocess, sys, time
    import psutil
    child = subprocess.Popen(["sleep", "300"])
    sessions = sys.argv[1]
    record = {"pid": os.getpid(), "kind": "bg", "name": "job", "cwd": os.getcwd(), "mode": "local",
              "startedAt": int(time.time() * 1000), "processStartTime": psutil.Process().create_time()}
    with open(os.path.join(sessions, f".{os.getpid()}.tmp"), "w") as handle:
        json.dump(record, handle)
    os.replace(os.path.join(sessions, f".{os.getpid()}.tmp"), os.path.join(sessions, f"{os.getpid()}.json"))
    print(child.pid, flush=True)
    time.sleep(300)
""")


@pytest_twisted.ensureDeferred
async def test_killing_a_worker_kills_its_children(daemon: Daemon, tmp_path: Path) -> None:
    """DELETE ends a bg worker and the child it started (the group), then removes its registry file."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    worker = subprocess.Popen([sys.executable, str(script), str(daemon.home / "sessions")],
                              stdout=subprocess.PIPE, start_new_session=True, cwd=str(daemon.workspace))
    try:
        assert worker.stdout is not None
        grandchild = psutil.Process(int(worker.stdout.readline()))
        status, body = await call(daemon.url + "/api/v1/workers?kind=bg")
        assert [row["pid"] for row in body["data"]] == [worker.pid]

        status, body = await call(f"{daemon.url}/api/v1/workers/job", "DELETE")
        assert (status, body["data"]) == (200, {"id": str(worker.pid), "pid": worker.pid, "status": "terminated",
                                                "signal": "SIGTERM"})
        # The daemon answered once the whole group had ended: reaping is immediate.
        assert worker.wait(timeout=10) == -15
        try:
            assert grandchild.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass
        assert not (daemon.home / "sessions" / f"{worker.pid}.json").exists()
        status, body = await call(daemon.url + "/api/v1/workers/job")
        assert (status, body["error"]["code"]) == (404, "WORKER_NOT_FOUND")
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, 9)
            worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()


@pytest_twisted.ensureDeferred
async def test_workers_in_openapi(daemon: Daemon) -> None:
    """The workers routes are in the generated OpenAPI document."""
    status, doc = await call(daemon.url + "/api/openapi.json")
    assert status == 200
    for path in ("/api/v1/workers", "/api/v1/workers/{worker_id}", "/api/v1/workers/{worker_id}/logs"):
        assert path in doc["paths"], path
    assert set(doc["paths"]["/api/v1/workers/{worker_id}"]) >= {"get", "delete"}
