# -*- test-case-name: tests.templates.test_catalog -*-
"""
Task templates (acp-codebuddy.md §2.12): ready-made recurring tasks a client offers to start,
each a slash command such as ``/loop 1d <prompt>`` with its interval.

The list is the built-in templates, then the user's own from ``<home>/tasks/templates.json``
(a JSON array of template objects, or ``{"templates": [...]}``). A user template with the id of
a built-in one replaces it. Entries that are not usable (not an object, no ``id``/``title``/
``command``, a bad ``interval``) are skipped and reported as warnings naming their index, so
one typo does not hide the others. The file is read again when it changes (mtime, size).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs

__all__ = ["BUILTIN", "TaskTemplate", "TemplateCatalog", "user_templates_path"]

INTERVAL = re.compile(r"[1-9][0-9]*[mhdw]")


@attrs.frozen
class TaskTemplate:
    """One template."""

    id: str
    title: str
    description: str
    icon: str
    command: str = attrs.field(metadata={"doc": "What to run, e.g. \"/loop 1d Review yesterday's commits\""})
    interval: str = attrs.field(metadata={"doc": "How often: <n>m, <n>h, <n>d or <n>w (e.g. 1d, 1w)"})
    source: str = attrs.field(default="builtin", metadata={"doc": "builtin or user"})


def _loop(interval: str, prompt: str) -> str:
    return f"/loop {interval} {prompt}"


BUILTIN: tuple[TaskTemplate, ...] = (
    TaskTemplate("daily-summary", "Daily change summary",
                 "Summarise the commits and uncommitted changes of the last day.", "📝", _loop(
                     "1d", "Summarise the commits of the last 24 hours and the uncommitted changes in this "
                     "workspace: what changed, why, and anything that looks unfinished."), "1d"),
    TaskTemplate("test-health", "Test suite health",
                 "Run the tests every day and report failures with their likely cause.", "🧪", _loop(
                     "1d", "Run this project's test suite. Report each failing test with the error and the most "
                     "likely cause; do not change any files."), "1d"),
    TaskTemplate("dependency-review", "Dependency review",
                 "Weekly check for outdated or vulnerable dependencies.", "📦", _loop(
                     "1w", "List this project's outdated dependencies and any with known vulnerabilities, with "
                     "the upgrade you recommend for each and its risk."), "1w"),
    TaskTemplate("todo-triage", "TODO triage",
                 "Weekly list of TODO and FIXME comments, grouped and prioritised.", "📌", _loop(
                     "1w", "Find the TODO, FIXME and XXX comments in this workspace, group them by area and "
                     "suggest which three to address first."), "1w"),
    TaskTemplate("docs-drift", "Docs drift check",
                 "Weekly check that the README and docs still match the code.", "📚", _loop(
                     "1w", "Compare the README and docs with the code and list statements that are no longer "
                     "true (commands, options, file names), with a suggested fix for each."), "1w"),
    TaskTemplate("security-scan", "Security review",
                 "Weekly look for secrets in the tree and risky code patterns.", "🔒", _loop(
                     "1w", "Look for committed secrets, unsafe shell or SQL construction, and disabled TLS "
                     "checks in this workspace; report each finding with its file and line."), "1w"),
)


def user_templates_path(home: Path) -> Path:
    return home / "tasks" / "templates.json"


def parse_user_templates(text: str) -> tuple[list[TaskTemplate], list[str]]:
    """The usable templates in a user file's ``text``, and a warning for each entry skipped."""
    try:
        data: Any = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        return [], [f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]
    if isinstance(data, dict):
        data = data.get("templates", [])
    if not isinstance(data, list):
        return [], ["expected an array of templates (or {\"templates\": [...]})"]
    found: list[TaskTemplate] = []
    warnings: list[str] = []
    for index, item in enumerate(data):
        where = f"templates[{index}]"
        if not isinstance(item, dict):
            warnings.append(f"{where}: not an object")
            continue
        missing = [k for k in ("id", "title", "command") if not isinstance(item.get(k), str) or not item[k].strip()]
        if missing:
            warnings.append(f"{where}: needs the string field(s) {', '.join(missing)}")
            continue
        interval = item.get("interval", "")
        if not isinstance(interval, str) or (interval and not INTERVAL.fullmatch(interval)):
            warnings.append(f"{where} ({item['id']}): interval must look like 30m, 2h, 1d or 1w; got {interval!r}")
            continue
        extra = {k: item.get(k) for k in ("description", "icon")}
        if any(v is not None and not isinstance(v, str) for v in extra.values()):
            warnings.append(f"{where} ({item['id']}): description and icon must be strings")
            continue
        found.append(TaskTemplate(item["id"].strip(), item["title"].strip(), extra["description"] or "",
                                  extra["icon"] or "", item["command"], interval, "user"))
    return found, warnings


class TemplateCatalog:
    """Built-in and user templates (blocking reads, cached by the user file's mtime and size)."""

    def __init__(self, home: Path) -> None:
        self.path = user_templates_path(home)
        self._cache: tuple[tuple[int, int] | None, list[TaskTemplate], list[str]] = (None, [], [])

    def _user(self) -> tuple[list[TaskTemplate], list[str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return [], []
        key = (st.st_mtime_ns, st.st_size)
        if self._cache[0] != key:
            try:
                text = self.path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                return [], [f"{self.path}: cannot read: {exc}"]
            found, warnings = parse_user_templates(text)
            self._cache = (key, found, [f"{self.path}: {w}" for w in warnings])
        return self._cache[1], self._cache[2]

    def templates(self) -> tuple[list[TaskTemplate], list[str]]:
        """Every template (user ones replace built-ins with the same id), and the warnings."""
        user, warnings = self._user()
        overridden = {t.id for t in user}
        merged = [t for t in BUILTIN if t.id not in overridden]
        seen: set[str] = set()
        for template in user:
            if template.id in seen:
                warnings = [*warnings, f"{self.path}: id {template.id!r} appears more than once; the first is used"]
                continue
            seen.add(template.id)
            merged.append(template)
        return merged, warnings
