"""The settings routes in memory: the spec's examples, scopes, dotted keys, array edits, errors, files on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred

from codebuddy.settings.routes import SettingsRoutes
from codebuddy.settings.schema import DEFAULTS
from codebuddy.settings.store import SettingsStore
from tests.helpers import ApiFixture

BASE = "/api/v1/settings"


def run_now(fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    return maybeDeferred(fn, *args, **kwargs)


class Fixture(ApiFixture):
    """The settings area over a home and workspace in a temporary directory; ``changes`` records on_change."""

    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "ws").mkdir(exist_ok=True)
        self.store = SettingsStore(tmp_path / "home", tmp_path / "ws")
        self.changes: list[str] = []
        super().__init__([SettingsRoutes(self.store, run_now, on_change=self.changes.append)])

    def file(self, scope: str) -> Any:
        """A scope's file as JSON (None when it does not exist)."""
        path = self.store.path(scope)
        return json.loads(path.read_text()) if path.exists() else None

    def write(self, scope: str, data: Any) -> None:
        """A hand-written settings file."""
        path = self.store.path(scope)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data if isinstance(data, str) else json.dumps(data))


@pytest.fixture
def api(tmp_path: Path) -> Fixture:
    return Fixture(tmp_path)


def data(result: tuple[int, Any, Any], status: int = 200) -> Any:
    code, body, _response = result
    assert code == status, body
    return body["data"]


def error(result: tuple[int, Any, Any], status: int, code: str) -> dict[str, Any]:
    actual, body, _response = result
    assert (actual, body["error"]["code"]) == (status, code), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


# -- the spec's examples, verbatim


def test_spec_examples(api: Fixture) -> None:
    # List all settings
    merged = data(api.json("GET", "http://127.0.0.1:8080/api/v1/settings"))
    assert merged == DEFAULTS
    # List settings by scope
    assert data(api.json("GET", "http://127.0.0.1:8080/api/v1/settings?scope=user")) == {}
    # Get a single setting
    error(api.json("GET", "http://127.0.0.1:8080/api/v1/settings/model"), 404, "NOT_FOUND")
    # Set a setting value
    assert data(api.json("PUT", "http://127.0.0.1:8080/api/v1/settings/theme",
                         headers={"Content-Type": "application/json"}, data=b'{"value": "dark"}')) == {
        "key": "theme", "value": "dark", "scope": "user"}
    assert api.file("user") == {"theme": "dark"}
    # Append values to an array-type setting
    assert data(api.json("POST", "http://127.0.0.1:8080/api/v1/settings/permissions/items",
                         headers={"Content-Type": "application/json"},
                         data=b'{"values": ["Allow: Read(**)"]}')) == {
        "key": "permissions", "value": {"allow": ["Read(**)"]}, "scope": "user", "changed": ["Allow: Read(**)"]}
    assert api.file("user") == {"theme": "dark", "permissions": {"allow": ["Read(**)"]}}
    merged = data(api.json("GET", "http://127.0.0.1:8080/api/v1/settings"))
    assert (merged["theme"], merged["permissions"]["allow"]) == ("dark", ["Read(**)"])
    assert merged["permissions"]["defaultMode"] == "default"
    # Remove values from an array-type setting
    assert data(api.json("POST", "http://127.0.0.1:8080/api/v1/settings/permissions/remove",
                         headers={"Content-Type": "application/json"},
                         data=b'{"values": ["Allow: Read(**)"]}')) == {
        "key": "permissions", "value": {"allow": []}, "scope": "user", "changed": ["Allow: Read(**)"]}
    assert api.file("user") == {"theme": "dark", "permissions": {"allow": []}}
    assert api.changes == ["user", "user", "user"]
    assert api.file("project") is None and api.file("local") is None


def test_get_model_unset_then_set(api: Fixture) -> None:
    assert "No setting model" in error(api.json("GET", f"{BASE}/model"), 404, "NOT_FOUND")["message"]
    error(api.json("GET", f"{BASE}/model?scope=user"), 404, "NOT_FOUND")
    data(api.json("PUT", f"{BASE}/model", json={"value": "claude-sonnet-4"}))
    assert data(api.json("GET", f"{BASE}/model")) == {"key": "model", "value": "claude-sonnet-4", "scope": "user"}
    assert data(api.json("GET", f"{BASE}/model?scope=user")) == {
        "key": "model", "value": "claude-sonnet-4", "scope": "user"}
    error(api.json("GET", f"{BASE}/model?scope=project"), 404, "NOT_FOUND")


def test_defaults_are_answered_with_scope_default(api: Fixture) -> None:
    assert data(api.json("GET", f"{BASE}/cleanupPeriodDays")) == {
        "key": "cleanupPeriodDays", "value": 30, "scope": "default"}
    assert data(api.json("GET", f"{BASE}/memory.enabled")) == {"key": "memory.enabled", "value": True,
                                                               "scope": "default"}
    error(api.json("GET", f"{BASE}/cleanupPeriodDays?scope=user"), 404, "NOT_FOUND")


def test_merged_view_has_no_meta_without_problems(api: Fixture) -> None:
    _status, body, response = api.json("GET", BASE)
    assert set(body) == {"data"}
    assert response.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]


# -- scopes


def test_scope_precedence(api: Fixture) -> None:
    api.write("user", {"model": "user-model", "theme": "light", "env": {"A": "user", "B": "user"}})
    api.write("project", {"model": "project-model", "env": {"B": "project"}})
    api.write("local", {"model": "local-model"})
    merged = data(api.json("GET", BASE))
    assert (merged["model"], merged["theme"], merged["env"]) == ("local-model", "light", {"A": "user", "B": "project"})
    assert data(api.json("GET", f"{BASE}/model")) == {"key": "model", "value": "local-model", "scope": "local"}
    assert data(api.json("GET", f"{BASE}/theme")) == {"key": "theme", "value": "light", "scope": "user"}
    assert data(api.json("GET", f"{BASE}/env.B")) == {"key": "env.B", "value": "project", "scope": "project"}
    for scope, expected in (("user", "user-model"), ("project", "project-model"), ("local", "local-model")):
        assert data(api.json("GET", f"{BASE}/model?scope={scope}"))["value"] == expected
        assert data(api.json("GET", f"{BASE}?scope={scope}"))["model"] == expected
    # removing local's value uncovers project's
    data(api.json("PUT", f"{BASE}/model?scope=local", json={"value": None}))
    assert api.file("local") == {}
    assert data(api.json("GET", f"{BASE}/model")) == {"key": "model", "value": "project-model", "scope": "project"}
    assert api.changes == ["local"]


def test_permission_rules_join_over_scopes(api: Fixture) -> None:
    data(api.json("POST", f"{BASE}/permissions/items", json={"values": ["Allow: Read(**)"]}))
    data(api.json("POST", f"{BASE}/permissions/items?scope=project",
                  json={"values": ["Allow: Bash(npm test:*)", "Deny: Bash(rm:*)"]}))
    data(api.json("POST", f"{BASE}/permissions/items?scope=local", json={"values": ["Allow: Read(**)", "Ask: Edit"]}))
    permissions = data(api.json("GET", f"{BASE}/permissions"))
    assert permissions["scope"] == "local"
    assert permissions["value"] == {"allow": ["Read(**)", "Bash(npm test:*)"], "ask": ["Edit"],
                                    "deny": ["Bash(rm:*)"], "additionalDirectories": [], "defaultMode": "default"}
    assert api.changes == ["user", "project", "local"]


def test_project_local_alias(api: Fixture) -> None:
    assert data(api.json("PUT", f"{BASE}/theme?scope=project-local", json={"value": "dark"})) == {
        "key": "theme", "value": "dark", "scope": "local"}
    assert api.file("local") == {"theme": "dark"}
    assert data(api.json("GET", f"{BASE}?scope=project-local")) == {"theme": "dark"}
    assert data(api.json("GET", f"{BASE}/theme?scope=projectLocal"))["scope"] == "local"
    assert data(api.json("POST", f"{BASE}/trustedDirectories/items?scope=project-local",
                         json={"values": ["/srv"]}))["scope"] == "local"
    assert api.changes == ["local", "local"]


def test_empty_scope_is_no_scope(api: Fixture) -> None:
    api.write("project", {"theme": "dark"})
    assert data(api.json("GET", f"{BASE}?scope="))["cleanupPeriodDays"] == 30  # the merged view
    assert data(api.json("GET", f"{BASE}/theme?scope=")) == {"key": "theme", "value": "dark", "scope": "project"}
    data(api.json("PUT", f"{BASE}/model?scope=", json={"value": "m"}))
    assert api.file("user") == {"model": "m"}


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", f"{BASE}?scope=cli", None),
    ("GET", f"{BASE}/model?scope=global", None),
    ("PUT", f"{BASE}/model?scope=USER", {"value": "m"}),
    ("POST", f"{BASE}/trustedDirectories/items?scope=policy", {"values": ["/a"]}),
    ("POST", f"{BASE}/trustedDirectories/remove?scope=x", {"values": ["/a"]}),
])
def test_bad_scope(api: Fixture, method: str, path: str, body: Any) -> None:
    found = error(api.json(method, path, json=body) if body else api.json(method, path), 400, "BAD_REQUEST")
    assert found["details"] == [{"field": "scope", "message": "unknown scope"}]
    assert api.file("user") is None and api.changes == []


# -- dotted keys


def test_dotted_keys(api: Fixture) -> None:
    data(api.json("POST", f"{BASE}/permissions/items", json={"values": ["Allow: Read(**)"]}))
    assert data(api.json("PUT", f"{BASE}/permissions.defaultMode", json={"value": "plan"})) == {
        "key": "permissions.defaultMode", "value": "plan", "scope": "user"}
    assert api.file("user") == {"permissions": {"allow": ["Read(**)"], "defaultMode": "plan"}}
    assert data(api.json("GET", f"{BASE}/permissions.defaultMode"))["value"] == "plan"
    assert data(api.json("GET", f"{BASE}/memory.enabled")) == {"key": "memory.enabled", "value": True,
                                                               "scope": "default"}
    data(api.json("PUT", f"{BASE}/memory.enabled?scope=project", json={"value": False}))
    assert api.file("project") == {"memory": {"enabled": False}}
    assert data(api.json("GET", f"{BASE}/memory.enabled")) == {"key": "memory.enabled", "value": False,
                                                               "scope": "project"}
    assert data(api.json("GET", f"{BASE}/memory"))["value"] == {"enabled": False, "autoMemoryEnabled": False}
    # deep unknown paths are created; missing paths are 404
    data(api.json("PUT", f"{BASE}/myTool.nested.deep", json={"value": [1, 2]}))
    assert api.file("user")["myTool"] == {"nested": {"deep": [1, 2]}}
    error(api.json("GET", f"{BASE}/myTool.nested.missing"), 404, "NOT_FOUND")
    error(api.json("GET", f"{BASE}/myTool.nested.deep.further"), 404, "NOT_FOUND")


def test_dotted_key_under_a_non_object(api: Fixture) -> None:
    data(api.json("PUT", f"{BASE}/custom", json={"value": "text"}))
    before = api.store.path("user").read_bytes()
    found = error(api.json("PUT", f"{BASE}/custom.inner", json={"value": 1}), 400, "BAD_REQUEST")
    assert found["details"] == [{"field": "custom", "message": "not an object"}]
    assert api.store.path("user").read_bytes() == before


def test_dotted_key_type_errors(api: Fixture) -> None:
    found = error(api.json("PUT", f"{BASE}/permissions.defaultMode", json={"value": "yolo"}), 400, "BAD_REQUEST")
    assert [d["field"] for d in found["details"]] == ["permissions.defaultMode"]
    found = error(api.json("PUT", f"{BASE}/memory.enabled", json={"value": "no"}), 400, "BAD_REQUEST")
    assert found["details"] == [{"field": "memory.enabled", "message": "must be true or false, not a string"}]
    assert api.file("user") is None


# -- PUT


def test_null_removes(api: Fixture) -> None:
    api.write("user", {"theme": "dark", "permissions": {"allow": ["Read"], "defaultMode": "plan"}, "keep": 1})
    assert data(api.json("PUT", f"{BASE}/theme", json={"value": None})) == {"key": "theme", "value": None,
                                                                          "scope": "user"}
    data(api.json("PUT", f"{BASE}/permissions.defaultMode", json={"value": None}))
    assert api.file("user") == {"permissions": {"allow": ["Read"]}, "keep": 1}
    data(api.json("PUT", f"{BASE}/not.there.at.all", json={"value": None}))  # nothing to remove, nothing created
    assert api.file("user") == {"permissions": {"allow": ["Read"]}, "keep": 1}
    error(api.json("GET", f"{BASE}/theme"), 404, "NOT_FOUND")


def test_type_errors_on_known_keys(api: Fixture) -> None:
    found = error(api.json("PUT", f"{BASE}/permissions", json={"value": {
        "allow": ["Read(**)", 5, "no rule"], "defaultMode": "yolo", "futureField": {"any": "thing"}}}), 400,
        "BAD_REQUEST")
    assert [d["field"] for d in found["details"]] == ["permissions.allow[1]", "permissions.allow[2]",
                                                      "permissions.defaultMode"]
    assert found["message"].startswith("Invalid value for permissions: permissions.allow[1] must be a permission rule")
    assert found["message"].endswith("(and 2 more)")
    for key, value, field in (("cleanupPeriodDays", "30", "cleanupPeriodDays"),
                              ("includeCoAuthoredBy", 1, "includeCoAuthoredBy"),
                              ("env", {"PATH": ["/bin"]}, "env.PATH"),
                              ("gateway", {"auth": "password", "password": 1234}, "gateway.password"),
                              ("reasoningEffort", "extreme", "reasoningEffort"),
                              ("enabledPlugins", {"a@b": "on"}, "enabledPlugins.a@b")):
        found = error(api.json("PUT", f"{BASE}/{key}", json={"value": value}), 400, "BAD_REQUEST")
        assert [d["field"] for d in found["details"]] == [field], key
    assert api.file("user") is None and api.changes == []


def test_unknown_keys_are_kept_as_given(api: Fixture) -> None:
    value = {"nested": [1, {"x": None, "y": 2.5}], "flag": True, "text": "Zoë"}
    data(api.json("PUT", f"{BASE}/someOtherTool", json={"value": value}))
    data(api.json("PUT", f"{BASE}/permissions.futureField", json={"value": 42}))
    assert api.file("user") == {"someOtherTool": value, "permissions": {"futureField": 42}}
    assert data(api.json("GET", f"{BASE}/someOtherTool"))["value"] == value
    assert data(api.json("GET", BASE))["someOtherTool"] == value


def test_the_whole_value_replaces(api: Fixture) -> None:
    api.write("user", {"env": {"A": "1", "B": "2"}})
    data(api.json("PUT", f"{BASE}/env", json={"value": {"C": "3"}}))
    assert api.file("user") == {"env": {"C": "3"}}


@pytest.mark.parametrize("key", ["a..b", ".model", "model.", "a%01b", "x" * 257])
def test_malformed_key(api: Fixture, key: str) -> None:
    for method, path, body in (("GET", f"{BASE}/{key}", None), ("PUT", f"{BASE}/{key}", {"value": 1}),
                               ("POST", f"{BASE}/{key}/items", {"values": [1]})):
        found = error(api.json(method, path, json=body) if body else api.json(method, path), 400, "BAD_REQUEST")
        assert found["details"] == [{"field": "key", "message": "malformed"}]
    assert api.file("user") is None


def test_missing_value(api: Fixture) -> None:
    found = error(api.json("PUT", f"{BASE}/theme", json={}), 400, "BAD_REQUEST")
    assert found["details"] == [{"field": "value", "message": "required field missing"}]
    error(api.json("PUT", f"{BASE}/theme"), 400, "BAD_REQUEST")  # an empty body is {}
    found = error(api.json("POST", f"{BASE}/trustedDirectories/items", json={}), 400, "BAD_REQUEST")
    assert found["details"] == [{"field": "values", "message": "required field missing"}]
    error(api.json("PUT", f"{BASE}/theme", data=b"{not json", headers={"Content-Type": "application/json"}),
          400, "BAD_REQUEST")
    assert api.file("user") is None and api.changes == []


# -- array edits


def test_items_create_a_missing_array(api: Fixture) -> None:
    assert data(api.json("POST", f"{BASE}/myList/items", json={"values": ["a", {"b": 1}]})) == {
        "key": "myList", "value": ["a", {"b": 1}], "scope": "user", "changed": ["a", {"b": 1}]}
    data(api.json("POST", f"{BASE}/permissions.additionalDirectories/items?scope=project",
                  json={"values": ["../shared"]}))
    assert api.file("user") == {"myList": ["a", {"b": 1}]}
    assert api.file("project") == {"permissions": {"additionalDirectories": ["../shared"]}}


def test_duplicates_are_not_appended(api: Fixture) -> None:
    data(api.json("POST", f"{BASE}/trustedDirectories/items", json={"values": ["/a", "/b"]}))
    result = data(api.json("POST", f"{BASE}/trustedDirectories/items", json={"values": ["/b", "/c", "/c"]}))
    assert (result["value"], result["changed"]) == (["/a", "/b", "/c"], ["/c"])
    result = data(api.json("POST", f"{BASE}/permissions/items", json={"values": ["Allow: Read(**)"] * 2}))
    assert result["changed"] == ["Allow: Read(**)"]
    result = data(api.json("POST", f"{BASE}/permissions/items", json={"values": ["Allow: Read(**)"]}))
    assert (result["value"], result["changed"]) == ({"allow": ["Read(**)"]}, [])
    assert api.file("user") == {"trustedDirectories": ["/a", "/b", "/c"], "permissions": {"allow": ["Read(**)"]}}


def test_remove(api: Fixture) -> None:
    api.write("user", {"myList": ["a", "b", "a", "c"], "trustedDirectories": ["/a"]})
    result = data(api.json("POST", f"{BASE}/myList/remove", json={"values": ["a", "zzz"]}))
    assert (result["value"], result["changed"]) == (["b", "c"], ["a"])
    result = data(api.json("POST", f"{BASE}/missingList/remove", json={"values": ["a"]}))
    assert (result["value"], result["changed"]) == ([], [])
    result = data(api.json("POST", f"{BASE}/permissions/remove", json={"values": ["Deny: Bash(rm:*)"]}))
    assert (result["value"], result["changed"]) == ({"deny": []}, [])
    assert api.file("user") == {"myList": ["b", "c"], "trustedDirectories": ["/a"]}


def test_permission_items(api: Fixture) -> None:
    result = data(api.json("POST", f"{BASE}/permissions/items", json={"values": [
        "Allow: Read(**)", "ask:Bash(git push:*)", "DENY:  WebFetch(domain:example.com) ", "Allow: mcp__github__*"]}))
    assert result["changed"] == ["Allow: Read(**)", "Allow: mcp__github__*", "Ask: Bash(git push:*)",
                                 "Deny: WebFetch(domain:example.com)"]  # by list: allow, ask, deny
    assert api.file("user") == {"permissions": {"allow": ["Read(**)", "mcp__github__*"], "ask": ["Bash(git push:*)"],
                                                "deny": ["WebFetch(domain:example.com)"]}}
    # permissions.allow takes bare rules
    data(api.json("POST", f"{BASE}/permissions.allow/items", json={"values": ["Edit"]}))
    assert api.file("user")["permissions"]["allow"] == ["Read(**)", "mcp__github__*", "Edit"]
    found = error(api.json("POST", f"{BASE}/permissions.allow/items", json={"values": ["Allow: Edit"]}), 400,
                  "BAD_REQUEST")
    assert found["details"][0]["field"] == "permissions.allow[3]"
    data(api.json("POST", f"{BASE}/permissions/remove", json={"values": ["Ask: Bash(git push:*)"]}))
    assert api.file("user")["permissions"]["ask"] == []


@pytest.mark.parametrize("values", [["Read(**)"], ["Allow: "], ["Maybe: Read(**)"], ["Allow: not a rule"], [5],
                                    ["Allow: Read(**)", "Deny"]])
def test_bad_permission_items(api: Fixture, values: list[Any]) -> None:
    found = error(api.json("POST", f"{BASE}/permissions/items", json={"values": values}), 400, "BAD_REQUEST")
    assert found["details"] == [{"field": f"values[{len(values) - 1}]", "message": "not a permission item"}]
    assert api.file("user") is None and api.changes == []


def test_items_on_a_non_array(api: Fixture) -> None:
    api.write("user", {"theme": "dark", "custom": {"a": 1}, "permissions": {"allow": "Read(**)"}})
    before = api.store.path("user").read_bytes()
    for key in ("theme", "env", "permissions.defaultMode", "memory"):  # known keys that are not arrays
        found = error(api.json("POST", f"{BASE}/{key}/items", json={"values": ["x"]}), 400, "BAD_REQUEST")
        assert found["details"] == [{"field": "key", "message": "not an array"}], key
    found = error(api.json("POST", f"{BASE}/custom/items", json={"values": ["x"]}), 400, "BAD_REQUEST")
    assert "custom in the user settings is not an array" in found["message"]
    error(api.json("POST", f"{BASE}/custom/remove", json={"values": ["x"]}), 400, "BAD_REQUEST")
    found = error(api.json("POST", f"{BASE}/permissions/items", json={"values": ["Allow: Edit"]}), 400, "BAD_REQUEST")
    assert found["details"] == [{"field": "permissions.allow", "message": "not an array"}]
    assert api.store.path("user").read_bytes() == before
    assert api.changes == []


def test_items_that_do_not_fit_a_known_key(api: Fixture) -> None:
    data(api.json("POST", f"{BASE}/trustedDirectories/items", json={"values": ["/a"]}))
    found = error(api.json("POST", f"{BASE}/trustedDirectories/items", json={"values": ["/b", 5]}), 400,
                  "BAD_REQUEST")
    assert found["details"] == [{"field": "trustedDirectories[2]", "message": "must be a string, not a number"}]
    assert api.file("user") == {"trustedDirectories": ["/a"]}


def test_items_on_string_or_array_keys(api: Fixture) -> None:
    """gateway.corsOrigins takes a string or an array; array edits work on the array form."""
    result = data(api.json("POST", f"{BASE}/gateway.corsOrigins/items", json={"values": ["https://a.example"]}))
    assert result["value"] == ["https://a.example"]
    data(api.json("POST", f"{BASE}/gateway.corsOrigins/items", json={"values": ["https://b.example"]}))
    data(api.json("POST", f"{BASE}/gateway.corsOrigins/remove", json={"values": ["https://a.example"]}))
    assert api.file("user") == {"gateway": {"corsOrigins": ["https://b.example"]}}
    data(api.json("PUT", f"{BASE}/gateway.allowedHosts", json={"value": "box.lan"}))
    error(api.json("POST", f"{BASE}/gateway.allowedHosts/items", json={"values": ["other.lan"]}), 400, "BAD_REQUEST")


# -- malformed files


def test_malformed_file(api: Fixture) -> None:
    api.write("user", {"theme": "dark"})
    broken = '{\n  "model": "x",\n  "theme": \n}\n'
    api.write("project", broken)
    path = str(api.store.path("project"))
    status, body, _response = api.json("GET", BASE)
    assert status == 200
    assert body["data"]["theme"] == "dark" and "model" not in body["data"]
    assert body["meta"] == {"errors": [{"scope": "project", "path": path, "line": 4, "column": 1,
                                        "message": "not valid JSON: Expecting value"}]}
    assert data(api.json("GET", f"{BASE}/theme")) == {"key": "theme", "value": "dark", "scope": "user"}
    for method, url, body_ in (
        ("GET", f"{BASE}?scope=project", None),
        ("GET", f"{BASE}/model?scope=project", None),
        ("PUT", f"{BASE}/model?scope=project", {"value": "y"}),
        ("PUT", f"{BASE}/model?scope=project", {"value": None}),
        ("POST", f"{BASE}/permissions/items?scope=project", {"values": ["Allow: Read(**)"]}),
        ("POST", f"{BASE}/myList/remove?scope=project", {"values": ["a"]}),
    ):
        found = error(api.json(method, url, json=body_) if body_ else api.json(method, url), 409, "SETTINGS_INVALID")
        assert found["details"] == {"scope": "project", "path": path, "line": 4, "column": 1,
                                    "message": "not valid JSON: Expecting value"}
        assert f"{path}:4:1" in found["message"]
    assert api.store.path("project").read_text() == broken
    assert api.changes == []
    # the other scopes are still written
    data(api.json("PUT", f"{BASE}/model?scope=local", json={"value": "l"}))
    assert data(api.json("GET", f"{BASE}/model")) == {"key": "model", "value": "l", "scope": "local"}
    # fixed by hand, the file is used again
    api.write("project", '{"model": "p", "language": "fr"}')
    status, body, _response = api.json("GET", BASE)
    assert "meta" not in body and body["data"]["language"] == "fr"


def test_top_level_not_an_object(api: Fixture) -> None:
    api.write("user", '["Allow: Read(**)"]')
    status, body, _response = api.json("GET", BASE)
    assert status == 200 and body["meta"]["errors"][0]["message"] == "the top level must be a JSON object"
    error(api.json("PUT", f"{BASE}/theme", json={"value": "dark"}), 409, "SETTINGS_INVALID")
    assert api.store.path("user").read_text() == '["Allow: Read(**)"]'


# -- the Web UI's pattern


def test_web_ui_writes_the_whole_top_level_object(api: Fixture) -> None:
    api.write("user", {"model": "m", "permissions": {"allow": ["Read(**)"], "defaultMode": "default"},
                       "memory": {"enabled": True}})
    api.write("project", {"permissions": {"deny": ["Bash(rm:*)"]}})
    user = data(api.json("GET", f"{BASE}?scope=user"))
    # change the permission mode: PUT permissions with the user's object merged with the change
    value = {**user["permissions"], "defaultMode": "acceptEdits"}
    assert data(api.json("PUT", f"{BASE}/permissions?scope=user", json={"value": value})) == {
        "key": "permissions", "value": {"allow": ["Read(**)"], "defaultMode": "acceptEdits"}, "scope": "user"}
    # a dotted setting (memory.autoMemoryEnabled) the same way
    value = {**user["memory"], "autoMemoryEnabled": True}
    data(api.json("PUT", f"{BASE}/memory?scope=user", json={"value": value}))
    assert api.file("user") == {"model": "m", "permissions": {"allow": ["Read(**)"], "defaultMode": "acceptEdits"},
                                "memory": {"enabled": True, "autoMemoryEnabled": True}}
    assert api.file("project") == {"permissions": {"deny": ["Bash(rm:*)"]}}
    merged = data(api.json("GET", BASE))
    assert merged["permissions"] == {"allow": ["Read(**)"], "ask": [], "deny": ["Bash(rm:*)"],
                                     "additionalDirectories": [], "defaultMode": "acceptEdits"}
    assert merged["memory"] == {"enabled": True, "autoMemoryEnabled": True}
    assert api.changes == ["user", "user"]


# -- OpenAPI


def test_routes_in_openapi(api: Fixture) -> None:
    paths = api.openapi["paths"]
    assert set(paths[BASE]) == {"get"}
    assert set(paths[f"{BASE}/{{key}}"]) == {"get", "put"}
    assert set(paths[f"{BASE}/{{key}}/items"]) == {"post"}
    assert set(paths[f"{BASE}/{{key}}/remove"]) == {"post"}
    assert paths[BASE]["get"]["summary"] == "List all settings"
    assert paths[f"{BASE}/{{key}}"]["put"]["summary"] == "Set a setting value"
    assert "409" in paths[f"{BASE}/{{key}}"]["put"]["responses"]
    assert "404" in paths[f"{BASE}/{{key}}"]["get"]["responses"]
    status, served, _response = api.json("GET", "/api/openapi.json")
    assert status == 200 and f"{BASE}/{{key}}/items" in served["paths"]
