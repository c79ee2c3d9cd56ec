"""
The resource tree: ``/api/v1/*`` routed to the areas, ``/api/docs``, ``/api/openapi.json``.

Routing is two-level and lean, because every request pays for it:

* routes without path variables are found in one dict lookup on ``(method, path)``;
* everything else goes to the Klein app of the area that owns the first path segment
  (``/pty/...`` -> terminals), which matches variables, answers 404/405, and runs the
  same :func:`codebuddy.web.json.call_route` wrapper.

Each area is an object whose class has ``app = Klein()`` and routes declared with
:func:`codebuddy.web.json.json_route`; :func:`build_root` mounts a list of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from codebuddy.web.auth import RequestGuard
from codebuddy.web.errors import ApiError
from codebuddy.web.json import (
    JSON_CONTENT_TYPE,
    RouteSpec,
    call_route,
    dumps,
    internal_error,
    render_error,
    routes_of,
)

API_PREFIX = "/api/v1"

# Requests that never need ``X-CodeBuddy-Request`` (probes, login page, webhooks, docs).
HEADER_EXEMPT = (
    b"/api/v1/health",
    b"/api/v1/auth/status",
    b"/api/v1/auth/login",
    b"/api/v1/webhooks/",
    b"/api/docs",
    b"/api/openapi.json",
)

CORS_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_HEADERS = (
    b"Authorization, Content-Type, Content-Encoding, X-CodeBuddy-Request, Last-Event-ID, "
    b"Range, acp-connection-id, acp-session-token, X-Codebuddy-Run-Timeout"
)


class ReadOnly(Resource):
    """A resource that only answers GET and HEAD; other methods get a JSON 405."""

    def render(self, request: Any) -> Any:
        if request.method in (b"GET", b"HEAD"):
            return super().render(request)
        error = ApiError(
            "METHOD_NOT_ALLOWED",
            f"{request.method.decode('latin-1')} is not allowed here; use GET, HEAD",
            headers={"Allow": "GET, HEAD"},
        )
        return render_error(request, error)


class ErrorPage(Resource):
    """Answers one :class:`ApiError` to whatever reaches it."""

    isLeaf = True

    def __init__(self, error: ApiError):
        super().__init__()
        self.error = error

    def render(self, request: Any) -> bytes:
        return render_error(request, self.error)


class Preflight(Resource):
    """CORS preflight (and plain ``OPTIONS``): 204 with the allowed methods and headers."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"allow", CORS_METHODS)
        if request.getHeader(b"origin") is not None:
            request.setHeader(b"access-control-allow-methods", CORS_METHODS)
            asked = request.getHeader(b"access-control-request-headers")
            request.setHeader(b"access-control-allow-headers", asked or CORS_HEADERS)
            request.setHeader(b"access-control-max-age", b"600")
        return b""


def not_found(request: Any) -> ApiError:
    path = request.path.decode("latin-1", "replace")
    return ApiError("NOT_FOUND", f"No route for {request.method.decode('latin-1')} {path}")


class ApiV1(Resource):
    """``/api/v1``: dispatches to the mounted areas."""

    isLeaf = True
    log = Logger()

    def __init__(self, areas: Iterable[Any], prefix: str = API_PREFIX):
        super().__init__()
        self.prefix = prefix
        self.areas = list(areas)
        self.routes: list[tuple[RouteSpec, Any]] = []
        self.body_openers: dict[tuple[bytes, bytes], Any] = {}
        self._static: dict[tuple[bytes, bytes], tuple[RouteSpec, Any]] = {}
        self._by_segment: dict[bytes, IResource] = {}
        for area in self.areas:
            self._mount(area)

    def _mount(self, area: Any) -> None:
        app: Klein = type(area).app
        _install_error_handlers(app)
        resource = area.app.resource()
        for (method, path), opener in getattr(area, "body_openers", {}).items():
            self.body_openers[(method.encode(), (self.prefix + path).encode())] = opener
        for spec in routes_of(app):
            self.routes.append((spec, area))
            segment = spec.path.strip("/").split("/", 1)[0].encode()
            if segment.startswith(b"<"):
                raise ValueError(f"route {spec.path} must start with a fixed segment")
            owner = self._by_segment.setdefault(segment, resource)
            if owner is not resource:
                raise ValueError(f"two areas declare routes under /{segment.decode()}")
            if spec.static:
                key = (spec.method.encode(), (self.prefix + spec.path).encode())
                if key in self._static:
                    raise ValueError(f"route {spec.method} {spec.path} is declared twice")
                self._static[key] = (spec, area)
                if spec.method == "GET":
                    self._static[(b"HEAD", key[1])] = (spec, area)

    def render(self, request: Any) -> Any:
        entry = self._static.get((request.method, request.path))
        if entry is not None:
            spec, area = entry
            return deliver(request, call_route(spec, area, request, {}))
        segment = request.postpath[0] if request.postpath else b""
        resource = self._by_segment.get(segment)
        if resource is None:
            return _unrouted(request, not_found(request))
        return resource.render(request)


class Mount(ApiV1):
    """
    Areas answering under a top-level path other than ``/api/v1`` (e.g. the Web UI's
    ``/internal/file-changes/*``), mounted as a child of the site root. Requests are screened
    by the same guard as ``/api`` (rate limit, Host, Origin and CORS, the optional request
    header; ``OPTIONS`` is a preflight) and routes authenticate as usual. Not in the OpenAPI
    document, whose paths are those of ``/api/v1``.
    """

    def __init__(self, guard: RequestGuard, prefix: str, areas: Iterable[Any]):
        super().__init__(areas, prefix=prefix)
        self.guard = guard
        self._preflight = Preflight()

    def render(self, request: Any) -> Any:
        request.guard = self.guard
        error = self.guard.screen(request)
        if error is not None:
            return render_error(request, error)
        if request.method == b"OPTIONS":
            return self._preflight.render(request)
        return super().render(request)


def deliver(request: Any, result: Any) -> Any:
    """Hand a :func:`call_route` result to twisted.web (bytes at once, Deferreds later)."""
    if not isinstance(result, Deferred):
        if result is NOT_DONE_YET and not request.finished and not request._disconnected:
            # The handler wrote its whole answer itself (e.g. HEAD of a download).
            request.finish()
        return result
    finished: list[bool] = []
    request.notifyFinish().addBoth(finished.append)

    def write(body: Any) -> None:
        if finished:
            return
        if isinstance(body, bytes):
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
        request.finish()

    def failed(failure: Failure) -> None:
        if not failure.check(CancelledError):
            ApiV1.log.failure("Error while delivering a response", failure)

    request.notifyFinish().addErrback(lambda _: result.cancel())
    result.addCallback(write).addErrback(failed)
    return NOT_DONE_YET


def _unrouted(request: Any, error: ApiError) -> bytes:
    """A routing miss: authenticate first, so unauthenticated clients learn nothing."""
    guard = getattr(request, "guard", None)
    if guard is not None:
        try:
            guard.authenticate(request)
        except ApiError as auth_error:
            return render_error(request, auth_error)
    return render_error(request, error)


_HANDLED_APPS: set[int] = set()


def _install_error_handlers(app: Klein) -> None:
    """Make an area's Klein app answer routing misses and stray errors as JSON."""
    if id(app) in _HANDLED_APPS:
        return
    _HANDLED_APPS.add(id(app))

    @app.handle_errors(HTTPException)
    def routing_error(self: Any, request: Any, failure: Failure) -> bytes:
        exc = failure.value
        if isinstance(exc, MethodNotAllowed):
            allowed = ", ".join(sorted(set(exc.valid_methods or ())))
            error = ApiError(
                "METHOD_NOT_ALLOWED",
                f"{request.method.decode('latin-1')} is not allowed here; use {allowed}",
                headers={"Allow": allowed},
            )
            return _unrouted(request, error)
        return _unrouted(request, not_found(request))

    @app.handle_errors(Exception)
    def unexpected_error(self: Any, request: Any, failure: Failure) -> bytes:
        return render_error(request, internal_error(request, failure))


class ApiRoot(Resource):
    """``/api``: screens every request with the guard, then routes to its children."""

    def __init__(self, guard: RequestGuard, children: dict[bytes, IResource]):
        super().__init__()
        self.guard = guard
        for name, child in children.items():
            self.putChild(name, child)
        self._preflight = Preflight()

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        request.guard = self.guard
        exempt = request.path.startswith(HEADER_EXEMPT)
        error = self.guard.screen(request, exempt_header=exempt)
        if error is not None:
            return ErrorPage(error)
        if request.method == b"OPTIONS":
            return self._preflight
        child = self.children.get(path)
        if child is None:
            return ErrorPage(not_found(request))
        return child

    def render(self, request: Any) -> bytes:
        return render_error(request, not_found(request))


class SiteRoot(ReadOnly):
    """``/``: a small JSON index; everything outside ``/api`` is a JSON 404."""

    def __init__(self, api: IResource, index: dict[str, Any]):
        super().__init__()
        self.putChild(b"api", api)
        self.index = index

    def getChild(self, path: bytes, request: Any) -> IResource:
        if path == b"" and not request.postpath:
            return self
        return ErrorPage(not_found(request))

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", JSON_CONTENT_TYPE)
        return dumps({"data": self.index})

    render_HEAD = render_GET


def build_root(
    guard: RequestGuard,
    areas: Sequence[Any],
    extra: dict[bytes, IResource] | None = None,
    index: dict[str, Any] | None = None,
) -> tuple[Resource, ApiV1]:
    """The whole tree: ``/``, ``/api/v1/*`` for ``areas`` and ``extra`` children of ``/api``."""
    v1 = ApiV1(areas)
    children: dict[bytes, IResource] = {b"v1": v1, **(extra or {})}
    api = ApiRoot(guard, children)
    return SiteRoot(api, index or {}), v1
