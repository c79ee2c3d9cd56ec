"""
JSON in and out: one cattrs converter, the envelope, ``read_json`` and ``json_route``.

Every attrs model crosses the wire through :data:`converter`, which renames snake_case
attributes to the spec's camelCase (``run_id`` -> ``runId``) and refuses wrong types
instead of coercing them (``{"path": 5}`` is a 400, not the path ``"5"``).

Handlers are declared with :func:`json_route`, which registers them with the area's
Klein app *and* records a :class:`RouteSpec` (models, status, error codes) from which
``/api/openapi.json`` is generated. A handler receives typed arguments and returns a
model; the wrapper does parsing, authentication, serialisation and error mapping.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Callable, Mapping
from inspect import iscoroutine
from typing import Any, TypeVar, get_origin

import attrs
import cattrs
from cattrs.cols import list_structure_factory
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from codebuddy.web.errors import ApiError

T = TypeVar("T")

log = Logger(namespace="codebuddy.web")

JSON_CONTENT_TYPE = b"application/json; charset=utf-8"
DEFAULT_MAX_BODY = 1024 * 1024

# --------------------------------------------------------------------------- names


_CAMEL_RE = re.compile(r"_([a-z0-9])")


def to_camel(name: str) -> str:
    """``modified_time`` -> ``modifiedTime`` (a leading underscore is dropped)."""
    return _CAMEL_RE.sub(lambda m: m.group(1).upper(), name.lstrip("_"))


def wire_name(field: attrs.Attribute) -> str:  # type: ignore[type-arg]
    """The JSON name of an attrs field: ``metadata={"wire": ...}`` or its camelCase name."""
    return str(field.metadata.get("wire") or to_camel(field.name))


# --------------------------------------------------------------------------- converter


def _strict(expected: type, name: str) -> Callable[[Any, type], Any]:
    def structure(value: Any, _type: type) -> Any:
        if isinstance(value, bool) and expected is not bool:
            raise ValueError(f"expected {name}, got a boolean")
        if expected is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, expected):
            raise ValueError(f"expected {name}, got {json_type(value)}")
        return value

    return structure


def json_type(value: Any) -> str:
    """How a JSON value is named in messages: ``a string``, ``an array``, ``null``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(float, _strict(float, "a number"))
    conv.register_structure_hook(bool, _strict(bool, "a boolean"))
    conv.register_structure_hook(Any, lambda v, _t: v)

    def list_factory(tp: Any) -> Callable[[Any, type], Any]:
        # cattrs would take any iterable: "abc" as ["a", "b", "c"], an object as its keys
        items = list_structure_factory(tp, conv)

        def structure(value: Any, type_: type) -> Any:
            if not isinstance(value, list):
                raise ValueError(f"expected an array, got {json_type(value)}")
            return items(value, type_)

        return structure

    conv.register_structure_hook_factory(lambda tp: tp is list or get_origin(tp) is list, list_factory)

    def structure_factory(cls: type) -> Callable[[Any, type], Any]:
        overrides = {a.name: override(rename=wire_name(a)) for a in attrs.fields(cls)}
        fn: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, conv, **overrides)  # type: ignore[arg-type]
        aliases = [(wire_name(a), alias) for a in attrs.fields(cls) for alias in a.metadata.get("aliases", ())]

        def structure(value: Any, type_: type) -> Any:
            if not isinstance(value, Mapping):
                raise ValueError(f"expected an object, got {json_type(value)}")
            for name, alias in aliases:
                if name not in value and alias in value:
                    value = {**value, name: value[alias]}
            return fn(value, type_)

        return structure

    def unstructure_factory(cls: type) -> Callable[[Any], Any]:
        fields = attrs.fields(cls)
        overrides = {
            a.name: override(rename=wire_name(a), omit_if_default=bool(a.metadata.get("omit_if_default")))
            for a in fields
        }
        fn: Callable[[Any], Any] = make_dict_unstructure_fn(cls, conv, **overrides)  # type: ignore[arg-type]
        aliases = [(wire_name(a), alias) for a in fields for alias in a.metadata.get("aliases", ())]
        if not aliases:
            return fn

        def unstructure_with_aliases(value: Any) -> Any:
            data = fn(value)
            for name, alias in aliases:
                if name in data:
                    data[alias] = data[name]
            return data

        return unstructure_with_aliases

    conv.register_structure_hook_factory(attrs.has, structure_factory)
    conv.register_unstructure_hook_factory(attrs.has, unstructure_factory)
    conv.register_unstructure_hook(enum.Enum, lambda e: e.value)
    return conv


converter = _make_converter()


def omit_if_default() -> dict[str, bool]:
    """Field metadata: leave the field out of JSON when it has its default value."""
    return {"omit_if_default": True}


def also_as(*aliases: str, doc: str | None = None) -> dict[str, Any]:
    """
    Field metadata: a second wire name (e.g. E2B's snake_case). The value is written under
    both names, and read from the alias when a request does not use the main name.
    """
    return {"aliases": aliases, **({"doc": doc} if doc else {})}


# --------------------------------------------------------------------------- encoding

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ascii_encoder = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> bytes:
    """
    Compact UTF-8 JSON of an already unstructured value.

    Strings that cannot be UTF-8 (lone surrogates, e.g. undecodable file names read with
    ``surrogateescape``) are written as JSON ``\\u`` escapes instead of failing.
    """
    text = _encoder.encode(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _ascii_encoder.encode(value).encode("ascii")


# Control characters other than TAB, LF, CR and ESC: rare in output, left to the json module.
# One bytes object per character: ``in`` is a memchr (~2 GB/s for all of them, twice translate's speed).
_RARE_CONTROLS = tuple(bytes((c,)) for c in range(32) if c not in (9, 10, 13, 27))
_BYTE_ESCAPES = ((b"\\", b"\\\\"), (b'"', b'\\"'), (b"\n", b"\\n"), (b"\r", b"\\r"), (b"\t", b"\\t"),
                 (b"\x1b", b"\\u001b"))


def utf8_json_string(data: bytes) -> bytes:
    """
    The JSON string literal (quotes included) of the UTF-8 text ``data``, the same text
    ``dumps`` would give for ``data.decode("utf-8", "replace")``.

    Process and terminal output is mostly printable text with line breaks; escaping it on
    bytes (a few ``bytes.replace`` passes) runs at ~650 MB/s where ``json.dumps`` manages
    ~190 MB/s on line-dense text. Invalid UTF-8 and rare control characters take the
    ``json`` module's path.
    """
    return b"".join(utf8_json_string_parts(data))


def utf8_json_string_parts(data: bytes) -> tuple[bytes, ...]:
    """:func:`utf8_json_string` in pieces, for a caller that joins them into a larger frame
    anyway (one copy of a large output chunk fewer)."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return (dumps(data.decode("utf-8", "replace")),)
    if any(control in data for control in _RARE_CONTROLS):
        return (dumps(data.decode("utf-8")),)
    for raw, escaped in _BYTE_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return (b'"', data, b'"')


def unstructure(value: Any) -> Any:
    """Plain JSON-able value of a model (or of plain data, returned as it is)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return converter.unstructure(value)


def envelope(data: Any) -> bytes:
    """``{"data": ...}`` as bytes."""
    return dumps({"data": unstructure(data)})


# --------------------------------------------------------------------------- errors


def _camel_path(path: list[str | int]) -> str:
    """``["process", "cmd_args", 2]`` -> ``process.cmdArgs[2]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + to_camel(part)
    return out


def validation_details(exc: BaseException) -> list[dict[str, str]]:
    """Turn a cattrs error tree into ``[{"field": "process.cmd", "message": ...}]``."""
    found: list[dict[str, str]] = []

    def walk(e: BaseException, path: list[str | int]) -> None:
        if isinstance(e, (ClassValidationError, IterableValidationError)):
            with_notes, without_notes = e.group_exceptions()
            for sub, note in with_notes:
                step: str | int | None = getattr(note, "name" if isinstance(e, ClassValidationError) else "index", None)
                walk(sub, path + ([step] if step is not None else []))
            for sub in without_notes:
                walk(sub, path)
        elif isinstance(e, KeyError):
            found.append({"field": _camel_path(path), "message": "required field missing"})
        elif isinstance(e, ForbiddenExtraKeysError):
            for key in sorted(e.extra_fields):
                found.append({"field": _camel_path(path + [key]), "message": "unknown field"})
        else:
            message = str(e) or type(e).__name__
            found.append({"field": _camel_path(path), "message": message})

    walk(exc, [])
    return found


def structure(data: Any, model: type[T]) -> T:
    """Structure plain data into ``model`` or raise a 400 ``BAD_REQUEST`` naming the fields."""
    try:
        return converter.structure(data, model)
    except (ClassValidationError, IterableValidationError, ValueError, TypeError, KeyError) as exc:
        details = validation_details(exc)
        first = details[0] if details else {"field": "", "message": str(exc)}
        where = f" at '{first['field']}'" if first["field"] else ""
        raise ApiError("BAD_REQUEST", f"Invalid request body{where}: {first['message']}", details) from None


def _media_type(request: Any) -> bytes:
    raw = request.getHeader(b"content-type")
    if raw is None:
        return b""
    return raw.split(b";", 1)[0].strip().lower()


def read_body(request: Any, max_bytes: int = DEFAULT_MAX_BODY) -> bytes:
    """The request body, or 413 ``PAYLOAD_TOO_LARGE`` when it exceeds ``max_bytes``."""
    content = request.content
    if getattr(content, "overflowed", False):
        raise ApiError("PAYLOAD_TOO_LARGE", f"Request body exceeds {content.limit} bytes")
    content.seek(0, 2)
    size = content.tell()
    if size > max_bytes:
        raise ApiError("PAYLOAD_TOO_LARGE", f"Request body exceeds {max_bytes} bytes")
    content.seek(0)
    data: bytes = content.read()
    return data


def read_json(request: Any, model: type[T], max_bytes: int = DEFAULT_MAX_BODY) -> T:
    """
    Parse the JSON body of ``request`` into ``model``.

    Wrong content type -> 415, too big -> 413, unparseable or wrong shape -> 400
    ``BAD_REQUEST`` with the offending field paths in ``details``. An empty body
    counts as ``{}`` so that endpoints whose fields are all optional accept a bare POST.
    """
    media = _media_type(request)
    raw = read_body(request, max_bytes)
    if raw.strip() and media and media != b"application/json" and not media.endswith(b"+json"):
        raise ApiError(
            "UNSUPPORTED_MEDIA_TYPE",
            f"Expected Content-Type application/json, got {media.decode('latin-1')}",
        )
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw, parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ApiError("BAD_REQUEST", f"Request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ApiError("BAD_REQUEST", "Request body is nested too deeply") from None
    return structure(data, model)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_query(request: Any, model: type[T]) -> T:
    """
    Parse the query string into ``model``: each field takes the first value of its
    camelCase (or snake_case) name, coerced to the field's type (int, float, bool, str).
    """
    values: dict[str, Any] = {}
    attrs.resolve_types(model)  # type: ignore[type-var]  # string annotations -> types (cached by attrs)
    for field in attrs.fields(model):  # type: ignore[arg-type]
        name = wire_name(field)
        raw = request.args.get(name.encode()) or request.args.get(field.name.encode())
        if not raw:
            continue
        text = raw[0].decode("utf-8", "replace")
        values[name] = _coerce_query(text, field.type, name)
    return structure(values, model)


def _coerce_query(text: str, annotation: Any, name: str) -> Any:
    kinds = {annotation} if isinstance(annotation, type) else set(getattr(annotation, "__args__", ()))
    kinds.discard(type(None))
    try:
        if bool in kinds:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"expected a boolean, got {text!r}")
        if int in kinds:
            return int(text)
        if float in kinds:
            return float(text)
    except ValueError:
        raise ApiError(
            "BAD_REQUEST",
            f"Invalid query parameter '{name}': {text!r}",
            [{"field": name, "message": f"invalid value {text!r}"}],
        ) from None
    return text


# --------------------------------------------------------------------------- results


@attrs.frozen
class Result:
    """A handler result with an explicit status and extra headers."""

    data: Any
    status: int = 200
    headers: Mapping[str, str] = attrs.field(factory=dict)


def created(data: Any) -> Result:
    return Result(data, 201)


def accepted(data: Any) -> Result:
    return Result(data, 202)


@attrs.frozen
class Encoded:
    """A JSON body already encoded (e.g. in a thread, for very large answers)."""

    body: bytes
    status: int = 200


def encode_envelope(data: Any) -> Encoded:
    """``{"data": ...}`` encoded now; call it inside ``run_blocking`` for big results."""
    return Encoded(envelope(data))


class _NoContent:
    def __repr__(self) -> str:
        return "NO_CONTENT"


NO_CONTENT: Any = _NoContent()
"""Return this for a 204 with an empty body."""

@attrs.frozen
class Empty:
    """No fields: ``{"data": {}}``."""


RESPONSE_WRITTEN: Any = NOT_DONE_YET
"""Return (or fire a Deferred with) this when the handler wrote the response itself
(streams): the wrapper then only makes sure the request is finished."""


# --------------------------------------------------------------------------- routes


@attrs.frozen
class RouteSpec:
    """Everything known about one route: what the dispatcher and OpenAPI need."""

    method: str
    path: str
    name: str
    summary: str
    description: str
    body: type | None
    query: type | None
    response: Any
    status: int
    errors: tuple[str, ...]
    public: bool
    top_level: bool
    stream: bool
    max_body: int
    tags: tuple[str, ...]
    deprecated: bool
    raw_response: bool
    handler: Callable[..., Any] = attrs.field(eq=False, repr=False)
    content_type: str | None = None

    @property
    def static(self) -> bool:
        """True when the path has no ``<variable>`` part."""
        return "<" not in self.path

    @property
    def openapi_path(self) -> str:
        """``/pty/<id>`` -> ``/pty/{id}`` (converters such as ``<path:p>`` dropped)."""
        return re.sub(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>", r"{\1}", self.path)


ROUTES_ATTRIBUTE = "__codebuddy_routes__"


def json_route(
    app: Any,
    method: str,
    path: str,
    *,
    summary: str = "",
    description: str = "",
    body: type | None = None,
    query: type | None = None,
    response: Any = None,
    status: int = 200,
    errors: tuple[str, ...] = (),
    public: bool = False,
    top_level: bool = False,
    stream: bool = False,
    raw_response: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
    tags: tuple[str, ...] = (),
    deprecated: bool = False,
    content_type: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """
    Declare a JSON route on ``app`` (an area's class-level ``Klein()``).

    The handler is called as ``handler(self, request, **path_args[, body=...][, query=...])``
    and returns a model (enveloped as ``{"data": ...}``), a :class:`Result`, ``NO_CONTENT``,
    ``RESPONSE_WRITTEN`` for streams, or a Deferred/coroutine of one of those.
    ``top_level=True`` mirrors the result's fields at the top level beside ``data``
    (for clients that read them there, ARCHITECTURE.md §5). ``public=True`` skips
    authentication. ``content_type`` documents a non-JSON success body (downloads).
    """
    method = method.upper()

    def decorator(handler: Callable[..., Any]) -> Callable[..., Any]:
        name = f"{handler.__qualname__}.{method.lower()}"
        doc = (handler.__doc__ or "").strip()
        spec = RouteSpec(
            method=method,
            path=path,
            name=name,
            summary=summary or (doc.splitlines()[0] if doc else handler.__name__),
            description=description or doc,
            body=body,
            query=query,
            response=response,
            status=status,
            errors=tuple(errors),
            public=public,
            top_level=top_level,
            stream=stream,
            max_body=max_body,
            tags=tags,
            deprecated=deprecated,
            raw_response=raw_response,
            handler=handler,
            content_type=content_type,
        )

        def endpoint(instance: Any, request: Any, **kwargs: Any) -> Any:
            return call_route(spec, instance, request, kwargs)

        endpoint.__name__ = handler.__name__
        endpoint.__qualname__ = handler.__qualname__
        endpoint.__doc__ = handler.__doc__
        setattr(endpoint, ROUTE_SPEC_ATTRIBUTE, spec)
        app.route(path, methods=[method], endpoint=name)(endpoint)
        registry = app.__dict__.setdefault(ROUTES_ATTRIBUTE, [])
        registry.append(spec)
        return endpoint

    return decorator


ROUTE_SPEC_ATTRIBUTE = "__codebuddy_route_spec__"


def routes_of(app: Any) -> list[RouteSpec]:
    """The routes declared on a Klein app with :func:`json_route`."""
    return list(app.__dict__.get(ROUTES_ATTRIBUTE, ()))


def call_route(spec: RouteSpec, instance: Any, request: Any, kwargs: dict[str, Any]) -> Any:
    """
    Run one route: authenticate, parse, call, serialise. Returns bytes (status and
    headers already set on ``request``) or a Deferred firing with bytes or
    ``NOT_DONE_YET``. Never raises.
    """
    try:
        if not spec.public:
            guard = getattr(request, "guard", None)
            if guard is not None:
                guard.authenticate(request)
        if spec.body is not None:
            kwargs["body"] = read_json(request, spec.body, spec.max_body)
        if spec.query is not None:
            kwargs["query"] = read_query(request, spec.query)
        result = spec.handler(instance, request, **kwargs)
    except ApiError as err:
        return render_error(request, err)
    except Exception:
        return render_failure(request, Failure())
    if iscoroutine(result):
        result = ensureDeferred(result)
    if isinstance(result, Deferred):
        return result.addCallbacks(
            lambda value: render_result(request, spec, value),
            lambda failure: render_failure(request, failure),
        )
    return render_result(request, spec, result)


def render_result(request: Any, spec: RouteSpec, result: Any) -> Any:
    """Serialise a handler's result onto ``request``; returns the body bytes."""
    if result is NOT_DONE_YET:
        return NOT_DONE_YET
    status = spec.status
    if isinstance(result, Result):
        status = result.status
        for key, value in result.headers.items():
            request.setHeader(key.encode(), value.encode())
        result = result.data
    if result is NO_CONTENT:
        request.setResponseCode(204)
        return b""
    if isinstance(result, Encoded):
        request.setResponseCode(result.status)
        request.setHeader(b"content-type", JSON_CONTENT_TYPE)
        return result.body
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON_CONTENT_TYPE)
    data = unstructure(result)
    if spec.raw_response:
        return dumps(data)
    if spec.top_level and isinstance(data, dict):
        return dumps({**data, "data": data})
    return dumps({"data": data})


# Reason phrases twisted.web does not know (it would send "Unknown Status").
_REASONS = {429: b"Too Many Requests"}


def render_error(request: Any, err: ApiError) -> bytes:
    """Write an :class:`ApiError` as the error envelope."""
    request.setResponseCode(err.status, _REASONS.get(err.status))
    request.setHeader(b"content-type", JSON_CONTENT_TYPE)
    for key, value in err.headers.items():
        request.setHeader(key.encode(), value.encode())
    return dumps(err.to_json())


def render_failure(request: Any, failure: Failure) -> Any:
    """Map a Failure to a response: ApiError as it is, anything else a logged 500."""
    if failure.check(ApiError):
        return render_error(request, failure.value)  # type: ignore[arg-type]
    if failure.check(CancelledError):
        # The client went away; nothing can be written.
        return NOT_DONE_YET
    return render_error(request, internal_error(request, failure))


def internal_error(request: Any, failure: Failure) -> ApiError:
    """Log ``failure`` with a fresh incident id and return the 500 that names only the id."""
    incident = uuid.uuid4().hex[:12]
    uri = getattr(request, "path", b"?")
    log.failure(
        "Unhandled error (incident {incident}) answering {method} {path}",
        failure,
        incident=incident,
        method=getattr(request, "method", b"?").decode("latin-1"),
        path=uri.decode("latin-1", "replace"),
    )
    return ApiError(
        "INTERNAL_ERROR",
        f"Internal server error (incident {incident})",
        {"incident": incident},
    )
