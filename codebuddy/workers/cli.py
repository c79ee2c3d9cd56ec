# -*- test-case-name: tests.workers.test_cli -*-
"""
The ``codebuddy`` command's worker subcommands (see docs/workers.md, "The codebuddy command").

Synchronous, plain Python: they work on the registry files of ``$CODEBUDDY_CONFIG_DIR`` (or
``~/.codebuddy``) directly, no daemon needed.

- ``ps [--json] [--kind K]``: the live local workers;
- ``kill NAME|PID``: SIGTERM to the worker's group (or pid and descendants), SIGKILL after 5 s;
- ``logs NAME|PID [--type T] [--tail N] [-f]``: a worker's log;
- ``daemon status [--json]`` (exit 0 when running, 3 when stopped, as systemctl),
  ``daemon start [--port P] [--host H] [--cwd DIR]``, ``daemon stop``, ``daemon restart``.
"""

from __future__ import annotations

import argparse
import json
import os
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

from codebuddy.config import default_home
from codebuddy.web.errors import ApiError
from codebuddy.workers.control import _alive, kill_targets, send_signal
from codebuddy.workers.daemon import (
    DEFAULT_PORT,
    LOG_TAIL,
    _hint,
    _size,
    _tail_since,
    daemon_log_path,
    launch,
    start_argv,
    start_env,
)
from codebuddy.workers.logs import DEFAULT_TAIL, LOG_TYPES, POLL_INTERVAL, complete_utf8, read_tail, select_log
from codebuddy.workers.registry import KINDS, LocalWorker, Registry

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
    for action in ("start", "restart"):
        start = dsub.add_parser(action, help=f"{action} the daemon (idempotent)" if action == "start"
                                else "stop, then start on the same port and host")
        start.add_argument("--port", type=int, default=None)
        start.add_argument("--host", default=None)
        start.add_argument("--cwd", default=None, help="the workspace (default: the current directory)")
    dsub.add_parser("stop", help="stop the running daemon")
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
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.home = home
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

    def status(self, as_json: bool) -> int:
        worker = self.daemon()
        if worker is None:
            self.out.write(json.dumps({"status": "stopped"}) + "\n" if as_json else "stopped\n")
            return EXIT_STOPPED
        r = worker.record
        if as_json:
            data = {"status": "running", "pid": r.pid, "endpoint": r.endpoint, "startedAt": r.started_at,
                    "name": r.name}
            self.out.write(json.dumps({k: v for k, v in data.items() if v is not None}) + "\n")
        else:
            self.out.write(f"running: pid {r.pid}, endpoint {r.endpoint or '-'}, started {_started(r.started_at)}\n")
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
    commands = Commands(default_home(environ), environ, out, err)
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
        return commands.restart(args.port, args.host, args.cwd)
    except CliError as exc:
        err.write(f"codebuddy: {exc}\n")
        return 1
