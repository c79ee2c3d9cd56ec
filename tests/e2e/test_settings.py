"""
Settings against a real daemon: the spec's examples over sockets, files edited by hand while it
runs, and gateway auth changed without a restart (through the API and by hand).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.task import deferLater

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def call(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any]:
    response = await treq.request(method, url, **kwargs)
    body = await response.content()
    return response.code, json.loads(body) if body else None


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = 10.0) -> None:
    """Ask ``check`` every 0.1 s until it is true; fail after ``limit`` seconds of trying."""
    for _ in range(int(limit / 0.1)):
        if await check():
            return
        await deferLater(_reactor(), 0.1, lambda: None)
    raise AssertionError(f"not within {limit} s: {what}")


def hand_edit(path: Path, content: Any) -> None:
    """Write a settings file as a user does, with an mtime that differs from the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    mtime = max(before + 1_000_000_000, path.stat().st_mtime_ns)
    os.utime(path, ns=(mtime, mtime))


@pytest_twisted.ensureDeferred
async def test_spec_examples(daemon: Daemon) -> None:
    """The spec's curl examples, verbatim apart from the port, and the files they write."""
    base = daemon.url + "/api/v1/settings"
    user_file = daemon.home / "settings.json"

    # curl http://127.0.0.1:8080/api/v1/settings
    status, body = await call(base)
    assert status == 200 and body["data"]["permissions"]["defaultMode"] == "default"
    assert body["data"]["cleanupPeriodDays"] == 30
    # curl "http://127.0.0.1:8080/api/v1/settings?scope=user"
    assert await call(base + "?scope=user") == (200, {"data": {}})
    # curl http://127.0.0.1:8080/api/v1/settings/model
    status, body = await call(base + "/model")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    # curl -X PUT http://127.0.0.1:8080/api/v1/settings/theme -H "Content-Type: application/json" -d '{"value": "dark"}'
    assert await call(base + "/theme", "PUT", headers=JSON, data=b'{"value": "dark"}') == (
        200, {"data": {"key": "theme", "value": "dark", "scope": "user"}})
    assert json.loads(user_file.read_text()) == {"theme": "dark"}
    assert stat.S_IMODE(user_file.stat().st_mode) == 0o600
    # curl -X POST http://127.0.0.1:8080/api/v1/settings/permissions/items \
    #   -H "Content-Type: application/json" -d '{"values": ["Allow: Read(**)"]}'
    status, body = await call(base + "/permissions/items", "POST", headers=JSON,
                              data=b'{"values": ["Allow: Read(**)"]}')
    assert (status, body["data"]["value"], body["data"]["changed"]) == (200, {"allow": ["Read(**)"]},
                                                                        ["Allow: Read(**)"])
    assert json.loads(user_file.read_text()) == {"theme": "dark", "permissions": {"allow": ["Read(**)"]}}
    status, body = await call(base)
    assert (body["data"]["theme"], body["data"]["permissions"]["allow"]) == ("dark", ["Read(**)"])
    # curl -X POST http://127.0.0.1:8080/api/v1/settings/permissions/remove \
    #   -H "Content-Type: application/json" -d '{"values": ["Allow: Read(**)"]}'
    status, body = await call(base + "/permissions/remove", "POST", headers=JSON,
                              data=b'{"values": ["Allow: Read(**)"]}')
    assert (status, body["data"]["value"], body["data"]["changed"]) == (200, {"allow": []}, ["Allow: Read(**)"])
    assert json.loads(user_file.read_text()) == {"theme": "dark", "permissions": {"allow": []}}
    # the model, once set
    assert (await call(base + "/model", "PUT", json={"value": "claude-sonnet-4"}))[0] == 200
    assert await call(base + "/model") == (200, {"data": {"key": "model", "value": "claude-sonnet-4",
                                                          "scope": "user"}})
    # the routes are in the served OpenAPI document
    status, document = await call(daemon.url + "/api/openapi.json")
    assert {"/api/v1/settings", "/api/v1/settings/{key}", "/api/v1/settings/{key}/items",
            "/api/v1/settings/{key}/remove"} <= set(document["paths"])


@pytest_twisted.ensureDeferred
async def test_files_edited_by_hand_while_running(daemon: Daemon) -> None:
    """Hand edits of any scope are read by the next GET; a broken file is reported and left alone."""
    base = daemon.url + "/api/v1/settings"
    user_file = daemon.home / "settings.json"
    local_file = daemon.workspace / ".codebuddy" / "settings.local.json"
    assert (await call(base + "/theme", "PUT", json={"value": "dark"}))[0] == 200
    assert (await call(base + "/theme"))[1]["data"]["value"] == "dark"

    hand_edit(user_file, {"theme": "light", "model": "by-hand"})
    assert await call(base + "/theme") == (200, {"data": {"key": "theme", "value": "light", "scope": "user"}})
    hand_edit(local_file, {"model": "local-model"})
    assert await call(base + "/model") == (200, {"data": {"key": "model", "value": "local-model", "scope": "local"}})
    status, body = await call(base + "?scope=project-local")
    assert (status, body["data"]) == (200, {"model": "local-model"})

    broken = '{\n  "model": "local-model",\n  oops\n}\n'
    hand_edit(local_file, broken)
    status, body = await call(base)
    assert status == 200 and body["data"]["model"] == "by-hand"
    assert body["meta"]["errors"] == [{"scope": "local", "path": str(local_file), "line": 3, "column": 3,
                                       "message": "not valid JSON: Expecting property name enclosed in double quotes"}]
    status, body = await call(base + "/model?scope=local", "PUT", json={"value": "x"})
    assert (status, body["error"]["code"], body["error"]["details"]["line"]) == (409, "SETTINGS_INVALID", 3)
    assert local_file.read_text() == broken
    hand_edit(local_file, {"model": "fixed"})
    assert (await call(base + "/model"))[1]["data"]["value"] == "fixed"


@pytest_twisted.ensureDeferred
async def test_gateway_password_without_restart(daemon: Daemon) -> None:
    """PUT gateway closes the daemon at once; the file edited back to auth none re-opens it (2 s poll)."""
    base = daemon.url + "/api/v1/settings"
    user_file = daemon.home / "settings.json"
    bearer = {"Authorization": "Bearer s3cret-from-settings"}

    status, body = await call(base + "/gateway", "PUT",
                              json={"value": {"auth": "password", "password": "s3cret-from-settings"}})
    assert status == 200, body
    assert json.loads(user_file.read_text()) == {"gateway": {"auth": "password", "password": "s3cret-from-settings"}}
    assert stat.S_IMODE(user_file.stat().st_mode) == 0o600

    async def closed() -> bool:
        status, body = await call(base + "?scope=user")
        return status == 401 and body["error"]["code"] == "AUTH_REQUIRED"

    await eventually(closed, "requests without the password answered 401")
    status, body = await call(base + "?scope=user", headers=bearer)
    assert (status, body["data"]["gateway"]["auth"]) == (200, "password")
    status, body = await call(base + "?scope=user", headers={"Authorization": "Bearer wrong"})
    assert (status, body["error"]["code"]) == (401, "AUTH_INVALID")
    status, body = await call(daemon.url + "/api/v1/auth/login", "POST", json={"password": "s3cret-from-settings"})
    assert status == 200, body

    hand_edit(user_file, {"gateway": {"auth": "none"}})

    async def open_again() -> bool:
        status, _body = await call(base + "?scope=user")
        return status == 200

    await eventually(open_again, "the hand edit to auth none applied by the 2 s poll")
    assert await call(base + "/gateway?scope=user") == (200, {"data": {"key": "gateway", "value": {"auth": "none"},
                                                                       "scope": "user"}})
    assert daemon.process.poll() is None
