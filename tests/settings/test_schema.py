"""The settings schema: checks of the known keys, the permission-rule syntax, and merging."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codebuddy.settings.schema import DEFAULTS, JOINED, KNOWN, PERMISSION_MODES, check, expects_array, is_rule, merge


def paths(parts: list[str], value: Any) -> list[str]:
    return [p.path for p in check(parts, value)]


# -- checks of each kind of known key


@pytest.mark.parametrize(("key", "good", "bad"), [
    ("theme", "dark", 5),
    ("model", "gpt-5", None),
    ("includeCoAuthoredBy", False, "false"),
    ("autoCompactEnabled", True, 1),
    ("cleanupPeriodDays", 7, 7.5),
    ("cleanupPeriodDays", 0, -1),
    ("imageHistoryRetainRounds", 3, True),
    ("reasoningEffort", "high", "extreme"),
    ("env", {"A": "1"}, {"A": 1}),
    ("enabledPlugins", {"p@m": True}, {"p@m": "yes"}),
    ("enabledMcpjsonServers", ["a", "b"], ["a", 2]),
    ("trustedDirectories", [], "/tmp"),
    ("memory", {"enabled": False, "other": 1}, {"enabled": "no"}),
    ("sandbox", {"autoAllowBashIfSandboxed": True}, []),
    ("statusLine", {"type": "command", "command": "echo hi"}, {"type": 1}),
    ("hooks", {"PreToolUse": [{"anything": ["goes"]}]}, []),
])
def test_known_key_good_and_bad(key: str, good: Any, bad: Any) -> None:
    assert check([key], good) == []
    problems = check([key], bad)
    assert problems, (key, bad)
    assert all(p.path.startswith(key) and p.message for p in problems)


def test_problem_paths_point_inside_values() -> None:
    assert paths(["env"], {"A": "1", "B": 2}) == ["env.B"]
    assert paths(["enabledMcpjsonServers"], ["a", 2, "c", None]) == [
        "enabledMcpjsonServers[1]", "enabledMcpjsonServers[3]"]
    assert paths(["memory"], {"enabled": 1, "autoMemoryEnabled": "x"}) == ["memory.enabled", "memory.autoMemoryEnabled"]
    assert paths(["gateway"], {"rateLimit": {"burst": -1, "requestsPerSecond": "fast"}}) == [
        "gateway.rateLimit.burst", "gateway.rateLimit.requestsPerSecond"]
    assert paths(["extraKnownMarketplaces"], {"m": {"source": {"source": "ftp"}}}) == [
        "extraKnownMarketplaces.m.source.source"]


def test_messages_say_what_is_expected() -> None:
    [problem] = check(["includeCoAuthoredBy"], "yes")
    assert problem.message == "must be true or false, not a string"
    [problem] = check(["cleanupPeriodDays"], -3)
    assert problem.message == "must be at least 0"
    [problem] = check(["theme"], [1])
    assert problem.message == "must be a string, not an array"
    [problem] = check(["reasoningEffort"], "huge")
    assert problem.message.startswith("must be one of minimal, low, medium, high, xhigh, max")


def test_permissions() -> None:
    good = {"allow": ["Read(**)", "Bash(npm test:*)"], "ask": ["WebFetch"], "deny": ["mcp__github__get_issue"],
            "additionalDirectories": ["../other"], "defaultMode": "acceptEdits",
            "disableBypassPermissionsMode": "disable", "somethingNewer": {"kept": True}}
    assert check(["permissions"], good) == []
    for mode in PERMISSION_MODES:
        assert check(["permissions", "defaultMode"], mode) == []
    assert paths(["permissions"], {"allow": ["Read(**)", "not a rule", 3], "defaultMode": "yolo"}) == [
        "permissions.allow[1]", "permissions.allow[2]", "permissions.defaultMode"]
    assert paths(["permissions"], {"deny": "Read(**)"}) == ["permissions.deny"]
    assert paths(["permissions"], {"disableBypassPermissionsMode": "enable"}) == [
        "permissions.disableBypassPermissionsMode"]
    assert paths(["permissions"], ["Allow: Read(**)"]) == ["permissions"]


def test_gateway() -> None:
    assert check(["gateway"], {"auth": "password", "password": "s3cret", "corsOrigins": "https://a.example",
                               "allowedHosts": ["box.lan"], "requireRequestHeader": True, "maxConnections": 5,
                               "rateLimit": {"requestsPerSecond": 10, "burst": 20}}) == []
    assert check(["gateway"], {"corsOrigins": ["https://a.example", "https://b.example"]}) == []
    assert paths(["gateway"], {"auth": "token", "password": 1234, "corsOrigins": [1],
                               "maxConnections": 0}) == [
        "gateway.auth", "gateway.password", "gateway.corsOrigins[0]", "gateway.maxConnections"]


@pytest.mark.parametrize("text", [
    "Read", "Read(**)", "Bash(npm test:*)", "WebFetch(domain:example.com)", "Edit(/src/**/*.py)",
    "mcp__github", "mcp__github__get_issue", "mcp__github__*", "Bash(echo (nested) parens)", "Tool_2",
])
def test_rules(text: str) -> None:
    assert is_rule(text)


@pytest.mark.parametrize("text", [
    "", "Read()", "Read(**", "Read **", "Allow: Read(**)", "(**)", "2Read", "Read(**) ", " Read", "Read(a)b",
])
def test_not_rules(text: str) -> None:
    assert not is_rule(text)


def test_dotted_keys_reach_into_known_objects() -> None:
    assert check(["permissions", "defaultMode"], "plan") == []
    assert paths(["permissions", "defaultMode"], "nope") == ["permissions.defaultMode"]
    assert paths(["memory", "enabled"], "yes") == ["memory.enabled"]
    assert paths(["permissions", "allow"], ["Read(**)", "??"]) == ["permissions.allow[1]"]
    assert paths(["gateway", "rateLimit", "burst"], -1) == ["gateway.rateLimit.burst"]


def test_unknown_keys_are_not_checked() -> None:
    for parts in (["someNewKey"], ["permissions", "someNewField"], ["memory", "newer"], ["a", "b", "c"],
                  ["theme", "inner"], ["gateway", "whatever"]):
        assert check(parts, object()) == []
        assert expects_array(parts) is None
    assert check(["memory"], {"newer": [1, 2], "enabled": True}) == []


def test_expects_array() -> None:
    assert expects_array(["permissions", "allow"]) is True
    assert expects_array(["permissions", "additionalDirectories"]) is True
    assert expects_array(["trustedDirectories"]) is True
    assert expects_array(["theme"]) is False
    assert expects_array(["env"]) is False
    assert expects_array(["permissions"]) is False
    # a string or an array: array edits work on the array form
    assert expects_array(["gateway", "corsOrigins"]) is True
    assert expects_array(["gateway", "allowedHosts"]) is True


def test_every_default_passes_its_check() -> None:
    for key, value in DEFAULTS.items():
        assert key in KNOWN
        assert check([key], value) == [], key


# -- merging


def test_precedence_local_over_project_over_user_over_defaults() -> None:
    user = {"model": "u", "theme": "light", "language": "fr", "cleanupPeriodDays": 10}
    project = {"model": "p", "theme": "dark"}
    local = {"model": "l"}
    merged = merge([DEFAULTS, user, project, local])
    picked = (merged["model"], merged["theme"], merged["language"], merged["cleanupPeriodDays"])
    assert picked == ("l", "dark", "fr", 10)
    assert merged["autoCompactEnabled"] is True  # a default nobody set


def test_objects_merge_key_by_key() -> None:
    merged = merge([DEFAULTS, {"env": {"A": "user", "B": "user"}, "memory": {"enabled": False}},
                    {"env": {"B": "project", "C": "project"}}, {"permissions": {"defaultMode": "plan"}}])
    assert merged["env"] == {"A": "user", "B": "project", "C": "project"}
    assert merged["memory"] == {"enabled": False, "autoMemoryEnabled": False}
    assert merged["permissions"]["defaultMode"] == "plan"
    assert merged["permissions"]["allow"] == []


def test_permission_lists_are_joined_over_scopes() -> None:
    merged = merge([
        DEFAULTS,
        {"permissions": {"allow": ["Read(**)", "WebFetch"], "deny": ["Bash(rm:*)"],
                         "additionalDirectories": ["/a"]}},
        {"permissions": {"allow": ["Bash(npm test:*)", "Read(**)"], "additionalDirectories": ["/b"]}},
        {"permissions": {"allow": ["Edit"], "ask": ["Bash(git push:*)"]}},
    ])
    assert merged["permissions"]["allow"] == ["Read(**)", "WebFetch", "Bash(npm test:*)", "Edit"]
    assert merged["permissions"]["deny"] == ["Bash(rm:*)"]
    assert merged["permissions"]["ask"] == ["Bash(git push:*)"]
    assert merged["permissions"]["additionalDirectories"] == ["/a", "/b"]


def test_other_lists_are_replaced() -> None:
    merged = merge([{"trustedDirectories": ["/a"], "custom": [1, 2]}, {"trustedDirectories": ["/b"], "custom": [3]}])
    assert merged == {"trustedDirectories": ["/b"], "custom": [3]}


def test_a_scalar_replaces_an_object_and_back() -> None:
    assert merge([{"memory": {"enabled": True}}, {"memory": False}]) == {"memory": False}
    assert merge([{"memory": False}, {"memory": {"enabled": True}}]) == {"memory": {"enabled": True}}
    assert merge([{"permissions": {"allow": ["Read"]}}, {"permissions": {"allow": "Edit"}}]) == {
        "permissions": {"allow": "Edit"}}


def test_merge_mutates_neither_defaults_nor_layers() -> None:
    before = copy.deepcopy(DEFAULTS)
    user = {"permissions": {"allow": ["Read(**)"]}, "env": {"A": "1"}, "memory": {"enabled": False}}
    project = {"permissions": {"allow": ["Edit"]}, "env": {"B": "2"}}
    layers_before = copy.deepcopy([user, project])
    merged = merge([DEFAULTS, user, project])
    merged["permissions"]["allow"].append("Write")
    merged["env"]["C"] = "3"
    merged["memory"]["enabled"] = "changed"
    again = merge([DEFAULTS])
    again["permissions"]["deny"].append("Bash")
    assert DEFAULTS == before
    assert [user, project] == layers_before
    assert merge([DEFAULTS]) == before


# -- property: the last layer's scalars win

keys = st.sampled_from(["a", "b", "c", "permissions", "allow", "env", "x.y"])
scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=8)
layers = st.lists(st.dictionaries(keys, json_values, max_size=4), min_size=1, max_size=4)


def leaves(value: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every non-object value of ``value`` by its key path (lists count as leaves)."""
    if isinstance(value, dict) and value:
        found: dict[tuple[str, ...], Any] = {}
        for key, item in value.items():
            found.update(leaves(item, (*path, key)))
        return found
    return {path: value}


@given(layers)
def test_last_layers_scalars_win(stack: list[dict[str, Any]]) -> None:
    before = copy.deepcopy(stack)
    merged = merge(stack)
    for path, value in leaves(stack[-1]).items():
        if not path or value == {}:
            continue
        found: Any = merged
        for part in path:
            found = found[part]
        if isinstance(value, list) and path in JOINED:
            assert all(item in found for item in value), (path, merged)  # joined: the earlier ones stay
        else:
            assert found == value, (path, merged)
    assert set(stack[-1]) <= set(merged)
    for layer in stack:
        assert set(layer) <= set(merged)
    assert stack == before


@given(layers)
def test_merging_one_layer_is_a_copy(stack: list[dict[str, Any]]) -> None:
    layer = stack[0]
    before = copy.deepcopy(layer)
    merged = merge([layer])
    assert merged == layer
    for key, value in merged.items():
        if isinstance(value, dict | list):
            value.clear()
        else:
            merged[key] = "changed"
    assert layer == before
