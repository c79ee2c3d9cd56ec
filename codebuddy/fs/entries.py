"""
``EntryInfo``: what every filesystem endpoint says about a file, as E2B's envd fills it.

* ``type`` is ``"file"`` or ``"directory"`` (``"unknown"`` for sockets, FIFOs, devices and
  dangling links); for a symlink it is the *target's* type and ``isSymlink`` is true.
* ``size`` is the ``lstat`` size; ``mode`` the permission bits (the target's for a link);
  ``permissions`` Go's ``FileMode.String()`` of the ``lstat`` mode (``-rw-r--r--``,
  ``drwxr-xr-x``, ``Lrwxrwxrwx``, ``dtrwxrwxrwx``), as envd prints it.
* ``modifiedTime`` is RFC 3339 UTC with nanoseconds when there are any, like protobuf JSON.
* ``symlinkTarget`` (links only) is the fully resolved absolute target, or the link's own
  path when it cannot be resolved.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import time
from functools import lru_cache
from typing import Any, cast

import attrs

from codebuddy.web.json import omit_if_default, unstructure

# JSON string literal with non-ASCII escaped (also valid for undecodable names).
_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]

FILE = "file"
DIRECTORY = "directory"
UNKNOWN = "unknown"


@attrs.frozen
class EntryInfo:
    """A file, directory or link (E2B envd ``EntryInfo``)."""

    name: str
    type: str = attrs.field(metadata={"doc": '"file", "directory" or "unknown" (for a link: its target\'s type)'})
    path: str
    size: int
    mode: int = attrs.field(metadata={"doc": "Permission bits, e.g. 420 = 0o644"})
    permissions: str = attrs.field(metadata={"doc": "Go FileMode string, e.g. -rw-r--r--"})
    owner: str
    group: str
    modified_time: str | None = attrs.field(metadata={"doc": "RFC 3339 UTC, nanosecond precision"})
    is_symlink: bool = False
    symlink_target: str | None = attrs.field(default=None, metadata=omit_if_default())


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIRECTORY
    return UNKNOWN


@lru_cache(maxsize=1024)
def go_file_mode(mode: int) -> str:
    """Go's ``fs.FileMode.String()`` for a POSIX ``st_mode``."""
    letters = ""
    if stat.S_ISDIR(mode):
        letters += "d"
    if stat.S_ISLNK(mode):
        letters += "L"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        letters += "D"
    if stat.S_ISFIFO(mode):
        letters += "p"
    if stat.S_ISSOCK(mode):
        letters += "S"
    if mode & stat.S_ISUID:
        letters += "u"
    if mode & stat.S_ISGID:
        letters += "g"
    if stat.S_ISCHR(mode):
        letters += "c"
    if mode & stat.S_ISVTX:
        letters += "t"
    rwx = "".join(
        char if mode & bit else "-"
        for char, bit in zip(
            "rwxrwxrwx",
            (
                stat.S_IRUSR,
                stat.S_IWUSR,
                stat.S_IXUSR,
                stat.S_IRGRP,
                stat.S_IWGRP,
                stat.S_IXGRP,
                stat.S_IROTH,
                stat.S_IWOTH,
                stat.S_IXOTH,
            ),
            strict=True,
        )
    )
    return (letters or "-") + rwx


def rfc3339_ns(ns: int) -> str | None:
    """Nanoseconds since the epoch as protobuf JSON prints a Timestamp; ``None`` for 0."""
    if ns == 0:
        return None
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = _utc_second(seconds)
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{base}.{nanos // 1_000:06d}Z"
    return f"{base}.{nanos:09d}Z"


@lru_cache(maxsize=4096)
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


@lru_cache(maxsize=512)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@lru_cache(maxsize=512)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def entry_dict(path: str, st: os.stat_result, name: str) -> dict[str, Any]:
    """
    The wire form of :func:`entry_from_stat` built directly (no model, no converter): for
    listings of hundreds of thousands of entries. Tests keep the two identical.
    """
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return cast(dict[str, Any], unstructure(entry_from_stat(path, st, name)))
    return {
        "name": name,
        "type": FILE if stat.S_ISREG(mode) else DIRECTORY if stat.S_ISDIR(mode) else UNKNOWN,
        "path": path,
        "size": st.st_size,
        "mode": mode & 0o777,
        "permissions": go_file_mode(mode),
        "owner": user_name(st.st_uid),
        "group": group_name(st.st_gid),
        "modifiedTime": rfc3339_ns(st.st_mtime_ns),
        "isSymlink": False,
    }


_TYPE_JSON = {FILE: '"file"', DIRECTORY: '"directory"', UNKNOWN: '"unknown"'}


def entry_json(path: str, st: os.stat_result, name: str) -> str:
    """:func:`entry_dict` as JSON text, composed directly (the listing's hot path)."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return json.dumps(entry_dict(path, st, name), ensure_ascii=True, separators=(",", ":"))
    kind = FILE if stat.S_ISREG(mode) else DIRECTORY if stat.S_ISDIR(mode) else UNKNOWN
    modified = rfc3339_ns(st.st_mtime_ns)
    return (
        f'{{"name":{_quote(name)},"type":{_TYPE_JSON[kind]},"path":{_quote(path)},"size":{st.st_size},'
        f'"mode":{mode & 0o777},"permissions":"{go_file_mode(mode)}","owner":{_quote(user_name(st.st_uid))},'
        f'"group":{_quote(group_name(st.st_gid))},"modifiedTime":{_quote(modified) if modified else "null"},'
        '"isSymlink":false}'
    )


def entry_from_stat(path: str, st: os.stat_result, name: str | None = None) -> EntryInfo:
    """The entry for ``path`` whose ``lstat`` result is ``st`` (follows a link for its type)."""
    mode = st.st_mode
    kind = _kind(mode)
    perm_bits = stat.S_IMODE(mode) & 0o777
    target: str | None = None
    is_link = stat.S_ISLNK(mode)
    if is_link:
        try:
            target_st = os.stat(path)
        except OSError:
            kind, perm_bits = UNKNOWN, 0
        else:
            kind, perm_bits = _kind(target_st.st_mode), stat.S_IMODE(target_st.st_mode) & 0o777
        try:
            target = os.path.realpath(path, strict=True)
        except (OSError, RuntimeError):
            target = path
    return EntryInfo(
        name=name if name is not None else (os.path.basename(path) or path),
        type=kind,
        path=path,
        size=st.st_size,
        mode=perm_bits,
        permissions=go_file_mode(mode),
        owner=user_name(st.st_uid),
        group=group_name(st.st_gid),
        modified_time=rfc3339_ns(st.st_mtime_ns),
        is_symlink=is_link,
        symlink_target=target,
    )


def entry_info(path: str) -> EntryInfo:
    """``lstat`` ``path`` and describe it (raises OSError)."""
    return entry_from_stat(path, os.lstat(path))
