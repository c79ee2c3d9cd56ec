# -*- test-case-name: tests.settings.test_live -*-
"""
Settings the daemon itself uses take effect without a restart.

:class:`GatewayReloader` watches the user settings file (the only scope that may configure the
gateway: a project's files come with a repository) by its (mtime, size, inode), every
``interval`` seconds and at once after a write through the API, and hands the guard the
gateway settings resolved again: password, auth mode, CORS origins, allowed hosts, the request
header requirement and the rate limit. The command line and the environment still win over
the file (:func:`codebuddy.config.resolve_gateway`). A file that does not parse, or a gateway
object that does not resolve, is logged and the settings in force are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from codebuddy.config import ConfigError
from codebuddy.settings.store import SettingsFileError, SettingsStore
from codebuddy.web.auth import GatewaySettings, RequestGuard

__all__ = ["GatewayReloader"]

INTERVAL = 2.0


class GatewayReloader(Service):
    """Re-resolves the guard's settings when the user settings file changes."""

    log = Logger()

    def __init__(
        self,
        store: SettingsStore,
        guard: RequestGuard,
        clock: IReactorTime,
        run_blocking: Callable[..., Deferred[Any]],
        resolve: Callable[[Any], GatewaySettings],
        interval: float = INTERVAL,
    ) -> None:
        self.store = store
        self.guard = guard
        self.clock = clock
        self.run_blocking = run_blocking
        self.resolve = resolve
        self.interval = interval
        self._seen = store.version("user")
        self._loop: LoopingCall | None = None
        self._busy = False

    def startService(self) -> None:
        super().startService()
        self._seen = self.store.version("user")
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(lambda f: self.log.failure("Settings watch", f))

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()  # type: ignore[no-any-return]

    def changed(self, scope: str) -> None:
        """A scope was written through the API: look at once (user scope only matters)."""
        if scope == "user":
            self.check()

    def check(self) -> Deferred[Any] | None:
        version = self.store.version("user")
        if version == self._seen or self._busy:
            return None
        self._busy = True
        d = self.run_blocking(self._resolve)
        d.addCallback(self._apply, version)
        d.addErrback(lambda f: self.log.failure("Reloading the gateway settings failed", f))

        def done(result: Any) -> Any:
            self._busy = False
            return result

        return d.addBoth(done)

    def _resolve(self) -> GatewaySettings | str:
        try:
            settings = self.store.read("user")
        except SettingsFileError as exc:
            return str(exc)
        try:
            return self.resolve(settings.get("gateway"))
        except ConfigError as exc:
            return f"{self.store.path('user')}: {exc}"

    def _apply(self, resolved: GatewaySettings | str, version: Any) -> None:
        self._seen = version
        if isinstance(resolved, str):
            self.log.error("Gateway settings not applied, the ones in force are kept: {problem}", problem=resolved)
            return
        if resolved != self.guard.settings:
            self.guard.update(resolved)
            self.log.info("Gateway settings changed (auth {mode}, {origins} CORS origins)", mode=resolved.mode,
                          origins=len(resolved.cors_origins))
