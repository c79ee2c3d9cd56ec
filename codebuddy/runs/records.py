# -*- test-case-name: tests.runs.test_records -*-
"""
Runs on disk: ``<home>/runs/<runId>.json`` holds a run's record (rewritten atomically at each
state change) and ``<home>/runs/<runId>.events`` its stream's events (SSE frames without ids,
written once the run has ended), so ``GET /runs/:id`` and the stream's replay survive a daemon
restart.

An active run also has an empty marker ``<home>/runs/active/<runId>``, so the next daemon reads
only those records at start. A record left ``accepted`` or ``running`` by a daemon that died is
marked ``failed`` with the reason (``INTERRUPTED``) when the next daemon starts, and its stream
(whose events died with that daemon) replays a ``run.completed`` saying so: a run never vanishes.
Every function here is blocking.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from codebuddy.storage import atomic_write
from codebuddy.web.json import dumps, omit_if_default, structure, unstructure

__all__ = ["ACTIVE", "FINISHED", "RunError", "RunRecord", "RunStore", "Usage"]

ACTIVE = ("accepted", "running")
FINISHED = ("completed", "failed", "cancelled")
EVENTS = ".events"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@attrs.define
class Usage:
    """Token counts of a run (summed over its model turns)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = attrs.field(default=0, metadata={"doc": "Prompt tokens served from the provider's cache"})

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read += other.cache_read


@attrs.frozen
class RunError:
    """Why a run failed: ``code`` (e.g. ``MODEL_AUTH_FAILED``, ``EXECUTION_ERROR``, ``INTERRUPTED``) and ``message``."""

    code: str
    message: str


@attrs.define
class Sender:
    """Who sent the prompt (chat platforms): ``id`` and display ``name``."""

    id: str | None = None
    name: str | None = None


@attrs.define
class RunRecord:
    """One run, as ``GET /api/v1/runs/:runId`` answers it."""

    run_id: str
    status: str = attrs.field(metadata={"doc": "accepted, running, completed, failed or cancelled"})
    session_id: str
    cwd: str
    permission_mode: str
    prompt: str
    created_at: int = attrs.field(metadata={"doc": "Milliseconds since the epoch"})
    model: str | None = None
    sender: Sender | None = attrs.field(default=None, metadata=omit_if_default())
    timeout_ms: int | None = attrs.field(default=None, metadata={"doc": "null: no timeout"})
    started_at: int | None = None
    finished_at: int | None = None
    duration_ms: int | None = None
    result: str | None = attrs.field(default=None, metadata={"doc": "The final reply's text"})
    stop_reason: str | None = attrs.field(default=None, metadata={
        "doc": "end_turn, max_turn_requests, cancelled or refusal (ACP stop reasons)"})
    num_turns: int = 0
    usage: Usage = attrs.field(factory=Usage)
    permission_denials: list[dict[str, Any]] = attrs.field(factory=list, metadata={
        "doc": "Tool calls refused by the permission rules: toolName, toolCallId, input, reason"})
    error: RunError | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def completed_payload(self) -> dict[str, Any]:
        """The fields of the stream's ``run.completed`` event (acp-codebuddy.md §5.3) for this record."""
        payload: dict[str, Any] = {
            "status": self.status, "stopReason": self.stop_reason, "result": self.result,
            "durationMs": self.duration_ms, "numTurns": self.num_turns,
            "usage": {"inputTokens": self.usage.input_tokens, "outputTokens": self.usage.output_tokens,
                      "cacheRead": self.usage.cache_read}}
        if self.error is not None:
            payload["error"] = {"code": self.error.code, "message": self.error.message}
        if self.permission_denials:
            payload["permissionDenials"] = self.permission_denials
        return payload


def valid_run_id(run_id: str) -> bool:
    return _RUN_ID.fullmatch(run_id) is not None and ".." not in run_id


class RunStore:
    """The run files of one home."""

    def __init__(self, home: Path) -> None:
        self.root = home / "runs"

    def _path(self, run_id: str, suffix: str) -> Path:
        return self.root / f"{run_id}{suffix}"

    def _marker(self, run_id: str) -> Path:
        return self.root / "active" / run_id

    def save(self, record: RunRecord) -> None:
        """
        Write the record. An active run also has a marker in ``runs/active/`` (made before the
        record, removed after it), so a new daemon finds the runs to mark interrupted without
        reading every record ever written.
        """
        marker = self._marker(record.run_id)
        marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if record.status in ACTIVE:
            marker.touch()
        atomic_write(self._path(record.run_id, ".json"), dumps(unstructure(record)) + b"\n", mode=0o600)
        if record.status not in ACTIVE:
            marker.unlink(missing_ok=True)

    def load(self, run_id: str) -> RunRecord | None:
        if not valid_run_id(run_id):
            return None
        try:
            data = json.loads(self._path(run_id, ".json").read_bytes())
            return structure(data, RunRecord)
        except Exception:  # noqa: BLE001 - an unreadable or damaged record reads as missing
            return None

    def save_events(self, run_id: str, events: Iterable[tuple[str, str]]) -> None:
        """
        The stream's events as their SSE frames without ids (``event: T``, ``data: <json>``, a
        blank line): the data is already single-line JSON, so nothing is encoded again.
        """
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = "".join(f"event: {event}\ndata: {data}\n\n" for event, data in events)
        atomic_write(self._path(run_id, EVENTS), text.encode("utf-8"), mode=0o600)

    def load_events(self, run_id: str) -> list[tuple[str, str]]:
        if not valid_run_id(run_id):
            return []
        try:
            text = self._path(run_id, EVENTS).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return []
        events = []
        for frame in text.split("\n\n"):
            event, _, data = frame.partition("\ndata: ")
            if event.startswith("event: ") and data:
                events.append((event[len("event: "):], data))
        return events

    def interrupted(self, now_ms: int) -> list[RunRecord]:
        """Mark the runs a previous daemon left active as failed (``INTERRUPTED``); the ones marked."""
        marked = []
        try:
            names = os.listdir(self.root / "active")
        except FileNotFoundError:
            return []
        for name in names:
            record = self.load(name)
            if record is None or record.status not in ACTIVE:
                self._marker(name).unlink(missing_ok=True)
                continue
            record.status = "failed"
            record.finished_at = now_ms
            record.stop_reason = "cancelled"
            record.error = RunError("INTERRUPTED", "The daemon stopped before this run finished")
            self.save(record)
            if not self._path(record.run_id, EVENTS).exists():  # its stream still tells how it ended
                self.save_events(record.run_id, [("run.completed", _completed_event(record, now_ms))])
            marked.append(record)
        return marked


def _completed_event(record: RunRecord, now_ms: int) -> str:
    """The ``run.completed`` event (the manager's shape) of a run that a previous daemon left unfinished."""
    return json.dumps({"runId": record.run_id, "sessionId": record.session_id, "seq": 1, "ts": now_ms,
                       "type": "run.completed", **record.completed_payload()}, separators=(",", ":"),
                      ensure_ascii=False)
