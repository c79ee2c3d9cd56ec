# -*- test-case-name: tests.checkpoints.test_routes -*-
"""
File-change endpoints (acp-codebuddy.md §2.9, webui-contract.md §8):

- ``GET /api/v1/file-changes/diff?path=``, ``GET /api/v1/file-changes/checkpoints``,
  ``POST /api/v1/file-changes/revert`` (the spec's forms);
- ``POST /internal/file-changes/diff|checkpoints|revert`` with JSON bodies (what the official
  Web UI calls), mounted outside ``/api`` by :class:`codebuddy.web.root.Mount`.

Both answer the same fields at the top level *and* inside ``data`` (the spec shows them bare;
the Web UI reads ``data ?? body``). Each call is about one session: ``sessionId`` (query or
body) or the daemon's current session. The one difference: a file that did not exist at the
checkpoint has ``oldText: ""`` in the spec's form (always a string) and ``oldText: null`` in
the Web UI's (its "new file" mark).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred

from codebuddy.checkpoints.models import (
    SCOPE_CODE,
    SCOPES,
    CheckpointInfo,
    FileDiff,
    InvalidScope,
    MissingBackup,
    NoCheckpoints,
    NotTracked,
    RevertResult,
    UnknownCheckpoint,
)
from codebuddy.checkpoints.store import CheckpointStore
from codebuddy.sessions.store import InvalidSessionId, UnknownSession, checked_session_id, session_api_error
from codebuddy.web.errors import ApiError
from codebuddy.web.json import json_route, omit_if_default

__all__ = ["CheckpointRoutes", "InternalCheckpointRoutes"]

TAGS = ("File Changes",)
RunBlocking = Callable[..., Deferred[Any]]
NOT_TRACKED = "File not tracked in checkpoint"
_SESSION_DOC = "The session (default: the daemon's current session)"
_COMMON_ERRORS = ("BAD_REQUEST", "SESSION_NOT_FOUND")


# --------------------------------------------------------------------------- requests


@attrs.frozen
class DiffQuery:
    """Which file, of which session."""

    path: str | None = attrs.field(default=None, metadata={"doc": "The file's absolute path (as in the checkpoint)"})
    session_id: str | None = attrs.field(default=None, metadata={"doc": _SESSION_DOC})


@attrs.frozen
class SessionQuery:
    """Which session."""

    session_id: str | None = attrs.field(default=None, metadata={"doc": _SESSION_DOC})


@attrs.frozen
class RevertRequest:
    """
    ``{"paths": [...]}``: those files; ``{"checkpointId", "scope"?}``: back to that checkpoint;
    ``{}`` (or only ``scope``): back to the earliest checkpoint.
    """

    paths: list[str] | None = attrs.field(default=None, metadata={
        "doc": "Files to restore to their state at the start of the latest checkpoint (created ones are deleted)"})
    checkpoint_id: str | None = attrs.field(default=None, metadata={
        "doc": "The checkpoint (user message id) to go back to; absent: the earliest"})
    scope: str | None = attrs.field(default=None, metadata={
        "doc": "Code (default: files only), Conversation (the transcript only) or CodeAndConversation"})
    session_id: str | None = attrs.field(default=None, metadata={"doc": _SESSION_DOC})


# --------------------------------------------------------------------------- responses


@attrs.frozen
class TextDiff:
    """A tracked file at the start of the latest checkpoint and now."""

    path: str = attrs.field(metadata={"doc": "The path as asked"})
    old_text: str = attrs.field(metadata={"doc": "Its content then; empty when it did not exist (created since)"})
    new_text: str = attrs.field(metadata={"doc": "Its content now; empty when it does not exist"})


@attrs.frozen
class CheckpointList:
    """The session's checkpoints, newest first."""

    checkpoints: list[CheckpointInfo]


@attrs.frozen
class RevertResponse:
    """What was reverted (the checkpoint fields only for a revert to a checkpoint)."""

    success: bool
    reverted_files: list[str] = attrs.field(metadata={
        "doc": "By paths: the paths exactly as sent. To a checkpoint: the files whose content was restored or "
               "removed"})
    checkpoint_id: str | None = attrs.field(default=None, metadata={**omit_if_default(), "doc": "The checkpoint"})
    scope: str | None = attrs.field(default=None, metadata={**omit_if_default(), "doc": "The scope applied"})
    deleted_files: list[str] | None = attrs.field(default=None, metadata={
        **omit_if_default(), "doc": "Reverted files that were removed (they did not exist at the checkpoint)"})
    removed_messages: int | None = attrs.field(default=None, metadata={
        **omit_if_default(), "doc": "User and assistant messages taken out of the transcript"})

    @classmethod
    def of(cls, result: RevertResult) -> RevertResponse:
        return cls(True, result.reverted_files, result.checkpoint_id, result.scope, result.deleted_files,
                   result.removed_messages)


# --------------------------------------------------------------------------- handlers


class _FileChanges:
    """What both forms share: session choice, the store's calls in a thread, error mapping."""

    def __init__(self, store: CheckpointStore, run_blocking: RunBlocking, current_session: str,
                 busy: Callable[[str], bool] = lambda session_id: False) -> None:
        self.store = store
        self.run_blocking = run_blocking
        self.current_session = current_session
        self.busy = busy

    def _idle(self, session_id: str) -> None:
        """A revert while an agent run works on the session would race its edits and transcript: 409."""
        if self.busy(session_id):
            raise ApiError("CONFLICT", f"An agent run is active on session {session_id}; cancel it "
                           "(POST /api/v1/runs/:runId/cancel) or wait for it to end, then revert",
                           {"sessionId": session_id})

    def _session(self, session_id: str | None) -> str:
        return checked_session_id(session_id or self.current_session, "sessionId")

    async def _call(self, session_id: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self.run_blocking(fn, session_id, *args)
        except (UnknownSession, InvalidSessionId) as exc:
            raise session_api_error(exc, session_id) from None
        except NotTracked as exc:
            raise ApiError("NOT_FOUND", f"{NOT_TRACKED}: {', '.join(exc.paths)[:500]}", {"paths": exc.paths}) from None
        except UnknownCheckpoint as exc:
            raise ApiError("NOT_FOUND", f"Checkpoint {str(exc)[:200]} not found") from None
        except NoCheckpoints:
            raise ApiError("BAD_REQUEST", f"Session {session_id} has no checkpoints") from None
        except MissingBackup as exc:
            raise ApiError("CONFLICT", f"The backup {exc} is missing from the session's file history") from None

    async def _diff(self, path: str | None, session_id: str | None) -> FileDiff:
        if not path:
            raise ApiError("PATH_REQUIRED", "path is required", [{"field": "path", "message": "missing or empty"}])
        session = self._session(session_id)
        diff: FileDiff = await self._call(session, self.store.diff, path)
        return diff

    async def _checkpoints(self, session_id: str | None) -> CheckpointList:
        session = self._session(session_id)
        return CheckpointList(await self._call(session, self.store.checkpoints))

    async def _revert(self, body: RevertRequest) -> RevertResponse:
        if body.paths is not None:
            if body.checkpoint_id is not None:
                raise ApiError("BAD_REQUEST", "Give paths or checkpointId, not both",
                               [{"field": "paths", "message": "not with checkpointId"}])
            if not body.paths:
                raise ApiError("BAD_REQUEST", "paths is empty", [{"field": "paths", "message": "no path"}])
            session = self._session(body.session_id)
            self._idle(session)
            reverted = await self._call(session, self.store.revert_paths, list(body.paths))
            return RevertResponse(True, reverted)
        scope = body.scope or SCOPE_CODE
        if scope not in SCOPES:
            raise ApiError("BAD_REQUEST", f"scope must be one of {', '.join(SCOPES)}, not {scope[:50]!r}",
                           [{"field": "scope", "message": f"one of {', '.join(SCOPES)}"}])
        session = self._session(body.session_id)
        self._idle(session)
        try:
            result = await self._call(session, self.store.revert_to, body.checkpoint_id, scope)
        except InvalidScope:  # pragma: no cover - checked above
            raise ApiError("BAD_REQUEST", f"invalid scope {scope!r}") from None
        return RevertResponse.of(result)


class CheckpointRoutes(_FileChanges):
    """``/api/v1/file-changes/*``: the spec's forms."""

    app = Klein()

    @json_route(app, "GET", "/file-changes/diff", query=DiffQuery, response=TextDiff, top_level=True, tags=TAGS,
                errors=(*_COMMON_ERRORS, "PATH_REQUIRED", "NOT_FOUND", "CONFLICT"), summary="A tracked file's diff")
    async def file_diff(self, request: Any, query: DiffQuery) -> TextDiff:
        """
        The file's content at the start of the latest checkpoint (``oldText``; empty when it
        did not exist) and now (``newText``; empty when it does not exist). 404 ``NOT_FOUND``
        for a file no checkpoint tracks.
        """
        diff = await self._diff(query.path, query.session_id)
        return TextDiff(diff.path, diff.old_text or "", diff.new_text)

    @json_route(app, "GET", "/file-changes/checkpoints", query=SessionQuery, response=CheckpointList,
                top_level=True, tags=TAGS, errors=_COMMON_ERRORS, summary="Checkpoints available for rollback")
    async def list_checkpoints(self, request: Any, query: SessionQuery) -> CheckpointList:
        """
        One checkpoint per user message, newest first: its id (the message's), label (its text),
        ``createdAt`` (ms), the files changed while it was the latest, and their added and
        removed lines.
        """
        return await self._checkpoints(query.session_id)

    @json_route(app, "POST", "/file-changes/revert", body=RevertRequest, response=RevertResponse, top_level=True,
                tags=TAGS, errors=(*_COMMON_ERRORS, "NOT_FOUND", "CONFLICT"), summary="Revert changes")
    async def revert_changes(self, request: Any, body: RevertRequest) -> RevertResponse:
        """
        ``{"paths": [...]}`` restores those files to their state at the start of the latest
        checkpoint (files created since are deleted); ``{"checkpointId", "scope"}`` goes back to
        a checkpoint: ``Code`` (default) restores every tracked file, ``Conversation`` removes
        that message and what follows from the transcript, ``CodeAndConversation`` both; ``{}``
        goes back to the earliest checkpoint (``Code``). 404 for an unknown path or checkpoint,
        400 when the session has no checkpoints.
        """
        return await self._revert(body)


@attrs.frozen
class DiffBody:
    """Which file, of which session."""

    path: str | None = None
    session_id: str | None = attrs.field(default=None, metadata={"doc": _SESSION_DOC})


@attrs.frozen
class SessionBody:
    """Which session."""

    session_id: str | None = attrs.field(default=None, metadata={"doc": _SESSION_DOC})


class InternalCheckpointRoutes(_FileChanges):
    """``/internal/file-changes/*``: the Web UI's POST forms (mounted by ``Mount(guard, "/internal", ...)``)."""

    app = Klein()

    @json_route(app, "POST", "/file-changes/diff", body=DiffBody, response=FileDiff, top_level=True, tags=TAGS,
                errors=(*_COMMON_ERRORS, "PATH_REQUIRED", "NOT_FOUND", "CONFLICT"), summary="A tracked file's diff")
    async def internal_diff(self, request: Any, body: DiffBody) -> FileDiff:
        """As ``GET /api/v1/file-changes/diff``, but ``oldText`` is null for a file that did not exist."""
        return await self._diff(body.path, body.session_id)

    @json_route(app, "POST", "/file-changes/checkpoints", body=SessionBody, response=CheckpointList,
                top_level=True, tags=TAGS, errors=_COMMON_ERRORS, summary="Checkpoints available for rollback")
    async def internal_checkpoints(self, request: Any, body: SessionBody) -> CheckpointList:
        """As ``GET /api/v1/file-changes/checkpoints``."""
        return await self._checkpoints(body.session_id)

    @json_route(app, "POST", "/file-changes/revert", body=RevertRequest, response=RevertResponse, top_level=True,
                tags=TAGS, errors=(*_COMMON_ERRORS, "NOT_FOUND", "CONFLICT"), summary="Revert changes")
    async def internal_revert(self, request: Any, body: RevertRequest) -> RevertResponse:
        """As ``POST /api/v1/file-changes/revert``."""
        return await self._revert(body)
