# -*- test-case-name: tests.plugins.test_validate -*-
"""
Marketplace and plugin manifests: where they live, how they are read, and every rule they are
checked against (Claude Code's formats; CodeBuddy looks in more folders).

A marketplace is a folder with ``marketplace.json`` and a plugin a folder with ``plugin.json``,
each inside the first of ``.codebuddy-plugin/``, ``.workbuddy-plugin/``, ``.claude-plugin/``
that has the file. Validation never stops at the first problem: it returns each one with the
JSON path it concerns (``plugins[1].source``, ``owner.name``; ``root`` for the document) and a
message that says what to write instead. Errors make a manifest unusable; warnings do not.
With a folder on disk, component paths (``commands``, ``hooks``...) and relative plugin sources
are also checked to exist. No request objects here; reading files is blocking (call it through
``run_blocking``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import attrs

from codebuddy.web.json import json_type, omit_if_default

MANIFEST_DIRS = (".codebuddy-plugin", ".workbuddy-plugin", ".claude-plugin")
MARKETPLACE_FILE = "marketplace.json"
PLUGIN_FILE = "plugin.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
KEBAB_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
GITHUB_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
GIT_URL_RE = re.compile(r"^(?:(?:https?|ssh|git|file)://\S+|[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+:\S+)$")
SEMVER_RE = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?$")
SOURCE_TYPES = ("github", "git", "url")
MANIFEST_TYPES = ("marketplace", "plugin")

# Component kinds: paths to files or folders (one or a list), or configuration (a path to a
# JSON file or an inline object). DEFAULT_LOCATIONS is where a plugin has them by convention.
PATH_FIELDS = ("commands", "agents", "skills", "outputStyles")
CONFIG_FIELDS = ("hooks", "mcpServers", "lspServers")
COMPONENT_FIELDS = ("commands", "agents", "skills", "hooks", "mcpServers", "outputStyles", "lspServers")
DEFAULT_LOCATIONS = {
    "commands": "commands",
    "agents": "agents",
    "skills": "skills",
    "hooks": "hooks/hooks.json",
    "mcpServers": ".mcp.json",
    "outputStyles": "output-styles",
    "lspServers": ".lsp.json",
}
METADATA_STRINGS = ("version", "description", "homepage", "repository", "license")
MARKETPLACE_KEYS = {"$schema", "name", "owner", "plugins", "description", "version", "metadata"}
ENTRY_KEYS = {"name", "source", "description", "version", "author", "homepage", "repository", "license",
              "keywords", "category", "tags", "strict", *COMPONENT_FIELDS}
PLUGIN_KEYS = {"$schema", "name", "version", "description", "author", "homepage", "repository", "license",
               "keywords", "userConfig", "channels", *COMPONENT_FIELDS}

_SOURCE_HINT = ('"./path" (a folder inside the marketplace) or a source object such as '
                '{"source": "github", "repo": "owner/repo"}, {"source": "git", "url": "https://host/repo.git"} '
                'or {"source": "url", "url": "https://host/repo.git"}')


@attrs.frozen
class Problem:
    """One thing wrong (an error) or worth fixing (a warning) in a manifest."""

    path: str = attrs.field(metadata={"doc": "JSON path in the manifest (plugins[1].source); root for the document"})
    message: str
    file: str | None = attrs.field(default=None, metadata={
        **omit_if_default(), "doc": "The manifest file, when not the one validated (a plugin of a marketplace)"})


@attrs.frozen
class ValidationResult:
    """Every error and warning of one manifest; ``valid`` when there is no error."""

    valid: bool
    type: str = attrs.field(metadata={"doc": "marketplace or plugin"})
    errors: list[Problem]
    warnings: list[Problem]
    path: str | None = attrs.field(default=None, metadata={"doc": "The manifest file validated (null for inline)"})


class Checker:
    """Collects problems."""

    def __init__(self, file: str | None = None) -> None:
        self.file = file
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(Problem(path or "root", message, self.file))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(Problem(path or "root", message, self.file))

    def extend(self, other: Checker) -> None:
        self.errors.extend(other.errors)
        self.warnings.extend(other.warnings)

    def result(self, kind: str, path: str | None = None) -> ValidationResult:
        return ValidationResult(not self.errors, kind, list(self.errors), list(self.warnings), path)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def is_kebab(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 128 and KEBAB_RE.match(value) is not None


# --------------------------------------------------------------------------- files


def find_manifest(root: Path, filename: str) -> Path | None:
    """``root/<first manifest folder holding filename>/filename``, or None."""
    for folder in MANIFEST_DIRS:
        candidate = root / folder / filename
        if candidate.is_file():
            return candidate
    return None


def manifest_root(manifest: Path) -> Path:
    """The folder a manifest describes: the parent of its manifest folder (or its own folder)."""
    parent = manifest.parent
    return parent.parent if parent.name in MANIFEST_DIRS else parent


def read_json_file(path: Path) -> Any:
    """Parse a manifest file; ``ValueError`` with a readable reason when it is not usable JSON."""
    with open(path, "rb") as handle:
        raw = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ValueError(f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def guess_type(data: Any) -> str:
    """``marketplace`` for a document with ``plugins`` or ``owner``, else ``plugin``."""
    return "marketplace" if isinstance(data, dict) and ("plugins" in data or "owner" in data) else "plugin"


# --------------------------------------------------------------------------- shared rules


def _check_name(c: Checker, data: dict[str, Any], path: str, example: str) -> str | None:
    where = _join(path, "name")
    if "name" not in data:
        c.error(where, f'name is required: a kebab-case identifier such as "{example}"')
        return None
    name = data["name"]
    if not isinstance(name, str):
        c.error(where, f"name must be a string, not {json_type(name)}")
        return None
    if not is_kebab(name):
        c.error(where, f'name "{name}" must be kebab-case (lowercase letters, digits and single hyphens, '
                       f'e.g. "{example}")')
        return None
    return name


def _check_strings(c: Checker, data: dict[str, Any], path: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in data and not isinstance(data[key], str):
            c.error(_join(path, key), f"{key} must be a string, not {json_type(data[key])}")


def _check_string_list(c: Checker, data: dict[str, Any], path: str, key: str) -> None:
    if key not in data:
        return
    value = data[key]
    where = _join(path, key)
    if not isinstance(value, list):
        c.error(where, f'{key} must be an array of strings, e.g. ["deploy", "ci"], not {json_type(value)}')
        return
    for i, item in enumerate(value):
        if not isinstance(item, str):
            c.error(f"{where}[{i}]", f"{key} entries must be strings, not {json_type(item)}")


def _check_person(c: Checker, data: dict[str, Any], path: str, key: str, required: bool) -> None:
    where = _join(path, key)
    example = '{"name": "Your Team", "email": "team@example.com"}'
    if key not in data:
        if required:
            c.error(where, f"{key} is required: an object such as {example}")
        return
    value = data[key]
    if not isinstance(value, dict):
        c.error(where, f'{key} must be an object with a "name", e.g. {example} (not {json_type(value)})')
        return
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        c.error(_join(where, "name"), f"{key}.name is required: a non-empty string"
                if "name" not in value or isinstance(name, str) else f"{key}.name must be a string")
    _check_strings(c, value, where, ("email", "url"))


def _relative_path(c: Checker, value: str, where: str, what: str, root: Path | None) -> None:
    """A component path: ``./x`` inside the plugin folder; on disk, it must exist."""
    if not value.startswith("./"):
        c.error(where, f'{what} paths must be relative to the plugin folder and start with "./" (got "{value}")')
        return
    if ".." in Path(value).parts:
        c.error(where, f'{what} path "{value}" must stay inside the plugin folder (no "..")')
        return
    if root is not None and not os.path.lexists(root / value):
        c.error(where, f'{what} path "{value}" does not exist in {root}')


def check_components(c: Checker, data: dict[str, Any], path: str, root: Path | None) -> None:
    for key in PATH_FIELDS:
        if key not in data:
            continue
        value = data[key]
        where = _join(path, key)
        if isinstance(value, str):
            _relative_path(c, value, where, key, root)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    _relative_path(c, item, f"{where}[{i}]", key, root)
                else:
                    c.error(f"{where}[{i}]", f"{key} entries must be path strings, not {json_type(item)}")
        else:
            c.error(where, f'{key} must be a path ("./{DEFAULT_LOCATIONS[key]}") or an array of paths, '
                           f"not {json_type(value)}")
    for key in CONFIG_FIELDS:
        if key not in data:
            continue
        value = data[key]
        where = _join(path, key)
        hint = f'a path to a JSON file ("./{DEFAULT_LOCATIONS[key]}") or an inline object'
        if isinstance(value, str):
            _relative_path(c, value, where, key, root)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    _relative_path(c, item, f"{where}[{i}]", key, root)
                elif not isinstance(item, dict):
                    c.error(f"{where}[{i}]", f"{key} entries must be {hint}, not {json_type(item)}")
        elif not isinstance(value, dict):
            c.error(where, f"{key} must be {hint}, not {json_type(value)}")


def _unknown_keys(c: Checker, data: dict[str, Any], path: str, known: set[str], what: str) -> None:
    for key in data:
        if key not in known:
            c.warn(_join(path, key), f'unknown {what} field "{key}" (ignored)')


# --------------------------------------------------------------------------- sources


def check_source(c: Checker, value: Any, where: str) -> None:
    """A marketplace entry's ``source``: ``./path`` or a github/git/url source object."""
    if isinstance(value, str):
        if not value.startswith("./") and value != ".":
            c.error(where, f'source "{value}" is not valid: source must be {_SOURCE_HINT}')
        elif ".." in Path(value).parts:
            c.error(where, f'source "{value}" must stay inside the marketplace (no "..")')
        return
    if not isinstance(value, dict):
        c.error(where, f"source must be {_SOURCE_HINT}, not {json_type(value)}")
        return
    kind = value.get("source")
    if kind is None:
        c.error(_join(where, "source"), f'a source object needs "source": one of {", ".join(SOURCE_TYPES)}')
        return
    if kind not in SOURCE_TYPES:
        c.error(_join(where, "source"), f'unsupported source type {json.dumps(kind)}: use one of '
                                        f'{", ".join(SOURCE_TYPES)}, or a "./path" string')
        return
    if kind == "github":
        repo = value.get("repo")
        if repo is None:
            c.error(_join(where, "repo"), 'a github source needs "repo": "owner/repo"')
        elif not isinstance(repo, str) or not GITHUB_REPO_RE.match(repo):
            c.error(_join(where, "repo"), f'repo must look like "owner/repo", not {json.dumps(repo)}')
    else:
        url = value.get("url")
        if url is None:
            c.error(_join(where, "url"), f'a {kind} source needs "url": a git repository URL such as '
                                         '"https://github.com/owner/repo.git"')
        elif not isinstance(url, str) or not GIT_URL_RE.match(url):
            c.error(_join(where, "url"), f"url must be a git URL (https://, ssh://, git@host:path, file://), "
                                         f"not {json.dumps(url)}")
    _check_strings(c, value, where, ("ref", "sha", "path"))
    sub = value.get("path")
    if isinstance(sub, str) and ".." in Path(sub).parts:
        c.error(_join(where, "path"), f'path "{sub}" must stay inside the repository (no "..")')


# --------------------------------------------------------------------------- documents


def plugin_base(marketplace: dict[str, Any]) -> str:
    """``metadata.pluginRoot`` (prefixed to relative plugin sources), or ``.``."""
    metadata = marketplace.get("metadata")
    base = metadata.get("pluginRoot") if isinstance(metadata, dict) else None
    return base if isinstance(base, str) and base else "."


def local_source_dir(root: Path, marketplace: dict[str, Any], source: str) -> Path:
    """Where a ``./path`` source is inside a marketplace folder (no symlink resolution)."""
    return Path(os.path.normpath(root / plugin_base(marketplace) / source))


def check_entry(c: Checker, entry: dict[str, Any], where: str, market_root: Path | None,
                marketplace: dict[str, Any]) -> Path | None:
    """One ``plugins[i]`` entry; returns its plugin folder when it is local and exists on disk."""
    _check_name(c, entry, where, "my-plugin")
    if "source" not in entry:
        c.error(_join(where, "source"), f"source is required: {_SOURCE_HINT}")
    else:
        check_source(c, entry["source"], _join(where, "source"))
    if "description" not in entry:
        c.warn(_join(where, "description"), "description is missing: it is shown when browsing the marketplace")
    _check_strings(c, entry, where, (*METADATA_STRINGS, "category"))
    _check_string_list(c, entry, where, "keywords")
    _check_string_list(c, entry, where, "tags")
    _check_person(c, entry, where, "author", required=False)
    if "strict" in entry and not isinstance(entry["strict"], bool):
        c.error(_join(where, "strict"), f"strict must be true or false, not {json_type(entry['strict'])}")
    _unknown_keys(c, entry, where, ENTRY_KEYS, "plugin entry")
    source = entry.get("source")
    plugin_dir: Path | None = None
    if market_root is not None and isinstance(source, str) and not any(
            p.path.startswith(_join(where, "source")) for p in c.errors):
        candidate = local_source_dir(market_root, marketplace, source)
        if not candidate.is_dir():
            c.error(_join(where, "source"), f'source "{source}" does not exist in the marketplace ({candidate})')
        else:
            plugin_dir = candidate
    check_components(c, entry, where, plugin_dir)
    return plugin_dir


def validate_marketplace(data: Any, root: Path | None = None, file: str | None = None,
                         plugins_on_disk: bool = True) -> Checker:
    """
    Every problem of a marketplace manifest. With ``root`` (the marketplace folder) relative
    plugin sources must exist, and each one's ``plugin.json`` is validated too (its problems
    carry ``file``) unless ``plugins_on_disk`` is false.
    """
    c = Checker(file)
    if not isinstance(data, dict):
        c.error("root", f'a marketplace manifest must be a JSON object with "name", "owner" and "plugins", '
                        f"not {json_type(data)}")
        return c
    _check_name(c, data, "", "my-marketplace")
    _check_person(c, data, "", "owner", required=True)
    _check_strings(c, data, "", ("description", "version"))
    metadata = data.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            c.error("metadata", f"metadata must be an object, not {json_type(metadata)}")
        else:
            _check_strings(c, metadata, "metadata", ("description", "version", "pluginRoot"))
    _unknown_keys(c, data, "", MARKETPLACE_KEYS, "marketplace")
    if "plugins" not in data:
        c.error("plugins", "plugins is required: an array of plugin entries (it may be empty)")
        return c
    plugins = data["plugins"]
    if not isinstance(plugins, list):
        c.error("plugins", f"plugins must be an array of plugin entries, not {json_type(plugins)}")
        return c
    seen: dict[str, int] = {}
    disk_root = root if plugins_on_disk else None
    for i, entry in enumerate(plugins):
        where = f"plugins[{i}]"
        if not isinstance(entry, dict):
            c.error(where, f'plugins must be objects with "name" and "source", not {json_type(entry)}')
            continue
        name = entry.get("name")
        if isinstance(name, str):
            if name in seen:
                c.error(_join(where, "name"), f'duplicate plugin name "{name}" (also plugins[{seen[name]}].name): '
                                              "names must be unique in a marketplace")
            else:
                seen[name] = i
        plugin_dir = check_entry(c, entry, where, disk_root, data)
        if plugin_dir is not None:
            manifest = find_manifest(plugin_dir, PLUGIN_FILE)
            if manifest is not None:
                shown = os.path.relpath(manifest, root) if root is not None else str(manifest)
                c.extend(validate_plugin_file(manifest, file=shown))
    return c


def validate_plugin(data: Any, root: Path | None = None, file: str | None = None) -> Checker:
    """Every problem of a ``plugin.json``; with ``root`` (the plugin folder) its paths must exist."""
    c = Checker(file)
    if not isinstance(data, dict):
        c.error("root", f'a plugin manifest must be a JSON object with at least "name", not {json_type(data)}')
        return c
    _check_name(c, data, "", "my-plugin")
    _check_strings(c, data, "", METADATA_STRINGS)
    version = data.get("version")
    if isinstance(version, str) and not SEMVER_RE.match(version):
        c.warn("version", f'version "{version}" is not semantic versioning (MAJOR.MINOR.PATCH, e.g. "1.2.0")')
    _check_string_list(c, data, "", "keywords")
    _check_person(c, data, "", "author", required=False)
    if "userConfig" in data and not isinstance(data["userConfig"], dict):
        c.error("userConfig", f"userConfig must be an object, not {json_type(data['userConfig'])}")
    if "channels" in data and not isinstance(data["channels"], (list, dict)):
        c.error("channels", f"channels must be an array or an object, not {json_type(data['channels'])}")
    check_components(c, data, "", root)
    _unknown_keys(c, data, "", PLUGIN_KEYS, "plugin")
    return c


def validate_plugin_file(manifest: Path, file: str | None = None) -> Checker:
    """A ``plugin.json`` on disk (component paths resolved against its plugin folder)."""
    try:
        data = read_json_file(manifest)
    except (OSError, ValueError) as exc:
        c = Checker(file)
        c.error("root", f"{manifest.name} cannot be read: {exc.strerror if isinstance(exc, OSError) else exc}")
        return c
    return validate_plugin(data, manifest_root(manifest), file)


def validate_document(data: Any, kind: str | None) -> ValidationResult:
    """An inline manifest (no folder: component paths are only checked for their form)."""
    kind = kind or guess_type(data)
    checker = validate_marketplace(data) if kind == "marketplace" else validate_plugin(data)
    return checker.result(kind)


def validate_path(path: Path, kind: str | None) -> ValidationResult:
    """
    A manifest file, or a folder holding one in a manifest folder (``marketplace.json`` first
    unless ``kind`` says ``plugin``). ``FileNotFoundError`` when ``path`` does not exist.
    """
    if path.is_dir():
        names = {"marketplace": (MARKETPLACE_FILE,), "plugin": (PLUGIN_FILE,)}.get(
            kind or "", (MARKETPLACE_FILE, PLUGIN_FILE))
        for name in names:
            manifest = find_manifest(path, name)
            if manifest is not None:
                return validate_path(manifest, kind or ("marketplace" if name == MARKETPLACE_FILE else "plugin"))
        wanted = " or ".join(names)
        c = Checker()
        c.error("root", f"no {wanted} in {path}: put it in one of "
                        f"{', '.join(d + '/' for d in MANIFEST_DIRS)} (searched in that order)")
        return c.result(kind or "plugin", str(path))
    if not path.exists():
        raise FileNotFoundError(str(path))
    try:
        data = read_json_file(path)
    except (OSError, ValueError) as exc:
        c = Checker()
        c.error("root", f"{path.name} cannot be read: {exc.strerror if isinstance(exc, OSError) else exc}")
        return c.result(kind or ("marketplace" if path.name == MARKETPLACE_FILE else "plugin"), str(path))
    if kind is None:
        kind = {"marketplace.json": "marketplace", "plugin.json": "plugin"}.get(path.name) or guess_type(data)
    root = manifest_root(path)
    checker = validate_marketplace(data, root) if kind == "marketplace" else validate_plugin(data, root)
    return checker.result(kind, str(path))


def features_of(manifest: dict[str, Any] | None, root: Path | None) -> list[str]:
    """The component kinds a plugin has: declared in its manifest or found where convention puts them."""
    found = []
    for key in COMPONENT_FIELDS:
        declared = manifest is not None and manifest.get(key) not in (None, [], {})
        if declared or (root is not None and os.path.lexists(root / DEFAULT_LOCATIONS[key])):
            found.append(key)
    return found
