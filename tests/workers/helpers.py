"""Processes and records for the workers tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from codebuddy.workers.registry import WorkerRecord


def start_time(pid: int) -> float:
    return float(psutil.Process(pid).create_time())


def write_record(home: Path, **fields: Any) -> Path:
    """A registry file as another process (CodeBuddy itself, or a test's child) would write it."""
    directory = home / "sessions"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{fields['pid']}.json"
    path.write_text(json.dumps(fields))
    return path


def record_for(pid: int, **fields: Any) -> WorkerRecord:
    """A full record of the live process ``pid``."""
    defaults: dict[str, Any] = {
        "kind": "bg", "name": f"job-{pid}", "cwd": "/ws", "session_id": f"s-{pid}",
        "started_at": int(time.time() * 1000), "process_start_time": start_time(pid),
    }
    defaults.update(fields)
    return WorkerRecord(pid=pid, **defaults)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def sleeper(*, group: int | None = None) -> subprocess.Popen[bytes]:
    """
    ``sleep 60`` in a new session (its own process group), or with ``group``: in process group
    ``group`` of this session (0: a new one it leads). A group can only be joined from its own
    session, hence the second form for a worker with a second process in its group.
    """
    if group is not None:
        return subprocess.Popen(["sleep", "60"], process_group=group)
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def stubborn() -> subprocess.Popen[bytes]:
    """A process in its own session that ignores SIGTERM; returns once the handler is set."""
    code = ("import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    return child


def end(child: subprocess.Popen[bytes]) -> None:
    """Kill and reap a test child (cleanup)."""
    if child.poll() is None:
        try:
            os.kill(child.pid, 9)
        except ProcessLookupError:
            pass
        child.wait()
    if child.stdout is not None:
        child.stdout.close()
