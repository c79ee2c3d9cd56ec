"""
Checkpoints against a real daemon: an agent (played by a CheckpointStore in this process, on the
daemon's home) records checkpoints and edits files in the daemon's workspace while it runs; the
file-changes API (both forms) lists, diffs and reverts them over real sockets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq

from tests.checkpoints.helpers import Agent
from tests.e2e.conftest import Daemon, start_daemon

pytestmark = pytest.mark.e2e

CURRENT = "e2e-checkpoints"


async def call(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any]:
    response = await treq.request(method, url, **kwargs)
    body = await response.content()
    return response.code, json.loads(body) if body else None


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Agent]]:
    """A daemon with --session-id CURRENT; the agent writes into its home and workspace."""
    tmp = tmp_path_factory.mktemp("checkpoints")
    daemon = start_daemon(tmp, "--session-id", CURRENT)
    try:
        yield daemon, Agent(daemon.home, daemon.workspace.resolve(), CURRENT)
    finally:
        daemon.stop()


@pytest_twisted.ensureDeferred
async def test_diff_list_and_revert_each_scope(setup: tuple[Daemon, Agent]) -> None:
    daemon, agent = setup
    api = daemon.url + "/api/v1/file-changes"
    internal = daemon.url + "/internal/file-changes"
    ws = agent.workspace
    (ws / "app.py").write_text("print('v0')\n")

    # before any message, the session has no transcript
    status, body = await call(api + "/checkpoints")
    assert (status, body["error"]["code"]) == (404, "SESSION_NOT_FOUND")

    agent.say("m1", "Add logging")
    agent.write("app.py", "import logging\nprint('v1')\n")
    agent.write("log.cfg", "level=INFO\n")
    agent.reply("Added logging")
    agent.say("m2", "Make it quieter")
    agent.write("log.cfg", "level=WARNING\n")
    agent.reply("Done")
    app, cfg = str(ws / "app.py"), str(ws / "log.cfg")

    status, body = await call(api + "/checkpoints")
    assert status == 200 and body["checkpoints"] == body["data"]["checkpoints"]
    assert [(c["id"], c["label"], c["files"], c["additions"], c["deletions"]) for c in body["checkpoints"]] == [
        ("m2", "Make it quieter", [cfg], 1, 1),
        ("m1", "Add logging", [app, cfg], 3, 1),
    ]
    status, body = await call(api + "/diff?path=" + cfg)
    assert (status, body["path"], body["oldText"], body["newText"]) == (200, cfg, "level=INFO\n", "level=WARNING\n")
    status, body = await call(internal + "/checkpoints", "POST", json={})
    assert [c["id"] for c in body["checkpoints"]] == ["m2", "m1"]

    # Code: back to m2's start
    status, body = await call(api + "/revert", "POST", json={"checkpointId": "m2", "scope": "Code"})
    assert (status, body["success"], body["revertedFiles"]) == (200, True, [cfg])
    assert (ws / "log.cfg").read_text() == "level=INFO\n"

    # Conversation: m2 and its reply leave the transcript; the files stay
    status, body = await call(internal + "/revert", "POST", json={"checkpointId": "m2", "scope": "Conversation"})
    assert (status, body["removedMessages"]) == (200, 2)
    status, body = await call(daemon.url + "/api/v1/sessions")
    [row] = [s for s in body["data"]["sessions"] if s["id"] == CURRENT]
    assert (row["messageCount"], row["isCurrent"]) == (2, True)
    assert any(name.startswith(f"{CURRENT}.jsonl.bak-") for name in os.listdir(agent.history()))

    # the agent goes on; the Web UI diffs a created file and reverts it by path
    agent.say("m3", "Add a README")
    agent.write("README.md", "# app\n")
    readme = str(ws / "README.md")
    status, body = await call(internal + "/diff", "POST", json={"path": readme})
    assert (status, body["oldText"], body["newText"]) == (200, None, "# app\n")
    status, body = await call(api + "/diff?path=" + readme)
    assert body["oldText"] == ""
    status, body = await call(internal + "/revert", "POST", json={"paths": [readme]})
    assert (status, body["revertedFiles"]) == (200, [readme])
    assert not (ws / "README.md").exists()

    # CodeAndConversation to the first message: everything as before the agent started
    status, body = await call(api + "/revert", "POST", json={"checkpointId": "m1", "scope": "CodeAndConversation"})
    assert status == 200 and body["checkpointId"] == "m1"
    assert sorted(os.listdir(ws)) == ["app.py"] and (ws / "app.py").read_text() == "print('v0')\n"
    status, body = await call(api + "/checkpoints")
    assert body["checkpoints"] == []
    status, body = await call(api + "/revert", "POST", json={})
    assert (status, body["error"]["code"]) == (400, "BAD_REQUEST")


@pytest_twisted.ensureDeferred
async def test_errors_over_sockets(setup: tuple[Daemon, Agent]) -> None:
    daemon, agent = setup
    api = daemon.url + "/api/v1/file-changes"
    other = Agent(agent.home, agent.workspace, "e2e-other")
    other.say("o1", "Other work")
    path = str(other.write("other.txt", "x"))
    for method, url, kwargs, expected in [
        ("GET", api + "/diff", {}, (400, "PATH_REQUIRED")),
        ("GET", api + "/diff?sessionId=e2e-other&path=/nope", {}, (404, "NOT_FOUND")),
        ("GET", api + "/checkpoints?sessionId=missing", {}, (404, "SESSION_NOT_FOUND")),
        ("POST", api + "/revert", {"json": {"sessionId": "e2e-other", "checkpointId": "checkpoint-uuid"}},
         (404, "NOT_FOUND")),
        ("POST", api + "/revert", {"json": {"sessionId": "e2e-other", "checkpointId": "o1", "scope": "All"}},
         (400, "BAD_REQUEST")),
        ("POST", daemon.url + "/internal/file-changes/diff", {"json": {"sessionId": "e2e-other"}},
         (400, "PATH_REQUIRED")),
        ("GET", daemon.url + "/internal/file-changes/diff", {}, (405, "METHOD_NOT_ALLOWED")),
        ("POST", daemon.url + "/internal/other", {}, (404, "NOT_FOUND")),
    ]:
        status, body = await call(url, method, **kwargs)
        assert (status, body["error"]["code"]) == expected, (method, url, body)
    status, body = await call(api + "/diff?sessionId=e2e-other&path=" + path)
    assert (status, body["oldText"], body["newText"]) == (200, "", "x")
    status, document = await call(daemon.url + "/api/openapi.json")
    assert {"/api/v1/file-changes/diff", "/api/v1/file-changes/checkpoints",
            "/api/v1/file-changes/revert"} <= set(document["paths"])


@pytest_twisted.ensureDeferred
async def test_internal_forms_with_password_auth(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "--session-id", CURRENT, "--auth", "password", "--password", "e2e-pw")
    try:
        Agent(daemon.home, daemon.workspace.resolve(), CURRENT).say("m1", "hello")
        url = daemon.url + "/internal/file-changes/checkpoints"
        status, body = await call(url, "POST", json={})
        assert (status, body["error"]["code"]) == (401, "AUTH_REQUIRED")
        status, body = await call(url, "POST", json={}, headers={"Authorization": "Bearer e2e-pw",
                                                                  "X-CodeBuddy-Request": "1"})
        assert (status, [c["id"] for c in body["checkpoints"]]) == (200, ["m1"])
    finally:
        daemon.stop()
