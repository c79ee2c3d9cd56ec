"""
Tests for :mod:`codebuddy.fs.watch`.

Unit tests drive the service through a fake notifier (synthetic ``(path, mask)`` events on
real temporary directories) and a ``Clock``; integration tests use the real reactor and the
kernel's inotify on temporary directories, waiting for events through the stream's
``EventLog`` with a bounded timeout (never by sleeping).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from codebuddy.fs import watch as watch_module
from codebuddy.fs.entries import entry_info
from codebuddy.fs.watch import (
    CHMOD,
    CREATE,
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    REMOVE,
    RENAME,
    WRITE,
    FsEvent,
    WatcherEvents,
    WatchService,
    WatchStream,
    event_types,
    network_mount_type,
    parse_mountinfo,
    parse_proc_mounts,
)
from codebuddy.web.errors import ApiError
from codebuddy.web.json import unstructure
from codebuddy.web.sse import Event, EventLog

LOCAL_MOUNTS = [("/", "ext4")]


# --------------------------------------------------------------------------- fakes


class FakeNotifier:
    """A notifier whose events the test emits as ``(path, mask)``; add failures by path."""

    def __init__(
        self,
        on_event: Callable[[int, int, int, str | None], None],
        on_lost: Callable[[Failure], None],
        failures: dict[str, int],
        aliases: dict[str, str],
    ) -> None:
        self.on_event = on_event
        self.on_lost = on_lost
        self.failures = failures
        self.aliases = aliases
        self.wd_paths: dict[int, str] = {}
        self.path_wds: dict[str, int] = {}
        self.masks: dict[int, int] = {}
        self.removed: list[int] = []
        self.next_wd = 1
        self.closed = False

    # Notifier

    def add_watch(self, path: str, mask: int) -> int:
        assert not self.closed, "add_watch on a closed notifier"
        if path in self.failures:
            code = self.failures[path]
            raise OSError(code, os.strerror(code), path)
        inode = self.aliases.get(path, path)  # aliases share one "inode", hence one wd
        if inode not in self.path_wds:
            self.path_wds[inode] = self.next_wd
            self.wd_paths[self.next_wd] = inode
            self.next_wd += 1
        wd = self.path_wds[inode]
        self.masks[wd] = mask
        return wd

    def remove_watch(self, wd: int) -> None:
        path = self.wd_paths.pop(wd, None)
        if path is not None:
            del self.path_wds[path]
            self.removed.append(wd)

    def close(self) -> None:
        self.closed = True
        self.wd_paths.clear()
        self.path_wds.clear()

    # driving

    @property
    def watched(self) -> set[str]:
        return set(self.path_wds)

    def emit(self, path: str | Path, mask: int) -> None:
        """An event for the entry ``path``, delivered on its parent directory's watch."""
        parent, name = os.path.split(str(path))
        self.on_event(self.path_wds[parent], mask, 0, name)

    def emit_self(self, path: str | Path, mask: int) -> None:
        """An event about the watched directory ``path`` itself (no name)."""
        self.on_event(self.path_wds[str(path)], mask, 0, None)

    def overflow(self) -> None:
        self.on_event(-1, IN_Q_OVERFLOW, 0, None)


class FakeFactory:
    """The injected ``notifier_factory``: records every notifier it made."""

    def __init__(self) -> None:
        self.created: list[FakeNotifier] = []
        self.failures: dict[str, int] = {}
        self.aliases: dict[str, str] = {}
        self.init_errno: int | None = None

    def __call__(self, reactor: Any, on_event: Any, on_lost: Any) -> FakeNotifier:
        if self.init_errno is not None:
            raise OSError(self.init_errno, os.strerror(self.init_errno))
        notifier = FakeNotifier(on_event, on_lost, self.failures, self.aliases)
        self.created.append(notifier)
        return notifier

    @property
    def current(self) -> FakeNotifier:
        assert self.created, "no notifier was created"
        return self.created[-1]


class Harness:
    """A WatchService on a Clock with a fake notifier and a local-only mount table."""

    def __init__(self, root: Path, **kw: Any) -> None:
        self.root = root
        self.clock = Clock()
        self.factory = FakeFactory()
        self.mounts: list[tuple[str, str]] = list(LOCAL_MOUNTS)
        kw.setdefault("idle_timeout", 60.0)
        self.service = WatchService(self.clock, notifier_factory=self.factory, mount_table=lambda: self.mounts, **kw)

    @property
    def notifier(self) -> FakeNotifier:
        return self.factory.current

    def p(self, *parts: str) -> str:
        return os.path.join(str(self.root), *parts)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    root = tmp_path / "root"
    root.mkdir()
    harness = Harness(root)
    yield harness
    harness.service.stopService()


def log_items(log: EventLog) -> list[tuple[str | None, dict[str, Any]]]:
    return [(e.event, json.loads(e.data)) for e in log.events_after(0)]


def changes(stream: WatchStream) -> list[tuple[str, str]]:
    """``(type, name)`` of every fs_event in the stream's log."""
    return [(data["type"], data["name"]) for event, data in log_items(stream.log) if event == "fs_event"]


def fs_events(stream: WatchStream) -> list[dict[str, Any]]:
    return [data for event, data in log_items(stream.log) if event == "fs_event"]


def errors(stream: WatchStream) -> list[dict[str, Any]]:
    return [data for event, data in log_items(stream.log) if event == "error"]


def api_error(fn: Callable[[], Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn()
    return info.value


# --------------------------------------------------------------------------- mask mapping


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (IN_CREATE, [CREATE]),
        (IN_MOVED_TO, [CREATE]),
        (IN_MODIFY, [WRITE]),
        (IN_DELETE, [REMOVE]),
        (IN_DELETE_SELF, [REMOVE]),
        (IN_MOVED_FROM, [RENAME]),
        (IN_MOVE_SELF, [RENAME]),
        (IN_ATTRIB, [CHMOD]),
        (IN_CREATE | IN_ISDIR, [CREATE]),
        (IN_IGNORED, []),
        (watch_module.IN_CLOSE_WRITE, []),
    ],
)
def test_event_types_of_single_masks(mask: int, expected: list[str]) -> None:
    """Each inotify op maps to envd's event type; close-write and ignored map to nothing."""
    assert event_types(mask) == expected


def test_event_types_multi_op_order() -> None:
    """Several ops in one mask come out as create, rename, chmod, write, remove."""
    mask = IN_DELETE | IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_CREATE
    assert event_types(mask) == [CREATE, RENAME, CHMOD, WRITE, REMOVE]


def test_multi_op_event_becomes_several_stream_events_in_order(h: Harness) -> None:
    """One synthetic event with five ops appends five fs_events in envd's order."""
    stream = h.service.open_stream(str(h.root))
    h.notifier.emit(h.p("f"), IN_DELETE | IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_CREATE)
    assert changes(stream) == [(CREATE, "f"), (RENAME, "f"), (CHMOD, "f"), (WRITE, "f"), (REMOVE, "f")]


def test_rename_is_rename_for_old_and_create_for_new(h: Harness) -> None:
    """A move inside the directory is rename(old) then create(new)."""
    stream = h.service.open_stream(str(h.root))
    h.notifier.emit(h.p("old"), IN_MOVED_FROM)
    h.notifier.emit(h.p("new"), IN_MOVED_TO)
    assert changes(stream) == [(RENAME, "old"), (CREATE, "new")]


# --------------------------------------------------------------------------- streams


def test_stream_starts_with_start_event(h: Harness) -> None:
    """The log's first event is ``start`` with the absolute path and the recursive flag."""
    stream = h.service.open_stream(str(h.root), recursive=True)
    first = stream.log.events_after(0)[0]
    assert first.event == "start"
    assert json.loads(first.data) == {"type": "start", "path": str(h.root), "recursive": True}
    assert not stream.log.closed


def test_names_are_relative_and_paths_absolute(h: Harness) -> None:
    """A direct child is named by its base name; ``path`` is absolute."""
    stream = h.service.open_stream(str(h.root))
    h.notifier.emit(h.p("file.txt"), IN_MODIFY)
    [event] = fs_events(stream)
    assert event["name"] == "file.txt"
    assert event["path"] == h.p("file.txt")


def test_recursive_watches_existing_subdirectories_and_names_them(h: Harness) -> None:
    """Recursive mode watches every existing subdirectory; names are relative paths."""
    os.makedirs(h.p("a", "b"))
    os.makedirs(h.p("c"))
    stream = h.service.open_stream(str(h.root), recursive=True)
    assert h.notifier.watched == {h.p(), h.p("a"), h.p("a", "b"), h.p("c")}
    h.notifier.emit(h.p("a", "b", "file.txt"), IN_MODIFY)
    assert changes(stream) == [(WRITE, "a/b/file.txt")]


def test_recursive_does_not_follow_symlinked_directories(h: Harness, tmp_path: Path) -> None:
    """A symlink to a directory inside the tree is not descended into."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, h.p("link"))
    h.service.open_stream(str(h.root), recursive=True)
    assert h.notifier.watched == {h.p()}


def test_non_recursive_watches_only_the_directory(h: Harness) -> None:
    """Without recursive only the directory itself is watched; a new subdir is just an event."""
    os.makedirs(h.p("a"))
    stream = h.service.open_stream(str(h.root))
    assert h.notifier.watched == {h.p()}
    os.makedirs(h.p("new"))
    h.notifier.emit(h.p("new"), IN_CREATE | IN_ISDIR)
    assert changes(stream) == [(CREATE, "new")]
    assert h.notifier.watched == {h.p()}


def test_include_entry_attaches_entry_for_create_write_chmod(h: Harness) -> None:
    """create/write/chmod carry the entry (name, type, path) when the file exists."""
    Path(h.p("f.txt")).write_text("hello")
    stream = h.service.open_stream(str(h.root))
    h.notifier.emit(h.p("f.txt"), IN_CREATE | IN_MODIFY | IN_ATTRIB)
    events = fs_events(stream)
    assert [e["type"] for e in events] == [CREATE, CHMOD, WRITE]
    for event in events:
        assert event["entry"]["name"] == "f.txt"
        assert event["entry"]["type"] == "file"
        assert event["entry"]["path"] == h.p("f.txt")
        assert event["entry"]["size"] == 5
        assert "modifiedTime" in event["entry"]


def test_entry_is_none_for_remove_and_rename_even_if_path_exists(h: Harness) -> None:
    """remove/rename never carry an entry (as envd), even when the path can be stat'ed."""
    Path(h.p("f.txt")).write_text("x")
    stream = h.service.open_stream(str(h.root))
    h.notifier.emit(h.p("f.txt"), IN_MOVED_FROM)
    h.notifier.emit(h.p("f.txt"), IN_DELETE)
    assert [(e["type"], e["entry"]) for e in fs_events(stream)] == [(RENAME, None), (REMOVE, None)]


def test_entry_is_none_when_the_file_is_already_gone(h: Harness) -> None:
    """A write event for a file deleted meanwhile has entry None (best effort), not an error."""
    stream = h.service.open_stream(str(h.root))
    h.notifier.emit(h.p("vanished"), IN_MODIFY)
    assert [(e["type"], e["entry"]) for e in fs_events(stream)] == [(WRITE, None)]


def test_include_entry_false_never_attaches_entries(h: Harness) -> None:
    """With include_entry=False even a create of an existing file has entry None."""
    Path(h.p("f.txt")).write_text("x")
    stream = h.service.open_stream(str(h.root), include_entry=False)
    h.notifier.emit(h.p("f.txt"), IN_CREATE)
    assert fs_events(stream) == [{"name": "f.txt", "type": CREATE, "path": h.p("f.txt"), "entry": None}]


def test_fs_event_wire_shape_is_camel_case() -> None:
    """FsEvent and WatcherEvents serialise with camelCase names through the shared converter."""
    event = FsEvent(name="x", type=CREATE, path=__file__, entry=entry_info(__file__))
    data = unstructure(event)
    assert set(data) == {"name", "type", "path", "entry"}
    assert "modifiedTime" in data["entry"] and "isSymlink" in data["entry"]
    assert unstructure(WatcherEvents(events=[], dropped=2)) == {"events": [], "dropped": 2, "error": None}


def test_new_subdirectory_is_watched_and_its_contents_reported(h: Harness) -> None:
    """
    A subdirectory appearing in recursive mode is watched at once, and whatever was created
    in it before its watch existed (files, nested directories) is reported as create.
    """
    stream = h.service.open_stream(str(h.root), recursive=True)
    os.makedirs(h.p("new", "deeper"))
    Path(h.p("new", "f1")).write_text("1")
    Path(h.p("new", "deeper", "f2")).write_text("2")
    h.notifier.emit(h.p("new"), IN_CREATE | IN_ISDIR)
    assert changes(stream) == [
        (CREATE, "new"),
        (CREATE, "new/deeper"),
        (CREATE, "new/f1"),
        (CREATE, "new/deeper/f2"),
    ]
    assert h.notifier.watched == {h.p(), h.p("new"), h.p("new", "deeper")}
    h.notifier.emit(h.p("new", "deeper", "f3"), IN_CREATE)
    assert changes(stream)[-1] == (CREATE, "new/deeper/f3")


def test_moved_in_directory_is_watched(h: Harness) -> None:
    """A directory moved into the tree (IN_MOVED_TO|IN_ISDIR) is watched like a new one."""
    stream = h.service.open_stream(str(h.root), recursive=True)
    os.makedirs(h.p("moved"))
    Path(h.p("moved", "inside")).write_text("x")
    h.notifier.emit(h.p("moved"), IN_MOVED_TO | IN_ISDIR)
    assert changes(stream) == [(CREATE, "moved"), (CREATE, "moved/inside")]
    assert h.p("moved") in h.notifier.watched


def test_removed_subdirectory_releases_its_watches(h: Harness) -> None:
    """Deleting a subdirectory (and the kernel's IN_IGNORED) drops its watch and its children's."""
    os.makedirs(h.p("a", "b"))
    h.service.open_stream(str(h.root), recursive=True)
    assert h.service.active_watch_count() == 3
    h.notifier.emit(h.p("a", "b"), IN_DELETE | IN_ISDIR)
    h.notifier.emit(h.p("a"), IN_DELETE | IN_ISDIR)
    assert h.service.watched_paths() == {h.p()}
    assert h.service.active_watch_count() == 1


def test_kernel_ignored_subdirectory_watch_is_forgotten(h: Harness) -> None:
    """IN_IGNORED on a subdirectory forgets it without ending the stream."""
    os.makedirs(h.p("a"))
    stream = h.service.open_stream(str(h.root), recursive=True)
    h.notifier.emit_self(h.p("a"), IN_DELETE_SELF)
    h.notifier.emit_self(h.p("a"), IN_IGNORED)
    assert h.service.watched_paths() == {h.p()}
    assert not stream.log.closed
    assert changes(stream) == []  # the parent's IN_DELETE reports it, not the subdir's own event


def test_moved_out_subdirectory_releases_its_subtree(h: Harness) -> None:
    """A subdirectory moved away (IN_MOVED_FROM|IN_ISDIR) is rename and its watches go."""
    os.makedirs(h.p("a", "b"))
    stream = h.service.open_stream(str(h.root), recursive=True)
    h.notifier.emit(h.p("a"), IN_MOVED_FROM | IN_ISDIR)
    assert changes(stream) == [(RENAME, "a")]
    assert h.service.watched_paths() == {h.p()}
    assert set(h.notifier.removed) == {2, 3}


def test_subdirectory_self_events_are_not_duplicated(h: Harness) -> None:
    """A chmod of a subdirectory is reported once (by its parent), not again by its own watch."""
    os.makedirs(h.p("a"))
    stream = h.service.open_stream(str(h.root), recursive=True)
    h.notifier.emit_self(h.p("a"), IN_ATTRIB)
    h.notifier.emit(h.p("a"), IN_ATTRIB | IN_ISDIR)
    assert changes(stream) == [(CHMOD, "a")]


def test_root_deleted_ends_stream_with_remove_of_dot(h: Harness) -> None:
    """Deleting the watched directory appends remove "." and closes the log; watches are released."""
    stream = h.service.open_stream(str(h.root))
    h.notifier.emit_self(h.p(), IN_DELETE_SELF)
    assert changes(stream) == [(REMOVE, ".")]
    assert stream.log.closed and stream.closed
    assert errors(stream) == []
    assert h.service.active_watch_count() == 0
    assert h.notifier.closed
    h.notifier.on_event(1, IN_IGNORED, 0, None)  # the kernel's trailing IN_IGNORED is harmless
    assert h.service.stream_count() == 0


def test_root_moved_ends_stream_with_rename_of_dot(h: Harness) -> None:
    """Moving the watched directory away appends rename "." and ends the stream."""
    stream = h.service.open_stream(str(h.root))
    h.notifier.emit_self(h.p(), IN_MOVE_SELF)
    assert changes(stream) == [(RENAME, ".")]
    assert stream.log.closed


def test_root_chmod_is_reported_as_dot(h: Harness) -> None:
    """A chmod of the watched directory itself is chmod "." with its entry."""
    stream = h.service.open_stream(str(h.root))
    h.notifier.emit_self(h.p(), IN_ATTRIB)
    [event] = fs_events(stream)
    assert (event["type"], event["name"], event["entry"]["type"]) == (CHMOD, ".", "directory")
    assert not stream.log.closed


def test_root_unmounted_ends_stream_with_error(h: Harness) -> None:
    """An unmounted filesystem ends the stream with an explicit error event."""
    stream = h.service.open_stream(str(h.root))
    h.notifier.emit_self(h.p(), IN_UNMOUNT)
    assert [e["code"] for e in errors(stream)] == ["NOT_FOUND"]
    assert "unmounted" in errors(stream)[0]["message"]
    assert stream.log.closed
    assert h.service.active_watch_count() == 0


def test_overflow_is_an_error_event_and_the_stream_continues(h: Harness) -> None:
    """IN_Q_OVERFLOW appends an error event (WATCH_OVERFLOW); later events still flow."""
    stream = h.service.open_stream(str(h.root))
    h.notifier.overflow()
    [error] = errors(stream)
    assert error["type"] == "error" and error["code"] == "WATCH_OVERFLOW"
    assert "max_queued_events" in error["message"]
    h.notifier.emit(h.p("after"), IN_CREATE)
    assert changes(stream) == [(CREATE, "after")]
    assert not stream.log.closed


def test_overflow_rescans_recursive_tree_for_missed_directories(h: Harness) -> None:
    """After an overflow a recursive stream watches directories whose creation was lost."""
    stream = h.service.open_stream(str(h.root), recursive=True)
    os.makedirs(h.p("lost", "deep"))
    h.notifier.overflow()
    assert h.notifier.watched == {h.p(), h.p("lost"), h.p("lost", "deep")}
    h.notifier.emit(h.p("lost", "deep", "f"), IN_CREATE)
    assert changes(stream) == [(CREATE, "lost/deep/f")]


def test_watch_limit_on_new_subdirectory_is_an_error_event(h: Harness) -> None:
    """ENOSPC while adding a new subdirectory's watch is reported, and the stream keeps going."""
    stream = h.service.open_stream(str(h.root), recursive=True)
    os.makedirs(h.p("big"))
    h.factory.failures[h.p("big")] = errno.ENOSPC
    h.notifier.emit(h.p("big"), IN_CREATE | IN_ISDIR)
    assert changes(stream) == [(CREATE, "big")]
    [error] = errors(stream)
    assert error["code"] == "WATCH_LIMIT_REACHED"
    assert "fs.inotify.max_user_watches" in error["message"]
    h.notifier.emit(h.p("other"), IN_CREATE)
    assert changes(stream)[-1] == (CREATE, "other")
    assert not stream.log.closed


def test_unreadable_new_subdirectory_is_an_error_event(h: Harness) -> None:
    """Another add failure on a new subdirectory (EACCES) is an explicit PERMISSION_DENIED event."""
    stream = h.service.open_stream(str(h.root), recursive=True)
    os.makedirs(h.p("secret"))
    h.factory.failures[h.p("secret")] = errno.EACCES
    h.notifier.emit(h.p("secret"), IN_CREATE | IN_ISDIR)
    [error] = errors(stream)
    assert error["code"] == "PERMISSION_DENIED"
    assert h.p("secret") in error["message"]


def test_subdirectory_gone_before_its_watch_is_silently_skipped(h: Harness) -> None:
    """A new subdirectory removed before we could watch it is no error (its remove event follows)."""
    stream = h.service.open_stream(str(h.root), recursive=True)
    h.factory.failures[h.p("flash")] = errno.ENOENT
    h.notifier.emit(h.p("flash"), IN_CREATE | IN_ISDIR)
    assert changes(stream) == [(CREATE, "flash")]
    assert errors(stream) == []


def test_two_streams_share_one_watch_and_both_get_events(h: Harness) -> None:
    """Two streams on one directory share one kernel watch; both see each event."""
    first = h.service.open_stream(str(h.root))
    second = h.service.open_stream(str(h.root), recursive=True)
    assert h.service.active_watch_count() == 1
    h.notifier.emit(h.p("f"), IN_CREATE)
    assert changes(first) == changes(second) == [(CREATE, "f")]


def test_closing_one_stream_keeps_the_other_working(h: Harness) -> None:
    """Closing one of two streams releases nothing the other needs; its log is closed."""
    first = h.service.open_stream(str(h.root))
    second = h.service.open_stream(str(h.root))
    first.close()
    first.close()  # idempotent
    assert first.log.closed and first.closed
    assert h.service.active_watch_count() == 1
    h.notifier.emit(h.p("g"), IN_CREATE)
    assert changes(second) == [(CREATE, "g")]
    assert changes(first) == []
    second.close()
    assert h.service.active_watch_count() == 0
    assert h.notifier.closed
    assert not h.service.notifier_open


def test_recursive_and_non_recursive_streams_on_nested_paths(h: Harness) -> None:
    """A .git-style non-recursive stream inside a recursive one gets its own relative names."""
    os.makedirs(h.p(".git"))
    tree = h.service.open_stream(str(h.root), recursive=True)
    git = h.service.open_stream(h.p(".git"))
    assert h.service.active_watch_count() == 2
    Path(h.p(".git", "index")).write_text("x")
    h.notifier.emit(h.p(".git", "index"), IN_MOVED_TO)
    assert changes(tree) == [(CREATE, ".git/index")]
    assert changes(git) == [(CREATE, "index")]
    assert fs_events(git)[0]["entry"]["name"] == "index"
    tree.close()
    assert h.service.watched_paths() == {h.p(".git")}


def test_two_paths_of_one_inode_each_get_their_own_names(h: Harness, tmp_path: Path) -> None:
    """A symlinked root sharing the real directory's watch descriptor gets events under its own path."""
    link = tmp_path / "link"
    os.symlink(h.root, link)
    h.factory.aliases[str(link)] = str(h.root)
    real = h.service.open_stream(str(h.root))
    via_link = h.service.open_stream(str(link))
    assert h.service.active_watch_count() == 1
    h.notifier.emit(h.p("f"), IN_MODIFY)
    assert [e["path"] for e in fs_events(real)] == [h.p("f")]
    assert [e["path"] for e in fs_events(via_link)] == [str(link / "f")]
    real.close()
    assert h.notifier.removed == []  # the link's stream still holds the shared watch
    via_link.close()
    assert h.notifier.closed


def test_events_from_a_replaced_notifier_are_ignored(h: Harness) -> None:
    """Once all watches are released the old notifier's late events reach nobody."""
    first = h.service.open_stream(str(h.root))
    old = h.notifier
    first.close()
    second = h.service.open_stream(str(h.root))
    assert h.notifier is not old
    old.on_event(1, IN_CREATE, 0, "late")
    assert changes(second) == []


def test_notifier_failure_ends_streams_with_error(h: Harness) -> None:
    """If the inotify fd dies unasked, every stream gets an error event and ends."""
    stream = h.service.open_stream(str(h.root))
    h.notifier.on_lost(Failure(OSError(errno.EIO, "I/O error")))
    assert [e["code"] for e in errors(stream)] == ["INTERNAL_ERROR"]
    assert stream.log.closed
    assert h.service.active_watch_count() == 0


def test_stop_service_closes_streams_and_watchers(h: Harness) -> None:
    """stopService closes every stream log, removes every watcher and closes the notifier."""
    stream = h.service.open_stream(str(h.root))
    watcher_id = h.service.create_watcher(str(h.root))
    h.service.startService()
    h.service.stopService()
    assert stream.log.closed
    assert h.service.stream_count() == h.service.watcher_count() == 0
    assert h.service.active_watch_count() == 0
    assert h.notifier.closed
    assert api_error(lambda: h.service.watcher_events(watcher_id)).code == "NOT_FOUND"
    assert h.clock.getDelayedCalls() == []


# --------------------------------------------------------------------------- polling watchers


def test_watcher_id_shape_and_drain(h: Harness) -> None:
    """Ids look like w<hex>; a poll drains, so the next poll is empty."""
    watcher_id = h.service.create_watcher(str(h.root))
    assert watcher_id.startswith("w") and int(watcher_id[1:], 16) >= 0 and len(watcher_id) > 8
    h.notifier.emit(h.p("a"), IN_CREATE)
    h.notifier.emit(h.p("a"), IN_MODIFY)
    result = h.service.watcher_events(watcher_id)
    assert [(e.type, e.name) for e in result.events] == [(CREATE, "a"), (WRITE, "a")]
    assert result.dropped == 0 and result.error is None
    assert h.service.watcher_events(watcher_id) == WatcherEvents(events=[])


def test_watcher_queue_is_bounded_and_counts_drops(tmp_path: Path) -> None:
    """Past max_queue the oldest events are dropped and counted; a poll resets the count."""
    harness = Harness(tmp_path, max_queue=3)
    watcher_id = harness.service.create_watcher(str(tmp_path))
    for i in range(5):
        harness.notifier.emit(harness.p(f"f{i}"), IN_CREATE)
    result = harness.service.watcher_events(watcher_id)
    assert [e.name for e in result.events] == ["f2", "f3", "f4"]
    assert result.dropped == 2
    harness.notifier.emit(harness.p("g"), IN_CREATE)
    again = harness.service.watcher_events(watcher_id)
    assert ([e.name for e in again.events], again.dropped) == (["g"], 0)
    harness.service.stopService()


def test_idle_watcher_expires_on_the_clock(h: Harness) -> None:
    """A watcher nobody polls for idle_timeout seconds is removed; each poll pushes expiry back."""
    watcher_id = h.service.create_watcher(str(h.root))
    h.clock.advance(59)
    h.service.watcher_events(watcher_id)
    h.clock.advance(59)
    h.service.watcher_events(watcher_id)  # still alive: 118 s after creation, 59 s after the last poll
    h.clock.advance(60)
    assert api_error(lambda: h.service.watcher_events(watcher_id)).code == "NOT_FOUND"
    assert h.service.watcher_count() == 0
    assert h.service.active_watch_count() == 0
    assert h.notifier.closed


def test_idle_expiry_can_be_disabled(tmp_path: Path) -> None:
    """idle_timeout=None keeps watchers until removed (envd's behaviour)."""
    harness = Harness(tmp_path, idle_timeout=None)
    watcher_id = harness.service.create_watcher(str(tmp_path))
    assert harness.clock.getDelayedCalls() == []
    harness.clock.advance(10**6)
    assert harness.service.watcher_events(watcher_id).events == []
    harness.service.stopService()


def test_unknown_watcher_ids_are_not_found(h: Harness) -> None:
    """Polling or removing an unknown id raises NOT_FOUND naming the id."""
    error = api_error(lambda: h.service.watcher_events("wdeadbeef"))
    assert (error.code, error.status) == ("NOT_FOUND", 404)
    assert "wdeadbeef" in error.message
    assert api_error(lambda: h.service.remove_watcher("wdeadbeef")).code == "NOT_FOUND"


def test_remove_watcher_releases_watches_and_timer(h: Harness) -> None:
    """remove_watcher releases the watches and the idle timer; the id is then unknown."""
    os.makedirs(h.p("sub"))
    watcher_id = h.service.create_watcher(str(h.root), recursive=True)
    assert h.service.active_watch_count() == 2
    h.service.remove_watcher(watcher_id)
    assert h.service.active_watch_count() == 0
    assert h.clock.getDelayedCalls() == []
    assert api_error(lambda: h.service.remove_watcher(watcher_id)).code == "NOT_FOUND"


def test_watcher_reports_a_transient_error_once(h: Harness) -> None:
    """An overflow is reported in ``error`` on the next poll only; events keep coming."""
    watcher_id = h.service.create_watcher(str(h.root))
    h.notifier.overflow()
    h.notifier.overflow()
    first = h.service.watcher_events(watcher_id)
    assert first.error is not None and first.error.startswith("WATCH_OVERFLOW:")
    assert first.error.count("WATCH_OVERFLOW") == 1
    h.notifier.emit(h.p("x"), IN_CREATE)
    second = h.service.watcher_events(watcher_id)
    assert second.error is None
    assert [e.name for e in second.events] == ["x"]


def test_watcher_whose_directory_is_removed_reports_it_on_every_poll(h: Harness) -> None:
    """After the watched directory goes, polls return the final remove and then a sticky error."""
    watcher_id = h.service.create_watcher(str(h.root))
    h.notifier.emit_self(h.p(), IN_DELETE_SELF)
    first = h.service.watcher_events(watcher_id)
    assert [(e.type, e.name) for e in first.events] == [(REMOVE, ".")]
    assert first.error is not None and "was removed" in first.error
    assert h.service.watcher_events(watcher_id).error == first.error
    assert h.service.active_watch_count() == 0
    h.service.remove_watcher(watcher_id)


def test_watcher_and_stream_share_watches(h: Harness) -> None:
    """A polling watcher and a stream on one directory both receive an event."""
    stream = h.service.open_stream(str(h.root))
    watcher_id = h.service.create_watcher(str(h.root))
    h.notifier.emit(h.p("z"), IN_CREATE)
    assert changes(stream) == [(CREATE, "z")]
    assert [e.name for e in h.service.watcher_events(watcher_id).events] == ["z"]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("opener", ["open_stream", "create_watcher"])
def test_missing_path_is_not_found(h: Harness, opener: str) -> None:
    """A path that does not exist is NOT_FOUND, for streams and watchers alike."""
    error = api_error(lambda: getattr(h.service, opener)(h.p("missing")))
    assert (error.code, error.status) == ("NOT_FOUND", 404)
    assert h.factory.created == []


@pytest.mark.parametrize("opener", ["open_stream", "create_watcher"])
def test_file_path_is_not_a_directory(h: Harness, opener: str) -> None:
    """A regular file is PATH_NOT_DIRECTORY."""
    Path(h.p("file")).write_text("x")
    error = api_error(lambda: getattr(h.service, opener)(h.p("file")))
    assert (error.code, error.status) == ("PATH_NOT_DIRECTORY", 400)


def test_watch_limit_at_open_is_watch_limit_reached(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from inotify_add_watch is WATCH_LIMIT_REACHED (503) naming the sysctl and its value."""
    monkeypatch.setattr(watch_module, "_sysctl", lambda name: "8192" if name == "max_user_watches" else "?")
    h.factory.failures[h.p()] = errno.ENOSPC
    error = api_error(lambda: h.service.open_stream(str(h.root)))
    assert (error.code, error.status) == ("WATCH_LIMIT_REACHED", 503)
    assert "fs.inotify.max_user_watches = 8192" in error.message
    assert h.service.active_watch_count() == 0
    assert h.notifier.closed  # nothing left open after a failed open


def test_watch_limit_inside_recursive_tree_fails_the_open_without_leaks(h: Harness) -> None:
    """ENOSPC on a subdirectory during the initial walk fails the open and releases what was added."""
    os.makedirs(h.p("a", "b"))
    h.factory.failures[h.p("a", "b")] = errno.ENOSPC
    error = api_error(lambda: h.service.create_watcher(str(h.root), recursive=True))
    assert error.code == "WATCH_LIMIT_REACHED"
    assert h.p("a", "b") in error.message
    assert h.service.active_watch_count() == 0
    assert h.service.watcher_count() == 0
    assert h.notifier.closed


def test_real_limit_message_reads_the_sysctl(h: Harness) -> None:
    """Without patching, the message carries the kernel's current max_user_watches."""
    h.factory.failures[h.p()] = errno.ENOSPC
    error = api_error(lambda: h.service.open_stream(str(h.root)))
    expected = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    assert f"fs.inotify.max_user_watches = {expected}" in error.message


def test_no_inotify_instance_left_is_watch_limit_reached(h: Harness) -> None:
    """EMFILE from inotify_init (max_user_instances) is WATCH_LIMIT_REACHED too."""
    h.factory.init_errno = errno.EMFILE
    error = api_error(lambda: h.service.open_stream(str(h.root)))
    assert error.code == "WATCH_LIMIT_REACHED"
    assert "fs.inotify.max_user_instances" in error.message


@pytest.mark.parametrize(
    ("code", "expected"),
    [(errno.EACCES, "PERMISSION_DENIED"), (errno.ENOTDIR, "PATH_NOT_DIRECTORY"), (errno.EIO, "INTERNAL_ERROR")],
)
def test_other_add_failures_are_mapped(h: Harness, code: int, expected: str) -> None:
    """Other inotify_add_watch failures map through the OS error table, else INTERNAL_ERROR."""
    h.factory.failures[h.p()] = code
    assert api_error(lambda: h.service.open_stream(str(h.root))).code == expected
    assert h.service.active_watch_count() == 0


def test_network_mount_is_refused_without_allow_network_mounts(h: Harness) -> None:
    """A path on an NFS mount is BAD_REQUEST telling the client to set allowNetworkMounts."""
    h.mounts.append((str(h.root), "nfs4"))
    error = api_error(lambda: h.service.open_stream(str(h.root)))
    assert (error.code, error.status) == ("BAD_REQUEST", 400)
    assert "allowNetworkMounts" in error.message and "nfs4" in error.message
    assert h.factory.created == []
    stream = h.service.open_stream(str(h.root), allow_network_mounts=True)
    assert not stream.log.closed


def test_network_mount_detection_uses_the_longest_mount_point(h: Harness, tmp_path: Path) -> None:
    """A local mount nested in a FUSE mount is allowed; a subdirectory of the FUSE mount is not."""
    os.makedirs(h.p("local"))
    os.makedirs(h.p("remote"))
    h.mounts.extend([(str(h.root), "fuse.sshfs"), (h.p("local"), "ext4")])
    assert h.service.create_watcher(h.p("local"))
    assert api_error(lambda: h.service.create_watcher(h.p("remote"))).code == "BAD_REQUEST"


def test_network_mount_type_and_table_parsing() -> None:
    """mountinfo and /proc/mounts parse (octal escapes too); only NFS/CIFS/SMB/FUSE count."""
    mountinfo = (
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "23 22 0:22 / /mnt/my\\040share rw - cifs //srv/share rw\n"
        "24 22 0:23 / /home/u/sshfs rw - fuse.sshfs u@h: rw\n"
        "25 22 0:24 / /srv/nfs rw master:2 - nfs4 srv:/x rw\n"
        "garbage line\n"
    )
    mounts = parse_mountinfo(mountinfo)
    assert mounts == [("/", "ext4"), ("/mnt/my share", "cifs"), ("/home/u/sshfs", "fuse.sshfs"), ("/srv/nfs", "nfs4")]
    assert network_mount_type("/mnt/my share/docs", mounts) == "cifs"
    assert network_mount_type("/home/u/sshfs", mounts) == "fuse.sshfs"
    assert network_mount_type("/srv/nfsx", mounts) is None  # a prefix of the name is not a mount
    assert network_mount_type("/home/u", mounts) is None
    assert parse_proc_mounts("srv:/x /data nfs rw 0 0\n") == [("/data", "nfs")]
    assert network_mount_type("/data/a", [("/", "xfs"), ("/data", "nfs")]) == "nfs"
    assert network_mount_type("/data/a", [("/", "xfs"), ("/data", "tmpfs")]) is None


def test_default_mount_table_reads_proc() -> None:
    """The default mount table is read from /proc and has the root mount."""
    assert any(point == "/" for point, _ in watch_module.read_mount_table())


# --------------------------------------------------------------------------- real inotify


class Collector:
    """Listens to a stream's log; ``wait_for`` fires when a predicate holds (5 s bound)."""

    def __init__(self, log: EventLog) -> None:
        self.items: list[tuple[str | None, dict[str, Any]]] = log_items(log)
        self.closed = log.closed
        self._waiters: list[tuple[Callable[[Collector], bool], Deferred[None]]] = []
        log.subscribe(self)

    @property
    def changes(self) -> list[tuple[str, str]]:
        return [(d["type"], d["name"]) for event, d in self.items if event == "fs_event"]

    def event_appended(self, event: Event) -> None:
        self.items.append((event.event, json.loads(event.data)))
        self._check()

    def log_closed(self) -> None:
        self.closed = True
        self._check()

    def _check(self) -> None:
        for waiter in list(self._waiters):
            predicate, deferred = waiter
            if predicate(self):
                self._waiters.remove(waiter)
                deferred.callback(None)

    async def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 5.0) -> None:
        from twisted.internet import reactor

        if predicate(self):
            return
        deferred: Deferred[None] = Deferred()
        waiter = (predicate, deferred)
        self._waiters.append(waiter)
        deferred.addTimeout(timeout, reactor)
        try:
            await deferred
        except Exception:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            raise AssertionError(f"timed out; events so far: {self.items}") from None


def inotify_fds() -> int:
    """Open inotify file descriptors of this process."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:
            continue
    return count


@pytest.fixture
def real_service() -> Iterator[WatchService]:
    from twisted.internet import reactor

    service = WatchService(reactor)
    yield service
    service.stopService()


@pytest_twisted.ensureDeferred
async def test_real_create_write_chmod_rename_remove_in_order(real_service: WatchService, tmp_path: Path) -> None:
    """The kernel's events for a file's life arrive as create, write, chmod, rename+create, remove."""
    stream = real_service.open_stream(str(tmp_path))
    seen = Collector(stream.log)
    with open(tmp_path / "f.txt", "w") as handle:
        handle.write("hello")
    os.chmod(tmp_path / "f.txt", 0o600)
    os.rename(tmp_path / "f.txt", tmp_path / "g.txt")
    os.remove(tmp_path / "g.txt")
    await seen.wait_for(lambda c: (REMOVE, "g.txt") in c.changes)
    assert seen.changes == [
        (CREATE, "f.txt"),
        (WRITE, "f.txt"),
        (CHMOD, "f.txt"),
        (RENAME, "f.txt"),
        (CREATE, "g.txt"),
        (REMOVE, "g.txt"),
    ]
    assert all(d["path"].startswith(str(tmp_path) + "/") for e, d in seen.items if e == "fs_event")


@pytest_twisted.ensureDeferred
async def test_real_entry_attached_while_the_file_exists(real_service: WatchService, tmp_path: Path) -> None:
    """A create of a file that still exists carries its entry (the Web UI reads entry.name)."""
    stream = real_service.open_stream(str(tmp_path))
    seen = Collector(stream.log)
    (tmp_path / "keep.txt").write_text("x")
    await seen.wait_for(lambda c: (CREATE, "keep.txt") in c.changes)
    created = next(d for e, d in seen.items if e == "fs_event" and d["type"] == CREATE)
    assert created["entry"]["name"] == "keep.txt"
    assert created["entry"]["type"] == "file"


@pytest_twisted.ensureDeferred
async def test_real_git_style_atomic_replace_reports_entry_name(real_service: WatchService, tmp_path: Path) -> None:
    """A non-recursive .git watch sees git's lock-then-rename as create "index" with entry.name "index"."""
    git = tmp_path / ".git"
    git.mkdir()
    tree = real_service.open_stream(str(tmp_path), recursive=True)
    stream = real_service.open_stream(str(git))
    seen = Collector(stream.log)
    tree_seen = Collector(tree.log)
    (git / "index.lock").write_text("tree")
    os.rename(git / "index.lock", git / "index")
    await seen.wait_for(lambda c: (CREATE, "index") in c.changes)
    index = next(d for e, d in seen.items if e == "fs_event" and d["name"] == "index" and d["type"] == CREATE)
    assert index["entry"]["name"] == "index"
    await tree_seen.wait_for(lambda c: (CREATE, ".git/index") in c.changes)


@pytest_twisted.ensureDeferred
async def test_real_recursive_new_subdirectory_no_gap(real_service: WatchService, tmp_path: Path) -> None:
    """mkdir then an immediate file create inside it: the file's create is seen, and later writes too."""
    stream = real_service.open_stream(str(tmp_path), recursive=True)
    seen = Collector(stream.log)
    os.mkdir(tmp_path / "sub")
    (tmp_path / "sub" / "file.txt").write_text("first")
    os.makedirs(tmp_path / "sub" / "a" / "b")
    (tmp_path / "sub" / "a" / "b" / "deep.txt").write_text("deep")
    await seen.wait_for(lambda c: (CREATE, "sub/file.txt") in c.changes and (CREATE, "sub/a/b/deep.txt") in c.changes)
    assert seen.changes[0] == (CREATE, "sub")
    assert real_service.watched_paths() >= {str(tmp_path / "sub"), str(tmp_path / "sub" / "a" / "b")}
    with open(tmp_path / "sub" / "a" / "b" / "deep.txt", "a") as handle:
        handle.write("more")
    await seen.wait_for(lambda c: (WRITE, "sub/a/b/deep.txt") in c.changes)


@pytest_twisted.ensureDeferred
async def test_real_removed_subdirectory_releases_its_watch(real_service: WatchService, tmp_path: Path) -> None:
    """Removing a watched subdirectory reports remove and drops its kernel watch."""
    (tmp_path / "gone").mkdir()
    stream = real_service.open_stream(str(tmp_path), recursive=True)
    seen = Collector(stream.log)
    assert real_service.active_watch_count() == 2
    os.rmdir(tmp_path / "gone")
    await seen.wait_for(lambda c: (REMOVE, "gone") in c.changes)
    assert real_service.watched_paths() == {str(tmp_path)}
    assert real_service.active_watch_count() == 1
    assert not stream.log.closed


@pytest_twisted.ensureDeferred
async def test_real_closing_a_stream_releases_watches_and_fd(real_service: WatchService, tmp_path: Path) -> None:
    """Closing the last stream removes every watch and closes the inotify fd."""
    (tmp_path / "a").mkdir()
    before = inotify_fds()
    stream = real_service.open_stream(str(tmp_path), recursive=True)
    assert inotify_fds() == before + 1
    assert real_service.active_watch_count() == 2
    stream.close()
    assert real_service.active_watch_count() == 0
    assert inotify_fds() == before
    assert stream.log.closed


@pytest_twisted.ensureDeferred
async def test_real_two_streams_then_close_one(real_service: WatchService, tmp_path: Path) -> None:
    """Two streams on one directory both see an event; after closing one the other still works."""
    first = real_service.open_stream(str(tmp_path))
    second = real_service.open_stream(str(tmp_path))
    seen_first, seen_second = Collector(first.log), Collector(second.log)
    (tmp_path / "one").write_text("1")
    await seen_first.wait_for(lambda c: (CREATE, "one") in c.changes)
    await seen_second.wait_for(lambda c: (CREATE, "one") in c.changes)
    first.close()
    (tmp_path / "two").write_text("2")
    await seen_second.wait_for(lambda c: (CREATE, "two") in c.changes)
    assert (CREATE, "two") not in seen_first.changes
    assert seen_first.closed and not seen_second.closed


@pytest_twisted.ensureDeferred
async def test_real_root_removed_ends_the_stream(real_service: WatchService, tmp_path: Path) -> None:
    """rmdir of the watched directory appends remove "." and closes the log; nothing stays watched."""
    root = tmp_path / "root"
    root.mkdir()
    before = inotify_fds()
    stream = real_service.open_stream(str(root))
    seen = Collector(stream.log)
    os.rmdir(root)
    await seen.wait_for(lambda c: c.closed)
    assert seen.changes[-1] == (REMOVE, ".")
    assert real_service.active_watch_count() == 0
    assert inotify_fds() == before


@pytest_twisted.ensureDeferred
async def test_real_polling_watcher(real_service: WatchService, tmp_path: Path) -> None:
    """A polling watcher accumulates real events until polled (bounded polling on the reactor)."""
    from twisted.internet import reactor

    watcher_id = real_service.create_watcher(str(tmp_path))
    (tmp_path / "polled.txt").write_text("x")
    collected: list[FsEvent] = []
    for _ in range(500):  # at most ~5 s
        collected.extend(real_service.watcher_events(watcher_id).events)
        if any(e.name == "polled.txt" and e.type == CREATE for e in collected):
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert collected, "no event polled within the bound"
    assert (collected[0].type, collected[0].name, collected[0].path) == (
        CREATE,
        "polled.txt",
        str(tmp_path / "polled.txt"),
    )
    real_service.remove_watcher(watcher_id)
    assert real_service.active_watch_count() == 0
