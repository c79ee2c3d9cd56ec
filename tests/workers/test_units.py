"""The user unit made from etc/codebuddy.service, ExecStart quoting, and finding a process's unit."""

from __future__ import annotations

import shlex
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from codebuddy.workers.units import SystemdUnit, exec_quote, render_user_unit, unit_in, unit_text

ETC = Path(__file__).resolve().parents[2] / "etc" / "codebuddy.service"


def directives(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in text.splitlines()  # type: ignore[misc]
            if "=" in line and not line.startswith("#")]


def test_the_packaged_template_is_etc_codebuddy_service() -> None:
    assert unit_text() == ETC.read_text()


def test_user_unit_keeps_the_service_settings_and_drops_what_a_user_manager_cannot_do() -> None:
    argv = ["/home/a b/venv/bin/twistd", "--nodaemon", "--pidfile=", "codebuddy", "--port", "8080",
            "--home", "/home/a b/.codebuddy", "--cwd", "/home/a b/work"]
    unit = render_user_unit(unit_text(), argv)
    pairs = directives(unit)
    keys = [k for k, _ in pairs]
    for gone in ("User", "Group", "StateDirectory", "StateDirectoryMode", "PrivateTmp", "ProtectSystem",
                 "After", "Wants"):
        assert gone not in keys
    assert ("ExecStart", exec_quote(argv)) in pairs
    for kept in [("Type", "notify"), ("KillMode", "mixed"), ("Restart", "on-failure"),
                 ("Environment", "CODEBUDDY_SESSION_KIND=daemon"), ("NoNewPrivileges", "yes"),
                 ("WantedBy", "default.target"), ("EnvironmentFile", "-%h/.config/codebuddy/codebuddy.env")]:
        assert kept in pairs
    assert keys.count("ExecStart") == 1
    assert unit.index("[Unit]") < unit.index("[Service]") < unit.index("[Install]")


def unquote(value: str) -> list[str]:
    """systemd's reading of an ExecStart= value (as far as exec_quote writes it)."""
    return [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(value)]


@given(st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_characters="\x7f"),
                        min_size=1), min_size=1, max_size=6))
def test_exec_quote_round_trips(argv: list[str]) -> None:
    assert unquote(exec_quote(argv)) == argv


def test_exec_quote_examples() -> None:
    assert exec_quote(["/usr/bin/twistd", "--pidfile=", "--port", "tcp:8080:interface=0.0.0.0"]) == (
        "/usr/bin/twistd --pidfile= --port tcp:8080:interface=0.0.0.0")
    assert exec_quote(["/a b/twistd", "100%", "$HOME", 'say "hi"']) == (
        '"/a b/twistd" 100%% "$$HOME" "say \\"hi\\""')


def test_unit_in() -> None:
    assert unit_in("0::/system.slice/codebuddy.service\n") == SystemdUnit("codebuddy.service", False)
    assert unit_in("0::/user.slice/user-1000.slice/user@1000.service/app.slice/codebuddy.service\n") == (
        SystemdUnit("codebuddy.service", True))
    v1 = "12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/codebuddy-socket.service\n"
    assert unit_in(v1) == SystemdUnit("codebuddy-socket.service", False)
    assert unit_in("0::/user.slice/user-1000.slice/session-3.scope\n") is None
    assert unit_in("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n") is None
    assert unit_in("0::/\n") is None
    assert unit_in("") is None
    assert SystemdUnit("a.service", True).systemctl("restart", "a.service") == [
        "systemctl", "--user", "restart", "a.service"]
