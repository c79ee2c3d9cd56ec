"""The file-changes routes in memory (StubTreq, Clock) over a real temporary home and workspace."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred

from codebuddy.checkpoints.history import Backup, backup_name, snapshot_item
from codebuddy.checkpoints.routes import CheckpointRoutes, InternalCheckpointRoutes
from codebuddy.web.auth import GatewaySettings
from codebuddy.web.root import Mount
from tests.checkpoints.helpers import T0, Agent, ManualClock
from tests.helpers import ApiFixture

CURRENT = "cur-0001"
SPEC_PATH = "/path/to/file.ts"
DIFF = "/api/v1/file-changes/diff"
LIST = "/api/v1/file-changes/checkpoints"
REVERT = "/api/v1/file-changes/revert"
INTERNAL = "/internal/file-changes"


class Fixture(ApiFixture):
    """Both route forms over an agent's home; the daemon's current session is ``CURRENT``."""

    def __init__(self, home: Path, workspace: Path, settings: GatewaySettings | None = None) -> None:
        self.agent = Agent(home, workspace, CURRENT, ManualClock(step=1.0))
        self.blocking: list[str] = []
        self.busy: set[str] = set()

        def run_blocking(fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
            self.blocking.append(fn.__name__)
            return maybeDeferred(fn, *args, **kwargs)

        store = self.agent.store
        busy = self.busy.__contains__
        super().__init__([CheckpointRoutes(store, run_blocking, CURRENT, busy)], settings=settings)
        internal = InternalCheckpointRoutes(store, run_blocking, CURRENT, busy)
        self.root.putChild(b"internal", Mount(self.guard, "/internal", [internal]))

    def ok(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A 200 whose fields are at the top level and the same inside ``data``; the fields."""
        status, body, _ = self.json(method, path, **kwargs)
        assert status == 200, body
        data = body.pop("data")
        assert body == data
        result: dict[str, Any] = data
        return result

    def error(self, method: str, path: str | bytes, **kwargs: Any) -> tuple[int, str]:
        status, body, _ = self.json(method, path, **kwargs)
        assert isinstance(body["error"]["message"], str)
        return status, body["error"]["code"]


@pytest.fixture
def api(tmp_path: Path) -> Fixture:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return Fixture(tmp_path / "home", workspace)


def spec_path_tracked(api: Fixture, existed: bool) -> None:
    """A checkpoint (as CodeBuddy would record it) tracking the spec's /path/to/file.ts, which is not on disk."""
    if os.path.lexists(SPEC_PATH):
        pytest.skip(f"{SPEC_PATH} exists on this machine")
    agent = api.agent
    agent.say("checkpoint-uuid", "Convert the file to TypeScript")
    entry = Backup(None, 1, "2025-06-15T15:06:40.000Z")
    if existed:
        entry = Backup(backup_name(SPEC_PATH, 1), 1, "2025-06-15T15:06:40.000Z")
        (agent.history() / entry.backup_file_name).write_text("export const x = 1;\n")  # type: ignore[operator]
    agent.sessions.append(CURRENT, agent.cwd, [
        snapshot_item("checkpoint-uuid", {SPEC_PATH: entry}, True, "2025-06-15T15:06:41.000Z")])


# --------------------------------------------------------------------------- the spec's examples


def test_spec_diff(api: Fixture) -> None:
    """curl "http://127.0.0.1:8080/api/v1/file-changes/diff?path=/path/to/file.ts" """
    spec_path_tracked(api, existed=True)
    status, body, _ = api.json("GET", "/api/v1/file-changes/diff?path=/path/to/file.ts")
    assert status == 200
    assert list(body) == ["path", "oldText", "newText", "data"]
    assert body["data"] == {"path": "/path/to/file.ts", "oldText": "export const x = 1;\n", "newText": ""}
    assert api.blocking == ["diff"]  # file work in the thread pool


def test_spec_checkpoints(api: Fixture) -> None:
    """curl http://127.0.0.1:8080/api/v1/file-changes/checkpoints"""
    (api.agent.workspace / "a.txt").write_text("1\n2\n")
    api.agent.say("xxx", "Rename the helpers")
    api.agent.write("a.txt", "1\ntwo\n3\n")
    status, body, _ = api.json("GET", "/api/v1/file-changes/checkpoints")
    assert status == 200 and list(body) == ["checkpoints", "data"]
    [checkpoint] = body["checkpoints"]
    assert list(checkpoint) == ["id", "label", "createdAt", "files", "additions", "deletions"]
    assert checkpoint == {"id": "xxx", "label": "Rename the helpers", "createdAt": checkpoint["createdAt"],
                          "files": [str(api.agent.workspace / "a.txt")], "additions": 2, "deletions": 1}
    assert isinstance(checkpoint["createdAt"], int) and checkpoint["createdAt"] > T0 * 1000
    assert body["data"] == {"checkpoints": body["checkpoints"]}


def test_spec_revert_paths(api: Fixture) -> None:
    """curl -X POST .../file-changes/revert -H "Content-Type: application/json" -d '{"paths": ["/path/to/file.ts"]}'"""
    spec_path_tracked(api, existed=False)  # created by the agent: reverting deletes it (it is not there)
    status, body, _ = api.json("POST", "/api/v1/file-changes/revert", json={"paths": ["/path/to/file.ts"]})
    assert status == 200
    assert body == {"success": True, "revertedFiles": ["/path/to/file.ts"],
                    "data": {"success": True, "revertedFiles": ["/path/to/file.ts"]}}
    assert not os.path.lexists(SPEC_PATH)


def test_spec_revert_to_checkpoint(api: Fixture) -> None:
    """-d '{"checkpointId": "checkpoint-uuid", "scope": "CodeAndConversation"}'"""
    agent = api.agent
    (agent.workspace / "a.txt").write_text("before\n")
    agent.say("first", "first")
    agent.reply("ok")
    agent.say("checkpoint-uuid", "Change a")
    agent.write("a.txt", "after\n")
    agent.write("made.txt", "new\n")
    agent.reply("changed")
    result = api.ok("POST", "/api/v1/file-changes/revert",
                    json={"checkpointId": "checkpoint-uuid", "scope": "CodeAndConversation"})
    a, made = str(agent.workspace / "a.txt"), str(agent.workspace / "made.txt")
    assert result == {"success": True, "revertedFiles": [a, made], "checkpointId": "checkpoint-uuid",
                      "scope": "CodeAndConversation", "deletedFiles": [made], "removedMessages": 2}
    assert (agent.workspace / "a.txt").read_text() == "before\n" and not Path(made).exists()
    assert [c["id"] for c in api.ok("GET", LIST)["checkpoints"]] == ["first"]


def test_spec_revert_all(api: Fixture) -> None:
    """-d '{}': back to the earliest checkpoint, code only."""
    agent = api.agent
    (agent.workspace / "a.txt").write_text("0\n")
    for n in range(3):
        agent.say(f"m{n}", f"turn {n}")
        agent.write("a.txt", f"{n + 1}\n")
        agent.write(f"new{n}.txt", "x")
    before = len(agent.items())
    result = api.ok("POST", REVERT, json={})
    assert (result["checkpointId"], result["scope"], result["removedMessages"]) == ("m0", "Code", 0)
    assert (agent.workspace / "a.txt").read_text() == "0\n"
    assert sorted(os.listdir(agent.workspace)) == ["a.txt"]
    assert len(agent.items()) == before  # the conversation stays
    # a bare POST (no body at all) is {} too
    assert api.ok("POST", REVERT)["revertedFiles"] == []


# --------------------------------------------------------------------------- diff and revert of each scope


@pytest.fixture
def turns(api: Fixture) -> dict[str, str]:
    """m1 edits a.txt; m2 edits it again and creates b.txt."""
    agent = api.agent
    (agent.workspace / "a.txt").write_text("a0\n")
    agent.say("m1", "one")
    agent.write("a.txt", "a1\n")
    agent.reply("r1")
    agent.say("m2", "two")
    agent.write("a.txt", "a2\n")
    agent.write("b.txt", "b2\n")
    agent.reply("r2")
    return {"a": str(agent.workspace / "a.txt"), "b": str(agent.workspace / "b.txt")}


def diff(api: Fixture, path: str) -> tuple[str, str]:
    result = api.ok("GET", f"{DIFF}?path={path}")
    return result["oldText"], result["newText"]


def test_diff_then_revert_code(api: Fixture, turns: dict[str, str]) -> None:
    assert diff(api, turns["a"]) == ("a1\n", "a2\n")
    assert diff(api, turns["b"]) == ("", "b2\n")
    result = api.ok("POST", REVERT, json={"checkpointId": "m2", "scope": "Code"})
    assert result["revertedFiles"] == [turns["a"], turns["b"]] and result["deletedFiles"] == [turns["b"]]
    assert diff(api, turns["a"]) == ("a1\n", "a1\n")
    assert diff(api, turns["b"]) == ("", "")
    assert [c["id"] for c in api.ok("GET", LIST)["checkpoints"]] == ["m2", "m1"]  # the conversation stays


def test_diff_then_revert_conversation(api: Fixture, turns: dict[str, str]) -> None:
    result = api.ok("POST", REVERT, json={"checkpointId": "m2", "scope": "Conversation"})
    assert (result["revertedFiles"], result["removedMessages"]) == ([], 2)
    assert Path(turns["a"]).read_text() == "a2\n"  # the code stays
    [m1] = api.ok("GET", LIST)["checkpoints"]
    assert (m1["id"], m1["files"]) == ("m1", [turns["a"], turns["b"]])  # m2's changes now count as m1's
    assert diff(api, turns["a"]) == ("a0\n", "a2\n")
    assert diff(api, turns["b"]) == ("", "b2\n")


def test_diff_then_revert_code_and_conversation(api: Fixture, turns: dict[str, str]) -> None:
    result = api.ok("POST", REVERT, json={"checkpointId": "m1", "scope": "CodeAndConversation"})
    assert (result["revertedFiles"], result["deletedFiles"], result["removedMessages"]) == (
        [turns["a"], turns["b"]], [turns["b"]], 4)
    assert Path(turns["a"]).read_text() == "a0\n" and not Path(turns["b"]).exists()
    assert api.ok("GET", LIST) == {"checkpoints": []}
    assert api.error("GET", f"{DIFF}?path={turns['a']}") == (404, "NOT_FOUND")


def test_revert_paths_then_diff(api: Fixture, turns: dict[str, str]) -> None:
    result = api.ok("POST", REVERT, json={"paths": [turns["b"], turns["a"]]})
    assert result == {"success": True, "revertedFiles": [turns["b"], turns["a"]]}
    assert diff(api, turns["a"]) == ("a1\n", "a1\n")
    assert not Path(turns["b"]).exists()


def test_no_revert_while_a_run_works_on_the_session(api: Fixture, turns: dict[str, str]) -> None:
    """An active agent run on the session: every revert form is 409 CONFLICT and nothing changes."""
    before = {p: Path(p).read_bytes() if Path(p).exists() else None for p in turns.values()}
    transcript = api.agent.transcript().read_bytes()
    api.busy.add(CURRENT)
    for body in ({"paths": [turns["a"]]}, {"checkpointId": "c1", "scope": "CodeAndConversation"}, {}):
        assert api.error("POST", REVERT, json=body) == (409, "CONFLICT")
        assert api.error("POST", f"{INTERNAL}/revert", json=body) == (409, "CONFLICT")
    assert {p: Path(p).read_bytes() if Path(p).exists() else None for p in turns.values()} == before
    assert api.agent.transcript().read_bytes() == transcript
    api.busy.clear()
    assert api.ok("POST", REVERT, json={"paths": [turns["a"]]})["success"] is True


# --------------------------------------------------------------------------- sessions


def test_session_id_parameter(api: Fixture, turns: dict[str, str]) -> None:
    other = Agent(api.agent.home, api.agent.workspace, "other-7")
    other.say("o1", "other session")
    assert [c["id"] for c in api.ok("GET", f"{LIST}?sessionId=other-7")["checkpoints"]] == ["o1"]
    assert [c["id"] for c in api.ok("POST", f"{INTERNAL}/checkpoints", json={"sessionId": "other-7"})[
        "checkpoints"]] == ["o1"]
    assert api.error("GET", f"{DIFF}?path={turns['a']}&sessionId=other-7") == (404, "NOT_FOUND")
    assert api.ok("POST", REVERT, json={"sessionId": "other-7"})["checkpointId"] == "o1"
    assert api.error("GET", f"{LIST}?sessionId=nobody") == (404, "SESSION_NOT_FOUND")
    assert api.error("GET", f"{LIST}?sessionId=../x") == (400, "BAD_REQUEST")


def test_current_session_without_transcript(api: Fixture) -> None:
    assert api.error("GET", LIST) == (404, "SESSION_NOT_FOUND")
    assert api.error("GET", f"{DIFF}?path=/a") == (404, "SESSION_NOT_FOUND")
    assert api.error("POST", REVERT, json={}) == (404, "SESSION_NOT_FOUND")
    assert api.error("POST", REVERT, json={"paths": ["/a"]}) == (404, "SESSION_NOT_FOUND")
    assert api.error("POST", f"{INTERNAL}/checkpoints", json={}) == (404, "SESSION_NOT_FOUND")


# --------------------------------------------------------------------------- errors


def test_diff_errors(api: Fixture, turns: dict[str, str]) -> None:
    assert api.error("GET", DIFF) == (400, "PATH_REQUIRED")
    assert api.error("GET", f"{DIFF}?path=") == (400, "PATH_REQUIRED")
    status, body, _ = api.json("GET", f"{DIFF}?path=/not/tracked.ts")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    assert body["error"]["message"] == "File not tracked in checkpoint: /not/tracked.ts"
    assert api.error("POST", f"{INTERNAL}/diff", json={}) == (400, "PATH_REQUIRED")
    assert api.error("POST", f"{INTERNAL}/diff", json={"path": 5}) == (400, "BAD_REQUEST")
    for backup in api.agent.backups():
        (api.agent.history() / backup).unlink()
    assert api.error("GET", f"{DIFF}?path={turns['a']}") == (409, "CONFLICT")


def test_revert_errors(api: Fixture, turns: dict[str, str]) -> None:
    assert api.error("POST", REVERT, json={"checkpointId": "checkpoint-uuid"}) == (404, "NOT_FOUND")
    assert api.error("POST", REVERT, json={"checkpointId": "m1", "scope": "Everything"}) == (400, "BAD_REQUEST")
    assert api.error("POST", REVERT, json={"paths": [turns["a"]], "checkpointId": "m1"}) == (400, "BAD_REQUEST")
    assert api.error("POST", REVERT, json={"paths": []}) == (400, "BAD_REQUEST")
    assert api.error("POST", REVERT, json={"paths": "/a"}) == (400, "BAD_REQUEST")
    assert api.error("POST", REVERT, json=[1]) == (400, "BAD_REQUEST")
    status, body, _ = api.json("POST", REVERT, json={"paths": [turns["a"], "/not/tracked"]})
    assert (status, body["error"]["code"], body["error"]["details"]) == (404, "NOT_FOUND", {"paths": ["/not/tracked"]})
    assert Path(turns["a"]).read_text() == "a2\n"  # nothing was reverted
    assert api.error("POST", REVERT, data=b"{}", headers={"Content-Type": "text/plain"}) == (
        415, "UNSUPPORTED_MEDIA_TYPE")
    assert api.error("GET", REVERT) == (405, "METHOD_NOT_ALLOWED")
    assert api.error("POST", DIFF) == (405, "METHOD_NOT_ALLOWED")


def test_revert_without_checkpoints(api: Fixture) -> None:
    api.agent.sessions.append(CURRENT, api.agent.cwd, [{"type": "message", "role": "user", "content": "hi"}])
    assert api.error("POST", REVERT, json={}) == (400, "BAD_REQUEST")
    assert api.error("POST", f"{INTERNAL}/revert", json={"checkpointId": "x", "scope": "Code"}) == (
        400, "BAD_REQUEST")
    assert api.ok("GET", LIST) == {"checkpoints": []}


# --------------------------------------------------------------------------- the Web UI's /internal forms


def test_internal_forms(api: Fixture, turns: dict[str, str]) -> None:
    """The POST forms the official Web UI calls, with its bodies."""
    assert api.ok("POST", f"{INTERNAL}/diff", json={"path": turns["b"]}) == {
        "path": turns["b"], "oldText": None, "newText": "b2\n"}  # null: a new file
    assert api.ok("POST", f"{INTERNAL}/diff", json={"path": turns["a"]}) == {
        "path": turns["a"], "oldText": "a1\n", "newText": "a2\n"}
    listed = api.ok("POST", f"{INTERNAL}/checkpoints", json={})
    assert listed == api.ok("GET", LIST)
    assert [c["id"] for c in listed["checkpoints"]] == ["m2", "m1"]  # createdAt descending
    assert listed["checkpoints"][0]["createdAt"] > listed["checkpoints"][1]["createdAt"]
    assert api.ok("POST", f"{INTERNAL}/revert", json={"paths": [turns["a"]]})["revertedFiles"] == [turns["a"]]
    assert api.ok("POST", f"{INTERNAL}/revert", json={"checkpointId": "m2", "scope": "Conversation"})[
        "removedMessages"] == 2
    assert api.ok("POST", f"{INTERNAL}/revert", json={})["checkpointId"] == "m1"
    assert Path(turns["a"]).read_text() == "a0\n"


def test_internal_routing(api: Fixture) -> None:
    assert api.error("GET", f"{INTERNAL}/diff") == (405, "METHOD_NOT_ALLOWED")
    assert api.error("POST", "/internal/nope") == (404, "NOT_FOUND")
    assert api.error("POST", f"{INTERNAL}/diff/more") == (404, "NOT_FOUND")
    assert api.error("POST", f"{INTERNAL}/revert", json={"scope": 1}) == (400, "BAD_REQUEST")
    response, _ = api.request("OPTIONS", f"{INTERNAL}/diff", headers={"Origin": "http://127.0.0.1:8080"})
    assert response.code == 204
    assert api.error("POST", f"{INTERNAL}/checkpoints", json={}, headers={"Origin": "https://evil.example"}) == (
        403, "FORBIDDEN")


def test_internal_forms_need_auth_like_the_api(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    api = Fixture(tmp_path / "home", workspace, GatewaySettings(mode="password", password="pw"))
    api.agent.say("m1", "one")
    assert api.error("POST", f"{INTERNAL}/checkpoints", json={}) == (401, "AUTH_REQUIRED")
    assert api.error("POST", "/internal/nope", json={}) == (401, "AUTH_REQUIRED")  # no probing
    assert api.error("GET", LIST) == (401, "AUTH_REQUIRED")
    assert api.error("POST", f"{INTERNAL}/checkpoints", json={}, headers={"Authorization": "Bearer nope"}) == (
        401, "AUTH_INVALID")
    auth = {"Authorization": "Bearer pw"}
    assert [c["id"] for c in api.ok("POST", f"{INTERNAL}/checkpoints", json={}, headers=auth)["checkpoints"]] == [
        "m1"]
    assert api.ok("GET", f"{LIST}?password=pw")["checkpoints"][0]["id"] == "m1"


def test_openapi_documents_the_api_forms(api: Fixture) -> None:
    paths = api.openapi["paths"]
    assert {"get"} == set(paths["/api/v1/file-changes/diff"]) == set(paths["/api/v1/file-changes/checkpoints"])
    assert {"post"} == set(paths["/api/v1/file-changes/revert"])
    assert not [p for p in paths if "internal" in p]
    parameters = {p["name"] for p in paths["/api/v1/file-changes/diff"]["get"]["parameters"]}
    assert parameters == {"path", "sessionId"}
