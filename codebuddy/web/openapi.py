"""
``/api/openapi.json`` generated from the route declarations, and ``/api/docs``.

The document is OpenAPI 3.0.3, the newest version the bundled Swagger UI (4.x, from the
``swagger-ui-bundle`` package) renders. Schemas come from the attrs models with the
wire (camelCase) names the converter uses; every route lists the error codes it can
answer, grouped by status, and the whole catalogue is in ``x-error-codes``.
The docs page and its assets are served from the pip package: no external URL.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import attrs
from twisted.web.resource import IResource

from codebuddy.web.errors import CATALOGUE
from codebuddy.web.json import JSON_CONTENT_TYPE, RouteSpec, dumps, wire_name
from codebuddy.web.root import ErrorPage, ReadOnly, not_found

OPENAPI_VERSION = "3.0.3"

AUTH_ERRORS = ("AUTH_REQUIRED", "AUTH_INVALID", "AUTH_RATE_LIMITED")
SCREEN_ERRORS = ("RATE_LIMITED", "FORBIDDEN", "INTERNAL_ERROR")
BODY_ERRORS = ("BAD_REQUEST", "PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE")

SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The gateway password or a token from POST /api/v1/auth/login.",
    },
    "passwordQuery": {"type": "apiKey", "in": "query", "name": "password"},
    "tokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
    "cookie": {"type": "apiKey", "in": "cookie", "name": "codebuddy_token"},
}


class SchemaBuilder:
    """JSON schemas of Python types, attrs classes collected as components."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def schema(self, tp: Any) -> dict[str, Any]:
        if tp is None or tp is type(None):
            return {"nullable": True}
        if tp is Any or tp is object:
            return {}
        if attrs.has(tp):
            return self._ref(tp)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return {"enum": [m.value for m in tp]}
        simple = {str: "string", int: "integer", float: "number", bool: "boolean", bytes: "string"}
        if tp in simple:
            return {"type": simple[tp]}
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is Literal:
            return {"enum": list(args)}
        if origin in (Union, types.UnionType):
            members = [a for a in args if a is not type(None)]
            nullable = len(members) != len(args)
            if len(members) == 1:
                inner = self.schema(members[0])
                if nullable:
                    inner = {"allOf": [inner], "nullable": True} if "$ref" in inner else {**inner, "nullable": True}
                return inner
            out: dict[str, Any] = {"oneOf": [self.schema(m) for m in members]}
            if nullable:
                out["nullable"] = True
            return out
        if origin in (list, tuple, set, frozenset, Sequence, Iterable) or tp in (list, tuple):
            item = args[0] if args else Any
            return {"type": "array", "items": self.schema(item)}
        if origin in (dict, Mapping) or tp is dict:
            value = args[1] if len(args) == 2 else Any
            return {"type": "object", "additionalProperties": self.schema(value)}
        return {}

    def _ref(self, cls: type) -> dict[str, Any]:
        name = cls.__name__
        if name not in self.components:
            self.components[name] = {}  # placeholder against recursion
            self.components[name] = self._object(cls)
        return {"$ref": f"#/components/schemas/{name}"}

    def _object(self, cls: type) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            name = wire_name(field)
            prop = dict(self.schema(hints.get(field.name, field.type)))
            doc = field.metadata.get("doc")
            if doc:
                prop = {"allOf": [prop], "description": doc} if "$ref" in prop else {**prop, "description": doc}
            properties[name] = prop
            if field.default is attrs.NOTHING:
                required.append(name)
            for alias in field.metadata.get("aliases", ()):
                properties[alias] = {**prop, "description": f"Same as {name}"}
        out: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            out["required"] = required
        if cls.__doc__:
            out["description"] = cls.__doc__.strip().splitlines()[0]
        return out


def _error_schema(codes: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": list(codes)},
                    "message": {"type": "string"},
                    "details": {},
                },
            }
        },
    }


def _route_errors(spec: RouteSpec) -> list[str]:
    codes = list(spec.errors) + list(SCREEN_ERRORS)
    if not spec.public:
        codes += AUTH_ERRORS
    if spec.body is not None:
        codes += BODY_ERRORS
    if spec.query is not None or "<" in spec.path:
        codes.append("BAD_REQUEST")
    if "<" in spec.path:
        codes.append("NOT_FOUND")
    seen: dict[str, None] = {}
    for code in codes:
        seen.setdefault(code, None)
    return list(seen)


def _success(spec: RouteSpec, builder: SchemaBuilder) -> dict[str, Any]:
    if spec.content_type is not None:
        return {
            "description": "The file's bytes (206 for a Range request).",
            "content": {spec.content_type: {"schema": {"type": "string", "format": "binary"}}},
        }
    if spec.stream:
        return {
            "description": "A stream of Server-Sent Events (ids, Last-Event-ID resume, heartbeats).",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    if spec.response is None:
        return {"description": "Success", "content": {"application/json": {"schema": {"type": "object"}}}}
    inner = builder.schema(spec.response)
    if spec.raw_response:
        schema = inner
    else:
        schema = {"type": "object", "required": ["data"], "properties": {"data": inner}}
        if spec.top_level:
            schema = {"allOf": [inner, schema]}
    return {"description": "Success", "content": {"application/json": {"schema": schema}}}


def build_openapi(routes: Iterable[RouteSpec], title: str, version: str, description: str = "") -> dict[str, Any]:
    """The OpenAPI document of ``routes`` (paths relative to ``/api/v1``)."""
    builder = SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, None] = {}
    for spec in routes:
        op: dict[str, Any] = {
            "operationId": spec.name.replace(".", "_"),
            "summary": spec.summary,
            "tags": list(spec.tags) or ["default"],
        }
        for tag in op["tags"]:
            tags.setdefault(tag, None)
        if spec.description and spec.description != spec.summary:
            op["description"] = spec.description
        if spec.deprecated:
            op["deprecated"] = True
        params: list[dict[str, Any]] = []
        for name in _path_params(spec.path):
            params.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
        if spec.query is not None:
            hints = typing.get_type_hints(spec.query)
            for field in attrs.fields(spec.query):
                params.append(
                    {
                        "name": wire_name(field),
                        "in": "query",
                        "required": field.default is attrs.NOTHING,
                        "schema": builder.schema(hints.get(field.name, field.type)),
                        **({"description": field.metadata["doc"]} if field.metadata.get("doc") else {}),
                    }
                )
        if params:
            op["parameters"] = params
        if spec.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": builder.schema(spec.body)}},
            }
        responses: dict[str, Any] = {str(spec.status): _success(spec, builder)}
        by_status: dict[int, list[str]] = {}
        for code in _route_errors(spec):
            by_status.setdefault(CATALOGUE[code].status, []).append(code)
        for status, codes in sorted(by_status.items()):
            responses[str(status)] = {
                "description": "; ".join(f"{c}: {CATALOGUE[c].description}" for c in codes),
                "content": {"application/json": {"schema": _error_schema(codes)}},
            }
        op["responses"] = responses
        if not spec.public:
            op["security"] = [{name: []} for name in SECURITY_SCHEMES]
        else:
            op["security"] = []
        paths.setdefault("/api/v1" + spec.openapi_path, {})[spec.method.lower()] = op
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "servers": [{"url": "/"}],
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {"schemas": builder.components, "securitySchemes": SECURITY_SCHEMES},
        "x-error-codes": [
            {"code": e.code, "status": e.status, "description": e.description} for e in CATALOGUE.values()
        ],
    }


def _path_params(path: str) -> list[str]:
    return re.findall(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>", path)


class OpenAPIResource(ReadOnly):
    """``GET /api/openapi.json``: the document, encoded once."""

    isLeaf = True

    def __init__(self, document: dict[str, Any]):
        super().__init__()
        self.body = dumps(document)

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", JSON_CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-cache")
        return self.body

    render_HEAD = render_GET


DOCS_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>CodeBuddy API</title>
  <link rel="stylesheet" type="text/css" href="/api/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/api/docs/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/api/docs/swagger-ui-bundle.js" charset="UTF-8"></script>
  <script src="/api/docs/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
  <script src="/api/docs/codebuddy-init.js" charset="UTF-8"></script>
</body>
</html>
"""

DOCS_INIT = b"""window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    persistAuthorization: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout"
  });
};
"""

_DOC_ASSETS = {
    "swagger-ui.css": b"text/css; charset=utf-8",
    "swagger-ui-bundle.js": b"text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": b"text/javascript; charset=utf-8",
    "favicon-16x16.png": b"image/png",
    "favicon-32x32.png": b"image/png",
}


def swagger_ui_dir() -> Path:
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


class _Bytes(ReadOnly):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes):
        super().__init__()
        self.body = body
        self.content_type = content_type

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        return self.body

    render_HEAD = render_GET


class _Asset(ReadOnly):
    """A file of the Swagger UI package, read when asked (nothing kept in memory)."""

    isLeaf = True

    def __init__(self, path: Path, content_type: bytes):
        super().__init__()
        self.path = path
        self.content_type = content_type

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"public, max-age=86400")
        return self.path.read_bytes()

    render_HEAD = render_GET


class DocsResource(ReadOnly):
    """``/api/docs``: Swagger UI from the ``swagger-ui-bundle`` package, offline."""

    def __init__(self, assets: Path | None = None):
        super().__init__()
        folder = assets or swagger_ui_dir()
        for name, content_type in _DOC_ASSETS.items():
            if (folder / name).is_file():
                self.putChild(name.encode(), _Asset(folder / name, content_type))
        self.putChild(b"codebuddy-init.js", _Bytes(DOCS_INIT, b"text/javascript; charset=utf-8"))
        self.page = _Bytes(DOCS_PAGE, b"text/html; charset=utf-8")
        self.putChild(b"", self.page)
        self.putChild(b"index.html", self.page)

    def render_GET(self, request: Any) -> bytes:
        return self.page.render_GET(request)

    render_HEAD = render_GET

    def getChild(self, path: bytes, request: Any) -> IResource:
        return ErrorPage(not_found(request))
