"""The registry files: atomic 0600 writes, tolerant reads, liveness with PID-reuse detection, pruning."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from codebuddy.web.errors import ApiError
from codebuddy.workers.registry import ProcessProbe, Registry, RemoteRecord, WorkerRecord, valid_name
from tests.workers.helpers import dead_pid, end, record_for, sleeper, start_time, write_record


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "home")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_register_writes_camel_case_0600_and_unregister_removes(registry: Registry) -> None:
    """<pid>.json holds CodeBuddy's camelCase fields, mode 0600, in a 0700 directory; no temp file is left."""
    record = record_for(os.getpid(), kind="daemon", name="daemon", endpoint="http://127.0.0.1:1", log_path="/l")
    path = registry.register(record)
    assert path == registry.directory / f"{os.getpid()}.json"
    assert mode(path) == 0o600 and mode(registry.directory) == 0o700
    data = json.loads(path.read_text())
    assert data["pid"] == os.getpid() and data["kind"] == "daemon" and data["mode"] == "local"
    assert data["endpoint"] == data["url"] == "http://127.0.0.1:1"
    assert {"sessionId", "startedAt", "logPath", "processStartTime", "cwd", "name"} <= set(data)
    assert os.listdir(registry.directory) == [path.name]
    assert WorkerRecord.from_json(data) == record

    # Another process's start time: not ours to remove.
    assert not registry.unregister(os.getpid(), record.process_start_time - 100)  # type: ignore[operator]
    assert path.exists()
    assert registry.unregister(os.getpid(), record.process_start_time)
    assert not path.exists()
    assert not registry.unregister(os.getpid(), record.process_start_time)


def test_rewrite_is_atomic(registry: Registry) -> None:
    """A second register replaces the file whole (rename over it): readers see old or new, never a mix."""
    first = registry.register(record_for(os.getpid(), endpoint=None))
    inode = first.stat().st_ino
    registry.register(record_for(os.getpid(), endpoint="http://127.0.0.1:2"))
    assert first.stat().st_ino != inode
    assert json.loads(first.read_text())["endpoint"] == "http://127.0.0.1:2"


def test_tolerant_parsing_of_codebuddy_files(registry: Registry) -> None:
    """Files with missing, extra or oddly typed fields are listed with what they have."""
    pid = os.getpid()
    write_record(registry.home, pid=pid, sessionId="abc", kind="bg", url="http://h:1", startedAt=1.5e12,
                 extra={"x": 1}, version=3, hostname=registry.hostname)
    [worker] = registry.local_workers()
    record = worker.record
    assert (record.pid, record.session_id, record.kind, record.endpoint) == (pid, "abc", "bg", "http://h:1")
    assert record.started_at == 1_500_000_000_000 and record.version is None and record.name is None
    assert record.process_start_time is None and worker.status == "running"

    # The pid from the file name when the content has none; non-objects are not records.
    assert WorkerRecord.from_json({"kind": "bg"}, 42) == WorkerRecord(pid=42, kind="bg")
    assert WorkerRecord.from_json({"pid": "42"}) == WorkerRecord(pid=42)
    for bad in ([], "x", None, {"pid": True}, {"pid": -3}):
        assert WorkerRecord.from_json(bad) is None


def test_broken_files(registry: Registry) -> None:
    """Unparseable files are skipped; one named after a dead pid is pruned, a live one's kept (may be mid-write)."""
    registry.directory.mkdir(parents=True)
    live = registry.directory / f"{os.getpid()}.json"
    live.write_text('{"pid": ')
    dead = registry.directory / f"{dead_pid()}.json"
    dead.write_text("not json")
    other = registry.directory / "notes.txt"
    other.write_text("x")
    assert registry.local_workers() == []
    assert live.exists() and not dead.exists() and other.exists()


def test_pid_reuse_is_detected(registry: Registry) -> None:
    """A live pid whose start time differs from the recorded one is another process: pruned."""
    pid = os.getpid()
    path = registry.register(record_for(pid, process_start_time=start_time(pid) - 1000))
    assert registry.local_workers() == []
    assert not path.exists()
    registry.register(record_for(pid))
    assert [w.record.pid for w in registry.local_workers()] == [pid]


def test_dead_pid_without_start_time_falls_back_to_kill_0(registry: Registry) -> None:
    """Without processStartTime liveness is kill -0: a dead pid is pruned, a live one kept."""
    dead = write_record(registry.home, pid=dead_pid(), kind="bg")
    alive = write_record(registry.home, pid=os.getpid(), kind="interactive")
    assert [w.record.pid for w in registry.local_workers()] == [os.getpid()]
    assert alive.exists() and not dead.exists()


def test_zombie_is_dead(registry: Registry) -> None:
    """An exited process its parent has not reaped yet (a zombie) is not a live worker."""
    child = sleeper()
    try:
        registry.register(record_for(child.pid))
        assert registry.status_of(record_for(child.pid)) == "running"
        os.kill(child.pid, signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert not ProcessProbe().exists(child.pid)
        assert registry.local_workers() == []
    finally:
        end(child)


def test_other_host_is_unknown_and_kept(registry: Registry) -> None:
    """A file from another host (shared home) is listed 'unknown' and never pruned, whatever its pid."""
    path = write_record(registry.home, pid=dead_pid(), hostname="elsewhere", kind="bg", name="far")
    [worker] = registry.local_workers()
    assert worker.status == "unknown" and path.exists()


class FakeProbe:
    def __init__(self) -> None:
        self.alive: dict[int, float | None] = {}

    def exists(self, pid: int) -> bool:
        return pid in self.alive

    def start_time(self, pid: int) -> float | None:
        return self.alive.get(pid)


def test_liveness_with_a_fake_probe(tmp_path: Path) -> None:
    """Start times within the tolerance match; an unreadable start time trusts kill -0."""
    probe = FakeProbe()
    registry = Registry(tmp_path, probe=probe, hostname="here")
    probe.alive = {10: 1000.0, 11: None, 12: 1000.0}
    assert registry.alive(WorkerRecord(pid=10, process_start_time=1000.5))
    assert not registry.alive(WorkerRecord(pid=10, process_start_time=990.0))
    assert registry.alive(WorkerRecord(pid=11, process_start_time=5.0))
    assert not registry.alive(WorkerRecord(pid=13))
    for pid, started, name in ((10, 1, "a"), (12, 2, "b"), (13, 3, "c")):
        registry.register(WorkerRecord(pid=pid, started_at=started, name=name, hostname="here",
                                       process_start_time=1000.0))
    assert [w.record.pid for w in registry.local_workers()] == [10, 12]
    assert registry.find_local("12") is not None and registry.find_local("b") is not None
    assert registry.find_local("13") is None and registry.find_local("c") is None
    registry.register(WorkerRecord(pid=12, started_at=5, name="a", hostname="here", process_start_time=1000.0))
    found = registry.find_local("a")
    assert found is not None and found.record.pid == 12  # the most recently started of that name


def test_prune_rereads_before_removing(tmp_path: Path) -> None:
    """A file rewritten by a new live process between the read and the prune is not removed."""
    probe = FakeProbe()
    registry = Registry(tmp_path, probe=probe, hostname="here")
    old = WorkerRecord(pid=10, hostname="here", process_start_time=1.0)
    path = registry.register(old)
    new = WorkerRecord(pid=10, hostname="here", process_start_time=500.0, name="new")
    registry.register(new)
    probe.alive = {10: 500.0}
    registry._prune(path, old)
    assert path.exists()


def test_remote_records(registry: Registry) -> None:
    """manual-<hex>.json keeps url, name and the credential 0600; names are unique; removal."""
    added = registry.add_remote("http://box:8080", "box", "tok", None, 1)
    assert added.id.startswith("manual-") and added.credential == "tok"
    path = registry.directory / f"{added.id}.json"
    assert mode(path) == 0o600
    assert json.loads(path.read_text()) == {"id": added.id, "url": "http://box:8080", "name": "box",
                                            "mode": "remote", "addedAt": 1, "token": "tok"}
    with pytest.raises(ApiError) as caught:
        registry.add_remote("http://other:1", "box", None, "pw", 2)
    assert caught.value.code == "ALREADY_EXISTS"
    second = registry.add_remote("http://other:1", "other", None, "pw", 2)
    assert second.credential == "pw"
    assert [r.name for r in registry.remotes()] == ["box", "other"]
    assert registry.find_remote("other") == second and registry.find_remote(added.id) == added
    assert registry.remotes()[0] == added  # credentials survive the round trip
    # Manual files are not pid files: never pruned, never listed as local workers.
    assert registry.local_workers() == []
    assert registry.remove_remote(added.id)
    assert not registry.remove_remote(added.id)
    assert not registry.remove_remote("../x")
    assert [r.name for r in registry.remotes()] == ["other"]


def test_remote_name_may_not_shadow_a_local_worker(registry: Registry) -> None:
    registry.register(record_for(os.getpid(), name="daemon"))
    with pytest.raises(ApiError) as caught:
        registry.add_remote("http://box:1", "daemon", None, None, 1)
    assert caught.value.code == "ALREADY_EXISTS"


def test_remote_record_tolerant() -> None:
    """A CodeBuddy-written manual file without name or id is still usable; one without a URL is not."""
    assert RemoteRecord.from_json({"endpoint": "http://h:1/"}, "manual-x") == RemoteRecord("manual-x", "http://h:1",
                                                                                           "manual-x")
    assert RemoteRecord.from_json({"name": "n"}, "manual-x") is None
    assert RemoteRecord.from_json([], "manual-x") is None


def test_names() -> None:
    assert valid_name("box-2.prod_a") is None
    for bad in ("", "-x", "a/b", "a:b", "1234", "x" * 65, "é"):
        assert valid_name(bad) is not None, bad


def test_remove_stale_only_after_death(registry: Registry) -> None:
    """remove_stale keeps the file of a live process and removes it once the process is gone."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        record = record_for(child.pid)
        path = registry.register(record)
        assert not registry.remove_stale(record)
        child.kill()
        child.wait()
        assert registry.remove_stale(record) and not path.exists()
    finally:
        end(child)
