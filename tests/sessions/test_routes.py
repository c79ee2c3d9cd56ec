"""The sessions routes in memory (StubTreq, Clock) over a real temporary home."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, maybeDeferred

from codebuddy.sessions.routes import SessionItem, SessionsRoutes
from codebuddy.sessions.store import BASE_FIELDS, SessionStore
from codebuddy.web.auth import GatewaySettings
from codebuddy.web.json import wire_name
from tests.helpers import ApiFixture
from tests.sessions.helpers import T0, assistant, iso, user, write_transcript

WS = "/home/u/app"
CURRENT = "cur-0001"
LIST = "/api/v1/sessions"


class Fixture(ApiFixture):
    """The sessions area over ``home``, the daemon's workspace ``WS`` and session ``CURRENT``."""

    def __init__(self, home: Path, settings: GatewaySettings | None = None) -> None:
        self.home = home
        self.blocking: list[str] = []

        def run_blocking(fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
            self.blocking.append(fn.__name__)
            return maybeDeferred(fn, *args, **kwargs)

        self.store = SessionStore(home, clock=lambda: T0 / 1000 + 60)
        super().__init__([SessionsRoutes(self.store, run_blocking, WS, CURRENT)], settings=settings)

    def sessions(self, path: str = LIST) -> list[dict[str, Any]]:
        status, body, _ = self.json("GET", path)
        assert status == 200, body
        sessions: list[dict[str, Any]] = body["data"]["sessions"]
        return sessions

    def error(self, method: str, path: str | bytes, **kwargs: Any) -> tuple[int, str]:
        status, body, _ = self.json(method, path, **kwargs)
        return status, body["error"]["code"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def api(home: Path) -> Fixture:
    write_transcript(home, WS, CURRENT, [user("current work", T0 + 300), assistant("ok", T0 + 301)])
    write_transcript(home, WS, "older", [user("older question", T0), assistant("answer", T0 + 5)])
    write_transcript(home, "/path/to/workspace", "ws-1",
                     [user("in the other workspace", T0 + 100, cwd="/path/to/workspace"), assistant("a", T0 + 200)])
    write_transcript(home, "/srv/hashed", "h-1", [user("hashed project", T0 + 50, cwd="/srv/hashed")],
                     project="workspace-hash")
    write_transcript(home, WS, "SESSION_ID", [user("to be renamed", T0 + 10)])
    return Fixture(home)


EXTENDED = {*BASE_FIELDS, "projectId", "cwd", "status", "isPlayground"}


# --------------------------------------------------------------------------- the spec's examples


def test_list_current_workspace(api: Fixture) -> None:
    """curl http://127.0.0.1:8080/api/v1/sessions"""
    status, body, response = api.json("GET", "/api/v1/sessions")
    assert status == 200 and list(body) == ["data"] and list(body["data"]) == ["sessions"]
    sessions = body["data"]["sessions"]
    assert [s["id"] for s in sessions] == [CURRENT, "SESSION_ID", "older"]  # newest updatedAt first
    assert all(list(s) == list(BASE_FIELDS) for s in sessions)
    assert [s["isCurrent"] for s in sessions] == [True, False, False]
    assert sessions[0] == {"id": CURRENT, "name": "current work", "createdAt": T0 + 300, "updatedAt": T0 + 301,
                           "messageCount": 2, "isCurrent": True, "isUserDefinedTitle": 0}
    assert response.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
    assert "list_sessions" not in api.blocking and "_list_body" in api.blocking  # walked off the reactor


def test_list_all_workspaces(api: Fixture) -> None:
    """curl http://127.0.0.1:8080/api/v1/sessions?cwd=*"""
    sessions = api.sessions("/api/v1/sessions?cwd=*")
    assert [s["id"] for s in sessions] == [CURRENT, "ws-1", "h-1", "SESSION_ID", "older"]
    assert all(set(s) == EXTENDED for s in sessions)
    assert not any(s["isCurrent"] for s in sessions)  # isCurrent only without cwd
    by_id = {s["id"]: s for s in sessions}
    assert (by_id["ws-1"]["projectId"], by_id["ws-1"]["cwd"], by_id["ws-1"]["status"],
            by_id["ws-1"]["isPlayground"]) == ("path-to-workspace", "/path/to/workspace", "pending", False)
    assert (by_id["h-1"]["projectId"], by_id["h-1"]["cwd"]) == ("workspace-hash", "/srv/hashed")


def test_list_one_workspace(api: Fixture) -> None:
    """curl http://127.0.0.1:8080/api/v1/sessions?cwd=/path/to/workspace"""
    sessions = api.sessions("/api/v1/sessions?cwd=/path/to/workspace")
    assert [(s["id"], s["projectId"], s["isCurrent"]) for s in sessions] == [("ws-1", "path-to-workspace", False)]
    assert set(sessions[0]) == EXTENDED
    mine = api.sessions(f"/api/v1/sessions?cwd={WS}/")  # trailing slash: same project
    assert [s["id"] for s in mine] == [CURRENT, "SESSION_ID", "older"] and not mine[0]["isCurrent"]
    assert [s["id"] for s in api.sessions("/api/v1/sessions?cwd=../../../path/to/workspace")] == ["ws-1"]  # relative
    assert api.sessions("/api/v1/sessions?cwd=/no/such/place") == []


def test_list_one_project(api: Fixture) -> None:
    """curl http://127.0.0.1:8080/api/v1/sessions?cwd=*&projectId=workspace-hash"""
    sessions = api.sessions("/api/v1/sessions?cwd=*&projectId=workspace-hash")
    assert [(s["id"], s["projectId"]) for s in sessions] == [("h-1", "workspace-hash")]
    assert [s["id"] for s in api.sessions("/api/v1/sessions?cwd=*&projectId=home-u-app")] == [
        CURRENT, "SESSION_ID", "older"]
    assert [s["id"] for s in api.sessions("/api/v1/sessions?cwd=*&project_id=path-to-workspace")] == ["ws-1"]
    # a filter that is not the cwd's project: nothing
    assert api.sessions("/api/v1/sessions?cwd=/path/to/workspace&projectId=home-u-app") == []
    assert [s["id"] for s in api.sessions("/api/v1/sessions?projectId=home-u-app")] == [CURRENT, "SESSION_ID", "older"]
    assert api.sessions("/api/v1/sessions?projectId=workspace-hash") == []
    assert api.sessions("/api/v1/sessions?cwd=*&projectId=nope") == []
    for bad in ("..", "a%2Fb", ".", "a%5Cb"):
        assert api.error("GET", f"/api/v1/sessions?cwd=*&projectId={bad}") == (400, "BAD_REQUEST"), bad


def test_rename(api: Fixture) -> None:
    """curl -X POST .../api/v1/sessions/SESSION_ID/rename -d '{"name": "Performance Optimization Discussion"}'"""
    response, body = api.request("POST", "/api/v1/sessions/SESSION_ID/rename",
                                 headers={"Content-Type": "application/json"},
                                 data=b'{"name": "Performance Optimization Discussion"}')
    assert (response.code, body) == (204, b"")
    [renamed] = [s for s in api.sessions() if s["id"] == "SESSION_ID"]
    assert (renamed["name"], renamed["isUserDefinedTitle"], renamed["updatedAt"]) == (
        "Performance Optimization Discussion", 1, T0 + 10)
    last = (api.home / "projects" / "home-u-app" / "SESSION_ID.jsonl").read_bytes().splitlines()[-1]
    assert json.loads(last) == {"type": "custom-title", "customTitle": "Performance Optimization Discussion",
                                "sessionId": "SESSION_ID", "timestamp": iso(T0 + 60_000)}
    assert api.json("POST", "/api/v1/sessions/SESSION_ID/rename", json={"name": "  Second  "})[0] == 204
    assert [s["name"] for s in api.sessions() if s["id"] == "SESSION_ID"] == ["Second"]


# --------------------------------------------------------------------------- errors


def test_rename_errors(api: Fixture) -> None:
    path = "/api/v1/sessions/SESSION_ID/rename"
    before = (api.home / "projects" / "home-u-app" / "SESSION_ID.jsonl").read_bytes()
    for body in ({}, {"name": ""}, {"name": "   \n"}, {"name": None}, {"name": "x" * 201}, {"name": 5}):
        assert api.error("POST", path, json=body) == (400, "BAD_REQUEST"), body
    assert api.error("POST", path, data=b"{nope", headers={"Content-Type": "application/json"}) == (400, "BAD_REQUEST")
    unknown = api.error("POST", "/api/v1/sessions/no-such-session/rename", json={"name": "x"})
    assert unknown == (404, "SESSION_NOT_FOUND")
    assert (api.home / "projects" / "home-u-app" / "SESSION_ID.jsonl").read_bytes() == before
    assert not (api.home / "projects" / "home-u-app" / "no-such-session.jsonl").exists()


def test_delete(api: Fixture) -> None:
    history = api.home / "file-history" / "older"
    (history / "snap").mkdir(parents=True)
    (history / "snap" / "a.py").write_text("print(1)")
    response, body = api.request("DELETE", "/api/v1/sessions/older")
    assert (response.code, body) == (204, b"")
    assert not (api.home / "projects" / "home-u-app" / "older.jsonl").exists() and not history.exists()
    assert [s["id"] for s in api.sessions()] == [CURRENT, "SESSION_ID"]
    assert api.error("DELETE", "/api/v1/sessions/older") == (404, "SESSION_NOT_FOUND")
    assert api.error("POST", "/api/v1/sessions/older/rename", json={"name": "x"}) == (404, "SESSION_NOT_FOUND")
    assert api.error("GET", "/api/v1/sessions/older/history") == (404, "SESSION_NOT_FOUND")


def test_the_current_session_cannot_be_deleted(api: Fixture) -> None:
    assert api.error("DELETE", f"/api/v1/sessions/{CURRENT}") == (400, "SESSION_DELETE_CURRENT")
    assert (api.home / "projects" / "home-u-app" / f"{CURRENT}.jsonl").exists()
    (api.home / "projects" / "home-u-app" / f"{CURRENT}.jsonl").unlink()  # without a transcript too
    assert api.error("DELETE", f"/api/v1/sessions/{CURRENT}") == (400, "SESSION_DELETE_CURRENT")


def test_unsafe_ids_never_touch_files(api: Fixture, tmp_path: Path) -> None:
    victim = tmp_path / "victim.jsonl"
    victim.write_bytes(b'{"type":"message","role":"user","content":"keep me"}\n')
    (api.home / "file-history").mkdir()
    unsafe = [b"..", b"%2e%2e", b".hidden", b"..%2Fvictim", b"..%2F..%2Fvictim", b"%2E%2E%2F%2E%2E%2Fvictim",
              b"a%5C..%5Cb", b"a%00b", b"x" * 201, b"%20"]
    for raw in unsafe:
        for method, suffix, kwargs in (("DELETE", b"", {}), ("POST", b"/rename", {"json": {"name": "pwn"}}),
                                       ("GET", b"/history", {})):
            status, code = api.error(method, b"/api/v1/sessions/" + raw + suffix, **kwargs)
            assert (status, code) in ((400, "BAD_REQUEST"), (404, "NOT_FOUND")), (raw, method, status, code)
    assert victim.read_bytes() == b'{"type":"message","role":"user","content":"keep me"}\n'
    assert sorted(p.name for p in (api.home / "projects" / "home-u-app").iterdir()) == [
        "SESSION_ID.jsonl", f"{CURRENT}.jsonl", "older.jsonl"]
    assert api.error("DELETE", "/api/v1/sessions/%2e%2e") == (400, "BAD_REQUEST")


def test_bad_queries(api: Fixture) -> None:
    assert api.error("GET", "/api/v1/sessions?cwd=%00") == (400, "BAD_REQUEST")
    assert api.error("GET", "/api/v1/sessions/older") == (405, "METHOD_NOT_ALLOWED")
    assert api.error("POST", "/api/v1/sessions") == (405, "METHOD_NOT_ALLOWED")
    assert api.sessions("/api/v1/sessions?cwd=") == api.sessions()  # empty cwd: absent


def test_password_mode_requires_credentials(home: Path) -> None:
    api = Fixture(home, GatewaySettings(mode="password", password="pw"))
    assert api.error("GET", LIST) == (401, "AUTH_REQUIRED")
    assert api.error("DELETE", "/api/v1/sessions/x") == (401, "AUTH_REQUIRED")
    assert api.json("GET", LIST, headers={"Authorization": "Bearer pw"})[0] == 200
    assert api.blocking == ["_list_body"]


# --------------------------------------------------------------------------- tolerance and the rest


def test_malformed_and_empty_transcripts(api: Fixture) -> None:
    write_transcript(api.home, WS, "broken", [b"{not json\n", b"\x00\xff\n", b"[]\n", user("survivor", T0 + 1),
                                              b'{"type":"message","role":"assistant","content":{"x":1},"timestamp":7}\n',
                                              b'{"type": "message", "role": "user", "content": [{"type":'])
    write_transcript(api.home, WS, "empty", [b"", {"type": "file-history-snapshot", "timestamp": iso(T0)}])
    write_transcript(api.home, WS, "blank", [b"\n\n\n"])
    (api.home / "projects" / "home-u-app" / "binary.jsonl").write_bytes(bytes(range(256)) * 100)
    sessions = {s["id"]: s for s in api.sessions()}
    assert set(sessions) == {CURRENT, "SESSION_ID", "older", "broken"}
    assert (sessions["broken"]["name"], sessions["broken"]["messageCount"], sessions["broken"]["updatedAt"]) == (
        "survivor", 2, 7000)
    status, body, _ = api.json("GET", "/api/v1/sessions/broken/history")
    assert status == 200 and body["data"]["requests"] == [{"userInput": "survivor", "finalReply": None}]
    assert len(api.sessions("/api/v1/sessions?cwd=*")) == 6


def test_a_growing_transcript_is_listed_up_to_date(api: Fixture) -> None:
    assert [s["messageCount"] for s in api.sessions() if s["id"] == "older"] == [2]
    write_transcript(api.home, WS, "older", [user("one more", T0 + 1000), {"type": "ai-title", "aiTitle": "AI"}])
    [older] = [s for s in api.sessions() if s["id"] == "older"]
    assert (older["messageCount"], older["updatedAt"], older["name"]) == (3, T0 + 1000, "AI")
    assert api.sessions()[0]["id"] == "older"


def test_history(api: Fixture) -> None:
    write_transcript(api.home, WS, "hist", [user("first", T0), assistant("r" * 700, T0 + 1), user("second", T0 + 2)])
    status, body, _ = api.json("GET", "/api/v1/sessions/hist/history")
    assert status == 200
    assert body["data"] == {"sessionId": "hist", "name": "first", "requests": [
        {"userInput": "first", "finalReply": "r" * 500}, {"userInput": "second", "finalReply": None}]}


def test_deprecated_routes(api: Fixture) -> None:
    status, body, response = api.json("GET", "/api/v1/sessions/across-projects")
    assert status == 200 and list(body) == ["sessions"]
    assert body["sessions"] == api.sessions("/api/v1/sessions?cwd=*")
    assert response.headers.getRawHeaders("deprecation") == ["true"]
    assert response.headers.getRawHeaders("link") == ['</api/v1/sessions?cwd=*>; rel="successor-version"']
    status, body, response = api.json("GET", "/api/v1/sessions/workspaces")
    assert status == 200 and response.headers.getRawHeaders("deprecation") == ["true"]
    assert body == {"workspaces": [
        {"path": WS, "label": "app"}, {"path": "/path/to/workspace", "label": "workspace"},
        {"path": "/srv/hashed", "label": "hashed"}]}


def test_head_and_an_empty_home(tmp_path: Path) -> None:
    api = Fixture(tmp_path / "nothing")
    assert api.sessions() == [] and api.sessions("/api/v1/sessions?cwd=*") == []
    assert api.json("GET", "/api/v1/sessions/workspaces")[1] == {"workspaces": []}
    response, body = api.request("HEAD", LIST)
    assert (response.code, body) == (200, b"")


def test_openapi_describes_the_routes(api: Fixture) -> None:
    paths = api.openapi["paths"]
    assert set(paths["/api/v1/sessions"]) == {"get"}
    assert set(paths["/api/v1/sessions/{session_id}"]) == {"delete"}
    assert set(paths["/api/v1/sessions/{session_id}/rename"]) == {"post"}
    assert set(paths["/api/v1/sessions/{session_id}/history"]) == {"get"}
    for deprecated in ("/api/v1/sessions/across-projects", "/api/v1/sessions/workspaces"):
        assert paths[deprecated]["get"]["deprecated"] is True
    listing = paths["/api/v1/sessions"]["get"]
    assert [p["name"] for p in listing["parameters"]] == ["cwd", "projectId"]
    data = listing["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["data"]
    assert data == {"$ref": "#/components/schemas/SessionList"}
    schemas = api.openapi["components"]["schemas"]
    assert list(schemas["SessionItem"]["properties"]) == list(EXTENDED_ORDER)
    assert "SessionHistory" in schemas and "SessionRequest" in schemas and "WorkspaceList" in schemas
    rename = paths["/api/v1/sessions/{session_id}/rename"]["post"]
    assert "SESSION_NOT_FOUND" in json.dumps(rename["responses"]["404"])
    assert "SESSION_DELETE_CURRENT" in json.dumps(paths["/api/v1/sessions/{session_id}"]["delete"]["responses"]["400"])
    # The rows the store builds have exactly the model's wire names, in its order.
    row = api.store.rows("home-u-app")[0]
    assert list(row) == [wire_name(f) for f in attrs.fields(SessionItem)]


EXTENDED_ORDER = (*BASE_FIELDS, "projectId", "cwd", "status", "isPlayground")


def test_permission_errors_are_403(api: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transcript the daemon may not change (read-only folder; faked here, tests may run as root)."""
    def refuse(*args: Any) -> None:
        raise PermissionError(13, "Permission denied", str(api.home / "projects" / "home-u-app" / "older.jsonl"))

    monkeypatch.setattr(api.store, "delete", refuse)
    monkeypatch.setattr(api.store, "rename", refuse)
    assert api.error("DELETE", "/api/v1/sessions/older") == (403, "PERMISSION_DENIED")
    assert api.error("POST", "/api/v1/sessions/older/rename", json={"name": "x"}) == (403, "PERMISSION_DENIED")
