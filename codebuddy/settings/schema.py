# -*- test-case-name: tests.settings.test_schema -*-
"""
What settings look like (acp-codebuddy.md §2.11, Claude Code's settings.json): the known keys
with their types, the defaults of the merged view, the permission-rule syntax, and how scopes
merge.

Known keys are checked when they are written through the API (``check(key_path, value)``
returns every problem with its JSON path); unknown keys are kept as they are, so settings of
newer CodeBuddy versions and of other tools survive.

Merging: defaults, then user, project, local. Objects merge key by key (``enabledPlugins``,
``env``, ``permissions``...); the rule lists ``permissions.allow|ask|deny`` and
``permissions.additionalDirectories`` are joined over the scopes (as Claude Code does: a rule
from any scope applies); any other value of a more specific scope replaces the less specific one.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from codebuddy.web.json import json_type

__all__ = ["DEFAULTS", "KNOWN", "PERMISSION_MODES", "Problem", "check", "is_rule", "merge", "RULE_LISTS"]

PERMISSION_MODES = ("default", "acceptEdits", "plan", "auto", "dontAsk", "bypassPermissions", "delegate")
REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh", "max")
RULE_LISTS = ("allow", "ask", "deny")
# Lists joined over the scopes (see the module docstring).
JOINED = {("permissions", name) for name in (*RULE_LISTS, "additionalDirectories")}

# The merged view starts from these (what the daemon assumes when no file says otherwise).
DEFAULTS: dict[str, Any] = {
    "cleanupPeriodDays": 30,
    "includeCoAuthoredBy": True,
    "autoCompactEnabled": True,
    "alwaysThinkingEnabled": False,
    "fileCheckpointingEnabled": True,
    "promptSuggestionEnabled": True,
    "ignoreGitIgnore": False,
    "deferToolLoading": False,
    "hookOutputCollapsed": False,
    "imageHistoryRetainRounds": 3,
    "env": {},
    "memory": {"enabled": True, "autoMemoryEnabled": False},
    "sandbox": {"enabled": False, "autoAllowBashIfSandboxed": True},
    "permissions": {"allow": [], "ask": [], "deny": [], "additionalDirectories": [], "defaultMode": "default"},
    "enabledPlugins": {},
}


@attrs.frozen
class Problem:
    """One thing wrong with a value: where (a JSON path such as ``permissions.allow[2]``) and why."""

    path: str
    message: str


Check = Callable[[Any, str], list[Problem]]

_RULE = re.compile(r"(?:[A-Za-z][A-Za-z0-9_]*|mcp__[A-Za-z0-9_-]+(?:__[A-Za-z0-9_*-]+)?)(?:\((?P<spec>.+)\))?", re.S)


def is_rule(text: str) -> bool:
    """``Tool`` or ``Tool(specifier)``: ``Read(**)``, ``Bash(npm test:*)``, ``WebFetch``, ``mcp__github__get_issue``."""
    return _RULE.fullmatch(text) is not None


def boolean(value: Any, path: str) -> list[Problem]:
    return [] if isinstance(value, bool) else [Problem(path, f"must be true or false, not {json_type(value)}")]


def string(value: Any, path: str) -> list[Problem]:
    return [] if isinstance(value, str) else [Problem(path, f"must be a string, not {json_type(value)}")]


def integer(minimum: int = 0) -> Check:
    def check_integer(value: Any, path: str) -> list[Problem]:
        if isinstance(value, bool) or not isinstance(value, int):
            return [Problem(path, f"must be a whole number, not {json_type(value)}")]
        if value < minimum:
            return [Problem(path, f"must be at least {minimum}")]
        return []

    return check_integer


def one_of(*choices: str) -> Check:
    def check_choice(value: Any, path: str) -> list[Problem]:
        if value in choices and isinstance(value, str):
            return []
        return [Problem(path, f"must be one of {', '.join(choices)}; got {value!r}")]

    return check_choice


def array(item: Check) -> Check:
    def check_array(value: Any, path: str) -> list[Problem]:
        if not isinstance(value, list):
            return [Problem(path, f"must be an array, not {json_type(value)}")]
        return [p for i, v in enumerate(value) for p in item(v, f"{path}[{i}]")]

    return check_array


def mapping(item: Check) -> Check:
    def check_mapping(value: Any, path: str) -> list[Problem]:
        if not isinstance(value, dict):
            return [Problem(path, f"must be an object, not {json_type(value)}")]
        return [p for k, v in value.items() for p in item(v, f"{path}.{k}")]

    return check_mapping


def anything(value: Any, path: str) -> list[Problem]:
    return []


def obj(fields: dict[str, Check]) -> Check:
    """An object whose known fields are checked; other fields are kept unchecked."""

    def check_object(value: Any, path: str) -> list[Problem]:
        if not isinstance(value, dict):
            return [Problem(path, f"must be an object, not {json_type(value)}")]
        return [p for k, v in value.items() if k in fields for p in fields[k](v, f"{path}.{k}")]

    setattr(check_object, "fields", fields)  # noqa: B010 (read by check() for dotted keys)
    return check_object


def rule(value: Any, path: str) -> list[Problem]:
    if not isinstance(value, str):
        return [Problem(path, f"must be a permission rule string such as Read(**), not {json_type(value)}")]
    if not is_rule(value):
        return [Problem(path, f"{value!r} is not a permission rule: write Tool or Tool(specifier), "
                              "e.g. Read(**), Bash(npm test:*), WebFetch(domain:example.com)")]
    return []


def string_or_strings(value: Any, path: str) -> list[Problem]:
    if isinstance(value, str):
        return []
    return array(string)(value, path)


PERMISSIONS = obj({
    "allow": array(rule), "ask": array(rule), "deny": array(rule),
    "additionalDirectories": array(string), "defaultMode": one_of(*PERMISSION_MODES),
    "disableBypassPermissionsMode": one_of("disable"),
})

GATEWAY = obj({
    "auth": one_of("none", "password"), "password": string, "corsOrigins": string_or_strings,
    "allowedHosts": string_or_strings, "requireRequestHeader": boolean, "maxConnections": integer(1),
    "tokenTtlMs": integer(1), "runTimeoutMs": integer(1),
    "rateLimit": obj({"requestsPerSecond": integer(0), "burst": integer(0)}),
})

KNOWN: dict[str, Check] = {
    "model": string, "theme": string, "language": string, "apiKeyHelper": string, "agent": string,
    "preferredNotifChannel": string, "reasoningEffort": one_of(*REASONING_EFFORTS),
    "cleanupPeriodDays": integer(0), "imageHistoryRetainRounds": integer(0),
    "env": mapping(string), "permissions": PERMISSIONS, "gateway": GATEWAY,
    "enabledPlugins": mapping(boolean),
    "extraKnownMarketplaces": mapping(obj({"source": obj({"source": one_of("github", "git", "url", "directory",
                                                                            "file")})})),
    "hooks": mapping(anything), "statusLine": obj({"type": string, "command": string}),
    "enabledMcpjsonServers": array(string), "disabledMcpjsonServers": array(string),
    "trustedDirectories": array(string),
    "memory": obj({"enabled": boolean, "autoMemoryEnabled": boolean}),
    "sandbox": obj({"enabled": boolean, "autoAllowBashIfSandboxed": boolean}),
    **{name: boolean for name in (
        "includeCoAuthoredBy", "enableAllProjectMcpServers", "autoCompactEnabled", "autoUpdates",
        "alwaysThinkingEnabled", "ignoreGitIgnore", "showTokensCounter", "enablePasteImageFromClipboard",
        "enableTerminalProgressBar", "fileCheckpointingEnabled", "promptSuggestionEnabled", "deferToolLoading",
        "hookOutputCollapsed", "trustAll", "autoMode", "channelsEnabled")},
}


def checker(parts: Iterable[str]) -> Check | None:
    """The check of a (dotted) key, or None for keys that are not known."""
    current: Check | None = None
    fields: dict[str, Check] = KNOWN
    for part in parts:
        current = fields.get(part)
        if current is None:
            return None
        fields = getattr(current, "fields", {})
    return current


def check(parts: list[str], value: Any) -> list[Problem]:
    """Every problem of ``value`` as the value of the key ``parts`` (unknown keys: none)."""
    found = checker(parts)
    return [] if found is None else found(value, ".".join(parts))


def expects_array(parts: list[str]) -> bool | None:
    """Whether a known key holds an array (None: unknown key)."""
    found = checker(parts)
    if found is None:
        return None
    # gateway.corsOrigins and allowedHosts take a string or an array: array edits work on the array form
    return getattr(found, "__name__", "") in ("check_array", "string_or_strings")


def merge(layers: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The merged view of ``layers``, least specific first (see the module docstring)."""
    result: dict[str, Any] = {}
    for layer in layers:
        _merge_into(result, layer, ())
    return result


def _merge_into(target: dict[str, Any], layer: dict[str, Any], path: tuple[str, ...]) -> None:
    for key, value in layer.items():
        here = (*path, key)
        current = target.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _merge_into(current, value, here)
        elif here in JOINED and isinstance(value, list) and isinstance(current, list):
            current.extend(v for v in value if v not in current)
        else:
            target[key] = copy.deepcopy(value)
