"""
The ``codebuddy`` console command.

``codebuddy serve [options]`` (or ``codebuddy --serve [options]``, the spec's spelling) runs
the daemon in the foreground: it replaces itself with ``twistd -n --pidfile= codebuddy
[options]``, so signals and exit codes are twistd's. Options are those of
``twistd codebuddy --help``.

``ps``, ``kill``, ``logs`` and ``daemon status|start|stop|restart|install|uninstall`` are
:mod:`codebuddy.workers.cli` (imported only for them, so ``serve`` starts as before).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from codebuddy import __version__

WORKER_COMMANDS = ("ps", "kill", "logs", "daemon")

USAGE = """\
usage: codebuddy serve [--port PORT] [--host HOST] [--session-id ID] [--cwd DIR]
                       [--home DIR] [--auth none|password] [--access-log none|-|PATH]
       codebuddy --serve [same options]
       codebuddy ps [--json] [--kind KIND]
       codebuddy kill NAME|PID
       codebuddy logs NAME|PID [--type TYPE] [--tail N] [-f]
       codebuddy daemon status [--json] | start [--port P] [--host H] [--cwd DIR] | stop | restart
       codebuddy daemon install [--port P] [--host H] [--cwd DIR] [--json] | uninstall [--json]
       codebuddy -p PROMPT [--output-format text|json|stream-json] [--session-id ID] [-y]
                 [--permission-mode MODE] [--cwd DIR]
       codebuddy --bg [--name N] TASK [-y] [--session-id ID] [--cwd DIR]
       codebuddy --version

'serve' runs the CodeBuddy Code HTTP API daemon in the foreground (twistd -n codebuddy);
see 'twistd codebuddy --help' for every option. The other commands work on the local
worker registry (see docs/workers.md); 'codebuddy COMMAND --help' for each. '-p' runs one
agent turn in this process and '--bg' runs it as a background worker (see docs/runs.md).
"""


def twistd_path() -> str:
    """The ``twistd`` of this Python environment (beside the interpreter), else the one on PATH."""
    beside = Path(sys.executable).with_name("twistd")
    if beside.exists():
        return str(beside)
    return shutil.which("twistd") or "twistd"


def serve_argv(options: Sequence[str]) -> list[str]:
    """The twistd command line that serves with ``options``."""
    return [twistd_path(), "--nodaemon", "--pidfile=", "codebuddy", *options]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    if args[0] in ("--version", "version"):
        print(f"codebuddy {__version__}")
        return 0
    if args[0] in ("serve", "--serve"):
        command = serve_argv(args[1:])
        try:
            os.execv(command[0], command)
        except FileNotFoundError:
            raise SystemExit("codebuddy: twistd not found; is Twisted installed in this environment?") from None
    if args[0] not in WORKER_COMMANDS:
        from codebuddy.agent.headless import main as headless_main
        from codebuddy.agent.headless import wants_headless

        if wants_headless(args):
            return headless_main(args)
    if args[0] in WORKER_COMMANDS:
        from codebuddy.workers.cli import main as workers_main

        return workers_main(args)
    sys.stderr.write(f"codebuddy: unknown command {args[0]!r}\n\n{USAGE}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
