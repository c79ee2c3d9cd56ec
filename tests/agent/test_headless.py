"""``codebuddy -p`` and ``codebuddy --bg`` as a user runs them, against the fake model on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.agent.fake_openai import FakeOpenAI, fake_openai, text_reply, tool_reply  # noqa: F401
from tests.e2e.conftest import REPO, daemon_env

pytestmark = pytest.mark.e2e


def run_cli(home: Path, cwd: Path, env: dict[str, str], *argv: str) -> Any:
    return deferToThread(subprocess.run, [sys.executable, "-m", "codebuddy.cli", *argv], capture_output=True,
                         text=True, timeout=60, cwd=cwd,
                         env=daemon_env({"CODEBUDDY_CONFIG_DIR": str(home), "PYTHONPATH": str(REPO), **env}))


@pytest_twisted.ensureDeferred
async def test_print_text_json_and_stream_json(tmp_path: Path, fake_openai: FakeOpenAI) -> None:  # noqa: F811
    home, ws = tmp_path / "home", tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("alpha\n")
    env = fake_openai.environ()
    fake_openai.enqueue(tool_reply("Read", {"file_path": "notes.txt"}), text_reply("It says alpha."))
    done = await run_cli(home, ws, env, "-p", "what is in notes.txt?")
    assert (done.returncode, done.stdout, done.stderr) == (0, "It says alpha.\n", "")
    assert "alpha" in fake_openai.requests[1].messages[-1]["content"]  # the Read result went back to the model

    fake_openai.enqueue(tool_reply("Bash", {"command": "echo made > out.txt"}), text_reply("Made it."))
    done = await run_cli(home, ws, env, "-p", "make out.txt", "--output-format", "json")
    result = json.loads(done.stdout)
    assert (done.returncode, result["type"], result["subtype"]) == (0, "result", "success")
    assert result["result"] == "Made it."
    assert [d["tool_name"] for d in result["permission_denials"]] == ["Bash"]  # default mode cannot ask
    assert not (ws / "out.txt").exists()

    fake_openai.enqueue(tool_reply("Bash", {"command": "echo made > out.txt"}), text_reply("Made it."))
    done = await run_cli(home, ws, env, "-p", "make out.txt", "--output-format", "stream-json", "-y",
                         "--session-id", result["session_id"])
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(x["type"], x.get("subtype")) for x in lines] == [
        ("system", "init"), ("assistant", None), ("user", None), ("assistant", None), ("result", "success")]
    assert lines[0]["permissionMode"] == "bypassPermissions"
    assert lines[1]["message"]["content"][-1]["name"] == "Bash"
    assert lines[2]["message"]["content"][0]["is_error"] is False
    assert (ws / "out.txt").read_text() == "made\n"
    assert lines[-1]["session_id"] == result["session_id"]
    # the session continued: the earlier request is in the history sent to the model
    assert any(m.get("content") == "make out.txt" for m in fake_openai.requests[-1].messages[1:-3])


@pytest_twisted.ensureDeferred
async def test_errors(tmp_path: Path, fake_openai: FakeOpenAI) -> None:  # noqa: F811
    ws = tmp_path / "ws"
    ws.mkdir()
    done = await run_cli(tmp_path / "home", ws, {}, "-p", "hi")
    assert done.returncode == 1 and "CODEBUDDY_BASE_URL" in done.stderr
    done = await run_cli(tmp_path / "home", ws, {}, "-p")
    assert done.returncode == 2
    from tests.agent.fake_openai import ErrorReply

    fake_openai.enqueue(ErrorReply(401, "bad key"))
    done = await run_cli(tmp_path / "home", ws, fake_openai.environ(api_key="sk-secret"), "-p", "hi")
    assert done.returncode == 1 and "MODEL_AUTH_FAILED" not in done.stdout
    assert "sk-secret" not in done.stderr and "the run failed" in done.stderr


@pytest_twisted.ensureDeferred
async def test_background_worker(tmp_path: Path, fake_openai: FakeOpenAI) -> None:  # noqa: F811
    home, ws = tmp_path / "home", tmp_path / "ws"
    ws.mkdir()
    fake_openai.enqueue(text_reply("All done."))
    done = await run_cli(home, ws, fake_openai.environ(), "--bg", "--name", "tidy", "tidy up")
    assert done.returncode == 0 and done.stdout.startswith("Started tidy (pid ")
    log = home / "logs" / "tidy.log"

    def finished() -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if log.exists() and "All done." in log.read_text():
                return True
            time.sleep(0.05)
        return False

    assert await deferToThread(finished)
    assert fake_openai.requests[0].last_user_text == "tidy up"
    done = await run_cli(home, ws, {}, "--bg", "--name", "bad name!", "x")
    assert done.returncode == 2
