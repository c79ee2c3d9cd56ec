# -*- test-case-name: tests.workers.test_registry -*-
"""
The worker registry: one JSON file per running codebuddy process in ``<home>/sessions/``
(acp-codebuddy.md §2.13), plus the remote daemons added by hand.

- ``<pid>.json`` is written by the process itself when it starts (atomically, mode 0600) and
  removed when it stops cleanly. Fields are CodeBuddy's, camelCase: ``pid``, ``sessionId``,
  ``cwd``, ``startedAt`` (epoch ms), ``kind`` (``interactive | bg | daemon | daemon-worker``),
  ``name``, ``endpoint`` (and ``url``, the same value, as CodeBuddy names it), ``version``,
  ``hostname``, ``logPath``, ``mode: "local"``, and ``processStartTime``: the process's start
  time as the OS reports it (psutil ``create_time()``, epoch seconds). Files written by
  CodeBuddy itself lack some of these; whatever is missing is ``null`` in listings.
- A worker is alive when its pid exists, is not a zombie, and (when the file records it) the
  process with that pid started at ``processStartTime``: a pid the kernel handed to another
  process is not taken for the worker. Files without ``processStartTime`` fall back to
  ``kill -0``. Files of dead workers are pruned whenever the registry is listed.
- A file whose ``hostname`` is another machine's (a home shared over NFS or between
  containers) is listed with status ``unknown``: its pid means nothing here, so it is never
  pruned or signalled.
- ``manual-<hex>.json`` holds a remote daemon added with ``POST /workers``: ``id``, ``url``,
  ``name``, ``addedAt`` and optional ``token`` or ``password``, hence mode 0600 like every file
  here. Adding and removing them holds ``fcntl.flock`` on ``.manual.lock`` (several daemons may
  share a home), so names stay unique.

Everything here is blocking file I/O: the routes call it through ``run_blocking``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import attrs
import psutil

from codebuddy.storage import atomic_write
from codebuddy.web.errors import ApiError

__all__ = [
    "KINDS",
    "LocalWorker",
    "ProcessProbe",
    "Registry",
    "RemoteRecord",
    "WorkerRecord",
    "valid_name",
]

KINDS = ("interactive", "bg", "daemon", "daemon-worker")
MANUAL_PREFIX = "manual-"
# psutil derives create_time() from the boot time, which the kernel reports to the second and
# which may differ by one between two processes' reads: a real start time is within this bound.
START_TIME_TOLERANCE = 2.0
MAX_RECORD_BYTES = 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PID_FILE = re.compile(r"([0-9]{1,10})\.json")
_MANUAL_FILE = re.compile(r"(manual-[A-Za-z0-9_-]{1,64})\.json")


def valid_name(name: str) -> str | None:
    """Why ``name`` cannot name a remote worker, or None when it can."""
    if not _NAME.fullmatch(name):
        return "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    if name.isdigit():
        return "must not be digits only (it would be read as a pid)"
    return None


def _str(data: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@attrs.frozen
class WorkerRecord:
    """One ``<pid>.json``: what a running codebuddy process says about itself."""

    pid: int
    session_id: str | None = None
    cwd: str | None = None
    started_at: int | None = None
    kind: str = "interactive"
    name: str | None = None
    endpoint: str | None = None
    version: str | None = None
    hostname: str | None = None
    log_path: str | None = None
    mode: str = "local"
    process_start_time: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The file's content (camelCase; absent values left out)."""
        data: dict[str, Any] = {
            "pid": self.pid,
            "sessionId": self.session_id,
            "cwd": self.cwd,
            "startedAt": self.started_at,
            "kind": self.kind,
            "name": self.name,
            "endpoint": self.endpoint,
            "url": self.endpoint,
            "version": self.version,
            "hostname": self.hostname,
            "logPath": self.log_path,
            "mode": self.mode,
            "processStartTime": self.process_start_time,
        }
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_json(cls, data: Any, pid: int | None = None) -> WorkerRecord | None:
        """
        A record from a file's parsed content, tolerating CodeBuddy's own files (missing or
        differently typed fields become None). ``pid`` (from the file name) is used when the
        content has none. None when no pid can be found.
        """
        if not isinstance(data, dict):
            return None
        raw_pid = data.get("pid")
        if isinstance(raw_pid, int) and not isinstance(raw_pid, bool) and raw_pid > 0:
            pid = raw_pid
        elif isinstance(raw_pid, str) and raw_pid.isdigit() and int(raw_pid) > 0:
            pid = int(raw_pid)
        if pid is None:
            return None
        started = _number(data, "startedAt")
        return cls(
            pid=pid,
            session_id=_str(data, "sessionId", "session_id"),
            cwd=_str(data, "cwd"),
            started_at=int(started) if started is not None else None,
            kind=_str(data, "kind") or "interactive",
            name=_str(data, "name"),
            endpoint=_str(data, "endpoint", "url"),
            version=_str(data, "version"),
            hostname=_str(data, "hostname"),
            log_path=_str(data, "logPath", "log_path"),
            mode=_str(data, "mode") or "local",
            process_start_time=_number(data, "processStartTime"),
        )


@attrs.frozen
class RemoteRecord:
    """One ``manual-<hex>.json``: a remote codebuddy daemon added by hand."""

    id: str
    url: str
    name: str
    added_at: int | None = None
    token: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)

    @property
    def credential(self) -> str | None:
        """What goes after ``Authorization: Bearer`` for this daemon."""
        return self.token or self.password

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "url": self.url,
            "name": self.name,
            "mode": "remote",
            "addedAt": self.added_at,
            "token": self.token,
            "password": self.password,
        }
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_json(cls, data: Any, file_id: str) -> RemoteRecord | None:
        """A record from a file's content; ``file_id`` (the file's stem) is its id. None without a URL."""
        if not isinstance(data, dict):
            return None
        url = _str(data, "url", "endpoint")
        if url is None:
            return None
        added = _number(data, "addedAt")
        return cls(
            id=file_id,
            url=url.rstrip("/"),
            name=_str(data, "name", "hostname") or file_id,
            added_at=int(added) if added is not None else None,
            token=_str(data, "token"),
            password=_str(data, "password"),
        )


class Probe(Protocol):
    """How liveness is checked (a fake in tests)."""

    def exists(self, pid: int) -> bool:
        """Is there a process with this pid that has not exited (zombies have)?"""

    def start_time(self, pid: int) -> float | None:
        """The process's start time (epoch seconds), or None when it cannot be read."""


class ProcessProbe:
    """Liveness from the OS: ``kill -0``, the process state and psutil's ``create_time()``."""

    def exists(self, pid: int) -> bool:
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:
            return True

    def start_time(self, pid: int) -> float | None:
        try:
            return float(psutil.Process(pid).create_time())
        except psutil.Error:
            return None


def own_start_time(pid: int | None = None) -> float | None:
    """This process's (or ``pid``'s) start time as recorded in ``processStartTime``."""
    return ProcessProbe().start_time(os.getpid() if pid is None else pid)


@attrs.frozen
class LocalWorker:
    """A registered process and what the registry knows of it now."""

    record: WorkerRecord
    status: str
    path: Path


class Registry:
    """The files in ``<home>/sessions``."""

    def __init__(self, home: Path, probe: Probe | None = None, hostname: str | None = None) -> None:
        self.home = home
        self.directory = home / "sessions"
        self.probe: Probe = probe or ProcessProbe()
        self.hostname = hostname or socket.gethostname()

    # -- this machine's processes

    def path_for(self, pid: int) -> Path:
        return self.directory / f"{pid}.json"

    def register(self, record: WorkerRecord) -> Path:
        """Write ``<pid>.json`` atomically, mode 0600."""
        self._ensure_directory()
        path = self.path_for(record.pid)
        atomic_write(path, (json.dumps(record.to_json(), indent=2) + "\n").encode(), mode=0o600)
        return path

    def unregister(self, pid: int, process_start_time: float | None = None) -> bool:
        """
        Remove ``<pid>.json`` if it still describes this process (same pid and, when both are
        known, the same start time). True when a file was removed.
        """
        path = self.path_for(pid)
        record = self._read_record(path, pid)
        if record is None:
            return False
        if record.pid != pid or not _same_start(record.process_start_time, process_start_time):
            return False
        path.unlink(missing_ok=True)
        return True

    def alive(self, record: WorkerRecord) -> bool:
        """The pid exists, is not a zombie, and started when the record says (if it says)."""
        if not self.probe.exists(record.pid):
            return False
        if record.process_start_time is None:
            return True
        actual = self.probe.start_time(record.pid)
        return actual is None or _same_start(actual, record.process_start_time)

    def status_of(self, record: WorkerRecord) -> str:
        """``running``, ``stopped`` (dead or pid reused) or ``unknown`` (another host's process)."""
        if record.hostname and record.hostname != self.hostname:
            return "unknown"
        return "running" if self.alive(record) else "stopped"

    def local_workers(self, prune: bool = True) -> list[LocalWorker]:
        """Registered processes that are alive (or on another host), oldest first; stale files pruned."""
        found: list[LocalWorker] = []
        for path, pid in self._pid_files():
            record = self._read_record(path, pid)
            if record is None:
                # Unreadable: maybe being written by a process that does not write atomically.
                # Only a file named after a dead pid is certainly stale.
                if prune and not self.probe.exists(pid):
                    path.unlink(missing_ok=True)
                continue
            status = self.status_of(record)
            if status == "stopped":
                if prune:
                    self._prune(path, record)
                continue
            found.append(LocalWorker(record, status, path))
        found.sort(key=lambda w: (w.record.started_at or 0, w.record.pid))
        return found

    def find_local(self, key: str) -> LocalWorker | None:
        """A live local worker by pid or name (the most recently started one of that name)."""
        workers = self.local_workers()
        if key.isdigit():
            for worker in workers:
                if worker.record.pid == int(key):
                    return worker
        named = [w for w in workers if w.record.name == key]
        return named[-1] if named else None

    def remove_stale(self, record: WorkerRecord) -> bool:
        """Remove the file of a worker that was just terminated (if it still names that process)."""
        path = self.path_for(record.pid)
        current = self._read_record(path, record.pid)
        if current is None or not _same_start(current.process_start_time, record.process_start_time):
            return False
        if self.alive(current):
            return False
        path.unlink(missing_ok=True)
        return True

    # -- remote daemons

    def remotes(self) -> list[RemoteRecord]:
        """The remote daemons added by hand, in the order they were added."""
        found: list[RemoteRecord] = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        for name in names:
            match = _MANUAL_FILE.fullmatch(name)
            if match is None:
                continue
            data = self._read_json(self.directory / name)
            record = RemoteRecord.from_json(data, match.group(1))
            if record is not None:
                found.append(record)
        found.sort(key=lambda r: (r.added_at or 0, r.id))
        return found

    def find_remote(self, key: str) -> RemoteRecord | None:
        """A remote daemon by id or name."""
        remotes = self.remotes()
        for remote in remotes:
            if remote.id == key:
                return remote
        for remote in remotes:
            if remote.name == key:
                return remote
        return None

    def add_remote(
        self, url: str, name: str, token: str | None, password: str | None, added_at: int
    ) -> RemoteRecord:
        """
        Store a remote daemon as ``manual-<hex>.json`` (0600: it may hold credentials).
        409 ``ALREADY_EXISTS`` when a remote daemon or a live local worker has that name.
        """
        self._ensure_directory()
        with self._locked():
            if any(r.name == name for r in self.remotes()):
                raise ApiError("ALREADY_EXISTS", f"A remote worker named {name!r} already exists",
                               [{"field": "name", "message": "already exists"}])
            if any(w.record.name == name for w in self.local_workers(prune=False)):
                raise ApiError("ALREADY_EXISTS", f"A local worker is named {name!r}; choose another name",
                               [{"field": "name", "message": "already exists"}])
            while True:
                record_id = MANUAL_PREFIX + secrets.token_hex(4)
                if not (self.directory / f"{record_id}.json").exists():
                    break
            record = RemoteRecord(record_id, url, name, added_at, token, password)
            data = json.dumps(record.to_json(), indent=2) + "\n"
            atomic_write(self.directory / f"{record_id}.json", data.encode(), mode=0o600)
        return record

    def remove_remote(self, record_id: str) -> bool:
        """Forget a remote daemon; True when its file was there."""
        if _MANUAL_FILE.fullmatch(f"{record_id}.json") is None:
            return False
        with self._locked():
            path = self.directory / f"{record_id}.json"
            existed = path.exists()
            path.unlink(missing_ok=True)
        return existed

    # -- internals

    def _ensure_directory(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.mkdir(exist_ok=True, mode=0o700)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / ".manual.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _pid_files(self) -> list[tuple[Path, int]]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = _PID_FILE.fullmatch(name)
            if match is not None and int(match.group(1)) > 0:
                found.append((self.directory / name, int(match.group(1))))
        return found

    def _read_json(self, path: Path) -> Any:
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_RECORD_BYTES + 1)
        except OSError:
            return None
        if len(raw) > MAX_RECORD_BYTES:
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None

    def _read_record(self, path: Path, pid: int) -> WorkerRecord | None:
        return WorkerRecord.from_json(self._read_json(path), pid)

    def _prune(self, path: Path, record: WorkerRecord) -> None:
        # Read again just before removing: the pid may have been reused by a new worker that
        # registered itself since the first read.
        current = self._read_record(path, record.pid)
        if current is not None and current != record and self.status_of(current) != "stopped":
            return
        path.unlink(missing_ok=True)


def _same_start(a: float | None, b: float | None) -> bool:
    return a is None or b is None or abs(a - b) < START_TIME_TOLERANCE
