# -*- test-case-name: tests.workers.test_relaunch -*-
"""
``python -m codebuddy.workers.relaunch PID TIMEOUT -- ARGV...``: wait until process ``PID`` has
exited, then replace this process with ``ARGV``.

This is how a daemon that is not a systemd service restarts itself (``POST
/api/v1/daemon/restart`` answered by the daemon to restart): it starts this helper detached, in its
own session, with its log as stdout and stderr, answers, and stops; once it is gone (its port and
pid file free), the helper becomes the new daemon. A daemon still alive after ``TIMEOUT`` seconds
is left alone and nothing is started (exit status 1, reason in the log).
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Sequence

__all__ = ["main", "wait_exit"]

POLL = 0.05


def wait_exit(pid: int, timeout: float) -> bool:
    """Whether ``pid`` exited within ``timeout`` seconds (a pidfd where there is one, else polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        fd = None
    if fd is not None:
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(max(0, int(timeout * 1000))))
        finally:
            os.close(fd)
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if len(args) < 4 or args[2] != "--" or not args[0].isdigit():
        sys.stderr.write("usage: python -m codebuddy.workers.relaunch PID TIMEOUT -- ARGV...\n")
        return 2
    pid, timeout, command = int(args[0]), float(args[1]), args[3:]
    if not wait_exit(pid, timeout):
        sys.stderr.write(f"codebuddy: restart abandoned: the daemon (pid {pid}) was still running after "
                         f"{timeout:g} s\n")
        return 1
    sys.stderr.write(f"codebuddy: restarting: {' '.join(command)}\n")
    sys.stderr.flush()
    try:
        os.execv(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"codebuddy: restart failed: cannot run {command[0]}: {exc.strerror or exc}\n")
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
