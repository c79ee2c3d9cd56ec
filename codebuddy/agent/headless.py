# -*- test-case-name: tests.agent.test_headless -*-
"""
``codebuddy -p "prompt"``: one agent turn without a daemon, and ``codebuddy --bg "task"``: the
same as a background worker.

``-p PROMPT [--output-format text|json|stream-json] [--session-id ID] [-y] [--permission-mode M]
[--cwd DIR]`` runs one run in this process (the same agent, tools, permissions, transcripts,
checkpoints and run record as the daemon's ``POST /api/v1/runs``) on the workspace ``--cwd``
(default: the current directory), registered as a worker while it runs. ``-y``
(``--dangerously-skip-permissions``) is ``--permission-mode bypassPermissions``. Output:

- ``text``: the final reply on stdout;
- ``json``: one result object (Claude Code / CodeBuddy ``result`` shape: ``type``, ``subtype``
  ``success`` or ``error_during_execution``, ``is_error``, ``result``, ``session_id``,
  ``num_turns``, ``duration_ms``, ``usage``, ``permission_denials``, ``error``);
- ``stream-json``: one JSON object per line as things happen: ``system``/``init``, ``assistant``
  messages (text and ``tool_use`` blocks), ``user`` messages with ``tool_result`` blocks, and the
  ``result`` object last.

Exit status 0 when the run completed, 1 when it failed (the error on stderr for ``text``), 2
for bad usage, 130 when cancelled (Ctrl-C or SIGTERM cancel the run and kill its tools).

``--bg [--name N] TASK [-y] [--session-id ID] [--cwd DIR]`` starts ``codebuddy -p TASK`` detached
(own session), kind ``bg`` named ``N`` (default: from the task's first words), its output in
``<home>/logs/N.log``; it shows in ``codebuddy ps``, ``GET /api/v1/workers`` and ``codebuddy logs N``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from codebuddy.config import default_home
from codebuddy.settings.schema import PERMISSION_MODES

__all__ = ["main", "wants_headless"]

FORMATS = ("text", "json", "stream-json")
HEADLESS_FLAGS = ("-p", "--print", "--bg")


def wants_headless(args: Sequence[str]) -> bool:
    """Whether a command line asks for ``-p``/``--bg``."""
    return any(a in HEADLESS_FLAGS for a in args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codebuddy", description="Run the agent without a daemon.")
    parser.add_argument("-p", "--print", dest="prompt", metavar="PROMPT", help="run one turn and print the result")
    parser.add_argument("--bg", action="store_true", help="run TASK as a background worker")
    parser.add_argument("--name", help="--bg: the worker's name (default: from the task)")
    parser.add_argument("task", nargs="?", help="--bg: the task")
    parser.add_argument("--output-format", choices=FORMATS, default="text")
    parser.add_argument("--session-id", help="continue this session (default: a new one)")
    parser.add_argument("-y", "--dangerously-skip-permissions", action="store_true",
                        help="permission mode bypassPermissions")
    parser.add_argument("--permission-mode", choices=PERMISSION_MODES)
    parser.add_argument("--cwd", help="the workspace (default: the current directory)")
    return parser


def _bg_name(task: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", task.lower())[:4]
    return "-".join(words or ["task"]) + "-" + uuid.uuid4().hex[:4]


def start_background(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    from codebuddy.workers.daemon import launch
    from codebuddy.workers.registry import Registry

    task = args.task or args.prompt
    if not task:
        err.write("codebuddy: --bg needs a task: codebuddy --bg [--name N] \"what to do\"\n")
        return 2
    home = default_home(environ)
    name = args.name or _bg_name(task)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        err.write(f"codebuddy: --name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)\n")
        return 2
    if Registry(home).find_local(name) is not None:
        err.write(f"codebuddy: a live worker is already named {name!r} (see 'codebuddy ps')\n")
        return 1
    log_path = home / "logs" / f"{name}.log"
    argv = [sys.executable, "-m", "codebuddy.cli", "-p", task, "--output-format", "text",
            "--cwd", str(Path(args.cwd or os.getcwd()).resolve())]
    if args.session_id:
        argv += ["--session-id", args.session_id]
    if args.dangerously_skip_permissions:
        argv.append("-y")
    if args.permission_mode:
        argv += ["--permission-mode", args.permission_mode]
    env = {k: v for k, v in environ.items() if not k.startswith("CODEBUDDY_SESSION_")}
    env.update(CODEBUDDY_SESSION_KIND="bg", CODEBUDDY_SESSION_NAME=name, CODEBUDDY_SESSION_LOG=str(log_path))
    try:
        child = launch(argv, env, log_path)
    except OSError as exc:
        err.write(f"codebuddy: cannot start {argv[0]}: {exc.strerror or exc}\n")
        return 1
    out.write(f"Started {name} (pid {child.pid}); log: {log_path}\n"
              f"Follow it with: codebuddy logs {name} -f\n")
    return 0


class _Printer:
    """Writes the run's events as the chosen output format (an EventLog listener)."""

    def __init__(self, fmt: str, out: TextIO) -> None:
        self.fmt = fmt
        self.out = out
        self.texts: dict[str, list[str]] = {}
        self.order: list[str] = []
        self.session_id = ""

    def line(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.out.flush()

    def _flush_text(self) -> list[dict[str, Any]]:
        blocks = [{"type": "text", "text": "".join(self.texts[m])} for m in self.order if self.texts.get(m)]
        self.texts.clear()
        self.order.clear()
        return blocks

    def event_appended(self, event: Any) -> None:
        if self.fmt != "stream-json":
            return
        data = json.loads(event.data)
        kind = data.get("type")
        self.session_id = data.get("sessionId", self.session_id)
        if kind == "run.started":
            self.line({"type": "system", "subtype": "init", "session_id": self.session_id, "cwd": data.get("cwd"),
                       "model": data.get("model"), "permissionMode": data.get("permissionMode"),
                       "tools": ["Read", "Write", "Edit", "LS", "Glob", "Grep", "Bash"]})
        elif kind == "message.delta":
            mid = data.get("messageId", "")
            if mid not in self.texts:
                self.order.append(mid)
            self.texts.setdefault(mid, []).append(data.get("text", ""))
        elif kind == "tool.started":
            content = self._flush_text() + [{"type": "tool_use", "id": data.get("toolCallId"),
                                             "name": data.get("name"), "input": data.get("input")}]
            self.line({"type": "assistant", "message": {"role": "assistant", "content": content},
                       "session_id": self.session_id})
        elif kind == "tool.completed":
            self.line({"type": "user", "message": {"role": "user", "content": [{
                "type": "tool_result", "tool_use_id": data.get("toolCallId"), "content": data.get("output", ""),
                "is_error": bool(data.get("isError"))}]}, "session_id": self.session_id})
        elif kind == "run.completed":
            blocks = self._flush_text()
            if blocks:
                self.line({"type": "assistant", "message": {"role": "assistant", "content": blocks},
                           "session_id": self.session_id})

    def log_closed(self) -> None:
        pass


def result_object(record: Any) -> dict[str, Any]:
    """The ``result`` object of ``json`` and ``stream-json`` output."""
    ok = record.status == "completed"
    out: dict[str, Any] = {
        "type": "result", "subtype": "success" if ok else "error_during_execution", "is_error": not ok,
        "status": record.status, "result": record.result or "", "session_id": record.session_id,
        "run_id": record.run_id, "num_turns": record.num_turns, "duration_ms": record.duration_ms,
        "usage": {"input_tokens": record.usage.input_tokens, "output_tokens": record.usage.output_tokens,
                  "cache_read_input_tokens": record.usage.cache_read},
        "permission_denials": [{"tool_name": d.get("toolName"), "tool_use_id": d.get("toolCallId"),
                                "tool_input": d.get("input")} for d in record.permission_denials],
    }
    if record.error is not None:
        out["error"] = {"code": record.error.code, "message": record.error.message}
    return out


async def _run_once(reactor: Any, args: argparse.Namespace, environ: Mapping[str, str], out: TextIO,
                    err: TextIO) -> int:
    from twisted.application.service import MultiService
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.threads import deferToThreadPool
    from twisted.logger import globalLogPublisher

    from codebuddy.agent.loop import Agent
    from codebuddy.agent.model import ChatClient, make_http_client
    from codebuddy.checkpoints.store import CheckpointStore
    from codebuddy.process.manager import ProcessManager
    from codebuddy.process.spawn import Spawner
    from codebuddy.runs.manager import RunManager, RunRequest
    from codebuddy.runs.records import RunStore
    from codebuddy.sessions.store import SessionStore
    from codebuddy.sessions.transcript import valid_session_id
    from codebuddy.settings.store import SettingsStore
    from codebuddy.system.info import child_environment
    from codebuddy.web.errors import ApiError
    from codebuddy.workers.registry import Registry
    from codebuddy.workers.service import RegistryService

    home = default_home(environ)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    workspace = Path(args.cwd or os.getcwd()).expanduser().resolve()
    if not workspace.is_dir():
        err.write(f"codebuddy: --cwd {workspace} is not a directory\n")
        return 2
    session_id = args.session_id or str(uuid.uuid4())
    if not valid_session_id(session_id):
        err.write(f"codebuddy: --session-id {session_id!r} is not a session id\n")
        return 2

    def run_blocking(fn: Any, *a: Any, **kw: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *a, **kw)

    services = MultiService()
    RegistryService(Registry(home), session_id=session_id, workspace=str(workspace), environ=environ,
                    endpoint=lambda: None, clock=reactor, publisher=globalLogPublisher).setServiceParent(services)
    spawner = Spawner(reactor, environ=child_environment(environ), default_cwd=str(workspace))
    spawner.setServiceParent(services)
    processes = ProcessManager(spawner, str(workspace), reactor)
    processes.setServiceParent(services)
    settings = SettingsStore(home, workspace)
    sessions = SessionStore(home)
    agent = Agent(home, workspace, environ, ChatClient(make_http_client(reactor), reactor), sessions,
                  CheckpointStore(home, sessions), settings, processes, run_blocking, reactor)
    manager = RunManager(RunStore(home), agent, reactor, run_blocking)
    manager.setServiceParent(services)
    services.startService()
    try:
        merged = settings.merged()
        permissions = merged.get("permissions") if isinstance(merged.get("permissions"), dict) else {}
        mode = ("bypassPermissions" if args.dangerously_skip_permissions
                else args.permission_mode or (permissions or {}).get("defaultMode") or "default")
        request = RunRequest(prompt=args.prompt, session_id=session_id, cwd=str(workspace), permission_mode=mode,
                             timeout_ms=None)
        try:
            record = await manager.submit(request)
        except ApiError as exc:
            err.write(f"codebuddy: {exc.message}\n")
            return 1
        run = manager.active.get(record.run_id)
        printer = _Printer(args.output_format, out)
        if run is not None:
            for event in run.events.events_after(0):
                printer.event_appended(event)
            run.events.subscribe(printer)

        def cancel() -> None:
            if record.run_id in manager.active:
                ensureDeferred(manager.cancel(record.run_id)).addErrback(lambda _f: None)

        def interrupted(*_: Any) -> None:
            reactor.callFromThread(cancel)

        # Ctrl-C and SIGTERM (codebuddy kill) cancel the run, so its tools' process groups are killed.
        previous = {signum: signal.signal(signum, interrupted) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            final = await (run.when_finished() if run is not None else manager.get(record.run_id))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if args.output_format == "text":
            if final.status == "completed":
                out.write((final.result or "") + "\n")
            else:
                reason = final.error.message if final.error is not None else final.status
                err.write(f"codebuddy: the run {final.status}: {reason}\n")
        else:
            printer.line(result_object(final))
        if final.status == "cancelled":
            return 130
        return 0 if final.status == "completed" else 1
    finally:
        await services.stopService()


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    environ = os.environ if environ is None else environ
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if args.bg:
        return start_background(args, environ, out, err)
    if not args.prompt:
        err.write("codebuddy: -p needs a prompt: codebuddy -p \"what to do\"\n")
        return 2
    if args.task:
        err.write(f"codebuddy: unexpected argument {args.task!r} (quote the whole prompt after -p)\n")
        return 2
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    outcome: list[int] = []

    def failed(failure: Any) -> None:
        err.write(f"codebuddy: {failure.getErrorMessage()}\n")
        outcome.append(1)

    def go() -> None:
        d = ensureDeferred(_run_once(reactor, args, environ, out, err))
        d.addCallbacks(outcome.append, failed)
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(go)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]  # its signal handlers reap children (SIGCHLD)
    return outcome[0] if outcome else 1
