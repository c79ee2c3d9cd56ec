"""
Path resolution shared by every filesystem endpoint.

Paths arrive as text. Relative paths resolve against the workspace (``--cwd``), ``~`` and
``~/x`` against the daemon user's home; the result is normalised (``..`` collapsed) but
symlinks are *not* resolved, so the path a client names is the path it gets back (as in
E2B's envd). OS errors map to the API's error codes in one place.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from codebuddy.web.errors import ApiError

T = TypeVar("T")


class Resolver:
    """Turns client paths into absolute, normalised paths."""

    def __init__(self, workspace: Path | str, home: Path | str | None = None):
        self.workspace = os.path.abspath(str(workspace))
        self.home = os.path.abspath(str(home)) if home is not None else os.path.expanduser("~")

    def resolve(self, path: str | None, field: str = "path") -> str:
        """The absolute path for ``path``; 400 ``PATH_REQUIRED`` when it is missing or empty."""
        if path is None or path == "":
            raise ApiError("PATH_REQUIRED", f"Missing {field}", [{"field": field, "message": "required"}])
        if "\0" in path:
            raise ApiError("BAD_REQUEST", f"{field} contains a NUL byte", [{"field": field, "message": "NUL byte"}])
        if path == "~" or path.startswith("~/"):
            path = self.home + path[1:]
        elif path.startswith("~"):
            raise ApiError("BAD_REQUEST", f"Cannot expand another user's home directory in {path!r}")
        if not os.path.isabs(path):
            path = os.path.join(self.workspace, path)
        normalised = os.path.normpath(path)
        if normalised.startswith("//"):
            normalised = "/" + normalised.lstrip("/")
        return normalised


_ERRNO_CODES: dict[int, tuple[str, str]] = {
    errno.ENOENT: ("NOT_FOUND", "No such file or directory"),
    errno.ENOTDIR: ("NOT_FOUND", "A component of the path is not a directory"),
    errno.EACCES: ("PERMISSION_DENIED", "Permission denied"),
    errno.EPERM: ("PERMISSION_DENIED", "Operation not permitted"),
    errno.EROFS: ("PERMISSION_DENIED", "Read-only file system"),
    errno.EEXIST: ("ALREADY_EXISTS", "File exists"),
    errno.ENOTEMPTY: ("CONFLICT", "Directory not empty"),
    errno.EBUSY: ("CONFLICT", "Device or resource busy"),
    errno.EISDIR: ("PATH_NOT_DIRECTORY", "Is a directory (a file was expected)"),
    errno.ENAMETOOLONG: ("BAD_REQUEST", "File name too long"),
    errno.ELOOP: ("BAD_REQUEST", "Too many levels of symbolic links"),
    errno.EINVAL: ("BAD_REQUEST", "Invalid argument"),
    errno.ENOSPC: ("INSUFFICIENT_STORAGE", "No space left on device"),
    errno.EDQUOT: ("INSUFFICIENT_STORAGE", "Disk quota exceeded"),
    errno.EFBIG: ("PAYLOAD_TOO_LARGE", "File too large"),
}


def os_error(exc: OSError, path: str | None = None) -> ApiError | None:
    """The ApiError for a known OSError (``None`` for unexpected ones, which become 500s)."""
    mapped = _ERRNO_CODES.get(exc.errno or 0)
    if mapped is None:
        return None
    code, text = mapped
    where = path or exc.filename
    message = f"{text}: {where}" if where else text
    return ApiError(code, message)


@contextmanager
def mapped_errors(path: str | None = None) -> Iterator[None]:
    """Re-raise known OSErrors as ApiErrors naming ``path``."""
    try:
        yield
    except OSError as exc:
        error = os_error(exc, path)
        if error is None:
            raise
        raise error from None


def call_mapped(fn: Callable[..., T], *args: Any, path: str | None = None) -> T:
    """``fn(*args)`` with known OSErrors turned into ApiErrors."""
    with mapped_errors(path):
        return fn(*args)
