"""The restart helper: waits for the old daemon to exit, then becomes the new one (same pid)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from codebuddy.workers.relaunch import main, wait_exit
from tests.workers.helpers import end, sleeper

HELPER = [sys.executable, "-m", "codebuddy.workers.relaunch"]


def test_wait_exit() -> None:
    child = sleeper()
    try:
        assert wait_exit(child.pid, 0.05) is False
        end(child)
        assert wait_exit(child.pid, 5) is True
    finally:
        end(child)


def test_runs_the_command_once_the_process_has_gone(tmp_path: Path) -> None:
    old = sleeper()
    marker = tmp_path / "pid"
    try:
        helper = subprocess.Popen([*HELPER, str(old.pid), "30", "--", "/bin/sh", "-c", f"echo $$ > {marker}"],
                                  stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
        assert wait_exit(helper.pid, 0.3) is False  # still waiting for the old process
        assert not marker.exists()
        end(old)
        assert helper.wait(10) == 0
        assert marker.read_text().strip() == str(helper.pid)  # exec: the new daemon keeps the helper's pid
        assert b"codebuddy: restarting: /bin/sh -c" in helper.stderr.read()  # type: ignore[union-attr]
    finally:
        end(old)


def test_gives_up_when_the_process_stays(tmp_path: Path) -> None:
    old = sleeper()
    try:
        assert main([str(old.pid), "0.05", "--", "/bin/sh", "-c", f"touch {tmp_path / 'started'}"]) == 1
        assert not (tmp_path / "started").exists()
    finally:
        end(old)
    assert main(["x", "1", "--", "true"]) == 2
    assert main(["1", "1", "true"]) == 2
