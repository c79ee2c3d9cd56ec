# -*- test-case-name: tests.plugins.test_manager -*-
"""
The plugin state under ``<home>/plugins/``, in Claude Code's layout::

    known_marketplaces.json     {"<name>": {"source": {...}, "installLocation": "...", "lastUpdated": ISO}}
    installed_plugins.json      {"version": 2, "plugins": {"<plugin>@<marketplace>": [{"scope", "installPath",
                                 "version", "installedAt", "lastUpdated", "gitCommitSha"?, "isLocal",
                                 "projectPath"?}]}}
    marketplaces/<name>/        the marketplace: a clone, a copy of a folder, or the downloaded manifest
    cache/<marketplace>/<plugin>/<version>/   an installed plugin's files
    .staging/                   work folders: everything is fetched here first, then renamed into place
    .lock                       flock'ed around every read-modify-write of the two JSON files

Rewrites are atomic (``storage.atomic_write``) and done holding the lock, so a daemon and a CLI
(or two daemons on one home) never lose each other's changes. Blocking: call through ``run_blocking``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from codebuddy.storage import atomic_write
from codebuddy.web.errors import ApiError

STAGING_MAX_AGE = 24 * 3600.0


def iso(seconds: float) -> str:
    """``2025-01-02T03:04:05.678Z`` (Claude Code's timestamps in these files)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_to_ms(value: Any) -> int | None:
    """Milliseconds since the epoch of an ISO timestamp (or of a number of ms), None when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def inside(path: Path, root: Path) -> bool:
    """True when ``path`` (symlinks resolved) is ``root`` or below it."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
    except OSError:
        return False


class PluginState:
    """The files of ``<home>/plugins/``."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "plugins"
        self.known_file = self.root / "known_marketplaces.json"
        self.installed_file = self.root / "installed_plugins.json"
        self.marketplaces_dir = self.root / "marketplaces"
        self.cache_dir = self.root / "cache"
        self.staging_dir = self.root / ".staging"
        self.lock_file = self.root / ".lock"
        self._swept = False

    def ensure(self) -> None:
        """Create the folders; once per process, remove work folders a crash left behind (a day old)."""
        for folder in (self.root, self.marketplaces_dir, self.cache_dir, self.staging_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._swept = True
            cutoff = time.time() - STAGING_MAX_AGE
            for entry in self.staging_dir.iterdir():
                try:
                    if entry.lstat().st_mtime < cutoff:
                        remove_tree(entry)
                except OSError:
                    pass

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state lock (exclusive ``flock``; other processes and threads wait)."""
        self.ensure()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self, path: Path) -> Any:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError("CONFLICT", f"{path} is not valid JSON ({exc}): fix or remove it") from None

    def _write(self, path: Path, data: Any) -> None:
        self.ensure()
        atomic_write(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))

    def read_known(self) -> dict[str, dict[str, Any]]:
        data = self._read(self.known_file)
        if not isinstance(data, dict):
            return {}
        return {name: rec for name, rec in data.items() if isinstance(name, str) and isinstance(rec, dict)}

    def write_known(self, known: dict[str, dict[str, Any]]) -> None:
        self._write(self.known_file, known)

    def read_installed(self) -> dict[str, list[dict[str, Any]]]:
        """Plugin id -> its installations (version 1 files, one object per id, are read too)."""
        data = self._read(self.installed_file)
        plugins = data.get("plugins") if isinstance(data, dict) else None
        if not isinstance(plugins, dict):
            return {}
        out: dict[str, list[dict[str, Any]]] = {}
        for plugin_id, value in plugins.items():
            entries = value if isinstance(value, list) else [value]
            kept = [e for e in entries if isinstance(e, dict)]
            if kept:
                out[plugin_id] = kept
        return out

    def write_installed(self, plugins: dict[str, list[dict[str, Any]]]) -> None:
        self._write(self.installed_file, {"version": 2, "plugins": plugins})

    def new_staging(self) -> Path:
        """A fresh path in the work folder (not created)."""
        self.ensure()
        return self.staging_dir / uuid.uuid4().hex

    def swap_in(self, staged: Path, final: Path) -> None:
        """Put ``staged`` at ``final`` with renames (an existing ``final`` is moved aside, then removed)."""
        final.parent.mkdir(parents=True, exist_ok=True)
        trash: Path | None = None
        if os.path.lexists(final):
            trash = self.new_staging()
            os.rename(final, trash)
        os.rename(staged, final)
        if trash is not None:
            remove_tree(trash)

    def remove_owned(self, path: Path) -> None:
        """Remove a folder this state owns; never anything outside ``<home>/plugins``."""
        if os.path.lexists(path) and inside(path.parent, self.root) and path != self.root:
            remove_tree(path)

    def prune_empty(self, folder: Path, stop: Path) -> None:
        """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty."""
        while folder != stop and inside(folder, stop):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def remove_tree(path: Path) -> None:
    """Remove a file, link or folder tree; missing is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
