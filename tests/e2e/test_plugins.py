"""
Plugins against a real daemon over real sockets: a local marketplace through its whole life
(add, browse, install, list, disable, enable, uninstall, delete), a git marketplace cloned in
the daemon's thread pool, and validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq

from tests.e2e.conftest import Daemon
from tests.plugins.helpers import git_commit, make_marketplace, needs_git

pytestmark = pytest.mark.e2e

PLUGIN = "my-plugin@my-marketplace"


async def call(daemon: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {} if body is None else {"json": body}
    response = await treq.request(method, daemon.url + "/api/v1/plugins" + path, **kwargs)
    content = await response.content()
    return response.code, json.loads(content) if content else None


def user_settings(daemon: Daemon) -> dict[str, Any]:
    path = daemon.home / "settings.json"
    return json.loads(path.read_text()) if path.exists() else {}  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_local_marketplace_lifecycle(daemon: Daemon, tmp_path: Path) -> None:
    source = make_marketplace(tmp_path / "market")

    status, body = await call(daemon, "POST", "/marketplaces", {"source": str(source)})
    assert status == 201, body
    assert (body["data"]["name"], body["data"]["type"], body["data"]["pluginCount"]) == (
        "my-marketplace", "directory", 1)
    status, body = await call(daemon, "POST", "/marketplaces", {"source": str(source)})
    assert (status, body["error"]["code"]) == (409, "ALREADY_EXISTS")
    status, body = await call(daemon, "GET", "/marketplaces")
    assert status == 200 and [m["name"] for m in body["data"]] == ["my-marketplace"]

    status, body = await call(daemon, "POST", "/marketplaces/browse", {"marketplace": "my-marketplace"})
    assert status == 200
    assert [(p["id"], p["status"], p["features"]) for p in body["data"]] == [(PLUGIN, None, ["commands"])]

    status, body = await call(daemon, "POST", "", {"plugin": PLUGIN})
    assert status == 201, body
    install_path = Path(body["data"]["installPath"])
    assert install_path == daemon.home / "plugins/cache/my-marketplace/my-plugin/1.0.0"
    assert (install_path / "commands/hello.md").exists()
    assert user_settings(daemon)["enabledPlugins"] == {PLUGIN: True}
    status, body = await call(daemon, "POST", "", {"plugin": PLUGIN})
    assert (status, body["data"]["alreadyInstalled"]) == (200, True)

    status, body = await call(daemon, "GET", "")
    assert status == 200
    assert [(p["id"], p["version"], p["status"], p["canRemove"]) for p in body["data"]] == [
        (PLUGIN, "1.0.0", "enabled", True)]
    status, body = await call(daemon, "POST", "/marketplaces/browse", {"marketplace": "my-marketplace"})
    assert body["data"][0]["status"] == "installed"

    status, body = await call(daemon, "POST", "/disable", {"plugin": PLUGIN})
    assert (status, body["data"]["enabled"]) == (200, False)
    assert user_settings(daemon)["enabledPlugins"] == {PLUGIN: False}
    status, body = await call(daemon, "POST", "/enable", {"plugin": PLUGIN})
    assert (status, body["data"]["enabled"]) == (200, True)
    assert user_settings(daemon)["enabledPlugins"] == {PLUGIN: True}

    status, body = await call(daemon, "POST", "/uninstall", {"plugin": PLUGIN})
    assert (status, body["data"]) == (200, {"id": PLUGIN, "uninstalled": True, "removedFiles": True})
    assert not install_path.exists() and user_settings(daemon)["enabledPlugins"] == {}
    status, body = await call(daemon, "GET", "")
    assert (status, body["data"]) == (200, [])

    status, body = await call(daemon, "POST", "", {"plugin": PLUGIN})  # installed again, then removed with
    assert status == 201                                                # its marketplace
    status, body = await call(daemon, "DELETE", "/marketplaces/my-marketplace")
    assert (status, body["data"]) == (200, {"name": "my-marketplace", "removed": True,
                                            "uninstalledPlugins": [PLUGIN]})
    assert user_settings(daemon)["enabledPlugins"] == {}
    assert not (daemon.home / "plugins/marketplaces/my-marketplace").exists()
    assert not (daemon.home / "plugins/cache/my-marketplace").exists()
    assert (source / ".claude-plugin/marketplace.json").exists()
    status, body = await call(daemon, "DELETE", "/marketplaces/my-marketplace")
    assert (status, body["error"]["code"]) == (404, "MARKETPLACE_NOT_FOUND")


@needs_git
@pytest_twisted.ensureDeferred
async def test_git_marketplace_and_validate(daemon: Daemon, tmp_path: Path) -> None:
    repo = make_marketplace(tmp_path / "repo", name="git-market")
    sha = git_commit(repo)
    status, body = await call(daemon, "POST", "/marketplaces", {"source": f"file://{repo}"})
    assert (status, body["data"]["type"]) == (201, "git"), body
    status, body = await call(daemon, "POST", "", {"plugin": "my-plugin@git-market"})
    assert (status, body["data"]["gitCommitSha"]) == (201, sha)
    status, body = await call(daemon, "POST", "/marketplaces/update", {"marketplace": "git-market"})
    assert status == 200 and body["data"]["pluginCount"] == 1
    status, body = await call(daemon, "POST", "/marketplaces", {"source": f"file://{tmp_path}/missing"})
    assert (status, body["error"]["code"]) == (502, "SOURCE_UNREACHABLE")

    status, body = await call(daemon, "POST", "/validate", {"path": str(repo)})
    assert (status, body["data"]["valid"], body["data"]["type"]) == (200, True, "marketplace")
    status, body = await call(daemon, "POST", "/validate", {"manifest": {"name": "x", "owner": "me", "plugins": []}})
    assert status == 200 and body["data"]["errors"] == [{
        "path": "owner", "message": 'owner must be an object with a "name", e.g. {"name": "Your Team", '
                                    '"email": "team@example.com"} (not a string)'}]

    response = await treq.get(daemon.url + "/api/openapi.json")
    paths = json.loads(await response.content())["paths"]
    assert "/api/v1/plugins/marketplaces/{name}" in paths and "/api/v1/plugins/validate" in paths
