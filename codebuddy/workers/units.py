# -*- test-case-name: tests.workers.test_units -*-
"""
systemd for the daemon: the user unit that ``codebuddy daemon install`` writes, and the unit a
running daemon belongs to (so a daemon asked to restart itself asks systemd to do it).

The user unit is made from ``etc/codebuddy.service`` (shipped in the package as
``codebuddy/workers/codebuddy.service``, a link to it): the same service settings, minus what a
user manager cannot do (``User=``/``Group=``, ``StateDirectory=``, the ``network-online.target``
ordering, and the namespace options ``PrivateTmp=``/``ProtectSystem=``, which need unprivileged
user namespaces there), started by ``default.target``, with an ``ExecStart=`` that runs this
environment's ``twistd`` on the chosen home, workspace, port and host.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import attrs

__all__ = ["SystemdUnit", "exec_quote", "render_user_unit", "run", "unit_of", "unit_text", "user_unit_path"]

UNIT_NAME = "codebuddy.service"
# Directives a user manager cannot honour (see the module docstring).
USER_DROPPED = ("User", "Group", "StateDirectory", "StateDirectoryMode", "PrivateTmp", "ProtectSystem")
USER_ENV_FILE = "-%h/.config/codebuddy/codebuddy.env"
HEADER = """\
# codebuddy: the CodeBuddy Code HTTP API daemon, as a systemd user service.
# Written by `codebuddy daemon install` from etc/codebuddy.service (see docs/operations.md);
# `codebuddy daemon uninstall` disables and removes it. Logs: journalctl --user -u codebuddy
"""


def user_unit_path(home: Path | None = None) -> Path:
    """``~/.config/systemd/user/codebuddy.service`` (``$XDG_CONFIG_HOME`` is not used by systemd here)."""
    return (Path.home() if home is None else home) / ".config/systemd/user" / UNIT_NAME


def unit_text() -> str:
    """The text of etc/codebuddy.service."""
    return resources.files("codebuddy.workers").joinpath(UNIT_NAME).read_text("utf-8")


_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def exec_quote(argv: Sequence[str]) -> str:
    """``argv`` as an ``ExecStart=`` value: words double-quoted when needed, ``%`` and ``$`` escaped."""
    words = []
    for arg in argv:
        word = arg.replace("%", "%%").replace("$", "$$")
        if not _PLAIN.fullmatch(word):
            word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
        words.append(word)
    return " ".join(words)


def render_user_unit(text: str, argv: Sequence[str]) -> str:
    """The user unit made from the system unit ``text`` (see the module docstring)."""
    lines = [HEADER.rstrip("\n")]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        if line.startswith("["):
            if len(lines) > 1:
                lines.append("")
            lines.append(line)
        elif key in USER_DROPPED or (key in ("After", "Wants") and "network-online.target" in value):
            continue
        elif key == "ExecStart":
            lines.append("ExecStart=" + exec_quote(argv))
        elif key == "EnvironmentFile":
            lines.append("EnvironmentFile=" + USER_ENV_FILE)
        elif key == "WantedBy":
            lines.append("WantedBy=default.target")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


@attrs.frozen
class SystemdUnit:
    """The systemd unit a process runs in."""

    name: str
    user: bool = attrs.field(metadata={"doc": "a unit of a user manager (systemctl --user)"})

    def systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *(["--user"] if self.user else []), *args]


def unit_of(pid: int | str = "self") -> SystemdUnit | None:
    """The ``.service`` process ``pid`` runs in (blocking; see :func:`unit_in`)."""
    try:
        return unit_in(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return None


def unit_in(cgroup_text: str) -> SystemdUnit | None:
    """
    The ``.service`` named by a ``/proc/<pid>/cgroup`` text (cgroup v2 or the v1 ``name=systemd``
    hierarchy), or None outside a systemd service (also under ``systemd-run --scope``, in login
    sessions and in containers without systemd).
    """
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[1] not in ("", "name=systemd"):
            continue
        segments = [s for s in parts[2].split("/") if s]
        services = [i for i, s in enumerate(segments) if s.endswith(".service")]
        if not services:
            return None
        last = services[-1]
        user = any(s.startswith("user@") and s.endswith(".service") for s in segments[:last])
        if segments[last].startswith("user@") and not user:
            return None  # the user manager itself (or a process directly in its cgroup)
        return SystemdUnit(segments[last], user)
    return None


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (blocking, 60 s at most), capturing its output; a missing program is status 127."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: {exc.strerror}")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{shlex.join(argv)}: no answer within 60 s")
