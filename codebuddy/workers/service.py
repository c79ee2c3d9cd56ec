# -*- test-case-name: tests.workers.test_service -*-
"""
The daemon as a worker: it registers itself in ``<home>/sessions/<pid>.json`` while it runs
and writes its structured telemetry log under ``<home>/logs/<YYYY-MM-DD>/``.

Identity (acp-codebuddy.md §2.13 environment):

- ``kind``: ``$CODEBUDDY_SESSION_KIND`` when it is one of ``interactive | bg | daemon |
  daemon-worker``; otherwise ``interactive``. A ``twistd -n codebuddy`` (or ``codebuddy serve``)
  started by hand is a foreground server, which CodeBuddy counts as interactive. Whatever
  starts codebuddy as *the* daemon (``/daemon/start``, ``codebuddy daemon start``, a systemd
  unit with ``Environment=CODEBUDDY_SESSION_KIND=daemon``) says so. Guessing "daemon" from the
  environment (no tty, ``INVOCATION_ID``) is unreliable: terminal emulators run as systemd
  units too.
- ``name``: ``$CODEBUDDY_SESSION_NAME``, else ``daemon`` for the daemon kind and
  ``<kind>-<pid>`` otherwise.
- ``logPath``: ``$CODEBUDDY_SESSION_LOG``, the file the process's stdout/stderr go to (the
  ``process`` log type), when whoever started it says so.

The telemetry log is one JSON object per line (``timestamp``, ``level``, ``namespace``,
``pid``, ``message``, the event's JSON-able fields, ``traceback`` for failures), appended
with one ``write`` per line on an ``O_APPEND`` descriptor (several processes share a
workspace's file, and their lines never interleave), mode 0600, in a new file each day.
Fields whose names suggest secrets are left out.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.logger import ILogObserver, Logger, formatEvent
from zope.interface import implementer

from codebuddy import __version__
from codebuddy.workers.logs import project_id
from codebuddy.workers.registry import KINDS, Registry, WorkerRecord, own_start_time

__all__ = ["RegistryService", "TelemetryLog", "identity"]

_SECRET = re.compile(r"(PASSWORD|SECRET|TOKEN|API_?KEY|PRIVATE_KEY|CREDENTIAL|AUTHORIZATION|COOKIE)", re.I)
_MAX_FIELD = 4096


def identity(environ: Mapping[str, str], pid: int) -> tuple[str, str, str | None]:
    """``(kind, name, logPath)`` of this process from its environment (see the module docstring)."""
    kind = (environ.get("CODEBUDDY_SESSION_KIND") or "").strip()
    if kind not in KINDS:
        kind = "interactive"
    name = (environ.get("CODEBUDDY_SESSION_NAME") or "").strip()
    if not name:
        name = "daemon" if kind == "daemon" else f"{kind}-{pid}"
    log_path = (environ.get("CODEBUDDY_SESSION_LOG") or "").strip() or None
    return kind, name, log_path


@implementer(ILogObserver)
class TelemetryLog:
    """A log observer appending JSON lines to ``<logs>/<YYYY-MM-DD>/<projectId>.log``."""

    def __init__(self, logs_dir: Path, workspace: str, pid: int | None = None) -> None:
        self.logs_dir = logs_dir
        self.file_name = f"{project_id(workspace)}.log"
        self.pid = os.getpid() if pid is None else pid
        self.path: Path | None = None
        self.failures = 0
        self._day: str | None = None
        self._fd: int | None = None

    def path_for(self, day: str) -> Path:
        return self.logs_dir / day / self.file_name

    def open(self, when: float | None = None) -> Path:
        """Open (create) the file for the day of ``when`` (default: now)."""
        day = time.strftime("%Y-%m-%d", time.localtime(time.time() if when is None else when))
        if day != self._day or self._fd is None:
            self.close()
            path = self.path_for(day)
            self.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.parent.mkdir(exist_ok=True, mode=0o700)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._day = day
            self.path = path
        assert self.path is not None
        return self.path

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            when = float(event.get("log_time") or time.time())
            self.open(when)
            assert self._fd is not None
            os.write(self._fd, self.line(event, when))
        except Exception:  # noqa: BLE001 - a log observer must never raise (it would be dropped)
            self.failures += 1

    def line(self, event: dict[str, Any], when: float) -> bytes:
        """The JSON line for ``event``."""
        level = event.get("log_level")
        record: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z",
            "level": getattr(level, "name", None) or "info",
            "namespace": event.get("log_namespace"),
            "pid": self.pid,
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if key.startswith("log_") or key in record or _SECRET.search(key):
                continue
            record[key] = _jsonable(value)
        failure = event.get("log_failure")
        if failure is not None:
            try:
                record["traceback"] = failure.getTraceback()
            except Exception:  # noqa: BLE001
                record["traceback"] = repr(failure)
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=repr)
        return (text + "\n").encode("utf-8", "replace")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= _MAX_FIELD else value[:_MAX_FIELD] + "…"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:_MAX_FIELD]
    return value if len(text) <= _MAX_FIELD else text[:_MAX_FIELD] + "…"


class RegistryService(Service):
    """
    Registers this process while the service runs, and adds its telemetry observer.

    ``endpoint`` returns the daemon's URL once it listens (None before); call
    :meth:`listening` then, to rewrite the file with it. Add this service before the others so
    that their start-up lines reach the telemetry log.
    """

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        *,
        session_id: str,
        workspace: str,
        environ: Mapping[str, str],
        endpoint: Callable[[], str | None],
        clock: Any,
        publisher: Any,
        pid: int | None = None,
        telemetry: TelemetryLog | None = None,
    ) -> None:
        self.registry = registry
        self.environ = environ
        self._fixed_pid = pid
        self.session_id = session_id
        self.workspace = workspace
        self.endpoint = endpoint
        self.clock = clock
        self.publisher = publisher
        if telemetry is None:
            telemetry = TelemetryLog(registry.home / "logs", workspace, pid)
        self.telemetry = telemetry
        self.started_at: int | None = None
        self.record: WorkerRecord | None = None
        self._identify()

    def _identify(self) -> None:
        # Again at start: twistd builds the service before it forks into the background, so
        # the pid of a daemonized twistd is only known once the service starts.
        self.pid = os.getpid() if self._fixed_pid is None else self._fixed_pid
        kind = (self.environ.get("CODEBUDDY_SESSION_KIND") or "").strip()
        if kind and kind not in KINDS:
            self.log.warn("CODEBUDDY_SESSION_KIND={kind!r} is not one of {kinds}; registering as interactive",
                          kind=kind, kinds=", ".join(KINDS))
        self.kind, self.name, self.log_path = identity(self.environ, self.pid)
        self.telemetry.pid = self.pid
        self.process_start_time = own_start_time(self.pid)

    def make_record(self) -> WorkerRecord:
        """What this process writes about itself now."""
        if self.started_at is None:
            self.started_at = int(self.clock.seconds() * 1000)
        return WorkerRecord(
            pid=self.pid,
            session_id=self.session_id,
            cwd=self.workspace,
            started_at=self.started_at,
            kind=self.kind,
            name=self.name,
            endpoint=self.endpoint(),
            version=__version__,
            hostname=socket.gethostname(),
            log_path=self.log_path,
            mode="local",
            process_start_time=self.process_start_time,
        )

    def startService(self) -> None:  # noqa: N802 (Twisted's name)
        super().startService()
        self._identify()
        try:
            self.telemetry.open()
            self.publisher.addObserver(self.telemetry)
        except OSError as exc:
            self.log.warn("Cannot open the telemetry log under {dir}: {error}",
                          dir=str(self.telemetry.logs_dir), error=str(exc))
        path = self._write()
        if path is not None:
            self.log.info("Registered as worker {pid} ({kind} {name!r}) in {path}",
                          pid=self.pid, kind=self.kind, name=self.name, path=str(path))

    def listening(self) -> None:
        """The endpoint is known now: record it."""
        if self.running and self._write() is not None:
            assert self.record is not None
            self.log.info("Worker {pid} serves {endpoint}", pid=self.pid, endpoint=self.record.endpoint)

    def _write(self) -> Path | None:
        self.record = self.make_record()
        try:
            return self.registry.register(self.record)
        except OSError as exc:
            self.log.error("Cannot register worker {pid} in {dir}: {error}",
                           pid=self.pid, dir=str(self.registry.directory), error=str(exc))
            return None

    def stopService(self) -> None:  # noqa: N802
        super().stopService()
        try:
            self.registry.unregister(self.pid, self.process_start_time)
        except OSError as exc:
            self.log.error("Cannot remove registry file of worker {pid}: {error}", pid=self.pid, error=str(exc))
        else:
            self.log.info("Unregistered worker {pid}", pid=self.pid)
        self.publisher.removeObserver(self.telemetry)
        self.telemetry.close()
