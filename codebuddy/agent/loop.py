# -*- test-case-name: tests.agent.test_loop -*-
"""
The agent: one run is one user turn of a session's conversation (the run table's
:class:`~codebuddy.runs.manager.Executor`).

1. The session's transcript (``<home>/projects/<projectId>/<sessionId>.jsonl``) is read back
   into chat messages; the system prompt is ours plus the workspace's memory files
   (``CODEBUDDY.md``, ``.codebuddy/CODEBUDDY.md``, ``CODEBUDDY.local.md``, ``AGENTS.md``, and
   ``<home>/CODEBUDDY.md``); the history is trimmed to the model's context budget, oldest
   whole turns first.
2. The user message is appended to the transcript and opens a checkpoint.
3. Model turns: the reply streams as ``message.delta`` / ``thought.delta`` events; each tool
   call is checked against the permission rules and run (``tool.started``, then
   ``tool.completed``); results go back to the model until it answers without tool calls
   (``end_turn``) or ``max_turns`` model turns were made (``max_turn_requests``).
4. Everything said is appended to the transcript in CodeBuddy's item format (messages,
   ``function_call``, ``function_call_result``), so the sessions API lists the session with its
   title and counts, and a later run on the session continues it.

A tool the rules put on "ask" is refused (a run has nobody to ask): the refusal is the tool's
result for the model, a ``tool.completed`` event with ``status: "failed"`` and an entry in the
run's ``permissionDenials``. Cancelling the run cancels the model request or the running tool
(whose process group is killed) where it is.
"""

from __future__ import annotations

import json
import platform
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from codebuddy.agent import model as models
from codebuddy.agent.permissions import PermissionRules, decide, refusal_message
from codebuddy.agent.tools import ReadTool, Tool, ToolContext, ToolResult, default_tools, tool_schemas
from codebuddy.runs.manager import ActiveRun, RunRequest
from codebuddy.runs.records import Usage
from codebuddy.sessions.store import SessionStore
from codebuddy.sessions.transcript import content_text, iso_timestamp
from codebuddy.settings.store import SettingsStore
from codebuddy.web.errors import ApiError

__all__ = ["Agent", "history_messages", "trim_messages"]

MAX_TURNS = 50
READ = ReadTool()
MEMORY_FILES = ("CODEBUDDY.md", ".codebuddy/CODEBUDDY.md", "CODEBUDDY.local.md", "AGENTS.md")
MEMORY_LIMIT = 64 * 1024
CHARS_PER_TOKEN = 4
OUTPUT_RESERVE = 8192

SYSTEM_PROMPT = """\
You are CodeBuddy, a coding agent working in the directory {cwd} on the user's machine.
Use the tools to read, search, edit files and run commands; do not guess file contents.
Prefer small, precise edits (Edit) over rewriting whole files. Run the project's tests when you change code.
When you are done, reply with a short summary of what you did and what the user should know.
Today's date: {date}. Platform: {platform}."""


def _text_item(role: str, text: str, **extra: Any) -> dict[str, Any]:
    kind = "input_text" if role == "user" else "output_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}], **extra}


def history_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Chat-completions messages from transcript items: user and assistant messages, the
    assistant's ``function_call`` items as its ``tool_calls``, and ``function_call_result`` items
    as ``tool`` messages. A call without a result (a run cancelled mid-tool) gets one saying so,
    so the conversation stays valid for the model.
    """
    messages: list[dict[str, Any]] = []
    open_calls: dict[str, str] = {}

    def close_open_calls() -> None:
        for call_id, name in open_calls.items():
            messages.append({"role": "tool", "tool_call_id": call_id, "content": f"{name} was interrupted (the run "
                             "was cancelled before it finished)"})
        open_calls.clear()

    for item in items:
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") in ("user", "assistant"):
            close_open_calls()
            text = content_text(item.get("content"))
            if item["role"] == "user":
                messages.append({"role": "user", "content": text})
            else:
                messages.append({"role": "assistant", "content": text})
        elif kind == "function_call":
            call_id = str(item.get("callId") or item.get("id") or uuid.uuid4())
            name = str(item.get("name") or "unknown")
            call = {"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": str(item.get("arguments") or "{}")}}
            if messages and messages[-1]["role"] == "assistant" and not _has_results_after(messages):
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                close_open_calls()
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            open_calls[call_id] = name
        elif kind == "function_call_result":
            call_id = str(item.get("callId") or "")
            if call_id not in open_calls:
                continue
            del open_calls[call_id]
            output = item.get("output")
            result = output.get("text") if isinstance(output, dict) else output
            messages.append({"role": "tool", "tool_call_id": call_id, "content": str(result or "")})
    close_open_calls()
    return messages


def _has_results_after(messages: list[dict[str, Any]]) -> bool:
    return bool(messages) and messages[-1]["role"] == "tool"


def _size(message: Mapping[str, Any]) -> int:
    return len(json.dumps(message, ensure_ascii=False)) // CHARS_PER_TOKEN + 4


def trim_messages(system: dict[str, Any], history: list[dict[str, Any]], budget_tokens: int) -> list[dict[str, Any]]:
    """
    ``system`` and as much of ``history`` as fits in ``budget_tokens`` (estimated at 4
    characters a token): the oldest turns go first, whole (a turn starts at a user message, so
    a tool call is never separated from its result). The last turn is always kept; its longest
    tool results are cut when even it does not fit.
    """
    starts = [i for i, m in enumerate(history) if m["role"] == "user"] or [0]
    budget = budget_tokens - _size(system)
    chosen = 0
    for start in reversed(starts):
        if sum(_size(m) for m in history[start:]) > budget and start != starts[-1]:
            break
        chosen = start
    kept = [dict(m) for m in history[chosen:]]
    while sum(_size(m) for m in kept) > budget:
        tools = [m for m in kept if m["role"] == "tool" and len(m["content"]) > 2000]
        if not tools:
            break
        longest = max(tools, key=lambda m: len(m["content"]))
        content = longest["content"]
        longest["content"] = content[: len(content) // 2] + "\n[... output cut to fit the context window ...]"
    return [system, *kept]


class Agent:
    """The executor of runs (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        home: Path,
        workspace: Path,
        environ: Mapping[str, str],
        chat: Any,
        sessions: SessionStore,
        checkpoints: Any,
        settings: SettingsStore,
        processes: Any,
        run_blocking: Callable[..., Deferred[Any]],
        clock: IReactorTime,
        tools: list[Tool] | None = None,
        max_turns: int = MAX_TURNS,
    ) -> None:
        self.home = home
        self.workspace = workspace
        self.environ = environ
        self.chat = chat
        self.sessions = sessions
        self.checkpoints = checkpoints
        self.settings = settings
        self.processes = processes
        self.run_blocking = run_blocking
        self.clock = clock
        self.tools = {t.name: t for t in (tools if tools is not None else default_tools())}
        self.schemas = tool_schemas(list(self.tools.values()))
        self.max_turns = max_turns

    # -- Executor

    def _model(self, cwd: str) -> models.ModelConfig:
        try:
            return models.resolve_model(self.environ, self.home, Path(cwd))
        except models.ModelNotConfigured as exc:
            raise ApiError("MODEL_NOT_CONFIGURED", str(exc)) from None

    def plan(self, request: RunRequest) -> Deferred[models.ModelConfig]:
        """The run's model (resolved once, when the run is accepted)."""
        d: Deferred[models.ModelConfig] = self.run_blocking(self._model, request.cwd)
        return d

    def execute(self, run: ActiveRun) -> Deferred[Any]:
        return ensureDeferred(self._run(run))

    # -- the turn

    def _prepare(self, run: ActiveRun, user_item: dict[str, Any]
                 ) -> tuple[PermissionRules, list[dict[str, Any]], str]:
        """
        Blocking, one trip to the thread pool: the rules, the conversation so far and the memory
        files; then the user message is appended and opens its checkpoint.
        """
        cwd = Path(run.record.cwd)
        rules = PermissionRules.from_settings(self.settings.merged())
        items: list[dict[str, Any]] = []
        for path in self.sessions.find(run.record.session_id)[:1]:
            items = list(self.sessions.items(path))
        memory = self._memory(cwd)
        self.sessions.append(run.record.session_id, run.record.cwd, [user_item])
        self.checkpoints.begin(run.record.session_id, run.record.cwd, user_item["id"], run.record.prompt)
        return rules, history_messages(items), memory

    def _memory(self, cwd: Path) -> str:
        parts = []
        for path in [self.home / "CODEBUDDY.md", *(cwd / name for name in MEMORY_FILES)]:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")[:MEMORY_LIMIT]
            except OSError:
                continue
            if text.strip():
                parts.append(f"Contents of {path} (instructions for this workspace):\n\n{text.strip()}")
        return "\n\n".join(parts)

    def _system(self, cwd: str, memory: str) -> dict[str, Any]:
        text = SYSTEM_PROMPT.format(cwd=cwd, date=time.strftime("%Y-%m-%d", time.gmtime(self.clock.seconds())),
                                    platform=platform.system())
        if memory:
            text += "\n\n" + memory
        return {"role": "system", "content": text}

    async def _append(self, run: ActiveRun, items: list[dict[str, Any]]) -> None:
        stamp = iso_timestamp(self.clock.seconds())
        for item in items:
            self._stamp(run, item, stamp)
        await self.run_blocking(self.sessions.append, run.record.session_id, run.record.cwd, items)

    @staticmethod
    def _stamp(run: ActiveRun, item: dict[str, Any], stamp: str) -> dict[str, Any]:
        item.setdefault("timestamp", stamp)
        item.setdefault("sessionId", run.record.session_id)
        item.setdefault("cwd", run.record.cwd)
        return item

    async def _run(self, run: ActiveRun) -> None:
        record = run.record
        user_id = str(uuid.uuid4())
        user_item = self._stamp(run, _text_item("user", record.prompt, id=user_id), iso_timestamp(self.clock.seconds()))
        config: models.ModelConfig = run.plan
        rules, history, memory = await self.run_blocking(self._prepare, run, user_item)
        system = self._system(record.cwd, memory)
        conversation = [*history, {"role": "user", "content": record.prompt}]
        # The reply's room comes off the window, but never more than half of it: a small model (a
        # maxInputTokens at or below the reserve) would otherwise get no history at all.
        budget = max(config.context_window - (config.max_output_tokens or OUTPUT_RESERVE),
                     config.context_window // 2)
        parent = user_id
        for turn in range(1, self.max_turns + 1):
            record.num_turns = turn
            message_id = str(uuid.uuid4())
            reply = await self._model_turn(run, config, trim_messages(system, conversation, budget), self.schemas,
                                           message_id)
            items: list[dict[str, Any]] = []
            if reply.text:
                items.append(_text_item("assistant", reply.text, id=message_id, parentId=parent, status="completed"))
            conversation.append(reply.assistant_message())
            for call in reply.tool_calls:
                items.append({"type": "function_call", "id": str(uuid.uuid4()), "callId": call.id,
                              "name": call.name, "arguments": call.arguments, "status": "completed",
                              "parentId": message_id})
            if items:
                await self._append(run, items)
            if reply.text:
                record.result = reply.text
            if not reply.tool_calls:
                record.stop_reason = "end_turn"
                return
            for call in reply.tool_calls:
                result = await self._tool(run, rules, call)
                conversation.append({"role": "tool", "tool_call_id": call.id, "content": result.output})
                await self._append(run, [{"type": "function_call_result", "id": str(uuid.uuid4()),
                                          "callId": call.id, "name": call.name, "status": "completed",
                                          "output": {"type": "text", "text": result.output},
                                          "isError": result.is_error}])
            parent = message_id
        record.stop_reason = "max_turn_requests"

    async def _model_turn(self, run: ActiveRun, config: models.ModelConfig, messages: list[dict[str, Any]],
                          schemas: list[dict[str, Any]], message_id: str) -> models.ModelTurn:
        def on_event(event: Any) -> None:
            if isinstance(event, models.TextDelta):
                run.emit("message.delta", messageId=message_id, text=event.text)
            elif isinstance(event, models.ReasoningDelta):
                run.emit("thought.delta", messageId=message_id, text=event.text)

        reply: models.ModelTurn = await self.chat.stream(config, messages, schemas, on_event)
        usage = reply.usage
        if usage is not None:
            turn_usage = Usage(usage.prompt_tokens, usage.completion_tokens, usage.cached or 0)
            run.usage.add(turn_usage)
            run.emit("usage", inputTokens=turn_usage.input_tokens, outputTokens=turn_usage.output_tokens,
                     cacheRead=turn_usage.cache_read, contextUsed=turn_usage.input_tokens + turn_usage.output_tokens,
                     contextSize=config.context_window, totals={
                         "inputTokens": run.usage.input_tokens, "outputTokens": run.usage.output_tokens})
        return reply

    async def _tool(self, run: ActiveRun, rules: PermissionRules, call: models.ToolCall) -> ToolResult:
        record = run.record
        tool = self.tools.get(call.name)
        try:
            args = json.loads(call.arguments or "{}")
        except ValueError:
            args = None
        if tool is None or not isinstance(args, dict):
            problem = (f"There is no tool named {call.name!r}; the tools are {', '.join(self.tools)}" if tool is None
                       else f"The arguments of {call.name} are not a JSON object: {call.arguments[:200]!r}")
            run.emit("tool.started", toolCallId=call.id, name=call.name, title=call.name, kind="other",
                     input=args if isinstance(args, dict) else {})
            run.emit("tool.completed", toolCallId=call.id, status="failed", output=problem, isError=True)
            return ToolResult(output=problem, is_error=True, title=call.name)
        title = tool.title(args)
        run.emit("tool.started", toolCallId=call.id, name=tool.name, title=title, kind=tool.kind, input=args)
        decision = decide(tool, args, record.permission_mode, rules, Path(record.cwd))
        if decision.behavior != "allow":
            message = refusal_message(decision, tool, args, cwd=Path(record.cwd))
            record.permission_denials.append({"toolName": tool.name, "toolCallId": call.id, "input": args,
                                              "reason": message})
            run.emit("tool.completed", toolCallId=call.id, status="failed", output=message, isError=True,
                     permission={"behavior": decision.behavior, "rule": decision.rule})
            return ToolResult(output=message, is_error=True, title=title)
        run.emit("tool.updated", toolCallId=call.id, status="in_progress")
        cwd = Path(record.cwd)

        def hidden(path: Path) -> bool:
            """Files a Read of which the rules would not allow: searches leave them out."""
            return decide(READ, {"file_path": str(path)}, record.permission_mode, rules, cwd).behavior != "allow"

        context = ToolContext(cwd=cwd, session_id=record.session_id, run_blocking=self.run_blocking,
                              processes=self.processes, hidden=hidden,
                              before_change=lambda path: self.run_blocking(self.checkpoints.before_change,
                                                                           record.session_id, path))
        try:
            result: ToolResult = await tool.run(context, args)
        except CancelledError:  # the run was cancelled: the tool's end is in the stream before the run's
            run.emit("tool.completed", toolCallId=call.id, status="cancelled", output="Cancelled", isError=True)
            raise
        event: dict[str, Any] = {"toolCallId": call.id, "status": "failed" if result.is_error else "completed",
                                 "output": result.output, "isError": result.is_error}
        if result.diff:
            event["diff"] = result.diff
        if result.locations:
            event["locations"] = result.locations
        run.emit("tool.completed", **event)
        return result

