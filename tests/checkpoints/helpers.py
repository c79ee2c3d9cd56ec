"""An agent's side of checkpoints, played by hand: user messages, checkpoints, file edits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from codebuddy.checkpoints.store import CheckpointStore
from codebuddy.sessions.store import SessionStore

T0 = 1_750_000_000.0  # seconds: 2025-06-15T15:06:40Z


class ManualClock:
    """Epoch seconds that move only when told (or by ``step`` on every read)."""

    def __init__(self, now: float = T0, step: float = 0.0) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value


class Agent:
    """Writes what the agent loop writes: a user message, then a checkpoint, then guarded edits."""

    def __init__(self, home: Path, workspace: Path, session_id: str, clock: ManualClock | None = None) -> None:
        self.home = home
        self.workspace = workspace
        self.session_id = session_id
        self.clock = clock or ManualClock(step=1.0)
        self.sessions = SessionStore(home, clock=self.clock)
        self.store = CheckpointStore(home, self.sessions, clock=self.clock)

    @property
    def cwd(self) -> str:
        return str(self.workspace)

    def say(self, message_id: str, text: str) -> None:
        """A user message and its checkpoint, then the assistant's reply."""
        self.sessions.append(self.session_id, self.cwd, [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}], "id": message_id}])
        self.store.begin(self.session_id, self.cwd, message_id, text)

    def reply(self, text: str) -> None:
        self.sessions.append(self.session_id, self.cwd, [
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}])

    def write(self, name: str | Path, content: str) -> Path:
        path = self.workspace / name
        self.store.before_change(self.session_id, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        self.store.after_change(self.session_id, path)
        return path

    def delete(self, name: str | Path) -> Path:
        path = self.workspace / name
        self.store.before_change(self.session_id, path)
        path.unlink()
        return path

    def transcript(self) -> Path:
        paths = self.sessions.find(self.session_id)
        assert len(paths) == 1, paths
        return paths[0]

    def items(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.transcript().read_bytes().splitlines() if line.strip()]

    def snapshots(self) -> list[dict[str, Any]]:
        return [item for item in self.items() if item.get("type") == "file-history-snapshot"]

    def history(self) -> Path:
        return self.home / "file-history" / self.session_id

    def backups(self) -> list[str]:
        directory = self.history()
        return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")
                      and ".jsonl.bak-" not in p.name) if directory.exists() else []
