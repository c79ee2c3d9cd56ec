# -*- test-case-name: tests.plugins.test_manager -*-
"""
The plugin manager: marketplaces (add, list, browse, update, remove) and plugins (install,
list, enable, disable, uninstall), over the files of :mod:`codebuddy.plugins.state` and the
``enabledPlugins`` setting.

Everything is fetched into a work folder first (clone, copy or download), checked, and only
then renamed into place, so a bad manifest or a failed clone never leaves half a marketplace or
half a plugin behind. Decisions (docs/plugins.md):

- a marketplace's key is the ``name`` given when adding it, else its manifest's ``name``; a
  second one with the same key is 409 ``ALREADY_EXISTS``;
- installing an installed plugin changes nothing and answers it with ``alreadyInstalled``;
- removing a marketplace uninstalls its plugins (as Claude Code does): files, records and
  ``enabledPlugins`` entries;
- relative plugin sources (``./path``) resolve inside the marketplace folder (for a marketplace
  added from a ``marketplace.json`` path: beside its manifest folder); a marketplace downloaded
  from a URL has no folder, so its plugins need github/git/url sources.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from codebuddy.fs.paths import Resolver
from codebuddy.plugins.manifest import (
    MANIFEST_DIRS,
    MARKETPLACE_FILE,
    PLUGIN_FILE,
    Checker,
    Problem,
    ValidationResult,
    check_components,
    check_entry,
    features_of,
    find_manifest,
    is_kebab,
    json_type,
    local_source_dir,
    manifest_root,
    read_json_file,
    validate_document,
    validate_marketplace,
    validate_path,
    validate_plugin_file,
)
from codebuddy.plugins.models import (
    InstalledPlugin,
    MarketplaceInfo,
    MarketplacePlugin,
    MarketplaceRemoved,
    PluginUninstalled,
)
from codebuddy.plugins.sources import (
    Git,
    ManifestFetcher,
    Source,
    parse_marketplace_source,
    source_from_object,
)
from codebuddy.plugins.state import PluginState, inside, iso, iso_to_ms, remove_tree
from codebuddy.settings.store import SettingsFileError
from codebuddy.web.errors import ApiError
from codebuddy.web.json import converter

__all__ = ["SCOPES", "PluginManager", "Problem", "SettingsAccess", "parse_plugin_id"]

RunBlocking = Callable[..., Deferred[Any]]
SCOPES = ("user", "project", "local")
SCOPE_ALIASES = {"project-local": "local", "projectLocal": "local"}
PRECEDENCE = ("local", "project", "user")  # which settings file wins for enabledPlugins
ENABLED_KEY = "enabledPlugins"
_VERSION_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_WHERE = ", ".join(d + "/" for d in MANIFEST_DIRS)


class SettingsAccess(Protocol):
    """
    The settings files (``codebuddy.settings.store.SettingsStore``): ``read`` one scope's
    dict, ``update`` one scope under its lock with ``mutate`` changing the dict in place.
    Scopes: user, project, local. Both are blocking.
    """

    def read(self, scope: str) -> dict[str, Any]: ...

    def update(self, scope: str, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]: ...


def _problems(checker: Checker) -> list[dict[str, Any]]:
    return [converter.unstructure(p) for p in checker.errors]


def _invalid(what: str, checker: Checker) -> ApiError:
    first = checker.errors[0]
    more = f" (and {len(checker.errors) - 1} more problems)" if len(checker.errors) > 1 else ""
    where = f"{first.file}: " if first.file else ""
    return ApiError("MANIFEST_INVALID", f"{what} is invalid: {where}{first.path}: {first.message}{more}",
                    _problems(checker))


def parse_plugin_id(text: str, field: str = "plugin") -> tuple[str, str]:
    """``name@marketplace`` -> (name, marketplace); 400 naming the field otherwise."""
    name, sep, market = text.strip().rpartition("@")
    if not sep or not is_kebab(name) or not is_kebab(market):
        message = f'{field} must be "plugin-name@marketplace-name" (kebab-case names), not {text!r}'
        raise ApiError("BAD_REQUEST", message, [{"field": field, "message": message}])
    return name, market


def _str(data: dict[str, Any] | None, key: str) -> str | None:
    value = data.get(key) if data else None
    return value if isinstance(value, str) else None


def _strings(data: dict[str, Any] | None, key: str) -> list[str]:
    value = data.get(key) if data else None
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _safe_version(version: str) -> str:
    cleaned = _VERSION_UNSAFE.sub("-", version)[:64]
    return cleaned if cleaned.strip(".") else "unknown"


class PluginManager:
    """Marketplaces and plugins under ``<home>/plugins`` (every method answers or raises ``ApiError``)."""

    log = Logger()

    def __init__(self, home: Path, settings: SettingsAccess, run_blocking: RunBlocking, fetcher: ManifestFetcher,
                 resolver: Resolver, clock: IReactorTime, git: Git | None = None) -> None:
        self.state = PluginState(home)
        self.settings = settings
        self.run_blocking = run_blocking
        self.fetcher = fetcher
        self.resolver = resolver
        self.clock = clock
        self.git = git or Git()

    # ------------------------------------------------------------------ settings

    def _enabled(self, plugin_id: str) -> bool:
        for scope in PRECEDENCE:
            try:
                data = self.settings.read(scope)
            except Exception:  # noqa: BLE001 (an unreadable settings file enables nothing)
                continue
            value = data.get(ENABLED_KEY) if isinstance(data, dict) else None
            if isinstance(value, dict) and plugin_id in value:
                return value[plugin_id] is True
        return False

    def _set_enabled(self, scope: str, plugin_id: str, enabled: bool | None) -> None:
        """Set ``enabledPlugins[plugin_id]`` in a scope; ``None`` removes the entry."""

        def mutate(data: dict[str, Any]) -> None:
            value = data.get(ENABLED_KEY)
            plugins = dict(value) if isinstance(value, dict) else {}
            if enabled is None:
                if plugin_id not in plugins:
                    return
                plugins.pop(plugin_id)
            else:
                plugins[plugin_id] = enabled
            data[ENABLED_KEY] = plugins

        try:
            self.settings.update(scope, mutate)
        except SettingsFileError as exc:
            raise exc.api_error() from None

    def _scopes_with(self, plugin_id: str) -> list[str]:
        found = []
        for scope in SCOPES:
            try:
                value = self.settings.read(scope).get(ENABLED_KEY)
            except Exception:  # noqa: BLE001
                continue
            if isinstance(value, dict) and plugin_id in value:
                found.append(scope)
        return found

    # ------------------------------------------------------------------ marketplace files

    def _market_root(self, name: str, record: dict[str, Any]) -> Path:
        location = record.get("installLocation")
        return Path(location) if isinstance(location, str) and location else self.state.marketplaces_dir / name

    def _read_market(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        """A known marketplace's manifest (as it was fetched)."""
        root = self._market_root(name, record)
        manifest = find_manifest(root, MARKETPLACE_FILE)
        if manifest is None:
            raise ApiError("MANIFEST_INVALID", f'marketplace "{name}" has no {MARKETPLACE_FILE} in {root} '
                                               f"({_WHERE}): update it, or remove it and add it again")
        try:
            data = read_json_file(manifest)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ApiError("MANIFEST_INVALID", f'marketplace "{name}": {manifest} cannot be read: {reason}') from None
        if not isinstance(data, dict):
            raise ApiError("MANIFEST_INVALID", f'marketplace "{name}": {manifest} is not a JSON object')
        return data

    def _record(self, name: str) -> dict[str, Any]:
        record = self.state.read_known().get(name)
        if record is None:
            known = sorted(self.state.read_known())
            hint = f" (known: {', '.join(known)})" if known else " (none added yet)"
            raise ApiError("MARKETPLACE_NOT_FOUND", f'no marketplace "{name}": add it with POST '
                                                    f"/api/v1/plugins/marketplaces{hint}", {"marketplace": name})
        return record

    @staticmethod
    def _source_of(record: dict[str, Any]) -> Source | None:
        raw = record.get("source")
        if not isinstance(raw, dict):
            return None
        kind = raw.get("source")
        key = {"github": "repo", "git": "url", "url": "url", "directory": "path", "file": "path"}.get(str(kind))
        location = raw.get(key) if key else None
        if not isinstance(location, str):
            return None
        ref = raw.get("ref")
        return Source(str(kind), location, ref if isinstance(ref, str) else None)

    def _info(self, name: str, record: dict[str, Any]) -> MarketplaceInfo:
        source = self._source_of(record)
        raw_source = record.get("source")
        error = None
        data: dict[str, Any] = {}
        try:
            data = self._read_market(name, record)
        except ApiError as exc:
            error = exc.message
        plugins = data.get("plugins")
        metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else None
        return MarketplaceInfo(
            name=name,
            type=source.kind if source else "unknown",
            source=raw_source if isinstance(raw_source, dict) else {},
            location=source.display() if source else "",
            install_location=str(self._market_root(name, record)),
            last_updated=iso_to_ms(record.get("lastUpdated")),
            description=_str(data, "description") or _str(metadata, "description"),
            owner=data.get("owner"),
            version=_str(data, "version") or _str(metadata, "version"),
            plugin_count=len(plugins) if isinstance(plugins, list) else 0,
            error=error,
        )

    def _copy_ignore(self) -> Callable[[str, list[str]], set[str]]:
        """``.git`` folders, and this state's own folder when a copied folder contains the home."""
        own = os.path.realpath(self.state.root)

        def ignore(folder: str, names: list[str]) -> set[str]:
            skipped = {".git"} & set(names)
            for name in names:
                if os.path.realpath(os.path.join(folder, name)) == own:
                    skipped.add(name)
            return skipped

        return ignore

    def _stage_marketplace(self, source: Source, staged: Path, downloaded: bytes | None) -> dict[str, Any]:
        """Fetch ``source`` into ``staged`` and return its checked manifest."""
        if source.kind in ("url", "file"):
            folder = staged / MANIFEST_DIRS[0]
            folder.mkdir(parents=True)
            if downloaded is None:
                try:
                    downloaded = Path(source.location).read_bytes()
                except OSError as exc:
                    raise ApiError("SOURCE_UNREACHABLE", f"cannot read {source.location}: {exc.strerror}",
                                   {"source": source.location}) from None
            (folder / MARKETPLACE_FILE).write_bytes(downloaded)
        elif source.kind == "directory":
            try:
                shutil.copytree(source.location, staged, symlinks=True, ignore=self._copy_ignore())
            except (OSError, shutil.Error) as exc:
                raise ApiError("SOURCE_UNREACHABLE", f"cannot copy {source.location}: {exc}",
                               {"source": source.location}) from None
        else:
            self.git.clone(source, staged)
        manifest = find_manifest(staged, MARKETPLACE_FILE)
        if manifest is None:
            raise ApiError("MANIFEST_INVALID", f"{source.display()} is not a marketplace: no {MARKETPLACE_FILE} in "
                                               f"{_WHERE}", {"source": source.display()})
        try:
            data = read_json_file(manifest)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            hint = " (is the URL a marketplace.json, or a web page?)" if source.kind == "url" else ""
            raise ApiError("MANIFEST_INVALID", f"the marketplace manifest of {source.display()} is {reason}{hint}",
                           {"source": source.display()}) from None
        checker = validate_marketplace(data, file=MARKETPLACE_FILE)
        if checker.errors:
            raise _invalid(f"the marketplace manifest of {source.display()}", checker)
        assert isinstance(data, dict)
        return data

    # ------------------------------------------------------------------ marketplaces

    async def list_marketplaces(self) -> list[MarketplaceInfo]:
        return await self.run_blocking(self._list_marketplaces)  # type: ignore[no-any-return]

    def _list_marketplaces(self) -> list[MarketplaceInfo]:
        return [self._info(name, record) for name, record in sorted(self.state.read_known().items())]

    async def add_marketplace(self, source: Any, name: str | None) -> MarketplaceInfo:
        """Add a marketplace; 409 when its key exists, 400/502 when the source is unusable."""
        if name is not None and not is_kebab(name):
            message = f'name "{name}" must be kebab-case (lowercase letters, digits and single hyphens)'
            raise ApiError("BAD_REQUEST", message, [{"field": "name", "message": message}])
        parsed: Source = await self.run_blocking(self._parse_source, source)
        if name is not None:
            await self.run_blocking(self._refuse_existing, name)
        downloaded = await self.fetcher.fetch(parsed.location) if parsed.kind == "url" else None
        now = self.clock.seconds()
        return await self.run_blocking(self._add, parsed, name, downloaded, now)  # type: ignore[no-any-return]

    def _parse_source(self, value: Any) -> Source:
        if isinstance(value, str):
            return parse_marketplace_source(value, self.resolver)
        if isinstance(value, dict):
            return source_from_object(value, self.resolver)
        message = f"source must be a string or a source object, not {json_type(value)}"
        raise ApiError("BAD_REQUEST", message, [{"field": "source", "message": message}])

    def _refuse_existing(self, name: str) -> None:
        record = self.state.read_known().get(name)
        if record is not None:
            source = self._source_of(record)
            raise ApiError("ALREADY_EXISTS", f'a marketplace named "{name}" already exists (from '
                                             f"{source.display() if source else '?'}): remove it first, or refresh "
                                             "it with POST /api/v1/plugins/marketplaces/update", {"marketplace": name})

    def _add(self, source: Source, name: str | None, downloaded: bytes | None, now: float) -> MarketplaceInfo:
        staged = self.state.new_staging()
        try:
            data = self._stage_marketplace(source, staged, downloaded)
            key = name or str(data["name"])
            with self.state.locked():
                self._refuse_existing(key)
                final = self.state.marketplaces_dir / key
                self.state.swap_in(staged, final)
                known = self.state.read_known()
                known[key] = {"source": source.to_json(), "installLocation": str(final), "lastUpdated": iso(now)}
                self.state.write_known(known)
            self.log.info("Added plugin marketplace {name} from {source}", name=key, source=source.display())
            return self._info(key, known[key])
        finally:
            remove_tree(staged)

    async def update_marketplace(self, name: str) -> MarketplaceInfo:
        """Fetch a marketplace again from its source and replace its copy."""
        record = await self.run_blocking(self._record, name)
        source = self._source_of(record)
        if source is None:
            raise ApiError("MANIFEST_INVALID", f'marketplace "{name}" has no usable source in '
                                               f"{self.state.known_file}: remove it and add it again")
        downloaded = await self.fetcher.fetch(source.location) if source.kind == "url" else None
        now = self.clock.seconds()
        return await self.run_blocking(self._update, name, source, downloaded, now)  # type: ignore[no-any-return]

    def _update(self, name: str, source: Source, downloaded: bytes | None, now: float) -> MarketplaceInfo:
        if source.kind in ("directory", "file") and not os.path.exists(source.location):
            raise ApiError("SOURCE_UNREACHABLE", f'marketplace "{name}": its source {source.location} no longer '
                                                 "exists", {"source": source.location})
        staged = self.state.new_staging()
        try:
            self._stage_marketplace(source, staged, downloaded)
            with self.state.locked():
                known = self.state.read_known()
                record = known.get(name)
                if record is None:
                    raise ApiError("MARKETPLACE_NOT_FOUND", f'marketplace "{name}" was removed meanwhile')
                final = self.state.marketplaces_dir / name
                self.state.swap_in(staged, final)
                record.update(installLocation=str(final), lastUpdated=iso(now))
                self.state.write_known(known)
            return self._info(name, record)
        finally:
            remove_tree(staged)

    async def remove_marketplace(self, name: str) -> MarketplaceRemoved:
        return await self.run_blocking(self._remove_marketplace, name)  # type: ignore[no-any-return]

    def _remove_marketplace(self, name: str) -> MarketplaceRemoved:
        with self.state.locked():
            known = self.state.read_known()
            record = known.pop(name, None)
            if record is None:
                self._record(name)  # raises MARKETPLACE_NOT_FOUND
            installed = self.state.read_installed()
            suffix = f"@{name}"
            removed = {pid: entries for pid, entries in installed.items() if pid.endswith(suffix)}
            for pid in removed:
                del installed[pid]
            if removed:
                self.state.write_installed(installed)
            self.state.write_known(known)
            for entries in removed.values():
                for entry in entries:
                    path = entry.get("installPath")
                    if isinstance(path, str) and inside(Path(path), self.state.cache_dir):
                        self.state.remove_owned(Path(path))
            self.state.remove_owned(self.state.cache_dir / name)
            self.state.remove_owned(self.state.marketplaces_dir / name)
        for pid, entries in removed.items():
            for scope in {str(e.get("scope")) for e in entries if e.get("scope") in SCOPES} or {"user"}:
                self._set_enabled(scope, pid, None)
        self.log.info("Removed plugin marketplace {name} and its plugins {plugins}", name=name,
                      plugins=sorted(removed))
        return MarketplaceRemoved(name, True, sorted(removed))

    async def browse(self, name: str) -> list[MarketplacePlugin]:
        return await self.run_blocking(self._browse, name)  # type: ignore[no-any-return]

    def _browse(self, name: str) -> list[MarketplacePlugin]:
        record = self._record(name)
        data = self._read_market(name, record)
        root = self._relative_root(name, record)
        installed = self.state.read_installed()
        out = []
        plugins = data.get("plugins")
        for entry in plugins if isinstance(plugins, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            plugin_id = f"{entry['name']}@{name}"
            plugin_manifest, plugin_dir = self._local_plugin(root, data, entry)
            entries = installed.get(plugin_id)
            installed_version = _str(entries[0], "version") if entries else None
            features = features_of(entry, None)
            for kind in features_of(plugin_manifest, plugin_dir):
                if kind not in features:
                    features.append(kind)
            out.append(MarketplacePlugin(
                id=plugin_id,
                name=entry["name"],
                version=_str(entry, "version") or _str(plugin_manifest, "version"),
                description=_str(entry, "description") or _str(plugin_manifest, "description"),
                marketplace_name=name,
                status="installed" if entries else None,
                installed=bool(entries),
                author=entry.get("author", (plugin_manifest or {}).get("author")),
                license=_str(entry, "license") or _str(plugin_manifest, "license"),
                homepage=_str(entry, "homepage") or _str(plugin_manifest, "homepage"),
                repository=_str(entry, "repository") or _str(plugin_manifest, "repository"),
                keywords=_strings(entry, "keywords") or _strings(entry, "tags") or _strings(plugin_manifest,
                                                                                            "keywords"),
                category=_str(entry, "category"),
                features=features,
                source=entry.get("source"),
                installed_version=installed_version,
            ))
        return out

    def _relative_root(self, name: str, record: dict[str, Any]) -> Path | None:
        """Where ``./path`` sources of a marketplace resolve (None: a downloaded manifest has no folder)."""
        source = self._source_of(record)
        if source is None or source.kind == "url":
            return None
        if source.kind == "file":
            return manifest_root(Path(source.location))
        return self._market_root(name, record)

    @staticmethod
    def _local_plugin(root: Path | None, market: dict[str, Any],
                      entry: dict[str, Any]) -> tuple[dict[str, Any] | None, Path | None]:
        """The plugin.json and folder of a ``./path`` entry, when they are on disk."""
        source = entry.get("source")
        if root is None or not isinstance(source, str) or ".." in Path(source).parts:
            return None, None
        folder = local_source_dir(root, market, source)
        if not folder.is_dir():
            return None, None
        manifest = find_manifest(folder, PLUGIN_FILE)
        if manifest is None:
            return None, folder
        try:
            data = read_json_file(manifest)
        except (OSError, ValueError):
            return None, folder
        return (data if isinstance(data, dict) else None), folder

    # ------------------------------------------------------------------ plugins

    def _plugin_info(self, plugin_id: str, entry: dict[str, Any], known: dict[str, dict[str, Any]],
                     already: bool = False) -> InstalledPlugin:
        name, _, market = plugin_id.rpartition("@")
        path = Path(str(entry.get("installPath") or ""))
        manifest = None
        found = find_manifest(path, PLUGIN_FILE) if path.is_dir() else None
        if found is not None:
            try:
                loaded = read_json_file(found)
                manifest = loaded if isinstance(loaded, dict) else None
            except (OSError, ValueError):
                manifest = None
        market_entry: dict[str, Any] | None = None
        record = known.get(market)
        if record is not None:
            try:
                plugins = self._read_market(market, record).get("plugins")
            except ApiError:
                plugins = None
            for candidate in plugins if isinstance(plugins, list) else []:
                if isinstance(candidate, dict) and candidate.get("name") == name:
                    market_entry = candidate
                    break
        enabled = self._enabled(plugin_id)
        scope = entry.get("scope") if entry.get("scope") in SCOPES else "user"
        features = features_of(manifest, path if path.is_dir() else None)
        for kind in features_of(market_entry, None):
            if kind not in features:
                features.append(kind)

        def pick(key: str) -> str | None:
            return _str(manifest, key) or _str(market_entry, key)

        return InstalledPlugin(
            id=plugin_id,
            name=name,
            marketplace=market,
            version=_str(entry, "version") or "unknown",
            enabled=enabled,
            status="enabled" if enabled else "disabled",
            install_scope=str(scope),
            install_path=str(path),
            installed_at=iso_to_ms(entry.get("installedAt")),
            last_updated=iso_to_ms(entry.get("lastUpdated")),
            description=pick("description"),
            author=(manifest or {}).get("author", (market_entry or {}).get("author")),
            homepage=pick("homepage"),
            repository=pick("repository"),
            license=pick("license"),
            keywords=_strings(manifest, "keywords") or _strings(market_entry, "keywords"),
            category=_str(market_entry, "category"),
            features=features,
            source=(market_entry or {}).get("source"),
            can_remove=True,
            can_switchoff=True,
            can_edit=False,
            git_commit_sha=_str(entry, "gitCommitSha"),
            already_installed=already,
        )

    async def list_plugins(self) -> list[InstalledPlugin]:
        return await self.run_blocking(self._list_plugins)  # type: ignore[no-any-return]

    def _list_plugins(self) -> list[InstalledPlugin]:
        known = self.state.read_known()
        return [self._plugin_info(pid, entries[0], known)
                for pid, entries in sorted(self.state.read_installed().items())]

    def _installed_entry(self, plugin_id: str) -> dict[str, Any]:
        entries = self.state.read_installed().get(plugin_id)
        if not entries:
            raise ApiError("PLUGIN_NOT_FOUND", f'plugin "{plugin_id}" is not installed: install it with POST '
                                               "/api/v1/plugins", {"plugin": plugin_id})
        return entries[0]

    async def install(self, plugin_id: str, scope: str = "user") -> InstalledPlugin:
        """Install (and enable) a plugin; an installed one is answered as it is (``alreadyInstalled``)."""
        name, market = parse_plugin_id(plugin_id)
        scope = SCOPE_ALIASES.get(scope, scope)
        if scope not in SCOPES:
            message = f"scope must be one of {', '.join(SCOPES)}, not {scope!r}"
            raise ApiError("BAD_REQUEST", message, [{"field": "options.scope", "message": message}])
        now = self.clock.seconds()
        return await self.run_blocking(self._install, name, market, scope, now)  # type: ignore[no-any-return]

    def _install(self, name: str, market: str, scope: str, now: float) -> InstalledPlugin:
        plugin_id = f"{name}@{market}"
        known = self.state.read_known()
        record = self._record(market)
        data = self._read_market(market, record)
        plugins = data.get("plugins")
        index, entry = next(((i, e) for i, e in enumerate(plugins if isinstance(plugins, list) else [])
                             if isinstance(e, dict) and e.get("name") == name), (-1, None))
        if entry is None:
            names = [e["name"] for e in plugins if isinstance(e, dict) and isinstance(e.get("name"), str)] \
                if isinstance(plugins, list) else []
            listed = f"it has {', '.join(names)}" if names else "it has no plugins"
            raise ApiError("PLUGIN_NOT_FOUND", f'marketplace "{market}" has no plugin "{name}" ({listed})',
                           {"plugin": plugin_id})
        current = self.state.read_installed().get(plugin_id)
        if current and Path(str(current[0].get("installPath") or "")).is_dir():
            return self._plugin_info(plugin_id, current[0], known, already=True)
        checker = Checker(MARKETPLACE_FILE)
        check_entry(checker, entry, f"plugins[{index}]", None, data)
        if checker.errors:
            raise _invalid(f'the entry of "{plugin_id}"', checker)
        staged = self.state.new_staging()
        final: Path | None = None
        try:
            sha, is_local = self._fetch_plugin(market, record, data, entry, staged)
            manifest = self._check_plugin(plugin_id, entry, staged)
            version = _str(manifest, "version") or _str(entry, "version") or (sha[:12] if sha else "unknown")
            with self.state.locked():
                if market not in self.state.read_known():
                    raise ApiError("MARKETPLACE_NOT_FOUND", f'marketplace "{market}" was removed meanwhile',
                                   {"marketplace": market})
                installed = self.state.read_installed()
                current = installed.get(plugin_id)
                if current and Path(str(current[0].get("installPath") or "")).is_dir():
                    return self._plugin_info(plugin_id, current[0], known, already=True)
                final = self.state.cache_dir / market / name / _safe_version(version)
                self.state.swap_in(staged, final)
                installation: dict[str, Any] = {"scope": scope, "installPath": str(final), "version": version,
                                                "installedAt": iso(now), "lastUpdated": iso(now), "isLocal": is_local}
                if sha:
                    installation["gitCommitSha"] = sha
                if scope != "user":
                    installation["projectPath"] = self.resolver.workspace
                installed[plugin_id] = [installation]
                self.state.write_installed(installed)
            try:
                self._set_enabled(scope, plugin_id, True)
            except BaseException:
                self._forget(plugin_id, final)
                raise
            self.log.info("Installed plugin {plugin} {version} ({scope})", plugin=plugin_id, version=version,
                          scope=scope)
            return self._plugin_info(plugin_id, installation, known)
        finally:
            remove_tree(staged)

    def _forget(self, plugin_id: str, final: Path) -> None:
        """Undo an install whose settings update failed."""
        with self.state.locked():
            installed = self.state.read_installed()
            if installed.pop(plugin_id, None) is not None:
                self.state.write_installed(installed)
            self.state.remove_owned(final)
            self.state.prune_empty(final.parent, self.state.cache_dir)

    def _fetch_plugin(self, market: str, record: dict[str, Any], data: dict[str, Any], entry: dict[str, Any],
                      staged: Path) -> tuple[str | None, bool]:
        """Copy or clone the plugin's files into ``staged``; (commit, whether it came from the marketplace)."""
        source = entry["source"]
        plugin_id = f"{entry['name']}@{market}"
        if isinstance(source, str):
            root = self._relative_root(market, record)
            if root is None:
                raise ApiError("MANIFEST_INVALID", f'plugin "{plugin_id}" has the relative source "{source}", but '
                                                   f'marketplace "{market}" was downloaded from a URL and has no '
                                                   "folder: its plugins need github, git or url sources",
                               {"plugin": plugin_id})
            folder = local_source_dir(root, data, source)
            if not folder.is_dir():
                raise ApiError("MANIFEST_INVALID", f'plugin "{plugin_id}": its source "{source}" does not exist '
                                                   f"in the marketplace ({folder})", {"plugin": plugin_id})
            if not inside(folder, root):
                raise ApiError("MANIFEST_INVALID", f'plugin "{plugin_id}": its source "{source}" leads outside the '
                                                   "marketplace (a symbolic link)", {"plugin": plugin_id})
            try:
                shutil.copytree(folder, staged, symlinks=True, ignore=self._copy_ignore())
            except (OSError, shutil.Error) as exc:
                raise ApiError("SOURCE_UNREACHABLE", f'plugin "{plugin_id}": cannot copy {folder}: {exc}') from None
            source_info = self._source_of(record)
            sha = self.git.head(root) if source_info is not None and source_info.is_git else None
            return sha, True
        remote = source_from_object(source, None, "source")
        if remote.kind == "url":
            remote = Source("git", remote.location, remote.ref, remote.path)
        clone = self.state.new_staging()
        try:
            self.git.clone(remote, clone)
            sha = self.git.head(clone)
            folder = clone
            if remote.path:
                folder = Path(os.path.normpath(clone / remote.path))
                if not folder.is_dir() or not inside(folder, clone):
                    raise ApiError("MANIFEST_INVALID", f'plugin "{plugin_id}": folder "{remote.path}" does not exist '
                                                       f"in {remote.display()}", {"plugin": plugin_id})
            remove_tree(folder / ".git")
            os.rename(folder, staged)
        finally:
            remove_tree(clone)
        return sha, False

    def _check_plugin(self, plugin_id: str, entry: dict[str, Any], folder: Path) -> dict[str, Any] | None:
        """Validate the fetched files (plugin.json, component paths); 400 ``MANIFEST_INVALID`` listing problems."""
        manifest_path = find_manifest(folder, PLUGIN_FILE)
        checker = Checker()
        manifest: dict[str, Any] | None = None
        if manifest_path is not None:
            shown = str(manifest_path.relative_to(folder))
            checker = validate_plugin_file(manifest_path, file=shown)
            if not checker.errors:
                loaded = read_json_file(manifest_path)
                manifest = loaded if isinstance(loaded, dict) else None
        entry_checker = Checker(MARKETPLACE_FILE)
        check_components(entry_checker, entry, "", folder)
        checker.extend(entry_checker)
        if checker.errors:
            raise _invalid(f'plugin "{plugin_id}"', checker)
        return manifest

    async def set_enabled(self, plugin_id: str, enabled: bool) -> InstalledPlugin:
        parse_plugin_id(plugin_id)
        return await self.run_blocking(self._switch, plugin_id, enabled)  # type: ignore[no-any-return]

    def _switch(self, plugin_id: str, enabled: bool) -> InstalledPlugin:
        entry = self._installed_entry(plugin_id)
        scope = entry.get("scope") if entry.get("scope") in SCOPES else "user"
        self._set_enabled(str(scope), plugin_id, enabled)
        return self._plugin_info(plugin_id, entry, self.state.read_known())

    async def uninstall(self, plugin_id: str) -> PluginUninstalled:
        parse_plugin_id(plugin_id)
        return await self.run_blocking(self._uninstall, plugin_id)  # type: ignore[no-any-return]

    def _uninstall(self, plugin_id: str) -> PluginUninstalled:
        name, _, market = plugin_id.rpartition("@")
        with self.state.locked():
            installed = self.state.read_installed()
            entries = installed.pop(plugin_id, None)
            removed_files = False
            if entries is not None:
                self.state.write_installed(installed)
                for entry in entries:
                    path = entry.get("installPath")
                    if isinstance(path, str) and inside(Path(path), self.state.cache_dir):
                        removed_files = removed_files or os.path.lexists(path)
                        self.state.remove_owned(Path(path))
                self.state.prune_empty(self.state.cache_dir / market / name, self.state.cache_dir)
        scopes = {str(e.get("scope")) for e in entries or [] if e.get("scope") in SCOPES}
        scopes.update(self._scopes_with(plugin_id))
        if entries is None and not scopes:
            raise ApiError("PLUGIN_NOT_FOUND", f'plugin "{plugin_id}" is not installed', {"plugin": plugin_id})
        for scope in sorted(scopes):
            self._set_enabled(scope, plugin_id, None)
        self.log.info("Uninstalled plugin {plugin}", plugin=plugin_id)
        return PluginUninstalled(plugin_id, True, removed_files)

    # ------------------------------------------------------------------ validation

    async def validate(self, path: str | None, manifest: Any, kind: str | None) -> ValidationResult:
        if kind is not None and kind not in ("marketplace", "plugin"):
            message = f'type must be "marketplace" or "plugin", not {kind!r}'
            raise ApiError("BAD_REQUEST", message, [{"field": "type", "message": message}])
        if (path is None) == (manifest is None):
            message = 'give either "path" (a manifest file or a folder holding one) or "manifest" (its JSON)'
            raise ApiError("BAD_REQUEST", message, [{"field": "path" if path is None else "manifest",
                                                      "message": message}])
        if manifest is not None:
            return validate_document(manifest, kind)
        resolved = self.resolver.resolve(path, "path")
        return await self.run_blocking(self._validate_path, resolved, kind)  # type: ignore[no-any-return]

    @staticmethod
    def _validate_path(path: str, kind: str | None) -> ValidationResult:
        try:
            return validate_path(Path(path), kind)
        except FileNotFoundError:
            raise ApiError("NOT_FOUND", f"No such file or directory: {path}", {"path": path}) from None

