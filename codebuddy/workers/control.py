# -*- test-case-name: tests.workers.test_routes -*-
"""
Ending a local worker: SIGTERM, up to ``grace`` seconds (5) on the injected clock, then SIGKILL.

What is signalled: a worker that leads its process group (``codebuddy --bg`` workers and
daemons start their own session) gets the signal on the whole group, so its children end
with it; a worker inside someone else's group (a shell's job, this daemon's own group) gets
it on its own pid and on its descendants, so that nothing outside the worker is touched.
The processes to wait for are those found when the SIGTERM is sent (the group's members and
the worker's descendants), identified by pid *and* start time, so a pid reused meanwhile is
not waited for or killed. Zombies count as ended.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import psutil
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from codebuddy.web.errors import ApiError

__all__ = ["Terminator"]

GRACE = 5.0
KILL_WAIT = 5.0
POLL = 0.2


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def kill_targets(pid: int) -> tuple[int | None, list[psutil.Process]] | None:
    """
    What ending worker ``pid`` must reach: its process group when it leads one (and it is
    not ours), plus it and all its descendants; never this process. ``(pgid or None,
    processes)``, or None when ``pid`` is already gone.
    """
    try:
        leader = psutil.Process(pid)
        pgid = os.getpgid(pid)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return None
    if not _alive(leader):
        return None
    group = pgid == pid and pgid != os.getpgrp()
    targets = {leader.pid: leader}
    try:
        for child in leader.children(recursive=True):
            targets.setdefault(child.pid, child)
    except psutil.Error:
        pass
    if group:
        for member in _group_members(pgid):
            targets.setdefault(member.pid, member)
    targets.pop(os.getpid(), None)
    return (pgid if group else None), list(targets.values())


def send_signal(signum: int, pgid: int | None, procs: list[psutil.Process]) -> None:
    """``signum`` to the group ``pgid`` (if any) and to each live process of ``procs`` (by
    psutil, which checks the start time: never a reused pid). PermissionError when refused."""
    try:
        if pgid is not None:
            try:
                os.killpg(pgid, signum)
            except ProcessLookupError:
                pass
        for proc in procs:
            if _alive(proc):
                try:
                    proc.send_signal(signum)
                except psutil.NoSuchProcess:
                    pass
    except psutil.AccessDenied as exc:
        raise PermissionError(str(exc)) from None


class Terminator:
    """Ends worker processes (see the module docstring)."""

    log = Logger()

    def __init__(self, clock: IReactorTime, grace: float = GRACE, kill_wait: float = KILL_WAIT,
                 poll: float = POLL) -> None:
        self.clock = clock
        self.grace = grace
        self.kill_wait = kill_wait
        self.poll = poll

    def terminate(self, pid: int) -> Deferred[str | None]:
        """
        End ``pid`` and its group or descendants. Fires with the last signal that was needed
        (``"SIGTERM"`` or ``"SIGKILL"``; None when the process was already gone). Raises
        (synchronously) 403 ``PERMISSION_DENIED`` when the OS refuses the signal; the
        Deferred fails with 409 ``CONFLICT`` when the processes outlive SIGKILL.
        """
        found = kill_targets(pid)
        if found is None:
            return succeed(None)
        pgid, watched = found
        self._send(signal.SIGTERM, pid, pgid, watched)
        self.log.info("Sent SIGTERM to worker {pid} ({what})", pid=pid,
                      what=f"process group {pgid}" if pgid is not None else f"{len(watched)} process(es)")

        result: Deferred[str | None] = Deferred()
        sent = "SIGTERM"
        deadline = self.clock.seconds() + self.grace

        def check() -> None:
            nonlocal sent, deadline
            alive = [p for p in watched if _alive(p)]
            if not alive:
                loop.stop()
                result.callback(sent)
                return
            if self.clock.seconds() < deadline:
                return
            if sent == "SIGTERM":
                sent = "SIGKILL"
                deadline = self.clock.seconds() + self.kill_wait
                try:
                    self._send(signal.SIGKILL, pid, pgid, alive)
                except ApiError as exc:
                    loop.stop()
                    result.errback(exc)
                    return
                self.log.info("Worker {pid} outlived SIGTERM for {grace} s: sent SIGKILL", pid=pid, grace=self.grace)
                return
            loop.stop()
            result.errback(ApiError("CONFLICT", f"Worker {pid} did not exit after SIGKILL",
                                    {"pids": [p.pid for p in alive]}))

        loop = LoopingCall(check)
        loop.clock = self.clock
        loop.start(self.poll, now=True).addErrback(lambda f: None if result.called else result.errback(f))
        return result

    def _send(self, signum: int, pid: int, pgid: int | None, procs: list[Any]) -> None:
        try:
            send_signal(signum, pgid, procs)
        except PermissionError:
            raise ApiError("PERMISSION_DENIED",
                           f"Not allowed to signal worker {pid} (another user's process)") from None
