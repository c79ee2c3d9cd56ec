"""Marketplaces on disk, git repositories in temporary folders, and fake settings and HTTP for plugin tests."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from codebuddy.fs.paths import Resolver
from codebuddy.plugins.manager import PluginManager, SettingsAccess
from codebuddy.plugins.routes import PluginRoutes
from codebuddy.plugins.sources import Git, ManifestFetcher
from tests.helpers import ApiFixture, ApiTestCase

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def run_now(fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    """A synchronous ``run_blocking``."""
    return maybeDeferred(fn, *args, **kwargs)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def make_plugin(folder: Path, name: str, version: str | None = "1.0.0", manifest_dir: str = ".claude-plugin",
                extra: dict[str, Any] | None = None, command: str | None = "hello") -> Path:
    """A plugin folder in Claude Code's layout: ``<manifest_dir>/plugin.json`` and ``commands/<command>.md``."""
    manifest: dict[str, Any] = {"name": name, "description": f"The {name} plugin"}
    if version is not None:
        manifest["version"] = version
    manifest.update(extra or {})
    write_json(folder / manifest_dir / "plugin.json", manifest)
    if command is not None:
        (folder / "commands").mkdir(parents=True, exist_ok=True)
        (folder / "commands" / f"{command}.md").write_text(f"# /{command}\nSay {command}.\n")
    return folder


def make_marketplace(root: Path, name: str = "my-marketplace", plugins: list[dict[str, Any]] | None = None,
                     manifest_dir: str = ".claude-plugin", **extra: Any) -> Path:
    """
    A marketplace folder: ``<manifest_dir>/marketplace.json``; each ``./plugins/<name>`` source gets a
    plugin folder made with :func:`make_plugin` unless the entry says ``"_make": False``.
    """
    if plugins is None:
        plugins = [{"name": "my-plugin", "source": "./plugins/my-plugin", "description": "Says hello",
                    "version": "1.0.0", "category": "demo", "keywords": ["hello"],
                    "author": {"name": "Jane", "email": "jane@example.com"}}]
    entries = []
    for entry in plugins:
        entry = dict(entry)
        make = entry.pop("_make", True)
        source = entry.get("source")
        if make and isinstance(source, str) and source.startswith("./plugins/"):
            make_plugin(root / source, entry["name"], entry.get("version", "1.0.0"))
        entries.append(entry)
    write_json(root / manifest_dir / "marketplace.json",
               {"name": name, "owner": {"name": "Team", "email": "team@example.com"},
                "description": "Demo plugins", "plugins": entries, **extra})
    return root


def git(repo: Path, *args: str) -> str:
    assert GIT is not None
    result = subprocess.run([GIT, "-C", str(repo), *args], capture_output=True, check=True, stdin=subprocess.DEVNULL,
                            env={"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null",
                                 "HOME": str(repo), "PATH": "/usr/bin:/bin"})
    return result.stdout.decode().strip()


def git_commit(repo: Path, message: str = "commit") -> str:
    """Commit everything in ``repo`` (made a repository first if needed); the new HEAD."""
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=test@example.com", "-c", "user.name=Test", "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


class MemorySettings:
    """The settings store's interface over dicts; ``fail`` makes updates raise it."""

    def __init__(self) -> None:
        self.scopes: dict[str, dict[str, Any]] = {"user": {}, "project": {}, "local": {}}
        self.fail: BaseException | None = None
        self.updates: list[str] = []

    def read(self, scope: str) -> dict[str, Any]:
        return copy.deepcopy(self.scopes[scope])

    def update(self, scope: str, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        data = copy.deepcopy(self.scopes[scope])
        mutate(data)
        self.scopes[scope] = data
        self.updates.append(scope)
        return copy.deepcopy(data)

    def enabled(self, scope: str = "user") -> dict[str, Any]:
        return dict(self.scopes[scope].get("enabledPlugins", {}))


class Hanging:
    """An HTTP client whose requests are never answered."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d


class NoNetwork:
    """An HTTP client for tests that must not download anything."""

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        raise AssertionError(f"unexpected HTTP request {args}")


class Pages(Resource):
    """A web server's pages: path -> (status, body); 404 otherwise."""

    isLeaf = True

    def __init__(self, pages: dict[str, tuple[int, bytes]] | None = None) -> None:
        super().__init__()
        self.pages = pages or {}
        self.requests: list[str] = []

    def render(self, request: Any) -> bytes:
        path = request.uri.decode()
        self.requests.append(path)
        code, body = self.pages.get(path, (404, b"<html>not found</html>"))
        request.setResponseCode(code)
        return body


class PumpedStub:
    """treq over an in-memory server, its bytes moved at once."""

    def __init__(self, resource: Resource) -> None:
        self.stub = StubTreq(resource)

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        d = self.stub.request(method, url, **kwargs)
        self.stub.flush()
        return d


class Fixture(ApiFixture):
    """The plugins area over ``home`` and ``workspace``; ``http`` answers manifest downloads."""

    def __init__(self, home: Path, workspace: Path, http: Any = None, settings: SettingsAccess | None = None,
                 git: Git | None = None) -> None:
        self.home = home
        self.workspace = workspace
        self.settings: Any = settings if settings is not None else MemorySettings()

        def areas(guard: Any, clock: Clock) -> list[Any]:
            self.fetcher = ManifestFetcher(http if http is not None else NoNetwork(), clock)
            self.manager = PluginManager(home, self.settings, run_now, self.fetcher, Resolver(workspace), clock,
                                         git or Git())
            return [PluginRoutes(self.manager)]

        super().__init__(areas)

    @property
    def plugins_dir(self) -> Path:
        return self.home / "plugins"

    def post(self, path: str, body: Any) -> tuple[int, Any, Any]:
        return self.json("POST", "/api/v1/plugins" + path, json=body)

    def data(self, result: tuple[int, Any, Any], status: int = 200) -> Any:
        ApiTestCase().assertEqual(result[0], status, result[1])
        return result[1]["data"]

    def staging_left(self) -> list[str]:
        staging = self.plugins_dir / ".staging"
        return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


def error(result: tuple[int, Any, Any]) -> tuple[int, str]:
    return result[0], result[1]["error"]["code"]
