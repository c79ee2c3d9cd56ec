# -*- test-case-name: tests.templates.test_recommend -*-
"""
AI task recommendations: ``POST /api/v1/tasks/templates/refresh`` asks the model for templates
suited to the workspace, in the background.

The model gets one request (no tools): the workspace's top-level entries and the start of
its README and memory files, and the instruction to answer a JSON array of templates. The
answer is read leniently (a code fence or text around the array is ignored) and checked
like a user template file; the usable ones are kept with ``source: "ai"`` in
``<home>/tasks/recommendations/<projectId>.json`` with the time they were made, so they
survive restarts. ``status`` is ``idle`` (never asked), ``loading``, ``done`` or ``error``
(with ``error``, the cached ones still listed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from codebuddy.sessions.transcript import project_id
from codebuddy.storage import atomic_write
from codebuddy.templates.catalog import TaskTemplate, parse_user_templates

__all__ = ["Recommendations", "Recommender"]

MAX_TEMPLATES = 8
CONTEXT_LIMIT = 4000
PROMPT = """\
Suggest up to {limit} recurring tasks that would help maintain the software project described below.
Answer with a JSON array only, no prose. Each item: {{"id": kebab-case id, "title": short title,
"description": one sentence, "icon": one emoji, "interval": how often ("1h", "1d", "1w", ...),
"command": "/loop <interval> <the instruction an agent should follow each time>"}}.

Workspace: {cwd}
Top-level entries: {entries}

{context}"""


@attrs.frozen
class Recommendations:
    """The state of the AI recommendations of one workspace."""

    status: str
    templates: list[TaskTemplate] = attrs.Factory(list)
    cached_at: int | None = None
    error: str | None = None


def parse_answer(text: str) -> tuple[list[TaskTemplate], list[str]]:
    """The templates in a model's answer (the first JSON array in it), marked ``source: "ai"``."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return [], ["the answer holds no JSON array"]
    found, warnings = parse_user_templates(text[start:end + 1])
    return [attrs.evolve(t, source="ai") for t in found[:MAX_TEMPLATES]], warnings


class Recommender:
    """Runs and caches the recommendation request per workspace."""

    log = Logger()

    def __init__(self, home: Path, environ: Mapping[str, str], chat: Any, clock: IReactorTime,
                 run_blocking: Callable[..., Deferred[Any]],
                 resolve: Callable[[Mapping[str, str], Path, Path], Any]) -> None:
        self.home = home
        self.environ = environ
        self.chat = chat
        self.clock = clock
        self.run_blocking = run_blocking
        self.resolve = resolve
        self._state: dict[str, Recommendations] = {}

    def _path(self, workspace: Path) -> Path:
        return self.home / "tasks" / "recommendations" / f"{project_id(str(workspace))}.json"

    def _load(self, workspace: Path) -> Recommendations:
        try:
            data = json.loads(self._path(workspace).read_text(encoding="utf-8"))
            found, _warnings = parse_user_templates(json.dumps(data.get("templates", [])))
            return Recommendations("done", [attrs.evolve(t, source="ai") for t in found], int(data["cachedAt"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return Recommendations("idle")

    async def state(self, workspace: Path) -> Recommendations:
        key = str(workspace)
        if key not in self._state:
            self._state[key] = await self.run_blocking(self._load, workspace)
        return self._state[key]

    async def refresh(self, workspace: Path) -> Recommendations:
        """Start a refresh (unless one runs); raises ``ModelNotConfigured`` when there is no model."""
        current = await self.state(workspace)
        if current.status == "loading":
            return current
        config = await self.run_blocking(self.resolve, self.environ, self.home, workspace)
        loading = attrs.evolve(current, status="loading", error=None)
        self._state[str(workspace)] = loading
        ensureDeferred(self._run(workspace, config, current)).addErrback(
            lambda f: self.log.failure("Task recommendations failed", f))
        return loading

    async def _run(self, workspace: Path, config: Any, before: Recommendations) -> None:
        key = str(workspace)
        try:
            prompt = await self.run_blocking(self._prompt, workspace)
            turn = await self.chat.stream(config, [{"role": "user", "content": prompt}], None)
            templates, warnings = parse_answer(turn.text)
            if not templates:
                raise ValueError("the model suggested no usable template (" + "; ".join(warnings[:3]) + ")")
        except Exception as exc:  # noqa: BLE001 - reported in the status, never raised to a client
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self._state[key] = attrs.evolve(before, status="error", error=message)
            return
        cached_at = int(self.clock.seconds() * 1000)
        self._state[key] = Recommendations("done", templates, cached_at)
        data = {"cachedAt": cached_at, "templates": [attrs.asdict(t) for t in templates]}
        path = self._path(workspace)
        await self.run_blocking(_save, path, data)

    def _prompt(self, workspace: Path) -> str:
        try:
            entries = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(workspace)
                             if not e.name.startswith("."))[:60]
        except OSError:
            entries = []
        context = []
        for name in ("README.md", "README", "README.rst", "CODEBUDDY.md", "AGENTS.md", "package.json",
                     "pyproject.toml"):
            path = workspace / name
            try:
                text = path.read_text(encoding="utf-8", errors="replace")[:CONTEXT_LIMIT]
            except OSError:
                continue
            context.append(f"--- {name} ---\n{text}")
        return PROMPT.format(limit=MAX_TEMPLATES, cwd=workspace, entries=", ".join(entries) or "(none)",
                             context="\n\n".join(context)[: 3 * CONTEXT_LIMIT])


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, json.dumps(data, ensure_ascii=False).encode("utf-8"), mode=0o600)

