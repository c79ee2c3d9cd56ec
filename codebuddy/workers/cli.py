# -*- test-case-name: tests.workers.test_cli -*-
"""
The ``codebuddy`` command's worker subcommands (see docs/workers.md, "The codebuddy command").

Synchronous, plain Python: they work on the registry files of ``$CODEBUDDY_CONFIG_DIR`` (or
``~/.codebuddy``) directly, no daemon needed.

- ``ps [--json] [--kind K]``: the live local workers;
- ``kill NAME|PID``: SIGTERM to the worker's group (or pid and descendants), SIGKILL after 5 s;
- ``logs NAME|PID [--type T] [--tail N] [-f]``: a worker's log;
- ``daemon status [--json]`` (exit 0 when running, 3 when stopped, as systemctl),
  ``daemon start [--port P] [--host H] [--cwd DIR]``, ``daemon stop``, ``daemon restart``
  (through ``systemctl`` when the daemon is a systemd service);
- ``daemon install [--port P] [--host H] [--cwd DIR] [--json]``: writes the systemd user unit
  (:mod:`codebuddy.workers.units`) and enables it (``systemctl --user enable --now``); where
  that cannot be done, says exactly what to run (exit status 1). ``daemon uninstall``: disables
  and removes it.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from codebuddy.cli import serve_argv
from codebuddy.config import default_home
from codebuddy.storage import atomic_write
from codebuddy.web.errors import ApiError
from codebuddy.workers.control import _alive, kill_targets, send_signal
from codebuddy.workers.daemon import (
    DEFAULT_PORT,
    LOG_TAIL,
    _hint,
    _size,
    _tail_since,
    daemon_log_path,
    find_system_service,
    launch,
    start_argv,
    start_env,
    unit_paths,
)
from codebuddy.workers.logs import DEFAULT_TAIL, LOG_TYPES, POLL_INTERVAL, complete_utf8, read_tail, select_log
from codebuddy.workers.registry import KINDS, LocalWorker, Registry
from codebuddy.workers.units import UNIT_NAME, Runner, render_user_unit, run, unit_of, unit_text, user_unit_path

__all__ = ["COMMANDS", "main", "terminate"]

COMMANDS = ("ps", "kill", "logs", "daemon")
EXIT_STOPPED = 3
GRACE = 5.0
KILL_WAIT = 5.0
POLL = 0.05
START_TIMEOUT = 20.0
START_POLL = 0.25
COLUMNS = ("NAME", "PID", "KIND", "STATUS", "ENDPOINT", "STARTED", "CWD")


class CliError(Exception):
    """A failure reported as ``codebuddy: <message>`` with exit status 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codebuddy", description="Local codebuddy workers and daemon.")
    sub = parser.add_subparsers(dest="command", required=True)
    ps = sub.add_parser("ps", help="list the live local workers")
    ps.add_argument("--json", action="store_true", help="print the list as JSON")
    ps.add_argument("--kind", choices=KINDS, help="only workers of this kind")
    kill = sub.add_parser("kill", help="end a local worker (SIGTERM, SIGKILL after 5 s)")
    kill.add_argument("worker", metavar="NAME|PID")
    logs = sub.add_parser("logs", help="print a worker's log")
    logs.add_argument("worker", metavar="NAME|PID")
    logs.add_argument("--type", choices=LOG_TYPES, help="which log (default: the first that exists)")
    logs.add_argument("--tail", type=int, default=DEFAULT_TAIL, metavar="N", help="last N lines (default 200)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended")
    daemon = sub.add_parser("daemon", help="the local daemon")
    dsub = daemon.add_subparsers(dest="action", required=True)
    status = dsub.add_parser("status", help="running (exit 0) or stopped (exit 3)")
    status.add_argument("--json", action="store_true")
    helps = {"start": "start the daemon (idempotent)", "restart": "stop, then start on the same port and host",
             "install": "install and start a systemd user service for the daemon"}
    for action, text in helps.items():
        start = dsub.add_parser(action, help=text)
        start.add_argument("--port", type=int, default=None)
        start.add_argument("--host", default=None)
        start.add_argument("--cwd", default=None, help="the workspace (default: the current directory)")
        if action == "install":
            start.add_argument("--json", action="store_true")
    dsub.add_parser("stop", help="stop the running daemon")
    uninstall = dsub.add_parser("uninstall", help="stop, disable and remove the systemd user service")
    uninstall.add_argument("--json", action="store_true")
    return parser


def _worker_json(worker: LocalWorker) -> dict[str, Any]:
    data = worker.record.to_json()
    data["status"] = worker.status
    return data


def _started(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def format_table(workers: Sequence[LocalWorker]) -> str:
    """The ``ps`` table: one row per worker, columns padded to their widest cell."""
    rows = [list(COLUMNS)]
    for w in workers:
        r = w.record
        rows.append([r.name or "-", str(r.pid), r.kind, w.status, r.endpoint or "-",
                     _started(r.started_at), r.cwd or "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows) + "\n"


def terminate(pid: int, grace: float = GRACE, kill_wait: float = KILL_WAIT, poll: float = POLL) -> str | None:
    """
    :class:`codebuddy.workers.control.Terminator`, blocking: SIGTERM to ``pid``'s group when it
    leads one (else to it and its descendants), SIGKILL after ``grace`` seconds. The last signal
    needed, or None when the process was already gone.
    """
    found = kill_targets(pid)
    if found is None:
        return None
    pgid, watched = found
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        try:
            send_signal(signum, pgid, watched)
        except PermissionError:
            raise CliError(f"not allowed to signal worker {pid} (another user's process)") from None
        deadline = time.monotonic() + wait
        while True:
            if not any(_alive(p) for p in watched):
                return signal.Signals(signum).name
            if time.monotonic() >= deadline:
                break
            time.sleep(poll)
    raise CliError(f"worker {pid} did not exit after SIGKILL")


class Commands:
    """The subcommands, on one home, writing to ``out``/``err``."""

    def __init__(self, home: Path, environ: Mapping[str, str], out: TextIO, err: TextIO,
                 sleep: Callable[[float], None] = time.sleep, runner: Runner = run,
                 user_home: Path | None = None) -> None:
        self.home = home
        self.runner = runner
        self.user_home = Path.home() if user_home is None else user_home
        self.environ = environ
        self.registry = Registry(home)
        self.out = out
        self.err = err
        self.sleep = sleep

    def _find(self, key: str) -> LocalWorker:
        worker = self.registry.find_local(key)
        if worker is None:
            raise CliError(f"no live local worker named or with pid {key!r} (see 'codebuddy ps')")
        if worker.status != "running":
            raise CliError(f"worker {key!r} runs on host {worker.record.hostname}, not here")
        return worker

    def daemon(self) -> LocalWorker | None:
        daemons = [w for w in self.registry.local_workers() if w.record.kind == "daemon" and w.status == "running"]
        return daemons[-1] if daemons else None

    # -- ps, kill, logs

    def ps(self, as_json: bool, kind: str | None) -> int:
        workers = [w for w in self.registry.local_workers() if kind is None or w.record.kind == kind]
        if as_json:
            self.out.write(json.dumps([_worker_json(w) for w in workers], indent=2) + "\n")
        else:
            self.out.write(format_table(workers))
        return 0

    def _end(self, worker: LocalWorker) -> str | None:
        sent = terminate(worker.record.pid)
        self.registry.remove_stale(worker.record)
        return sent

    def kill(self, key: str) -> int:
        worker = self._find(key)
        sent = self._end(worker)
        label = worker.record.name or worker.record.kind
        self.out.write(f"Stopped {label} (pid {worker.record.pid})" + (f" with {sent}\n" if sent else "\n"))
        return 0

    def logs(self, key: str, log_type: str | None, tail: int, follow: bool) -> int:
        worker = self._find(key)
        try:
            choice = select_log(self.home, worker.record, log_type)
        except ApiError as exc:
            available = (exc.details or {}).get("availableTypes") if isinstance(exc.details, dict) else None
            raise CliError(str(exc.message) + (f" (available: {', '.join(available)})" if available else "")) from None
        result = read_tail(choice.path, max(0, tail)) if tail > 0 else None
        if result is not None:
            self.out.write(result.content)
            if result.content and not result.content.endswith("\n") and not follow:
                self.out.write("\n")
            offset = result.offset
        else:
            offset = _size(choice.path)
        self.out.flush()
        if follow:
            self._follow(choice.path, offset)
        return 0

    def _follow(self, path: Path, offset: int) -> None:
        pending = b""
        try:
            while True:
                self.sleep(POLL_INTERVAL)
                size = _size(path)
                if size < offset:  # truncated or rotated: start over
                    offset, pending = 0, b""
                if size == offset:
                    continue
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read(size - offset)
                offset += len(data)
                data = pending + data
                keep = complete_utf8(data)
                pending = data[keep:]
                self.out.write(data[:keep].decode("utf-8", "replace"))
                self.out.flush()
        except KeyboardInterrupt:
            pass

    # -- daemon

    def _system_service(self) -> dict[str, Any]:
        service = find_system_service(unit_paths(self.user_home))
        return {"installed": service.installed, "backend": service.backend, "configPath": service.config_path}

    def status(self, as_json: bool) -> int:
        worker = self.daemon()
        service = self._system_service()
        if worker is None:
            if as_json:
                stopped: dict[str, Any] = {"status": "stopped"}
                if service["installed"]:
                    stopped["systemService"] = service
                self.out.write(json.dumps(stopped) + "\n")
            else:
                self.out.write("stopped" + (f" (systemd unit {service['configPath']})" if service["installed"]
                                            else "") + "\n")
            return EXIT_STOPPED
        r = worker.record
        if as_json:
            data = {"status": "running", "pid": r.pid, "endpoint": r.endpoint, "startedAt": r.started_at,
                    "name": r.name}
            data = {k: v for k, v in data.items() if v is not None}
            self.out.write(json.dumps({**data, "systemService": service}) + "\n")
        else:
            self.out.write(f"running: pid {r.pid}, endpoint {r.endpoint or '-'}, started {_started(r.started_at)}"
                           + (f", systemd unit {service['configPath']}" if service["installed"] else "") + "\n")
        return 0

    def stop(self) -> int:
        worker = self.daemon()
        if worker is None:
            self.out.write("stopped (no daemon was running)\n")
            return 0
        sent = self._end(worker)
        self.out.write(f"Stopped the daemon (pid {worker.record.pid})" + (f" with {sent}\n" if sent else "\n"))
        return 0

    def start(self, port: int | None, host: str | None, cwd: str | None,
              timeout: float = START_TIMEOUT) -> int:
        existing = self.daemon()
        if existing is not None:
            self.out.write(f"already running: pid {existing.record.pid}, endpoint {existing.record.endpoint or '-'}\n")
            return 0
        workspace = str(Path(cwd).resolve()) if cwd else os.getcwd()
        log_path = daemon_log_path(self.home)
        argv = start_argv(self.home, port, host, workspace)
        offset = _size(log_path)
        try:
            child = launch(argv, start_env(self.environ, log_path), log_path)
        except OSError as exc:
            raise CliError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + timeout
        reason = f"it did not answer /api/v1/health within {timeout:g} s"
        while time.monotonic() < deadline:
            if child.poll() is not None:
                reason = f"it exited with status {child.returncode}"
                break
            worker = self.registry.find_local(str(child.pid))
            if worker is not None and worker.record.endpoint and _healthy(worker.record.endpoint):
                self.out.write(f"started: pid {child.pid}, endpoint {worker.record.endpoint}\n")
                return 0
            self.sleep(START_POLL)
        if child.poll() is None:
            try:
                terminate(child.pid)
            except CliError:
                pass
            child.poll()
        tail = _tail_since(log_path, offset)
        hint = _hint(tail)
        self.err.write(f"codebuddy: the daemon did not start: {reason}" + (f" ({hint})" if hint else "") + "\n")
        if tail:
            self.err.write(f"--- last lines of {log_path} (up to {LOG_TAIL}) ---\n{tail}")
            if not tail.endswith("\n"):
                self.err.write("\n")
        return 1

    def restart(self, port: int | None, host: str | None, cwd: str | None) -> int:
        worker = self.daemon()
        unit = unit_of(worker.record.pid) if worker is not None else None
        if unit is not None:
            command = unit.systemctl("restart", unit.name)
            result = self.runner(command)
            if result.returncode != 0:
                raise CliError(f"{shlex.join(command)} failed: "
                               f"{(result.stderr or result.stdout).strip() or f'status {result.returncode}'}"
                               + ("" if unit.user else f" (a system service: sudo {shlex.join(command)})"))
            self.out.write(f"Restarted {unit.name} ({shlex.join(command)})\n")
            return 0
        if worker is not None:
            if worker.record.endpoint and port is None:
                parts = urlsplit(worker.record.endpoint)
                port = parts.port or DEFAULT_PORT
                if host is None and parts.hostname not in (None, "127.0.0.1"):
                    host = parts.hostname
            if cwd is None:
                cwd = worker.record.cwd
            self.stop()
        return self.start(port, host, cwd)


    # -- systemd user service

    def install(self, port: int | None, host: str | None, cwd: str | None, as_json: bool) -> int:
        workspace = str(Path(cwd).resolve()) if cwd else os.getcwd()
        options = ["--port", str(DEFAULT_PORT if port is None else port), *(["--host", host] if host else [])]
        argv = serve_argv([*options, "--home", str(self.home), "--cwd", workspace])
        path = user_unit_path(self.user_home)
        enable = [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", UNIT_NAME]]
        report: dict[str, Any] = {"unitPath": str(path), "written": False, "enabled": False,
                                  "commands": [shlex.join(c) for c in enable]}
        if shutil.which("systemctl", path=self.environ.get("PATH")) is None:
            report["commands"] = [shlex.join(argv)]
            report["error"] = "systemd is not available here (no systemctl)"
            return self._report(report, as_json, (
                "codebuddy: systemd is not available on this machine (no systemctl), so no service was installed.\n"
                f"Start the daemon now with:\n  {shlex.join(['codebuddy', 'daemon', 'start', *options])} "
                f"--cwd {shlex.quote(workspace)}\n"
                "or in the foreground of your own supervisor with:\n"
                f"  {shlex.join(argv)}\n"))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, render_user_unit(unit_text(), argv).encode())
        report["written"] = True
        for command in enable:
            result = self.runner(command)
            if result.returncode != 0:
                reason = (result.stderr or result.stdout).strip().splitlines()
                report["error"] = f"{shlex.join(command)} failed: {reason[0] if reason else result.returncode}"
                return self._report(report, as_json, (
                    f"codebuddy: wrote {path}, but {report['error']}.\n"
                    "Run these where your systemd user manager is reachable (a login session; "
                    f"'loginctl enable-linger {_user()}' keeps it running without one):\n"
                    + "".join(f"  {c}\n" for c in report["commands"])
                    + "Then: journalctl --user -u codebuddy -f\n"))
        report["enabled"] = True
        return self._report(report, as_json, (
            f"Installed and started {UNIT_NAME} ({path}).\n"
            f"It starts with your user session; to keep it running after you log out: "
            f"loginctl enable-linger {_user()}\nLogs: journalctl --user -u codebuddy -f\n"))

    def uninstall(self, as_json: bool) -> int:
        path = user_unit_path(self.user_home)
        report: dict[str, Any] = {"unitPath": str(path), "removed": False}
        if not path.exists():
            return self._report(report, as_json, f"not installed ({path} does not exist)\n", status=0)
        problems = []
        if shutil.which("systemctl", path=self.environ.get("PATH")) is not None:
            result = self.runner(["systemctl", "--user", "disable", "--now", UNIT_NAME])
            if result.returncode != 0:
                lines = (result.stderr or result.stdout).strip().splitlines()
                problems.append(f"systemctl --user disable --now {UNIT_NAME} failed: "
                                f"{lines[0] if lines else result.returncode}")
        path.unlink(missing_ok=True)
        report["removed"] = True
        if problems:
            report["error"] = problems[0]
        else:
            self.runner(["systemctl", "--user", "daemon-reload"])
        return self._report(report, as_json, f"Removed {path}" + (
            f" ({problems[0]}; if it still runs: systemctl --user stop codebuddy, then "
            "systemctl --user daemon-reload)" if problems else "") + "\n", status=0)

    def _report(self, report: dict[str, Any], as_json: bool, text: str, status: int | None = None) -> int:
        code = status if status is not None else (0 if report.get("enabled") else 1)
        if as_json:
            self.out.write(json.dumps(report) + "\n")
        else:
            (self.out if code == 0 else self.err).write(text)
        return code


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or str(os.getuid())


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint.rstrip('/')}/api/v1/health", timeout=2.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None,
         out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one subcommand; the exit status."""
    environ = os.environ if environ is None else environ
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    user_home = Path(environ["HOME"]) if environ.get("HOME") else None
    commands = Commands(default_home(environ), environ, out, err, user_home=user_home)
    try:
        if args.command == "ps":
            return commands.ps(args.json, args.kind)
        if args.command == "kill":
            return commands.kill(args.worker)
        if args.command == "logs":
            return commands.logs(args.worker, args.type, args.tail, args.follow)
        if args.action == "status":
            return commands.status(args.json)
        if args.action == "stop":
            return commands.stop()
        if args.action == "start":
            return commands.start(args.port, args.host, args.cwd)
        if args.action == "install":
            return commands.install(args.port, args.host, args.cwd, args.json)
        if args.action == "uninstall":
            return commands.uninstall(args.json)
        return commands.restart(args.port, args.host, args.cwd)
    except CliError as exc:
        err.write(f"codebuddy: {exc}\n")
        return 1
