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
                               "startedAt": 1, "name": "daemon",
                               "systemService": {"installed": False, "backend": None, "configPath": None}}
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


class FakeSystemctl:
    """Records ``systemctl`` command lines; ``fail`` names the sub-command that fails (bus not reachable)."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        if self.fail is not None and self.fail in argv:
            return subprocess.CompletedProcess(argv, 1, "", "Failed to connect to bus: No medium found\n")
        return subprocess.CompletedProcess(argv, 0, "", "")


def commands(tmp_path: Path, runner: FakeSystemctl, path: str | None = None) -> tuple[
        workers_cli.Commands, io.StringIO, io.StringIO]:
    """Commands on ``tmp_path/home`` with the user's home ``tmp_path/user``; ``path``: $PATH (one with systemctl)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text("#!/bin/sh\nexit 99\n")  # found on PATH, never run (the runner is fake)
    (bin_dir / "systemctl").chmod(0o755)
    out, err = io.StringIO(), io.StringIO()
    environ = {"PATH": str(bin_dir) if path is None else path}
    return (workers_cli.Commands(tmp_path / "home", environ, out, err, runner=runner, user_home=tmp_path / "user"),
            out, err)


def test_install_and_uninstall_a_user_service(tmp_path: Path) -> None:
    systemctl = FakeSystemctl()
    cmd, out, _ = commands(tmp_path, systemctl)
    assert cmd.install(8123, None, str(tmp_path), as_json=True) == 0
    unit = tmp_path / "user/.config/systemd/user/codebuddy.service"
    assert json.loads(out.getvalue()) == {"unitPath": str(unit), "written": True, "enabled": True, "commands": [
        "systemctl --user daemon-reload", "systemctl --user enable --now codebuddy.service"]}
    assert systemctl.calls == [["systemctl", "--user", "daemon-reload"],
                               ["systemctl", "--user", "enable", "--now", "codebuddy.service"]]
    text = unit.read_text()
    assert f"--port 8123 --home {tmp_path / 'home'} --cwd {tmp_path}\n" in text
    assert "WantedBy=default.target" in text and "User=" not in text
    assert unit.stat().st_mode & 0o777 == 0o644

    out.truncate(0), out.seek(0)
    assert cmd.status(as_json=True) == 3
    assert json.loads(out.getvalue()) == {"status": "stopped", "systemService": {
        "installed": True, "backend": "systemd", "configPath": str(unit)}}

    systemctl.calls.clear()
    out.truncate(0), out.seek(0)
    assert cmd.uninstall(as_json=False) == 0
    assert out.getvalue() == f"Removed {unit}\n"
    assert systemctl.calls == [["systemctl", "--user", "disable", "--now", "codebuddy.service"],
                               ["systemctl", "--user", "daemon-reload"]]
    assert not unit.exists()
    out.truncate(0), out.seek(0)
    assert cmd.uninstall(as_json=False) == 0
    assert out.getvalue().startswith("not installed")


def test_install_without_a_reachable_user_manager_says_what_to_run(tmp_path: Path) -> None:
    systemctl = FakeSystemctl(fail="daemon-reload")
    cmd, out, err = commands(tmp_path, systemctl)
    assert cmd.install(None, "0.0.0.0", str(tmp_path), as_json=False) == 1
    unit = tmp_path / "user/.config/systemd/user/codebuddy.service"
    assert "--port 8080 --host 0.0.0.0" in unit.read_text()
    message = err.getvalue()
    assert message.startswith(f"codebuddy: wrote {unit}, but systemctl --user daemon-reload failed: "
                              "Failed to connect to bus")
    assert "  systemctl --user daemon-reload\n  systemctl --user enable --now codebuddy.service\n" in message
    assert out.getvalue() == ""

    systemctl.fail = "disable"
    assert cmd.uninstall(as_json=True) == 0
    report = json.loads(out.getvalue())
    assert (report["removed"], report["error"].split(":")[0]) == (
        True, "systemctl --user disable --now codebuddy.service failed")
    assert not unit.exists()


def test_install_without_systemd(tmp_path: Path) -> None:
    """No systemctl on PATH: nothing written, the commands to start the daemon instead."""
    systemctl = FakeSystemctl()
    empty = tmp_path / "empty"
    empty.mkdir()
    cmd, out, err = commands(tmp_path, systemctl, path=str(empty))
    assert cmd.install(9000, None, str(tmp_path), as_json=False) == 1
    assert systemctl.calls == []
    assert not (tmp_path / "user/.config/systemd/user/codebuddy.service").exists()
    assert f"codebuddy daemon start --port 9000 --cwd {tmp_path}\n" in err.getvalue()
    assert "--nodaemon --pidfile= codebuddy --port 9000" in err.getvalue()
    assert cmd.install(9000, None, str(tmp_path), as_json=True) == 1
    report = json.loads(out.getvalue())
    assert (report["written"], report["enabled"], report["error"]) == (
        False, False, "systemd is not available here (no systemctl)")
