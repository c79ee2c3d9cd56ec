"""
The real daemon over real sockets: start-up, system and auth endpoints in both auth
modes, docs, errors, systemd readiness and a clean SIGTERM stop.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq

from tests.e2e.conftest import Daemon, run_to_exit, start_daemon

pytestmark = pytest.mark.e2e


async def get_json(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any, Any]:
    response = await treq.request(method, url, **kwargs)
    body = await response.content()
    return response.code, json.loads(body) if body else None, response


@pytest_twisted.ensureDeferred
async def test_health_exactly_as_the_spec(daemon: Daemon) -> None:
    """curl http://127.0.0.1:PORT/api/v1/health answers the spec's body."""
    status, body, response = await get_json(daemon.url + "/api/v1/health")
    assert status == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
    assert set(body) == {"data"}
    assert body["data"]["status"] == "ok"
    assert body["data"]["platforms"] == ["generic", "wecom", "wechat-kf"]
    assert isinstance(body["data"]["uptime"], float)


@pytest_twisted.ensureDeferred
async def test_system_endpoints(daemon: Daemon) -> None:
    """info, metrics and envs answer with the daemon's own facts."""
    _s, info, _r = await get_json(daemon.url + "/api/v1/info")
    assert info["data"]["cwd"] == str(daemon.workspace.resolve())
    assert info["data"]["homeDir"] == str(daemon.home)
    assert info["data"]["pid"] == daemon.process.pid
    assert info["data"]["authMode"] == "none"
    _s, metrics, _r = await get_json(daemon.url + "/api/v1/metrics")
    assert metrics["data"]["instances"][0]["pid"] == daemon.process.pid
    assert metrics["data"]["instances"][0]["rssMib"] > 0
    _s, envs, _r = await get_json(daemon.url + "/api/v1/envs")
    assert "PATH" in envs["data"]


@pytest_twisted.ensureDeferred
async def test_errors_are_json(daemon: Daemon) -> None:
    """Unknown routes, wrong methods and bad bodies are JSON errors with the right codes."""
    status, body, _r = await get_json(daemon.url + "/api/v1/no/such/route")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    status, body, _r = await get_json(daemon.url + "/api/v1/health", "DELETE")
    assert (status, body["error"]["code"]) == (405, "METHOD_NOT_ALLOWED")
    status, body, _r = await get_json(
        daemon.url + "/api/v1/auth/login", "POST", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert (status, body["error"]["code"]) == (400, "BAD_REQUEST")
    status, body, _r = await get_json(daemon.url + "/", "GET")
    assert status == 200 and body["data"]["docs"] == "/api/docs"
    status, body, _r = await get_json(daemon.url + "/index.php")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_openapi_and_docs(daemon: Daemon) -> None:
    """/api/openapi.json lists the routes; /api/docs and its assets load with no external URL."""
    status, doc, _r = await get_json(daemon.url + "/api/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.0.")
    for path in ("/api/v1/health", "/api/v1/info", "/api/v1/metrics", "/api/v1/envs", "/api/v1/auth/login",
                 "/api/v1/fs/stat", "/api/v1/fs/list", "/api/v1/fs/mkdir", "/api/v1/fs/remove", "/api/v1/fs/move",
                 "/api/v1/fs/watch", "/api/v1/fs/watcher/create", "/api/v1/fs/watcher/events",
                 "/api/v1/fs/watcher/remove", "/api/v1/fs/search", "/api/v1/fs/search-content",
                 "/api/v1/files/download", "/api/v1/files/upload", "/api/v1/files/compose"):
        assert path in doc["paths"], path
    refs = {value for value in _walk_refs(doc)}
    for ref in refs:
        assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"], ref
    download = doc["paths"]["/api/v1/files/download"]["get"]["responses"]["200"]["content"]
    assert "application/octet-stream" in download
    response = await treq.get(daemon.url + "/api/docs")
    page = await response.content()
    assert response.code == 200 and b"swagger-ui" in page and b"http" not in page.replace(b"http-equiv", b"")
    for asset in ("/api/docs/swagger-ui-bundle.js", "/api/docs/swagger-ui.css", "/api/docs/codebuddy-init.js"):
        response = await treq.get(daemon.url + asset)
        assert response.code == 200, asset
        assert len(await response.content()) > 100


def _walk_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in _walk_refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _walk_refs(value)]
    return []


@pytest_twisted.ensureDeferred
async def test_cors_preflight_and_origin(daemon: Daemon) -> None:
    """A loopback origin's preflight is 204; a foreign origin is refused 403 FORBIDDEN."""
    response = await treq.request(
        "OPTIONS",
        daemon.url + "/api/v1/info",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"},
    )
    await response.content()
    assert response.code == 204
    assert response.headers.getRawHeaders("access-control-allow-origin") == ["http://localhost:3000"]
    status, body, _r = await get_json(daemon.url + "/api/v1/info", headers={"Origin": "https://evil.example"})
    assert (status, body["error"]["code"]) == (403, "FORBIDDEN")
    status, body, _r = await get_json(daemon.url + "/api/v1/info", headers={"Host": "rebind.evil.example"})
    assert (status, body["error"]["code"]) == (403, "FORBIDDEN")


@pytest_twisted.ensureDeferred
async def test_password_mode(tmp_path: Path) -> None:
    """Password mode: public probes, 401 without credentials, every credential form, login limits."""
    daemon = start_daemon(tmp_path, "--auth", "password", env={"CODEBUDDY_GATEWAY_PASSWORD": "s3cret pw"})
    try:
        base = daemon.url + "/api/v1"
        assert (await get_json(base + "/health"))[0] == 200
        _s, status_body, _r = await get_json(base + "/auth/status")
        assert (status_body["authEnabled"], status_body["authenticated"]) == (True, False)
        status, body, _r = await get_json(base + "/info")
        assert (status, body["error"]["code"]) == (401, "AUTH_REQUIRED")
        assert (await get_json(base + "/info", headers={"Authorization": "Bearer s3cret pw"}))[0] == 200
        assert (await get_json(base + "/info?password=s3cret%20pw"))[0] == 200
        status, body, response = await get_json(base + "/auth/login", "POST", json={"password": "s3cret pw"})
        assert status == 200 and body["success"] is True and body["data"]["token"] == body["token"]
        token = body["token"]
        cookie = response.headers.getRawHeaders("set-cookie")[0]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert (await get_json(base + "/info", headers={"Authorization": f"Bearer {token}"}))[0] == 200
        assert (await get_json(base + f"/info?token={token}"))[0] == 200
        assert (await get_json(base + "/info", headers={"Cookie": f"codebuddy_token={token}"}))[0] == 200
        _s, status_body, _r = await get_json(base + "/auth/status", headers={"Authorization": f"Bearer {token}"})
        assert status_body["authenticated"] is True
        for _ in range(2):
            status, body, _r = await get_json(base + "/auth/login", "POST", json={"password": "wrong"})
            assert (status, body["error"]["code"]) == (401, "AUTH_INVALID")
        status, body, response = await get_json(base + "/auth/login", "POST", json={"password": "s3cret pw"})
        assert (status, body["error"]["code"]) == (429, "AUTH_RATE_LIMITED")
        assert 0 < int(response.headers.getRawHeaders("retry-after")[0]) <= 60
        assert response.phrase == b"Too Many Requests"
    finally:
        daemon.stop()


@pytest_twisted.ensureDeferred
async def test_token_survives_restart(tmp_path: Path) -> None:
    """A login token keeps working after the daemon restarts with the same password."""
    env = {"CODEBUDDY_GATEWAY_PASSWORD": "pw"}
    first = start_daemon(tmp_path, "--auth", "password", env=env)
    try:
        _s, body, _r = await get_json(first.url + "/api/v1/auth/login", "POST", json={"password": "pw"})
    finally:
        first.stop()
    second = start_daemon(tmp_path, "--auth", "password", env=env)
    try:
        headers = {"Authorization": f"Bearer {body['token']}"}
        status, _b, _r = await get_json(second.url + "/api/v1/info", headers=headers)
        assert status == 200
    finally:
        second.stop()


def test_generated_password(tmp_path: Path) -> None:
    """Password mode without a password generates one, stores it 0600 and logs it once."""
    daemon = start_daemon(tmp_path, "--auth", "password", "--access-log", "-")
    daemon.stop()
    stored = (daemon.home / "gateway-password").read_text().strip()
    assert stat.S_IMODE((daemon.home / "gateway-password").stat().st_mode) == 0o600
    output = daemon.read_output()
    assert output.count(stored) == 1
    again = start_daemon(tmp_path, "--auth", "password")
    again.stop()
    assert stored not in again.read_output()


def test_access_log_redacts_secrets(tmp_path: Path) -> None:
    """With --access-log -, requests are logged and passwords and tokens are not."""
    import urllib.request

    daemon = start_daemon(tmp_path, "--access-log", "-")
    with urllib.request.urlopen(daemon.url + "/api/v1/health?password=hunter2&token=tok123") as response:
        assert response.status == 200
    daemon.stop()
    output = daemon.read_output()
    assert "/api/v1/health?password=***&token=***" in output
    assert "hunter2" not in output and "tok123" not in output


def test_rate_limit(tmp_path: Path) -> None:
    """The general limiter answers 429 RATE_LIMITED with Retry-After past its burst."""
    import urllib.error
    import urllib.request

    daemon = start_daemon(tmp_path, env={"CODEBUDDY_RATE_LIMIT_RPS": "0.01", "CODEBUDDY_RATE_LIMIT_BURST": "2"})
    try:
        for _ in range(2):
            urllib.request.urlopen(daemon.url + "/api/v1/health").close()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(daemon.url + "/api/v1/health")
        assert caught.value.code == 429
        assert json.loads(caught.value.read())["error"]["code"] == "RATE_LIMITED"
        assert int(caught.value.headers["Retry-After"]) >= 1
    finally:
        daemon.stop()


def test_port_in_use(tmp_path: Path) -> None:
    """A port in use gives one clear line and a non-zero exit, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, output = run_to_exit(tmp_path, "--port", str(port))
    assert status != 0
    assert "Address already in use" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "args",
    [
        ["--auth", "maybe"],
        ["--port", "nonsense"],
        ["--cwd", "/no/such/dir"],
        ["--no-such-option"],
        ["--port", "bogus:1"],
        ["--port", "systemd:domain=INET:name=nothing-passed"],
    ],
)
def test_bad_options(tmp_path: Path, args: list[str]) -> None:
    """Bad options give one clear line and a non-zero exit, no traceback."""
    status, output = run_to_exit(tmp_path, *args)
    assert status != 0
    assert "Traceback" not in output
    assert "codebuddy" in output
    assert not (tmp_path / "home" / "gateway-password").exists()


def test_sigterm_and_systemd_notify(tmp_path: Path) -> None:
    """READY=1 is sent once the port listens; SIGTERM stops cleanly after STOPPING=1."""
    notify_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(30)
        daemon = start_daemon(tmp_path, env={"NOTIFY_SOCKET": notify_path})
        ready = notify.recv(4096)
        assert ready.startswith(b"READY=1")
        import urllib.request

        with urllib.request.urlopen(daemon.url + "/api/v1/health") as response:
            assert response.status == 200
        status = daemon.stop()
        assert notify.recv(4096) == b"STOPPING=1"
    assert status in (0, -15)
    assert "Traceback" not in daemon.read_output()


def test_unix_socket(tmp_path: Path) -> None:
    """An endpoint description such as unix:PATH is taken as it is."""
    path = tmp_path / "cb.sock"
    home = tmp_path / "home"
    process = start_unix(tmp_path, path, home)
    try:
        reply = unix_get(path, "/api/v1/health")
        assert reply.startswith(b"HTTP/1.0 200") or reply.startswith(b"HTTP/1.1 200")
        assert b'"status":"ok"' in reply
        info = json.loads(unix_get(path, "/api/v1/info").split(b"\r\n\r\n", 1)[1])
        assert info["data"]["endpoint"] == f"unix:{path}"
    finally:
        process.stop()


def unix_get(path: Path, url: str) -> bytes:
    """The raw HTTP/1.0 answer to GET ``url`` over the UNIX socket at ``path``."""
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        client.sendall(f"GET {url} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        reply = b""
        while chunk := client.recv(4096):
            reply += chunk
    return reply


def start_unix(tmp_path: Path, path: Path, home: Path) -> Daemon:
    import subprocess
    import time

    from tests.e2e.conftest import STARTUP_TIMEOUT, daemon_env, twistd

    process = subprocess.Popen(
        [twistd(), "--nodaemon", "--pidfile=", "codebuddy", "--port", f"unix:{path}", "--home", str(home)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=daemon_env(),
        cwd=str(tmp_path),
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not path.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert path.exists(), "the daemon did not create its socket"
    return Daemon(process, f"unix:{path}", home, tmp_path, [])


def test_codebuddy_serve_command(tmp_path: Path) -> None:
    """`codebuddy --serve --session-id ID` (the spec's quick start) serves in the foreground."""
    import urllib.request

    daemon = start_daemon(
        tmp_path, "--session-id", "my-session", command=[sys.executable, "-m", "codebuddy.cli", "--serve"]
    )
    try:
        with urllib.request.urlopen(daemon.url + "/api/v1/info") as response:
            assert json.loads(response.read())["data"]["sessionId"] == "my-session"
    finally:
        daemon.stop()


def test_help_documents_options(tmp_path: Path) -> None:
    """twistd codebuddy --help documents every option."""
    status, output = run_to_exit(tmp_path, "--help")
    assert status == 0
    for option in ("--port", "--host", "--session-id", "--cwd", "--home", "--auth", "--password", "--access-log"):
        assert option in output, option
    assert os.path.basename(sys.executable)
