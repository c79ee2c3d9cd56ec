# -*- test-case-name: tests.sessions.test_routes -*-
"""
Session endpoints: ``/sessions``, ``/sessions/:id``, ``/sessions/:id/rename``,
``/sessions/:id/history`` and the deprecated ``/sessions/across-projects`` and
``/sessions/workspaces`` (acp-codebuddy.md §2.8).

The list is built, sorted and encoded in a thread (``run_blocking``): with 10,000 transcripts
the walk alone is 10,000 ``stat`` calls, and a cold listing parses every file. Rows come from
the store as plain dicts in wire form (the models below describe them for OpenAPI; a test
keeps both in step).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred

from codebuddy.sessions.store import (
    BASE_FIELDS,
    InvalidSessionId,
    SessionStore,
    SessionWorkspace,
    UnknownSession,
    checked_session_id,
    session_api_error,
)
from codebuddy.sessions.transcript import SessionHistory, project_id, valid_project_id
from codebuddy.web.errors import ApiError
from codebuddy.web.json import NO_CONTENT, Encoded, Result, dumps, json_route, omit_if_default

__all__ = ["SessionsRoutes"]

TAGS = ("Sessions",)
RunBlocking = Callable[..., Deferred[Any]]
MAX_NAME = 200
ALL = "*"
DEPRECATED_HEADERS = {
    "Deprecation": "true",
    "Link": '</api/v1/sessions?cwd=*>; rel="successor-version"',
}
_ID_ERRORS = ("BAD_REQUEST", "SESSION_NOT_FOUND", "PERMISSION_DENIED")


@attrs.frozen
class SessionsQuery:
    """Which sessions: ``cwd`` absent (this workspace), ``*`` (every workspace) or a path; ``projectId`` filters."""

    cwd: str | None = attrs.field(default=None, metadata={
        "doc": "Absent: the daemon's workspace (isCurrent marks its session); * : every workspace; "
               "a path (absolute, ~/..., or relative to the workspace): that workspace"})
    project_id: str | None = attrs.field(default=None, metadata={
        "doc": "Only the sessions of this projectId (the compressed cwd, e.g. home-u-app)"})


@attrs.frozen
class SessionItem:
    """One session of the list (the last four fields only when ``cwd`` is given)."""

    id: str
    name: str = attrs.field(metadata={"doc": "Last custom title, else last AI title, else the first user message"})
    created_at: int = attrs.field(metadata={"doc": "Milliseconds since the epoch (first item's timestamp)"})
    updated_at: int = attrs.field(metadata={"doc": "Milliseconds since the epoch (last item's timestamp)"})
    message_count: int = attrs.field(metadata={"doc": "User and assistant message items"})
    is_current: bool = attrs.field(metadata={"doc": "The daemon's --session-id (only without cwd)"})
    is_user_defined_title: int = attrs.field(metadata={"doc": "1 when the name comes from a rename, else 0"})
    project_id: str | None = attrs.field(default=None, metadata={**omit_if_default(), "doc": "With cwd"})
    cwd: str | None = attrs.field(default=None, metadata={**omit_if_default(), "doc": "With cwd"})
    status: str | None = attrs.field(default=None, metadata={**omit_if_default(), "doc": "With cwd: pending"})
    is_playground: bool | None = attrs.field(default=None, metadata={
        **omit_if_default(), "doc": "With cwd: the session's cwd is inside <home>/playground"})


@attrs.frozen
class SessionList:
    """Sessions with at least one message, newest ``updatedAt`` first."""

    sessions: list[SessionItem]


@attrs.frozen
class WorkspaceList:
    """Workspaces that have sessions, most recently used first."""

    workspaces: list[SessionWorkspace]


@attrs.frozen
class RenameRequest:
    """The new name."""

    name: str | None = None


class SessionsRoutes:
    """The sessions area's HTTP surface."""

    app = Klein()

    def __init__(self, store: SessionStore, run_blocking: RunBlocking, workspace: str, current_session: str) -> None:
        self.store = store
        self.run_blocking = run_blocking
        self.workspace = workspace
        self.current_session = current_session

    # -- helpers

    def _scope(self, query: SessionsQuery) -> tuple[str | None, bool, str | None]:
        """(projectId, None for all or "" for none; extended rows?; the cwd asked for) of a list query."""
        cwd = query.cwd or None
        if cwd is None:
            project: str | None = project_id(self.workspace)
            path = None
        elif cwd == ALL:
            project, path = None, None
        else:
            if "\0" in cwd:
                raise ApiError("BAD_REQUEST", "cwd must not contain NUL", [{"field": "cwd", "message": "NUL"}])
            path = os.path.normpath(os.path.join(self.workspace, os.path.expanduser(cwd)))
            project = project_id(path)
        wanted = query.project_id
        if wanted is not None:
            if not valid_project_id(wanted):
                raise ApiError("BAD_REQUEST", f"projectId {wanted!r} is not a project folder name",
                               [{"field": "projectId", "message": "contains a path separator or is . or .."}])
            if project is not None and project != wanted:
                return "", cwd is not None, path
            project = wanted
        return project, cwd is not None, path

    def _list_body(self, project: str | None, extended: bool, path: str | None, envelope: bool) -> bytes:
        """
        The encoded list: the cached JSON of each row, newest first, joined (only the current
        session's row, and rows lacking a cwd when one was asked for, are encoded again).
        """
        listed = self.store.listed(project) if project != "" else []
        listed.sort(key=attrgetter("key"), reverse=True)
        if extended:
            parts = [
                item.full if path is None or item.row["cwd"] is not None else dumps({**item.row, "cwd": path})
                for item in listed
            ]
        else:
            current = self.current_session
            parts = [
                item.base if item.row["id"] != current
                else dumps({**{key: item.row[key] for key in BASE_FIELDS}, "isCurrent": True})
                for item in listed
            ]
        body = b'{"sessions":[' + b",".join(parts) + b"]}"
        return b'{"data":' + body + b"}" if envelope else body

    def _session_id(self, session_id: str) -> str:
        return checked_session_id(session_id, "id")

    async def _call(self, session_id: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self.run_blocking(fn, session_id, *args)
        except (UnknownSession, InvalidSessionId) as exc:
            raise session_api_error(exc, session_id) from None
        except PermissionError as exc:
            raise ApiError("PERMISSION_DENIED", f"Not allowed to access {exc.filename or 'the transcript'}") from None

    # -- routes

    @json_route(app, "GET", "/sessions", query=SessionsQuery, response=SessionList, tags=TAGS,
                errors=("BAD_REQUEST",), summary="List sessions")
    def list_sessions(self, request: Any, query: SessionsQuery) -> Deferred[Any]:
        """
        Sessions with at least one user or assistant message, newest ``updatedAt`` first. Without
        ``cwd``: the daemon's workspace, ``isCurrent`` marking its session. With ``cwd`` (``*`` or
        a path) each item also has ``projectId``, ``cwd``, ``status`` and ``isPlayground``.
        """
        project, extended, path = self._scope(query)
        return self.run_blocking(self._list_body, project, extended, path, True).addCallback(Encoded)

    @json_route(app, "GET", "/sessions/across-projects", response=SessionList, tags=TAGS, raw_response=True,
                deprecated=True, summary="Sessions of every workspace (deprecated)")
    def across_projects(self, request: Any) -> Deferred[Any]:
        """Deprecated: use ``GET /api/v1/sessions?cwd=*``. The same items, not enveloped: ``{"sessions": [...]}``."""
        d = self.run_blocking(self._list_body, None, True, None, False)
        return d.addCallback(lambda body: Result(Encoded(body), headers=DEPRECATED_HEADERS))

    @json_route(app, "GET", "/sessions/workspaces", response=WorkspaceList, tags=TAGS, raw_response=True,
                deprecated=True, summary="Workspaces with sessions (deprecated)")
    def workspaces(self, request: Any) -> Deferred[Any]:
        """
        Deprecated. Not enveloped: ``{"workspaces": [{"path", "label"}]}``; a workspace's path is
        the ``cwd`` its latest session recorded.
        """
        d = self.run_blocking(self.store.workspaces)
        return d.addCallback(lambda found: Result(WorkspaceList(found), headers=DEPRECATED_HEADERS))

    @json_route(app, "DELETE", "/sessions/<session_id>", status=204, tags=TAGS,
                errors=_ID_ERRORS + ("SESSION_DELETE_CURRENT",), summary="Delete a session")
    async def delete_session(self, request: Any, session_id: str) -> Any:
        """Remove the session's transcript and its file history (``<home>/file-history/<id>/``). Not the current one."""
        self._session_id(session_id)
        if session_id == self.current_session:
            raise ApiError("SESSION_DELETE_CURRENT", "The daemon's current session cannot be deleted")
        await self._call(session_id, self.store.delete)
        return NO_CONTENT

    @json_route(app, "POST", "/sessions/<session_id>/rename", body=RenameRequest, status=204, tags=TAGS,
                errors=_ID_ERRORS, max_body=16 * 1024, summary="Rename a session")
    async def rename_session(self, request: Any, session_id: str, body: RenameRequest) -> Any:
        """Append a ``custom-title`` record with ``name`` to the transcript (history is never rewritten)."""
        self._session_id(session_id)
        name = (body.name or "").strip()
        if not name:
            raise ApiError("BAD_REQUEST", "name is required", [{"field": "name", "message": "missing or blank"}])
        if len(name) > MAX_NAME:
            raise ApiError("BAD_REQUEST", f"name must be at most {MAX_NAME} characters",
                           [{"field": "name", "message": "too long"}])
        await self._call(session_id, self.store.rename, name)
        return NO_CONTENT

    @json_route(app, "GET", "/sessions/<session_id>/history", response=SessionHistory, tags=TAGS,
                errors=_ID_ERRORS, summary="A session's requests and final replies")
    async def session_history(self, request: Any, session_id: str) -> SessionHistory:
        """Each user request of the session with the assistant's final reply to it (at most 500 characters)."""
        self._session_id(session_id)
        history: SessionHistory = await self._call(session_id, self.store.history)
        return history
