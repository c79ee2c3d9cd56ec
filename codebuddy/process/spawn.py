"""
The one spawn path: every child process of the daemon is started here.

* Pipes (stdin/stdout/stderr) or a PTY, through Twisted's process transports.
* **Every child leads its own session and process group** (``pgid == pid``), so signals, timeouts
  and shutdown reach grandchildren too (E2B's "children survive kill" complaint). On glibc the child
  is started by one ``posix_spawn`` with ``setsid`` and ``chdir`` (:mod:`codebuddy.process.native`,
  ~0.85 ms per start+exit of ``true``, the same as :func:`os.posix_spawn`); a PTY child opens its
  tty slave after ``setsid``, which makes it the controlling terminal. Elsewhere pipe children go
  through util-linux ``setsid(1)`` (and ``env -C CWD`` when the cwd differs from the daemon's; each
  extra exec costs ~0.7 ms) and PTY children through Twisted's fork path (~11 ms in a big daemon).
* Commands that cannot start raise :class:`SpawnError` synchronously (executable looked up on the
  child's ``PATH`` relative to the child's cwd, cwd checked; with ``posix_spawn`` an exec failure is
  reported too). On the fallback path a late exec failure shows as ``setsid``'s message on stderr
  and exit status 126/127. The child's ``argv[0]`` is the resolved absolute path.
* :meth:`ChildProtocol.exited` comes exactly once, after every byte of output was delivered. If the
  leader has exited but a background grandchild still holds the output pipes, the pipes are closed
  after ``drain_timeout`` seconds (E2B stops waiting too), unless output is paused.
* ``timeout`` kills the whole group with SIGKILL (E2B semantics, ``status == "signal: killed"``).
  :meth:`Child.terminate` / :meth:`Spawner.stopService` send SIGTERM, then SIGKILL after the grace.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal as _signal
import stat
import struct
import sys
import termios
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol, cast

import attrs
from twisted.application.service import Service
from twisted.internet import abstract, main, process
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from codebuddy.process import native

__all__ = ["Child", "ChildProtocol", "ExitInfo", "SpawnError", "Spawner", "StdinClosedError"]

# Go's syscall.Signal.String() for the common ones (E2B's ``status`` is Go's ProcessState.String()).
_SIGNAL_NAMES: dict[int, str] = {
    _signal.SIGHUP: "hangup",
    _signal.SIGINT: "interrupt",
    _signal.SIGQUIT: "quit",
    _signal.SIGILL: "illegal instruction",
    _signal.SIGTRAP: "trace/breakpoint trap",
    _signal.SIGABRT: "aborted",
    _signal.SIGBUS: "bus error",
    _signal.SIGFPE: "floating point exception",
    _signal.SIGKILL: "killed",
    _signal.SIGUSR1: "user defined signal 1",
    _signal.SIGSEGV: "segmentation fault",
    _signal.SIGUSR2: "user defined signal 2",
    _signal.SIGPIPE: "broken pipe",
    _signal.SIGALRM: "alarm clock",
    _signal.SIGTERM: "terminated",
}


class SpawnError(Exception):
    """The command could not be started; the message says why (``No such file or directory: 'x'``)."""


class StdinClosedError(Exception):
    """Input was written after :meth:`Child.close_stdin` or after the child exited."""


@attrs.frozen
class ExitInfo:
    """How a child ended: an exit code, or the signal that killed it (then ``exit_code`` is None)."""

    exit_code: int | None
    signal: int | None

    @property
    def status(self) -> str:
        """E2B's (Go's) status text: ``"exit status 0"``, ``"signal: killed"``, ``"signal: terminated"``."""
        if self.signal is not None:
            return "signal: " + _SIGNAL_NAMES.get(self.signal, f"signal {self.signal}")
        return f"exit status {self.exit_code}"


class ChildProtocol(Protocol):
    """What a caller of :meth:`Spawner.spawn` is told about its child."""

    def output(self, stream: str, data: bytes) -> None:
        """``stream`` is ``"stdout"``, ``"stderr"`` or ``"pty"``; ``data`` whatever one read returned."""

    def exited(self, info: ExitInfo) -> None:
        """Called exactly once, after all output was delivered."""


class _Bridge(ProcessProtocol):
    """Twisted's process protocol, forwarding to the :class:`Child`."""

    def __init__(self, child: Child) -> None:
        self._child = child

    def makeConnection(self, transport: Any) -> None:  # noqa: N802 (Twisted's name)
        # Twisted connects us before it first tries to reap the child, and a child that has
        # already exited is reaped right then, which clears transport.pid: take it now.
        self._child._transport = transport
        self._child.pid = self._child.pgid = transport.pid  # setsid: session and group leader
        super().makeConnection(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802 (Twisted's name)
        self._child._data(childFD, data)

    def processExited(self, reason: Failure) -> None:  # noqa: N802
        self._child._reaped(reason)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        self._child._ended(reason)


def _exit_info(reason: Failure) -> ExitInfo:
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig is not None:
        return ExitInfo(exit_code=None, signal=sig)
    return ExitInfo(exit_code=getattr(value, "exitCode", None) or 0, signal=None)


class Child:
    """One running (or finished) child process and its process group."""

    log = Logger()

    def __init__(self, spawner: Spawner, argv: list[str], protocol: ChildProtocol, pty: bool) -> None:
        self.argv = argv
        self.pid = 0
        self.pgid = 0
        self.pty = pty
        self.exit_info: ExitInfo | None = None
        self.timed_out = False
        self._spawner = spawner
        self._protocol = protocol
        self._transport: Any = None
        self._stdin_closed = False
        self._reaped_info: ExitInfo | None = None
        self._paused = False
        self._drain_pending = False
        self._calls: dict[str, IDelayedCall] = {}
        self._waiters: list[Deferred[ExitInfo]] = []
        self._cleared_waiters: list[Deferred[None]] = []

    def __repr__(self) -> str:
        state = "running" if self.running else (self.exit_info.status if self.exit_info else "reaped")
        return f"<Child pid={self.pid} {self.argv[:1]!r} {state}>"

    @property
    def running(self) -> bool:
        """True until the leader has been reaped."""
        return self._reaped_info is None

    # -- input ------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write to stdin (or type into the PTY). Raises :class:`StdinClosedError` when closed/exited."""
        if self._stdin_closed or not self.running:
            raise StdinClosedError("stdin not enabled or closed")
        if data:
            self._transport.write(data)

    def close_stdin(self) -> None:
        """EOF on stdin (idempotent). For a PTY this types ``^D`` (0x04), which a cooked-mode tty reads
        as end of input; the terminal itself stays open."""
        if self.pty:
            if self.running:
                self._transport.write(b"\x04")
            return
        if not self._stdin_closed:
            self._stdin_closed = True
            if self._transport is not None:
                self._transport.closeStdin()

    # -- control ----------------------------------------------------------------------------------

    def signal(self, signum: int, group: bool = True) -> None:
        """Send ``signum`` to the whole process group (default) or the leader only; a gone target is
        ignored. After the leader is reaped only the group is signalled, and only until ``exited``."""
        if group:
            if self.exit_info is not None or not self.pgid:
                return
            try:
                os.killpg(self.pgid, signum)
                return
            except ProcessLookupError:
                # Just spawned: the leader has not called setsid yet (it is still ``env``/``setsid``,
                # with no children of its own), so signalling the leader alone reaches everything.
                pass
            except PermissionError:  # pgid reused by someone else's group
                return
        if not self.running:
            return
        try:
            self._transport.signalProcess(signum)
        except (ProcessExitedAlready, ProcessLookupError):
            pass

    def signal_session(self, signum: int) -> None:
        """
        Send ``signum`` to every process group in the child's session: its own group and the
        jobs an interactive shell put in groups of their own (job control), which a group
        signal would miss. Used to end a child for good (terminate, timeout, shutdown).
        """
        if self.exit_info is not None or not self.pgid:
            return
        for pgid in _session_groups(self.pid) - {self.pgid}:
            try:
                os.killpg(pgid, signum)
            except OSError:
                pass
        self.signal(signum)

    def resize(self, cols: int, rows: int) -> None:
        """Set the PTY's window size (``TIOCSWINSZ``); the foreground group gets SIGWINCH."""
        if not self.pty:
            raise ValueError("tty not assigned to process")
        if self._transport is None or not self._transport.connected:
            return
        _set_winsize(self._transport.fileno(), cols, rows)

    def pause_output(self) -> None:
        """Stop reading the child's output; once the pipe/tty buffer fills the child blocks."""
        if not self._paused:
            self._paused = True
            if self._transport is not None:
                self._transport.pauseProducing()

    def resume_output(self) -> None:
        """Resume reading output (idempotent)."""
        if self._paused:
            self._paused = False
            if self._transport is not None:
                self._transport.resumeProducing()
            if self._drain_pending:
                self._drain_pending = False
                self._arm("drain", self._spawner.drain_timeout, self._force_drain)

    def terminate(self, grace: float | None = None) -> Deferred[ExitInfo]:
        """SIGTERM to every group of the child's session (a terminal first gets SIGHUP, as when
        its window closes: an interactive shell ignores SIGTERM), then SIGKILL to whatever is
        left of the session ``grace`` seconds later (default: the spawner's ``kill_grace``), even
        when the child itself ended before (a job that ignores SIGHUP and SIGTERM must not
        outlive it). Fires with the :class:`ExitInfo` after ``exited``; :meth:`cleared` fires
        once the final SIGKILL was sent (or was not needed)."""
        if self.exit_info is not None:
            return succeed(self.exit_info)
        d: Deferred[ExitInfo] = Deferred()
        self._waiters.append(d)
        if self.pty:
            self.signal_session(_signal.SIGHUP)
        self.signal_session(_signal.SIGTERM)
        if "kill" not in self._calls:
            grace = self._spawner.kill_grace if grace is None else grace
            self._arm("kill", grace, self._final_kill)
        return d

    def cleared(self) -> Deferred[None]:
        """Fires when no SIGKILL for this child's session is pending any more."""
        if "kill" not in self._calls:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._cleared_waiters.append(d)
        return d

    def _final_kill(self) -> None:
        self._calls.pop("kill", None)
        groups = _session_groups(self.pid) if self.pid else set()
        if self.exit_info is None and self.pgid:
            groups.add(self.pgid)
        for pgid in groups:
            try:
                os.killpg(pgid, _signal.SIGKILL)
            except OSError:
                pass
        waiters, self._cleared_waiters = self._cleared_waiters, []
        for d in waiters:
            d.callback(None)

    def ended(self) -> Deferred[ExitInfo]:
        """A Deferred that fires with the :class:`ExitInfo` right after ``exited`` was delivered."""
        if self.exit_info is not None:
            return succeed(self.exit_info)
        d: Deferred[ExitInfo] = Deferred()
        self._waiters.append(d)
        return d

    # -- internals --------------------------------------------------------------------------------

    def _arm(self, name: str, delay: float, f: Any, *args: Any) -> None:
        old = self._calls.pop(name, None)
        if old is not None and old.active():
            old.cancel()
        self._calls[name] = self._spawner.clock.callLater(delay, f, *args)

    def _timeout(self) -> None:
        self.timed_out = True
        self.log.info("process {pid} timed out, killing its group", pid=self.pid)
        self.signal_session(_signal.SIGKILL)

    def _data(self, fd: int, data: bytes) -> None:
        stream = "pty" if self.pty else ("stdout" if fd == 1 else "stderr")
        try:
            self._protocol.output(stream, data)
        except Exception:
            self.log.failure("output callback failed for pid {pid}", pid=self.pid)

    def _reaped(self, reason: Failure) -> None:
        self._reaped_info = _exit_info(reason)
        self._cancel("timeout")
        if self._paused:
            self._drain_pending = True
        else:
            self._arm("drain", self._spawner.drain_timeout, self._force_drain)

    def _force_drain(self) -> None:
        """The leader is gone but something still holds the output open: stop waiting for it."""
        if self.exit_info is not None or self._transport is None:
            return
        if self._paused:
            self._drain_pending = True
            return
        self.log.info("process {pid} exited; closing output still held by its descendants", pid=self.pid)
        if self.pty:
            self._transport.loseConnection()
        else:
            for fd in list(self._transport.pipes):
                self._transport.closeChildFD(fd)

    def _cancel(self, name: str) -> None:
        call = self._calls.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _ended(self, reason: Failure) -> None:
        if self.exit_info is not None:
            return
        info = self._reaped_info or _exit_info(reason)
        self._reaped_info = info
        self.exit_info = info
        for name in list(self._calls):
            if name == "kill" and _session_groups(self.pid):
                continue  # terminating: what is left of the session still gets its SIGKILL
            self._cancel(name)
        if "kill" not in self._calls:
            waiters_cleared, self._cleared_waiters = self._cleared_waiters, []
            for cleared in waiters_cleared:
                cleared.callback(None)
        self._spawner._forget(self)
        try:
            self._protocol.exited(info)
        except Exception:
            self.log.failure("exited callback failed for pid {pid}", pid=self.pid)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(info)


def _session_groups(sid: int) -> set[int]:
    """The process groups of every process in session ``sid`` (from ``/proc``)."""
    groups: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return groups
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            groups.add(int(fields[2]))
    return groups


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


READ_SIZE = 256 * 1024
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = 1031
# One read buffer for every pipe: the reactor reads one descriptor at a time.
_read_buffer = bytearray(READ_SIZE)
_read_view = memoryview(_read_buffer)


def _read_in_large_chunks(transport: Any) -> None:
    """
    Read the child's output pipes up to 256 KiB at a time (Twisted reads 8 KiB per reactor
    turn), and ask for 1 MiB pipes: a chatty child then costs far fewer reactor turns and
    output events. Best effort: a pipe that cannot grow keeps its size.
    """
    for child_fd, reader in list(getattr(transport, "pipes", {}).items()):
        if child_fd not in (1, 2) or not hasattr(reader, "dataReceived"):
            continue
        try:
            fcntl.fcntl(reader.fileno(), _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass
        reader.doRead = _large_reader(reader)


def _large_reader(reader: Any) -> Callable[[], Any]:
    """
    ``fdesc.readFromFD`` with a bigger read, bound to one ProcessReader. It reads into a
    preallocated buffer and copies out only what arrived: ``os.read(fd, 256 KiB)`` allocates
    (and page-faults) 256 KiB per call, then shrinks it, which costs more CPU than the copy.
    """

    def do_read() -> Any:
        try:
            count = os.readv(reader.fd, [_read_buffer])
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return main.CONNECTION_LOST
        if not count:
            return main.CONNECTION_DONE
        reader.dataReceived(_read_view[:count].tobytes())
        return None

    return do_read


def _resolve(name: str, path_var: str, cwd: str) -> str:
    """The absolute executable ``execvp`` would run from ``cwd``, or :class:`SpawnError`."""
    if not name:
        raise SpawnError("No such file or directory: ''")
    if "/" in name:
        full = os.path.join(cwd, name)
        try:
            mode = os.stat(full).st_mode
        except OSError:
            raise SpawnError(f"No such file or directory: {name!r}") from None
        if stat.S_ISDIR(mode):
            raise SpawnError(f"Is a directory: {name!r}")
        if not os.access(full, os.X_OK):
            raise SpawnError(f"Permission denied: {name!r}")
        return os.path.abspath(full)
    denied = False
    for directory in path_var.split(os.pathsep):
        candidate = os.path.join(cwd, directory or ".", name)
        try:
            mode = os.stat(candidate).st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            continue
        if os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
        denied = True
    raise SpawnError(f"{'Permission denied' if denied else 'No such file or directory'}: {name!r}")


def _check_strings(argv: list[str], env: Mapping[str, str], cwd: str) -> None:
    """What ``execve`` cannot take: NUL bytes anywhere, environment names that are empty or hold
    '=', and text that has no bytes (lone surrogates other than undecodable file-name bytes)."""
    if any("\0" in a for a in argv):
        raise SpawnError("an argument contains a NUL byte")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise SpawnError(f"invalid environment variable name {key!r}")
        if "\0" in value:
            raise SpawnError(f"environment variable {key!r} contains a NUL byte")
    if "\0" in cwd:
        raise SpawnError("cwd contains a NUL byte")
    for text in (*argv, *env, *env.values(), cwd):
        try:
            os.fsencode(text)
        except UnicodeEncodeError:
            raise SpawnError(f"{text!r} holds a lone surrogate, which is not text") from None


def _inheritable_fds() -> list[tuple[int, bool]]:
    """(fd, close-on-exec) for every open descriptor, as Twisted's spawn path computes them."""
    state = []
    for fd in process._listOpenFDs():
        try:
            state.append((fd, bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)))
        except OSError:
            pass
    return state


def _child_fds(fdmap: Mapping[int, int]) -> list[native.Action]:
    """File actions that give the child ``fdmap`` (child fd -> parent fd) and nothing else."""
    actions: list[native.Action] = []
    if native.CLOSEFROM:
        # Twisted's planner copes with parent fds that collide with child fds; marking every parent
        # fd close-on-exec makes it emit only the dup2s. closefrom(3) then drops every other fd.
        state = [(fd, True) for fd in set(fdmap.values())]
        ops = process._getFileActions(state, dict(fdmap), doClose=0, doDup2=1)
    else:
        ops = process._getFileActions(_inheritable_fds(), dict(fdmap), doClose=0, doDup2=1)
    for op in ops:
        actions.append(("close", op[1]) if op[0] == 0 else ("dup2", op[1], op[2]))
    if native.CLOSEFROM:
        actions.append(("closefrom", 3))
    return actions


def _env_list(environment: Mapping[bytes, bytes]) -> list[bytes]:
    return [k + b"=" + v for k, v in environment.items()]


class _SessionProcess(process.Process):
    """Twisted's pipe transport, its child started by :func:`native.spawn` (new session, own cwd)."""

    def _trySpawnInsteadOfFork(  # noqa: N802 (Twisted's name)
        self, path: str, uid: Any, gid: Any, executable: str, args: list[str], environment: Any, kwargs: Any
    ) -> bool:
        self.pid = native.spawn(executable, args, _env_list(environment), cwd=path,  # type: ignore[assignment]
                                actions=_child_fds(kwargs["fdmap"]))
        self.status = -1
        return True


class _SessionPTYProcess(process.PTYProcess):
    """
    Twisted's PTY transport with two changes:

    * Its child is started by :func:`native.spawn` where that is available: after ``setsid``
      it opens the tty slave by name (which makes it the controlling terminal) as fds 0-2.
    * The master stays open until the child is reaped. Twisted closes it as soon as reading
      it fails (every slave fd closed), but a program closes its fds just before it exits
      (coreutils' ``cat`` does), and closing the master then hangs up the tty, which kills
      the still-living session leader with SIGHUP: a clean ``exit 0`` would read as
      ``signal: hangup``.
    """

    _master_open_until_reaped = False

    def _trySpawnInsteadOfFork(  # noqa: N802 (Twisted's name)
        self, path: str, uid: Any, gid: Any, executable: str, args: list[str], environment: Any, kwargs: Any
    ) -> bool:
        if not native.AVAILABLE:
            return False  # Twisted's fork path: setsid and TIOCSCTTY in the child
        tty = os.ttyname(kwargs["slavefd"])
        actions: list[native.Action] = [("open", 0, tty, os.O_RDWR, 0), ("dup2", 0, 1), ("dup2", 0, 2)]
        if native.CLOSEFROM:
            actions.append(("closefrom", 3))
        else:
            actions += [("close", fd) for fd, cloexec in _inheritable_fds() if fd > 2 and not cloexec]
        self.pid = native.spawn(  # type: ignore[assignment]
            executable, args, _env_list(environment), cwd=path, actions=actions)
        self.status = -1
        return True

    def doRead(self) -> Any:  # noqa: N802 (Twisted's name)
        """
        Read everything the tty has, up to 256 KiB, in one go: a PTY master hands out at most
        a few KiB per ``read`` (Twisted asks for 8 KiB per reactor turn), so each turn loops
        until the tty is empty and delivers one chunk, which cuts the per-chunk work of the
        output buffer and of every viewer.
        """
        total = 0
        while total < READ_SIZE:
            try:
                count = os.readv(self.fd, [_read_view[total:]])
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    break
                if total:
                    break  # deliver what was read; the error comes back on the next turn
                return main.CONNECTION_LOST
            if not count:
                if total:
                    break
                return main.CONNECTION_DONE
            total += count
        if total:
            self.proto.childDataReceived(1, _read_view[:total].tobytes())  # type: ignore[union-attr]
        return None

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 (Twisted's name)
        if self.pid is None:  # reaped already (or loseConnection after the exit): close as usual
            super().connectionLost(reason)
            return
        abstract.FileDescriptor.connectionLost(self, reason)
        self._master_open_until_reaped = True
        self.lostProcess += 1
        self.maybeCallProcessEnded()

    def processEnded(self, status: int) -> None:  # noqa: N802 (Twisted's name)
        if self._master_open_until_reaped:  # before the protocol hears of the end
            self._master_open_until_reaped = False
            os.close(self.fd)
        super().processEnded(status)


class Spawner(Service):
    """Starts children (:meth:`spawn`), tracks the live ones, and kills them all on stop."""

    log = Logger()
    name = "spawner"

    def __init__(
        self,
        reactor: IReactorProcess,
        *,
        environ: Mapping[str, str],
        default_cwd: str,
        clock: IReactorTime | None = None,
        kill_grace: float = 5.0,
        drain_timeout: float = 2.0,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else cast(IReactorTime, reactor)
        self.environ: Mapping[str, str] = MappingProxyType(dict(environ))  # read-only: encoded once below
        self._environ_b = {os.fsencode(k): os.fsencode(v) for k, v in self.environ.items()}
        self.default_cwd = default_cwd
        self.kill_grace = kill_grace
        self.drain_timeout = drain_timeout
        self._children: dict[int, Child] = {}
        self._setsid = shutil.which("setsid", path="/usr/bin:/bin:/usr/sbin:/sbin")
        self._env = shutil.which("env", path="/usr/bin:/bin")
        # Our transports construct Twisted's process classes directly, which needs a real reactor.
        self._native = native.AVAILABLE and isinstance(reactor, PosixReactorBase)

    def children(self) -> list[Child]:
        """The children whose ``exited`` has not been delivered yet."""
        return list(self._children.values())

    def _forget(self, child: Child) -> None:
        self._children.pop(child.pid, None)

    def _group_prefix(self, cwd: str) -> tuple[list[str], str | None]:
        """argv prefix that puts the exec'd program in a new session, and the ``path`` for Twisted."""
        if self._setsid is None:  # no util-linux: a (slower) Python shim does setsid + chdir + exec
            shim = "import os,sys;os.setsid();os.chdir(sys.argv[1]);os.execv(sys.argv[2],sys.argv[2:])"
            return [sys.executable, "-S", "-c", shim, cwd], None
        if os.path.abspath(cwd) == os.path.abspath(".") or self._env is None:
            # Twisted uses posix_spawnp only when path is None/the daemon's cwd; otherwise it forks.
            same = os.path.abspath(cwd) == os.path.abspath(".")
            return [self._setsid], None if same else cwd
        return [self._env, "-C", cwd, self._setsid], None

    def _spawn_pipes(self, bridge: _Bridge, executable: str, args: list[str], env: dict[bytes, bytes],
                     cwd: str) -> Any:
        if self._native:
            return _SessionProcess(self.reactor, executable, [executable, *args], env, cwd, bridge)
        prefix, path = self._group_prefix(cwd)
        full = [*prefix, executable, *args]
        return self.reactor.spawnProcess(bridge, full[0], full, env, path=path)

    def _spawn_pty(self, bridge: _Bridge, executable: str, argv: list[str], env: dict[bytes, bytes], cwd: str,
                   use_pty: Any) -> Any:
        if isinstance(self.reactor, PosixReactorBase):
            return _SessionPTYProcess(self.reactor, executable, argv, env, cwd, bridge, usePTY=use_pty)
        return self.reactor.spawnProcess(bridge, executable, argv, env, path=cwd, usePTY=use_pty)

    def spawn(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        pty: tuple[int, int] | None = None,
        protocol: ChildProtocol,
        timeout: float | None = None,
    ) -> Child:
        """Start ``argv`` (``pty=(cols, rows)`` for a terminal); raise :class:`SpawnError` if it can't."""
        if not argv:
            raise SpawnError("empty command")
        cwd = cwd if cwd is not None else self.default_cwd
        _check_strings(argv, env or {}, cwd)
        if not os.path.isdir(cwd):
            problem = "is not a directory" if os.path.exists(cwd) else "does not exist"
            raise SpawnError(f"cwd '{cwd}' {problem}")
        if not os.access(cwd, os.X_OK):
            raise SpawnError(f"Permission denied: cwd '{cwd}'")
        extra = dict(env or {})
        if pty is not None and "TERM" not in extra:
            extra["TERM"] = "xterm-256color"
        env_b = self._environ_b
        if extra:
            env_b = {**env_b, **{os.fsencode(k): os.fsencode(v) for k, v in extra.items()}}
        path_var = extra.get("PATH", self.environ.get("PATH", os.defpath))
        executable = _resolve(argv[0], path_var, cwd)
        child = Child(self, list(argv), protocol, pty is not None)
        bridge = _Bridge(child)
        try:
            if pty is not None:
                master, slave = os.openpty()
                try:
                    _set_winsize(slave, pty[0], pty[1])
                    # (master, slave, name): Twisted then uses our pty, sized before the child starts
                    use_pty: Any = (master, slave, os.ttyname(slave))
                    transport = self._spawn_pty(bridge, executable, [executable, *argv[1:]], env_b, cwd, use_pty)
                except BaseException:
                    os.close(master)
                    os.close(slave)
                    raise
            else:
                transport = self._spawn_pipes(bridge, executable, argv[1:], env_b, cwd)
                _read_in_large_chunks(transport)
        except OSError as e:
            raise SpawnError(f"{e.strerror or e}: {argv[0]!r}") from e
        if child.exit_info is None:  # else it was reaped and ended inside spawnProcess
            self._children[child.pid] = child
        if timeout is not None and timeout > 0 and child.running:
            child._arm("timeout", timeout, child._timeout)
        return child

    def stopService(self) -> Deferred[None]:  # noqa: N802 (Twisted's name)
        """Terminate every child (SIGTERM to each group of its session, SIGKILL to what is left after
        ``kill_grace``); fires when all have ended and no SIGKILL is pending."""
        super().stopService()
        children = self.children()
        waits: list[Deferred[Any]] = [c.terminate(self.kill_grace) for c in children]

        def cleared(_: object) -> Deferred[Any]:
            return DeferredList([c.cleared() for c in children], consumeErrors=True)

        d: Deferred[Any] = DeferredList(waits, consumeErrors=True)
        return d.addCallback(cleared).addCallback(lambda _: None)

