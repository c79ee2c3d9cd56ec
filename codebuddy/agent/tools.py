# -*- test-case-name: tests.agent.test_tools -*-
"""
The agent's tools (Claude Code's names and parameters): ``Read``, ``Write``, ``Edit``, ``LS``,
``Glob``, ``Grep`` and ``Bash``.

A :class:`Tool` has a JSON schema (``parameters``, sent to the model in the OpenAI
chat-completions ``tools`` format by :func:`tool_schemas`), an ACP ``kind``, a ``title`` for the
stream, a ``permission_key`` (what :mod:`codebuddy.agent.permissions` matches rules against: the
path for file tools, the command for ``Bash``) and ``run(ctx, input) -> ToolResult``. ``run``
never raises for bad input or a failing operation: it answers ``ToolResult(is_error=True)`` with
a message the model can act on. Only cancellation (``CancelledError``) propagates.

- Paths are absolute or relative to ``ctx.cwd``; ``~`` is the user's home. Tools do not confine
  paths to the workspace: the permission engine decides what may be touched.
- File work (reads, writes, walks, ripgrep) runs through ``ctx.run_blocking`` (the daemon's
  thread pool), never on the reactor thread.
- ``Write`` and ``Edit`` call ``ctx.before_change(path)`` (the checkpoint hook; it may return a
  Deferred, which is awaited) with the file about to change (a symlink's target), right before
  writing, and only when the write will happen. Writes are atomic (temp file, fsync, rename) and
  keep an existing file's mode.
- ``Bash`` runs ``bash -c`` (``/bin/sh -c`` without bash) in ``ctx.cwd`` through the
  :class:`~codebuddy.process.manager.ProcessManager`: it is listed in the process table, leads its
  own session and process group, and on timeout or cancellation (``ctx.cancel`` or cancelling the
  Deferred of ``run``) every process of its session gets SIGKILL at once.
"""

from __future__ import annotations

import abc
import fnmatch
import inspect
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from codebuddy.fs.search import glob_to_regex, walk_files
from codebuddy.process.buffer import Subscription
from codebuddy.process.manager import ManagedProcess, ProcessManager, ProcessSpec
from codebuddy.process.spawn import SpawnError
from codebuddy.storage import atomic_write
from codebuddy.web.json import json_type

__all__ = [
    "BashTool",
    "CancelToken",
    "EditTool",
    "GlobTool",
    "GrepTool",
    "LSTool",
    "ReadTool",
    "Tool",
    "ToolContext",
    "ToolResult",
    "WriteTool",
    "default_tools",
    "expand_braces",
    "glob_matcher",
    "resolve_path",
    "tool_schemas",
    "validate_input",
]

#: ACP tool kinds (acp-codebuddy.md §1.8).
KINDS = ("read", "edit", "delete", "move", "search", "execute", "think", "fetch", "other")

# Read
READ_DEFAULT_LIMIT = 2000
READ_MAX_LINE_CHARS = 2000
READ_MAX_OUTPUT = 256 * 1024  # characters of numbered output
BINARY_SNIFF_BYTES = 8192
# Edit / Write
EDIT_MAX_BYTES = 16 * 1024 * 1024
DIFF_MAX_BYTES = 2 * 1024 * 1024  # larger old contents are left out of the diff
# LS
LS_MAX_ENTRIES = 1000
# Glob / Grep
GLOB_MAX_RESULTS = 100
GLOB_MAX_LISTED_BYTES = 32 * 1024 * 1024  # of rg --files output
SEARCH_TIMEOUT = 30.0
GREP_MAX_CHARS = 30_000
GREP_MAX_READ = 1024 * 1024  # bytes of rg output read at most
GREP_MAX_COLUMNS = 500
# Bash
BASH_DEFAULT_TIMEOUT_MS = 120_000
BASH_MAX_TIMEOUT_MS = 600_000
BASH_MAX_CHARS = 30_000
_BASH_KEEP_BYTES = 256 * 1024  # head and tail bytes kept while a command runs


# --------------------------------------------------------------------------- results and context


@attrs.define
class ToolResult:
    """What a tool answers: ``output`` for the model, plus what the stream shows."""

    output: str
    is_error: bool = False
    title: str = ""
    locations: list[str] = attrs.field(factory=list)  # absolute paths touched
    diff: dict[str, Any] | None = None  # edits: {"path", "oldText" (None: new file), "newText"}
    metadata: dict[str, Any] = attrs.field(factory=dict)


class CancelToken:
    """Cancellation of one tool call (or run): callbacks run once, synchronously, on :meth:`cancel`."""

    def __init__(self) -> None:
        self._cancelled = False
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next = 0

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Mark cancelled and call every registered callback (idempotent)."""
        if self._cancelled:
            return
        self._cancelled = True
        callbacks, self._callbacks = list(self._callbacks.values()), {}
        for fn in callbacks:
            try:
                fn()
            except Exception:
                Logger().failure("cancel callback failed")

    def on_cancel(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` on cancel (at once if already cancelled); returns a function that unregisters it."""
        if self._cancelled:
            fn()
            return lambda: None
        key = self._next
        self._next += 1
        self._callbacks[key] = fn
        return lambda: self._callbacks.pop(key, None) and None


def _no_hook(path: Path) -> None:
    return None


@attrs.define
class ToolContext:
    """
    Where and how a tool call runs. ``run_blocking(fn, *args) -> Deferred`` runs blocking work off
    the reactor thread (tests pass a synchronous one). ``processes`` is needed by ``Bash`` only.
    ``before_change(path)`` is called before a file is created or changed (may return a Deferred
    or another awaitable). ``cancel`` tells a running tool to stop (``Bash`` kills its group).
    ``env`` is added to the environment of ``Bash`` commands. ``hidden(path)`` tells which files
    the permission rules keep from reads: ``Glob`` and ``Grep`` leave them out of their results
    (a ``Read(./.env)`` deny rule also covers a search of the whole tree).
    """

    cwd: Path
    session_id: str
    run_blocking: Callable[..., Deferred[Any]]
    processes: ProcessManager | None = None
    before_change: Callable[[Path], Any] = _no_hook
    cancel: CancelToken = attrs.field(factory=CancelToken)
    env: dict[str, str] = attrs.field(factory=dict)
    hidden: Callable[[Path], bool] | None = None

    def cancelled(self) -> bool:
        return self.cancel.cancelled


class ToolError(Exception):
    """A tool failed in a way the model should be told about (becomes ``is_error`` output)."""


# --------------------------------------------------------------------------- input checks


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _check_value(schema: dict[str, Any], value: Any, where: str) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, str) and not _JSON_TYPES.get(kind, lambda v: True)(value):
        article = "an" if kind[0] in "aeiou" else "a"
        return f"parameter '{where}' must be {article} {kind}, got {json_type(value)}"
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        return f"parameter '{where}' must be one of {allowed}, got {value!r}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"parameter '{where}' must be at least {schema['minimum']}, got {value!r}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"parameter '{where}' must be at most {schema['maximum']}, got {value!r}"
    if kind == "array" and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problem = _check_value(schema["items"], item, f"{where}[{i}]")
            if problem:
                return problem
    return None


def validate_input(schema: dict[str, Any], value: Any) -> str | None:
    """The first problem of ``value`` against ``schema`` (required fields, types, enums, bounds), or None.
    A ``null`` optional parameter counts as absent; unknown parameters are ignored."""
    if not isinstance(value, dict):
        return f"the input must be a JSON object, got {json_type(value)}"
    for name in schema.get("required", ()):
        if value.get(name) is None:
            return f"missing required parameter '{name}'"
    for name, prop in schema.get("properties", {}).items():
        if value.get(name) is not None:
            problem = _check_value(prop, value[name], name)
            if problem:
                return problem
    return None


def _int(input: dict[str, Any], name: str, default: int) -> int:
    value = input.get(name)
    return default if value is None else int(value)


def resolve_path(cwd: Path | str, path: str) -> Path:
    """``path`` made absolute: ``~`` expanded, relative paths against ``cwd``, ``..`` collapsed
    (symlinks are not resolved)."""
    if "\0" in path:
        raise ToolError("the path contains a NUL byte")
    if path.startswith("~"):
        path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(os.fspath(cwd), path)
    normal = os.path.normpath(path)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    return Path(normal)


def _os_message(exc: OSError, path: Path | str | None = None) -> str:
    where = path if path is not None else exc.filename
    text = exc.strerror or str(exc)
    return f"{text}: {where}" if where else text


async def _wait(value: Any) -> Any:
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        return await value
    return value


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- the base class


class Tool(abc.ABC):
    """One tool the model can call. Subclasses set the class attributes and implement ``execute``."""

    log = Logger()

    name: str = ""
    description: str = ""
    parameters: dict[str, Any] = {}
    kind: str = "other"
    is_read_only: bool = False

    def title(self, input: dict[str, Any]) -> str:
        """A short human title for the stream (``Read src/app.py``)."""
        return self.name

    def permission_key(self, input: dict[str, Any]) -> str:
        """What permission rules are matched against (a path or a command; ``""`` for none)."""
        return ""

    def schema(self) -> dict[str, Any]:
        """This tool in the OpenAI chat-completions ``tools`` format."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    async def run(self, ctx: ToolContext, input: dict[str, Any]) -> ToolResult:
        """Check ``input`` and run; every failure is an ``is_error`` result, never an exception
        (except cancellation)."""
        problem = validate_input(self.parameters, input)
        title = self.name
        if problem is not None:
            return ToolResult(f"{self.name}: {problem}", is_error=True, title=title)
        try:
            title = self.title(input)
            return await self.execute(ctx, input)
        except CancelledError:
            raise
        except ToolError as exc:
            return ToolResult(str(exc), is_error=True, title=title)
        except OSError as exc:
            return ToolResult(_os_message(exc), is_error=True, title=title)
        except Exception as exc:
            self.log.failure("tool {tool} failed", tool=self.name)
            return ToolResult(f"{self.name} failed: {type(exc).__name__}: {exc}", is_error=True, title=title)

    @abc.abstractmethod
    async def execute(self, ctx: ToolContext, input: dict[str, Any]) -> ToolResult:
        """Do the work; failures the model should read are :class:`ToolError` (or ``OSError``)."""


def _path_tool_key(input: dict[str, Any], field: str) -> str:
    value = input.get(field)
    return value if isinstance(value, str) and value else "."


# --------------------------------------------------------------------------- Read


def _iter_lines(handle: IO[bytes], max_bytes: int) -> Iterator[tuple[bytes, bool]]:
    """Lines (without the newline) of ``handle``, each cut to ``max_bytes`` (then ``True``), without
    ever holding more than ``max_bytes`` of one line."""
    while True:
        line = handle.readline(max_bytes)
        if not line:
            return
        if line.endswith(b"\n"):
            yield line[:-1], False
            continue
        cut = False
        while True:  # the rest of an over-long line is skipped
            more = handle.readline(max_bytes)
            if not more:
                break
            cut = True
            if more.endswith(b"\n"):
                break
        yield line, cut


def looks_binary(data: bytes) -> bool:
    """A NUL byte in the first bytes: not text."""
    return b"\0" in data[:BINARY_SNIFF_BYTES]


def _format_line(number: int, text: str) -> str:
    return f"{number:6}\t{text}"


class ReadTool(Tool):
    name = "Read"
    kind = "read"
    is_read_only = True
    description = (
        "Read a text file. Returns its lines numbered like `cat -n` (number, tab, text). By default "
        f"reads up to {READ_DEFAULT_LIMIT} lines from the start; use offset (1-based line) and limit "
        f"for longer files. Lines longer than {READ_MAX_LINE_CHARS} characters are cut. Binary files "
        "are refused. file_path may be absolute or relative to the working directory."
    )
    parameters = {
        "type": "object",
        "properties": {
            "file_path": {"type": "string", "description": "The file to read (absolute, or relative to the cwd)"},
            "offset": {"type": "integer", "minimum": 0, "description": "First line to read (1-based; 0 reads from 1)"},
            "limit": {"type": "integer", "minimum": 1, "description": f"Lines to read (default {READ_DEFAULT_LIMIT})"},
        },
        "required": ["file_path"],
        "additionalProperties": False,
    }

    def title(self, input: dict[str, Any]) -> str:
        title = f"Read {input.get('file_path', '')}"
        offset, limit = input.get("offset"), input.get("limit")
        if offset is not None or limit is not None:
            first = int(offset or 1)
            title += f" (lines {first}-{first + int(limit) - 1})" if limit is not None else f" (from line {first})"
        return title

    def permission_key(self, input: dict[str, Any]) -> str:
        return _path_tool_key(input, "file_path")

    async def execute(self, ctx: ToolContext, input: dict[str, Any]) -> ToolResult:
        path = resolve_path(ctx.cwd, input["file_path"])
        offset = max(1, _int(input, "offset", 1))
        limit = _int(input, "limit", READ_DEFAULT_LIMIT)
        output, metadata = await ctx.run_blocking(self._read, path, offset, limit)
        return ToolResult(output, title=self.title(input), locations=[str(path)], metadata=metadata)

    @staticmethod
    def _read(path: Path, offset: int, limit: int) -> tuple[str, dict[str, Any]]:
        _check_regular(path)
        with open(path, "rb") as handle:
            head = handle.read(BINARY_SNIFF_BYTES)
            if looks_binary(head):
                raise ToolError(f"{path} is a binary file; Read shows text files only")
            handle.seek(0)
            out: list[str] = []
            size = 0
            number = 0
            last = offset - 1
            cut_lines = 0
            more = False
            capped = False
            max_bytes = READ_MAX_LINE_CHARS * 4 + 4
            for raw, cut in _iter_lines(handle, max_bytes):
                number += 1
                if number < offset:
                    continue
                if number >= offset + limit:
                    more = True
                    break
                text = raw.removesuffix(b"\r").decode("utf-8", "replace")
                if cut or len(text) > READ_MAX_LINE_CHARS:
                    text = text[:READ_MAX_LINE_CHARS] + " … [line truncated]"
                    cut_lines += 1
                line = _format_line(number, text)
                if size + len(line) + 1 > READ_MAX_OUTPUT and out:
                    capped = more = True
                    break
                out.append(line)
                size += len(line) + 1
                last = number
        metadata: dict[str, Any] = {"startLine": offset, "endLine": last, "truncatedLines": cut_lines}
        if number == 0:
            return "(the file is empty)", {**metadata, "endLine": 0}
        if not out:
            return f"(the file has {number} lines; offset {offset} is past its end)", metadata
        text = "\n".join(out)
        if capped:
            text += (f"\n… [output capped at {READ_MAX_OUTPUT // 1024} KiB; continue with offset={last + 1}]")
        elif more:
            text += f"\n… [more lines follow; continue with offset={last + 1}]"
        metadata["more"] = more
        return text, metadata


# --------------------------------------------------------------------------- Write / Edit


def _check_regular(path: Path) -> None:
    """Refuse what is not a regular file before opening it (opening a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ToolError(f"File does not exist: {path}") from None
    except NotADirectoryError:
        raise ToolError(f"File does not exist: {path} (a parent is not a directory)") from None
    if stat.S_ISDIR(mode):
        raise ToolError(f"{path} is a directory, not a file: use LS to list it")
    if not stat.S_ISREG(mode):
        raise ToolError(f"{path} is not a regular file (a device, FIFO or socket)")


def _write_target(path: Path) -> Path:
    """The file a write to ``path`` changes: a symlink's target (so the link stays a link)."""
    if path.is_symlink():
        return Path(os.path.realpath(path))
    return path


def _replace_file(target: Path, data: bytes) -> None:
    """Atomically replace (or create) ``target`` with ``data``, keeping an existing file's mode."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o644
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, data, mode)


def _diff_text(data: bytes | None) -> str | None:
    if data is None:
        return None
    return data.decode("utf-8", "replace")


def _count_lines(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") or not text else 1)


class WriteTool(Tool):
    name = "Write"
    kind = "edit"
    description = (
        "Write a file: creates it (and missing parent directories) or replaces its whole content. "
        "Prefer Edit for changes to an existing file. file_path may be absolute or relative to the "
        "working directory."
    )
    parameters = {
        "type": "object",
        "properties": {
            "file_path": {"type": "string", "description": "The file to write (absolute, or relative to the cwd)"},
            "content": {"type": "string", "description": "The complete new content"},
        },
        "required": ["file_path", "content"],
        "additionalProperties": False,
    }

    def title(self, input: dict[str, Any]) -> str:
        return f"Write {input.get('file_path', '')}"

    def permission_key(self, input: dict[str, Any]) -> str:
        return _path_tool_key(input, "file_path")

    async def execute(self, ctx: ToolContext, input: dict[str, Any]) -> ToolResult:
        path = resolve_path(ctx.cwd, input["file_path"])
        content: str = input["content"]
        try:
            data = content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ToolError(f"content is not valid text: {exc}") from None
        target, existed, old = await ctx.run_blocking(self._inspect, path)
        await _wait(ctx.before_change(target))
        await ctx.run_blocking(_replace_file, target, data)
        lines = _count_lines(content)
        if not existed:
            output = f"Created {path} ({lines} lines)"
        else:
            output = f"Wrote {path} ({lines} lines, replacing the previous content)"
        diff: dict[str, Any] | None = {"path": str(path), "oldText": _diff_text(old), "newText": content}
        if existed and old is None:  # the old content is too large to show
            diff = None
        return ToolResult(output, title=self.title(input), locations=[str(path)], diff=diff,
                          metadata={"created": not existed, "bytes": len(data)})

    @staticmethod
    def _inspect(path: Path) -> tuple[Path, bool, bytes | None]:
        """The target file, whether it exists, and its old content (None when new or too large)."""
        target = _write_target(path)
        try:
            st = os.stat(target)
        except FileNotFoundError:
            return target, False, None
        except NotADirectoryError:
            raise ToolError(f"Cannot write {path}: a parent is not a directory") from None
        if stat.S_ISDIR(st.st_mode):
            raise ToolError(f"Cannot write {path}: it is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ToolError(f"Cannot write {path}: it is not a regular file (a device, FIFO or socket)")
        if st.st_size > DIFF_MAX_BYTES:
            return target, True, None
        return target, True, target.read_bytes()


def _snippet(text: str, start: int, length: int, context: int = 3) -> str:
    """Numbered lines around ``text[start:start+length]``."""
    first = text.count("\n", 0, start)
    last = first + text.count("\n", start, start + length)
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()  # the end of the last line, not a line
    lo, hi = max(0, first - context), min(len(lines), last + context + 1)
    shown = [_format_line(i + 1, line[:READ_MAX_LINE_CHARS]) for i, line in enumerate(lines[lo:hi], lo)]
    return "\n".join(shown)


class EditTool(Tool):
    name = "Edit"
    kind = "edit"
    description = (
        "Edit a text file by exact string replacement: old_string must occur exactly once in the file "
        "(include enough surrounding lines to make it unique) unless replace_all is true. Copy "
        "old_string exactly as the file has it (indentation included, without Read's line-number "
        "prefix). An empty old_string creates a new file with new_string."
    )
    parameters = {
        "type": "object",
        "properties": {
            "file_path": {"type": "string", "description": "The file to edit (absolute, or relative to the cwd)"},
            "old_string": {"type": "string", "description": "The exact text to replace"},
            "new_string": {"type": "string", "description": "The replacement text"},
            "replace_all": {"type": "boolean", "description": "Replace every occurrence (default false)"},
        },
        "required": ["file_path", "old_string", "new_string"],
        "additionalProperties": False,
    }

    def title(self, input: dict[str, Any]) -> str:
        return f"Edit {input.get('file_path', '')}"

    def permission_key(self, input: dict[str, Any]) -> str:
        return _path_tool_key(input, "file_path")

    async def execute(self, ctx: ToolContext, input: dict[str, Any]) -> ToolResult:
        path = resolve_path(ctx.cwd, input["file_path"])
        old_string: str = input["old_string"]
        new_string: str = input["new_string"]
        replace_all = bool(input.get("replace_all", False))
        if old_string == new_string:
            raise ToolError("old_string and new_string are identical: there is nothing to change")
        target, old_bytes = await ctx.run_blocking(self._load, path, old_string == "")
        if old_bytes is None:  # create a new file
            new_text = new_string
            old_text = None
            count = 1
            start = 0
        else:
            old_text = old_bytes.decode("utf-8", "surrogateescape")
            count = old_text.count(old_string)
            if count == 0:
                raise ToolError(f"old_string not found in {path}: copy it exactly from the file "
                                "(whitespace and indentation included, without line numbers)")
            if count > 1 and not replace_all:
                raise ToolError(f"old_string occurs {count} times in {path}: add surrounding context to make it "
                                "unique, or set replace_all to replace every occurrence")
            start = old_text.index(old_string)
            new_text = old_text.replace(old_string, new_string) if replace_all else old_text.replace(
                old_string, new_string, 1)
        try:
            data = new_text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            raise ToolError(f"new_string is not valid text: {exc}") from None
        await _wait(ctx.before_change(target))
        await ctx.run_blocking(self._store, target, old_bytes, data)
        shown_new = data.decode("utf-8", "replace")
        if old_bytes is None:
            output = f"Created {path} ({_count_lines(new_string)} lines)"
        else:
            times = f"{count} occurrences" if count > 1 else "1 occurrence"
            output = f"Edited {path}: replaced {times}. The changed region now reads:\n"
            output += _snippet(shown_new, start, len(new_string))
        diff = {"path": str(path), "oldText": _diff_text(old_bytes), "newText": shown_new}
        return ToolResult(output, title=self.title(input), locations=[str(path)], diff=diff,
                          metadata={"replacements": count, "created": old_bytes is None})

    @staticmethod
    def _load(path: Path, create: bool) -> tuple[Path, bytes | None]:
        target = _write_target(path)
        try:
            st = os.stat(target)
        except FileNotFoundError:
            if create:
                return target, None
            raise ToolError(f"File does not exist: {path} (use Write, or an empty old_string, to create it)") from None
        if stat.S_ISDIR(st.st_mode):
            raise ToolError(f"{path} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise ToolError(f"{path} is not a regular file (a device, FIFO or socket)")
        if st.st_size > EDIT_MAX_BYTES:
            raise ToolError(f"{path} is too large to edit ({st.st_size} bytes; the limit is {EDIT_MAX_BYTES})")
        data = target.read_bytes()
        if looks_binary(data):
            raise ToolError(f"{path} is a binary file; Edit changes text files only")
        if create and data.strip():
            raise ToolError(f"{path} already exists and is not empty: an empty old_string only creates new files")
        return target, data

    @staticmethod
    def _store(target: Path, old: bytes | None, data: bytes) -> None:
        try:
            current: bytes | None = target.read_bytes()
        except FileNotFoundError:
            current = None
        if current != old:
            raise ToolError(f"{target} changed while it was being edited; read it again and retry")
        _replace_file(target, data)


# --------------------------------------------------------------------------- LS


class LSTool(Tool):
    name = "LS"
    kind = "read"
    is_read_only = True
    description = (
        "List a directory: one entry per line, directories with a trailing '/', sorted by name, at most "
        f"{LS_MAX_ENTRIES} entries. ignore takes glob patterns of names to leave out. Use Glob to find "
        "files by pattern across subdirectories."
    )
    parameters = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "The directory (default the cwd)"},
            "ignore": {"type": "array", "items": {"type": "string"}, "description": "Glob patterns of names to skip"},
        },
        "additionalProperties": False,
    }

    def title(self, input: dict[str, Any]) -> str:
        return f"List {input.get('path') or '.'}"

    def permission_key(self, input: dict[str, Any]) -> str:
        return _path_tool_key(input, "path")

    async def execute(self, ctx: ToolContext, input: dict[str, Any]) -> ToolResult:
        path = resolve_path(ctx.cwd, input.get("path") or ".")
        ignore = list(input.get("ignore") or [])
        entries, total = await ctx.run_blocking(self._list, path, ignore)
        if not entries:
            output = "(empty directory)" if total == 0 else "(no entries left after ignore)"
        else:
            output = "\n".join(entries)
            if total > len(entries):
                output += f"\n… [{total - len(entries)} more entries not shown]"
        return ToolResult(output, title=self.title(input), locations=[str(path)],
                          metadata={"entries": total, "shown": len(entries)})

    @staticmethod
    def _list(path: Path, ignore: list[str]) -> tuple[list[str], int]:
        try:
            with os.scandir(path) as it:
                names: list[str] = []
                for entry in it:
                    if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in ignore):
                        continue
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    names.append(entry.name + "/" if is_dir else entry.name)
        except FileNotFoundError:
            raise ToolError(f"Directory does not exist: {path}") from None
        except NotADirectoryError:
            raise ToolError(f"{path} is not a directory: use Read for files") from None
        names.sort()
        return names[:LS_MAX_ENTRIES], len(names)


# --------------------------------------------------------------------------- ripgrep helpers


def find_rg() -> str | None:
    """The ``rg`` binary: next to the Python executable (the ripgrep wheel), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "rg")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return shutil.which("rg")


@attrs.frozen
class _RgOutput:
    stdout: bytes
    stderr: str
    returncode: int | None
    truncated: bool  # output cap reached (rg killed)
    timed_out: bool


def _run_rg(argv: list[str], cwd: str, max_bytes: int, timeout: float) -> _RgOutput:
    """Run rg, reading at most ``max_bytes`` of its output; killed after ``timeout`` seconds."""
    proc = subprocess.Popen([os.fsencode(a) for a in argv], cwd=os.fsencode(cwd), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    errors = bytearray()

    def read_errors() -> None:  # drained whole (rg must never block on it), the start kept
        assert proc.stderr is not None
        while chunk := os.read(proc.stderr.fileno(), 65536):
            if len(errors) < 65536:
                errors.extend(chunk)

    reader = threading.Thread(target=read_errors, daemon=True)
    reader.start()
    chunks: list[bytes] = []
    size = 0
    truncated = False
    try:
        assert proc.stdout is not None
        while True:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size >= max_bytes:
                truncated = True
                proc.kill()
                break
    finally:
        timer.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()
        reader.join()
        if proc.stderr is not None:
            proc.stderr.close()
    stderr = bytes(errors).decode("utf-8", "replace").strip()
    stderr = "\n".join(line.removeprefix("rg: ") for line in stderr.splitlines())
    code = None if truncated or expired.is_set() else proc.returncode
    return _RgOutput(b"".join(chunks)[:max_bytes], stderr, code, truncated, expired.is_set())


def _require_rg() -> str:
    rg = find_rg()
    if rg is None:
        raise ToolError("ripgrep (rg) is not installed, so this search cannot run")
    return rg


def _existing(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise ToolError(f"Path does not exist: {path}") from None


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _by_mtime(paths: list[str]) -> list[str]:
    """Newest first, then by path."""
    return sorted(paths, key=lambda p: (-_mtime(p), p))


_MAGIC = frozenset("*?[{")


def expand_braces(pattern: str, limit: int = 256) -> list[str]:
    """``*.{ts,tsx}`` → ``["*.ts", "*.tsx"]`` (nested braces too; at most ``limit`` patterns)."""
    depth, start, i = 0, -1, -1
    while i + 1 < len(pattern):
        i += 1
        char = pattern[i]
        if char == "\\":
            i += 1  # an escaped character is literal
            continue
        if char == "{":
            if depth == 0:
                start = i
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                body = pattern[start + 1 : i]
                options, level, piece = [], 0, ""
                for c in body:
                    if c == "," and level == 0:
                        options.append(piece)
                        piece = ""
                        continue
                    level += (c == "{") - (c == "}")
                    piece += c
                options.append(piece)
                if len(options) < 2:
                    continue
                out: list[str] = []
                for option in options:
                    out.extend(expand_braces(pattern[:start] + option + pattern[i + 1 :], limit))
                    if len(out) >= limit:
                        return out[:limit]
                return out
    return [pattern]


def glob_matcher(pattern: str) -> Callable[[str], bool]:
    """Whether a relative path matches a gitignore-style glob: a pattern with a ``/`` is anchored at the
    root, one without matches the name at any depth; ``**`` crosses directories; braces alternate."""
    regexes: list[str] = []
    anchored: list[str] = []
    for option in expand_braces(pattern.strip()):
        option = option.removeprefix("./")
        if option.endswith("/"):
            option += "**"
        if "/" in option:
            anchored.append(glob_to_regex(option.lstrip("/")))
        else:
            regexes.append(glob_to_regex(option))
    by_path = re.compile("|".join(f"(?:{r})" for r in anchored), re.DOTALL) if anchored else None
    by_name = re.compile("|".join(f"(?:{r})" for r in regexes), re.DOTALL) if regexes else None

    def matches(rel: str) -> bool:
        if by_path is not None and by_path.fullmatch(rel):
            return True
        return by_name is not None and by_name.fullmatch(rel.rpartition("/")[2]) is not None

    return matches


def _split_glob_base(pattern: str) -> tuple[str | None, str]:
    """An absolute glob (``/src/**/*.py``) as its literal directory and the rest; (None, pattern) else."""
    if not (pattern.startswith("/") or pattern.startswith("~")):
        return None, pattern
    parts = os.path.expanduser(pattern).split("/")
    base: list[str] = []
    for i, part in enumerate(parts):
        if any(c in _MAGIC for c in part) or i == len(parts) - 1:
            return "/".join(base) or "/", "/".join(parts[i:])
        base.append(part)
    return "/", pattern


# --------------------------------------------------------------------------- Glob


class GlobTool(Tool):
    name = "Glob"
    kind = "search"
    is_read_only = True
    description = (
        "Find files by glob pattern (e.g. '**/*.py', 'src/**/*.ts', '*.md'), newest first. Patterns "
        "with a '/' are anchored at path; without one they match the name at any depth. Files ignored "
        "by .gitignore are skipped; hidden files are included. At most "
        f"{GLOB_MAX_RESULTS} results."
    )
    parameters = {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "The glob pattern"},
            "path": {"type": "string", "description": "The directory to search (default the cwd)"},
        },
        "required": ["pattern"],
        "additionalProperties": False,
    }

    def title(self, input: dict[str, Any]) -> str:
        where = input.get("path")
        return f"Glob {input.get('pattern', '')}" + (f" in {where}" if where else "")

    def permission_key(self, input: dict[str, Any]) -> str:
        base, _ = _split_glob_base(str(input.get("pattern", "")))
        return base if base is not None else _path_tool_key(input, "path")

    async def execute(self, ctx: ToolContext, input: dict[str, Any]) -> ToolResult:
        pattern: str = input["pattern"]
        if not pattern.strip():
            raise ToolError("pattern must not be empty")
        base, rest = _split_glob_base(pattern)  # an absolute pattern names its own directory
        root = resolve_path(ctx.cwd, base if base is not None else input.get("path") or ".")
        files, truncated = await ctx.run_blocking(self._glob, root, rest, ctx.hidden)
        shown = files[:GLOB_MAX_RESULTS]
        if not shown:
            output = "No files found"
        else:
            output = "\n".join(shown)
            if len(files) > len(shown) or truncated:
                output += f"\n… [results truncated to the {len(shown)} newest; use a more specific path or pattern]"
        return ToolResult(output, title=self.title(input), locations=[str(root)],
                          metadata={"numFiles": len(files), "truncated": truncated or len(files) > len(shown)})

    @staticmethod
    def _glob(root: Path, pattern: str, hidden: Callable[[Path], bool] | None = None) -> tuple[list[str], bool]:
        found, truncated = GlobTool._glob_all(root, pattern)
        if hidden is not None:
            found = [p for p in found if not hidden(Path(p))]
        return found, truncated

    @staticmethod
    def _glob_all(root: Path, pattern: str) -> tuple[list[str], bool]:
        st = _existing(root)
        if not stat.S_ISDIR(st.st_mode):
            raise ToolError(f"{root} is not a directory")
        matches = glob_matcher(pattern)
        rg = find_rg()
        if rg is None:
            return GlobTool._glob_python(root, matches)
        # Every file rg would search (ignore files applied), filtered here: a --glob of rg's own
        # would override .gitignore for the files it names.
        argv = [rg, "--no-config", "--files", "--hidden", "--no-require-git", "--null", "--no-messages",
                "--glob", "!.git", "--", "."]
        out = _run_rg(argv, str(root), GLOB_MAX_LISTED_BYTES, SEARCH_TIMEOUT)
        names = out.stdout.split(b"\0")
        if out.truncated or out.timed_out:
            names = names[:-1]  # possibly cut
        paths = []
        for raw in names:
            rel = os.fsdecode(raw).removeprefix("./")
            if rel and matches(rel):
                paths.append(os.path.join(root, rel))
        return _by_mtime(paths), out.truncated or out.timed_out

    @staticmethod
    def _glob_python(root: Path, matches: Callable[[str], bool]) -> tuple[list[str], bool]:
        started = time.monotonic()
        found: list[str] = []
        for rel in walk_files(str(root), skip_dirs=frozenset({".git"}),
                              should_stop=lambda: time.monotonic() - started > SEARCH_TIMEOUT):
            if matches(rel):
                found.append(os.path.join(root, rel))
        return _by_mtime(found), time.monotonic() - started > SEARCH_TIMEOUT


# --------------------------------------------------------------------------- Grep


def _split_globs(text: str) -> list[str]:
    """Globs separated by commas or blanks outside braces: ``"*.py, *.{ts,tsx}"`` → two globs."""
    out: list[str] = []
    depth = 0
    piece = ""
    for char in text:
        if char in ", \t" and depth == 0:
            if piece:
                out.append(piece)
            piece = ""
            continue
        depth += (char == "{") - (char == "}" and depth > 0)
        piece += char
    if piece:
        out.append(piece)
    return out


class GrepTool(Tool):
    name = "Grep"
    kind = "search"
    is_read_only = True
    description = (
        "Search file contents with a regular expression (ripgrep syntax). output_mode: "
        "'files_with_matches' (default; paths, newest first), 'content' (matching lines, with -n line "
        "numbers and -A/-B/-C context), or 'count' (matches per file). Filter files with glob (e.g. "
        "'*.py', '**/*.{ts,tsx}') or type (e.g. 'py', 'js'). head_limit keeps the first N lines/entries. "
        "Files ignored by .gitignore are skipped, except those an explicit glob names (ripgrep's rule)."
    )
    parameters = {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "The regular expression"},
            "path": {"type": "string", "description": "File or directory to search (default the cwd)"},
            "glob": {"type": "string", "description": "Only files matching this glob"},
            "type": {"type": "string", "description": "Only files of this ripgrep type (py, js, rust, ...)"},
            "output_mode": {"type": "string", "enum": ["content", "files_with_matches", "count"],
                            "description": "What to show (default files_with_matches)"},
            "-i": {"type": "boolean", "description": "Case-insensitive"},
            "-n": {"type": "boolean", "description": "Line numbers in content mode (default true)"},
            "-A": {"type": "integer", "minimum": 0, "description": "Lines of context after each match"},
            "-B": {"type": "integer", "minimum": 0, "description": "Lines of context before each match"},
            "-C": {"type": "integer", "minimum": 0, "description": "Lines of context around each match"},
            "multiline": {"type": "boolean", "description": "Let patterns span lines ('.' matches newlines)"},
            "head_limit": {"type": "integer", "minimum": 0, "description": "Show only the first N lines/entries"},
        },
        "required": ["pattern"],
        "additionalProperties": False,
    }

    def title(self, input: dict[str, Any]) -> str:
        where = input.get("path")
        return f"Grep {_short(str(input.get('pattern', '')), 60)!r}" + (f" in {where}" if where else "")

    def permission_key(self, input: dict[str, Any]) -> str:
        return _path_tool_key(input, "path")

    async def execute(self, ctx: ToolContext, input: dict[str, Any]) -> ToolResult:
        pattern: str = input["pattern"]
        if not pattern:
            raise ToolError("pattern must not be empty")
        root = resolve_path(ctx.cwd, input.get("path") or ".")
        mode = input.get("output_mode") or "files_with_matches"
        output, metadata = await ctx.run_blocking(self._grep, root, pattern, mode, input, ctx.hidden)
        return ToolResult(output, title=self.title(input), locations=[str(root)], metadata=metadata)

    @staticmethod
    def _grep(root: Path, pattern: str, mode: str, input: dict[str, Any],
              hidden: Callable[[Path], bool] | None = None) -> tuple[str, dict[str, Any]]:
        _existing(root)
        rg = _require_rg()
        argv = [rg, "--no-config", "--hidden", "--no-require-git", "--color", "never", "--no-heading",
                "--with-filename", "--max-columns", str(GREP_MAX_COLUMNS), "--max-columns-preview"]
        if hidden is not None:
            argv.append("--null")  # a NUL after each path: the path is known exactly, whatever it holds
        if input.get("-i"):
            argv.append("--ignore-case")
        if input.get("multiline"):
            argv += ["--multiline", "--multiline-dotall"]
        if input.get("type"):
            argv += ["--type", str(input["type"])]
        for glob in _split_globs(str(input.get("glob") or "")):
            argv += ["--glob", glob]
        argv += ["--glob", "!.git"]
        if mode == "files_with_matches":
            argv.append("--files-with-matches")
        elif mode == "count":
            argv += ["--count-matches", "--sort", "path"]
        else:
            argv += ["--sort", "path"]
            if input.get("-n", True):
                argv.append("--line-number")
            for flag in ("-A", "-B", "-C"):
                if input.get(flag) is not None:
                    argv += [flag, str(int(input[flag]))]
        argv += ["--regexp", pattern, "--", str(root)]
        out = _run_rg(argv, str(root if root.is_dir() else root.parent), GREP_MAX_READ, SEARCH_TIMEOUT)
        text = out.stdout.decode("utf-8", "replace")
        listing = hidden is not None and mode == "files_with_matches"  # --null: NUL-separated paths
        lines = text.split("\0" if listing else "\n")
        if lines and lines[-1] == "":
            lines.pop()
        if out.truncated and lines:
            lines.pop()  # the last line may be cut
        if out.returncode == 2 and not lines:
            raise ToolError(f"Grep failed: {out.stderr or 'ripgrep reported an error'}")
        if hidden is not None:
            numbered = mode == "content" and bool(input.get("-n", True))
            lines = [p for p in lines if not hidden(Path(p))] if listing else _unhide(lines, hidden, numbered)
        notes: list[str] = []
        if out.timed_out:
            notes.append(f"search stopped after {SEARCH_TIMEOUT:.0f} s; results are partial")
        if out.truncated:
            notes.append("ripgrep output was capped; results are partial: narrow the search")
        if out.returncode == 2 and out.stderr:
            notes.append("some files could not be searched: " + out.stderr.splitlines()[0])
        metadata: dict[str, Any] = {"mode": mode}
        if mode == "files_with_matches":
            lines = _by_mtime(lines)
            metadata["numFiles"] = len(lines)
        elif mode == "count":
            total = 0
            for line in lines:
                _, _, count = line.rpartition(":")
                total += int(count) if count.isdigit() else 0
            metadata.update(numFiles=len(lines), numMatches=total)
        head_limit = input.get("head_limit")
        if head_limit:
            if len(lines) > int(head_limit):
                notes.append(f"showing the first {int(head_limit)} of {len(lines)} lines (head_limit)")
            lines = lines[: int(head_limit)]
        if not lines:
            return "No matches found" + "".join(f"\n… [{n}]" for n in notes), {**metadata, "numLines": 0}
        body = "\n".join(lines)
        if mode == "files_with_matches":
            body = f"Found {metadata['numFiles']} file{'s' if metadata['numFiles'] != 1 else ''}\n{body}"
        elif mode == "count":
            matches, files = metadata["numMatches"], metadata["numFiles"]
            body += f"\n\nFound {matches} match{'es' if matches != 1 else ''} in {files} file{'s' * (files != 1)}"
        if len(body) > GREP_MAX_CHARS:
            cut = body.rfind("\n", 0, GREP_MAX_CHARS)
            body = body[: cut if cut > 0 else GREP_MAX_CHARS]
            notes.append(f"output cut at {GREP_MAX_CHARS} characters: narrow the search or use head_limit")
        metadata["numLines"] = len(lines)
        return body + "".join(f"\n… [{n}]" for n in notes), metadata


def _unhide(lines: list[str], hidden: Callable[[Path], bool], numbered: bool) -> list[str]:
    """
    ripgrep's ``--null`` lines without those of hidden files, written as without ``--null``:
    ``path``, ``path:count``, ``path:12:text`` (``path-12-text`` for context lines), and ``--``
    separators kept only between shown groups.
    """
    shown: list[str] = []
    verdicts: dict[str, bool] = {}
    for line in lines:
        path, nul, rest = line.partition("\0")
        if not nul:  # "--" between context groups
            if shown and shown[-1] != "--":
                shown.append(line)
            continue
        if path not in verdicts:
            verdicts[path] = hidden(Path(path))
        if verdicts[path]:
            continue
        if not rest:
            shown.append(path)
            continue
        digits = len(rest) - len(rest.lstrip("0123456789")) if numbered else 0
        separator = "-" if digits and rest[digits:digits + 1] == "-" else ":"
        shown.append(f"{path}{separator}{rest}")
    while shown and shown[-1] == "--":
        shown.pop()
    return shown


# --------------------------------------------------------------------------- Bash


class _Collector:
    """Reads a process's output buffer as it arrives, keeping its head and its tail."""

    def __init__(self, keep: int = _BASH_KEEP_BYTES) -> None:
        self.keep = keep
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.sub: Subscription | None = None

    def attach(self, proc: ManagedProcess) -> None:
        self.sub = proc.buffer.subscribe(self, proc.buffer.start_offset)
        self.drain()

    def drain(self) -> None:
        sub = self.sub
        if sub is None:
            return
        while True:
            result = sub.take(1 << 20)
            self.total += result.missed
            if not result.chunks:
                return
            for chunk in result.chunks:
                self._add(chunk.data)

    def _add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.keep - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.keep:
                del self.tail[: len(self.tail) - self.keep]

    def close(self) -> None:
        self.drain()
        if self.sub is not None:
            self.sub.cancel()
            self.sub = None

    # BufferReader
    def data_available(self) -> None:
        self.drain()

    def buffer_closed(self) -> None:
        pass

    def lagged(self, next_offset: int) -> None:
        pass

    def text(self, limit: int = BASH_MAX_CHARS) -> tuple[str, bool]:
        """The output as text, at most ``limit`` characters (head and tail with a marker between)."""
        tail = bytes(self.tail[-self.keep :])
        kept = len(self.head) + len(tail)
        if kept == self.total:
            whole = (bytes(self.head) + tail).decode("utf-8", "replace")
            if len(whole) <= limit:
                return whole, False
            half = limit // 2
            head_text, tail_text = whole[:half], whole[-half:]
        else:
            half = limit // 2
            head_text = bytes(self.head).decode("utf-8", "replace")[:half]
            tail_text = tail.decode("utf-8", "replace")[-half:]
        omitted = self.total - len(head_text.encode("utf-8", "replace")) - len(tail_text.encode("utf-8", "replace"))
        marker = f"\n… [{max(omitted, 0)} bytes of output omitted] …\n"
        return head_text + marker + tail_text, True


def _shell() -> str:
    return shutil.which("bash") or "/bin/sh"


def _kill_session(proc: ManagedProcess) -> None:
    child = proc.child
    if child is not None:
        child.signal_session(signal.SIGKILL)


class BashTool(Tool):
    name = "Bash"
    kind = "execute"
    description = (
        "Run a shell command with bash in the working directory and return its output (stdout and "
        f"stderr together, at most {BASH_MAX_CHARS} characters: the start and the end are kept). A "
        "non-zero exit code is reported. timeout is in milliseconds (default "
        f"{BASH_DEFAULT_TIMEOUT_MS}, max {BASH_MAX_TIMEOUT_MS}); on timeout the command and everything it "
        "started is killed. stdin is closed: do not run interactive commands. Prefer Read, Edit, Glob "
        "and Grep over cat, sed, find and grep."
    )
    parameters = {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command line"},
            "timeout": {"type": "integer", "minimum": 1,
                        "description": f"Timeout in ms (default {BASH_DEFAULT_TIMEOUT_MS}, max {BASH_MAX_TIMEOUT_MS})"},
            "description": {"type": "string", "description": "What the command does, in 5-10 words"},
        },
        "required": ["command"],
        "additionalProperties": False,
    }

    def title(self, input: dict[str, Any]) -> str:
        description = input.get("description")
        if isinstance(description, str) and description.strip():
            return _short(description)
        return _short(str(input.get("command", "")))

    def permission_key(self, input: dict[str, Any]) -> str:
        command = input.get("command")
        return command if isinstance(command, str) else ""

    async def execute(self, ctx: ToolContext, input: dict[str, Any]) -> ToolResult:
        command: str = input["command"]
        title = self.title(input)
        if not command.strip():
            raise ToolError("command must not be empty")
        if ctx.processes is None:
            raise ToolError("Bash is not available here (no process manager)")
        if ctx.cancelled():
            return ToolResult("Command was cancelled before it started", is_error=True, title=title,
                              metadata={"cancelled": True})
        timeout_ms = min(_int(input, "timeout", BASH_DEFAULT_TIMEOUT_MS), BASH_MAX_TIMEOUT_MS)
        spec = ProcessSpec(_shell(), ["-c", command], dict(ctx.env), str(ctx.cwd))
        tag = f"agent-bash-{uuid.uuid4().hex[:12]}"
        try:
            proc = ctx.processes.start(spec, tag=tag, stdin=False, timeout=timeout_ms / 1000.0)
        except SpawnError as exc:
            raise ToolError(f"Could not start the command: {exc}") from None
        collector = _Collector()
        collector.attach(proc)
        cancelled = False

        def on_cancel() -> None:
            nonlocal cancelled
            cancelled = True
            _kill_session(proc)

        unregister = ctx.cancel.on_cancel(on_cancel)
        try:
            info = await proc.ended()
        except CancelledError:
            _kill_session(proc)
            raise
        finally:
            unregister()
            collector.close()
        text, truncated = collector.text()
        timed_out = proc.timed_out
        metadata: dict[str, Any] = {"pid": proc.pid, "exitCode": info.exit_code, "signal": info.signal,
                                    "timedOut": timed_out, "cancelled": cancelled, "truncated": truncated,
                                    "outputBytes": collector.total}
        text = text.rstrip("\n")
        if timed_out:
            output = f"Command timed out after {timeout_ms} ms" + (f"\n{text}" if text else "")
            return ToolResult(output, is_error=True, title=title, metadata=metadata)
        if cancelled:
            output = "Command was cancelled" + (f"\n{text}" if text else "")
            return ToolResult(output, is_error=True, title=title, metadata=metadata)
        output = text if text else "(no output)"
        if info.signal is not None:
            output += f"\nKilled by signal ({info.status})"
            return ToolResult(output, is_error=True, title=title, metadata=metadata)
        if info.exit_code:
            output += f"\nExit code: {info.exit_code}"
            return ToolResult(output, is_error=True, title=title, metadata=metadata)
        return ToolResult(output, title=title, metadata=metadata)


# --------------------------------------------------------------------------- the set


def default_tools() -> list[Tool]:
    """A fresh instance of every built-in tool."""
    return [ReadTool(), WriteTool(), EditTool(), LSTool(), GlobTool(), GrepTool(), BashTool()]


def tool_schemas(tools: list[Tool]) -> list[dict[str, Any]]:
    """``tools`` in the OpenAI chat-completions format: ``{"type": "function", "function": {...}}``."""
    return [tool.schema() for tool in tools]
