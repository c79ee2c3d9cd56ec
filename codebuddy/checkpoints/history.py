# -*- test-case-name: tests.checkpoints.test_history -*-
"""
File history as CodeBuddy records it (acp-codebuddy.md §2.9): backup names, the
``file-history-snapshot`` transcript items, their fold into checkpoints, and line counts.

Pure functions and values, no I/O. :mod:`codebuddy.checkpoints.store` does the file work.

**Backups** are files ``<home>/file-history/<sessionId>/<h>@v<n>`` where ``<h>`` is the first
16 hex digits of the SHA-256 of the file's absolute path and ``<n>`` a version (1 is the
content before the agent's first change).

**Snapshot items** (one line of the session's transcript each)::

    {"type": "file-history-snapshot", "messageId": "<user message id>",
     "snapshot": {"messageId": "<id>", "timestamp": "2025-06-01T10:00:00.000Z",
                  "trackedFileBackups": {"/abs/path": {"backupFileName": "<h>@v1" | null,
                                                       "version": 1, "backupTime": "<ISO>"}}},
     "isSnapshotUpdate": false, "label": "<the message, shortened>",
     "sessionId": "...", "cwd": "...", "timestamp": "<ISO>"}

A snapshot with ``isSnapshotUpdate: false`` starts a checkpoint (one per user message); an
update replaces the ``trackedFileBackups`` of the checkpoint with the same ``messageId``. Each
entry is the file's state when the checkpoint began: a backup file, or ``null`` when the file
did not exist then (a file the agent created). Like Claude Code's file history, which
CodeBuddy's follows, a new checkpoint carries every file tracked by the previous one, so a
snapshot describes the whole tracked state at the start of its message. ``label`` is ours
(CodeBuddy ignores it); without it the label is the text of the user message whose ``id``
(or ``uuid``) is the ``messageId``.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs

from codebuddy.sessions.transcript import (
    is_conversation_message,
    loads,
    plain_text,
    short_name,
    timestamp_ms,
)

__all__ = [
    "SNAPSHOT_TYPE",
    "Backup",
    "Fold",
    "Snapshot",
    "backup_name",
    "line_stats",
    "path_hash",
    "snapshot_item",
    "valid_backup_name",
]

SNAPSHOT_TYPE = "file-history-snapshot"
LABEL_LIMIT = 80
# Above this many bytes on either side, lines are counted as a multiset difference (moves
# are not seen) instead of with difflib, whose matching is quadratic in the worst case.
DIFF_LIMIT = 1 << 20

_BACKUP_NAME = re.compile(r"[^/\\\0]+")


def path_hash(path: str) -> str:
    """The first 16 hex digits of the SHA-256 of ``path`` (UTF-8; undecodable bytes kept as they were)."""
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def backup_name(path: str, version: int) -> str:
    """``<path_hash(path)>@v<version>``."""
    return f"{path_hash(path)}@v{version}"


def valid_backup_name(name: str) -> bool:
    """A plain file name (no separators, not ``.``/``..``, not hidden): never a way out of the history folder."""
    return bool(_BACKUP_NAME.fullmatch(name)) and not name.startswith(".")


@attrs.frozen
class Backup:
    """One entry of ``trackedFileBackups``: the file's state at a checkpoint's start."""

    backup_file_name: str | None = attrs.field(metadata={"doc": "null: the file did not exist"})
    version: int
    backup_time: str

    def to_json(self) -> dict[str, Any]:
        return {"backupFileName": self.backup_file_name, "version": self.version, "backupTime": self.backup_time}

    @classmethod
    def from_json(cls, value: Any) -> Backup | None:
        """The entry, or None when it is malformed (a bad name, a non-integer version...)."""
        if not isinstance(value, dict):
            return None
        name = value.get("backupFileName")
        if name is not None and not (isinstance(name, str) and valid_backup_name(name)):
            return None
        version = value.get("version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            return None
        when = value.get("backupTime")
        return cls(name, version, when if isinstance(when, str) else "")


@attrs.frozen
class Snapshot:
    """A checkpoint as the transcript records it."""

    message_id: str
    created_at: int = attrs.field(metadata={"doc": "ms since the epoch"})
    cwd: str | None
    label: str | None = attrs.field(metadata={"doc": "The snapshot's own label, if it has one"})
    backups: Mapping[str, Backup] = attrs.field(metadata={"doc": "absolute path -> its state at the start"})


def snapshot_item(message_id: str, backups: Mapping[str, Backup], update: bool, timestamp: str,
                  label: str | None = None) -> dict[str, Any]:
    """The transcript item recording ``backups`` for the checkpoint ``message_id``."""
    item: dict[str, Any] = {
        "type": SNAPSHOT_TYPE,
        "messageId": message_id,
        "snapshot": {
            "messageId": message_id,
            "trackedFileBackups": {path: backup.to_json() for path, backup in backups.items()},
            "timestamp": timestamp,
        },
        "isSnapshotUpdate": update,
    }
    if label is not None:
        item["label"] = label
    return item


def _message_id(item: dict[str, Any]) -> str | None:
    snapshot = item.get("snapshot")
    for value in (snapshot.get("messageId") if isinstance(snapshot, dict) else None, item.get("messageId")):
        if isinstance(value, str) and value:
            return value
    return None


def snapshot_message_id(item: dict[str, Any]) -> str | None:
    """The ``messageId`` of a ``file-history-snapshot`` item, None for any other item."""
    if item.get("type") != SNAPSHOT_TYPE:
        return None
    return _message_id(item)


def user_message_id(item: dict[str, Any]) -> str | None:
    """The ``id`` (or ``uuid``) of a user message item, None for any other item."""
    if not is_conversation_message(item) or item.get("role") != "user":
        return None
    for key in ("id", "uuid"):
        value = item.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _backups(item: dict[str, Any]) -> dict[str, Backup]:
    snapshot = item.get("snapshot")
    tracked = snapshot.get("trackedFileBackups") if isinstance(snapshot, dict) else None
    cwd = item.get("cwd")
    found: dict[str, Backup] = {}
    if not isinstance(tracked, dict):
        return found
    for path, value in tracked.items():
        if not path or "\0" in path:
            continue
        if not os.path.isabs(path):
            if not (isinstance(cwd, str) and os.path.isabs(cwd)):
                continue
            path = os.path.join(cwd, path)
        backup = Backup.from_json(value)
        if backup is not None:
            found[os.path.normpath(path)] = backup
    return found


class Fold:
    """
    Folds transcript lines into the session's checkpoints (in the order they began) and the
    labels of user messages. Only lines that can matter are decoded.
    """

    def __init__(self) -> None:
        self.snapshots: dict[str, Snapshot] = {}
        self.labels: dict[str, str] = {}

    def line(self, raw: bytes) -> None:
        if b"file-history-snapshot" in raw:
            item = loads(raw)
            if item is not None and item.get("type") == SNAPSHOT_TYPE:
                self.snapshot(item)
                return
        if b'"user"' in raw:
            item = loads(raw)
            if item is None:
                return
            message_id = user_message_id(item)
            if message_id is not None:
                text = plain_text(item.get("content"))
                if text:
                    self.labels[message_id] = short_name(text, LABEL_LIMIT)

    def snapshot(self, item: dict[str, Any]) -> None:
        message_id = _message_id(item)
        if message_id is None:
            return
        backups = _backups(item)
        label = item.get("label")
        label = short_name(label, LABEL_LIMIT) if isinstance(label, str) and label.strip() else None
        existing = self.snapshots.get(message_id)
        if existing is not None:
            self.snapshots[message_id] = attrs.evolve(existing, backups=backups, label=label or existing.label)
            return
        snapshot = item.get("snapshot")
        created = timestamp_ms(snapshot.get("timestamp") if isinstance(snapshot, dict) else None)
        if created is None:
            created = timestamp_ms(item.get("timestamp")) or 0
        cwd = item.get("cwd")
        self.snapshots[message_id] = Snapshot(message_id, created, cwd if isinstance(cwd, str) and cwd else None,
                                              label, backups)

    def label_of(self, snapshot: Snapshot) -> str:
        """The snapshot's own label, else its user message's text (shortened), else ``""``."""
        return snapshot.label or self.labels.get(snapshot.message_id, "")


def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8", "replace").splitlines()


def line_stats(old: bytes | None, new: bytes | None) -> tuple[int, int]:
    """
    (additions, deletions): the lines a line diff from ``old`` to ``new`` adds and removes
    (``None``: no file, no lines). Binary content (a NUL byte) counts 0 lines. Up to
    ``DIFF_LIMIT`` bytes a side, difflib's matching (as ``diff -u`` counts them); above, the
    multiset difference of the lines.
    """
    old = old or b""
    new = new or b""
    if old == new or b"\0" in old or b"\0" in new:
        return 0, 0
    a, b = _lines(old), _lines(new)
    if len(old) > DIFF_LIMIT or len(new) > DIFF_LIMIT:
        ca, cb = Counter(a), Counter(b)
        return sum((cb - ca).values()), sum((ca - cb).values())
    additions = deletions = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
        if tag in ("replace", "delete"):
            deletions += i2 - i1
        if tag in ("replace", "insert"):
            additions += j2 - j1
    return additions, deletions
