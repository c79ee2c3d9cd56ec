"""Manifest validation: each rule, with its JSON path and message; on-disk checks; the route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codebuddy.plugins.manifest import validate_document, validate_path
from tests.plugins.helpers import Fixture, error, make_marketplace, make_plugin, write_json

GOOD_MARKET: dict[str, Any] = {
    "name": "my-marketplace",
    "owner": {"name": "Team"},
    "plugins": [{"name": "my-plugin", "source": "./plugins/my-plugin", "description": "x"}],
}


def market(**changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(GOOD_MARKET))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def entry(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "my-plugin", "source": "./plugins/my-plugin", "description": "x"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def problems(data: Any, kind: str | None = None) -> dict[str, str]:
    result = validate_document(data, kind)
    assert result.valid == (not result.errors)
    return {p.path: p.message for p in result.errors}


def warnings(data: Any, kind: str | None = None) -> dict[str, str]:
    return {p.path: p.message for p in validate_document(data, kind).warnings}


# --------------------------------------------------------------------------- marketplace rules


def test_good_marketplace_is_valid() -> None:
    result = validate_document(GOOD_MARKET, None)
    assert (result.valid, result.type, result.errors, result.warnings) == (True, "marketplace", [], [])


@pytest.mark.parametrize(("data", "path", "words"), [
    ([1, 2], "root", "must be a JSON object"),
    (market(name=None), "name", "name is required"),
    (market(name=5), "name", "must be a string"),
    (market(name="My Marketplace"), "name", "must be kebab-case"),
    (market(name="my--market"), "name", "must be kebab-case"),
    (market(owner=None), "owner", "owner is required"),
    (market(owner="Team"), "owner", 'owner must be an object with a "name"'),
    (market(owner={"email": "a@b"}), "owner.name", "owner.name is required"),
    (market(owner={"name": 3}), "owner.name", "must be a string"),
    (market(owner={"name": "T", "email": 3}), "owner.email", "must be a string"),
    (market(plugins=None), "plugins", "plugins is required"),
    (market(plugins={"a": 1}), "plugins", "must be an array"),
    (market(plugins=["my-plugin"]), "plugins[0]", "plugins must be objects"),
    (market(plugins=[entry(name=None)]), "plugins[0].name", "name is required"),
    (market(plugins=[entry(name="MyPlugin")]), "plugins[0].name", "kebab-case"),
    (market(plugins=[entry(source=None)]), "plugins[0].source", "source is required"),
    (market(plugins=[entry(source="plugins/x")]), "plugins[0].source", 'source must be "./path"'),
    (market(plugins=[entry(source="/abs/x")]), "plugins[0].source", 'source must be "./path"'),
    (market(plugins=[entry(source="./../x")]), "plugins[0].source", 'no ".."'),
    (market(plugins=[entry(source=7)]), "plugins[0].source", "not a number"),
    (market(plugins=[entry(source={"repo": "o/r"})]), "plugins[0].source.source", 'needs "source"'),
    (market(plugins=[entry(source={"source": "npm", "package": "x"})]), "plugins[0].source.source",
     'unsupported source type "npm"'),
    (market(plugins=[entry(source={"source": "github"})]), "plugins[0].source.repo", '"repo": "owner/repo"'),
    (market(plugins=[entry(source={"source": "github", "repo": "just-a-name"})]), "plugins[0].source.repo",
     'must look like "owner/repo"'),
    (market(plugins=[entry(source={"source": "git"})]), "plugins[0].source.url", 'a git source needs "url"'),
    (market(plugins=[entry(source={"source": "url"})]), "plugins[0].source.url", 'a url source needs "url"'),
    (market(plugins=[entry(source={"source": "git", "url": "not a url"})]), "plugins[0].source.url",
     "must be a git URL"),
    (market(plugins=[entry(source={"source": "git", "url": "https://h/r.git", "path": "../up"})]),
     "plugins[0].source.path", 'no ".."'),
    (market(plugins=[entry(source={"source": "git", "url": "https://h/r.git", "ref": 1})]),
     "plugins[0].source.ref", "must be a string"),
    (market(plugins=[entry(author="Jane")]), "plugins[0].author", 'author must be an object with a "name"'),
    (market(plugins=[entry(keywords="a,b")]), "plugins[0].keywords", "must be an array of strings"),
    (market(plugins=[entry(keywords=["a", 2])]), "plugins[0].keywords[1]", "must be strings"),
    (market(plugins=[entry(version=1)]), "plugins[0].version", "must be a string"),
    (market(plugins=[entry(strict="yes")]), "plugins[0].strict", "true or false"),
    (market(plugins=[entry(commands="commands")]), "plugins[0].commands", 'start with "./"'),
    (market(plugins=[entry(hooks=5)]), "plugins[0].hooks", "a path to a JSON file"),
    (market(metadata=[]), "metadata", "must be an object"),
    (market(description=["x"]), "description", "must be a string"),
])
def test_marketplace_rule(data: Any, path: str, words: str) -> None:
    """Each rule answers its JSON path and a message saying what to write."""
    found = problems(data, "marketplace")
    assert path in found, found
    assert words in found[path], found[path]


def test_marketplace_every_problem_at_once() -> None:
    """Validation does not stop at the first problem; duplicates name the first occurrence."""
    found = problems({"name": "Bad Name", "owner": "me", "plugins": [
        entry(name="a"), entry(name="a", source={"source": "github"}), "x", {"source": "https://x"}]})
    assert list(found) == ["name", "owner", "plugins[1].name", "plugins[1].source.repo", "plugins[2]",
                           "plugins[3].name", "plugins[3].source"]
    assert found["plugins[1].name"] == ('duplicate plugin name "a" (also plugins[0].name): names must be unique '
                                        "in a marketplace")


def test_marketplace_warnings() -> None:
    """Missing descriptions and unknown fields are warnings: the manifest stays valid."""
    data = market(plugins=[entry(description=None, colour="red")], extra=1)
    result = validate_document(data, None)
    assert result.valid
    assert warnings(data) == {
        "extra": 'unknown marketplace field "extra" (ignored)',
        "plugins[0].description": "description is missing: it is shown when browsing the marketplace",
        "plugins[0].colour": 'unknown plugin entry field "colour" (ignored)',
    }


def test_marketplace_source_objects_accepted() -> None:
    data = market(plugins=[
        entry(name="a", source={"source": "github", "repo": "owner/repo", "ref": "v1"}),
        entry(name="b", source={"source": "git", "url": "git@github.com:o/r.git"}),
        entry(name="c", source={"source": "url", "url": "https://gitlab.com/team/plugin.git", "path": "sub"}),
        entry(name="d", source="./"),
        entry(name="e", source="./plugins/e", mcpServers={"s": {"command": "x"}}, hooks="./hooks/hooks.json"),
    ])
    assert problems(data) == {}


# --------------------------------------------------------------------------- plugin rules


def test_plugin_only_name_required() -> None:
    assert validate_document({"name": "my-plugin"}, None).valid
    assert validate_document({"name": "my-plugin"}, None).type == "plugin"


@pytest.mark.parametrize(("data", "path", "words"), [
    ("x", "root", "must be a JSON object"),
    ({}, "name", "name is required"),
    ({"name": "My_Plugin"}, "name", "kebab-case"),
    ({"name": "p", "version": 1}, "version", "must be a string"),
    ({"name": "p", "description": {}}, "description", "must be a string"),
    ({"name": "p", "homepage": 1}, "homepage", "must be a string"),
    ({"name": "p", "license": True}, "license", "must be a string"),
    ({"name": "p", "repository": []}, "repository", "must be a string"),
    ({"name": "p", "author": "Jane"}, "author", 'author must be an object with a "name"'),
    ({"name": "p", "author": {}}, "author.name", "author.name is required"),
    ({"name": "p", "keywords": "k"}, "keywords", "must be an array of strings"),
    ({"name": "p", "commands": "commands/"}, "commands", 'start with "./"'),
    ({"name": "p", "commands": ["./a.md", 3]}, "commands[1]", "must be path strings"),
    ({"name": "p", "agents": {"a": 1}}, "agents", 'a path ("./agents") or an array of paths'),
    ({"name": "p", "skills": "./../skills"}, "skills", 'stay inside the plugin folder'),
    ({"name": "p", "outputStyles": 2}, "outputStyles", "a path"),
    ({"name": "p", "hooks": 5}, "hooks", 'a path to a JSON file ("./hooks/hooks.json") or an inline object'),
    ({"name": "p", "mcpServers": [1]}, "mcpServers[0]", "a path to a JSON file"),
    ({"name": "p", "lspServers": True}, "lspServers", "a path to a JSON file"),
    ({"name": "p", "userConfig": []}, "userConfig", "must be an object"),
    ({"name": "p", "channels": "x"}, "channels", "an array or an object"),
])
def test_plugin_rule(data: Any, path: str, words: str) -> None:
    found = problems(data, "plugin")
    assert path in found, found
    assert words in found[path], found[path]


def test_plugin_warnings() -> None:
    data = {"name": "p", "version": "v1", "color": "red"}
    assert problems(data, "plugin") == {}
    assert warnings(data, "plugin") == {
        "version": 'version "v1" is not semantic versioning (MAJOR.MINOR.PATCH, e.g. "1.2.0")',
        "color": 'unknown plugin field "color" (ignored)',
    }


def test_type_guessed_or_forced() -> None:
    assert validate_document({"name": "x", "plugins": []}, None).type == "marketplace"
    assert validate_document({"name": "x"}, None).type == "plugin"
    forced = validate_document({"name": "x"}, "marketplace")
    assert (forced.type, {p.path for p in forced.errors}) == ("marketplace", {"owner", "plugins"})


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["name", "owner", "plugins", "source", "repo", "url", "commands", "hooks",
                                         "author", "keywords", "x"]), inner, max_size=5), max_leaves=20),
       st.sampled_from([None, "marketplace", "plugin"]))
def test_any_json_gives_a_report(data: Any, kind: str | None) -> None:
    """Whatever the JSON, validation answers (never raises) and each problem has a path and a message."""
    result = validate_document(data, kind)
    assert result.valid == (not result.errors)
    for problem in [*result.errors, *result.warnings]:
        assert problem.path and problem.message


# --------------------------------------------------------------------------- on disk


def test_on_disk_paths_checked(tmp_path: Path) -> None:
    """Relative sources and component paths must exist; a local plugin's plugin.json is validated too."""
    root = make_marketplace(tmp_path / "m", plugins=[
        {"name": "ok", "source": "./plugins/ok", "description": "x"},
        {"name": "gone", "source": "./plugins/gone", "description": "x", "_make": False},
        {"name": "bad", "source": "./plugins/bad", "description": "x", "commands": ["./commands/missing.md"]},
    ])
    write_json(root / "plugins/bad/.claude-plugin/plugin.json", {"name": "bad", "version": 2, "agents": "./agents"})
    result = validate_path(root, None)
    assert (result.type, result.valid, result.path) == (
        "marketplace", False, str(root / ".claude-plugin/marketplace.json"))
    found = {(p.file, p.path): p.message for p in result.errors}
    assert set(found) == {(None, "plugins[1].source"), (None, "plugins[2].commands[0]"),
                          ("plugins/bad/.claude-plugin/plugin.json", "version"),
                          ("plugins/bad/.claude-plugin/plugin.json", "agents")}
    assert found[(None, "plugins[1].source")].startswith('source "./plugins/gone" does not exist in the marketplace')
    assert found[(None, "plugins[2].commands[0]")].startswith('commands path "./commands/missing.md" does not exist')
    assert found[("plugins/bad/.claude-plugin/plugin.json", "agents")].startswith('agents path "./agents" does not')


def test_manifest_folder_order(tmp_path: Path) -> None:
    """.codebuddy-plugin/ is read before .workbuddy-plugin/ and .claude-plugin/."""
    write_json(tmp_path / ".claude-plugin/plugin.json", {"name": "Claude"})
    write_json(tmp_path / ".workbuddy-plugin/plugin.json", {"name": "work-buddy"})
    assert validate_path(tmp_path, None).path == str(tmp_path / ".workbuddy-plugin/plugin.json")
    assert validate_path(tmp_path, None).valid
    write_json(tmp_path / ".codebuddy-plugin/plugin.json", {"name": "Code Buddy"})
    result = validate_path(tmp_path, None)
    assert (result.path, [p.path for p in result.errors]) == (str(tmp_path / ".codebuddy-plugin/plugin.json"),
                                                              ["name"])


def test_broken_json_and_missing_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "marketplace.json"
    bad.write_text('{"name": "x",\n  "owner": }')
    result = validate_path(bad, None)
    assert (result.valid, result.type) == (False, "marketplace")
    assert [(p.path, p.message) for p in result.errors] == [
        ("root", "marketplace.json cannot be read: not valid JSON: Expecting value at line 2 column 12")]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = validate_path(empty, None)
    assert not result.valid
    assert result.errors[0].message == (f"no marketplace.json or plugin.json in {empty}: put it in one of "
                                        ".codebuddy-plugin/, .workbuddy-plugin/, .claude-plugin/ (searched in that "
                                        "order)")


# --------------------------------------------------------------------------- the route


def test_validate_route(api: Fixture, workspace: Path) -> None:
    """200 with every problem; a folder, a file or inline JSON; relative paths against the workspace."""
    make_marketplace(workspace / "market")
    make_plugin(workspace / "solo", "solo-plugin")
    result = api.data(api.post("/validate", {"path": "market"}))
    assert result == {"valid": True, "type": "marketplace", "errors": [], "warnings": [],
                      "path": str(workspace / "market/.claude-plugin/marketplace.json")}
    assert api.data(api.post("/validate", {"path": str(workspace / "solo")}))["type"] == "plugin"
    assert api.data(api.post("/validate", {"path": "market", "type": "plugin"}))["valid"] is False
    inline = api.data(api.post("/validate", {"manifest": {"name": "x", "owner": {"name": "o"},
                                                          "plugins": [{"name": "a", "source": {"source": "git"}}]}}))
    assert inline["valid"] is False and inline["path"] is None
    assert inline["errors"] == [{"path": "plugins[0].source.url", "message":
                                 'a git source needs "url": a git repository URL such as '
                                 '"https://github.com/owner/repo.git"'}]
    plugin = api.data(api.post("/validate", {"manifest": {"name": "x", "commands": "cmds"}, "type": "plugin"}))
    assert plugin["errors"][0]["path"] == "commands"


def test_validate_route_bad_input(api: Fixture) -> None:
    assert error(api.post("/validate", {})) == (400, "BAD_REQUEST")
    assert error(api.post("/validate", {"path": "x", "manifest": {}})) == (400, "BAD_REQUEST")
    assert error(api.post("/validate", {"manifest": {}, "type": "theme"})) == (400, "BAD_REQUEST")
    assert error(api.post("/validate", {"path": 5})) == (400, "BAD_REQUEST")
    assert error(api.post("/validate", {"path": ""})) == (400, "PATH_REQUIRED")
    assert error(api.post("/validate", {"path": "nowhere"})) == (404, "NOT_FOUND")
    status, body, _ = api.json("POST", "/api/v1/plugins/validate", data=b"{nope",
                               headers={"Content-Type": "application/json"})
    assert (status, body["error"]["code"]) == (400, "BAD_REQUEST")
