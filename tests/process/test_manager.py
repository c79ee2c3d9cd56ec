"""Tests for ``codebuddy.process.manager`` with a fake spawner and a Clock (no real processes)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from codebuddy.process.manager import (
    ProcessManager,
    ProcessSpec,
    TextAssembler,
    _complete_prefix,
    end_payload,
    parse_signal,
)
from codebuddy.process.spawn import ExitInfo, SpawnError, StdinClosedError
from codebuddy.web.errors import ApiError


class FakeChild:
    """A stand-in for spawn.Child recording what it was asked to do."""

    def __init__(self, pid: int, protocol: Any, pty: bool) -> None:
        self.pid = pid
        self.protocol = protocol
        self.pty = pty
        self.timed_out = False
        self.written: list[bytes] = []
        self.signals: list[int] = []
        self.sizes: list[tuple[int, int]] = []
        self.stdin_closed = False
        self.running = True

    def write(self, data: bytes) -> None:
        if self.stdin_closed or not self.running:
            raise StdinClosedError("stdin not enabled or closed")
        self.written.append(data)

    def close_stdin(self) -> None:
        self.stdin_closed = True

    def signal(self, signum: int, group: bool = True) -> None:
        self.signals.append(signum)

    def resize(self, cols: int, rows: int) -> None:
        self.sizes.append((cols, rows))

    def pause_output(self) -> None:
        pass

    def resume_output(self) -> None:
        pass

    def emit(self, stream: str, data: bytes) -> None:
        self.protocol.output(stream, data)

    def finish(self, code: int | None = 0, signal: int | None = None) -> None:
        self.running = False
        self.protocol.exited(ExitInfo(code, signal))


class FakeSpawner:
    """Spawner stand-in: ``missing`` cannot start; ``script`` actions run from the clock after spawn."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock
        self.children: list[FakeChild] = []
        self.calls: list[dict[str, Any]] = []
        self.script: list[tuple[str, Any]] = []
        self._next_pid = 1000

    def spawn(self, argv: list[str], *, env: Any = None, cwd: Any = None, pty: Any = None,
              protocol: Any, timeout: Any = None) -> FakeChild:
        if argv[0] == "missing":
            raise SpawnError("No such file or directory: 'missing'")
        self._next_pid += 1
        child = FakeChild(self._next_pid, protocol, pty is not None)
        self.children.append(child)
        self.calls.append({"argv": argv, "env": env, "cwd": cwd, "pty": pty, "timeout": timeout})
        for action, arg in self.script:
            assert self.clock is not None
            if action == "exit":
                self.clock.callLater(0, child.finish, arg)
            else:
                self.clock.callLater(0, child.emit, action, arg)
        self.script = []
        return child


def make() -> tuple[ProcessManager, FakeSpawner, Clock]:
    clock = Clock()
    spawner = FakeSpawner(clock)
    return ProcessManager(spawner, "/ws", clock, capacity=64), spawner, clock  # type: ignore[arg-type]


def test_exited_processes_stay_listed_for_60_seconds() -> None:
    """An exited process is listed with its status until 60 s of the injected clock have passed."""
    manager, spawner, clock = make()
    proc = manager.start(ProcessSpec("true"))
    spawner.children[0].finish(3)
    assert manager.processes() == [proc] and proc.exit_info == ExitInfo(3, None)
    clock.advance(59.9)
    assert manager.get(pid=proc.pid) is proc
    clock.advance(0.2)
    assert manager.processes() == []
    with pytest.raises(ApiError) as err:
        manager.get(pid=proc.pid)
    assert err.value.code == "PROCESS_NOT_FOUND"


def test_tags_unique_among_running() -> None:
    """A running tag cannot be reused (409); once it exited, it can, and lookups prefer the running one."""
    manager, spawner, _clock = make()
    first = manager.start(ProcessSpec("a"), tag="t")
    with pytest.raises(ApiError) as err:
        manager.start(ProcessSpec("b"), tag="t")
    assert err.value.code == "CONFLICT"
    spawner.children[0].finish(0)
    assert manager.get(tag="t") is first
    second = manager.start(ProcessSpec("b"), tag="t")
    assert manager.get(tag="t") is second
    with pytest.raises(ApiError):
        manager.get(tag="nope")


def test_cwd_relative_to_workspace_and_stdin_modes() -> None:
    """cwd resolves against the workspace; stdin False closes it, bytes are written then closed."""
    manager, spawner, _clock = make()
    manager.start(ProcessSpec("a", cwd="sub"), stdin=False)
    manager.start(ProcessSpec("a"), stdin=b"data")
    assert spawner.calls[0]["cwd"] == "/ws/sub" and spawner.calls[1]["cwd"] == "/ws"
    assert spawner.children[0].stdin_closed
    assert spawner.children[1].written == [b"data"] and spawner.children[1].stdin_closed


def test_output_buffer_is_bounded() -> None:
    """The ring buffer keeps the configured capacity and reports truncation."""
    manager, spawner, _clock = make()
    proc = manager.start(ProcessSpec("a"))
    spawner.children[0].emit("stdout", b"x" * 100)
    assert proc.buffer.retained_bytes == 64 and proc.buffer.truncated


def test_parse_signal() -> None:
    """Numbers, names with or without SIG and E2B's SIGNAL_ names are accepted; junk is not."""
    assert [parse_signal(v) for v in (15, "SIGTERM", "kill", "SIGNAL_SIGKILL", "2")] == [15, 15, 9, 9, 2]
    for bad in (0, 1000, "SIGNOPE", True, None):
        with pytest.raises(ValueError):
            parse_signal(bad)


def test_utf8_holdback() -> None:
    """Incomplete trailing UTF-8 sequences are held back until complete."""
    emoji = "😀".encode()
    assert _complete_prefix(b"a" + emoji[:2]) == 1
    assert _complete_prefix(b"a" + emoji) == 5
    assert _complete_prefix(b"\xff") == 1
    text = TextAssembler()
    assert text.feed("stdout", b"a" + emoji[:3]) == b"a"
    assert text.feed("stdout", emoji[3:] + b"b") == "😀b".encode()
    assert text.feed("stderr", emoji[:1]) == b"" and text.flush() == [("stderr", emoji[:1])]


def test_end_payload() -> None:
    """End events follow E2B: error only on failure, -1 and exited false for a signal."""
    assert end_payload(ExitInfo(0, None)) == {"exitCode": 0, "exited": True, "status": "exit status 0"}
    assert end_payload(ExitInfo(None, 9))["exitCode"] == -1
    assert end_payload(ExitInfo(None, 9))["error"] == "signal: killed"
