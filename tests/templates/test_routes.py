"""GET /api/v1/tasks/templates and the refresh without a model."""

from __future__ import annotations

from pathlib import Path

from codebuddy.templates.catalog import BUILTIN, TemplateCatalog
from codebuddy.templates.routes import TemplateRoutes
from tests.helpers import ApiFixture
from tests.workers.test_routes import run_now


def fixture(home: Path) -> ApiFixture:
    return ApiFixture([TemplateRoutes(TemplateCatalog(home), run_now)])


def test_list(tmp_path: Path) -> None:
    api = fixture(tmp_path)
    status, body, _ = api.json("GET", "/api/v1/tasks/templates")
    assert status == 200
    data = body["data"]
    assert data["status"] == "idle" and "cachedAt" not in data and "warnings" not in data
    assert [t["id"] for t in data["templates"]] == [t.id for t in BUILTIN]
    first = data["templates"][0]
    assert set(first) == {"id", "title", "description", "icon", "command", "interval", "source"}
    status, body, _ = api.json("GET", "/api/v1/tasks/templates?sessionId=abc")
    assert status == 200 and len(body["data"]["templates"]) == len(BUILTIN)


def test_warnings_for_a_broken_user_file(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "templates.json").write_text("{oops")
    status, body, _ = fixture(tmp_path).json("GET", "/api/v1/tasks/templates")
    assert status == 200 and len(body["data"]["templates"]) == len(BUILTIN)
    assert body["data"]["warnings"][0].endswith("not valid JSON at line 1, column 2: "
                                                "Expecting property name enclosed in double quotes")


def test_refresh_without_a_model(tmp_path: Path) -> None:
    api = fixture(tmp_path)
    status, body, _ = api.json("POST", "/api/v1/tasks/templates/refresh")
    assert (status, body["error"]["code"]) == (400, "MODEL_NOT_CONFIGURED")
    assert "CODEBUDDY_MODEL" in body["error"]["message"]
    assert {"/tasks/templates", "/tasks/templates/refresh"} <= {
        p.removeprefix("/api/v1") for p in api.openapi["paths"]}
