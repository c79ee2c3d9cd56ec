"""GatewayReloader: gateway settings edited in the user file take effect without a restart (Clock-driven)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from codebuddy.config import resolve_gateway
from codebuddy.settings.live import INTERVAL, GatewayReloader
from codebuddy.settings.routes import SettingsRoutes
from codebuddy.settings.store import SettingsStore
from codebuddy.web.auth import GatewaySettings, RequestGuard
from tests.helpers import ApiFixture


def run_now(fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    return maybeDeferred(fn, *args, **kwargs)


class Live:
    """A store, a guard and a started reloader on a Clock; the user file is written by hand."""

    def __init__(self, tmp_path: Path, pinned: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, start: bool = True) -> None:
        (tmp_path / "ws").mkdir(exist_ok=True)
        self.store = SettingsStore(tmp_path / "home", tmp_path / "ws")
        self.clock = Clock()
        self.guard = RequestGuard(self.clock, GatewaySettings())
        self.resolved: list[Any] = []
        self.events: list[dict[str, Any]] = []
        self.pinned = dict(pinned or {})
        self.env = dict(env or {})
        self.reloader = GatewayReloader(self.store, self.guard, self.clock, run_now, self.resolve)
        self.reloader.log = Logger(observer=self.events.append)  # type: ignore[arg-type]
        if start:
            self.reloader.startService()

    def resolve(self, gateway: Any) -> GatewaySettings:
        self.resolved.append(gateway)
        return resolve_gateway(self.pinned, self.env, gateway, True)

    def edit(self, settings: Any) -> None:
        """Write the user file by hand, with an mtime that differs from the last one."""
        path = self.store.path("user")
        path.parent.mkdir(parents=True, exist_ok=True)
        before = path.stat().st_mtime_ns if path.exists() else 0
        path.write_text(settings if isinstance(settings, str) else json.dumps(settings))
        mtime = max(before + 1_000_000_000, path.stat().st_mtime_ns)
        os.utime(path, ns=(mtime, mtime))

    @property
    def settings(self) -> GatewaySettings:
        return self.guard.settings

    def logged(self, level: str) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"].name == level]


@pytest.fixture
def live(tmp_path: Path) -> Live:
    return Live(tmp_path)


def test_hand_edit_applied_on_the_next_poll(live: Live) -> None:
    assert INTERVAL == 2.0
    live.edit({"theme": "dark", "gateway": {"auth": "password", "password": "s3cret",
                                            "corsOrigins": ["https://ui.example"]}})
    live.clock.advance(1.9)
    assert live.settings == GatewaySettings()
    live.clock.advance(0.1)
    assert (live.settings.mode, live.settings.password, live.settings.cors_origins) == (
        "password", "s3cret", ("https://ui.example",))
    assert live.guard.auth_enabled
    assert any("Gateway settings changed (auth password, 1 CORS origins)" in m for m in live.logged("info"))
    # and back
    live.edit({"gateway": {"auth": "none", "corsOrigins": "https://a.example, https://b.example"}})
    live.clock.advance(2)
    assert (live.settings.mode, live.settings.password, live.settings.cors_origins) == (
        "none", None, ("https://a.example", "https://b.example"))


def test_other_gateway_settings(live: Live) -> None:
    live.edit({"gateway": {"allowedHosts": ["box.lan"], "requireRequestHeader": True,
                           "rateLimit": {"requestsPerSecond": 5, "burst": 7}}})
    live.clock.advance(2)
    assert live.settings == GatewaySettings(allowed_hosts=("box.lan",), require_request_header=True,
                                            rate_limit_rps=5.0, rate_limit_burst=7.0)


def test_an_unchanged_file_is_not_resolved_again(live: Live) -> None:
    live.edit({"gateway": {"auth": "password", "password": "p"}})
    live.clock.advance(2)
    assert live.resolved == [{"auth": "password", "password": "p"}]
    for _ in range(5):
        live.clock.advance(2)
    assert len(live.resolved) == 1
    live.edit({"gateway": {"auth": "password", "password": "p"}, "theme": "dark"})  # changed, same gateway
    live.clock.advance(2)
    assert len(live.resolved) == 2
    assert sum("Gateway settings changed" in m for m in live.logged("info")) == 1  # same settings: no change


def test_a_file_present_at_start_is_not_reapplied(tmp_path: Path) -> None:
    first = Live(tmp_path, start=False)
    first.edit({"gateway": {"auth": "password", "password": "p"}})
    live = Live(tmp_path)  # the daemon read this file at start (Config.build)
    live.clock.advance(10)
    assert live.resolved == []


def test_a_broken_file_keeps_the_settings_in_force(live: Live) -> None:
    live.edit({"gateway": {"auth": "password", "password": "s3cret"}})
    live.clock.advance(2)
    in_force = live.settings
    live.edit('{"gateway": {"auth": "none",}}')
    live.clock.advance(2)
    assert live.settings == in_force
    [problem] = live.logged("error")
    assert "Gateway settings not applied, the ones in force are kept" in problem
    assert f"{live.store.path('user')}:1:29: not valid JSON" in problem
    live.clock.advance(2)
    assert len(live.logged("error")) == 1  # reported once per change
    live.edit({"gateway": {"auth": "none"}})
    live.clock.advance(2)
    assert live.settings.mode == "none"


def test_a_gateway_that_does_not_resolve_keeps_the_settings_in_force(live: Live) -> None:
    live.edit({"gateway": {"auth": "token"}})
    live.clock.advance(2)
    assert live.settings == GatewaySettings()
    [problem] = live.logged("error")
    assert str(live.store.path("user")) in problem and "auth mode must be one of" in problem
    live.edit({"gateway": {"password": 5}})
    live.clock.advance(2)
    assert live.settings == GatewaySettings()
    assert "gateway.password must be a string" in live.logged("error")[1]


def test_a_removed_file_goes_back_to_the_defaults(live: Live) -> None:
    live.edit({"gateway": {"auth": "password", "password": "p", "corsOrigins": "https://x.example"}})
    live.clock.advance(2)
    live.store.path("user").unlink()
    live.clock.advance(2)
    assert live.settings == GatewaySettings()


def test_the_command_line_password_wins(tmp_path: Path) -> None:
    live = Live(tmp_path, pinned={"password": "from-the-command-line"})
    live.edit({"gateway": {"auth": "password", "password": "from-the-file", "corsOrigins": ["https://ui.example"]}})
    live.clock.advance(2)
    assert (live.settings.mode, live.settings.password, live.settings.cors_origins) == (
        "password", "from-the-command-line", ("https://ui.example",))


def test_the_command_line_auth_mode_wins(tmp_path: Path) -> None:
    live = Live(tmp_path, pinned={"auth": "none"})
    live.edit({"gateway": {"auth": "password", "password": "p"}})
    live.clock.advance(2)
    assert live.settings.mode == "none"


def test_the_environment_wins(tmp_path: Path) -> None:
    live = Live(tmp_path, env={"CODEBUDDY_GATEWAY_AUTH": "password", "CODEBUDDY_GATEWAY_PASSWORD": "env-pw"})
    live.edit({"gateway": {"auth": "none", "password": "file-pw"}})
    live.clock.advance(2)
    assert (live.settings.mode, live.settings.password) == ("password", "env-pw")


def test_changed_user_applies_at_once(live: Live) -> None:
    live.edit({"gateway": {"auth": "password", "password": "now"}})
    live.reloader.changed("project")
    live.reloader.changed("local")
    assert live.settings == GatewaySettings()
    live.reloader.changed("user")
    assert (live.settings.mode, live.settings.password) == ("password", "now")
    live.clock.advance(2)
    assert len(live.resolved) == 1


def test_a_new_password_revokes_the_tokens(live: Live) -> None:
    live.edit({"gateway": {"auth": "password", "password": "one"}})
    live.reloader.changed("user")
    token, _expires = live.guard.tokens.issue()
    assert live.guard.check_credential(token)
    live.edit({"gateway": {"auth": "password", "password": "two"}})
    live.reloader.changed("user")
    assert not live.guard.check_credential(token)
    assert not live.guard.check_credential("one") and live.guard.check_credential("two")


def test_stop_service_stops_the_loop(live: Live) -> None:
    assert live.clock.getDelayedCalls()
    live.reloader.stopService()
    assert live.clock.getDelayedCalls() == []
    assert not live.reloader.running
    live.edit({"gateway": {"auth": "password", "password": "p"}})
    live.clock.advance(10)
    assert live.settings == GatewaySettings() and live.resolved == []
    live.reloader.stopService()  # twice is harmless


def test_api_writes_reach_the_guard(tmp_path: Path) -> None:
    """Wired as in codebuddy.tap: the routes' on_change is the reloader's changed."""
    live = Live(tmp_path)
    api = ApiFixture([SettingsRoutes(live.store, run_now, on_change=live.reloader.changed)])
    status, _body, _response = api.json("PUT", "/api/v1/settings/gateway",
                                        json={"value": {"auth": "password", "password": "via-api"}})
    assert status == 200
    assert (live.settings.mode, live.settings.password) == ("password", "via-api")
    status, _body, _response = api.json("PUT", "/api/v1/settings/gateway?scope=project",
                                         json={"value": {"auth": "none"}})
    assert status == 200 and live.settings.mode == "password"  # only the user file configures the gateway
    assert len(live.resolved) == 1
