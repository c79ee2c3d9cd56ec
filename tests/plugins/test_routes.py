"""The plugin routes in memory: the spec's examples, real marketplaces on disk and in git, settings, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred

from codebuddy.plugins.manager import PluginManager
from codebuddy.settings.store import SettingsStore
from tests.helpers import _result
from tests.plugins.helpers import (
    Fixture,
    Hanging,
    MemorySettings,
    Pages,
    PumpedStub,
    error,
    git_commit,
    make_marketplace,
    make_plugin,
    needs_git,
    write_json,
)

PLUGIN = "my-plugin@my-marketplace"


def installed_file(api: Fixture) -> dict[str, Any]:
    return json.loads((api.plugins_dir / "installed_plugins.json").read_text())  # type: ignore[no-any-return]


def known_file(api: Fixture) -> dict[str, Any]:
    return json.loads((api.plugins_dir / "known_marketplaces.json").read_text())  # type: ignore[no-any-return]


def cache_of(api: Fixture, market: str = "my-marketplace") -> list[str]:
    root = api.plugins_dir / "cache" / market
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# --------------------------------------------------------------------------- the spec's examples


@needs_git
def test_spec_examples_verbatim(tmp_path: Path, home: Path, workspace: Path) -> None:
    """
    Every Plugin Management example of the spec, with its exact body: a marketplace downloaded from
    https://example.com/marketplace whose plugin is a git repository (a file:// one here).
    """
    repo = make_plugin(tmp_path / "plugin-repo", "my-plugin", version="2.1.0")
    sha = git_commit(repo)
    manifest = {"name": "my-marketplace", "owner": {"name": "Example"}, "plugins": [
        {"name": "my-plugin", "description": "An example", "source": {"source": "git", "url": f"file://{repo}"}},
        {"name": "other-plugin", "description": "Another", "source": {"source": "github", "repo": "o/other"}},
    ]}
    pages = Pages({"/marketplace": (200, json.dumps(manifest).encode())})
    api = Fixture(home, workspace, http=PumpedStub(pages))

    assert api.data(api.json("GET", "/api/v1/plugins")) == []
    added = api.data(api.post("/marketplaces", {"source": "https://example.com/marketplace",
                                                "name": "my-marketplace"}), 201)
    assert pages.requests == ["/marketplace"]
    assert {k: added[k] for k in ("name", "type", "source", "location", "pluginCount", "owner")} == {
        "name": "my-marketplace", "type": "url", "source": {"source": "url", "url": "https://example.com/marketplace"},
        "location": "https://example.com/marketplace", "pluginCount": 2, "owner": {"name": "Example"}}
    assert [m["name"] for m in api.data(api.json("GET", "/api/v1/plugins/marketplaces"))] == ["my-marketplace"]

    browsed = api.data(api.post("/marketplaces/browse", {"marketplace": "my-marketplace"}))
    assert [(p["name"], p["status"], p["installed"], p["marketplaceName"]) for p in browsed] == [
        ("my-plugin", None, False, "my-marketplace"), ("other-plugin", None, False, "my-marketplace")]

    plugin = api.data(api.post("", {"plugin": "my-plugin@my-marketplace"}), 201)
    assert (plugin["id"], plugin["version"], plugin["enabled"], plugin["gitCommitSha"]) == (PLUGIN, "2.1.0", True, sha)
    assert plugin["installPath"] == str(home / "plugins/cache/my-marketplace/my-plugin/2.1.0")
    assert cache_of(api) == ["my-plugin", "my-plugin/2.1.0", "my-plugin/2.1.0/.claude-plugin",
                             "my-plugin/2.1.0/.claude-plugin/plugin.json", "my-plugin/2.1.0/commands",
                             "my-plugin/2.1.0/commands/hello.md"]
    assert api.settings.enabled() == {PLUGIN: True}

    assert api.data(api.post("/disable", {"plugin": "my-plugin@my-marketplace"}))["status"] == "disabled"
    assert api.settings.enabled() == {PLUGIN: False}
    assert api.data(api.post("/enable", {"plugin": "my-plugin@my-marketplace"}))["status"] == "enabled"
    assert api.settings.enabled() == {PLUGIN: True}
    assert api.data(api.post("/uninstall", {"plugin": "my-plugin@my-marketplace"})) == {
        "id": PLUGIN, "uninstalled": True, "removedFiles": True}
    assert api.settings.enabled() == {} and cache_of(api) == []

    removed = api.data(api.json("DELETE", "/api/v1/plugins/marketplaces/my-marketplace"))
    assert removed == {"name": "my-marketplace", "removed": True, "uninstalledPlugins": []}
    assert api.data(api.json("GET", "/api/v1/plugins/marketplaces")) == []
    assert not (home / "plugins/marketplaces/my-marketplace").exists() and api.staging_left() == []


def test_url_marketplace_errors(home: Path, workspace: Path) -> None:
    """Unreachable, not JSON, invalid, timed out: a code, a message, and nothing left behind."""
    bad = {"name": "bad", "owner": "me", "plugins": [{"name": "x"}]}
    relative = {"name": "rel", "owner": {"name": "o"}, "plugins": [{"name": "x", "source": "./x"}]}
    pages = Pages({"/page": (200, b"<html>hello</html>"), "/bad.json": (200, json.dumps(bad).encode()),
                   "/rel.json": (200, json.dumps(relative).encode())})
    api = Fixture(home, workspace, http=PumpedStub(pages))
    result = api.post("/marketplaces", {"source": "https://example.com/missing.json"})
    assert error(result) == (502, "SOURCE_UNREACHABLE")
    assert result[1]["error"]["message"] == "https://example.com/missing.json answered HTTP 404"
    result = api.post("/marketplaces", {"source": "https://example.com/page"})
    assert error(result) == (400, "MANIFEST_INVALID")
    assert "not valid JSON" in result[1]["error"]["message"] and "a web page?" in result[1]["error"]["message"]
    result = api.post("/marketplaces", {"source": "https://example.com/bad.json"})
    assert error(result) == (400, "MANIFEST_INVALID")
    assert [d["path"] for d in result[1]["error"]["details"]] == ["owner", "plugins[0].source"]
    assert result[1]["error"]["message"].startswith(
        "the marketplace manifest of https://example.com/bad.json is invalid: marketplace.json: owner: owner must be")
    assert api.data(api.json("GET", "/api/v1/plugins/marketplaces")) == []

    api.data(api.post("/marketplaces", {"source": "https://example.com/rel.json"}), 201)
    result = api.post("", {"plugin": "x@rel"})
    assert error(result) == (400, "MANIFEST_INVALID")
    assert "was downloaded from a URL and has no folder" in result[1]["error"]["message"]

    hanging = Hanging()
    slow = Fixture(home, workspace, http=hanging)
    d = slow.treq.request("POST", "http://127.0.0.1:8080/api/v1/plugins/marketplaces",
                          json={"source": "https://example.com/slow.json"})
    slow.treq.flush()
    assert len(hanging.pending) == 1
    slow.clock.advance(30)
    slow._pump(d)
    response = _result(d)
    assert response.code == 502
    assert api.staging_left() == []


# --------------------------------------------------------------------------- local marketplaces


def test_local_marketplace_in_claude_layout(api: Fixture, workspace: Path, home: Path) -> None:
    """.claude-plugin/marketplace.json with ./plugins/<name> plugins: add (name from the manifest), browse, install."""
    source = make_marketplace(workspace / "market")
    (source / ".git").mkdir()  # a work tree's .git is not copied
    added = api.data(api.post("/marketplaces", {"source": "./market"}), 201)
    assert {k: added[k] for k in ("name", "type", "location", "installLocation", "description", "pluginCount")} == {
        "name": "my-marketplace", "type": "directory", "location": str(source),
        "installLocation": str(home / "plugins/marketplaces/my-marketplace"), "description": "Demo plugins",
        "pluginCount": 1}
    assert added["lastUpdated"] == int(api.clock.seconds() * 1000)
    assert known_file(api) == {"my-marketplace": {
        "source": {"source": "directory", "path": str(source)},
        "installLocation": str(home / "plugins/marketplaces/my-marketplace"),
        "lastUpdated": "1970-01-12T13:46:40.000Z"}}
    copy = home / "plugins/marketplaces/my-marketplace"
    assert (copy / ".claude-plugin/marketplace.json").exists() and not (copy / ".git").exists()

    [offer] = api.data(api.post("/marketplaces/browse", {"marketplace": "my-marketplace"}))
    assert offer == {"id": PLUGIN, "name": "my-plugin", "version": "1.0.0", "description": "Says hello",
                     "marketplaceName": "my-marketplace", "status": None, "installed": False,
                     "author": {"name": "Jane", "email": "jane@example.com"}, "license": None, "homepage": None,
                     "repository": None, "keywords": ["hello"], "category": "demo", "features": ["commands"],
                     "source": "./plugins/my-plugin"}

    plugin = api.data(api.post("", {"plugin": PLUGIN}), 201)
    path = home / "plugins/cache/my-marketplace/my-plugin/1.0.0"
    assert plugin == {
        "id": PLUGIN, "name": "my-plugin", "marketplace": "my-marketplace", "version": "1.0.0", "enabled": True,
        "status": "enabled", "installScope": "user", "installPath": str(path), "installedAt": 1_000_000_000,
        "lastUpdated": 1_000_000_000, "description": "The my-plugin plugin", "author": {
            "name": "Jane", "email": "jane@example.com"}, "homepage": None, "repository": None, "license": None,
        "keywords": ["hello"], "category": "demo", "features": ["commands"], "source": "./plugins/my-plugin",
        "canRemove": True, "canSwitchoff": True, "canEdit": False}
    assert (path / "commands/hello.md").read_text().startswith("# /hello")
    assert installed_file(api) == {"version": 2, "plugins": {PLUGIN: [{
        "scope": "user", "installPath": str(path), "version": "1.0.0", "installedAt": "1970-01-12T13:46:40.000Z",
        "lastUpdated": "1970-01-12T13:46:40.000Z", "isLocal": True}]}}
    assert api.data(api.json("GET", "/api/v1/plugins")) == [plugin]
    [offer] = api.data(api.post("/marketplaces/browse", {"marketplace": "my-marketplace"}))
    assert (offer["status"], offer["installed"], offer["installedVersion"]) == ("installed", True, "1.0.0")
    assert api.staging_left() == []


def test_marketplace_json_path_and_options(api: Fixture, workspace: Path, home: Path) -> None:
    """A path to a marketplace.json: relative plugins resolve beside its manifest folder; name and scope options."""
    source = make_marketplace(workspace / "m", manifest_dir=".codebuddy-plugin")
    added = api.data(api.post("/marketplaces", {"source": str(source / ".codebuddy-plugin/marketplace.json"),
                                                "name": "team-tools"}), 201)
    assert (added["name"], added["type"]) == ("team-tools", "file")
    plugin = api.data(api.post("", {"plugin": "my-plugin@team-tools", "options": {"scope": "project"}}), 201)
    assert plugin["installScope"] == "project" and plugin["enabled"] is True
    assert api.settings.scopes["project"] == {"enabledPlugins": {"my-plugin@team-tools": True}}
    assert installed_file(api)["plugins"]["my-plugin@team-tools"][0]["projectPath"] == str(workspace)
    # a local override wins over the project's value
    api.settings.scopes["local"] = {"enabledPlugins": {"my-plugin@team-tools": False}}
    assert api.data(api.json("GET", "/api/v1/plugins"))[0]["enabled"] is False
    assert error(api.post("", {"plugin": "my-plugin@team-tools", "options": {"scope": "global"}})) == (
        400, "BAD_REQUEST")
    api.data(api.post("/uninstall", {"plugin": "my-plugin@team-tools"}))
    assert api.settings.scopes["project"] == {"enabledPlugins": {}} == api.settings.scopes["local"]
    local = api.data(api.post("", {"plugin": "my-plugin@team-tools", "options": {"scope": "project-local"}}), 201)
    assert (local["installScope"], local["enabled"]) == ("local", True)


def test_source_object_and_bad_add_bodies(api: Fixture, workspace: Path) -> None:
    make_marketplace(workspace / "m")
    added = api.data(api.post("/marketplaces", {"source": {"source": "directory", "path": "m"}}), 201)
    assert added["name"] == "my-marketplace"
    for body in ({}, {"source": 5}, {"source": ""}, {"source": "./nope"}, {"source": "what is this"},
                 {"source": "./m", "name": "Bad Name"}, {"source": {"source": "ftp", "url": "x"}},
                 {"source": "./m", "name": 3}):
        assert error(api.post("/marketplaces", body)) == (400, "BAD_REQUEST"), body
    status, body, _ = api.json("POST", "/api/v1/plugins/marketplaces", data=b"source=x",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, body["error"]["code"]) == (415, "UNSUPPORTED_MEDIA_TYPE")


def test_duplicate_and_invalid_marketplaces(api: Fixture, workspace: Path) -> None:
    """A taken name is 409 (given or from the manifest); a folder without a valid manifest is 400 with details."""
    make_marketplace(workspace / "m")
    make_marketplace(workspace / "m2")
    api.data(api.post("/marketplaces", {"source": "./m"}), 201)
    result = api.post("/marketplaces", {"source": "./m2"})
    assert error(result) == (409, "ALREADY_EXISTS")
    assert result[1]["error"]["message"].startswith('a marketplace named "my-marketplace" already exists (from ')
    assert error(api.post("/marketplaces", {"source": "./m2", "name": "my-marketplace"})) == (409, "ALREADY_EXISTS")
    assert api.data(api.post("/marketplaces", {"source": "./m2", "name": "second"}), 201)["name"] == "second"

    (workspace / "empty").mkdir()
    result = api.post("/marketplaces", {"source": "./empty"})
    assert error(result) == (400, "MANIFEST_INVALID")
    assert result[1]["error"]["message"] == (f"{workspace / 'empty'} is not a marketplace: no marketplace.json in "
                                             ".codebuddy-plugin/, .workbuddy-plugin/, .claude-plugin/")
    write_json(workspace / "broken/.claude-plugin/marketplace.json", {"name": "Broken", "plugins": "none"})
    result = api.post("/marketplaces", {"source": "./broken"})
    assert error(result) == (400, "MANIFEST_INVALID")
    assert [(d["path"], d["file"]) for d in result[1]["error"]["details"]] == [
        ("name", "marketplace.json"), ("owner", "marketplace.json"), ("plugins", "marketplace.json")]
    assert sorted(known_file(api)) == ["my-marketplace", "second"]
    assert sorted(p.name for p in (api.plugins_dir / "marketplaces").iterdir()) == ["my-marketplace", "second"]
    assert api.staging_left() == []


# --------------------------------------------------------------------------- git marketplaces


@needs_git
def test_file_git_marketplace_and_update(api: Fixture, tmp_path: Path, home: Path) -> None:
    """A file:// repository: cloned (depth 1), plugins copied without .git, versions follow an update."""
    repo = make_marketplace(tmp_path / "repo", name="git-market", plugins=[
        {"name": "tool", "source": "./plugins/tool", "description": "A tool", "_make": False},
        {"name": "whole", "source": "./", "description": "The repository itself", "strict": False}])
    make_plugin(repo / "plugins/tool", "tool", version=None)
    sha = git_commit(repo)
    added = api.data(api.post("/marketplaces", {"source": f"file://{repo}"}), 201)
    assert (added["name"], added["type"], added["source"]) == ("git-market", "git",
                                                              {"source": "git", "url": f"file://{repo}"})
    assert (home / "plugins/marketplaces/git-market/.git").is_dir()

    tool = api.data(api.post("", {"plugin": "tool@git-market"}), 201)
    assert (tool["version"], tool["gitCommitSha"]) == (sha[:12], sha)  # no version anywhere: the commit
    assert not (Path(tool["installPath"]) / ".git").exists()
    whole = api.data(api.post("", {"plugin": "whole@git-market"}), 201)
    assert (Path(whole["installPath"]) / "plugins/tool/commands/hello.md").exists()
    assert not (Path(whole["installPath"]) / ".git").exists()

    manifest = json.loads((repo / ".claude-plugin/marketplace.json").read_text())
    manifest["plugins"][0]["version"] = "3.0.0"
    manifest["plugins"].append({"name": "new-one", "source": "./plugins/tool", "description": "New"})
    write_json(repo / ".claude-plugin/marketplace.json", manifest)
    git_commit(repo, "more")
    updated = api.data(api.post("/marketplaces/update", {"marketplace": "git-market"}))
    assert updated["pluginCount"] == 3
    offers = {p["name"]: p for p in api.data(api.post("/marketplaces/browse", {"marketplace": "git-market"}))}
    assert (offers["tool"]["version"], offers["tool"]["installedVersion"]) == ("3.0.0", sha[:12])
    assert offers["new-one"]["status"] is None
    assert api.data(api.post("", {"plugin": "tool@git-market"}))["alreadyInstalled"] is True


@needs_git
def test_git_failures(api: Fixture, tmp_path: Path) -> None:
    result = api.post("/marketplaces", {"source": f"file://{tmp_path}/nothing.git"})
    assert error(result) == (502, "SOURCE_UNREACHABLE")
    assert "does not appear to be a git repository" in result[1]["error"]["message"]
    assert error(api.post("/marketplaces/update", {"marketplace": "nothing"})) == (404, "MARKETPLACE_NOT_FOUND")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "README").write_text("no manifest")
    git_commit(plain)
    result = api.post("/marketplaces", {"source": f"file://{plain}"})
    assert error(result) == (400, "MANIFEST_INVALID")
    assert api.staging_left() == [] and list((api.plugins_dir / "marketplaces").iterdir()) == []


@needs_git
def test_plugin_git_subfolder_source(api: Fixture, tmp_path: Path, workspace: Path) -> None:
    """{"source": "url", "url", "path"}: the folder of a cloned repository; a missing folder is refused."""
    repo = tmp_path / "mono"
    make_plugin(repo / "packages/deployer", "deployer", version="0.3.0")
    git_commit(repo)
    make_marketplace(workspace / "m", plugins=[
        {"name": "deployer", "description": "d", "source": {"source": "url", "url": f"file://{repo}",
                                                            "path": "packages/deployer"}},
        {"name": "ghost", "description": "g", "source": {"source": "git", "url": f"file://{repo}", "path": "nope"}}])
    api.data(api.post("/marketplaces", {"source": "./m"}), 201)
    plugin = api.data(api.post("", {"plugin": "deployer@my-marketplace"}), 201)
    assert plugin["version"] == "0.3.0" and (Path(plugin["installPath"]) / "commands/hello.md").exists()
    assert error(api.post("", {"plugin": "ghost@my-marketplace"})) == (400, "MANIFEST_INVALID")
    assert cache_of(api)[0] == "deployer" and "ghost" not in cache_of(api) and api.staging_left() == []


# --------------------------------------------------------------------------- install rules


def test_install_errors(api: Fixture, workspace: Path) -> None:
    make_marketplace(workspace / "m")
    api.data(api.post("/marketplaces", {"source": "./m"}), 201)
    result = api.post("", {"plugin": "my-plugin@elsewhere"})
    assert error(result) == (404, "MARKETPLACE_NOT_FOUND")
    assert result[1]["error"]["message"] == ('no marketplace "elsewhere": add it with POST /api/v1/plugins/marketplaces'
                                             " (known: my-marketplace)")
    result = api.post("", {"plugin": "nothing@my-marketplace"})
    assert error(result) == (404, "PLUGIN_NOT_FOUND")
    assert result[1]["error"]["message"] == 'marketplace "my-marketplace" has no plugin "nothing" (it has my-plugin)'
    for body in ({}, {"plugin": "my-plugin"}, {"plugin": "My Plugin@my-marketplace"}, {"plugin": "@x"},
                 {"plugin": 1}, {"plugin": "a@b", "options": {"scope": 2}}):
        assert error(api.post("", body)) == (400, "BAD_REQUEST"), body
    for route in ("/enable", "/disable", "/uninstall"):
        assert error(api.post(route, {"plugin": PLUGIN})) == (404, "PLUGIN_NOT_FOUND"), route
        assert error(api.post(route, {"plugin": "nope"})) == (400, "BAD_REQUEST"), route
    assert error(api.post("/marketplaces/browse", {"marketplace": "nope"})) == (404, "MARKETPLACE_NOT_FOUND")
    assert error(api.post("/marketplaces/browse", {})) == (400, "BAD_REQUEST")
    assert error(api.json("DELETE", "/api/v1/plugins/marketplaces/nope")) == (404, "MARKETPLACE_NOT_FOUND")


def test_install_is_idempotent(api: Fixture, workspace: Path) -> None:
    """A second install answers 200 alreadyInstalled and changes nothing (a disabled plugin stays disabled)."""
    make_marketplace(workspace / "m")
    api.data(api.post("/marketplaces", {"source": "./m"}), 201)
    first = api.data(api.post("", {"plugin": PLUGIN}), 201)
    api.data(api.post("/disable", {"plugin": PLUGIN}))
    again = api.data(api.post("", {"plugin": PLUGIN}), 200)
    assert again["alreadyInstalled"] is True and again["enabled"] is False
    assert again["installedAt"] == first["installedAt"]
    assert api.settings.updates == ["user", "user"]


@pytest.mark.parametrize(("plugin_json", "entry_extra", "paths"), [
    ({"name": "Bad Name", "version": "1.0.0"}, {}, ["name"]),
    ({"name": "my-plugin", "commands": "./nowhere"}, {}, ["commands"]),
    ({"name": "my-plugin", "version": 3}, {"agents": "./agents"}, ["version", "agents"]),
    ("not json", {}, ["root"]),
])
def test_no_half_installed_plugin(api: Fixture, workspace: Path, home: Path, plugin_json: Any,
                                  entry_extra: dict[str, Any], paths: list[str]) -> None:
    """A plugin that fails its checks is refused before anything is recorded, enabled or left in the cache."""
    root = make_marketplace(workspace / "m", plugins=[
        {"name": "my-plugin", "source": "./plugins/my-plugin", "description": "x", **entry_extra}])
    manifest = root / "plugins/my-plugin/.claude-plugin/plugin.json"
    if isinstance(plugin_json, str):
        manifest.write_text(plugin_json)
    else:
        write_json(manifest, plugin_json)
    api.data(api.post("/marketplaces", {"source": "./m"}), 201)
    result = api.post("", {"plugin": PLUGIN})
    assert error(result) == (400, "MANIFEST_INVALID")
    assert [d["path"] for d in result[1]["error"]["details"]] == paths
    assert result[1]["error"]["message"].startswith(f'plugin "{PLUGIN}" is invalid: ')
    assert not (home / "plugins/installed_plugins.json").exists()
    assert cache_of(api) == [] and api.staging_left() == []
    assert api.settings.enabled() == {}
    assert api.data(api.json("GET", "/api/v1/plugins")) == []


def test_bad_entry_refused_before_fetching(api: Fixture, workspace: Path) -> None:
    """An entry with a bad source is refused from the manifest alone, with the entry's JSON path."""
    make_marketplace(workspace / "m")
    copy = api.plugins_dir / "marketplaces/my-marketplace/.claude-plugin/marketplace.json"
    api.data(api.post("/marketplaces", {"source": "./m"}), 201)
    data = json.loads(copy.read_text())
    data["plugins"][0]["source"] = {"source": "github", "repo": "not-a-repo"}
    write_json(copy, data)
    result = api.post("", {"plugin": PLUGIN})
    assert error(result) == (400, "MANIFEST_INVALID")
    assert result[1]["error"]["details"] == [{"path": "plugins[0].source.repo", "file": "marketplace.json",
                                              "message": 'repo must look like "owner/repo", not "not-a-repo"'}]


def test_settings_failure_rolls_back(home: Path, workspace: Path) -> None:
    """When the settings file cannot be written, the install is undone (files and record)."""
    store = SettingsStore(home, workspace)
    api = Fixture(home, workspace, settings=store)
    make_marketplace(workspace / "m")
    api.data(api.post("/marketplaces", {"source": "./m"}), 201)
    (home / "settings.json").write_text("{broken")
    result = api.post("", {"plugin": PLUGIN})
    assert error(result) == (409, "SETTINGS_INVALID")
    assert installed_file(api) == {"version": 2, "plugins": {}}
    assert cache_of(api) == [] and api.staging_left() == []
    (home / "settings.json").write_text('{"model": "x"}')
    api.data(api.post("", {"plugin": PLUGIN}), 201)
    assert json.loads((home / "settings.json").read_text()) == {"model": "x", "enabledPlugins": {PLUGIN: True}}


# --------------------------------------------------------------------------- uninstall and delete


def test_uninstall_removes_files_and_settings_entry(home: Path, workspace: Path) -> None:
    """With the real settings store: files, record and enabledPlugins entry go; other settings stay."""
    api = Fixture(home, workspace, settings=SettingsStore(home, workspace))
    write_json(home / "settings.json", {"theme": "dark", "enabledPlugins": {"other@x": True}})
    make_marketplace(workspace / "m")
    api.data(api.post("/marketplaces", {"source": "./m"}), 201)
    plugin = api.data(api.post("", {"plugin": PLUGIN}), 201)
    assert json.loads((home / "settings.json").read_text())["enabledPlugins"] == {"other@x": True, PLUGIN: True}
    api.data(api.post("/disable", {"plugin": PLUGIN}))
    assert json.loads((home / "settings.json").read_text())["enabledPlugins"][PLUGIN] is False
    assert api.data(api.post("/uninstall", {"plugin": PLUGIN}))["removedFiles"] is True
    assert not Path(plugin["installPath"]).exists()
    assert not (home / "plugins/cache/my-marketplace").exists()
    assert installed_file(api) == {"version": 2, "plugins": {}}
    assert json.loads((home / "settings.json").read_text()) == {"theme": "dark", "enabledPlugins": {"other@x": True}}
    assert error(api.post("/uninstall", {"plugin": PLUGIN})) == (404, "PLUGIN_NOT_FOUND")
    # an enabledPlugins entry alone (written by hand) is uninstalled too
    write_json(home / "settings.json", {"enabledPlugins": {PLUGIN: True}})
    assert api.data(api.post("/uninstall", {"plugin": PLUGIN})) == {"id": PLUGIN, "uninstalled": True,
                                                                     "removedFiles": False}
    assert json.loads((home / "settings.json").read_text()) == {"enabledPlugins": {}}


def test_delete_marketplace_uninstalls_its_plugins(api: Fixture, workspace: Path, home: Path) -> None:
    """Its copy, its plugins' files, records and settings entries go; other marketplaces and the source stay."""
    source = make_marketplace(workspace / "m")
    make_marketplace(workspace / "o", name="other-market")
    api.data(api.post("/marketplaces", {"source": "./m"}), 201)
    api.data(api.post("/marketplaces", {"source": "./o"}), 201)
    api.data(api.post("", {"plugin": PLUGIN}), 201)
    api.data(api.post("", {"plugin": "my-plugin@other-market"}), 201)
    removed = api.data(api.json("DELETE", "/api/v1/plugins/marketplaces/my-marketplace"))
    assert removed == {"name": "my-marketplace", "removed": True, "uninstalledPlugins": [PLUGIN]}
    assert sorted(known_file(api)) == ["other-market"]
    assert list(installed_file(api)["plugins"]) == ["my-plugin@other-market"]
    assert api.settings.enabled() == {"my-plugin@other-market": True}
    assert not (home / "plugins/marketplaces/my-marketplace").exists()
    assert not (home / "plugins/cache/my-marketplace").exists()
    assert (source / ".claude-plugin/marketplace.json").exists()
    assert [p["id"] for p in api.data(api.json("GET", "/api/v1/plugins"))] == ["my-plugin@other-market"]
    assert error(api.json("DELETE", "/api/v1/plugins/marketplaces/my-marketplace")) == (404, "MARKETPLACE_NOT_FOUND")


def test_listing_survives_broken_state(api: Fixture, workspace: Path, home: Path) -> None:
    """A marketplace whose copy is gone is listed with an error; an unreadable state file is a clear 409."""
    make_marketplace(workspace / "m")
    api.data(api.post("/marketplaces", {"source": "./m"}), 201)
    shutil.rmtree(home / "plugins/marketplaces/my-marketplace")
    [market] = api.data(api.json("GET", "/api/v1/plugins/marketplaces"))
    assert market["error"].startswith('marketplace "my-marketplace" has no marketplace.json in ')
    assert error(api.post("/marketplaces/browse", {"marketplace": "my-marketplace"})) == (400, "MANIFEST_INVALID")
    api.data(api.post("/marketplaces/update", {"marketplace": "my-marketplace"}))
    assert "error" not in api.data(api.json("GET", "/api/v1/plugins/marketplaces"))[0]
    (home / "plugins/known_marketplaces.json").write_text("{oops")
    result = api.json("GET", "/api/v1/plugins/marketplaces")
    assert error(result) == (409, "CONFLICT") and "fix or remove it" in result[1]["error"]["message"]


def test_update_of_a_vanished_folder(api: Fixture, workspace: Path) -> None:
    source = make_marketplace(workspace / "m")
    api.data(api.post("/marketplaces", {"source": "./m"}), 201)
    shutil.rmtree(source)
    result = api.post("/marketplaces/update", {"marketplace": "my-marketplace"})
    assert error(result) == (502, "SOURCE_UNREACHABLE") and "no longer exists" in result[1]["error"]["message"]
    assert api.data(api.post("/marketplaces/browse", {"marketplace": "my-marketplace"}))[0]["name"] == "my-plugin"


def test_concurrent_managers_share_the_state(api: Fixture, home: Path, workspace: Path) -> None:
    """Two managers on one home (two processes) see each other's marketplaces and never lose a record."""
    make_marketplace(workspace / "m")
    make_marketplace(workspace / "o", name="other-market")
    other = PluginManager(home, MemorySettings(), api.manager.run_blocking, api.fetcher, api.manager.resolver,
                          api.clock)
    api.data(api.post("/marketplaces", {"source": "./m"}), 201)
    results: list[Any] = []
    ensureDeferred(other.add_marketplace("./o", None)).addBoth(results.append)
    assert results and results[0].name == "other-market"
    assert sorted(known_file(api)) == ["my-marketplace", "other-market"]


# --------------------------------------------------------------------------- openapi


def test_openapi_documents_the_routes(api: Fixture) -> None:
    paths = api.openapi["paths"]
    expected = {
        "/api/v1/plugins": {"get", "post"}, "/api/v1/plugins/validate": {"post"},
        "/api/v1/plugins/enable": {"post"}, "/api/v1/plugins/disable": {"post"},
        "/api/v1/plugins/uninstall": {"post"}, "/api/v1/plugins/marketplaces": {"get", "post"},
        "/api/v1/plugins/marketplaces/browse": {"post"}, "/api/v1/plugins/marketplaces/update": {"post"},
        "/api/v1/plugins/marketplaces/{name}": {"delete"},
    }
    assert {p: set(paths[p]) for p in expected} == expected
    schemas = api.openapi["components"]["schemas"]
    for model in ("InstalledPlugin", "MarketplaceInfo", "MarketplacePlugin", "ValidationResult", "Problem",
                  "InstallRequest", "AddMarketplaceRequest", "ValidateRequest", "MarketplaceRemoved"):
        assert model in schemas, model
    assert "alreadyInstalled" in schemas["InstalledPlugin"]["properties"]
    install = paths["/api/v1/plugins"]["post"]
    assert "201" in install["responses"] and "404" in install["responses"]
    assert "MANIFEST_INVALID" in json.dumps(install["responses"]["400"])
