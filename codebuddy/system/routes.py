"""
System and auth endpoints: ``/health``, ``/info``, ``/metrics``, ``/envs``, ``/auth/*``.
"""

from __future__ import annotations

from typing import Any

import attrs
from klein import Klein

from codebuddy.system.info import Health, Info, Metrics, SystemInfo
from codebuddy.web.auth import TOKEN_COOKIE, TOKEN_TTL, RequestGuard
from codebuddy.web.json import json_route


@attrs.frozen
class AuthStatus:
    """Whether the daemon asks for credentials and whether this request carries valid ones."""

    auth_enabled: bool
    authenticated: bool
    mode: str


@attrs.frozen
class LoginRequest:
    """The gateway password."""

    password: str | None = None


@attrs.frozen
class LoginResult:
    """A login token, valid for 24 hours (also set as an HttpOnly cookie)."""

    success: bool
    token: str
    expires_at: int = attrs.field(metadata={"doc": "Expiry, milliseconds since the epoch"})
    expires_in: int = attrs.field(metadata={"doc": "Seconds until the token expires"})


class SystemRoutes:
    """The system area's HTTP surface."""

    app = Klein()

    def __init__(self, system: SystemInfo, guard: RequestGuard):
        self.system = system
        self.guard = guard

    @json_route(app, "GET", "/health", response=Health, public=True, tags=("System",), summary="Health check")
    def health(self, request: Any) -> Health:
        """Liveness probe: status, uptime in seconds, and the webhook platforms."""
        return self.system.health()

    @json_route(app, "GET", "/info", response=Info, tags=("System",), summary="Environment info")
    def info(self, request: Any) -> Info:
        """Version, OS, Python, hostname, pid, workspace, home dir, session id, auth mode, start time."""
        return self.system.info()

    @json_route(app, "GET", "/metrics", response=Metrics, tags=("System",), summary="System and instance metrics")
    def metrics(self, request: Any) -> Metrics:
        """CPU, memory and disk of the machine, and memory and uptime of each codebuddy process."""
        return self.system.metrics()

    @json_route(app, "GET", "/envs", response=dict[str, str], tags=("System",), summary="Environment variables")
    def envs(self, request: Any) -> dict[str, str]:
        """The environment processes started by the daemon inherit (E2B envd ``GET /envs``), without secrets."""
        return self.system.envs()

    @json_route(
        app,
        "GET",
        "/auth/status",
        response=AuthStatus,
        public=True,
        top_level=True,
        tags=("Auth",),
        summary="Authentication status",
    )
    def auth_status(self, request: Any) -> AuthStatus:
        """Whether auth is on and whether this request is authenticated (fields also at the top level)."""
        return AuthStatus(
            auth_enabled=self.guard.auth_enabled,
            authenticated=self.guard.is_authenticated(request),
            mode=self.guard.settings.mode,
        )

    @json_route(
        app,
        "POST",
        "/auth/login",
        body=LoginRequest,
        response=LoginResult,
        public=True,
        top_level=True,
        errors=("AUTH_INVALID", "AUTH_RATE_LIMITED", "BAD_REQUEST"),
        tags=("Auth",),
        summary="Password login",
        max_body=16 * 1024,
    )
    def login(self, request: Any, body: LoginRequest) -> LoginResult:
        """Exchange the gateway password for a 24 h token; failures are limited per client."""
        token, expires = self.guard.login(request, body.password)
        secure = "; Secure" if request.isSecure() else ""
        request.addCookie(
            TOKEN_COOKIE.encode(),
            token.encode(),
            path=b"/",
            max_age=str(int(TOKEN_TTL)).encode(),
            httpOnly=True,
            sameSite=b"strict",
            secure=bool(secure),
        )
        return LoginResult(
            success=True,
            token=token,
            expires_at=int(expires * 1000),
            expires_in=int(TOKEN_TTL),
        )
