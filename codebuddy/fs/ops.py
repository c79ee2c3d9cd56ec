"""
The E2B ``filesystem.proto`` operations: stat, list, mkdir, remove, move.

Plain blocking functions on absolute paths; the routes run them in a thread so that a
deep listing or a tree removal never holds up the reactor.
"""

from __future__ import annotations

import errno
import operator
import os
import shutil
import stat
from collections.abc import Callable
from typing import Any

from codebuddy.fs.entries import DIRECTORY, EntryInfo, entry_dict, entry_info, entry_json
from codebuddy.fs.paths import mapped_errors, os_error
from codebuddy.web.errors import ApiError

DIR_MODE = 0o755
_by_name = operator.attrgetter("name")


def stat_path(path: str) -> EntryInfo:
    """The entry at ``path`` (``lstat``: a dangling link is found)."""
    with mapped_errors(path):
        return entry_info(path)


def list_dir(path: str, depth: int = 1) -> list[dict[str, Any]]:
    """
    Entries under ``path`` down to ``depth`` levels (0 counts as 1), as envd's ``ListDir``:
    pre-order, each directory's entries in byte order and followed by their children;
    symlinked directories are listed but not entered; entries that vanish meanwhile are
    skipped; unreadable subdirectories are listed but not entered (envd fails the whole call).
    """
    out: list[dict[str, Any]] = []
    _list(path, depth, out, entry_dict)
    return out


def list_dir_json(path: str, depth: int = 1) -> bytes:
    """:func:`list_dir` as the route's JSON answer ``{"data": {"entries": [...]}}``, built directly."""
    out: list[str] = []
    _list(path, depth, out, entry_json)
    return b'{"data":{"entries":[' + ",".join(out).encode("ascii") + b"]}}"


def _list(path: str, depth: int, out: list[Any], render: Callable[[str, os.stat_result, str], Any]) -> None:
    depth = max(depth, 1)
    with mapped_errors(path):
        root = os.stat(path)
    if not stat.S_ISDIR(root.st_mode):
        raise ApiError("PATH_NOT_DIRECTORY", f"Path is not a directory: {path}")
    try:
        _walk(path, depth, out, render)
    except PermissionError:
        raise ApiError("PERMISSION_DENIED", f"Permission denied: {path}") from None


def _walk(directory: str, levels: int, out: list[Any], render: Callable[[str, os.stat_result, str], Any]) -> None:
    with os.scandir(directory) as scan:
        # Code point order is UTF-8 byte order (envd sorts bytes); only undecodable
        # names (surrogate escapes) may sort differently.
        children = sorted(scan, key=_by_name)
    prefix = directory if directory.endswith("/") else directory + "/"
    for child in children:
        full = prefix + child.name
        try:
            st = child.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        out.append(render(full, st, child.name))
        if levels > 1 and stat.S_ISDIR(st.st_mode):
            try:
                _walk(full, levels - 1, out, render)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue


def make_dir(path: str) -> EntryInfo:
    """Create ``path`` and its parents; 409 ``ALREADY_EXISTS`` when it is a directory already."""
    try:
        existing = os.stat(path)
    except FileNotFoundError:
        existing = None
    except NotADirectoryError:
        raise ApiError("PATH_NOT_DIRECTORY", f"A parent of {path} is not a directory") from None
    except OSError as exc:
        raise (os_error(exc, path) or exc) from None
    if existing is not None:
        if stat.S_ISDIR(existing.st_mode):
            raise ApiError("ALREADY_EXISTS", f"Directory already exists: {path}")
        raise ApiError("ALREADY_EXISTS", f"A file already exists at {path}")
    try:
        os.makedirs(path, mode=DIR_MODE)
    except FileExistsError:
        if os.path.isdir(path):
            raise ApiError("ALREADY_EXISTS", f"Directory already exists: {path}") from None
        if os.path.lexists(path):
            raise ApiError("ALREADY_EXISTS", f"A file or link already exists at {path}") from None
        raise ApiError("PATH_NOT_DIRECTORY", f"A parent of {path} is not a directory") from None
    except NotADirectoryError:
        raise ApiError("PATH_NOT_DIRECTORY", f"A parent of {path} is not a directory") from None
    except OSError as exc:
        raise (os_error(exc, path) or exc) from None
    return stat_path(path)


def remove(path: str) -> None:
    """Remove a file, link or whole tree; a missing path is not an error (as in envd)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise (os_error(exc, path) or exc) from None
    if path == "/":
        raise ApiError("FORBIDDEN", "Refusing to remove /")
    with mapped_errors(path):
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, onerror=_raise_unless_gone)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return


def _raise_unless_gone(function: object, path: str, exc_info: tuple[type, BaseException, object]) -> None:
    if isinstance(exc_info[1], FileNotFoundError):
        return
    raise exc_info[1]


def move(source: str, destination: str) -> EntryInfo:
    """
    Rename ``source`` to ``destination`` (creating its parents; a file at the destination
    is replaced, as with ``rename(2)``); across filesystems the data is copied.
    """
    try:
        os.lstat(source)
    except (FileNotFoundError, NotADirectoryError):
        raise ApiError("NOT_FOUND", f"Source not found: {source}") from None
    except OSError as exc:
        raise (os_error(exc, source) or exc) from None
    parent = os.path.dirname(destination)
    try:
        os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ApiError("PATH_NOT_DIRECTORY", f"A parent of {destination} is not a directory") from None
    except OSError as exc:
        raise (os_error(exc, parent) or exc) from None
    try:
        os.rename(source, destination)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            _move_across(source, destination)
        elif exc.errno == errno.EINVAL:
            raise ApiError("BAD_REQUEST", f"Cannot move {source} into itself") from None
        else:
            raise (os_error(exc, destination) or exc) from None
    return stat_path(destination)


def _move_across(source: str, destination: str) -> None:
    """
    ``rename(2)`` semantics across filesystems (copy, then remove the source): a file
    replaces a file, a directory replaces an empty directory; anything else is refused
    as rename would refuse it (``shutil.move`` would move *into* an existing directory).
    """
    source_is_dir = os.path.isdir(source) and not os.path.islink(source)
    if os.path.lexists(destination):
        destination_is_dir = os.path.isdir(destination) and not os.path.islink(destination)
        if destination_is_dir and not source_is_dir:
            raise ApiError("PATH_NOT_DIRECTORY", f"Is a directory (a file was expected): {destination}")
        if source_is_dir and not destination_is_dir:
            raise ApiError("PATH_NOT_DIRECTORY", f"Not a directory: {destination}")
        if destination_is_dir:
            with mapped_errors(destination):
                if os.listdir(destination):
                    raise ApiError("CONFLICT", f"Directory not empty: {destination}")
                os.rmdir(destination)
    with mapped_errors(destination):
        shutil.move(source, destination)


def is_directory(entry: EntryInfo) -> bool:
    return entry.type == DIRECTORY
