# -*- test-case-name: tests.checkpoints.test_store -*-
"""
The checkpoint store: one checkpoint per user message, the original of every file the
agent's file tools change, diffs and reverts (acp-codebuddy.md §2.9).

Everything here is blocking file I/O; the agent and the routes call it through
``run_blocking``. The session's transcript is the record: checkpoints are its
``file-history-snapshot`` items (:mod:`codebuddy.checkpoints.history`), so CodeBuddy (and
Claude Code, whose format it is) can read what we write and we read what they write.
Backups are files in ``<home>/file-history/<sessionId>/``, written once under a name that
is never reused, and never changed afterwards.

**The model.** A checkpoint's snapshot holds, for every tracked file, the file's state at the
start of that checkpoint (a backup, or "did not exist"):

- :meth:`CheckpointStore.begin` (a user message) starts a snapshot that carries the previous
  one's files: an unchanged file keeps its backup, a changed one gets a new version, a
  missing one is recorded as missing;
- :meth:`CheckpointStore.before_change` (a file tool is about to write) adds a file the
  current snapshot does not track yet: a copy of its content, or "did not exist" (a file the
  agent creates). Later changes within the same checkpoint add nothing.

From that: a checkpoint's changed ``files`` are those whose content differs between its
snapshot and the next one's (the disk for the latest); ``diff`` compares the latest snapshot's
backup with the disk; a ``Code`` revert to a checkpoint restores every tracked file to its
state in that checkpoint's snapshot (a file first tracked later: to its first backup after it)
and deletes the ones that did not exist.

**Conversation reverts** rewrite the transcript atomically (new file, rename) without the
checkpoint's user message and everything after it, except title records (renames) and the
snapshot items of earlier checkpoints. The old transcript is kept as
``file-history/<sessionId>/<sessionId>.jsonl.bak-<ms>`` (outside ``projects/``, so the
session list never sees it; deleting the session removes it). Files first tracked by a
removed checkpoint are added to the previous checkpoint's snapshot (their first backup is
their state at its start), so a later ``Code`` revert still restores them.

**Concurrency.** One lock per store orders the threads; mutations also take ``flock`` on
``file-history/<sessionId>/.lock`` so two processes on one home do not interleave. The parsed
transcript is cached per session and read on from where it ended when the file only grew.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs

from codebuddy.checkpoints.history import (
    LABEL_LIMIT,
    SNAPSHOT_TYPE,
    Backup,
    Fold,
    Snapshot,
    backup_name,
    line_stats,
    snapshot_item,
    snapshot_message_id,
    user_message_id,
)
from codebuddy.checkpoints.models import (
    SCOPE_BOTH,
    SCOPE_CODE,
    SCOPE_CONVERSATION,
    SCOPES,
    Checkpoint,
    CheckpointInfo,
    FileChange,
    FileDiff,
    InvalidScope,
    MissingBackup,
    NoCheckpoints,
    NotTracked,
    RevertResult,
    UnknownCheckpoint,
)
from codebuddy.sessions.store import InvalidSessionId, SessionStore, UnknownSession
from codebuddy.sessions.transcript import (
    TITLE_TYPES,
    is_conversation_message,
    iso_timestamp,
    loads,
    plain_text,
    short_name,
    valid_session_id,
)
from codebuddy.storage import atomic_write

__all__ = ["CheckpointStore"]

READ_CHUNK = 1 << 20
TAIL_CHECK = 64
STATS_CACHE = 4096
LOCK_FILE = ".lock"


class _Disk:
    """The file as it is on disk now (the state after the latest checkpoint)."""

    def __repr__(self) -> str:
        return "DISK"


DISK = _Disk()
State = Backup | _Disk


@attrs.define
class _Parsed:
    """A session's transcript as far as it was read."""

    path: Path
    ino: int = -1
    size: int = -1
    mtime_ns: int = -1
    offset: int = 0
    tail: bytes = b""
    fold: Fold = attrs.field(factory=Fold)


def _json_line(record: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # lone surrogates (undecodable file names)
        return json.dumps(record, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def _read_file(path: str | Path) -> bytes | None:
    """A regular file's bytes, or None when there is no file (missing, a directory...)."""
    try:
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            return handle.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _same_content(path: str, other: Path) -> bool:
    """Do the regular file ``path`` and ``other`` hold the same bytes? (sizes first, then chunks)"""
    try:
        with open(path, "rb") as a, open(other, "rb") as b:
            if os.fstat(a.fileno()).st_size != os.fstat(b.fileno()).st_size:
                return False
            while True:
                chunk = a.read(READ_CHUNK)
                if chunk != b.read(READ_CHUNK):
                    return False
                if not chunk:
                    return True
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return False


def _copy_atomic(source: str | Path, dest: str | Path) -> None:
    """Replace ``dest`` with a copy of the regular file ``source`` (its mode too): temp file, fsync, rename."""
    dest = Path(dest)
    with open(source, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{source} is not a regular file")
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, READ_CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _is_file(path: str) -> bool | None:
    """True: a regular file; False: nothing there; None: something else (a directory...)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True if stat.S_ISREG(mode) else None


class CheckpointStore:
    """
    Checkpoints of the sessions whose transcripts ``sessions`` keeps; backups under
    ``<home>/file-history/``. ``clock()`` gives epoch seconds for what it records.
    """

    def __init__(self, home: Path, sessions: SessionStore, clock: Callable[[], float] = time.time) -> None:
        self.home = Path(home)
        self.sessions = sessions
        self.clock = clock
        self.file_history = self.home / "file-history"
        self._lock = threading.RLock()
        self._parsed: dict[str, _Parsed] = {}
        self._stats: OrderedDict[tuple[Any, ...], tuple[str, int, int] | None] = OrderedDict()
        self._stats_lock = threading.Lock()

    # -------------------------------------------------------------- the agent's side

    def begin(self, session_id: str, cwd: str, message_id: str, label: str) -> Checkpoint:
        """
        A new checkpoint for a user message (id = ``message_id``, label = ``label`` shortened),
        recorded as a snapshot item appended to the session's transcript (created if needed)
        in the project of ``cwd``. It carries the previous checkpoint's files (a new backup
        for each one changed since). Beginning an existing checkpoint again returns it.
        """
        if not message_id:
            raise ValueError("message_id must not be empty")
        self._check_id(session_id)
        with self._lock, self._exclusive(session_id):
            try:
                parsed: _Parsed | None = self._read(session_id)
            except UnknownSession:
                parsed = None
            if parsed is not None and message_id in parsed.fold.snapshots:
                return self._checkpoint(parsed, message_id)
            snapshots = list(parsed.fold.snapshots.values()) if parsed is not None else []
            backups: dict[str, Backup] = {}
            if snapshots:
                for path, backup in snapshots[-1].backups.items():
                    backups[path] = self._carry(session_id, path, backup, snapshots)
            text = short_name(plain_text(label or ""), LABEL_LIMIT) or None
            item = snapshot_item(message_id, backups, False, iso_timestamp(self.clock()), text)
            self.sessions.append(session_id, cwd, [item])
            return self._checkpoint(self._read(session_id), message_id)

    def before_change(self, session_id: str, path: Path) -> None:
        """
        Call before a file tool writes, edits, creates or deletes ``path`` (absolute). The first
        time within the current checkpoint, its content is saved as a new backup version (or
        "did not exist" is recorded: a file the agent creates) and the checkpoint's snapshot is
        updated in the transcript. Nothing happens without a checkpoint, for a path the current
        one already tracks, or for something that is not a regular file (a directory).
        """
        key = os.path.normpath(os.fspath(path))
        if not os.path.isabs(key) or "\0" in key:
            raise ValueError(f"path must be absolute, got {os.fspath(path)!r}")
        with self._lock:
            try:
                parsed = self._read(session_id)
            except UnknownSession:
                return
            current = self._latest(parsed)
            if current is None or key in current.backups:
                return
            with self._exclusive(session_id):
                parsed = self._read(session_id)  # another process may have written meanwhile
                current = self._latest(parsed)
                if current is None or key in current.backups:
                    return
                kind = _is_file(key)
                if kind is None:
                    return
                snapshots = list(parsed.fold.snapshots.values())
                version = self._next_version(session_id, key, snapshots)
                if kind:
                    backup = self._save(session_id, key, version)
                else:
                    backup = Backup(None, version, iso_timestamp(self.clock()))
                backups = {**current.backups, key: backup}
                self._append(session_id, parsed, current,
                             [snapshot_item(current.message_id, backups, True, iso_timestamp(self.clock()))])

    def after_change(self, session_id: str, path: Path) -> None:
        """Call after the change (optional): nothing to record, line counts are computed when asked."""

    # -------------------------------------------------------------- reading

    def checkpoints(self, session_id: str) -> list[CheckpointInfo]:
        """The session's checkpoints, newest first, each with the files changed while it was the latest."""
        snapshots, labels = self._snapshots(session_id)
        found = []
        for index, snapshot in enumerate(snapshots):
            changes = self._changes(session_id, snapshots, index)
            found.append(CheckpointInfo(
                snapshot.message_id, labels[index], snapshot.created_at, [c.path for c in changes],
                sum(c.additions for c in changes), sum(c.deletions for c in changes)))
        found.reverse()
        return found

    def file_changes(self, session_id: str, checkpoint_id: str | None = None) -> list[FileChange]:
        """The files changed in one checkpoint (default: the latest), with change types and line counts."""
        snapshots, _labels = self._snapshots(session_id)
        if not snapshots:
            if checkpoint_id is None:
                return []
            raise UnknownCheckpoint(checkpoint_id)
        return self._changes(session_id, snapshots, self._index(snapshots, checkpoint_id))

    def diff(self, session_id: str, path: str) -> FileDiff:
        """
        ``path`` (absolute; ``file://`` URIs and paths relative to the checkpoint's cwd are
        accepted) at the start of the latest checkpoint (``old_text`` None: it did not exist)
        and on disk now (``new_text`` empty when it does not exist). Bytes that are not UTF-8
        are replaced with U+FFFD. NotTracked when no checkpoint tracks it.
        """
        snapshots, _labels = self._snapshots(session_id)
        key = self._key(path, snapshots)
        backup = self._tracked(key, snapshots)
        if backup is None:
            raise NotTracked([path])
        old = None if backup.backup_file_name is None else self._backup_bytes(session_id, backup.backup_file_name)
        new = _read_file(key) if key is not None else None
        return FileDiff(path, None if old is None else old.decode("utf-8", "replace"),
                        "" if new is None else new.decode("utf-8", "replace"))

    # -------------------------------------------------------------- reverting

    def revert_paths(self, session_id: str, paths: list[str]) -> list[str]:
        """
        Restore each path to its state at the start of the latest checkpoint (delete it when it
        did not exist then: created by the agent). All or nothing: NotTracked names the paths no
        checkpoint tracks, and nothing is changed. Returns the paths as given (once each).
        """
        with self._mutating(session_id) as parsed:
            snapshots = list(parsed.fold.snapshots.values())
            resolved: list[tuple[str, str, Backup]] = []
            missing: list[str] = []
            for path in dict.fromkeys(paths):
                key = self._key(path, snapshots)
                backup = self._tracked(key, snapshots)
                if key is None or backup is None:
                    missing.append(path)
                else:
                    resolved.append((path, key, backup))
            if missing:
                raise NotTracked(missing)
            for _path, key, backup in resolved:
                self._restore(session_id, key, backup)
            return [path for path, _key, _backup in resolved]

    def revert_to(self, session_id: str, checkpoint_id: str | None, scope: str) -> RevertResult:
        """
        Go back to the start of a checkpoint (None: the earliest). ``Code``: every tracked file
        returns to its state then (files that did not exist are deleted); ``Conversation``: the
        transcript loses that user message and everything after it; ``CodeAndConversation``:
        both. NoCheckpoints, UnknownCheckpoint, InvalidScope.
        """
        if scope not in SCOPES:
            raise InvalidScope(scope)
        with self._mutating(session_id) as parsed:
            snapshots = list(parsed.fold.snapshots.values())
            if not snapshots:
                raise NoCheckpoints(session_id)
            index = self._index(snapshots, checkpoint_id)
            reverted: list[str] = []
            deleted: list[str] = []
            if scope in (SCOPE_CODE, SCOPE_BOTH):
                for path in dict.fromkeys(p for s in snapshots for p in s.backups):
                    backup = self._state_at(path, snapshots, index)
                    if backup is not None and self._restore(session_id, path, backup):
                        reverted.append(path)
                        if backup.backup_file_name is None:
                            deleted.append(path)
            removed = 0
            if scope in (SCOPE_CONVERSATION, SCOPE_BOTH):
                removed = self._rewind(session_id, parsed, snapshots, index)
            return RevertResult(snapshots[index].message_id, scope, reverted, deleted, removed)

    # -------------------------------------------------------------- paths and the transcript

    def history_dir(self, session_id: str) -> Path:
        """``<home>/file-history/<session_id>``."""
        self._check_id(session_id)
        return self.file_history / session_id

    def backup_path(self, session_id: str, name: str) -> Path:
        """Where a backup of the session is kept."""
        return self.history_dir(session_id) / name

    @staticmethod
    def _check_id(session_id: str) -> None:
        if not valid_session_id(session_id):
            raise InvalidSessionId(session_id)

    @contextmanager
    def _exclusive(self, session_id: str) -> Iterator[None]:
        """``flock`` on the session's history folder (created, 0700), for writers in other processes."""
        directory = self.history_dir(session_id)
        self.file_history.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def _mutating(self, session_id: str) -> Iterator[_Parsed]:
        """Both locks, and the transcript read under them (UnknownSession before any folder is made)."""
        with self._lock:
            self._read(session_id)
            with self._exclusive(session_id):
                yield self._read(session_id)

    def _read(self, session_id: str) -> _Parsed:
        """The session's transcript folded (read on from the cached offset when it only grew); call locked."""
        paths = self.sessions.find(session_id)
        if not paths:
            self._parsed.pop(session_id, None)
            raise UnknownSession(session_id)
        path = paths[0] if len(paths) == 1 else max(paths, key=lambda p: p.stat().st_mtime_ns)
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            self._parsed.pop(session_id, None)
            raise UnknownSession(session_id) from None
        with handle:
            st = os.fstat(handle.fileno())
            parsed = self._parsed.get(session_id)
            if parsed is not None and parsed.path == path and parsed.ino == st.st_ino:
                if parsed.size == st.st_size and parsed.mtime_ns == st.st_mtime_ns:
                    return parsed
                if st.st_size < parsed.offset or not self._same_tail(handle, parsed):
                    parsed = None
            else:
                parsed = None
            if parsed is None:
                parsed = _Parsed(path)
            handle.seek(parsed.offset)
            rest = b""
            while chunk := handle.read(READ_CHUNK):
                data = rest + chunk
                end = data.rfind(b"\n")
                if end < 0:
                    rest = data
                    continue
                for raw in data[:end].split(b"\n"):
                    parsed.fold.line(raw)
                parsed.offset += end + 1
                parsed.tail = (parsed.tail + data[: end + 1])[-TAIL_CHECK:]
                rest = data[end + 1:]
            parsed.ino, parsed.size, parsed.mtime_ns = st.st_ino, st.st_size, st.st_mtime_ns
        self._parsed[session_id] = parsed
        return parsed

    @staticmethod
    def _same_tail(handle: Any, parsed: _Parsed) -> bool:
        handle.seek(parsed.offset - len(parsed.tail))
        return bool(handle.read(len(parsed.tail)) == parsed.tail)

    def _snapshots(self, session_id: str) -> tuple[list[Snapshot], list[str]]:
        """The checkpoints in the order they began, and their labels."""
        with self._lock:
            parsed = self._read(session_id)
            snapshots = list(parsed.fold.snapshots.values())
            return snapshots, [parsed.fold.label_of(s) for s in snapshots]

    @staticmethod
    def _latest(parsed: _Parsed) -> Snapshot | None:
        snapshots = parsed.fold.snapshots
        return snapshots[next(reversed(snapshots))] if snapshots else None

    def _checkpoint(self, parsed: _Parsed, message_id: str) -> Checkpoint:
        snapshot = parsed.fold.snapshots[message_id]
        return Checkpoint(snapshot.message_id, parsed.fold.label_of(snapshot), snapshot.created_at, snapshot.cwd,
                          list(snapshot.backups))

    def _append(self, session_id: str, parsed: _Parsed, snapshot: Snapshot, items: list[dict[str, Any]]) -> None:
        """Append items (stamped like SessionStore.append) to the transcript ``parsed`` was read from."""
        stamp = {"sessionId": session_id, "timestamp": iso_timestamp(self.clock())}
        if snapshot.cwd:
            stamp["cwd"] = snapshot.cwd
        data = b"".join(_json_line({**stamp, **item}) for item in items)
        try:
            fd = os.open(parsed.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UnknownSession(session_id) from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    @staticmethod
    def _index(snapshots: list[Snapshot], checkpoint_id: str | None) -> int:
        if checkpoint_id is None:
            return 0
        for index, snapshot in enumerate(snapshots):
            if snapshot.message_id == checkpoint_id:
                return index
        raise UnknownCheckpoint(checkpoint_id)

    @staticmethod
    def _key(path: str, snapshots: list[Snapshot]) -> str | None:
        """The tracked-file key of a path as a client gives it (None: cannot be one)."""
        text = path
        if text.startswith("file://"):
            text = unquote(urlsplit(text).path)
        if not text or "\0" in text:
            return None
        if not os.path.isabs(text):
            cwd = snapshots[-1].cwd if snapshots else None
            if not cwd:
                return None
            text = os.path.join(cwd, text)
        return os.path.normpath(text)

    @staticmethod
    def _tracked(key: str | None, snapshots: list[Snapshot]) -> Backup | None:
        """The file's entry in the latest checkpoint that tracks it."""
        if key is None:
            return None
        for snapshot in reversed(snapshots):
            backup = snapshot.backups.get(key)
            if backup is not None:
                return backup
        return None

    @staticmethod
    def _state_at(path: str, snapshots: list[Snapshot], index: int) -> Backup | None:
        """The file's state at the start of checkpoint ``index``: its entry there, or its first one after."""
        for snapshot in snapshots[index:]:
            backup = snapshot.backups.get(path)
            if backup is not None:
                return backup
        return None

    # -------------------------------------------------------------- backups

    def _next_version(self, session_id: str, path: str, snapshots: list[Snapshot], at_least: int = 0) -> int:
        """One more than any version of ``path`` recorded or on disk: a backup name is never reused."""
        known = [b.version for s in snapshots for p, b in s.backups.items() if p == path]
        version = max([at_least, *known]) + 1
        while self.backup_path(session_id, backup_name(path, version)).exists():
            version += 1
        return version

    def _save(self, session_id: str, path: str, version: int) -> Backup:
        name = backup_name(path, version)
        _copy_atomic(path, self.backup_path(session_id, name))
        return Backup(name, version, iso_timestamp(self.clock()))

    def _carry(self, session_id: str, path: str, backup: Backup, snapshots: list[Snapshot]) -> Backup:
        """The entry of a tracked file in a new checkpoint: the same one while the file is unchanged."""
        kind = _is_file(path)
        if kind is None:
            return backup
        if not kind:
            if backup.backup_file_name is None:
                return backup
            return Backup(None, backup.version + 1, iso_timestamp(self.clock()))
        if backup.backup_file_name is not None and _same_content(
                path, self.backup_path(session_id, backup.backup_file_name)):
            return backup
        return self._save(session_id, path, self._next_version(session_id, path, snapshots, backup.version))

    def _backup_bytes(self, session_id: str, name: str) -> bytes:
        data = _read_file(self.backup_path(session_id, name))
        if data is None:
            raise MissingBackup(name)
        return data

    def _restore(self, session_id: str, path: str, backup: Backup) -> bool:
        """Put ``path`` back in the state ``backup`` records; False when it already is."""
        if backup.backup_file_name is None:
            if os.path.isdir(path) and not os.path.islink(path):
                return False
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                return False
            return True
        source = self.backup_path(session_id, backup.backup_file_name)
        if not source.is_file():
            raise MissingBackup(backup.backup_file_name)
        target = os.path.realpath(path) if os.path.islink(path) else path
        if _is_file(target) and _same_content(target, source):
            return False
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _copy_atomic(source, target)
        return True

    # -------------------------------------------------------------- changes and line counts

    def _changes(self, session_id: str, snapshots: list[Snapshot], index: int) -> list[FileChange]:
        """The files whose content differs between checkpoint ``index``'s start and the next one's (or the disk)."""
        changes = []
        later = snapshots[index + 1:]
        for path, backup in snapshots[index].backups.items():
            after: State = DISK
            for snapshot in later:
                found = snapshot.backups.get(path)
                if found is not None:
                    after = found
                    break
            change = self._compare(session_id, path, backup, after)
            if change is not None:
                changes.append(FileChange(path, *change))
        return changes

    def _identity(self, session_id: str, path: str, state: State) -> tuple[Any, ...] | None:
        """What a state's content depends on (None: a backup file that is missing)."""
        if isinstance(state, _Disk):
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return ("absent",)
            if not stat.S_ISREG(st.st_mode):
                return ("absent",)
            return ("disk", path, st.st_ino, st.st_mtime_ns, st.st_size)
        if state.backup_file_name is None:
            return ("absent",)
        try:
            st = os.stat(self.backup_path(session_id, state.backup_file_name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ("backup", session_id, state.backup_file_name, st.st_ino, st.st_mtime_ns, st.st_size)

    def _content(self, session_id: str, path: str, state: State) -> bytes | None:
        if isinstance(state, _Disk):
            return _read_file(path)
        if state.backup_file_name is None:
            return None
        return _read_file(self.backup_path(session_id, state.backup_file_name))

    def _compare(self, session_id: str, path: str, before: Backup, after: State) -> tuple[str, int, int] | None:
        """(change type, additions, deletions) from ``before`` to ``after``; None when the content is the same."""
        if isinstance(after, Backup) and after.backup_file_name == before.backup_file_name:
            return None
        first, second = self._identity(session_id, path, before), self._identity(session_id, path, after)
        if first is None or second is None:
            return None  # a backup is missing: nothing to say about this file
        if first == second:
            return None
        key = (first, second)
        with self._stats_lock:
            if key in self._stats:
                self._stats.move_to_end(key)
                return self._stats[key]
        old, new = self._content(session_id, path, before), self._content(session_id, path, after)
        result: tuple[str, int, int] | None
        if old == new:
            result = None
        else:
            kind = "created" if old is None else "deleted" if new is None else "modified"
            result = (kind, *line_stats(old, new))
        with self._stats_lock:
            self._stats[key] = result
            while len(self._stats) > STATS_CACHE:
                self._stats.popitem(last=False)
        return result

    # -------------------------------------------------------------- conversation

    def _rewind(self, session_id: str, parsed: _Parsed, snapshots: list[Snapshot], index: int) -> int:
        """Rewrite the transcript without checkpoint ``index``'s message and what follows; the messages removed."""
        target = snapshots[index].message_id
        earlier = {s.message_id for s in snapshots[:index]}
        with open(parsed.path, "rb") as handle:
            original = handle.read()
        lines = original.splitlines(keepends=True)
        cut = len(lines)
        for number, raw in enumerate(lines):
            if b"file-history-snapshot" not in raw and b'"user"' not in raw:
                continue
            item = loads(raw)
            if item is not None and target in (snapshot_message_id(item), user_message_id(item)):
                cut = number
                break
        kept = [raw if raw.endswith(b"\n") else raw + b"\n" for raw in lines[:cut]]
        removed = 0
        for raw in lines[cut:]:
            item = loads(raw)
            if item is None:
                continue
            kind = item.get("type")
            if kind in TITLE_TYPES or (kind == SNAPSHOT_TYPE and snapshot_message_id(item) in earlier):
                kept.append(raw if raw.endswith(b"\n") else raw + b"\n")
            elif is_conversation_message(item):
                removed += 1
        if index > 0:
            previous = snapshots[index - 1]
            merged = dict(previous.backups)
            for snapshot in snapshots[index:]:
                for path, backup in snapshot.backups.items():
                    merged.setdefault(path, backup)
            if merged != dict(previous.backups):
                stamp = {"sessionId": session_id, "timestamp": iso_timestamp(self.clock())}
                if previous.cwd:
                    stamp["cwd"] = previous.cwd
                item = snapshot_item(previous.message_id, merged, True, stamp["timestamp"])
                kept.append(_json_line({**stamp, **item}))
        saved = self.history_dir(session_id) / f"{parsed.path.name}.bak-{int(self.clock() * 1000)}"
        atomic_write(saved, original, mode=0o600)
        atomic_write(parsed.path, b"".join(kept), mode=0o600)
        self._parsed.pop(session_id, None)
        return removed
