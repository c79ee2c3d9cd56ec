"""GET /api/v1/tasks/templates and the AI recommendations behind refresh (a scripted chat client)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from codebuddy.agent.model import ModelConfig, ModelError, ModelNotConfigured, ModelTurn
from codebuddy.templates.catalog import BUILTIN, TemplateCatalog
from codebuddy.templates.recommend import Recommender, parse_answer
from codebuddy.templates.routes import TemplateRoutes
from tests.helpers import ApiFixture
from tests.workers.test_routes import run_now

ANSWER = """Here you go:
```json
[{"id": "lint-sweep", "title": "Lint sweep", "description": "Fix lint warnings.", "icon": "🧹",
  "interval": "1w", "command": "/loop 1w Run the linter and fix what it reports."},
 {"id": "daily-summary", "title": "Clash", "command": "/loop 1d x", "interval": "1d"},
 {"title": "no id"}]
```"""


class Chat:
    """Answers each request with the next scripted result; ``pending`` holds a Deferred to fire later."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []
        self.pending: Deferred[Any] | None = None

    def stream(self, config: ModelConfig, messages: list[dict[str, Any]], tools: Any) -> Deferred[Any]:
        self.prompts.append(messages[-1]["content"])
        answer = self.answers.pop(0)
        if answer == "later":
            self.pending = Deferred()
            return self.pending
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(ModelTurn(text=answer))


def configured(environ: Mapping[str, str], home: Path, workspace: Path) -> ModelConfig:
    return ModelConfig("http://127.0.0.1:1/v1", "m")


def unconfigured(environ: Mapping[str, str], home: Path, workspace: Path) -> ModelConfig:
    raise ModelNotConfigured("Set CODEBUDDY_BASE_URL and CODEBUDDY_MODEL.")


def fixture(tmp_path: Path, chat: Chat | None = None, resolve: Any = configured) -> ApiFixture:
    home, ws = tmp_path / "home", tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "README.md").write_text("# Widget\nA widget factory.\n")

    def areas(guard: Any, clock: Any) -> list[Any]:
        recommender = Recommender(home, {}, chat or Chat(), clock, run_now, resolve)
        return [TemplateRoutes(TemplateCatalog(home), run_now, recommender, ws)]

    return ApiFixture(areas)


def test_list(tmp_path: Path) -> None:
    api = fixture(tmp_path)
    status, body, _ = api.json("GET", "/api/v1/tasks/templates")
    assert status == 200
    data = body["data"]
    assert data["status"] == "idle" and "cachedAt" not in data and "warnings" not in data
    assert [t["id"] for t in data["templates"]] == [t.id for t in BUILTIN]
    assert set(data["templates"][0]) == {"id", "title", "description", "icon", "command", "interval", "source"}
    status, body, _ = api.json("GET", "/api/v1/tasks/templates?sessionId=abc")
    assert status == 200 and len(body["data"]["templates"]) == len(BUILTIN)


def test_warnings_for_a_broken_user_file(tmp_path: Path) -> None:
    (tmp_path / "home" / "tasks").mkdir(parents=True)
    (tmp_path / "home" / "tasks" / "templates.json").write_text("{oops")
    status, body, _ = fixture(tmp_path).json("GET", "/api/v1/tasks/templates")
    assert status == 200 and len(body["data"]["templates"]) == len(BUILTIN)
    assert body["data"]["warnings"][0].endswith("not valid JSON at line 1, column 2: "
                                                "Expecting property name enclosed in double quotes")


def test_refresh_without_a_model(tmp_path: Path) -> None:
    api = fixture(tmp_path, resolve=unconfigured)
    status, body, _ = api.json("POST", "/api/v1/tasks/templates/refresh")
    assert (status, body["error"]["code"]) == (400, "MODEL_NOT_CONFIGURED")
    assert "CODEBUDDY_MODEL" in body["error"]["message"]
    assert api.json("GET", "/api/v1/tasks/templates")[1]["data"]["status"] == "idle"
    assert {"/tasks/templates", "/tasks/templates/refresh"} <= {
        p.removeprefix("/api/v1") for p in api.openapi["paths"]}


def test_refresh_loading_then_done_and_cached(tmp_path: Path) -> None:
    chat = Chat("later")
    api = fixture(tmp_path, chat)
    status, body, _ = api.json("POST", "/api/v1/tasks/templates/refresh")
    assert (status, body["data"]["status"]) == (200, "loading")
    assert "Widget" in chat.prompts[0] and "README.md" in chat.prompts[0]
    assert api.json("GET", "/api/v1/tasks/templates")[1]["data"]["status"] == "loading"
    assert api.json("POST", "/api/v1/tasks/templates/refresh")[1]["data"]["status"] == "loading"  # not twice
    assert len(chat.prompts) == 1
    assert chat.pending is not None
    chat.pending.callback(ModelTurn(text=ANSWER))
    data = api.json("GET", "/api/v1/tasks/templates")[1]["data"]
    assert data["status"] == "done" and data["cachedAt"] > 0
    ai = [t for t in data["templates"] if t["source"] == "ai"]
    assert [t["id"] for t in ai] == ["lint-sweep"]  # the clash with a built-in id and the bad entry are dropped
    cached = json.loads(next((tmp_path / "home" / "tasks" / "recommendations").iterdir()).read_text())
    assert cached["templates"][0]["id"] in ("lint-sweep", "daily-summary")
    # a new daemon on the same home lists them at once
    again = fixture(tmp_path)
    data = again.json("GET", "/api/v1/tasks/templates")[1]["data"]
    assert data["status"] == "done" and "lint-sweep" in [t["id"] for t in data["templates"]]


def test_refresh_error_keeps_the_cached_ones(tmp_path: Path) -> None:
    chat = Chat(ANSWER, ModelError("MODEL_UNAVAILABLE", "The model server did not answer"), "no json here")
    api = fixture(tmp_path, chat)
    api.json("POST", "/api/v1/tasks/templates/refresh")
    api.json("POST", "/api/v1/tasks/templates/refresh")
    data = api.json("GET", "/api/v1/tasks/templates")[1]["data"]
    assert (data["status"], data["error"]) == ("error", "The model server did not answer")
    assert "lint-sweep" in [t["id"] for t in data["templates"]]
    api.json("POST", "/api/v1/tasks/templates/refresh")
    data = api.json("GET", "/api/v1/tasks/templates")[1]["data"]
    assert data["status"] == "error" and "no usable template" in data["error"]


def test_parse_answer() -> None:
    found, warnings = parse_answer(ANSWER)
    assert [t.id for t in found] == ["lint-sweep", "daily-summary"] and all(t.source == "ai" for t in found)
    assert warnings == ["templates[2]: needs the string field(s) id, command"]
    assert parse_answer("nothing") == ([], ["the answer holds no JSON array"])
