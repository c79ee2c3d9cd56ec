"""
Tests for ``codebuddy.terminals.manager``: how a terminal is started (with a fake spawner), its
scrollback start, and its lifetime (idle reaping, expiry after exit) on a ``Clock``, with real
PTY children on the real reactor where a process has to end.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock, deferLater

from codebuddy.process.manager import ProcessManager
from codebuddy.process.spawn import ExitInfo, Spawner
from codebuddy.terminals.manager import (
    DEFAULT_SCROLLBACK,
    Terminal,
    TerminalManager,
    check_size,
    login_shell,
)
from codebuddy.web.errors import ApiError
from tests.process.test_manager import FakeSpawner

WAIT = 10
# How a terminal is ended: a hangup (as when its window closes), then SIGTERM, then SIGKILL.
ENDING_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGKILL)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# ---------------------------------------------------------------------------- fake spawner


def fake(**kw: Any) -> tuple[TerminalManager, FakeSpawner, Clock]:
    clock = Clock()
    spawner = FakeSpawner(clock)
    processes = ProcessManager(spawner, "/ws", clock)  # type: ignore[arg-type]
    return TerminalManager(processes, clock, environ={"SHELL": "/bin/sh"}, **kw), spawner, clock


def test_login_shell() -> None:
    """$SHELL when it is an absolute executable; else the password database's shell, else /bin/sh."""
    assert login_shell({"SHELL": "/bin/sh"}) == "/bin/sh"
    fallback = login_shell({})
    assert os.path.isabs(fallback) and os.access(fallback, os.X_OK)
    for bad in ("sh", "/nonexistent/shell", "/etc/passwd", ""):
        assert login_shell({"SHELL": bad}) == fallback, bad


def test_check_size() -> None:
    """Sizes are integers in 1..65535; zero, negative, too large, strings, floats, booleans and None are 400."""
    assert check_size(1, 1) == (1, 1) and check_size(65535, 65535) == (65535, 65535)
    for cols, rows in ((0, 24), (80, 0), (-1, 24), (70000, 24), (80, 65536), ("80", 24), (80, "24"),
                       (True, 24), (80, False), (80.0, 24), (None, 24), ([80], 24)):
        with pytest.raises(ApiError) as err:
            check_size(cols, rows)
        assert (err.value.status, err.value.code) == (400, "BAD_REQUEST"), (cols, rows)


def test_create_argv_env_and_size() -> None:
    """A login shell gets -l, a command line is run with -c, an argv list is run as it is; TERM is
    xterm-256color unless given; the PTY has the asked size; the cwd resolves against the workspace."""
    manager, spawner, _clock = fake()
    shell = manager.create(80, 24)
    assert spawner.calls[-1]["argv"] == ["/bin/sh", "-l"] and spawner.calls[-1]["pty"] == (80, 24)
    assert spawner.calls[-1]["env"]["TERM"] == "xterm-256color"
    assert (shell.shell, shell.cols, shell.rows, shell.cwd) == ("/bin/sh", 80, 24, "/ws")

    manager.create(100, 30, shell="/bin/bash", command="echo x", cwd="sub", env={"A": "1", "TERM": "vt100"})
    call = spawner.calls[-1]
    assert call["argv"] == ["/bin/bash", "-l", "-c", "echo x"] and call["pty"] == (100, 30)
    assert call["env"] == {"A": "1", "TERM": "vt100"} and call["cwd"] == "/ws/sub"

    manager.create(80, 24, command=["printf", "a b"])
    assert spawner.calls[-1]["argv"] == ["printf", "a b"]
    manager.create(80, 24, shell="/usr/bin/python3")  # not a shell that takes -l
    assert spawner.calls[-1]["argv"] == ["/usr/bin/python3"]
    assert len({t.id for t in manager.terminals()}) == 4  # distinct ids, oldest first
    assert manager.terminals()[0] is shell


def test_create_errors() -> None:
    """A bad size, an empty argv or a program that cannot start is 400 and nothing is listed."""
    manager, spawner, _clock = fake()
    for kwargs in ({"cols": 0, "rows": 24}, {"cols": 80, "rows": 70000}, {"cols": 80, "rows": 24, "command": []},
                   {"cols": 80, "rows": 24, "shell": "missing"}, {"cols": 80, "rows": 24, "command": ["missing"]}):
        with pytest.raises(ApiError) as err:
            manager.create(**kwargs)
        assert (err.value.status, err.value.code) == (400, "BAD_REQUEST"), kwargs
    assert manager.terminals() == [] and spawner.children == []
    with pytest.raises(ApiError) as err:
        manager.get("nope")
    assert (err.value.status, err.value.code) == (404, "TERMINAL_NOT_FOUND")
    with pytest.raises(ApiError) as err:
        manager.delete("nope")
    assert err.value.code == "TERMINAL_NOT_FOUND"


def test_write_resize_and_exit() -> None:
    """Input and resize reach the child; a bad size is 400 and keeps the old one; after the exit both
    are 409 CONFLICT, exit listeners are called once, and a late listener at once."""
    manager, spawner, _clock = fake()
    terminal = manager.create(80, 24)
    child = spawner.children[0]
    terminal.write(b"ls\r")
    terminal.resize(100, 30)
    assert child.written == [b"ls\r"] and child.sizes == [(100, 30)] and (terminal.cols, terminal.rows) == (100, 30)
    with pytest.raises(ApiError) as err:
        terminal.resize(0, 30)
    assert err.value.code == "BAD_REQUEST" and (terminal.cols, terminal.rows) == (100, 30)

    seen: list[ExitInfo] = []
    removed: list[ExitInfo] = []
    terminal.on_exit(seen.append)
    remove = terminal.on_exit(removed.append)
    remove()
    child.finish(3)
    assert seen == [ExitInfo(3, None)] and removed == [] and not terminal.running
    late: list[ExitInfo] = []
    terminal.on_exit(late.append)
    assert late == [ExitInfo(3, None)]
    for action in (lambda: terminal.write(b"x"), lambda: terminal.resize(90, 20)):
        with pytest.raises(ApiError) as err:
            action()
        assert (err.value.status, err.value.code) == (409, "CONFLICT")
    assert manager.get(terminal.id) is terminal  # still listed after the exit


def test_viewers_and_has_client() -> None:
    """hasClient is true while at least one viewer is attached; extra detaches do not go negative."""
    manager, _spawner, _clock = fake()
    terminal = manager.create(80, 24)
    assert not terminal.has_client
    terminal.attach()
    terminal.attach()
    terminal.detach()
    assert terminal.has_client
    terminal.detach()
    terminal.detach()
    assert not terminal.has_client and terminal.viewers == 0
    terminal.attach()
    assert terminal.has_client


def test_exited_terminal_expires_after_retention() -> None:
    """An exited terminal stays listed for ``exited_retention`` seconds of the clock, then is gone (404)."""
    manager, spawner, clock = fake(exited_retention=30, idle_timeout=10)
    terminal = manager.create(80, 24)
    terminal.attach()
    clock.advance(5)
    spawner.children[0].finish(0)
    clock.advance(29.9)
    assert manager.get(terminal.id) is terminal
    clock.advance(0.2)
    assert manager.terminals() == []
    with pytest.raises(ApiError) as err:
        manager.get(terminal.id)
    assert err.value.code == "TERMINAL_NOT_FOUND"


def test_idle_timeout_zero_never_reaps() -> None:
    """``idle_timeout=0`` turns idle reaping off."""
    manager, spawner, clock = fake(idle_timeout=0)
    terminal = manager.create(80, 24)
    clock.advance(10 * 365 * 86400)
    assert manager.get(terminal.id) is terminal and spawner.children[0].signals == []
    assert clock.getDelayedCalls() == []


def test_stop_service_cancels_timers() -> None:
    """Stopping the manager leaves no timer behind (idle or expiry)."""
    manager, spawner, clock = fake(idle_timeout=10, exited_retention=30)
    manager.startService()
    manager.create(80, 24)
    manager.create(80, 24)
    spawner.children[1].finish(0)

    def mine() -> list[Any]:  # the process table's own expiry timer shares the clock
        return [c for c in clock.getDelayedCalls() if c.active() and getattr(c.func, "__self__", None) is manager]

    assert len(mine()) == 2
    manager.stopService()
    assert mine() == []


# ---------------------------------------------------------------------------- scrollback start


def with_output(data: bytes, scrollback: int = DEFAULT_SCROLLBACK, capacity: int | None = None) -> Terminal:
    """A terminal (fake child) whose output so far is exactly ``data``."""
    clock = Clock()
    spawner = FakeSpawner(clock)
    processes = ProcessManager(spawner, "/ws", clock, **({"capacity": capacity} if capacity else {}))  # type: ignore[arg-type]
    manager = TerminalManager(processes, clock, environ={"SHELL": "/bin/sh"}, scrollback=scrollback)
    terminal = manager.create(80, 24)
    for start in range(0, len(data), 1000):  # in several appends, as a shell writes
        spawner.children[0].emit("pty", data[start : start + 1000])
    assert terminal.buffer.end_offset == len(data)
    return terminal


def test_scrollback_offset_short_output_starts_at_the_beginning() -> None:
    """Output shorter than the scrollback is replayed whole."""
    terminal = with_output(b"line one\r\nline two\r\n" * 10, scrollback=1000)
    assert terminal.scrollback_offset() == 0
    assert terminal.scrollback_offset(limit=10**9) == 0


def test_scrollback_offset_moves_to_a_line_start_within_4_kib() -> None:
    """The start is ``limit`` bytes before the end, moved just after the next line break when that
    break is within the 4 KiB after the cut, and left at the cut otherwise."""
    data = b"A" * 5000 + b"\n" + b"B" * 3000 + b"\n" + b"C" * 9000  # line breaks at 5000 and 8001
    terminal = with_output(data, scrollback=12000)
    end = len(data)
    assert terminal.scrollback_offset() == 8002  # cut at 5002, the break 2999 bytes later
    assert terminal.scrollback_offset(limit=end - 1002) == 5001  # the break 3998 bytes after the cut
    assert terminal.scrollback_offset(limit=end - (5000 - 4095)) == 5001  # the 4096th byte is the break
    assert terminal.scrollback_offset(limit=end - (5000 - 4096)) == 5000 - 4096  # one byte too far: the cut
    assert terminal.scrollback_offset(limit=end - 2) == 2  # the break is 4998 bytes away: the cut
    assert terminal.scrollback_offset(limit=5000) == end - 5000  # no break after the cut at all
    assert terminal.scrollback_offset(limit=end) == 0
    assert terminal.scrollback_offset(limit=end - 5001) == 5001  # the cut is a line start already


def test_scrollback_offset_after_eviction() -> None:
    """Once the output buffer dropped its oldest bytes, a viewer starts at the oldest kept byte at most."""
    data = (b"x" * 99 + b"\n") * 100
    terminal = with_output(data, scrollback=9000, capacity=4000)
    start = terminal.buffer.start_offset
    assert start > 0
    assert terminal.scrollback_offset() == start


# ---------------------------------------------------------------------------- real PTYs on a Clock


@pytest.fixture
def real(tmp_path: Any) -> Iterator[tuple[TerminalManager, Clock, Spawner]]:
    """A TerminalManager on a Clock over a real Spawner and process table on the real reactor."""
    spawner = Spawner(_reactor(), environ={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp_path)},
                      default_cwd=str(tmp_path), kill_grace=2.0)
    spawner.startService()
    processes = ProcessManager(spawner, str(tmp_path), _reactor())
    clock = Clock()
    manager = TerminalManager(processes, clock, environ={"SHELL": "/bin/sh"}, idle_timeout=10,
                              exited_retention=60)
    yield manager, clock, spawner
    for child in spawner.children():
        child.signal(signal.SIGKILL)


async def ended(terminal: Terminal) -> ExitInfo:
    return await terminal.proc.ended().addTimeout(WAIT, _reactor())


@pytest_twisted.ensureDeferred
async def test_idle_terminal_without_viewer_is_ended(real: tuple[TerminalManager, Clock, Spawner]) -> None:
    """A running terminal with no viewer for ``idle_timeout`` seconds of the clock is forgotten and its
    shell is ended; one second less is not enough."""
    manager, clock, _spawner = real
    terminal = manager.create(80, 24, shell="/bin/sh")
    clock.advance(9.9)
    assert manager.get(terminal.id) is terminal and terminal.running
    clock.advance(0.2)
    assert manager.terminals() == []
    info = await ended(terminal)
    assert info.exit_code is None and info.signal in ENDING_SIGNALS, info


@pytest_twisted.ensureDeferred
async def test_viewer_prevents_reaping_and_detach_restarts_the_countdown(
    real: tuple[TerminalManager, Clock, Spawner],
) -> None:
    """While a viewer is attached the terminal lives however long; the idle countdown starts again
    from the last detach (not from the creation), and an attach in between stops it."""
    manager, clock, _spawner = real
    terminal = manager.create(80, 24, shell="/bin/sh")
    clock.advance(5)
    terminal.attach()
    clock.advance(1000)
    assert manager.get(terminal.id) is terminal and terminal.running
    terminal.detach()
    clock.advance(9)
    terminal.attach()  # a viewer comes back before the countdown ends
    clock.advance(100)
    terminal.detach()
    clock.advance(9.9)
    assert manager.get(terminal.id) is terminal and terminal.running
    clock.advance(0.2)
    assert manager.terminals() == []
    await ended(terminal)


@pytest_twisted.ensureDeferred
async def test_exited_real_terminal_listed_then_expires(real: tuple[TerminalManager, Clock, Spawner]) -> None:
    """A shell that exits by itself stays listed with its code until ``exited_retention`` passes; the idle
    countdown no longer applies to it."""
    manager, clock, _spawner = real
    terminal = manager.create(80, 24, shell="/bin/sh", command="exit 3")
    info = await ended(terminal)
    assert info == ExitInfo(3, None)
    assert manager.get(terminal.id) is terminal and not terminal.running
    assert terminal.current_cwd() == terminal.cwd
    clock.advance(59.9)
    assert manager.get(terminal.id) is terminal
    clock.advance(0.2)
    assert manager.terminals() == []


@pytest_twisted.ensureDeferred
async def test_delete_forgets_at_once_and_ends_the_shell(real: tuple[TerminalManager, Clock, Spawner]) -> None:
    """delete() forgets the terminal before the shell has ended, and fires once it has; the current cwd
    follows the shell's ``cd``."""
    manager, _clock, _spawner = real
    terminal = manager.create(80, 24, shell="/bin/sh", command="cd /tmp && exec sleep 60")
    tmp = os.path.realpath("/tmp")
    deadline = _reactor().seconds() + WAIT
    while terminal.current_cwd() != tmp:  # bounded poll: the shell changes directory soon after it starts
        assert _reactor().seconds() < deadline, terminal.current_cwd()
        await deferLater(_reactor(), 0.02)
    done = manager.delete(terminal.id)
    assert manager.terminals() == []
    await done.addTimeout(WAIT, _reactor())
    assert not terminal.running and terminal.exit_info is not None
    assert terminal.exit_info.signal in ENDING_SIGNALS, terminal.exit_info
