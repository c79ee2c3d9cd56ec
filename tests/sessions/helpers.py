"""Transcript items as CodeBuddy writes them, and files written the way other processes write them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from codebuddy.sessions.transcript import project_id

T0 = 1_750_000_000_000  # ms: 2025-06-15T15:06:40Z


def iso(ms: int) -> str:
    """ISO 8601 text with milliseconds and Z, like CodeBuddy's timestamps."""
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def user(text: str, at: int | None = None, cwd: str | None = "/home/u/app", parts: bool = True,
         **extra: Any) -> dict[str, Any]:
    content: Any = [{"type": "input_text", "text": text}] if parts else text
    item = {"type": "message", "role": "user", "content": content, **extra}
    if at is not None:
        item["timestamp"] = iso(at)
    if cwd is not None:
        item["cwd"] = cwd
    return item


def assistant(text: str, at: int | None = None, **extra: Any) -> dict[str, Any]:
    item = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}], **extra}
    if at is not None:
        item["timestamp"] = iso(at)
    return item


def tool_call(at: int | None = None, output: str = "x" * 200) -> list[dict[str, Any]]:
    """A function_call and its result (the result's output mentions "message" and "role" as text)."""
    call = {"type": "function_call", "name": "Bash", "callId": "c1", "arguments": json.dumps({"command": "ls"})}
    result = {"type": "function_call_result", "callId": "c1", "status": "completed",
              "output": {"type": "text", "text": output + ' {"type":"message","role":"user"}'}}
    if at is not None:
        call["timestamp"] = iso(at)
        result["timestamp"] = iso(at + 1)
    return [call, result]


def line(item: Any) -> bytes:
    return json.dumps(item).encode() + b"\n"


def write_transcript(home: Path, cwd: str, session_id: str, items: list[Any], project: str | None = None) -> Path:
    """``items`` (dicts, or raw bytes/str lines written as they are) into the session's transcript."""
    directory = home / "projects" / (project or project_id(cwd))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{session_id}.jsonl"
    with open(path, "ab") as handle:
        for item in items:
            if isinstance(item, bytes):
                handle.write(item)
            elif isinstance(item, str):
                handle.write(item.encode())
            else:
                handle.write(line(item))
    return path
