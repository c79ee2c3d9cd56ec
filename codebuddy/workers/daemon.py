# -*- test-case-name: tests.workers.test_daemon -*-
"""
Daemon control (acp-codebuddy.md §2.1, §2.13): the daemon is the registered worker of kind
``daemon`` that is alive (the most recently started one if there are several).

- ``status``: that daemon's registration, plus whether a systemd unit is installed.
- ``start``: idempotent. Without a daemon, ``<python's bin>/twistd -n --pidfile <home>/daemon.pid
  --logfile <home>/logs/daemon.log codebuddy --port P [--host H] --home <home> --cwd <workspace>``
  is started in its own session (stdout/stderr to the log, ``CODEBUDDY_SESSION_KIND=daemon``),
  and reported once its registry file names its endpoint and that endpoint answers
  ``/api/v1/health`` (bounded by ``start_timeout`` on the injected clock). A child that exits or
  does not answer in time is killed and the answer is ``DAEMON_START_FAILED`` with the log tail.
- ``stop``: SIGTERM, then SIGKILL after 5 s (:class:`Terminator`). When the daemon is this
  process, the answer is sent first and ``stop_self`` is called on the next clock turn.
- ``restart``: a daemon that is a systemd service is restarted by systemd (``systemctl [--user]
  restart UNIT``; a system unit needs root, else 409 with the command to run). Otherwise: stop,
  then start on the same port, host and workspace. When the daemon is this process, it answers
  ``restarting`` first, then (next clock turn) either asks systemd or starts the detached
  :mod:`codebuddy.workers.relaunch` helper, which waits for this process to exit and becomes the
  new daemon, and stops.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from codebuddy.cli import twistd_path
from codebuddy.web.errors import ApiError
from codebuddy.workers.control import Terminator
from codebuddy.workers.logs import read_tail
from codebuddy.workers.registry import LocalWorker, Registry
from codebuddy.workers.remote import RemoteClient, RemoteError
from codebuddy.workers.units import SystemdUnit, run, unit_of, user_unit_path

__all__ = ["DaemonControl", "DaemonInfo", "SystemService", "find_system_service", "relaunch_argv", "start_argv",
           "start_env", "unit_paths"]

DEFAULT_PORT = 8080
START_TIMEOUT = 20.0
POLL = 0.25
LOG_TAIL = 40
RELAUNCH_WAIT = 60.0

_log = Logger()


def unit_paths(user_home: Path | None = None) -> list[Path]:
    """Where a systemd unit for codebuddy is looked for: the user unit (of ``user_home``), then the system one."""
    return [user_unit_path(user_home), Path("/etc/systemd/system/codebuddy.service")]


def daemon_log_path(home: Path) -> Path:
    """Where a started daemon's stdout/stderr and twistd log go."""
    return home / "logs" / "daemon.log"


def start_argv(home: Path, port: int | None, host: str | None, workspace: str) -> list[str]:
    """The command line that starts a daemon in the foreground of its own session."""
    argv = [twistd_path(), "-n", "--pidfile", str(home / "daemon.pid"), "--logfile", str(daemon_log_path(home)),
            "codebuddy", "--port", str(DEFAULT_PORT if port is None else port)]
    if host:
        argv += ["--host", host]
    return argv + ["--home", str(home), "--cwd", workspace]


def relaunch_argv(pid: int, argv: list[str]) -> list[str]:
    """The detached helper that runs ``argv`` once ``pid`` has exited (:mod:`codebuddy.workers.relaunch`)."""
    return [sys.executable, "-m", "codebuddy.workers.relaunch", str(pid), f"{RELAUNCH_WAIT:g}", "--", *argv]


def find_system_service(paths: list[Path]) -> SystemService:
    """The first installed systemd unit of ``paths`` (blocking)."""
    for path in paths:
        if path.is_file():
            return SystemService(True, "systemd", str(path))
    return SystemService(False, None, None)


def start_env(environ: Mapping[str, str], log_path: Path) -> dict[str, str]:
    """The started daemon's environment: ``environ`` without ``CODEBUDDY_SESSION_*``, plus its own."""
    env = {k: v for k, v in environ.items() if not k.startswith("CODEBUDDY_SESSION_")}
    env.update(CODEBUDDY_SESSION_KIND="daemon", CODEBUDDY_SESSION_NAME="daemon",
               CODEBUDDY_SESSION_LOG=str(log_path))
    return env


@attrs.frozen
class SystemService:
    """Whether a systemd unit runs codebuddy at boot."""

    installed: bool
    backend: str | None = attrs.field(metadata={"doc": "systemd, or null when no unit is installed"})
    config_path: str | None


@attrs.frozen
class DaemonInfo:
    """The daemon's state: ``running`` (with its registration) or ``stopped``."""

    status: str = attrs.field(metadata={"doc": "running, stopped, stopping or restarting"})
    pid: int | None = attrs.field(default=None, metadata={"omit_if_default": True})
    endpoint: str | None = attrs.field(default=None, metadata={"omit_if_default": True})
    started_at: int | None = attrs.field(default=None, metadata={"omit_if_default": True,
                                                                  "doc": "Milliseconds since the epoch"})
    name: str | None = attrs.field(default=None, metadata={"omit_if_default": True})
    system_service: SystemService | None = attrs.field(default=None, metadata={"omit_if_default": True})
    already_running: bool = attrs.field(default=False, metadata={
        "omit_if_default": True, "doc": "start: the daemon was running already (nothing was started)"})
    signal: str | None = attrs.field(default=None, metadata={
        "omit_if_default": True, "doc": "stop: SIGTERM or SIGKILL, the last signal that was needed"})


Launcher = Callable[[list[str], Mapping[str, str], Path], "subprocess.Popen[bytes]"]
RunBlocking = Callable[..., Deferred[Any]]


def launch(argv: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached (own session), stdout/stderr appended to ``log_path`` (blocking)."""
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=dict(env),
                                start_new_session=True, close_fds=True)
    finally:
        os.close(fd)


class DaemonControl:
    """Finds, starts and stops the daemon (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        remote: RemoteClient,
        terminator: Terminator,
        clock: IReactorTime,
        run_blocking: RunBlocking,
        stop_self: Callable[[], None],
        workspace: str,
        environ: Mapping[str, str],
        own_pid: int | None = None,
        launcher: Launcher = launch,
        units: Callable[[], list[Path]] = unit_paths,
        unit_of: Callable[[int], SystemdUnit | None] = unit_of,
        systemctl: Callable[[list[str]], Any] = run,
        euid: int | None = None,
        start_timeout: float = START_TIMEOUT,
        poll: float = POLL,
    ) -> None:
        self.registry = registry
        self.remote = remote
        self.terminator = terminator
        self.clock = clock
        self.run_blocking = run_blocking
        self.stop_self = stop_self
        self.workspace = workspace
        self.environ = environ
        self._own_pid = own_pid
        self.launcher = launcher
        self.units = units
        self.unit_of = unit_of
        self.systemctl = systemctl
        self.euid = os.geteuid() if euid is None else euid
        self.start_timeout = start_timeout
        self.poll = poll
        self.children: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def own_pid(self) -> int:
        return os.getpid() if self._own_pid is None else self._own_pid

    @property
    def log_path(self) -> Path:
        return daemon_log_path(self.registry.home)

    def _reap(self) -> None:
        for pid, child in list(self.children.items()):
            if child.poll() is not None:
                del self.children[pid]

    def find(self) -> LocalWorker | None:
        """The running daemon of this machine (blocking)."""
        self._reap()
        daemons = [w for w in self.registry.local_workers()
                   if w.record.kind == "daemon" and w.status == "running"]
        return daemons[-1] if daemons else None

    def system_service(self) -> SystemService:
        """The first installed systemd unit (blocking)."""
        return find_system_service(self.units())

    def _info(self, worker: LocalWorker, service: SystemService | None, **extra: Any) -> DaemonInfo:
        r = worker.record
        return DaemonInfo("running", r.pid, r.endpoint, r.started_at, r.name, service, **extra)

    async def status(self) -> DaemonInfo:
        worker = await self.run_blocking(self.find)
        if worker is None:
            return DaemonInfo("stopped")
        return self._info(worker, await self.run_blocking(self.system_service))

    async def stop(self) -> DaemonInfo:
        worker = await self.run_blocking(self.find)
        if worker is None:
            raise ApiError("DAEMON_NOT_RUNNING", "No codebuddy daemon is running")
        pid = worker.record.pid
        if pid == self.own_pid:
            self.clock.callLater(0, self.stop_self)
            return DaemonInfo("stopping", pid, worker.record.endpoint, worker.record.started_at, worker.record.name)
        sent = await self.terminator.terminate(pid)
        await self.run_blocking(self.registry.remove_stale, worker.record)
        await self.run_blocking(self._reap)
        return DaemonInfo("stopped", pid, worker.record.endpoint, worker.record.started_at, worker.record.name,
                          signal=sent)

    async def restart(self) -> DaemonInfo:
        worker = await self.run_blocking(self.find)
        if worker is None:
            raise ApiError("DAEMON_NOT_RUNNING", "No codebuddy daemon is running")
        r = worker.record
        unit = await self.run_blocking(self.unit_of, r.pid)
        if unit is not None:
            return await self._restart_unit(worker, unit)
        port, host = DEFAULT_PORT, None
        if r.endpoint:
            parts = urlsplit(r.endpoint)
            port = parts.port or DEFAULT_PORT
            host = parts.hostname if parts.hostname not in (None, "127.0.0.1") else None
        if r.pid == self.own_pid:
            argv = relaunch_argv(r.pid, start_argv(self.registry.home, port, host, r.cwd or self.workspace))
            try:
                await self.run_blocking(self.launcher, argv, start_env(self.environ, self.log_path), self.log_path)
            except OSError as exc:
                raise ApiError("DAEMON_START_FAILED", f"Cannot run {argv[0]}: {exc.strerror or exc}") from None
            self.clock.callLater(0, self.stop_self)
            return DaemonInfo("restarting", r.pid, r.endpoint, r.started_at, r.name)
        await self.stop()
        return await self.start(port, host, r.cwd)

    async def _restart_unit(self, worker: LocalWorker, unit: SystemdUnit) -> DaemonInfo:
        r = worker.record
        if not unit.user and self.euid != 0:
            raise ApiError("CONFLICT", f"The daemon is the systemd service {unit.name}; restart it as root: "
                           f"sudo systemctl restart {unit.name}", {"pid": r.pid, "unit": unit.name})
        if r.pid == self.own_pid:
            self.clock.callLater(0, self._ask_systemd, unit)
            return DaemonInfo("restarting", r.pid, r.endpoint, r.started_at, r.name)
        result = await self.run_blocking(self.systemctl, unit.systemctl("restart", unit.name))
        if result.returncode != 0:
            raise ApiError("DAEMON_START_FAILED", f"systemctl restart {unit.name} failed: "
                           f"{(result.stderr or result.stdout).strip() or f'status {result.returncode}'}",
                           {"unit": unit.name})
        return await self.status()

    def _ask_systemd(self, unit: SystemdUnit) -> None:
        """Queue the restart job and return (systemd then stops this process and starts it again)."""

        def asked(result: Any) -> None:
            if result.returncode != 0:
                _log.error("Restart of {unit} failed: {output}", unit=unit.name,
                           output=(result.stderr or result.stdout).strip())

        d = self.run_blocking(self.systemctl, unit.systemctl("--no-block", "restart", unit.name))
        d.addCallback(asked)
        d.addErrback(lambda f: _log.failure("Restart of {unit} failed", f, unit=unit.name))

    async def start(self, port: int | None, host: str | None, workspace: str | None = None) -> DaemonInfo:
        existing = await self.run_blocking(self.find)
        if existing is not None:
            service = await self.run_blocking(self.system_service)
            return self._info(existing, service, already_running=True)
        argv = start_argv(self.registry.home, port, host, workspace or self.workspace)
        env = start_env(self.environ, self.log_path)
        offset = await self.run_blocking(_size, self.log_path)
        try:
            child = await self.run_blocking(self.launcher, argv, env, self.log_path)
        except OSError as exc:
            raise ApiError("DAEMON_START_FAILED", f"Cannot run {argv[0]}: {exc.strerror or exc}") from None
        self.children[child.pid] = child
        deadline = self.clock.seconds() + self.start_timeout
        reason = f"it did not answer /api/v1/health within {self.start_timeout:g} s"
        while self.clock.seconds() < deadline:
            if child.poll() is not None:
                reason = f"it exited with status {child.returncode}"
                break
            worker = await self.run_blocking(self.registry.find_local, str(child.pid))
            if worker is not None and worker.record.endpoint and await self._healthy(worker.record.endpoint):
                service = await self.run_blocking(self.system_service)
                return self._info(worker, service)
            await deferLater(self.clock, self.poll, lambda: None)
        if child.poll() is None:
            try:
                await self.terminator.terminate(child.pid)
            except ApiError:
                pass
            await self.run_blocking(child.poll)
        tail = await self.run_blocking(_tail_since, self.log_path, offset)
        message = f"The daemon did not start: {reason}"
        hint = _hint(tail)
        if hint:
            message += f" ({hint})"
        raise ApiError("DAEMON_START_FAILED", message, {"pid": child.pid, "logPath": str(self.log_path),
                                                        "logTail": tail})

    async def _healthy(self, endpoint: str) -> bool:
        try:
            status, _body = await self.remote.fetch_json("GET", f"{endpoint}/api/v1/health", None,
                                                         timeout=min(2.0, self.start_timeout))
        except RemoteError:
            return False
        return status == 200


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail_since(path: Path, offset: int) -> str:
    """The last lines the log got since ``offset`` (blocking)."""
    try:
        tail = read_tail(path, LOG_TAIL)
    except OSError:
        return ""
    content: str = tail.content
    written = tail.offset - offset
    if 0 <= written < len(content.encode()):
        content = content.encode()[-written:].decode("utf-8", "replace") if written else ""
    return content


def _hint(tail: str) -> str | None:
    for line in reversed(tail.splitlines()):
        lowered = line.lower()
        if "address already in use" in lowered or "codebuddy:" in lowered:
            start = line.find("codebuddy:")
            return (line[start:] if start >= 0 else line).strip()
    return None
