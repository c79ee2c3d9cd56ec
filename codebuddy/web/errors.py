"""
The error catalogue: every ``error.code`` the API can answer, with its HTTP status.

An area never invents a status code: it raises ``ApiError("SOME_CODE", "what went wrong")``
and the catalogue decides the status. Codes from the spec's table come first, then the
ones this project adds. Adding a code means adding one line here; the OpenAPI document
and the docs pick it up from this table.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class ErrorCode:
    """One row of the catalogue."""

    code: str
    status: int
    description: str


_ROWS: tuple[tuple[str, int, str], ...] = (
    # The spec's table.
    ("AUTH_REQUIRED", 401, "Authentication required"),
    ("AUTH_INVALID", 401, "Invalid authentication"),
    ("AUTH_RATE_LIMITED", 429, "Too many login attempts"),
    ("NOT_FOUND", 404, "Resource not found"),
    ("BAD_REQUEST", 400, "Invalid request parameters"),
    ("RATE_LIMITED", 429, "Request rate too high"),
    ("INTERNAL_ERROR", 500, "Internal server error"),
    ("SESSION_NOT_FOUND", 404, "Session not found"),
    ("SESSION_DELETE_CURRENT", 400, "Cannot delete current session"),
    ("TERMINAL_NOT_FOUND", 404, "PTY not found"),
    ("PROCESS_NOT_FOUND", 404, "Process not found"),
    ("PATH_REQUIRED", 400, "Missing path parameter"),
    ("PATH_NOT_DIRECTORY", 400, "Path is not a directory"),
    ("INSUFFICIENT_STORAGE", 507, "Insufficient disk space"),
    ("RUN_NOT_FOUND", 404, "Run not found"),
    ("PLATFORM_UNSUPPORTED", 400, "Unsupported webhook platform"),
    ("SIGNATURE_INVALID", 403, "Signature verification failed"),
    # Added by this project (HTTP-level and cross-area conditions).
    ("FORBIDDEN", 403, "Forbidden (origin, host or request header not allowed)"),
    ("PERMISSION_DENIED", 403, "The operating system refused access to the path"),
    ("METHOD_NOT_ALLOWED", 405, "Method not allowed on this resource"),
    ("NOT_ACCEPTABLE", 406, "No acceptable representation"),
    ("CONFLICT", 409, "The request conflicts with the current state"),
    ("ALREADY_EXISTS", 409, "The resource already exists"),
    ("PAYLOAD_TOO_LARGE", 413, "Request body too large"),
    ("UNSUPPORTED_MEDIA_TYPE", 415, "Unsupported Content-Type"),
    ("RANGE_NOT_SATISFIABLE", 416, "Requested range not satisfiable"),
    ("SERVICE_UNAVAILABLE", 503, "Service unavailable"),
    ("WATCH_LIMIT_REACHED", 503, "The kernel's inotify watch limit is reached"),
    ("WATCH_OVERFLOW", 503, "The kernel dropped file events (inotify queue overflow); sent in watch streams"),
    ("WORKER_UNREACHABLE", 502, "A remote worker's daemon did not answer (down, timed out, refused credentials)"),
    # Codes of the CodeBuddy server that later areas answer.
    ("PATH_NOT_ABSOLUTE", 400, "Path must be absolute"),
    ("FILE_TYPE_FORBIDDEN", 400, "File type not allowed"),
    ("INSTANCE_NOT_FOUND", 404, "Instance not found"),
    ("RUN_ALREADY_COMPLETED", 409, "Run already completed"),
    ("MODEL_NOT_CONFIGURED", 400, "No model configured"),
    ("CONNECTION_LIMIT", 429, "Too many connections"),
    ("WORKER_NOT_FOUND", 404, "Worker not found"),
    ("WORKER_NO_LOGS", 404, "Worker has no logs"),
    ("DAEMON_NOT_RUNNING", 409, "Daemon is not running"),
    ("DAEMON_ALREADY_RUNNING", 409, "Daemon is already running"),
    ("DAEMON_START_FAILED", 502, "The daemon that was started exited or did not answer health in time"),
    ("SETTINGS_INVALID", 409, "A settings file does not parse; it is left as it is until fixed by hand"),
    # Plugins and marketplaces (docs/plugins.md).
    ("MARKETPLACE_NOT_FOUND", 404, "Plugin marketplace not found (add it first)"),
    ("PLUGIN_NOT_FOUND", 404, "Plugin not found (not in the marketplace, or not installed)"),
    ("MANIFEST_INVALID", 400, "A marketplace or plugin manifest is missing or invalid; details lists each problem"),
    ("SOURCE_UNREACHABLE", 502, "A marketplace or plugin source could not be fetched (download or git clone "
                                "failed, timed out, or was too large)"),
)

CATALOGUE: dict[str, ErrorCode] = {code: ErrorCode(code, status, desc) for code, status, desc in _ROWS}


class ApiError(Exception):
    """
    An error answered to the client as ``{"error": {"code", "message", "details"?}}``.

    ``headers`` are added to the response (``Retry-After``, ``Allow``...).
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        entry = CATALOGUE.get(code)
        if entry is None:
            raise ValueError(f"unknown error code {code!r}: add it to codebuddy.web.errors")
        self.code = code
        self.status = entry.status
        self.message = message or entry.description
        self.details = details
        self.headers = headers or {}
        super().__init__(f"{code}: {self.message}")

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


def status_for(code: str) -> int:
    """The HTTP status of a catalogue code."""
    return CATALOGUE[code].status
