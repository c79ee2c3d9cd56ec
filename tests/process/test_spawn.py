"""Tests for ``codebuddy.process.spawn`` with real child processes on the real reactor."""

from __future__ import annotations

import os
import signal
import stat
import sys
from typing import Any

import psutil
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from codebuddy.process.spawn import Child, ExitInfo, Spawner, SpawnError, StdinClosedError

WAIT = 10


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Recorder:
    """A ChildProtocol collecting output per stream and the exit, with Deferreds to wait on."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes]] = []
        self.infos: list[ExitInfo] = []
        self.done: Deferred[ExitInfo] = Deferred()
        self.waiting: tuple[bytes, Deferred[None]] | None = None
        self.bytes = 0
        self.after_exit_output = False

    def output(self, stream: str, data: bytes) -> None:
        if self.infos:
            self.after_exit_output = True
        self.chunks.append((stream, data))
        self.bytes += len(data)
        if self.waiting is not None and self.waiting[0] in self.data("pty") + self.data("stdout"):
            d = self.waiting[1]
            self.waiting = None
            d.callback(None)

    def exited(self, info: ExitInfo) -> None:
        self.infos.append(info)
        self.done.callback(info)

    def data(self, stream: str) -> bytes:
        return b"".join(d for s, d in self.chunks if s == stream)

    def wait_for(self, needle: bytes) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if needle in self.data("pty") + self.data("stdout"):
            d.callback(None)
        else:
            self.waiting = (needle, d)
        return d.addTimeout(WAIT, _reactor())

    async def finished(self) -> ExitInfo:
        return await self.done.addTimeout(WAIT, _reactor())


@pytest.fixture
def spawner(tmp_path: Any) -> Any:
    s = Spawner(_reactor(), environ={"PATH": os.environ["PATH"], "HOME": str(tmp_path)}, default_cwd=str(tmp_path),
                kill_grace=0.5)
    s.startService()
    yield s
    for c in s.children():
        c.signal(signal.SIGKILL)


async def run(spawner: Spawner, argv: list[str], **kw: Any) -> tuple[Recorder, ExitInfo]:
    rec = Recorder()
    spawner.spawn(argv, protocol=rec, **kw)
    info = await rec.finished()
    return rec, info


@pytest_twisted.ensureDeferred
async def test_echo_output_and_exit_zero(spawner: Spawner) -> None:
    """echo's output arrives on stdout, then exited with code 0 and E2B's status text, exactly once."""
    rec, info = await run(spawner, ["echo", "hello"])
    assert rec.data("stdout") == b"hello\n"
    assert info == ExitInfo(exit_code=0, signal=None)
    assert info.status == "exit status 0"
    assert len(rec.infos) == 1 and not rec.after_exit_output
    assert spawner.children() == []


@pytest_twisted.ensureDeferred
async def test_exit_codes(spawner: Spawner) -> None:
    """Non-zero exit codes are reported as such."""
    for code in (1, 3, 255):
        _, info = await run(spawner, ["sh", "-c", f"exit {code}"])
        assert (info.exit_code, info.signal, info.status) == (code, None, f"exit status {code}")


@pytest_twisted.ensureDeferred
async def test_stderr_separated(spawner: Spawner) -> None:
    """stdout and stderr arrive on their own streams."""
    rec, _ = await run(spawner, ["sh", "-c", "echo out; echo err >&2"])
    assert rec.data("stdout") == b"out\n"
    assert rec.data("stderr") == b"err\n"


@pytest_twisted.ensureDeferred
async def test_output_before_exit_when_process_exits_first(spawner: Spawner) -> None:
    """A lot of output written just before exiting is all delivered before exited."""
    rec, info = await run(spawner, [sys.executable, "-c", "import os; os.write(1, b'x' * 300000); os._exit(4)"])
    assert rec.data("stdout") == b"x" * 300000
    assert info.exit_code == 4 and not rec.after_exit_output


@pytest_twisted.ensureDeferred
async def test_stdin_to_cat_then_close(spawner: Spawner) -> None:
    """Data written to stdin comes back from cat; close_stdin makes cat exit; later writes raise."""
    rec = Recorder()
    child = spawner.spawn(["cat"], protocol=rec)
    child.write(b"line one\n")
    await rec.wait_for(b"line one\n")
    child.write(b"two")
    child.close_stdin()
    child.close_stdin()  # idempotent
    info = await rec.finished()
    assert rec.data("stdout") == b"line one\ntwo"
    assert info.exit_code == 0
    with pytest.raises(StdinClosedError):
        child.write(b"late")


@pytest_twisted.ensureDeferred
async def test_binary_round_trip_large(spawner: Spawner) -> None:
    """Every byte value, 2 MB of it, goes through cat unchanged (stdin is buffered by the transport)."""
    payload = bytes(range(256)) * 8192
    rec = Recorder()
    child = spawner.spawn(["cat"], protocol=rec)
    child.write(payload)
    child.close_stdin()
    await rec.finished()
    assert rec.data("stdout") == payload


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


async def _two_sleeps(spawner: Spawner, **kw: Any) -> tuple[Child, Recorder, list[int]]:
    rec = Recorder()
    child = spawner.spawn(["sh", "-c", "sleep 1000 & sleep 1000 & echo started; wait"], protocol=rec, **kw)
    await rec.wait_for(b"started")
    # both background jobs are forked before "started" is printed (they may still be exec'ing sleep)
    sleeps = [p.pid for p in psutil.Process(child.pid).children()]
    assert len(sleeps) == 2
    return child, rec, sleeps


@pytest_twisted.ensureDeferred
async def test_own_process_group_and_session(spawner: Spawner) -> None:
    """A pipe child leads its own group and session, distinct from the daemon's."""
    rec = Recorder()
    child = spawner.spawn(["sh", "-c", "echo ready; exec sleep 1000"], protocol=rec)
    await rec.wait_for(b"ready")
    assert os.getpgid(child.pid) == child.pid == child.pgid
    assert os.getsid(child.pid) == child.pid
    assert os.getpgid(child.pid) != os.getpgrp()
    child.signal(signal.SIGKILL, group=False)
    info = await rec.finished()
    assert info.signal == signal.SIGKILL


@pytest_twisted.ensureDeferred
async def test_signal_right_after_spawn_is_not_lost(spawner: Spawner) -> None:
    """A group signal sent before the child has become a group leader still kills it."""
    for kw in ({}, {"cwd": os.getcwd()}):
        rec = Recorder()
        spawner.spawn(["sleep", "1000"], protocol=rec, **kw).signal(signal.SIGKILL)
        info = await rec.finished()
        assert info.signal == signal.SIGKILL


@pytest_twisted.ensureDeferred
async def test_signal_group_kills_grandchildren(spawner: Spawner) -> None:
    """signal() reaches the whole group: both background sleeps die with the shell."""
    child, rec, sleeps = await _two_sleeps(spawner)
    child.signal(signal.SIGTERM)
    info = await rec.finished()
    assert info == ExitInfo(exit_code=None, signal=signal.SIGTERM)
    assert info.status == "signal: terminated"
    psutil.wait_procs([psutil.Process(p) for p in _alive(sleeps)], timeout=5)
    assert _alive(sleeps) == []
    child.signal(signal.SIGTERM)  # after exit: a no-op, not an error


@pytest_twisted.ensureDeferred
async def test_signal_leader_only_leaves_grandchildren(spawner: Spawner) -> None:
    """group=False signals only the leader; the grandchildren keep running (then get cleaned up)."""
    child, rec, sleeps = await _two_sleeps(spawner)
    child.signal(signal.SIGKILL, group=False)
    assert len(_alive(sleeps)) == 2
    for p in sleeps:
        os.kill(p, signal.SIGKILL)
    info = await rec.finished()
    assert info.signal == signal.SIGKILL


@pytest_twisted.ensureDeferred
async def test_timeout_kills_group(spawner: Spawner) -> None:
    """timeout SIGKILLs the whole group and the exit info says so."""
    child, rec, sleeps = await _two_sleeps(spawner, timeout=0.3)
    info = await rec.finished()
    assert info.signal == signal.SIGKILL and info.exit_code is None
    assert info.status == "signal: killed"
    assert child.timed_out
    psutil.wait_procs([psutil.Process(p) for p in _alive(sleeps)], timeout=5)
    assert _alive(sleeps) == []


def test_spawn_errors(spawner: Spawner, tmp_path: Any) -> None:
    """Missing command, non-executable file, directory and missing cwd raise SpawnError synchronously."""
    rec = Recorder()
    with pytest.raises(SpawnError, match=r"No such file or directory: 'nosuchcmd'"):
        spawner.spawn(["nosuchcmd"], protocol=rec)
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(SpawnError, match="Permission denied"):
        spawner.spawn(["./script.sh"], protocol=rec)
    with pytest.raises(SpawnError, match="Permission denied"):
        spawner.spawn(["script.sh"], env={"PATH": str(tmp_path)}, protocol=rec)
    with pytest.raises(SpawnError, match="No such file or directory"):
        spawner.spawn(["./nope"], protocol=rec)
    with pytest.raises(SpawnError, match="does not exist"):
        spawner.spawn(["true"], cwd=str(tmp_path / "missing"), protocol=rec)
    with pytest.raises(SpawnError, match="empty"):
        spawner.spawn([], protocol=rec)
    with pytest.raises(SpawnError, match="Is a directory"):
        spawner.spawn([str(tmp_path)], protocol=rec)
    for argv, env, cwd in [
        (["echo", "a\0b"], {}, None),
        (["true"], {"A": "x\0y"}, None),
        (["true"], {"A=B": "x"}, None),
        (["true"], {"": "x"}, None),
        (["true"], {}, str(tmp_path) + "\0x"),
    ]:
        with pytest.raises(SpawnError, match="NUL|invalid environment"):
            spawner.spawn(argv, env=env, cwd=cwd, protocol=rec)
    assert spawner.children() == [] and rec.infos == []


@pytest_twisted.ensureDeferred
async def test_relative_executable_resolved_against_cwd(spawner: Spawner, tmp_path: Any) -> None:
    """./script runs from the child's cwd, which is also the child's working directory."""
    sub = tmp_path / "sub"
    sub.mkdir()
    script = sub / "script.sh"
    script.write_text("#!/bin/sh\npwd\necho \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    rec, info = await run(spawner, ["./script.sh", "a b", "c"], cwd=str(sub))
    assert rec.data("stdout") == f"{sub}\na b c\n".encode()
    assert info.exit_code == 0


@pytest_twisted.ensureDeferred
async def test_cwd_same_as_daemon(spawner: Spawner) -> None:
    """The daemon's own cwd works too (the posix_spawn path)."""
    rec, _ = await run(spawner, ["pwd"], cwd=os.getcwd())
    assert rec.data("stdout") == os.getcwd().encode() + b"\n"


@pytest_twisted.ensureDeferred
async def test_env_merge_last_wins(tmp_path: Any) -> None:
    """The child env is the spawner's environ updated with env=; the per-call value wins."""
    spawner = Spawner(_reactor(), environ={"PATH": os.environ["PATH"], "A": "base", "B": "base"},
                      default_cwd=str(tmp_path))
    rec, _ = await run(spawner, ["sh", "-c", 'echo "$A $B $C ${TERM:-none}"'], env={"B": "call", "C": "new"})
    assert rec.data("stdout") == b"base call new none\n"


@pytest_twisted.ensureDeferred
async def test_pty_size_and_resize(spawner: Spawner) -> None:
    """A PTY child sees the given size from the start, and the new one after resize (plus TERM)."""
    rec = Recorder()
    child = spawner.spawn(["sh", "-c", 'stty size; echo "T=$TERM"; read x; stty size'], pty=(100, 30), protocol=rec)
    await rec.wait_for(b"T=xterm-256color")
    assert child.pty and os.getsid(child.pid) == child.pid
    assert b"30 100" in rec.data("pty")
    assert os.getpgid(child.pid) == child.pid
    child.resize(132, 43)
    child.write(b"go\n")
    info = await rec.finished()
    assert rec.data("pty").rstrip().endswith(b"43 132")
    assert info.exit_code == 0
    assert {s for s, _ in rec.chunks} == {"pty"}


@pytest_twisted.ensureDeferred
async def test_pty_is_the_controlling_terminal(spawner: Spawner, tmp_path: Any) -> None:
    """The tty is the child's controlling terminal (``/dev/tty`` opens, job control works) and the
    child is in the directory asked for."""
    rec = Recorder()
    spawner.spawn(["sh", "-c", "pwd; echo via-dev-tty > /dev/tty && tty"], cwd="/", pty=(80, 24), protocol=rec)
    info = await rec.finished()
    out = rec.data("pty").decode()
    assert info.exit_code == 0, out
    assert out.splitlines()[0].strip() == "/"
    assert "via-dev-tty" in out and "/dev/pts/" in out


@pytest_twisted.ensureDeferred
async def test_pty_close_stdin_sends_eof(spawner: Spawner) -> None:
    """close_stdin on a PTY types ^D, which ends cat's input."""
    rec = Recorder()
    child = spawner.spawn(["cat"], pty=(80, 24), protocol=rec)
    child.write(b"abc\n")
    await rec.wait_for(b"abc\r\nabc\r\n")
    child.close_stdin()
    info = await rec.finished()
    assert info.exit_code == 0
    with pytest.raises(ValueError):
        spawner.spawn(["true"], protocol=Recorder()).resize(1, 1)


@pytest_twisted.ensureDeferred
async def test_pause_resume_no_bytes_lost(spawner: Spawner) -> None:
    """While paused no output is delivered (the child blocks); after resume every byte arrives."""
    rec = Recorder()
    child = spawner.spawn(["head", "-c", "5000000", "/dev/zero"], protocol=rec)
    child.pause_output()
    child.pause_output()  # idempotent
    # The child cannot finish while paused: the 64 KiB pipe fills up. Wait with a timer, not a sleep.
    d: Deferred[None] = Deferred()
    _reactor().callLater(0.3, d.callback, None)
    await d
    assert rec.bytes < 5000000 and child.running
    seen = rec.bytes
    d2: Deferred[None] = Deferred()
    _reactor().callLater(0.1, d2.callback, None)
    await d2
    assert rec.bytes == seen
    child.resume_output()
    info = await rec.finished()
    assert rec.bytes == 5000000 and rec.data("stdout") == b"\0" * 5000000
    assert info.exit_code == 0


@pytest_twisted.ensureDeferred
async def test_terminate_and_stop_service_kill_after_grace(spawner: Spawner) -> None:
    """stopService SIGTERMs every group; a child trapping SIGTERM is SIGKILLed after kill_grace."""
    stubborn = Recorder()
    polite = Recorder()
    c1 = spawner.spawn(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"], protocol=stubborn)
    c2 = spawner.spawn(["sleep", "1000"], protocol=polite)
    await stubborn.wait_for(b"ready")
    await spawner.stopService().addTimeout(WAIT, _reactor())
    assert c1.exit_info is not None and c1.exit_info.signal == signal.SIGKILL
    assert c2.exit_info == ExitInfo(exit_code=None, signal=signal.SIGTERM)
    assert spawner.children() == []
    assert (await c1.terminate()) == c1.exit_info  # already ended: fires at once


@pytest_twisted.ensureDeferred
async def test_background_holder_does_not_block_exit(spawner: Spawner) -> None:
    """A leader that exits while a grandchild keeps stdout open still gets exited (after the drain time)."""
    spawner.drain_timeout = 0.2
    rec, info = await run(spawner, ["sh", "-c", "sleep 1000 & echo $!; exit 5"])
    assert info.exit_code == 5
    pid = int(rec.data("stdout").split()[0])
    assert _alive([pid]) == [pid]
    os.killpg(os.getpgid(pid), signal.SIGKILL)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest_twisted.ensureDeferred
async def test_no_fd_or_child_leaks(spawner: Spawner, tmp_path: Any) -> None:
    """200 start/exit cycles (pipes and cwd variants, some PTYs) leave fds and children unchanged."""
    await run(spawner, ["true"])  # warm up lazily created reactor fds
    await run(spawner, ["true"], pty=(80, 24))
    me = psutil.Process()
    before_fds, before_children = _fds(), len(me.children())
    for i in range(200):
        kw: dict[str, Any] = {"pty": (80, 24)} if i % 20 == 0 else {}
        if i % 2:
            kw["cwd"] = os.getcwd()
        _, info = await run(spawner, ["true"], **kw)
        assert info.exit_code == 0
    assert _fds() == before_fds
    assert len(me.children()) == before_children
    assert spawner.children() == []


@pytest_twisted.ensureDeferred
async def test_child_sees_only_0_1_2(spawner: Spawner, tmp_path: Any) -> None:
    """No daemon fd leaks into a child, whichever spawn path (posix_spawn, env -C, PTY fork) is used."""
    extra = open(tmp_path / "held", "wb")  # noqa: SIM115 - an fd the daemon holds open, inheritable
    os.set_inheritable(extra.fileno(), True)
    try:
        # fstat every possible fd (listing /proc/self/fd would itself show the directory's fd)
        code = "import os\nr = []\nfor fd in range(4096):\n try: os.fstat(fd); r.append(fd)\n except OSError: pass\n"
        code += "print(r)"
        assert extra.fileno() > 2
        for kw in ({}, {"cwd": os.getcwd()}, {"pty": (80, 24)}):
            rec, _ = await run(spawner, [sys.executable, "-I", "-c", code], **kw)
            out = rec.data("pty") or rec.data("stdout")
            assert out.strip() == b"[0, 1, 2]", kw
    finally:
        extra.close()


@pytest_twisted.ensureDeferred
async def test_python_shim_fallback_without_setsid(spawner: Spawner, tmp_path: Any) -> None:
    """Without util-linux setsid the Python shim still gives a new group, the cwd and the arguments."""
    spawner._setsid = None
    rec = Recorder()
    child = spawner.spawn(["sh", "-c", 'echo "$1 $(pwd)"; read x || exit 0', "sh", "arg"], protocol=rec)
    await rec.wait_for(b"\n")
    assert os.getpgid(child.pid) == child.pid
    child.close_stdin()
    info = await rec.finished()
    assert rec.data("stdout") == f"arg {tmp_path}\n".encode()
    assert info.exit_code == 0


@pytest_twisted.ensureDeferred
async def test_pid_known_even_when_the_child_is_reaped_during_spawn(spawner: Spawner) -> None:
    """A child that exits before spawnProcess returns is reaped there (Twisted then clears
    transport.pid); the Child still knows its pid, and nothing is left in the table."""
    children = []
    for _ in range(200):
        rec = Recorder()
        child = spawner.spawn(["true"], protocol=rec)
        assert isinstance(child.pid, int) and child.pid > 0
        children.append((child, rec))
    for child, rec in children:
        info = await rec.finished()
        assert info.exit_code == 0 and child.pid > 0
    assert spawner.children() == []
    assert len({child.pid for child, _ in children}) == len(children)


@pytest_twisted.ensureDeferred
async def test_terminate_reaches_jobs_in_their_own_groups(spawner: Spawner) -> None:
    """A shell with job control puts each job in a group of its own; terminate still ends them
    (every group of the child's session), as does the kill after the grace."""
    rec = Recorder()
    child = spawner.spawn(["bash", "-c", "set -m; sleep 1000 & echo job=$!; wait"], protocol=rec)
    await rec.wait_for(b"job=")
    await rec.wait_for(b"\n")
    job = int(rec.data("stdout").split(b"job=")[1].split()[0])
    assert os.getpgid(job) == job != child.pgid  # its own group, in the child's session
    info = await child.terminate(0.5).addTimeout(WAIT, _reactor())
    assert info.signal is not None or info.exit_code is not None
    for _ in range(200):  # the job's end is reported by its parent's reaping, not to us: poll /proc
        if not psutil.pid_exists(job) or psutil.Process(job).status() == psutil.STATUS_ZOMBIE:
            break
        d: Deferred[None] = Deferred()
        _reactor().callLater(0.01, d.callback, None)
        await d
    assert not psutil.pid_exists(job) or psutil.Process(job).status() == psutil.STATUS_ZOMBIE


@pytest_twisted.ensureDeferred
async def test_terminate_kills_what_outlives_the_child(tmp_path: Any) -> None:
    """A job that ignores SIGHUP and SIGTERM still gets the SIGKILL after the grace, although
    the child itself ended at once; stopService waits for that."""
    spawner = Spawner(_reactor(), environ={"PATH": os.environ["PATH"]}, default_cwd=str(tmp_path), kill_grace=0.3,
                      drain_timeout=0.1)
    spawner.startService()
    rec = Recorder()
    spawner.spawn(["bash", "-c", "set -m; (trap '' HUP TERM; exec sleep 1000) & echo job=$!; wait"], protocol=rec)
    await rec.wait_for(b"job=")
    await rec.wait_for(b"\n")
    job = int(rec.data("stdout").split(b"job=")[1].split()[0])
    await spawner.stopService().addTimeout(WAIT, _reactor())
    assert rec.infos, "the child itself ended"
    for _ in range(200):  # the job's parent (gone) does not reap it for us: poll /proc
        if not psutil.pid_exists(job) or psutil.Process(job).status() == psutil.STATUS_ZOMBIE:
            break
        d: Deferred[None] = Deferred()
        _reactor().callLater(0.01, d.callback, None)
        await d
    assert not psutil.pid_exists(job) or psutil.Process(job).status() == psutil.STATUS_ZOMBIE
