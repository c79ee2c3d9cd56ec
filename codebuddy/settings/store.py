# -*- test-case-name: tests.settings.test_store -*-
"""
The settings files, on CodeBuddy's layout (acp-codebuddy.md §2.11):

- ``user``: ``<home>/settings.json``;
- ``project``: ``<workspace>/.codebuddy/settings.json``;
- ``local``: ``<workspace>/.codebuddy/settings.local.json`` (also accepted as ``project-local``;
  when it is created in a git work tree it is added to ``.git/info/exclude``).

Every method is blocking (run it off the reactor thread).

- Reads are cached by the file's (mtime, size, inode), so a file edited by hand is read again
  on the next call and an unchanged one is not parsed twice.
- :meth:`SettingsStore.update` is a locked read-modify-write: an exclusive ``flock`` on
  ``<home>/locks/settings-<hash>.lock`` (one per settings file; every codebuddy process of this
  home takes the same lock), a fresh read, the change, an atomic write (temp file, fsync,
  rename) that keeps the file's mode (a new user file is 0600: it may hold the gateway password).
  Two writers, threads or processes, never lose each other's update.
- A file that is not a JSON object is a :class:`SettingsFileError` with its path, line and
  column; it is never written over (updates of its scope fail until it is fixed).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from codebuddy.settings.schema import DEFAULTS, merge
from codebuddy.storage import atomic_write
from codebuddy.web.errors import ApiError

__all__ = ["SCOPES", "SettingsFileError", "SettingsStore", "merge_scopes", "scope_name"]

SCOPES = ("user", "project", "local")
ALIASES = {"project-local": "local", "projectLocal": "local"}
LOCAL_EXCLUDE = ".codebuddy/settings.local.json"


def scope_name(scope: str | None, default: str = "user") -> str:
    """The canonical scope for ``scope`` (an alias or None); 400 for anything else."""
    if scope is None or scope == "":
        return default
    name = ALIASES.get(scope, scope)
    if name not in SCOPES:
        raise ApiError("BAD_REQUEST", f"scope must be one of {', '.join(SCOPES)} (or project-local), got {scope!r}",
                       [{"field": "scope", "message": "unknown scope"}])
    return name


@attrs.frozen
class SettingsFileError(Exception):
    """A settings file that cannot be used as it is."""

    scope: str
    path: str
    line: int
    column: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "path": self.path, "line": self.line, "column": self.column,
                "message": self.reason}

    def api_error(self) -> ApiError:
        return ApiError("SETTINGS_INVALID", f"The {self.scope} settings file {self} (fix it by hand; it is "
                        "left as it is)", self.to_json())


def merge_scopes(scopes: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Each scope's settings merged over the defaults, least specific first (schema.merge)."""
    return merge([DEFAULTS, *(scopes.get(s, {}) for s in SCOPES)])


def parse(scope: str, path: Path, text: str) -> dict[str, Any]:
    """The settings in ``text`` (an empty file is ``{}``)."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsFileError(scope, str(path), exc.lineno, exc.colno, f"not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise SettingsFileError(scope, str(path), 1, 1, "the top level must be a JSON object")
    return data


class SettingsStore:
    """The three settings files of one home and workspace."""

    def __init__(self, home: Path, workspace: Path) -> None:
        self.home = home
        self.workspace = workspace
        self._cache: dict[Path, tuple[tuple[int, int, int], dict[str, Any] | SettingsFileError]] = {}
        self._mutex = threading.Lock()

    def path(self, scope: str) -> Path:
        if scope == "user":
            return self.home / "settings.json"
        name = "settings.json" if scope == "project" else "settings.local.json"
        return self.workspace / ".codebuddy" / name

    def version(self, scope: str) -> tuple[int, int, int] | None:
        """What changes when the scope's file is written: (mtime, size, inode), None when absent."""
        return self._stat_key(self.path(scope))

    def _stat_key(self, path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def read(self, scope: str) -> dict[str, Any]:
        """The settings of one scope (a copy; ``{}`` when the file does not exist)."""
        path = self.path(scope)
        key = self._stat_key(path)
        if key is None:
            return {}
        with self._mutex:
            cached = self._cache.get(path)
        if cached is None or cached[0] != key:
            try:
                text = path.read_text(encoding="utf-8")
                value: dict[str, Any] | SettingsFileError = parse(scope, path, text)
            except UnicodeDecodeError as exc:
                value = SettingsFileError(scope, str(path), 1, 1, f"not UTF-8 text ({exc.reason})")
            except FileNotFoundError:
                return {}
            # Cached under the (mtime, size, inode) seen *before* reading: a change landing while
            # the text is read has another key, so the next read parses the file again.
            with self._mutex:
                self._cache[path] = (key, value)
            cached = (key, value)
        if isinstance(cached[1], SettingsFileError):
            raise cached[1]
        return copy.deepcopy(cached[1])

    def read_all(self) -> tuple[dict[str, dict[str, Any]], list[SettingsFileError]]:
        """Each scope's settings (unusable files left out), and the problems with those files."""
        scopes: dict[str, dict[str, Any]] = {}
        problems: list[SettingsFileError] = []
        for scope in SCOPES:
            try:
                scopes[scope] = self.read(scope)
            except SettingsFileError as exc:
                problems.append(exc)
            except OSError as exc:
                problems.append(SettingsFileError(scope, str(self.path(scope)), 0, 0, f"cannot read: {exc.strerror}"))
        return scopes, problems

    def merged(self) -> dict[str, Any]:
        """The merged view (defaults < user < project < local); unusable files are left out."""
        scopes, _problems = self.read_all()
        return merge_scopes(scopes)

    def _lock_path(self, path: Path) -> Path:
        digest = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return self.home / "locks" / f"settings-{digest}.lock"

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        lock = self._lock_path(path)
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)  # a new home is private (as ensure_home)
        lock.parent.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def update(self, scope: str, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Change one scope's settings in place under the lock (see the module docstring); the new settings."""
        path = self.path(scope)
        with self._locked(path):
            try:
                text = path.read_text(encoding="utf-8")
                mode = stat.S_IMODE(path.stat().st_mode)
                existed = True
            except FileNotFoundError:
                text, existed = "", False
                mode = 0o600 if scope == "user" else 0o644
            except UnicodeDecodeError as exc:
                raise SettingsFileError(scope, str(path), 1, 1, f"not UTF-8 text ({exc.reason})") from None
            data = parse(scope, path, text)
            mutate(data)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if scope == "user" else 0o755)
            atomic_write(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"), mode=mode)
            # Not cached under a stat taken now: a hand edit right after the write would be hidden
            # behind it. The next read parses the file once.
            with self._mutex:
                self._cache.pop(path, None)
        if not existed and scope == "local":
            self._exclude_from_git()
        return data

    def _exclude_from_git(self) -> None:
        """Keep a new settings.local.json out of git (as CodeBuddy and Claude Code do)."""
        git = self.workspace / ".git"
        if not git.is_dir():
            return
        exclude = git / "info" / "exclude"
        try:
            current = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
            if LOCAL_EXCLUDE in current.splitlines():
                return
            exclude.parent.mkdir(parents=True, exist_ok=True)
            with open(exclude, "a", encoding="utf-8") as handle:
                handle.write(("" if not current or current.endswith("\n") else "\n") + LOCAL_EXCLUDE + "\n")
        except OSError:
            pass
