# -*- test-case-name: tests.terminals.test_manager -*-
"""
Terminals: PTY sessions on top of the process table (spec "PTY (Terminal)"; webui-contract.md §6).

A :class:`Terminal` is a process started by the :class:`~codebuddy.process.manager.ProcessManager`
with a PTY: the same spawn path (its own session and process group, the tty as controlling
terminal), the same :class:`~codebuddy.process.buffer.OutputBuffer` (byte offsets, flow control,
``lagged``). On top of that a terminal has:

- an id (``sessionId``), the shell it runs, its size, and a creation time;
- *viewers*: WebSocket and SSE clients attached now. ``hasClient`` is true while there is one
  (the Web UI attaches a new pane to the first terminal without a client);
- a lifetime of its own: it outlives its viewers, stays listed after its shell exited until it
  is deleted or ``exited_retention`` seconds pass, and a running terminal that has had no viewer
  for ``idle_timeout`` seconds is ended (its group gets SIGTERM, then SIGKILL).

New viewers start from the recent scrollback (the last ``scrollback`` bytes, cut at a line
start when one is near) unless they resume from an exact offset.
"""

from __future__ import annotations

import os
import pwd
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from codebuddy.process.manager import ManagedProcess, ProcessManager, ProcessSpec
from codebuddy.process.spawn import ExitInfo, SpawnError, StdinClosedError
from codebuddy.web.errors import ApiError

__all__ = [
    "DEFAULT_EXITED_RETENTION",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_SCROLLBACK",
    "Terminal",
    "TerminalManager",
    "login_shell",
]

DEFAULT_SCROLLBACK = 256 * 1024
DEFAULT_IDLE_TIMEOUT = 24 * 3600.0
DEFAULT_EXITED_RETENTION = 600.0
MAX_SIZE = 65535
# Shells that take -l for a login shell (and -c for a command line).
_LOGIN_SHELLS = {"bash", "zsh", "sh", "dash", "ksh", "mksh", "fish", "ash", "tcsh", "csh"}


def login_shell(environ: Mapping[str, str]) -> str:
    """The user's shell: ``$SHELL``, else the password database's, else ``/bin/sh``."""
    shell = environ.get("SHELL")
    if shell and os.path.isabs(shell) and os.access(shell, os.X_OK):
        return shell
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    return shell if shell and os.access(shell, os.X_OK) else "/bin/sh"


def check_size(cols: Any, rows: Any) -> tuple[int, int]:
    """(cols, rows), or 400 when either is not an integer in 1..65535."""
    for name, value in (("cols", cols), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SIZE:
            raise ApiError("BAD_REQUEST", f"{name} must be an integer between 1 and {MAX_SIZE}",
                           [{"field": name, "message": f"invalid value {value!r}"}])
    return cols, rows


class Terminal:
    """One PTY session: its process, size and viewers."""

    def __init__(self, manager: TerminalManager, terminal_id: str, proc: ManagedProcess, shell: str,
                 argv: list[str], cwd: str, cols: int, rows: int) -> None:
        self.manager = manager
        self.id = terminal_id
        self.proc = proc
        self.shell = shell
        self.argv = argv
        self.cwd = cwd
        self.cols = cols
        self.rows = rows
        self.created_at = time.time()
        self.viewers = 0
        self.last_seen = manager.clock.seconds()
        self._exit_listeners: list[Callable[[ExitInfo], None]] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def buffer(self) -> Any:
        return self.proc.buffer

    @property
    def running(self) -> bool:
        return self.proc.running

    @property
    def exit_info(self) -> ExitInfo | None:
        return self.proc.exit_info

    @property
    def has_client(self) -> bool:
        return self.viewers > 0

    def current_cwd(self) -> str:
        """The shell's working directory now (it follows ``cd``); the start one once it exited."""
        if self.running:
            try:
                return os.readlink(f"/proc/{self.pid}/cwd")
            except OSError:
                pass
        return self.cwd

    # -- input and size ---------------------------------------------------------------------------

    def _running_child(self) -> Any:
        if not self.running or self.proc.child is None:
            raise ApiError("CONFLICT", f"terminal {self.id} has exited")
        return self.proc.child

    def write(self, data: bytes) -> None:
        """Type ``data`` into the terminal; 409 ``CONFLICT`` once the shell has exited."""
        child = self._running_child()
        try:
            child.write(data)
        except StdinClosedError as exc:
            raise ApiError("CONFLICT", f"terminal {self.id} has exited") from exc

    def resize(self, cols: Any, rows: Any) -> None:
        """Set the window size (the foreground job gets SIGWINCH); 400 for a bad size, 409 once exited."""
        cols, rows = check_size(cols, rows)
        child = self._running_child()
        child.resize(cols, rows)
        self.cols, self.rows = cols, rows

    # -- viewers ----------------------------------------------------------------------------------

    def attach(self) -> None:
        """A viewer (WebSocket or SSE) is now attached."""
        self.viewers += 1
        self.manager._seen(self)

    def detach(self) -> None:
        """A viewer went away."""
        self.viewers = max(0, self.viewers - 1)
        self.manager._seen(self)

    def scrollback_offset(self, limit: int | None = None) -> int:
        """Where a new viewer starts: ``limit`` bytes (default the manager's scrollback) before the
        end, moved forward to just after a line break when one is within the first 4 KiB."""
        limit = self.manager.scrollback if limit is None else limit
        buffer = self.proc.buffer
        start = max(buffer.start_offset, buffer.end_offset - limit)
        if start == buffer.start_offset:
            return start
        if b"".join(c.data for c in buffer.read(start - 1, 1).chunks) == b"\n":
            return start  # already at a line start
        head = b"".join(c.data for c in buffer.read(start, 4096).chunks)
        newline = head.find(b"\n")
        return start + newline + 1 if newline >= 0 else start

    def on_exit(self, listener: Callable[[ExitInfo], None]) -> Callable[[], None]:
        """Call ``listener`` once when the shell has exited (all output buffered); returns a remover."""
        if self.exit_info is not None:
            listener(self.exit_info)
            return lambda: None
        self._exit_listeners.append(listener)
        return lambda: self._exit_listeners.remove(listener) if listener in self._exit_listeners else None

    def _exited(self, info: ExitInfo) -> None:
        listeners, self._exit_listeners = self._exit_listeners, []
        for listener in listeners:
            try:
                listener(info)
            except Exception:
                self.manager.log.failure("terminal exit listener failed")


class TerminalManager(Service):
    """The table of terminals, their idle reaping and their expiry after exit."""

    log = Logger()
    name = "terminals"

    def __init__(
        self,
        processes: ProcessManager,
        clock: IReactorTime,
        *,
        environ: Mapping[str, str],
        scrollback: int = DEFAULT_SCROLLBACK,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        exited_retention: float = DEFAULT_EXITED_RETENTION,
    ) -> None:
        self.processes = processes
        self.clock = clock
        self.environ = dict(environ)
        self.scrollback = scrollback
        self.idle_timeout = idle_timeout
        self.exited_retention = exited_retention
        self._terminals: dict[str, Terminal] = {}
        self._timers: dict[str, IDelayedCall] = {}

    # -- table ------------------------------------------------------------------------------------

    def create(
        self,
        cols: int,
        rows: int,
        *,
        cwd: str | None = None,
        shell: str | None = None,
        env: Mapping[str, str] | None = None,
        command: str | list[str] | None = None,
    ) -> Terminal:
        """Start a login shell (or ``command``) in a ``cols`` x ``rows`` PTY; 400 if it cannot start."""
        cols, rows = check_size(cols, rows)
        shell = shell or login_shell(self.environ)
        name = os.path.basename(shell)
        login = ["-l"] if name in _LOGIN_SHELLS else []
        if command is None:
            argv = [shell, *login]
        elif isinstance(command, str):
            argv = [shell, *login, "-c", command]
        else:
            if not command:
                raise ApiError("BAD_REQUEST", "command must not be empty",
                               [{"field": "command", "message": "empty list"}])
            argv = list(command)
        env = {**(env or {}), "TERM": (env or {}).get("TERM", "xterm-256color")}
        spec = ProcessSpec(argv[0], argv[1:], env, cwd)
        try:
            proc = self.processes.start(spec, pty=(cols, rows))
        except SpawnError as exc:
            raise ApiError("BAD_REQUEST", str(exc)) from None
        terminal_id = str(uuid.uuid4())
        shown = shell if command is None or isinstance(command, str) else argv[0]
        terminal = Terminal(self, terminal_id, proc, shown, argv, self.processes.resolve_cwd(cwd), cols, rows)
        self._terminals[terminal_id] = terminal
        proc.ended().addCallback(self._ended, terminal)
        self._arm_idle(terminal)
        self.log.info("terminal {id} started: pid {pid} {argv!r}", id=terminal_id, pid=proc.pid, argv=argv[:3])
        return terminal

    def get(self, terminal_id: str) -> Terminal:
        """The terminal, or 404 ``TERMINAL_NOT_FOUND``."""
        terminal = self._terminals.get(terminal_id)
        if terminal is None:
            raise ApiError("TERMINAL_NOT_FOUND", f"terminal {terminal_id!r} not found")
        return terminal

    def terminals(self) -> list[Terminal]:
        """Every terminal, oldest first (running and exited ones not yet deleted or expired)."""
        return list(self._terminals.values())

    def delete(self, terminal_id: str) -> Deferred[None]:
        """Forget the terminal at once and end its process group (SIGTERM, SIGKILL after the grace)."""
        terminal = self.get(terminal_id)
        self._forget(terminal)
        child = terminal.proc.child
        if child is None or not terminal.running:
            return succeed(None)
        d: Deferred[Any] = child.terminate()
        return d.addCallback(lambda _: None)

    # -- internals --------------------------------------------------------------------------------

    def _forget(self, terminal: Terminal) -> None:
        self._terminals.pop(terminal.id, None)
        self._cancel(terminal.id)

    def _cancel(self, terminal_id: str) -> None:
        timer = self._timers.pop(terminal_id, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _seen(self, terminal: Terminal) -> None:
        terminal.last_seen = self.clock.seconds()
        if terminal.running and terminal.id in self._terminals:
            self._arm_idle(terminal)

    def _arm_idle(self, terminal: Terminal) -> None:
        self._cancel(terminal.id)
        if terminal.viewers == 0 and self.idle_timeout > 0:
            self._timers[terminal.id] = self.clock.callLater(self.idle_timeout, self._idle, terminal)

    def _idle(self, terminal: Terminal) -> None:
        self._timers.pop(terminal.id, None)
        if terminal.viewers == 0 and terminal.running and terminal.id in self._terminals:
            self.log.info("terminal {id} had no viewer for {s:.0f} s: ending it", id=terminal.id,
                          s=self.idle_timeout)
            self.delete(terminal.id)

    def _ended(self, info: ExitInfo, terminal: Terminal) -> None:
        terminal._exited(info)
        if terminal.id in self._terminals:
            self._cancel(terminal.id)
            self._timers[terminal.id] = self.clock.callLater(self.exited_retention, self._expire, terminal)

    def _expire(self, terminal: Terminal) -> None:
        self._timers.pop(terminal.id, None)
        if self._terminals.get(terminal.id) is terminal:
            del self._terminals[terminal.id]

    def stopService(self) -> Any:  # noqa: N802 (Twisted's name)
        """Cancel timers; the Spawner ends the shells."""
        super().stopService()
        for terminal_id in list(self._timers):
            self._cancel(terminal_id)
        return None
