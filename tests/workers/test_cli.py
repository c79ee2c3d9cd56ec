"""The ``codebuddy ps|kill|logs|daemon`` subcommands, on fake registry files naming real ``sleep`` processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from codebuddy import cli
from codebuddy.workers import cli as workers_cli
from codebuddy.workers.registry import Registry, WorkerRecord, own_start_time


def run(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = workers_cli.main(argv, {"CODEBUDDY_CONFIG_DIR": str(home), "HOME": str(home)}, out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(5)


def spawn(children: list[subprocess.Popen[bytes]], script: str = "sleep 60") -> subprocess.Popen[bytes]:
    """A shell in its own session (like a bg worker) running ``script``."""
    child = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    children.append(child)
    return child


def register(home: Path, child: subprocess.Popen[bytes], **fields: object) -> Path:
    record = WorkerRecord(pid=child.pid, process_start_time=own_start_time(child.pid), **fields)  # type: ignore[arg-type]
    return Registry(home).register(record)


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_top_level_dispatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CODEBUDDY_CONFIG_DIR", str(tmp_path))
    assert cli.main(["ps", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["daemon", "status"]) == 3
    assert capsys.readouterr().out == "stopped\n"


def test_ps_table_and_json(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    bg = spawn(children)
    daemon = spawn(children)
    register(tmp_path, bg, kind="bg", name="fix-tests", cwd="/srv/app", started_at=1_700_000_000_000)
    register(tmp_path, daemon, kind="daemon", name="daemon", endpoint="http://127.0.0.1:8080",
             started_at=1_700_000_001_000)
    dead = Registry(tmp_path).register(WorkerRecord(pid=999_999_999, kind="bg", name="gone"))

    code, out, _ = run(tmp_path, "ps")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "PID", "KIND", "STATUS", "ENDPOINT", "STARTED", "CWD"]
    assert lines[1].split()[:5] == ["fix-tests", str(bg.pid), "bg", "running", "-"]
    assert lines[1].endswith("/srv/app")
    assert lines[2].split()[:5] == ["daemon", str(daemon.pid), "daemon", "running", "http://127.0.0.1:8080"]
    assert len(lines) == 3
    assert not dead.exists()  # pruned

    code, out, _ = run(tmp_path, "ps", "--json", "--kind", "daemon")
    assert code == 0
    listed = json.loads(out)
    assert [(w["pid"], w["kind"], w["status"], w["endpoint"]) for w in listed] == [
        (daemon.pid, "daemon", "running", "http://127.0.0.1:8080")]


def test_daemon_status(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    assert run(tmp_path, "daemon", "status", "--json") == (3, '{"status": "stopped"}\n', "")
    daemon = spawn(children)
    register(tmp_path, daemon, kind="daemon", name="daemon", endpoint="http://127.0.0.1:8123", started_at=1)
    code, out, _ = run(tmp_path, "daemon", "status", "--json")
    assert code == 0
    assert json.loads(out) == {"status": "running", "pid": daemon.pid, "endpoint": "http://127.0.0.1:8123",
                               "startedAt": 1, "name": "daemon"}
    code, out, _ = run(tmp_path, "daemon", "status")
    assert code == 0 and out.startswith(f"running: pid {daemon.pid}, endpoint http://127.0.0.1:8123")


def test_kill_ends_the_group_and_removes_the_file(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    worker = spawn(children, "sleep 60 & sleep 60 & wait")
    wait_for(lambda: len(psutil.Process(worker.pid).children()) == 2)
    grandchildren = psutil.Process(worker.pid).children()
    path = register(tmp_path, worker, kind="bg", name="builder")

    code, out, err = run(tmp_path, "kill", "builder")
    assert (code, err) == (0, "")
    assert out == f"Stopped builder (pid {worker.pid}) with SIGTERM\n"
    assert worker.wait(5) is not None
    for proc in grandchildren:
        wait_for(lambda proc=proc: not workers_cli._alive(proc))
    assert not path.exists()


def test_kill_unknown(tmp_path: Path) -> None:
    code, out, err = run(tmp_path, "kill", "nobody")
    assert (code, out) == (1, "")
    assert "no live local worker named or with pid 'nobody'" in err


def test_daemon_stop(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    assert run(tmp_path, "daemon", "stop")[0] == 0
    daemon = spawn(children)
    path = register(tmp_path, daemon, kind="daemon", name="daemon")
    code, out, _ = run(tmp_path, "daemon", "stop")
    assert code == 0 and f"pid {daemon.pid}" in out
    assert daemon.wait(5) is not None
    assert not path.exists()
    assert run(tmp_path, "daemon", "status")[0] == 3


def test_logs_tail(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    log = tmp_path / "worker.log"
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    worker = spawn(children)
    register(tmp_path, worker, kind="bg", name="w", log_path=str(log))
    assert run(tmp_path, "logs", "w", "--tail", "3") == (0, "line 7\nline 8\nline 9\n", "")
    assert run(tmp_path, "logs", str(worker.pid), "--type", "process", "--tail", "1") == (0, "line 9\n", "")
    code, _, err = run(tmp_path, "logs", "w", "--type", "debug")
    assert code == 1 and "has no debug log (available: process)" in err


def test_logs_follow(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    log = tmp_path / "worker.log"
    log.write_text("old\n")
    worker = spawn(children)
    register(tmp_path, worker, kind="bg", name="w", log_path=str(log))
    out = io.StringIO()
    commands = workers_cli.Commands(tmp_path, {}, out, io.StringIO())
    calls = 0

    def sleep(_seconds: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            with open(log, "ab") as handle:
                handle.write("new é".encode()[:-1])  # a character split across two writes
        elif calls == 3:
            with open(log, "ab") as handle:
                handle.write("é\n".encode()[1:])
        elif calls == 5:
            raise KeyboardInterrupt

    commands.sleep = sleep
    assert commands.logs("w", None, 10, follow=True) == 0
    assert out.getvalue() == "old\nnew é\n"


def test_start_failure_prints_the_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers_cli, "start_argv",
                        lambda *_args: ["sh", "-c", "echo 'codebuddy: port 1 is taken' >&2; exit 4"])
    err = io.StringIO()
    commands = workers_cli.Commands(tmp_path, dict(os.environ), io.StringIO(), err, sleep=lambda _s: time.sleep(0.02))
    assert commands.start(1, None, str(tmp_path), timeout=5.0) == 1
    assert "it exited with status 4 (codebuddy: port 1 is taken)" in err.getvalue()
    assert (tmp_path / "logs" / "daemon.log").read_text() == "codebuddy: port 1 is taken\n"


def test_start_when_running(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    daemon = spawn(children)
    register(tmp_path, daemon, kind="daemon", name="daemon", endpoint="http://127.0.0.1:8123")
    assert run(tmp_path, "daemon", "start") == (
        0, f"already running: pid {daemon.pid}, endpoint http://127.0.0.1:8123\n", "")
