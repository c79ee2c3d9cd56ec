"""What the checkpoint store answers (attrs values; the routes send them as camelCase JSON) and its errors."""

from __future__ import annotations

import attrs

__all__ = [
    "SCOPES",
    "SCOPE_BOTH",
    "SCOPE_CODE",
    "SCOPE_CONVERSATION",
    "Checkpoint",
    "CheckpointInfo",
    "FileChange",
    "FileDiff",
    "InvalidScope",
    "MissingBackup",
    "NoCheckpoints",
    "NotTracked",
    "RevertResult",
    "UnknownCheckpoint",
]

SCOPE_CODE = "Code"
SCOPE_CONVERSATION = "Conversation"
SCOPE_BOTH = "CodeAndConversation"
SCOPES = (SCOPE_CODE, SCOPE_CONVERSATION, SCOPE_BOTH)


@attrs.frozen
class Checkpoint:
    """A checkpoint as :meth:`CheckpointStore.begin` made (or found) it."""

    id: str = attrs.field(metadata={"doc": "The user message's id"})
    label: str
    created_at: int = attrs.field(metadata={"doc": "Milliseconds since the epoch"})
    cwd: str | None
    tracked_files: list[str] = attrs.field(metadata={"doc": "Files whose state at its start is kept"})


@attrs.frozen
class CheckpointInfo:
    """One checkpoint of the list: the files changed while it was the latest, and their line counts."""

    id: str = attrs.field(metadata={"doc": "The id of the user message that began it"})
    label: str = attrs.field(metadata={"doc": "That message's text, shortened"})
    created_at: int = attrs.field(metadata={"doc": "Milliseconds since the epoch"})
    files: list[str] = attrs.field(metadata={
        "doc": "Absolute paths whose content differs between this checkpoint's start and the next one's "
               "(the disk for the latest)"})
    additions: int = attrs.field(metadata={"doc": "Lines added, summed over files"})
    deletions: int = attrs.field(metadata={"doc": "Lines removed, summed over files"})


@attrs.frozen
class FileChange:
    """One changed file of a checkpoint (what an ACP ``_codebuddy.ai/checkpoint`` notification lists)."""

    path: str
    change_type: str = attrs.field(metadata={"doc": "created, modified or deleted"})
    additions: int
    deletions: int


@attrs.frozen
class FileDiff:
    """A tracked file: its content at the latest checkpoint's start and now."""

    path: str = attrs.field(metadata={"doc": "The path as asked"})
    old_text: str | None = attrs.field(metadata={"doc": "null (store) when the file did not exist then"})
    new_text: str = attrs.field(metadata={"doc": "The file on disk now; empty when it does not exist"})


@attrs.frozen
class RevertResult:
    """What a revert to a checkpoint did."""

    checkpoint_id: str
    scope: str
    reverted_files: list[str] = attrs.field(metadata={"doc": "Files whose content was restored or removed"})
    deleted_files: list[str] = attrs.field(metadata={"doc": "The reverted files that were removed "
                                                            "(they did not exist at the checkpoint)"})
    removed_messages: int = attrs.field(metadata={"doc": "User and assistant messages taken out of the "
                                                         "transcript (Conversation scopes)"})


class NotTracked(LookupError):
    """No checkpoint tracks these paths."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(", ".join(paths))
        self.paths = paths


class UnknownCheckpoint(LookupError):
    """The session has no checkpoint with this id."""


class NoCheckpoints(LookupError):
    """The session has no checkpoint to revert to."""


class InvalidScope(ValueError):
    """A scope other than Code, Conversation and CodeAndConversation."""


class MissingBackup(LookupError):
    """A backup file the transcript names is not in the file history (removed by hand?)."""
