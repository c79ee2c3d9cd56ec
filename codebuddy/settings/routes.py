# -*- test-case-name: tests.settings.test_routes -*-
"""
``/api/v1/settings``: the merged view and each scope, one key, and the array edits (spec
"Settings Management"; acp-codebuddy.md §2.11).

Keys are top-level names (``model``) or dotted paths into objects (``permissions.defaultMode``,
``memory.enabled``). The key ``permissions`` takes array edits in the spec's form
``"Allow: Read(**)"`` (also ``Ask:`` and ``Deny:``), which go to ``permissions.allow`` (``ask``,
``deny``); ``permissions.allow`` itself takes bare rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred

from codebuddy.settings.schema import RULE_LISTS, check, expects_array, is_rule
from codebuddy.settings.store import SCOPES, SettingsFileError, SettingsStore, merge_scopes, scope_name
from codebuddy.web.errors import ApiError
from codebuddy.web.json import Encoded, dumps, json_route

__all__ = ["SettingsRoutes"]

TAGS = ("Settings",)
MAX_KEY = 256
_SEGMENT = re.compile(r"[^\x00-\x1f\x7f]+")
_PERMISSION_ITEM = re.compile(r"(allow|ask|deny)\s*:\s*(\S.*)", re.I | re.S)


@attrs.define
class ScopeQuery:
    scope: str | None = attrs.field(default=None, metadata={
        "doc": "user, project or local (project-local); absent: the merged view (GET) or user (writes)"})


@attrs.define
class SetValue:
    value: Any = attrs.field(metadata={"doc": "The new value (any JSON); null removes the key from the scope"})


@attrs.define
class Values:
    values: list[Any] = attrs.field(metadata={"doc": "Values to add or remove, e.g. [\"Allow: Read(**)\"]"})


@attrs.frozen
class SettingValue:
    """One setting and where its value comes from."""

    key: str
    value: Any
    scope: str = attrs.field(metadata={"doc": "user, project, local, or default (no file sets it)"})


@attrs.frozen
class ArrayEdit:
    """An array setting after ``items`` or ``remove``."""

    key: str
    value: Any = attrs.field(metadata={"doc": "The key's new value in the scope (for permissions: the object)"})
    scope: str
    changed: list[Any] = attrs.field(metadata={"doc": "The values actually added (items) or removed (remove)"})


def key_parts(key: str) -> list[str]:
    """A key as its path (``permissions.allow`` -> ["permissions", "allow"]); 400 when malformed."""
    parts = key.split(".")
    if len(key) > MAX_KEY or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise ApiError("BAD_REQUEST", f"{key[:80]!r} is not a settings key (dot-separated names, no control "
                       "characters, at most 256 characters)", [{"field": "key", "message": "malformed"}])
    return parts


def lookup(data: Any, parts: list[str]) -> tuple[bool, Any]:
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return False, None
        data = data[part]
    return True, data


def problems_error(key: str, problems: list[Any]) -> ApiError:
    first = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ApiError("BAD_REQUEST", f"Invalid value for {key}: {first.path} {first.message}{more}",
                    [{"field": p.path, "message": p.message} for p in problems])


def assign(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set (or, for None, remove) the value at ``parts``, creating objects on the way."""
    target = data
    for depth, part in enumerate(parts[:-1]):
        child = target.get(part)
        if child is None:
            if value is None:
                return
            child = target[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ApiError("BAD_REQUEST", f"{where} is not an object, so {'.'.join(parts)} cannot be set "
                           f"(replace {where} as a whole)", [{"field": where, "message": "not an object"}])
        target = child
    if value is None:
        target.pop(parts[-1], None)
    else:
        target[parts[-1]] = value


class SettingsRoutes:
    """The settings endpoints over one :class:`SettingsStore`."""

    app = Klein()

    def __init__(self, store: SettingsStore, run_blocking: Callable[..., Deferred[Any]],
                 on_change: Callable[[str], None] = lambda scope: None) -> None:
        self.store = store
        self.run_blocking = run_blocking
        self.on_change = on_change

    # -- reading

    def _merged(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[SettingsFileError]]:
        scopes, problems = self.store.read_all()
        return merge_scopes(scopes), scopes, problems

    def _read(self, scope: str) -> dict[str, Any]:
        try:
            return self.store.read(scope)
        except SettingsFileError as exc:
            raise exc.api_error() from None

    @json_route(app, "GET", "/settings", query=ScopeQuery, response=dict[str, Any], tags=TAGS,
                errors=("BAD_REQUEST", "SETTINGS_INVALID"), summary="List all settings")
    async def list_settings(self, request: Any, query: ScopeQuery) -> Encoded:
        """
        Without ``scope``: the merged view (defaults < user < project < local). A settings file
        that does not parse is left out and reported in ``meta.errors`` (path, line, column).
        With ``scope``: that file's settings only (``{}`` when it does not exist; 409
        ``SETTINGS_INVALID`` when it does not parse).
        """
        if query.scope:  # an empty ?scope= is no scope, as for the writes
            return Encoded(dumps({"data": await self.run_blocking(self._read, scope_name(query.scope))}))
        merged, _scopes, problems = await self.run_blocking(self._merged)
        body: dict[str, Any] = {"data": merged}
        if problems:
            body["meta"] = {"errors": [p.to_json() for p in problems]}
        return Encoded(dumps(body))

    @json_route(app, "GET", "/settings/<key>", query=ScopeQuery, response=SettingValue, tags=TAGS,
                errors=("BAD_REQUEST", "NOT_FOUND", "SETTINGS_INVALID"), summary="Get a single setting value")
    async def get(self, request: Any, key: str, query: ScopeQuery) -> SettingValue:
        """One key (dotted paths reach into objects), from the merged view or from ``scope``."""
        parts = key_parts(key)
        if query.scope:
            scope = scope_name(query.scope)
            found, value = lookup(await self.run_blocking(self._read, scope), parts)
            if not found:
                raise ApiError("NOT_FOUND", f"The {scope} settings have no {key}")
            return SettingValue(key, value, scope)
        merged, scopes, _problems = await self.run_blocking(self._merged)
        found, value = lookup(merged, parts)
        if not found:
            raise ApiError("NOT_FOUND", f"No setting {key} (no settings file sets it and it has no default)")
        origin = next((s for s in reversed(SCOPES) if lookup(scopes.get(s, {}), parts)[0]), "default")
        return SettingValue(key, value, origin)

    # -- writing

    async def _update(self, scope: str, mutate: Callable[[dict[str, Any]], Any]) -> Any:
        outcome: list[Any] = []

        def change(data: dict[str, Any]) -> None:
            outcome.append(mutate(data))

        try:
            await self.run_blocking(self.store.update, scope, change)
        except SettingsFileError as exc:
            raise exc.api_error() from None
        self.on_change(scope)
        return outcome[0]

    @json_route(app, "PUT", "/settings/<key>", query=ScopeQuery, body=SetValue, response=SettingValue, tags=TAGS,
                errors=("BAD_REQUEST", "SETTINGS_INVALID"), summary="Set a setting value")
    async def put(self, request: Any, key: str, query: ScopeQuery, body: SetValue) -> SettingValue:
        """
        Write ``value`` under ``key`` in ``scope`` (default ``user``); ``null`` removes it. Known
        keys are type-checked (400 with each problem's path); unknown keys are stored as given.
        """
        parts = key_parts(key)
        scope = scope_name(query.scope)
        if body.value is not None:
            problems = check(parts, body.value)
            if problems:
                raise problems_error(key, problems)
        await self._update(scope, lambda data: assign(data, parts, body.value))
        return SettingValue(key, body.value, scope)

    def _edit(self, key: str, scope: str, values: list[Any], add: bool) -> Callable[[dict[str, Any]], ArrayEdit]:
        parts = key_parts(key)
        if parts == ["permissions"]:
            return self._edit_permissions(scope, values, add)
        if expects_array(parts) is False:
            raise ApiError("BAD_REQUEST", f"{key} is not an array setting; set it with PUT /api/v1/settings/{key}",
                           [{"field": "key", "message": "not an array"}])

        def mutate(data: dict[str, Any]) -> ArrayEdit:
            found, current = lookup(data, parts)
            if found and not isinstance(current, list):
                raise ApiError("BAD_REQUEST", f"{key} in the {scope} settings is not an array; replace it with "
                               f"PUT /api/v1/settings/{key}", [{"field": "key", "message": "not an array"}])
            items = list(current) if found else []
            changed = _apply(items, values, add)
            problems = check(parts, items)
            if problems:
                raise problems_error(key, problems)
            if changed:
                assign(data, parts, items)
            return ArrayEdit(key, items, scope, changed)

        return mutate

    def _edit_permissions(self, scope: str, values: list[Any], add: bool) -> Callable[[dict[str, Any]], ArrayEdit]:
        grouped: dict[str, list[str]] = {name: [] for name in RULE_LISTS}
        for i, value in enumerate(values):
            match = _PERMISSION_ITEM.fullmatch(value.strip()) if isinstance(value, str) else None
            if match is None or not is_rule(match.group(2).strip()):
                raise ApiError("BAD_REQUEST", f"values[{i}] must be \"Allow: <rule>\", \"Ask: <rule>\" or "
                               f"\"Deny: <rule>\" with a rule such as Read(**) or Bash(npm test:*); got {value!r}",
                               [{"field": f"values[{i}]", "message": "not a permission item"}])
            grouped[match.group(1).lower()].append(match.group(2).strip())

        def mutate(data: dict[str, Any]) -> ArrayEdit:
            permissions = data.get("permissions")
            if permissions is None:
                permissions = {}
            if not isinstance(permissions, dict):
                raise ApiError("BAD_REQUEST", f"permissions in the {scope} settings is not an object",
                               [{"field": "permissions", "message": "not an object"}])
            changed: list[str] = []
            for name, rules in grouped.items():
                if not rules:
                    continue
                current = permissions.get(name, [])
                if not isinstance(current, list):
                    raise ApiError("BAD_REQUEST", f"permissions.{name} in the {scope} settings is not an array",
                                   [{"field": f"permissions.{name}", "message": "not an array"}])
                items = list(current)
                changed += [f"{name.capitalize()}: {rule}" for rule in _apply(items, list(rules), add)]
                permissions[name] = items
            if changed:
                data["permissions"] = permissions
            return ArrayEdit("permissions", permissions, scope, changed)

        return mutate

    @json_route(app, "POST", "/settings/<key>/items", query=ScopeQuery, body=Values, response=ArrayEdit, tags=TAGS,
                errors=("BAD_REQUEST", "SETTINGS_INVALID"), summary="Append values to an array-type setting")
    async def items(self, request: Any, key: str, query: ScopeQuery, body: Values) -> ArrayEdit:
        """
        Append each value not already there (``scope`` default ``user``); a missing key becomes
        an array. 400 when the key holds something else, or a value does not fit a known key.
        """
        scope = scope_name(query.scope)
        result: ArrayEdit = await self._update(scope, self._edit(key, scope, body.values, add=True))
        return result

    @json_route(app, "POST", "/settings/<key>/remove", query=ScopeQuery, body=Values, response=ArrayEdit,
                tags=TAGS, errors=("BAD_REQUEST", "SETTINGS_INVALID"),
                summary="Remove values from an array-type setting")
    async def remove(self, request: Any, key: str, query: ScopeQuery, body: Values) -> ArrayEdit:
        """Remove every occurrence of each value (values not there are ignored; ``changed`` lists the removed)."""
        scope = scope_name(query.scope)
        result: ArrayEdit = await self._update(scope, self._edit(key, scope, body.values, add=False))
        return result


def _apply(items: list[Any], values: list[Any], add: bool) -> list[Any]:
    """Add the values missing from ``items`` (or remove those present) in place; the ones changed."""
    changed: list[Any] = []
    for value in values:
        if add and value not in items:
            items.append(value)
            changed.append(value)
        elif not add and value in items:
            while value in items:
                items.remove(value)
            changed.append(value)
    return changed
