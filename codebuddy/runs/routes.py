# -*- test-case-name: tests.runs.test_routes -*-
"""
``/api/v1/runs`` (spec "Runs (Agent Execution)"; acp-codebuddy.md §2.7, §5.3).

``POST /runs`` takes the prompt in any of the three shapes clients send: ``{text, sender}``
(the spec), ``{prompt}``, and ``{type: "message", payload: {text}}`` (the gateway adapter),
with optional ``sessionId``, ``cwd``, ``permissionMode`` and ``timeoutMs`` (or the
``X-Codebuddy-Run-Timeout`` header, in ms; ``0`` or less: no timeout). It answers 202
``{runId, status: "accepted"}`` at once; the run then goes through the session's queue.

Defaults, in order: the session is ``sessionId``, else one per ``sender.id`` (the same sender
continues the same conversation), else a new session; ``cwd`` is the workspace; the
permission mode is the settings' ``permissions.defaultMode``; the timeout is the settings'
``gateway.runTimeoutMs``, else 30 minutes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred

from codebuddy.runs.manager import RunManager, RunRequest
from codebuddy.runs.records import RunRecord, Sender
from codebuddy.sessions.transcript import valid_session_id
from codebuddy.settings.schema import PERMISSION_MODES
from codebuddy.web.errors import ApiError
from codebuddy.web.json import Result, json_route
from codebuddy.web.sse import serve_log

__all__ = ["RunRoutes"]

TAGS = ("Runs",)
DEFAULT_TIMEOUT_MS = 30 * 60 * 1000
MAX_PROMPT = 1 << 20
SENDER_NAMESPACE = uuid.UUID("5d0c1f0e-7d1e-4f59-9a43-3c1c8f6b2a10")


@attrs.define
class MessagePayload:
    text: str | None = None


@attrs.define
class StartRun:
    """The prompt (``text``, ``prompt`` or ``payload.text``) and the run's options."""

    text: str | None = attrs.field(default=None, metadata={"doc": "The prompt (the spec's form)"})
    sender: Sender | None = attrs.field(default=None, metadata={"doc": "Who sent it; its id picks the session"})
    prompt: str | None = attrs.field(default=None, metadata={"doc": "The prompt (alternative form)"})
    type: str | None = attrs.field(default=None, metadata={"doc": "\"message\" with payload.text (gateway form)"})
    payload: MessagePayload | None = None
    id: str | None = attrs.field(default=None, metadata={"doc": "The client's message id (gateway form; informative)"})
    session_id: str | None = attrs.field(default=None, metadata={"doc": "Continue this session's conversation"})
    cwd: str | None = attrs.field(default=None, metadata={"doc": "Working directory (default: the workspace)"})
    permission_mode: str | None = attrs.field(default=None, metadata={
        "doc": "default, acceptEdits, plan, bypassPermissions, dontAsk, auto or delegate"})
    timeout_ms: int | None = attrs.field(default=None, metadata={"doc": "0 or less: no timeout"})


@attrs.frozen
class Accepted:
    run_id: str
    status: str
    session_id: str


class RunRoutes:
    """The runs endpoints over one :class:`RunManager`."""

    app = Klein()

    def __init__(self, manager: RunManager, workspace: Path, settings: Callable[[], Deferred[Mapping[str, Any]]],
                 clock: Any) -> None:
        self.manager = manager
        self.workspace = workspace
        self.settings = settings
        self.clock = clock

    async def _request(self, request: Any, body: StartRun) -> RunRequest:
        prompt = body.text if body.text is not None else body.prompt
        if prompt is None and body.payload is not None:
            prompt = body.payload.text
        if prompt is None or not prompt.strip():
            raise ApiError("BAD_REQUEST", "The prompt is missing: send {\"text\": ...}, {\"prompt\": ...} or "
                           "{\"type\": \"message\", \"payload\": {\"text\": ...}}",
                           [{"field": "text", "message": "required"}])
        if len(prompt) > MAX_PROMPT:
            raise ApiError("BAD_REQUEST", "The prompt is longer than 1 MiB", [{"field": "text", "message": "too long"}])
        settings = await self.settings()
        permissions = settings.get("permissions") if isinstance(settings.get("permissions"), dict) else {}
        mode = body.permission_mode or (permissions or {}).get("defaultMode") or "default"
        if mode not in PERMISSION_MODES:
            raise ApiError("BAD_REQUEST", f"permissionMode must be one of {', '.join(PERMISSION_MODES)}, got {mode!r}",
                           [{"field": "permissionMode", "message": "unknown mode"}])
        cwd = self.workspace
        if body.cwd:
            given = Path(os.path.expanduser(body.cwd))
            cwd = given if given.is_absolute() else self.workspace / given
            if not cwd.is_dir():
                raise ApiError("PATH_NOT_DIRECTORY", f"cwd {body.cwd} is not a directory", {"path": str(cwd)})
        session_id = body.session_id
        if session_id is not None:
            if not valid_session_id(session_id):
                raise ApiError("BAD_REQUEST", "sessionId is not a session id (letters, digits, '-', '_', '.')",
                               [{"field": "sessionId", "message": "invalid"}])
        elif body.sender is not None and body.sender.id:
            session_id = str(uuid.uuid5(SENDER_NAMESPACE, f"sender:{body.sender.id}"))
        else:
            session_id = str(uuid.uuid4())
        return RunRequest(prompt=prompt, session_id=session_id, cwd=str(cwd.resolve()), permission_mode=mode,
                          timeout_ms=self._timeout(request, body, settings), sender=body.sender)

    @staticmethod
    def _timeout(request: Any, body: StartRun, settings: Mapping[str, Any]) -> int | None:
        header = request.getHeader(b"x-codebuddy-run-timeout")
        value: Any = body.timeout_ms
        if header is not None:
            try:
                value = int(header.decode("latin-1").strip())
            except ValueError:
                raise ApiError("BAD_REQUEST", "X-Codebuddy-Run-Timeout must be a whole number of milliseconds",
                               [{"field": "X-Codebuddy-Run-Timeout", "message": "not a number"}]) from None
        if value is None:
            gateway = settings.get("gateway") if isinstance(settings.get("gateway"), dict) else {}
            configured = (gateway or {}).get("runTimeoutMs")
            usable = isinstance(configured, int) and not isinstance(configured, bool)
            value = configured if usable else DEFAULT_TIMEOUT_MS
        if value <= 0:
            return None
        return min(int(value), 10 * 365 * 24 * 3600 * 1000)

    @json_route(app, "POST", "/runs", body=StartRun, response=Accepted, status=202, tags=TAGS,
                errors=("BAD_REQUEST", "MODEL_NOT_CONFIGURED", "PATH_NOT_DIRECTORY"), max_body=MAX_PROMPT + 65536,
                summary="Initiate Agent execution (async, returns runId)")
    async def start(self, request: Any, body: StartRun) -> Result:
        """Accept a run (202 ``{runId, status: "accepted", sessionId}``); follow it with ``/runs/:runId/stream``."""
        record = await self.manager.submit(await self._request(request, body))
        return Result(Accepted(record.run_id, "accepted", record.session_id), 202)

    @json_route(app, "GET", "/runs/<run_id>", response=RunRecord, tags=TAGS, errors=("RUN_NOT_FOUND",),
                summary="Query execution status")
    async def status(self, request: Any, run_id: str) -> RunRecord:
        """The run's record: status, session, timestamps, result, usage, error."""
        return await self.manager.get(run_id)

    @json_route(app, "GET", "/runs/<run_id>/stream", stream=True, tags=TAGS, errors=("RUN_NOT_FOUND",),
                summary="SSE streaming of execution results")
    async def stream(self, request: Any, run_id: str) -> Any:
        """
        The run's events from the first (or after ``Last-Event-ID`` / ``?after=``): ``run.started``,
        ``message.delta``, ``thought.delta``, ``tool.started``, ``tool.updated``, ``tool.completed``,
        ``usage``, ``run.completed``. A finished run replays everything and closes.
        """
        log = await self.manager.events(run_id)
        return await serve_log(request, log, self.clock, from_start=True)

    @json_route(app, "POST", "/runs/<run_id>/cancel", response=RunRecord, tags=TAGS,
                errors=("RUN_NOT_FOUND", "RUN_ALREADY_COMPLETED"), summary="Cancel execution")
    async def cancel(self, request: Any, run_id: str) -> RunRecord:
        """Stop the model request and the tools; answered once the run is recorded ``cancelled``."""
        return await self.manager.cancel(run_id)
