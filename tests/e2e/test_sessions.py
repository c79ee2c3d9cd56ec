"""
Sessions against a real daemon: transcripts written into its home (before it starts and while it
runs), listed in the three cwd forms, renamed, deleted, and refused, over real sockets.
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

from codebuddy.sessions.store import SessionStore
from codebuddy.sessions.transcript import project_id
from tests.e2e.conftest import Daemon, start_daemon
from tests.sessions.helpers import T0, assistant, tool_call, user

pytestmark = pytest.mark.e2e

CURRENT = "e2e-current"


async def call(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any, Any]:
    response = await treq.request(method, url, **kwargs)
    body = await response.content()
    return response.code, json.loads(body) if body else None, response.headers


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, SessionStore, str]]:
    """A daemon with --session-id CURRENT over a home that already holds transcripts of two workspaces."""
    tmp = tmp_path_factory.mktemp("sessions")
    (tmp / "workspace").mkdir()
    workspace = str((tmp / "workspace").resolve())
    store = SessionStore(tmp / "home")
    store.append(CURRENT, workspace, [user("what is running?", T0 + 500, cwd=None), assistant("nothing", T0 + 501)])
    store.append("old-1", workspace, [user("refactor the parser", T0, cwd=None), *tool_call(T0 + 1),
                                      assistant("done", T0 + 3)])
    store.append("other-1", "/srv/other", [user("elsewhere", T0 + 100, cwd=None)])
    with open(store.transcript_path("old-1", workspace), "ab") as handle:
        handle.write(b"this line is not JSON\n\x00\xff\n")
    daemon = start_daemon(tmp, "--session-id", CURRENT)
    try:
        yield daemon, store, workspace
    finally:
        daemon.stop()


@pytest_twisted.ensureDeferred
async def test_list_rename_delete(setup: tuple[Daemon, SessionStore, str]) -> None:
    daemon, store, workspace = setup
    api = daemon.url + "/api/v1/sessions"
    status, body, _ = await call(api)
    assert status == 200
    assert [(s["id"], s["isCurrent"], s["messageCount"]) for s in body["data"]["sessions"]] == [
        (CURRENT, True, 2), ("old-1", False, 2)]
    assert body["data"]["sessions"][1]["name"] == "refactor the parser"

    status, body, _ = await call(api + "?cwd=*")
    assert [s["id"] for s in body["data"]["sessions"]] == [CURRENT, "other-1", "old-1"]
    assert {s["projectId"] for s in body["data"]["sessions"]} == {project_id(workspace), "srv-other"}
    status, body, _ = await call(api + "?cwd=/srv/other")
    rows = [(s["id"], s["cwd"], s["status"]) for s in body["data"]["sessions"]]
    assert rows == [("other-1", "/srv/other", "pending")]
    status, body, _ = await call(api + "?cwd=*&projectId=srv-other")
    assert [s["id"] for s in body["data"]["sessions"]] == ["other-1"]

    status, body, _ = await call(api + "/old-1/rename", "POST", json={"name": "Performance Optimization Discussion"})
    assert (status, body) == (204, None)
    status, body, _ = await call(api)
    assert [(s["name"], s["isUserDefinedTitle"]) for s in body["data"]["sessions"] if s["id"] == "old-1"] == [
        ("Performance Optimization Discussion", 1)]
    status, body, _ = await call(api + "/old-1/history")
    assert body["data"] == {"sessionId": "old-1", "name": "Performance Optimization Discussion",
                            "requests": [{"userInput": "refactor the parser", "finalReply": "done"}]}

    history = daemon.home / "file-history" / "other-1"
    history.mkdir(parents=True)
    (history / "backup.txt").write_text("v1")
    status, body, _ = await call(api + "/other-1", "DELETE")
    assert (status, body) == (204, None)
    assert not history.exists() and not (daemon.home / "projects" / "srv-other" / "other-1.jsonl").exists()

    for method, path, kwargs, expected in [
        ("DELETE", f"/{CURRENT}", {}, (400, "SESSION_DELETE_CURRENT")),
        ("DELETE", "/other-1", {}, (404, "SESSION_NOT_FOUND")),
        ("POST", "/nope/rename", {"json": {"name": "x"}}, (404, "SESSION_NOT_FOUND")),
        ("POST", "/old-1/rename", {"json": {"name": " "}}, (400, "BAD_REQUEST")),
        ("POST", "/old-1/rename", {"json": {}}, (400, "BAD_REQUEST")),
        ("DELETE", "/.hidden", {}, (400, "BAD_REQUEST")),
        ("GET", "/nope/history", {}, (404, "SESSION_NOT_FOUND")),
    ]:
        status, body, _ = await call(api + path, method, **kwargs)
        assert (status, body["error"]["code"]) == expected, (method, path, body)
    assert store.transcript_path(CURRENT, workspace).exists()


@pytest_twisted.ensureDeferred
async def test_traversal_never_touches_files(setup: tuple[Daemon, SessionStore, str]) -> None:
    daemon, _store, _workspace = setup
    victim = daemon.home / "victim.jsonl"
    victim.write_text('{"type":"message","role":"user","content":"keep"}\n')
    for raw in ("..%2Fvictim", "..%2F..%2Fvictim", "%2e%2e", "%2E%2E%2Fvictim", "a%5C..%5Cvictim"):
        status, body, _ = await call(f"{daemon.url}/api/v1/sessions/{raw}".encode(), "DELETE")
        assert (status, body["error"]["code"]) in ((400, "BAD_REQUEST"), (404, "NOT_FOUND")), (raw, body)
    assert victim.read_text() == '{"type":"message","role":"user","content":"keep"}\n'


@pytest_twisted.ensureDeferred
async def test_transcripts_written_while_running(setup: tuple[Daemon, SessionStore, str]) -> None:
    """The listing follows appends, new files and replaced files (the cache never serves stale rows)."""
    daemon, store, workspace = setup
    api = daemon.url + "/api/v1/sessions"
    store.append("live-1", workspace, [user("first turn", T0 + 1000, cwd=None)])
    status, body, _ = await call(api)
    [live] = [s for s in body["data"]["sessions"] if s["id"] == "live-1"]
    assert (live["messageCount"], live["updatedAt"]) == (1, T0 + 1000)
    store.append("live-1", workspace, [assistant("reply", T0 + 1001), {"type": "ai-title", "aiTitle": "Live"}])
    status, body, _ = await call(api)
    [live] = [s for s in body["data"]["sessions"] if s["id"] == "live-1"]
    assert (live["messageCount"], live["updatedAt"], live["name"]) == (2, T0 + 1001, "Live")
    path = store.transcript_path("live-1", workspace)
    replacement = Path(str(path) + ".tmp")
    replacement.write_bytes(json.dumps(user("replaced", T0 + 2000, cwd=workspace)).encode() + b"\n")
    os.replace(replacement, path)
    status, body, _ = await call(api)
    [live] = [s for s in body["data"]["sessions"] if s["id"] == "live-1"]
    assert (live["messageCount"], live["name"], body["data"]["sessions"][0]["id"]) == (1, "replaced", "live-1")


@pytest_twisted.ensureDeferred
async def test_deprecated_routes_and_openapi(setup: tuple[Daemon, SessionStore, str]) -> None:
    daemon, _store, workspace = setup
    status, body, headers = await call(daemon.url + "/api/v1/sessions/across-projects")
    assert status == 200 and list(body) == ["sessions"] and body["sessions"]
    assert headers.getRawHeaders("deprecation") == ["true"]
    status, body, headers = await call(daemon.url + "/api/v1/sessions/workspaces")
    assert status == 200 and {"path": workspace, "label": os.path.basename(workspace)} in body["workspaces"]
    assert headers.getRawHeaders("deprecation") == ["true"]
    status, document, _ = await call(daemon.url + "/api/openapi.json")
    paths = document["paths"]
    for path in ("/api/v1/sessions", "/api/v1/sessions/{session_id}", "/api/v1/sessions/{session_id}/rename",
                 "/api/v1/sessions/{session_id}/history", "/api/v1/sessions/across-projects",
                 "/api/v1/sessions/workspaces"):
        assert path in paths, path
    assert "SessionItem" in document["components"]["schemas"]
