"""
Real-daemon fixtures: start ``twistd -n codebuddy`` as a user does, on a free loopback
port, with a temporary home and workspace, and stop it with SIGTERM afterwards.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0
LISTENING = re.compile(r"codebuddy listening on (http://\S+)")


def twistd() -> str:
    beside = Path(sys.executable).with_name("twistd")
    return str(beside) if beside.exists() else "twistd"


@attrs.define
class Daemon:
    """A running daemon: its process, base URL and the output it printed so far."""

    process: subprocess.Popen[bytes]
    url: str
    home: Path
    workspace: Path
    output: list[str]

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, and return the exit status (negative for a signal)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
            raise AssertionError("the daemon did not stop within the timeout after SIGTERM") from None
        return self.process.returncode

    def read_output(self) -> str:
        """Everything printed until now (the process must have exited, or output is partial)."""
        if self.process.stdout is not None and self.process.poll() is not None:
            rest = self.process.stdout.read()
            if rest:
                self.output.append(rest.decode("utf-8", "replace"))
        return "".join(self.output)


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEBUDDY_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def start_daemon(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, command: list[str] | None = None
) -> Daemon:
    """Start a daemon and wait (bounded) for its listening line."""
    home = tmp_path / "home"
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    argv = command or [twistd(), "--nodaemon", "--pidfile=", "codebuddy"]
    argv = [*argv, "--port", "0", "--home", str(home), "--cwd", str(workspace), *args]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=str(workspace),
        env=daemon_env(env),
    )
    output: list[str] = []
    daemon = Daemon(process, "", home, workspace, output)
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    buffer = ""
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = process.stdout.read()
            if chunk is None:
                continue
            if not chunk:
                break
            text = chunk.decode("utf-8", "replace")
            output.append(text)
            buffer += text
            match = LISTENING.search(buffer)
            if match:
                daemon.url = match.group(1)
                os.set_blocking(process.stdout.fileno(), True)
                return daemon
    finally:
        selector.close()
    process.kill()
    process.wait()
    raise AssertionError("daemon did not start:\n" + "".join(output))


def run_to_exit(tmp_path: Path, *args: str, timeout: float = 30.0) -> tuple[int, str]:
    """Run twistd codebuddy with ``args`` expecting it to exit; return (status, output)."""
    home = tmp_path / "home"
    result = subprocess.run(
        [twistd(), "--nodaemon", "--pidfile=", "codebuddy", "--home", str(home), *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=daemon_env(),
        timeout=timeout,
        cwd=str(tmp_path),
    )
    return result.returncode, (result.stdout + result.stderr).decode("utf-8", "replace")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon with default options (auth none, loopback)."""
    running = start_daemon(tmp_path)
    yield running
    running.stop()


def _drain(daemon: Daemon) -> None:
    """Read the daemon's output until EOF, so that it never blocks writing a log line."""
    stream = daemon.process.stdout
    assert stream is not None
    while chunk := stream.read1(65536):
        daemon.output.append(chunk.decode("utf-8", "replace"))


@pytest.fixture
def drained_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """
    A daemon with default options whose output is read continuously: a test that makes it log a
    lot (a line per process start) cannot fill the output pipe and freeze it.
    """
    import threading

    running = start_daemon(tmp_path)
    reader = threading.Thread(target=_drain, args=(running,), name="daemon-output", daemon=True)
    reader.start()
    yield running
    try:
        running.stop()
    finally:
        reader.join(STARTUP_TIMEOUT)


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """
    One daemon with default options shared by a module's tests (each test uses its own
    resources, e.g. the terminals it creates), its output read continuously like
    :func:`drained_daemon`'s. Saves a start per test where isolation is not needed.
    """
    import threading

    running = start_daemon(tmp_path_factory.mktemp("daemon"))
    reader = threading.Thread(target=_drain, args=(running,), name="daemon-output", daemon=True)
    reader.start()
    yield running
    try:
        running.stop()
    finally:
        reader.join(STARTUP_TIMEOUT)
