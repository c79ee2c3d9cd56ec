"""Tests for ``codebuddy.process.native``: posix_spawn with setsid, chdir and file actions."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from codebuddy.process import native

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="needs glibc 2.29+")
ENV = [b"PATH=/usr/bin:/bin", b"LANG=C.UTF-8"]


def run(argv: list[str], **kwargs: object) -> tuple[int, bytes]:
    """(exit status, stdout+stderr) of ``argv`` started by native.spawn."""
    read, write = os.pipe()
    try:
        actions = [("dup2", write, 1), ("dup2", write, 2), *kwargs.pop("actions", [])]  # type: ignore[misc]
        pid = native.spawn(argv[0], argv, ENV, actions=actions, **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks)


def test_new_session_and_cwd(tmp_path: Path) -> None:
    """The child leads its own session and group, in the directory asked for."""
    code, out = run(["/bin/sh", "-c", "pwd; ps -o pid=,pgid=,sid= -p $$"], cwd=str(tmp_path))
    assert code == 0
    cwd, ids = out.decode().splitlines()
    assert cwd == str(tmp_path)
    pid, pgid, sid = ids.split()
    assert pid == pgid == sid


def test_exec_failure_is_an_oserror_and_leaves_no_child() -> None:
    """A missing program raises ENOENT at once; glibc reaps the failed child itself."""
    with pytest.raises(OSError) as caught:
        native.spawn("/nonexistent/program", ["x"], ENV)
    assert caught.value.errno == errno.ENOENT
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_only_the_given_descriptors_reach_the_child() -> None:
    """An inheritable descriptor of the parent is closed in the child (closefrom or explicit closes)."""
    leak_r, leak_w = os.pipe()
    os.set_inheritable(leak_w, True)
    try:
        actions = [("closefrom", 3)] if native.CLOSEFROM else [("close", leak_w), ("close", leak_r)]
        code, out = run(["/bin/sh", "-c", f"if [ -e /proc/self/fd/{leak_w} ]; then echo LEAK; fi"],
                        actions=actions)
    finally:
        os.close(leak_r)
        os.close(leak_w)
    assert code == 0
    assert b"LEAK" not in out


def test_signals_are_reset_to_default() -> None:
    """Python ignores SIGPIPE; the child must not (``yes | head`` has to end)."""
    code, out = run(["/bin/sh", "-c", "yes | head -n 2"])
    assert code == 0 and out == b"y\ny\n"
