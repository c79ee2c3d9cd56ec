# -*- test-case-name: tests.agent.test_model -*-
"""
Model access for the agent: which model to call (:func:`resolve_model`) and how
(:class:`ChatClient`, OpenAI-compatible streaming chat completions over treq).

Configuration
=============

:func:`resolve_model` (blocking: it reads files) answers one :class:`ModelConfig`, from the
first of these that applies:

1. ``requested`` (a run's or session's model choice): the configured model whose ``id`` is
   ``requested`` (else whose ``name`` is), from the environment or a ``models.json``.
2. The environment: ``CODEBUDDY_BASE_URL`` and ``CODEBUDDY_MODEL`` (both required; the key
   ``CODEBUDDY_API_KEY`` is optional, local servers need none). There is no default URL.
   ``CODEBUDDY_MODEL`` alone selects the ``models.json`` entry with that id.
3. ``<workspace>/.codebuddy/models.json``, then ``<home>/models.json`` (``home`` is the
   CodeBuddy home, ``~/.codebuddy``): the entry marked ``"default": true``, else the first
   entry. Entries with the same ``id`` are merged field by field, the workspace's winning;
   ``availableModels`` (a list of ids; the workspace's replaces the home's) limits the choice.

``models.json`` is CodeBuddy's format, either ``{"models": [...], "availableModels": [...]}``
or a bare list of entries::

    {"models": [{"id": "gpt-4o", "name": "GPT-4o",
                 "url": "https://api.openai.com/v1/chat/completions",
                 "apiKey": "${OPENAI_API_KEY}",
                 "maxInputTokens": 128000, "maxOutputTokens": 16384}]}

``id`` is required and is the model name sent to the provider; ``url`` is the chat
completions endpoint or the base URL before ``/chat/completions`` (both forms work, for the
file and for ``CODEBUDDY_BASE_URL``); ``contextWindow`` is accepted for ``maxInputTokens``
(default 128000). ``${VAR}`` in ``url`` and ``apiKey`` is taken from the environment; an unset
variable is an error naming it (raised when that model is chosen; :func:`list_models` skips
such entries). Other CodeBuddy fields (``vendor``, ``temperature``, ``supports*``) are ignored.
Nothing configured, an unusable choice, or an unreadable file raises :class:`ModelNotConfigured`
whose message says what to set (a JSON syntax error names the file, line and column); the runs
API answers it as 400 ``MODEL_NOT_CONFIGURED``.

Calling the model
=================

``ChatClient(http_client, clock).stream(config, messages, tools, on_event, cancel)`` POSTs
``{"model", "messages", "tools"?, "stream": true, "stream_options": {"include_usage": true}}``
to ``config.chat_url`` (``Authorization: Bearer <key>`` when there is a key; redirects are
not followed) and fires with a :class:`ModelTurn`. While the answer streams, ``on_event`` is
called synchronously with each :data:`ModelEvent` in arrival order:

- :class:`ReasoningDelta` (``delta.reasoning_content`` or ``delta.reasoning``) and
  :class:`TextDelta` (``delta.content``), never empty;
- :class:`ToolCallStarted` ``(index, id, name)`` once per call, then :class:`ToolCallDelta`
  ``(index, arguments)`` fragments; ``index`` counts the turn's calls from 0; a call the
  provider sent without an id gets a generated ``call_...`` one;
- :class:`Usage` at most once, just before the Deferred fires.

A server that ignores ``stream`` and answers one JSON completion is accepted: the same events
are delivered, each part in one piece. The turn's ``tool_calls`` are complete (arguments
concatenated, not parsed: they may be invalid JSON); ``finish_reason`` is the provider's
(``stop``, ``tool_calls``, ``length``, ...; some providers say ``stop`` with tool calls, so test
``tool_calls`` rather than the reason). ``ModelTurn.assistant_message()`` is the message to
append to the conversation before the tool results.

Failures are :class:`ModelError` ``(code, message, status, retryable, provider_code)``; no
message ever contains the API key:

======================  ==============================================================
``MODEL_AUTH_FAILED``   401/403; says to check ``CODEBUDDY_API_KEY`` / ``apiKey``
``MODEL_RATE_LIMITED``  429, after the retries
``MODEL_UNAVAILABLE``   5xx, 408, connection failures, timeouts (after the retries), a
                        stream cut short once output started (no retry then)
``MODEL_NOT_FOUND``     404 (unknown model or wrong endpoint URL), or a redirect (never
                        followed)
``MODEL_BAD_REQUEST``   other 4xx, with the provider's ``error.message`` (``provider_code``
                        carries its ``error.code``, e.g. ``context_length_exceeded``)
``MODEL_BAD_RESPONSE``  a body that is not a chat completion or an SSE stream of chunks
======================  ==============================================================

Retries: connection failures, timeouts and 408/429/500/502/503/504/529 answers are retried
``retries`` times (default 3) *before anything was delivered to* ``on_event``, waiting
``backoff`` (0.5 s) doubling each time, or the answer's ``Retry-After`` / ``retry-after-ms``
(capped at ``max_retry_after``, 30 s) on the injected clock. Once output has started a failure
is final (the caller has already shown part of the answer). A 400 naming ``stream_options``
(servers that do not know it) is retried once without it.

Timeouts (constructor parameters, on the injected clock): ``first_byte_timeout`` (120 s) from
sending the request to the first byte of the answer's body, ``idle_timeout`` (120 s) between
two reads of the body. The TCP connect timeout belongs to the HTTP client's agent:
:func:`make_http_client` builds the client the daemon uses, with ``connect_timeout`` (10 s).

Cancelling: ``d.cancel()`` on the returned Deferred, or firing the optional ``cancel``
Deferred, stops the request where it is (a pending connection, the streaming body, or the wait
before a retry: the connection is closed) and the Deferred fails with
:class:`~twisted.internet.defer.CancelledError`. An exception raised by ``on_event`` also stops
the request and fails the Deferred with that exception.

Nothing here imports the global reactor: the HTTP client and the clock are passed in.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss

from codebuddy import __version__
from codebuddy.workers.remote import QuietClientFactory

__all__ = [
    "ChatClient",
    "ModelConfig",
    "ModelError",
    "ModelEvent",
    "ModelNotConfigured",
    "ModelTurn",
    "ReasoningDelta",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStarted",
    "Usage",
    "list_models",
    "make_http_client",
    "resolve_model",
]

log = Logger()

DEFAULT_CONTEXT_WINDOW = 128_000
CHAT_PATH = "/chat/completions"
ENV_BASE_URL = "CODEBUDDY_BASE_URL"
ENV_API_KEY = "CODEBUDDY_API_KEY"
ENV_MODEL = "CODEBUDDY_MODEL"
MODELS_FILE = "models.json"

MAX_ERROR_BODY = 64 * 1024
MAX_JSON_BODY = 32 * 1024 * 1024
MAX_SSE_LINE = 16 * 1024 * 1024
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
DONE_GRACE = 2.0  # seconds the rest of a body may take after [DONE]


# --------------------------------------------------------------------------- configuration


@attrs.frozen
class ModelConfig:
    """One callable model. ``api_key`` never appears in ``repr``."""

    base_url: str
    """The provider's base URL, without ``/chat/completions`` (e.g. ``https://api.openai.com/v1``)."""
    model: str
    """The model id sent to the provider."""
    api_key: str | None = attrs.field(default=None, repr=False)
    name: str = attrs.field(default=attrs.Factory(lambda self: self.model, takes_self=True))
    """Display name (the id unless ``models.json`` gives one)."""
    context_window: int = DEFAULT_CONTEXT_WINDOW
    max_output_tokens: int | None = None
    source: str = "environment"
    """Where it came from: ``"environment (CODEBUDDY_BASE_URL, CODEBUDDY_MODEL)"`` or a models.json path."""

    @property
    def chat_url(self) -> str:
        """The chat completions endpoint: ``base_url`` + ``/chat/completions`` (a query string is kept)."""
        parts = urlsplit(self.base_url)
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + CHAT_PATH))


class ModelNotConfigured(Exception):
    """No usable model: ``str(error)`` says what to set (the runs API answers 400 ``MODEL_NOT_CONFIGURED``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _normalise_url(url: str, what: str) -> str:
    """The base URL of ``url`` (a base URL or a full ``.../chat/completions`` endpoint)."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ModelNotConfigured(f"{what} must be an http:// or https:// URL, got {_display_url(url)!r}")
    path = parts.path.rstrip("/")
    if path.endswith(CHAT_PATH):
        path = path[: -len(CHAT_PATH)]
    return urlunsplit(parts._replace(path=path, fragment=""))


def _display_url(url: str) -> str:
    """``url`` without credentials or query (either may carry a key), for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _help(home: Path, workspace: Path) -> str:
    example = ('{"models": [{"id": "gpt-4o", "url": "https://api.openai.com/v1/chat/completions", '
               '"apiKey": "${OPENAI_API_KEY}"}]}')
    return (f"Set {ENV_BASE_URL} (an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or "
            f"http://127.0.0.1:11434/v1) and {ENV_MODEL} (the model id), plus {ENV_API_KEY} if the endpoint "
            f"needs a key; or list models in {home / MODELS_FILE} (or {workspace / '.codebuddy' / MODELS_FILE}), "
            f"e.g. {example}")


@attrs.define
class _Entry:
    """One ``models.json`` entry after merging (raw fields, where each came from)."""

    id: str
    fields: dict[str, Any]
    path: Path
    index: int


@attrs.define
class _Catalog:
    entries: list[_Entry]
    available: list[str] | None
    files: list[Path]


def _fail_shape(path: Path, where: str, problem: str) -> ModelNotConfigured:
    return ModelNotConfigured(f"{path}: {where} {problem}")


def _read_models_file(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str] | None] | None:
    """The entries (index in the file, object) and ``availableModels`` of one file; None when absent."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelNotConfigured(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ModelNotConfigured(f"{path} is not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelNotConfigured(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
                                 "Fix or remove the file.") from None
    except RecursionError:
        raise ModelNotConfigured(f"{path} is not valid JSON: nested too deeply") from None
    available: list[str] | None = None
    if isinstance(data, dict):
        models = data.get("models", [])
        prefix = "models"
        if "availableModels" in data and data["availableModels"] is not None:
            listed = data["availableModels"]
            if not isinstance(listed, list) or not all(isinstance(x, str) for x in listed):
                raise _fail_shape(path, "availableModels", "must be a list of model ids")
            available = list(listed)
    elif isinstance(data, list):
        models, prefix = data, ""
    else:
        raise ModelNotConfigured(f'{path} must hold {{"models": [...]}} or a list of models')
    if not isinstance(models, list):
        raise _fail_shape(path, "models", "must be a list")
    entries = []
    for index, entry in enumerate(models):
        where = f"{prefix}[{index}]"
        if not isinstance(entry, dict):
            raise _fail_shape(path, where, "must be an object")
        model_id = entry.get("id")
        if not isinstance(model_id, str) or not model_id.strip():
            raise _fail_shape(path, f"{where}.id", "is required (the model id sent to the provider)")
        for key in ("name", "url", "apiKey"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise _fail_shape(path, f"{where}.{key}", "must be a string")
        for key in ("maxInputTokens", "contextWindow", "maxOutputTokens"):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise _fail_shape(path, f"{where}.{key}", "must be a positive integer")
        if entry.get("default") is not None and not isinstance(entry["default"], bool):
            raise _fail_shape(path, f"{where}.default", "must be true or false")
        entries.append((index, entry))
    return entries, available


def _catalog(home: Path, workspace: Path) -> _Catalog:
    """The merged ``models.json`` entries, workspace first (blocking)."""
    paths: list[Path] = []
    for path in (workspace / ".codebuddy" / MODELS_FILE, home / MODELS_FILE):
        try:
            same = any(p.exists() and path.exists() and p.samefile(path) for p in paths)
        except OSError:
            same = False
        if not same:
            paths.append(path)
    by_id: dict[str, _Entry] = {}
    order: list[str] = []  # the higher-precedence file's entries first, each file in its own order
    available: list[str] | None = None
    files = []
    # Lowest precedence first, so that later files override field by field.
    for path in reversed(paths):
        loaded = _read_models_file(path)
        if loaded is None:
            continue
        files.append(path)
        entries, listed = loaded
        if listed is not None:
            available = listed
        for index, fields in entries:
            model_id = fields["id"].strip()
            known = by_id.get(model_id)
            if known is None:
                by_id[model_id] = _Entry(model_id, dict(fields), path, index)
            else:
                known.fields.update({k: v for k, v in fields.items() if v is not None})
                known.path, known.index = path, index
    for path in paths:
        order += [e.id for e in sorted(by_id.values(), key=lambda e: e.index) if e.path == path]
    return _Catalog([by_id[i] for i in order], available, files)


def _expand(value: str, environ: Mapping[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ModelNotConfigured(f"{where} refers to ${{{name}}}, but {name} is not set in the environment")
        return environ[name]

    return _VARIABLE.sub(replace, value)


def _entry_config(entry: _Entry, environ: Mapping[str, str]) -> ModelConfig:
    fields = entry.fields
    where = f"{entry.path}: model {entry.id!r}"
    url = fields.get("url")
    if not url:
        raise ModelNotConfigured(f"{where} has no \"url\" (the provider's chat completions endpoint, e.g. "
                                 "https://api.openai.com/v1/chat/completions)")
    base_url = _normalise_url(_expand(url, environ, f"{where} url"), f"{where} url")
    api_key = fields.get("apiKey")
    if api_key is not None:
        api_key = _expand(api_key, environ, f"{where} apiKey").strip() or None
    context = fields.get("contextWindow") or fields.get("maxInputTokens") or DEFAULT_CONTEXT_WINDOW
    return ModelConfig(base_url=base_url, model=entry.id, api_key=api_key, name=fields.get("name") or entry.id,
                       context_window=context, max_output_tokens=fields.get("maxOutputTokens"),
                       source=str(entry.path))


def _env_config(environ: Mapping[str, str]) -> ModelConfig | None:
    base_url = environ.get(ENV_BASE_URL, "").strip()
    model = environ.get(ENV_MODEL, "").strip()
    if not (base_url and model):
        return None
    return ModelConfig(base_url=_normalise_url(base_url, ENV_BASE_URL), model=model,
                       api_key=environ.get(ENV_API_KEY, "").strip() or None,
                       source=f"environment ({ENV_BASE_URL}, {ENV_MODEL})")


def _find(entries: Sequence[_Entry], wanted: str) -> _Entry | None:
    for match in (lambda e: e.id == wanted, lambda e: e.fields.get("name") == wanted,
                  lambda e: e.id.casefold() == wanted.casefold()
                  or str(e.fields.get("name") or "").casefold() == wanted.casefold()):
        for entry in entries:
            if match(entry):
                return entry
    return None


def _allowed(catalog: _Catalog) -> list[_Entry]:
    if catalog.available is None:
        return catalog.entries
    return [e for e in catalog.entries if e.id in catalog.available]


def resolve_model(environ: Mapping[str, str], home: Path, workspace: Path, requested: str | None = None) -> ModelConfig:
    """
    The model to call (blocking: reads the ``models.json`` files). Order: ``requested`` (by id,
    then name) > the environment > workspace ``.codebuddy/models.json`` > ``<home>/models.json``.
    Raises :class:`ModelNotConfigured` with a message that says what to set.
    """
    env = _env_config(environ)
    catalog = _catalog(home, workspace)
    entries = _allowed(catalog)
    if requested:
        if env is not None and requested in (env.model, env.name):
            return env
        entry = _find(entries, requested)
        if entry is not None:
            return _entry_config(entry, environ)
        known = ([env.model] if env is not None else []) + [e.id for e in entries]
        listing = ", ".join(known) if known else "none"
        raise ModelNotConfigured(f"Model {requested!r} is not configured (configured models: {listing}). "
                                 + ("" if known else _help(home, workspace)))
    if env is not None:
        return env
    env_model = environ.get(ENV_MODEL, "").strip()
    if env_model:
        entry = _find(entries, env_model)
        if entry is not None:
            return _entry_config(entry, environ)
        raise ModelNotConfigured(f"{ENV_MODEL} is set to {env_model!r} but {ENV_BASE_URL} is not (and no "
                                 f"models.json entry has that id): set {ENV_BASE_URL} to the provider's "
                                 "OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    if environ.get(ENV_BASE_URL, "").strip():
        raise ModelNotConfigured(f"{ENV_BASE_URL} is set but {ENV_MODEL} is not: set {ENV_MODEL} to the model id to "
                                 "call (e.g. gpt-4o)")
    if entries:
        chosen = next((e for e in entries if e.fields.get("default") is True), entries[0])
        return _entry_config(chosen, environ)
    if catalog.files:
        files = " and ".join(str(p) for p in catalog.files)
        raise ModelNotConfigured(f"No model is configured: {files} lists no models"
                                 + (" that availableModels allows" if catalog.entries else "")
                                 + ". " + _help(home, workspace))
    raise ModelNotConfigured("No model is configured. " + _help(home, workspace))


def list_models(environ: Mapping[str, str], home: Path, workspace: Path) -> list[ModelConfig]:
    """
    Every usable configured model (blocking): the environment's first, then the ``models.json``
    entries (workspace first). Entries without a ``url`` or with an unset ``${VAR}`` are left out;
    an unreadable or malformed file raises :class:`ModelNotConfigured`.
    """
    result: list[ModelConfig] = []
    env = _env_config(environ)
    if env is not None:
        result.append(env)
    for entry in _allowed(_catalog(home, workspace)):
        if env is not None and entry.id == env.model:
            continue
        try:
            result.append(_entry_config(entry, environ))
        except ModelNotConfigured as exc:
            log.debug("Skipping a model: {reason}", reason=exc.message)
    return result


# --------------------------------------------------------------------------- events and results


@attrs.frozen
class TextDelta:
    """A piece of the answer's text."""

    text: str


@attrs.frozen
class ReasoningDelta:
    """A piece of the model's reasoning ("thinking") text."""

    text: str


@attrs.frozen
class ToolCallStarted:
    """A tool call begins: ``index`` counts the turn's calls from 0; ``id`` is the provider's or generated."""

    index: int
    id: str
    name: str


@attrs.frozen
class ToolCallDelta:
    """A fragment of tool call ``index``'s JSON arguments (concatenate them)."""

    index: int
    arguments: str


@attrs.frozen
class Usage:
    """Token counts of one model turn. ``cached``: prompt tokens served from the provider's cache, if said."""

    prompt_tokens: int
    completion_tokens: int
    cached: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


ModelEvent = TextDelta | ReasoningDelta | ToolCallStarted | ToolCallDelta | Usage


@attrs.frozen
class ToolCall:
    """A complete tool call: ``arguments`` is the JSON text as the model wrote it (not parsed)."""

    id: str
    name: str
    arguments: str


@attrs.frozen
class ModelTurn:
    """One model answer."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = attrs.Factory(list)
    finish_reason: str | None = None
    usage: Usage | None = None

    def assistant_message(self) -> dict[str, Any]:
        """The ``assistant`` message for the next request's history (reasoning is not sent back)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        elif message["content"] is None:
            message["content"] = ""
        return message


class ModelError(Exception):
    """
    A model request failed. ``code`` is one of ``MODEL_AUTH_FAILED``, ``MODEL_RATE_LIMITED``,
    ``MODEL_UNAVAILABLE``, ``MODEL_NOT_FOUND``, ``MODEL_BAD_REQUEST``, ``MODEL_BAD_RESPONSE``;
    ``status`` the provider's HTTP status if there was one; ``retryable`` whether trying the
    same request later may work; ``provider_code`` the provider's ``error.code``/``type``.
    """

    def __init__(self, code: str, message: str, status: int | None = None, retryable: bool = False,
                 provider_code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retryable = retryable
        self.provider_code = provider_code

    def __repr__(self) -> str:
        return f"ModelError({self.code!r}, {self.message!r}, status={self.status!r})"


class _Retry(Exception):
    """Internal: a failure that may be retried (``delay`` from Retry-After, ``free`` = does not count)."""

    def __init__(self, error: ModelError, delay: float | None = None, free: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.delay = delay
        self.free = free


# --------------------------------------------------------------------------- assembling a turn


@attrs.define
class _Slot:
    id: str | None
    name: str | None = None
    arguments: list[str] = attrs.Factory(list)
    announced: bool = False
    provider_index: int | None = None


def _usage(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None

    def number(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    prompt = number(data.get("prompt_tokens", data.get("input_tokens")))
    completion = number(data.get("completion_tokens", data.get("output_tokens")))
    if prompt is None and completion is None:
        return None
    details = data.get("prompt_tokens_details")
    cached = number(details.get("cached_tokens")) if isinstance(details, dict) else None
    if cached is None:
        cached = number(data.get("prompt_cache_hit_tokens"))
    return Usage(prompt or 0, completion or 0, cached)


def _text_of(value: Any) -> str:
    """A content value as text: a string, or a list of ``{"type": "text", "text"}`` parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text", "") for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _arguments_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


class _TurnBuilder:
    """Turns chunk deltas into events and, at the end, a :class:`ModelTurn`."""

    def __init__(self, on_event: Callable[[ModelEvent], None]) -> None:
        self.on_event = on_event
        self.started = False
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.slots: list[_Slot] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.finished = False

    def _emit(self, event: ModelEvent) -> None:
        self.started = True
        self.on_event(event)

    def chunk(self, data: Any) -> None:
        """One decoded ``chat.completion.chunk`` (or an in-stream error object)."""
        if not isinstance(data, dict):
            raise ModelError("MODEL_BAD_RESPONSE", f"the stream sent {type(data).__name__} instead of a chunk object")
        if data.get("error"):
            raise _error_from_object(data["error"], None, "the provider reported an error in the stream")
        usage = _usage(data.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = data.get("choices") or []
        if not isinstance(choices, list):
            raise ModelError("MODEL_BAD_RESPONSE", "a stream chunk's choices is not a list")
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = choice.get("message")
            self._delta(delta if isinstance(delta, dict) else {})
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]

    def completion(self, data: Any) -> None:
        """A whole non-streamed ``chat.completion``."""
        if not isinstance(data, dict):
            raise ModelError("MODEL_BAD_RESPONSE", "the answer is JSON but not a chat completion object")
        if data.get("error"):
            raise _error_from_object(data["error"], None, "the provider reported an error")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ModelError("MODEL_BAD_RESPONSE", "the answer has no choices")
        self.chunk(data)
        self.finished = True

    def _delta(self, delta: dict[str, Any]) -> None:
        reasoning = delta.get("reasoning_content")
        if not isinstance(reasoning, str) or not reasoning:
            reasoning = delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self.reasoning.append(reasoning)
            self._emit(ReasoningDelta(reasoning))
        text = _text_of(delta.get("content"))
        if text:
            self.text.append(text)
            self._emit(TextDelta(text))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._tool_call(call)

    def _slot_for(self, call: dict[str, Any]) -> int:
        provider_index = call.get("index") if isinstance(call.get("index"), int) else None
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else None
        if call_id is not None:
            for number, slot in enumerate(self.slots):
                if slot.id == call_id:
                    return number
        if provider_index is not None:
            for number in range(len(self.slots) - 1, -1, -1):
                slot = self.slots[number]
                if slot.provider_index == provider_index:
                    # A new id at a known index is a new call (providers that number every call 0).
                    if call_id is None or slot.id is None:
                        if call_id is not None:
                            slot.id = call_id
                        return number
                    break
        elif call_id is None and self.slots:
            return len(self.slots) - 1
        self.slots.append(_Slot(call_id, provider_index=provider_index))
        return len(self.slots) - 1

    def _tool_call(self, call: dict[str, Any]) -> None:
        number = self._slot_for(call)
        slot = self.slots[number]
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        name = function.get("name")
        if isinstance(name, str) and name and not slot.name:
            slot.name = name
        fragment = _arguments_text(function.get("arguments"))
        if fragment:
            slot.arguments.append(fragment)
        if slot.name and not slot.announced:
            slot.announced = True
            if slot.id is None:
                slot.id = "call_" + secrets.token_hex(12)
            self._emit(ToolCallStarted(number, slot.id, slot.name))
            pending = "".join(slot.arguments)
            if pending:
                self._emit(ToolCallDelta(number, pending))
        elif slot.announced and fragment:
            self._emit(ToolCallDelta(number, fragment))

    def result(self) -> ModelTurn:
        calls = []
        for number, slot in enumerate(self.slots):
            if not slot.name:
                raise ModelError("MODEL_BAD_RESPONSE", f"tool call {number} has no function name")
            assert slot.id is not None
            calls.append(ToolCall(slot.id, slot.name, "".join(slot.arguments)))
        if self.usage is not None:
            self.on_event(self.usage)
        return ModelTurn(text="".join(self.text), reasoning="".join(self.reasoning), tool_calls=calls,
                         finish_reason=self.finish_reason, usage=self.usage)


def _error_from_object(error: Any, status: int | None, fallback: str) -> ModelError | _Retry:
    """An error object found inside a 200 answer (a stream chunk or a JSON body)."""
    message, provider_code = _provider_message(error)
    kind = f"{provider_code or ''} {message}".lower()
    code_value = error.get("code") if isinstance(error, dict) else None
    if isinstance(code_value, int) and 400 <= code_value < 600:
        status = code_value
    text = message or fallback
    if status == 429 or "rate_limit" in kind or "rate limit" in kind:
        return _Retry(ModelError("MODEL_RATE_LIMITED", f"The provider is rate limiting: {text}", status, True,
                                 provider_code))
    if (status is not None and status >= 500) or "overloaded" in kind or "server_error" in kind:
        return _Retry(ModelError("MODEL_UNAVAILABLE", f"The provider failed: {text}", status, True, provider_code))
    return ModelError("MODEL_BAD_REQUEST" if status is None or status < 500 else "MODEL_UNAVAILABLE",
                      f"The provider refused the request: {text}", status, False, provider_code)


def _provider_message(error: Any) -> tuple[str, str | None]:
    """(message, code) from an OpenAI-style ``error`` value (an object or a string)."""
    if isinstance(error, str):
        return _one_line(error), None
    if not isinstance(error, dict):
        return "", None
    message = error.get("message") or error.get("detail") or error.get("msg") or ""
    if not isinstance(message, str):
        message = json.dumps(message, ensure_ascii=False)
    code = error.get("code") if isinstance(error.get("code"), str) else error.get("type")
    return _one_line(message), code if isinstance(code, str) and code else None


def _redact(text: str, api_key: str | None) -> str:
    """``text`` without the API key (providers and libraries sometimes echo it)."""
    if api_key and len(api_key) >= 4:
        return text.replace(api_key, "<api key>")
    return text


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- reading bodies


class _SSEDecoder:
    """
    Incremental Server-Sent Events parsing: bytes in, the ``data`` of each complete event out.
    Lines end in LF, CRLF or CR; comments and other fields are skipped; several ``data:``
    lines make one event joined with LF, as the SSE grammar says.
    """

    def __init__(self, max_line: int = MAX_SSE_LINE) -> None:
        self.buffer = bytearray()
        self.data: list[str] = []
        self.max_line = max_line
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[str]:
        events: list[str] = []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        self.buffer.extend(chunk)
        start = 0
        buffer = self.buffer
        while True:
            lf = buffer.find(b"\n", start)
            cr = buffer.find(b"\r", start, lf if lf >= 0 else len(buffer))
            if cr >= 0:
                end, after = cr, cr + 1
                if after < len(buffer):
                    if buffer[after] == 0x0A:
                        after += 1
                else:
                    self._skip_lf = True
            elif lf >= 0:
                end, after = lf, lf + 1
            else:
                break
            self._line(bytes(buffer[start:end]), events)
            start = after
        del buffer[:start]
        if len(buffer) > self.max_line:
            raise ModelError("MODEL_BAD_RESPONSE", f"a stream line is longer than {self.max_line} bytes")
        return events

    def _line(self, raw: bytes, events: list[str]) -> None:
        if not raw:
            if self.data:
                events.append("\n".join(self.data))
                self.data = []
            return
        if raw[:1] == b":":
            return
        name, _, value = raw.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self.data.append(value.decode("utf-8", "replace"))

    def close(self) -> list[str]:
        """The last event when the body ends without a blank line."""
        events: list[str] = []
        if self.buffer:
            self._line(bytes(self.buffer), events)
            self.buffer.clear()
        self._line(b"", events)
        return events


def _parse_events(data: str) -> list[Any]:
    """The JSON document(s) of one SSE event; a server that forgot blank lines sends one per line."""
    try:
        return [json.loads(data)]
    except ValueError:
        if "\n" not in data:
            raise
    return [json.loads(line) for line in data.split("\n") if line.strip()]


class _ChatSink:
    """The body of a 2xx answer: an SSE stream of chunks, or one JSON completion (told apart by its first byte)."""

    def __init__(self, builder: _TurnBuilder) -> None:
        self.builder = builder
        self.mode: str | None = None
        self.decoder = _SSEDecoder()
        self.body = bytearray()
        self.done = False

    def feed(self, data: bytes) -> bool:
        """Consume bytes; True when the answer is complete (``[DONE]``)."""
        if self.mode is None:
            # Sniffed, not taken from Content-Type: some servers label either kind wrongly.
            data = data.lstrip()
            if not data:
                return False
            self.mode = "json" if data[:1] in (b"{", b"[") else "sse"
        if self.mode == "json":
            self.body.extend(data)
            if len(self.body) > MAX_JSON_BODY:
                raise ModelError("MODEL_BAD_RESPONSE", f"the answer is larger than {MAX_JSON_BODY} bytes")
            return False
        for event in self.decoder.feed(data):
            if self._event(event):
                return True
        return False

    def _event(self, data: str) -> bool:
        if data.strip() == "[DONE]":
            self.done = True
            return True
        try:
            chunks = _parse_events(data)
        except (ValueError, RecursionError):
            raise ModelError("MODEL_BAD_RESPONSE", f"the stream sent data that is not JSON: {_one_line(data, 200)!r}") \
                from None
        for chunk in chunks:
            self.builder.chunk(chunk)
        return False

    def close(self, clean: bool) -> ModelTurn:
        """The body ended (``clean``: completely, as far as HTTP can tell)."""
        builder = self.builder
        if self.mode == "json":
            if not clean:
                raise _cut_short()
            try:
                data = json.loads(bytes(self.body))
            except (ValueError, RecursionError):
                raise ModelError("MODEL_BAD_RESPONSE", "the answer is not valid JSON: "
                                 f"{_one_line(bytes(self.body[:200]).decode('utf-8', 'replace'))!r}") from None
            builder.completion(data)
            return builder.result()
        if not self.done:
            for event in self.decoder.close():
                if self._event(event):
                    break
        if self.done or builder.finish_reason is not None:
            return builder.result()
        if self.mode is None and clean:
            raise ModelError("MODEL_BAD_RESPONSE", "the answer is empty")
        raise _cut_short()


def _cut_short() -> _Retry:
    return _Retry(ModelError("MODEL_UNAVAILABLE", "the answer ended before the model finished (connection closed)",
                             None, True))


class _Collector:
    """An error answer's body, up to ``limit`` bytes (the rest is not read)."""

    def __init__(self, limit: int = MAX_ERROR_BODY) -> None:
        self.limit = limit
        self.body = bytearray()

    def feed(self, data: bytes) -> bool:
        self.body.extend(data[: self.limit - len(self.body)])
        return len(self.body) >= self.limit

    def close(self, clean: bool) -> bytes:
        return bytes(self.body)


class _BodyReader(Protocol):
    """
    Feeds a response body to a sink; ``done`` fires with the sink's result. Cancelling ``done``
    closes the connection. Once the sink saw the whole answer (``[DONE]``), the rest of the body
    is waited for a short grace only (:meth:`expire`), then the connection is closed.
    """

    def __init__(self, sink: _ChatSink | _Collector, on_data: Callable[[], None],
                 on_complete: Callable[[], None]) -> None:
        self.sink = sink
        self.on_data = on_data
        self.on_complete = on_complete
        self.done: Deferred[Any] = Deferred(lambda _d: self.stop())
        self.complete = False
        self.ended = False
        self.stopped = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's name)
        if self.done.called or self.complete:
            return
        self.on_data()
        try:
            complete = self.sink.feed(data)
        except Exception:
            failure = Failure()
            self.stop()
            self.done.errback(failure)
            return
        if complete:
            self.complete = True
            if isinstance(self.sink, _Collector):
                self.stop()
                self._finish(clean=True)
            else:
                self.on_complete()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.ended = True
        if not self.done.called and not self.stopped:
            self._finish(clean=self.complete or bool(reason.check(ResponseDone, PotentialDataLoss)))

    def expire(self) -> None:
        """The watchdog fired: a complete answer is kept (its connection closed), anything else cancelled."""
        if self.done.called:
            return
        if self.complete:
            self.stop()
            self._finish(clean=True)
        else:
            self.done.cancel()

    def _finish(self, clean: bool) -> None:
        try:
            result = self.sink.close(clean)
        except Exception:
            self.done.errback(Failure())
        else:
            self.done.callback(result)

    def stop(self) -> None:
        """Stop reading: closes the connection (when the body has not ended yet)."""
        self.stopped = True
        transport: Any = self.transport
        if transport is not None and not self.ended:
            self.ended = True
            transport.stopProducing()


class _Watchdog:
    """One timer on the injected clock, re-armed as the answer progresses; firing runs ``action``."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.call: IDelayedCall | None = None
        self.fired: str | None = None
        self.what = ""
        self.action: Callable[[], object] = lambda: None

    def arm(self, seconds: float, what: str) -> None:
        if self.call is not None and self.call.active() and what == self.what:
            self.call.reset(seconds)  # the common case: one more chunk of a stream
            return
        self.cancel()
        self.what = what
        self.call = self.clock.callLater(seconds, self._fire, what)

    def _fire(self, what: str) -> None:
        self.call = None
        self.fired = what
        self.action()

    def cancel(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


def _cancellable(inner: Deferred[Any]) -> Deferred[Any]:
    """
    A Deferred for ``inner`` that fails with exactly ``CancelledError`` when cancelled (Agent
    requests may fail with ``ResponseNeverReceived([CancelledError])`` instead); ``inner`` is
    cancelled too and its late outcome dropped.
    """
    cancelled: list[bool] = []

    def cancel(_d: Deferred[Any]) -> None:
        cancelled.append(True)
        inner.cancel()

    outer: Deferred[Any] = Deferred(cancel)

    def relay(result: Any) -> None:
        if cancelled:
            if not isinstance(result, Failure) and hasattr(result, "deliverBody"):
                result.deliverBody(_Discard())
            return None
        if isinstance(result, Failure):
            outer.errback(result)
        else:
            outer.callback(result)
        return None

    inner.addBoth(relay)
    return outer


class _Discard(Protocol):
    """Closes a response nobody wants any more."""

    def connectionMade(self) -> None:  # noqa: N802
        transport: Any = self.transport
        transport.stopProducing()


# --------------------------------------------------------------------------- the client


def make_http_client(reactor: Any, *, connect_timeout: float = 10.0, persistent: bool = True,
                     pool: HTTPConnectionPool | None = None) -> HTTPClient:
    """
    The treq client for :class:`ChatClient` (built by the composition root): an Agent with
    ``connect_timeout`` and a connection pool without "Starting factory" log noise, persistent by
    default. Pass ``pool`` to own it (and ``closeCachedConnections()`` it on shutdown).
    """
    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = QuietClientFactory  # type: ignore[misc]
    return HTTPClient(Agent(reactor, connectTimeout=connect_timeout, pool=pool))


def _describe(failure: Failure) -> str:
    value: Any = failure.value
    reasons = getattr(value, "reasons", None)
    if reasons:  # ResponseNeverReceived / ResponseFailed wrap the real reasons
        inner = reasons[0]
        value = getattr(inner, "value", inner)
    name = type(value).__name__
    text = str(value).strip()
    return f"{name}: {_one_line(text, 200)}" if text and text != name else name


def _header(response: Any, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    if not values:
        return None
    value = values[0]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _final(error: ModelError, config: ModelConfig, retries: int) -> ModelError:
    """The error the caller sees: the key redacted (providers echo it), the attempts counted."""
    message = _redact(error.message, config.api_key)
    if retries:
        message += f" (gave up after {retries + 1} attempts)"
    if message == error.message:
        return error
    return ModelError(error.code, message, error.status, error.retryable, error.provider_code)


class ChatClient:
    """OpenAI-compatible streaming chat completions with bounded retries and timeouts (see the module doc)."""

    log = Logger()

    def __init__(self, http_client: Any, clock: IReactorTime, *, retries: int = 3, backoff: float = 0.5,
                 max_retry_after: float = 30.0, first_byte_timeout: float = 120.0,
                 idle_timeout: float = 120.0) -> None:
        self.http = http_client
        self.clock = clock
        self.retries = retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout

    def stream(
        self,
        config: ModelConfig,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        on_event: Callable[[ModelEvent], None] | None = None,
        cancel: Deferred[Any] | None = None,
        *,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Deferred[ModelTurn]:
        """
        One model turn. ``tools`` are OpenAI function tools (``{"type": "function", "function":
        {...}}``), left out of the request when empty; ``extra_body`` is merged into the request
        (``tool_choice``, ``temperature``, ``max_tokens`` ...). Fires with a :class:`ModelTurn`, or
        fails with :class:`ModelError` / ``CancelledError``.
        """
        body: dict[str, Any] = {"model": config.model, "messages": messages, "stream": True,
                                "stream_options": {"include_usage": True}}
        if tools:
            body["tools"] = tools
        if extra_body:
            body.update(extra_body)
        d = Deferred.fromCoroutine(self._run(config, body, on_event or (lambda _event: None)))
        if cancel is not None:
            def fire(result: object) -> object:
                if not d.called:
                    d.cancel()
                return result

            cancel.addBoth(fire)
        return d

    async def _run(self, config: ModelConfig, body: dict[str, Any],
                   on_event: Callable[[ModelEvent], None]) -> ModelTurn:
        attempt = 0
        while True:
            builder = _TurnBuilder(on_event)
            try:
                return await self._attempt(config, body, builder)
            except ModelError as failed:
                raise _final(failed, config, 0) from None
            except _Retry as retry:
                if retry.free:
                    continue
                if builder.started or attempt >= self.retries:
                    raise _final(retry.error, config, attempt) from None
                delay = retry.delay if retry.delay is not None else self.backoff * 2**attempt
                attempt += 1
                self.log.info("Model request to {url} failed ({code}: {reason}); attempt {attempt} in {delay} s",
                              url=_display_url(config.chat_url), code=retry.error.code,
                              reason=_redact(retry.error.message, config.api_key), attempt=attempt + 1, delay=delay)
                await deferLater(self.clock, delay)

    async def _attempt(self, config: ModelConfig, body: dict[str, Any], builder: _TurnBuilder) -> ModelTurn:
        url = config.chat_url
        where = _display_url(config.base_url)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json",
                   "User-Agent": f"codebuddy/{__version__}"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            request = _cancellable(self.http.request("POST", url, data=payload, headers=headers, unbuffered=True,
                                                     allow_redirects=False))
        except Exception:
            reason = _redact(_describe(Failure()), config.api_key)
            raise ModelError("MODEL_UNAVAILABLE", f"Cannot send a request to {where}: {reason}") from None
        watchdog = _Watchdog(self.clock)
        watchdog.action = request.cancel
        watchdog.arm(self.first_byte_timeout, "first byte")
        reader: _BodyReader | None = None
        try:
            try:
                response = await request
            except CancelledError:
                if watchdog.fired:
                    raise self._timeout(config, watchdog.fired) from None
                raise
            except Exception:
                raise _Retry(ModelError("MODEL_UNAVAILABLE", f"Cannot reach the model provider at {where}: "
                                        f"{_describe(Failure())}", None, True)) from None
            ok = 200 <= response.code < 300
            sink: _ChatSink | _Collector = _ChatSink(builder) if ok else _Collector()
            reader = _BodyReader(sink, on_data=lambda: watchdog.arm(self.idle_timeout, "idle"),
                                 on_complete=lambda: watchdog.arm(min(DONE_GRACE, self.idle_timeout), "done"))
            watchdog.action = reader.expire
            response.deliverBody(reader)
            try:
                result = await reader.done
            except CancelledError:
                if watchdog.fired:
                    raise self._timeout(config, watchdog.fired) from None
                raise
            if ok:
                assert isinstance(result, ModelTurn)
                return result
            raise self._status_error(config, response, result, body)
        finally:
            watchdog.cancel()
            if reader is not None:
                reader.stop()

    def _timeout(self, config: ModelConfig, what: str) -> _Retry:
        where = _display_url(config.base_url)
        if what == "idle":
            text = f"The model provider at {where} sent nothing for {self.idle_timeout:g} s"
        else:
            text = f"The model provider at {where} did not answer within {self.first_byte_timeout:g} s"
        return _Retry(ModelError("MODEL_UNAVAILABLE", text, None, True))

    def _retry_after(self, response: Any) -> float | None:
        seconds: float | None = None
        raw_ms = _header(response, b"retry-after-ms")
        raw = _header(response, b"retry-after")
        try:
            if raw_ms is not None:
                seconds = float(raw_ms) / 1000
            elif raw is not None:
                seconds = float(raw)
        except ValueError:
            seconds = None
        if seconds is None and raw is not None:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError, IndexError):
                return None
            seconds = when.timestamp() - self.clock.seconds()
        if seconds is None or not math.isfinite(seconds):
            return None
        return min(max(seconds, 0.0), self.max_retry_after)

    def _status_error(self, config: ModelConfig, response: Any, raw: bytes,
                      body: dict[str, Any]) -> ModelError | _Retry:
        status = response.code
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            data = None
        error = data.get("error", data) if isinstance(data, dict) else None
        message, provider_code = _provider_message(error) if error is not None else ("", None)
        if not message and raw.strip():
            message = _one_line(raw.decode("utf-8", "replace"), 300)
        message = _redact(message, config.api_key)
        where = _display_url(config.base_url)
        said = f": {message}" if message else ""
        if status in (401, 403):
            if config.source.startswith("environment"):
                check = f"Check {ENV_API_KEY}"
            elif config.source.endswith(MODELS_FILE):
                check = f"Check the apiKey of model {config.model!r} in {config.source}"
            else:
                check = f"Check {ENV_API_KEY} or the model's apiKey in models.json"
            return ModelError("MODEL_AUTH_FAILED", f"The model provider at {where} refused the credentials (HTTP "
                              f"{status}){said.rstrip('.')}. {check}", status, False, provider_code)
        if status == 404:
            return ModelError("MODEL_NOT_FOUND", f"Model {config.model!r} or the chat completions endpoint was not "
                              f"found at {_display_url(config.chat_url)} (HTTP 404){said}", status, False,
                              provider_code)
        if status == 429:
            return _Retry(ModelError("MODEL_RATE_LIMITED", f"The model provider at {where} is rate limiting "
                                     f"(HTTP 429){said}", status, True, provider_code), self._retry_after(response))
        if status in RETRY_STATUSES:
            return _Retry(ModelError("MODEL_UNAVAILABLE", f"The model provider at {where} failed (HTTP {status})"
                                     f"{said}", status, True, provider_code), self._retry_after(response))
        if status >= 500:
            return ModelError("MODEL_UNAVAILABLE", f"The model provider at {where} failed (HTTP {status}){said}",
                              status, False, provider_code)
        if 300 <= status < 400:
            location = _header(response, b"location")
            target = f" to {_display_url(location)}" if location else ""
            return ModelError("MODEL_NOT_FOUND", f"The model provider at {where} redirected the request (HTTP "
                              f"{status}){target}; redirects are not followed: configure the final URL", status)
        if status == 400 and "stream_options" in body and "stream_options" in message:
            del body["stream_options"]
            return _Retry(ModelError("MODEL_BAD_REQUEST", message, status), 0.0, free=True)
        return ModelError("MODEL_BAD_REQUEST", f"The model provider at {where} refused the request (HTTP {status})"
                          f"{said}", status, False, provider_code)
