# -*- test-case-name: tests.fs.test_watch -*-
"""
Directory watching: E2B's ``WatchDir`` stream and the ``CreateWatcher`` polling trio.

One :class:`WatchService` owns one inotify instance shared by every stream and polling
watcher (a *fan-out*): each watched directory has exactly one kernel watch, reference
counted by the subscriptions that need it, and every event read from the fd is delivered
to each subscription holding that directory. Why shared rather than one inotify per client:

* the kernel limits are per *user*: ``fs.inotify.max_user_instances`` (often 128, shared
  with editors and systemd) and ``fs.inotify.max_user_watches``. The Web UI opens two
  overlapping streams per tab (``<root>`` recursively and ``<root>/.git``); shared watches
  cost one watch per directory however many clients look at it;
* closing one client releases only the directories nobody else holds, so other clients are
  never disturbed; the fd itself is closed as soon as no directory is watched.

The price is that a kernel queue overflow (``IN_Q_OVERFLOW``) is reported to every
subscription, which is right: any of them may have missed events.

We use :class:`twisted.internet.inotify.INotify` for the fd (reactor registration, reading,
closing) but bypass its path-keyed ``watch()`` API, which does not fit a long-running
multi-client daemon: it drops ``IN_Q_OVERFLOW`` silently (the event's wd is -1), closes the
*whole* fd when any watched directory (a subdirectory too) is deleted, loses ``errno`` (so
the watch limit, ``ENOSPC``, cannot be told from a vanished directory), keys watches by
path (two paths of one inode -- a moved directory, a bind mount, a symlinked root -- share a
watch descriptor) and runs its auto-add scan from ``callLater`` where failures are uncaught.
:class:`InotifyNotifier` keeps INotify's fd handling, parses events itself and hands raw
``(wd, mask, cookie, name)`` tuples to the service; a libc binding with ``use_errno`` turns
failed calls into ``OSError`` with the real errno.

Semantics (E2B envd, ``../reference/e2b.md`` §1.8, plus the fixes its users asked for):

* ``name`` is relative to the watched directory (``sub/dir/file.txt`` when recursive); an
  event about the watched directory itself is named ``"."`` (envd's ``filepath.Rel``).
* Masks map as envd/fsnotify: ``IN_CREATE``/``IN_MOVED_TO`` -> create, ``IN_MOVED_FROM``/
  ``IN_MOVE_SELF`` -> rename, ``IN_ATTRIB`` -> chmod, ``IN_MODIFY`` -> write,
  ``IN_DELETE``/``IN_DELETE_SELF`` -> remove; one inotify event with several ops yields one
  event per op in that order. ``IN_CLOSE_WRITE`` is deliberately not watched: every
  ``write(2)`` already raises ``IN_MODIFY`` (the kernel merges identical unread ones), so
  adding close-write would report each save twice.
* A rename is ``rename`` for the old name and ``create`` for the new one.
* ``entry`` is attached (when ``include_entry``) for create/write/chmod if the path can still
  be ``lstat``-ed; never for remove/rename.
* Recursive mode watches every existing subdirectory (symlinks are not followed). A new or
  moved-in subdirectory is watched at once and then listed: everything already inside it is
  reported as ``create`` (recursively), so files made before its watch existed are not lost.
  An entry created in the instant between adding the watch and listing may therefore be
  reported twice -- never missed. Removed or moved-out subdirectories release their watches.
* Problems are events, not silent gaps: a kernel queue overflow (``WATCH_OVERFLOW``; a
  recursive subscription then rescans its tree for directories it is missing), the watch
  limit while adding a new subdirectory (``WATCH_LIMIT_REACHED``), an unreadable new
  subdirectory (``PERMISSION_DENIED``...). Streams get an ``error`` event and keep going.
  Only the end of the watched directory itself (deleted: final ``remove`` of ``"."``; moved:
  final ``rename`` of ``"."``; unmounted: an ``error``) ends a stream.
* Polling watchers keep at most ``max_queue`` events (the oldest are dropped and counted in
  ``dropped``), report each error once on the next poll (a terminal one -- the watched
  directory is gone -- on every poll until removed) and are removed after ``idle_timeout``
  seconds without a poll (envd keeps an unbounded list forever).

Everything runs on the reactor thread; time comes from the injected reactor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import secrets
import stat
import struct
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from codebuddy.fs.entries import EntryInfo, entry_info
from codebuddy.fs.paths import os_error
from codebuddy.web.errors import ApiError
from codebuddy.web.json import unstructure
from codebuddy.web.sse import DEFAULT_MAX_EVENTS, EventLog

try:
    from twisted.internet.inotify import INotify as _INotifyBase

    HAVE_INOTIFY = True
except ImportError:  # pragma: no cover - inotify is Linux-only
    from twisted.internet.abstract import FileDescriptor as _INotifyBase  # type: ignore[assignment]

    HAVE_INOTIFY = False

__all__ = [
    "CHMOD",
    "CREATE",
    "REMOVE",
    "RENAME",
    "WRITE",
    "FsEvent",
    "InotifyNotifier",
    "Notifier",
    "WatchService",
    "WatchStream",
    "WatcherEvents",
    "event_types",
    "network_mount_type",
    "read_mount_table",
]

# --------------------------------------------------------------------------- inotify ABI

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

WATCH_MASK = IN_MODIFY | IN_ATTRIB | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_MOVED_FROM | IN_MOVED_TO
"""What every directory watch asks for (``IN_UNMOUNT``, ``IN_IGNORED``, ``IN_Q_OVERFLOW`` always come)."""

ROOT_FLAGS = IN_ONLYDIR | IN_EXCL_UNLINK
"""The watched directory itself: a symlink to a directory is followed (the client named it)."""

SUBDIR_FLAGS = IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK
"""Subdirectories in recursive mode: never through a symlink (no loops, no escaping the tree)."""

# --------------------------------------------------------------------------- event types

CREATE = "create"
WRITE = "write"
REMOVE = "remove"
RENAME = "rename"
CHMOD = "chmod"

_TYPE_ORDER: tuple[tuple[int, str], ...] = (
    (IN_CREATE | IN_MOVED_TO, CREATE),
    (IN_MOVED_FROM | IN_MOVE_SELF, RENAME),
    (IN_ATTRIB, CHMOD),
    (IN_MODIFY, WRITE),
    (IN_DELETE | IN_DELETE_SELF, REMOVE),
)

_WITH_ENTRY = frozenset({CREATE, WRITE, CHMOD})

SELF_NAME = "."
"""``name`` of an event about the watched directory itself (envd: ``filepath.Rel(root, root)``)."""

# Codes carried by ``error`` stream events and polling errors.
WATCH_OVERFLOW = "WATCH_OVERFLOW"
WATCH_LIMIT_REACHED = "WATCH_LIMIT_REACHED"
WATCH_ENDED = "NOT_FOUND"


def event_types(mask: int) -> list[str]:
    """The event types of one inotify ``mask``, in envd's order: create, rename, chmod, write, remove."""
    return [name for bits, name in _TYPE_ORDER if mask & bits]


# --------------------------------------------------------------------------- models


@attrs.frozen
class FsEvent:
    """One change in a watched directory (E2B ``FilesystemEvent``, our REST shape)."""

    name: str = attrs.field(metadata={"doc": 'Path relative to the watched directory ("." for the directory itself)'})
    type: str = attrs.field(metadata={"doc": '"create", "write", "remove", "rename" or "chmod"'})
    path: str = attrs.field(metadata={"doc": "Absolute path of the entry"})
    entry: EntryInfo | None = attrs.field(
        default=None, metadata={"doc": "The entry, for create/write/chmod when it still exists and includeEntry"}
    )


@attrs.frozen
class WatcherEvents:
    """What a poll of a watcher returns (E2B ``GetWatcherEventsResponse`` plus loss reporting)."""

    events: list[FsEvent]
    dropped: int = attrs.field(default=0, metadata={"doc": "Events dropped since the last poll (queue bound)"})
    error: str | None = attrs.field(
        default=None, metadata={"doc": "A watcher problem since the last poll (overflow, watch limit, directory gone)"}
    )


# --------------------------------------------------------------------------- mounts

_NETWORK_TYPES = frozenset({"nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "fuse", "fuseblk"})


def is_network_fs_type(fstype: str) -> bool:
    """True for NFS, CIFS/SMB and FUSE filesystems (``fuse.sshfs``, ``fuse.rclone``...)."""
    return fstype in _NETWORK_TYPES or fstype.startswith(("fuse.", "nfs"))


def _unescape_mount(field: str) -> str:
    # /proc escapes space, tab, newline and backslash as \040, \011, \012, \134.
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        chunk = field[i : i + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and all(c in "01234567" for c in chunk[1:]):
            out.append(chr(int(chunk[1:], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """``(mount point, fstype)`` pairs from ``/proc/self/mountinfo`` text, in mount order."""
    mounts: list[tuple[str, str]] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        tail = right.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        mounts.append((_unescape_mount(fields[4]), tail[0]))
    return mounts


def parse_proc_mounts(text: str) -> list[tuple[str, str]]:
    """``(mount point, fstype)`` pairs from ``/proc/mounts`` text."""
    mounts: list[tuple[str, str]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts.append((_unescape_mount(fields[1]), fields[2]))
    return mounts


def read_mount_table() -> list[tuple[str, str]]:
    """The mount table of this process (``[]`` when /proc cannot be read)."""
    for source, parse in (("/proc/self/mountinfo", parse_mountinfo), ("/proc/mounts", parse_proc_mounts)):
        try:
            with open(source, encoding="utf-8", errors="surrogateescape") as handle:
                return parse(handle.read())
        except OSError:
            continue
    return []


def network_mount_type(path: str, mounts: Iterable[tuple[str, str]]) -> str | None:
    """The filesystem type when ``path`` lies on a network/FUSE mount (longest mount point wins), else None."""
    best: tuple[str, str] | None = None
    for point, fstype in mounts:
        if _is_under(path, point) and (best is None or len(point) >= len(best[0])):
            best = (point, fstype)
    if best is not None and is_network_fs_type(best[1]):
        return best[1]
    return None


def _is_under(path: str, directory: str) -> bool:
    if directory == "/":
        return path.startswith("/")
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _relative(root: str, path: str) -> str:
    if path == root:
        return SELF_NAME
    if root == "/":
        return path[1:]
    return path[len(root) + 1 :]


def _join(directory: str, name: str) -> str:
    return directory + name if directory.endswith("/") else directory + "/" + name


def _sysctl(name: str) -> str:
    try:
        with open(f"/proc/sys/fs/inotify/{name}", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


# --------------------------------------------------------------------------- notifier

EventCallback = Callable[[int, int, int, "str | None"], None]
"""``(wd, mask, cookie, name)`` for each inotify event; ``wd`` is -1 for ``IN_Q_OVERFLOW``."""


class Notifier(Protocol):
    """The kernel side the service drives: one inotify instance (a fake one in unit tests)."""

    def add_watch(self, path: str, mask: int) -> int:
        """Watch ``path`` (``inotify_add_watch``); the watch descriptor, or ``OSError`` with the errno."""

    def remove_watch(self, wd: int) -> None:
        """Stop watching ``wd``; errors (an already removed watch) are ignored."""

    def close(self) -> None:
        """Release the instance and every watch it holds; idempotent."""


NotifierFactory = Callable[[Any, EventCallback, Callable[[Failure], None]], Notifier]
"""``(reactor, on_event, on_lost) -> Notifier``; ``on_lost`` is called if the fd dies unasked."""


class _Libc:
    """inotify syscalls with errno preserved (twisted's binding discards it)."""

    def __init__(self) -> None:
        self._lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._lib.inotify_init1.argtypes = [ctypes.c_int]
        self._lib.inotify_init1.restype = ctypes.c_int
        self._lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._lib.inotify_add_watch.restype = ctypes.c_int
        self._lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self._lib.inotify_rm_watch.restype = ctypes.c_int

    def init(self) -> int:
        fd = int(self._lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return fd

    def add(self, fd: int, path: str, mask: int) -> int:
        wd = int(self._lib.inotify_add_watch(fd, os.fsencode(path), mask))
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return wd

    def remove(self, fd: int, wd: int) -> None:
        self._lib.inotify_rm_watch(fd, wd)


_libc: _Libc | None = None


def _get_libc() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


_EVENT_HEADER = struct.Struct("=iIII")


class InotifyNotifier(_INotifyBase):  # type: ignore[misc,valid-type]
    """
    The real :class:`Notifier`: twisted's INotify file descriptor with our own event parsing.

    Events are handed to ``on_event`` as raw tuples; a failing handler is logged and the
    next event still delivered. ``on_lost`` runs if the fd dies without :meth:`close`.
    """

    log = Logger()

    def __init__(self, reactor: Any, on_event: EventCallback, on_lost: Callable[[Failure], None]) -> None:
        # INotify.__init__ calls self._inotify.init(): ours keeps errno and sets CLOEXEC/NONBLOCK.
        self._inotify = _get_libc()  # type: ignore[assignment]
        super().__init__(reactor=reactor)
        self._on_event = on_event
        self._on_lost = on_lost
        self._pending = b""
        self._closing = False
        self.closed = False

    def add_watch(self, path: str, mask: int) -> int:
        if self.closed:
            raise OSError(errno.EBADF, "inotify instance is closed", path)
        return self._inotify.add(self._fd, path, mask)

    def remove_watch(self, wd: int) -> None:
        if not self.closed:
            self._inotify.remove(self._fd, wd)

    def close(self) -> None:
        if self.closed:
            return
        self._closing = True
        self.loseConnection()
        self.closed = True

    def _doRead(self, data: bytes) -> None:
        buffer = self._pending + data
        offset = 0
        header = _EVENT_HEADER.size
        while not self.closed and len(buffer) - offset >= header:
            wd, mask, cookie, size = _EVENT_HEADER.unpack_from(buffer, offset)
            if len(buffer) - offset < header + size:
                break
            raw = buffer[offset + header : offset + header + size].rstrip(b"\0")
            offset += header + size
            try:
                self._on_event(wd, mask, cookie, os.fsdecode(raw) if raw else None)
            except Exception:  # noqa: BLE001 - one bad event must not stop the reader
                self.log.failure("inotify event handler failed (wd={wd}, mask={mask:#x})", wd=wd, mask=mask)
        self._pending = buffer[offset:]

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.closed = True
        if not self._closing:
            self._on_lost(reason)


def default_notifier_factory(reactor: Any, on_event: EventCallback, on_lost: Callable[[Failure], None]) -> Notifier:
    """An :class:`InotifyNotifier` reading on ``reactor``."""
    if not HAVE_INOTIFY:  # pragma: no cover - not Linux
        raise ApiError("SERVICE_UNAVAILABLE", "Watching directories needs Linux inotify")
    notifier = InotifyNotifier(reactor, on_event, on_lost)
    notifier.startReading()
    return notifier


# --------------------------------------------------------------------------- subscriptions


@attrs.define(eq=False)
class _Dir:
    """One watched path: its watch descriptor and the subscriptions holding it."""

    wd: int
    path: str
    subs: set[_Subscription] = attrs.field(factory=set)


class _Subscription(ABC):
    """What streams and polling watchers share: a root, its options and the directories held."""

    def __init__(self, root: str, recursive: bool, include_entry: bool) -> None:
        self.root = root
        self.recursive = recursive
        self.include_entry = include_entry
        self.dirs: set[str] = set()
        self.active = True

    @abstractmethod
    def _deliver(self, event: FsEvent) -> None:
        """Hand one change to the client."""

    @abstractmethod
    def _report(self, code: str, message: str) -> None:
        """Tell the client about a watcher problem (overflow, watch limit) without ending."""

    @abstractmethod
    def _ended(self, code: str, message: str, announce: bool) -> None:
        """
        The watched directory is gone and the watches are released. ``announce``: also send
        ``message`` as an ``error`` event (False when a final ``remove``/``rename`` of ``"."`` said it).
        """


class WatchStream(_Subscription):
    """
    One ``fs/watch`` SSE stream: its :attr:`log` begins with a ``start`` event; then one
    ``fs_event`` per change, ``error`` events for watcher problems. The log is closed when the
    watched directory goes away, on :meth:`close` and when the service stops.
    """

    def __init__(self, service: WatchService, root: str, recursive: bool, include_entry: bool, max_events: int) -> None:
        super().__init__(root, recursive, include_entry)
        self._service = service
        self.log = EventLog(max_events=max_events)
        self.log.append_json({"type": "start", "path": root, "recursive": recursive}, event="start")

    @property
    def path(self) -> str:
        """The watched directory."""
        return self.root

    @property
    def closed(self) -> bool:
        """True once the stream released its watches (closed or ended)."""
        return not self.active

    def close(self) -> None:
        """Release this stream's watches and close its log; idempotent (call it on client disconnect)."""
        self._service._close_stream(self)

    def _deliver(self, event: FsEvent) -> None:
        if not self.log.closed:
            self.log.append_json(unstructure(event), event="fs_event")

    def _report(self, code: str, message: str) -> None:
        if not self.log.closed:
            self.log.append_json({"type": "error", "message": message, "code": code}, event="error")

    def _ended(self, code: str, message: str, announce: bool) -> None:
        if announce:
            self._report(code, message)
        self.log.close()


class _PollingWatcher(_Subscription):
    """A ``CreateWatcher`` watcher: a bounded queue drained by polls."""

    def __init__(self, watcher_id: str, root: str, recursive: bool, include_entry: bool, max_queue: int) -> None:
        super().__init__(root, recursive, include_entry)
        self.id = watcher_id
        self.max_queue = max_queue
        self.queue: deque[FsEvent] = deque()
        self.dropped = 0
        self.errors: list[str] = []
        self.terminal_error: str | None = None
        self.expiry: IDelayedCall | None = None

    def _deliver(self, event: FsEvent) -> None:
        if self.max_queue <= 0:
            self.dropped += 1
            return
        while len(self.queue) >= self.max_queue:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(event)

    def _report(self, code: str, message: str) -> None:
        text = f"{code}: {message}"
        if text not in self.errors:
            self.errors.append(text)

    def _ended(self, code: str, message: str, announce: bool) -> None:
        self.terminal_error = f"{code}: {message}"

    def drain(self) -> WatcherEvents:
        events = list(self.queue)
        self.queue.clear()
        problems = list(self.errors)
        if self.terminal_error is not None and self.terminal_error not in problems:
            problems.append(self.terminal_error)
        self.errors.clear()
        result = WatcherEvents(events=events, dropped=self.dropped, error="; ".join(problems) or None)
        self.dropped = 0
        return result


# --------------------------------------------------------------------------- the service


class WatchService(Service):
    """
    Owns every directory watch of the daemon (one shared inotify instance, see the module
    docstring). ``reactor`` provides ``IReactorTime`` (idle expiry) and, for the default
    notifier, ``IReactorFDSet``. ``notifier_factory`` and ``mount_table`` are injectable for tests.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        notifier_factory: NotifierFactory | None = None,
        max_queue: int = 10_000,
        idle_timeout: float | None = 600.0,
        mount_table: Callable[[], Iterable[tuple[str, str]]] | None = None,
        stream_max_events: int = DEFAULT_MAX_EVENTS,
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._notifier_factory = notifier_factory or default_notifier_factory
        self.max_queue = max_queue
        self.idle_timeout = idle_timeout
        self._mount_table = mount_table or read_mount_table
        self.stream_max_events = stream_max_events
        self._id_factory = id_factory or (lambda: "w" + secrets.token_hex(8))
        self._notifier: Notifier | None = None
        self._dirs: dict[str, _Dir] = {}
        self._by_wd: dict[int, dict[str, _Dir]] = {}
        self._streams: set[WatchStream] = set()
        self._watchers: dict[str, _PollingWatcher] = {}

    # -- public API

    def open_stream(
        self, path: str, recursive: bool = False, include_entry: bool = True, allow_network_mounts: bool = False
    ) -> WatchStream:
        """Watch ``path`` for an SSE client; raises ApiError for a bad path or a watch failure."""
        self._validate(path, allow_network_mounts)
        stream = WatchStream(self, path, recursive, include_entry, self.stream_max_events)
        self._watch_tree(stream)
        self._streams.add(stream)
        return stream

    def create_watcher(
        self, path: str, recursive: bool = False, include_entry: bool = True, allow_network_mounts: bool = False
    ) -> str:
        """Start a polling watcher on ``path``; its id (``w`` + random hex)."""
        self._validate(path, allow_network_mounts)
        watcher_id = self._id_factory()
        while watcher_id in self._watchers:
            watcher_id = self._id_factory()
        watcher = _PollingWatcher(watcher_id, path, recursive, include_entry, self.max_queue)
        self._watch_tree(watcher)
        self._watchers[watcher_id] = watcher
        self._touch(watcher)
        return watcher_id

    def watcher_events(self, watcher_id: str) -> WatcherEvents:
        """Drain a watcher's events (and its ``dropped`` count and errors); NOT_FOUND for unknown ids."""
        watcher = self._get_watcher(watcher_id)
        self._touch(watcher)
        return watcher.drain()

    def remove_watcher(self, watcher_id: str) -> None:
        """Stop a polling watcher; NOT_FOUND for unknown ids."""
        watcher = self._get_watcher(watcher_id)
        self._discard_watcher(watcher)

    def stopService(self) -> None:
        """Close every stream (its log too) and remove every watcher and watch."""
        super().stopService()
        for stream in list(self._streams):
            self._close_stream(stream)
        for watcher in list(self._watchers.values()):
            self._discard_watcher(watcher)
        self._close_notifier()

    # -- introspection

    def active_watch_count(self) -> int:
        """Kernel watches held (one per watched inode, however many clients share it)."""
        return len(self._by_wd)

    def watched_paths(self) -> set[str]:
        """Every path currently watched."""
        return set(self._dirs)

    def stream_count(self) -> int:
        """Streams open."""
        return len(self._streams)

    def watcher_count(self) -> int:
        """Polling watchers alive (including ones whose directory is gone but not yet removed)."""
        return len(self._watchers)

    @property
    def notifier_open(self) -> bool:
        """True while an inotify instance is open (only while something is watched)."""
        return self._notifier is not None

    # -- validation

    def _validate(self, path: str, allow_network_mounts: bool) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise (os_error(exc, path) or ApiError("INTERNAL_ERROR", f"Cannot stat {path}: {exc}")) from None
        if not stat.S_ISDIR(st.st_mode):
            raise ApiError("PATH_NOT_DIRECTORY", f"Path is not a directory: {path}")
        if allow_network_mounts:
            return
        try:
            mounts = list(self._mount_table())
            real = os.path.realpath(path)
        except OSError:
            self.log.failure("cannot read the mount table; assuming {path} is local", path=path)
            return
        fstype = network_mount_type(real, mounts)
        if fstype is not None:
            raise ApiError(
                "BAD_REQUEST",
                f"{path} is on a network or FUSE filesystem ({fstype}), where inotify misses changes made "
                "elsewhere; set allowNetworkMounts to watch it anyway",
            )

    def _add_error(self, exc: OSError, path: str) -> ApiError:
        """The ApiError for a failed inotify_init/inotify_add_watch."""
        if exc.errno == errno.ENOSPC:
            return ApiError(
                "WATCH_LIMIT_REACHED",
                f"Cannot watch {path}: the inotify watch limit is reached "
                f"(fs.inotify.max_user_watches = {_sysctl('max_user_watches')}); raise it with "
                "sysctl -w fs.inotify.max_user_watches=<n> or watch a smaller tree",
            )
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return ApiError(
                "WATCH_LIMIT_REACHED",
                f"Cannot watch {path}: no inotify instance available "
                f"(fs.inotify.max_user_instances = {_sysctl('max_user_instances')}, or the open file limit)",
            )
        if exc.errno == errno.ENOTDIR:
            return ApiError("PATH_NOT_DIRECTORY", f"Path is not a directory: {path}")
        return os_error(exc, path) or ApiError("INTERNAL_ERROR", f"Cannot watch {path}: {exc.strerror or exc}")

    # -- watch bookkeeping

    def _ensure_notifier(self) -> Notifier:
        if self._notifier is None:
            notifier: Notifier | None = None

            def on_event(wd: int, mask: int, cookie: int, name: str | None) -> None:
                if notifier is not None and notifier is self._notifier:
                    self._on_event(wd, mask, cookie, name)

            def on_lost(reason: Failure) -> None:
                if notifier is not None and notifier is self._notifier:
                    self._notifier_lost(reason)

            notifier = self._notifier_factory(self._reactor, on_event, on_lost)
            self._notifier = notifier
        return self._notifier

    def _close_notifier(self) -> None:
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            notifier.close()

    def _acquire(self, sub: _Subscription, path: str, *, root: bool) -> None:
        """Make ``sub`` hold a watch on ``path`` (adding the kernel watch if nobody holds it); OSError."""
        if path in sub.dirs:
            return
        existing = self._dirs.get(path)
        if existing is None:
            notifier = self._ensure_notifier()
            try:
                wd = notifier.add_watch(path, WATCH_MASK | (ROOT_FLAGS if root else SUBDIR_FLAGS))
            except OSError:
                self._maybe_close_notifier()
                raise
            # Another path of the same inode (a moved directory, a bind mount, a symlinked
            # root) shares the watch descriptor: keep one _Dir per path under the wd.
            existing = _Dir(wd, path)
            self._dirs[path] = existing
            self._by_wd.setdefault(wd, {})[path] = existing
        existing.subs.add(sub)
        sub.dirs.add(path)

    def _release(self, sub: _Subscription, path: str) -> None:
        sub.dirs.discard(path)
        held = self._dirs.get(path)
        if held is None:
            return
        held.subs.discard(sub)
        if held.subs:
            return
        del self._dirs[path]
        group = self._by_wd.get(held.wd)
        if group is not None:
            group.pop(path, None)
            if not group:
                del self._by_wd[held.wd]
                if self._notifier is not None:
                    self._notifier.remove_watch(held.wd)
        self._maybe_close_notifier()

    def _release_all(self, sub: _Subscription) -> None:
        for path in list(sub.dirs):
            self._release(sub, path)

    def _release_subtree(self, sub: _Subscription, top: str) -> None:
        for path in [p for p in sub.dirs if p == top or p.startswith(top + "/")]:
            self._release(sub, path)

    def _maybe_close_notifier(self) -> None:
        if not self._dirs:
            self._close_notifier()

    def _forget_wd(self, wd: int) -> None:
        """The kernel dropped ``wd`` (IN_IGNORED): forget it without inotify_rm_watch."""
        group = self._by_wd.pop(wd, None) or {}
        for held in group.values():
            self._dirs.pop(held.path, None)
            for sub in list(held.subs):
                sub.dirs.discard(held.path)
                if held.path == sub.root and sub.active:
                    self._end(sub, WATCH_ENDED, f"The watch on {sub.root} was removed by the kernel", announce=True)
        self._maybe_close_notifier()

    def _watch_tree(self, sub: _Subscription) -> None:
        """Watch ``sub.root`` (and, when recursive, every subdirectory); ApiError on failure."""
        try:
            self._acquire(sub, sub.root, root=True)
        except OSError as exc:
            self._release_all(sub)
            raise self._add_error(exc, sub.root) from None
        if not sub.recursive:
            return
        try:
            self._walk(sub, sub.root, synthesize=False, fatal_limit=True)
        except OSError as exc:
            self._release_all(sub)
            raise self._add_error(exc, exc.filename or sub.root) from None

    def _walk(self, sub: _Subscription, top: str, *, synthesize: bool, fatal_limit: bool) -> None:
        """
        Watch the directories below ``top`` (already watched) depth first; with ``synthesize``
        report every entry found as ``create``. Entries that vanish meanwhile are skipped;
        other failures are reported to ``sub`` (``ENOSPC`` is raised when ``fatal_limit``).
        """
        stack = [top]
        while stack and sub.active:
            directory = stack.pop()
            try:
                with os.scandir(directory) as it:
                    children = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    self._report_add_failure(sub, exc, directory)
                continue
            subdirs: list[str] = []
            for child in children:
                child_path = _join(directory, child.name)
                if synthesize:
                    self._emit(sub, CREATE, child_path, {})
                try:
                    is_dir = child.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if not is_dir:
                    continue
                try:
                    self._acquire(sub, child_path, root=False)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                        continue
                    if exc.errno == errno.ENOSPC and fatal_limit:
                        raise
                    self._report_add_failure(sub, exc, child_path)
                    continue
                subdirs.append(child_path)
            stack.extend(reversed(subdirs))

    def _report_add_failure(self, sub: _Subscription, exc: OSError, path: str) -> None:
        error = self._add_error(exc, path)
        if error.code != "WATCH_LIMIT_REACHED":
            error = ApiError(error.code, f"Changes under {path} will not be reported: {error.message}")
        self.log.warn("watch of {root}: {message}", root=sub.root, message=error.message)
        sub._report(error.code, error.message)

    # -- events

    def _on_event(self, wd: int, mask: int, cookie: int, name: str | None) -> None:
        if mask & IN_Q_OVERFLOW:
            self._overflow()
            return
        group = self._by_wd.get(wd)
        if not group:
            return
        entries: dict[str, EntryInfo | None] = {}
        for held in list(group.values()):
            full = _join(held.path, name) if name else held.path
            for sub in list(held.subs):
                if sub.active and held.path in sub.dirs:
                    self._dispatch(sub, held.path, name, mask, full, entries)
        if mask & IN_IGNORED:
            self._forget_wd(wd)

    def _dispatch(
        self,
        sub: _Subscription,
        directory: str,
        name: str | None,
        mask: int,
        full: str,
        entries: dict[str, EntryInfo | None],
    ) -> None:
        if name is None:
            # An event about a watched directory itself. For a subdirectory the parent's
            # watch reports the same change under the child's name, so only the root counts.
            if directory != sub.root:
                return
            for kind in event_types(mask):
                self._emit(sub, kind, full, entries)
            if mask & IN_DELETE_SELF:
                self._end(sub, WATCH_ENDED, f"The watched directory {sub.root} was removed", announce=False)
            elif mask & IN_MOVE_SELF:
                self._end(sub, WATCH_ENDED, f"The watched directory {sub.root} was moved or renamed", announce=False)
            elif mask & IN_UNMOUNT:
                message = f"The filesystem of {sub.root} was unmounted; the watch ended"
                self._end(sub, WATCH_ENDED, message, announce=True)
            elif mask & IN_IGNORED:
                self._end(sub, WATCH_ENDED, f"The watch on {sub.root} was removed by the kernel", announce=True)
            return
        for kind in event_types(mask):
            self._emit(sub, kind, full, entries)
        if sub.recursive and mask & IN_ISDIR and sub.active:
            if mask & (IN_DELETE | IN_MOVED_FROM):
                self._release_subtree(sub, full)
            if mask & (IN_CREATE | IN_MOVED_TO):
                self._watch_new_dir(sub, full)

    def _watch_new_dir(self, sub: _Subscription, path: str) -> None:
        try:
            self._acquire(sub, path, root=False)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                self._report_add_failure(sub, exc, path)
            return
        # Whatever was created inside before the watch existed has raised no event: list it.
        self._walk(sub, path, synthesize=True, fatal_limit=False)

    def _emit(self, sub: _Subscription, kind: str, full: str, entries: dict[str, EntryInfo | None]) -> None:
        entry: EntryInfo | None = None
        if sub.include_entry and kind in _WITH_ENTRY:
            if full not in entries:
                try:
                    entries[full] = entry_info(full)
                except OSError:
                    entries[full] = None
            entry = entries[full]
        sub._deliver(FsEvent(name=_relative(sub.root, full), type=kind, path=full, entry=entry))

    def _overflow(self) -> None:
        message = (
            "The kernel's inotify event queue overflowed "
            f"(fs.inotify.max_queued_events = {_sysctl('max_queued_events')}): some changes were not "
            "reported; list the directory again"
        )
        self.log.warn("inotify queue overflow")
        for sub in self._subscriptions():
            sub._report(WATCH_OVERFLOW, message)
            if sub.recursive and sub.active:
                self._resync(sub)

    def _resync(self, sub: _Subscription) -> None:
        """After lost events: drop directories that vanished, watch the ones we missed."""
        for path in list(sub.dirs):
            if path != sub.root and not os.path.isdir(path):
                self._release(sub, path)
        if sub.root in sub.dirs:
            self._walk(sub, sub.root, synthesize=False, fatal_limit=False)

    def _notifier_lost(self, reason: Failure) -> None:
        self.log.failure("the inotify file descriptor failed", reason)
        self._notifier = None
        self._dirs.clear()
        self._by_wd.clear()
        for sub in self._subscriptions():
            sub.dirs.clear()
            self._end(sub, "INTERNAL_ERROR", "The inotify instance failed; the watch ended", announce=True)

    def _subscriptions(self) -> list[_Subscription]:
        subs: list[_Subscription] = [s for s in self._streams if s.active]
        subs.extend(w for w in self._watchers.values() if w.active)
        return subs

    # -- lifecycle of subscriptions

    def _end(self, sub: _Subscription, code: str, message: str, *, announce: bool) -> None:
        """The watched directory is gone: release, tell the subscription, keep watchers for a last poll."""
        if not sub.active:
            return
        sub.active = False
        self._release_all(sub)
        if isinstance(sub, WatchStream):
            self._streams.discard(sub)
        self.log.info("watch of {root} ended: {message}", root=sub.root, message=message)
        sub._ended(code, message, announce)

    def _close_stream(self, stream: WatchStream) -> None:
        if stream.active:
            stream.active = False
            self._release_all(stream)
        self._streams.discard(stream)
        stream.log.close()

    def _discard_watcher(self, watcher: _PollingWatcher) -> None:
        watcher.active = False
        self._release_all(watcher)
        self._watchers.pop(watcher.id, None)
        if watcher.expiry is not None and watcher.expiry.active():
            watcher.expiry.cancel()
        watcher.expiry = None
        watcher.queue.clear()

    def _get_watcher(self, watcher_id: str) -> _PollingWatcher:
        watcher = self._watchers.get(watcher_id)
        if watcher is None:
            raise ApiError("NOT_FOUND", f"watcher with id {watcher_id} not found")
        return watcher

    def _touch(self, watcher: _PollingWatcher) -> None:
        if not self.idle_timeout or self.idle_timeout <= 0:
            return
        if watcher.expiry is not None and watcher.expiry.active():
            watcher.expiry.reset(self.idle_timeout)
        else:
            watcher.expiry = self._clock.callLater(self.idle_timeout, self._expire, watcher.id)

    def _expire(self, watcher_id: str) -> None:
        watcher = self._watchers.get(watcher_id)
        if watcher is not None:
            watcher.expiry = None
            self.log.info(
                "removing watcher {id} of {root}: not polled for {timeout}s",
                id=watcher_id,
                root=watcher.root,
                timeout=self.idle_timeout,
            )
            self._discard_watcher(watcher)
