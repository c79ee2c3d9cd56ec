"""
``twistd codebuddy``: the options and the composition root.

This is the only module that wires the daemon together: it reads the configuration,
builds each area's domain objects and routes, mounts them under one ``Site`` and hands
twistd a ``MultiService``. Nothing below it imports the global reactor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage
from twisted.web.client import Agent

from codebuddy import __version__
from codebuddy.agent.loop import Agent as CodingAgent
from codebuddy.agent.model import ChatClient, make_http_client, resolve_model
from codebuddy.checkpoints.routes import CheckpointRoutes, InternalCheckpointRoutes
from codebuddy.checkpoints.store import CheckpointStore
from codebuddy.config import (
    AUTH_PASSWORD,
    PASSWORD_FILE,
    TOKEN_FILE,
    Config,
    ConfigError,
    ensure_home,
    gateway_password,
    resolve_gateway,
)
from codebuddy.fs.paths import Resolver
from codebuddy.fs.routes import FsRoutes
from codebuddy.fs.search import FileSearch
from codebuddy.fs.transfer import UploadOpener
from codebuddy.fs.watch import WatchService
from codebuddy.plugins.manager import PluginManager
from codebuddy.plugins.routes import PluginRoutes
from codebuddy.plugins.sources import Git, ManifestFetcher
from codebuddy.process.manager import ProcessManager
from codebuddy.process.routes import ProcessRoutes
from codebuddy.process.spawn import Spawner
from codebuddy.runs.manager import RunManager
from codebuddy.runs.records import RunStore
from codebuddy.runs.routes import RunRoutes
from codebuddy.sessions.routes import SessionsRoutes
from codebuddy.sessions.store import SessionStore
from codebuddy.settings.live import GatewayReloader
from codebuddy.settings.routes import SettingsRoutes
from codebuddy.settings.store import SettingsStore
from codebuddy.system.info import SystemInfo, child_environment
from codebuddy.system.routes import SystemRoutes
from codebuddy.templates.catalog import TemplateCatalog
from codebuddy.templates.recommend import Recommender
from codebuddy.templates.routes import TemplateRoutes
from codebuddy.terminals.manager import TerminalManager
from codebuddy.terminals.routes import TerminalRoutes
from codebuddy.web.auth import GatewaySettings, RequestGuard
from codebuddy.web.openapi import DocsResource, OpenAPIResource, build_openapi
from codebuddy.web.root import Mount, build_root
from codebuddy.web.server import CodeBuddySite, HTTPService, ListenError
from codebuddy.workers.control import Terminator
from codebuddy.workers.daemon import DaemonControl
from codebuddy.workers.registry import Registry
from codebuddy.workers.remote import RemoteClient, quiet_pool
from codebuddy.workers.routes import DaemonRoutes, WorkersRoutes
from codebuddy.workers.service import RegistryService

log = Logger(namespace="codebuddy")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve the CodeBuddy Code HTTP API (REST under /api/v1, docs at /api/docs). "
        "A bare --port binds 127.0.0.1; binding any other address turns password auth on. "
        "Environment: CODEBUDDY_GATEWAY_AUTH, CODEBUDDY_GATEWAY_PASSWORD, CODEBUDDY_CONFIG_DIR, "
        "CODEBUDDY_CODE_CORS_ORIGINS, CODEBUDDY_RATE_LIMIT_RPS."
    )
    optParameters = [
        [
            "port",
            "p",
            "8080",
            "Port to listen on (bound to 127.0.0.1, or to --host) or a Twisted endpoint "
            "description such as tcp:8080:interface=0.0.0.0, unix:/run/codebuddy.sock or "
            "systemd:domain=INET:index=0.",
        ],
        ["host", None, None, "Interface for a bare --port (default 127.0.0.1; 0.0.0.0 enables auth)."],
        ["session-id", None, None, "Id of the daemon's current session (default: a new UUID)."],
        ["cwd", None, None, "Workspace directory; relative paths resolve against it (default: the current directory)."],
        ["home", None, None, "State directory (default: $CODEBUDDY_CONFIG_DIR or ~/.codebuddy)."],
        [
            "auth",
            None,
            None,
            "Auth mode: none or password (default: $CODEBUDDY_GATEWAY_AUTH, else password "
            "when bound beyond loopback, else none).",
        ],
        [
            "password",
            None,
            None,
            "Gateway password (prefer $CODEBUDDY_GATEWAY_PASSWORD: arguments are visible in ps). "
            "Generated and stored in <home>/gateway-password when needed and not given.",
        ],
        [
            "access-log",
            None,
            "none",
            "Access log: none (default), '-' for the daemon log, or a file path. "
            "Passwords and tokens in URLs are redacted.",
        ],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as exc:
            raise SystemExit(f"twistd codebuddy: {exc} (see 'twistd codebuddy --help')") from None

    def postOptions(self) -> None:
        auth = self["auth"]
        if auth is not None and auth not in ("none", "password"):
            raise usage.UsageError(f"--auth must be 'none' or 'password', not {auth!r}")
        try:
            self.config = Config.build(self)
        except ConfigError as exc:
            raise usage.UsageError(str(exc)) from None

    def opt_version(self) -> None:
        """Print the codebuddy version and exit."""
        print(f"codebuddy {__version__}")
        sys.exit(0)


def release_startup_memory() -> None:
    """Hand the garbage of start-up (imports, the OpenAPI build) back to the OS."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def blocking_runner(reactor: Any) -> Callable[..., Deferred[Any]]:
    """Run blocking work (walks, removals, fsync) in the reactor's thread pool."""

    def run_blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args, **kwargs)

    return run_blocking


def build_fs(config: Config, reactor: Any, guard: RequestGuard, daemon: MultiService) -> FsRoutes:
    """The filesystem area: paths resolve against the workspace, ~ against the user's home."""
    resolver = Resolver(config.workspace)
    run_blocking = blocking_runner(reactor)
    watches = WatchService(reactor)
    watches.setServiceParent(daemon)
    search = FileSearch(run_blocking)
    uploads = UploadOpener(resolver, guard.admits, config.max_upload_bytes, durable=config.upload_fsync)
    return FsRoutes(resolver, run_blocking, reactor, watches, search, uploads)


def build_process(
    config: Config, reactor: Any, guard: RequestGuard, daemon: MultiService, environ: Mapping[str, str]
) -> ProcessRoutes:
    """The process area: one Spawner (children killed on stop), the process table and its routes."""
    spawner = Spawner(reactor, environ=child_environment(environ), default_cwd=str(config.workspace))
    spawner.setServiceParent(daemon)
    manager = ProcessManager(spawner, str(config.workspace), reactor)
    manager.setServiceParent(daemon)
    return ProcessRoutes(manager, reactor, guard.admits)


def build_terminals(config: Config, reactor: Any, daemon: MultiService, processes: ProcessRoutes,
                    environ: Mapping[str, str]) -> TerminalRoutes:
    """The terminal area: PTY sessions on the process table."""
    manager = TerminalManager(processes.manager, reactor, environ=environ, idle_timeout=config.pty_idle_timeout)
    manager.setServiceParent(daemon)
    return TerminalRoutes(manager, reactor)


def build_workers(config: Config, reactor: Any, daemon: MultiService, environ: Mapping[str, str],
                  endpoint: Callable[[], str | None]) -> tuple[WorkersRoutes, DaemonRoutes, RegistryService]:
    """
    The workers area: this process's registry file and telemetry log (a service, added first so
    the telemetry log sees the other areas start), and the routes over the registry. ``endpoint``
    gives the daemon's URL once it listens; call the service's ``listening()`` then.
    """
    registry = Registry(config.home)
    service = RegistryService(registry, session_id=config.session_id, workspace=str(config.workspace),
                              environ=environ, endpoint=endpoint, clock=reactor, publisher=globalLogPublisher)
    service.setServiceParent(daemon)
    agent = Agent(reactor, connectTimeout=RemoteClient.connect_timeout, pool=quiet_pool(reactor))
    remote = RemoteClient(HTTPClient(agent), reactor)
    terminator = Terminator(reactor)
    routes = WorkersRoutes(registry, remote, terminator, reactor, blocking_runner(reactor))
    control = DaemonControl(registry, remote, terminator, reactor, blocking_runner(reactor), reactor.stop,
                            str(config.workspace), environ)
    return routes, DaemonRoutes(control), service


def build_plugins(config: Config, reactor: Any, environ: Mapping[str, str], store: SettingsStore) -> PluginRoutes:
    """
    The plugins area: marketplaces and plugins under <home>/plugins, enabled through the
    settings files (enabledPlugins), fetched with treq (manifest URLs) and git (in the thread pool).
    """
    agent = Agent(reactor, connectTimeout=10.0, pool=quiet_pool(reactor))
    manager = PluginManager(config.home, store, blocking_runner(reactor),
                            ManifestFetcher(HTTPClient(agent), reactor), Resolver(config.workspace), reactor,
                            Git(environ=environ))
    return PluginRoutes(manager)


def build_sessions(config: Config, reactor: Any) -> SessionsRoutes:
    """The sessions area: transcripts under <home>/projects, listed and parsed in the thread pool."""
    store = SessionStore(config.home)
    return SessionsRoutes(store, blocking_runner(reactor), str(config.workspace), config.session_id)


def build_checkpoints(config: Config, reactor: Any, sessions: SessionStore, busy: Callable[[str], bool],
                      ) -> tuple[CheckpointRoutes, InternalCheckpointRoutes]:
    """
    The checkpoints area: one CheckpointStore (the agent's too, as ``routes.store``) over the
    sessions' transcripts; the /api/v1/file-changes routes and the Web UI's /internal forms.
    """
    store = CheckpointStore(config.home, sessions)
    run_blocking = blocking_runner(reactor)
    return (CheckpointRoutes(store, run_blocking, config.session_id, busy),
            InternalCheckpointRoutes(store, run_blocking, config.session_id, busy))


def parse_endpoint(reactor: Any, description: str, environ: Mapping[str, str]) -> Any:
    """The server endpoint for ``description``, or SystemExit with one clear line."""
    try:
        return serverFromString(reactor, description)
    except (KeyError, IndexError) as exc:
        if description.startswith("systemd:"):
            raise SystemExit(
                f"codebuddy: no socket matching {description!r} was passed by systemd "
                f"(LISTEN_FDS={environ.get('LISTEN_FDS', 'unset')}, "
                f"LISTEN_FDNAMES={environ.get('LISTEN_FDNAMES', 'unset')})"
            ) from None
        raise SystemExit(f"codebuddy: bad endpoint {description!r}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"codebuddy: bad endpoint {description!r}: {exc or type(exc).__name__}") from None


class DaemonService(MultiService):
    """
    The daemon: a MultiService whose listen failure ends start-up with one line, and which
    stops in order: stop listening; stop every area (children get SIGTERM, then SIGKILL,
    so their streams send ``end``); then close the open connections once what was written
    to them has been sent.
    """

    http: HTTPService | None = None
    clock: Any = None

    def startService(self) -> None:
        try:
            super().startService()
        except ListenError as exc:
            raise SystemExit(f"codebuddy: {exc}") from None

    def stopService(self) -> Deferred[None]:  # noqa: N802 (Twisted's name)
        http = self.http
        if http is None or self.clock is None:
            return super().stopService()  # type: ignore[no-any-return]
        Service.stopService(self)
        areas = [s for s in reversed(list(self)) if s is not http]
        site: Any = http.site

        def stop_areas(_: object) -> Deferred[Any]:
            return DeferredList([maybeDeferred(s.stopService) for s in areas], consumeErrors=True)

        def close(_: object) -> Deferred[None]:
            return site.close_connections(self.clock)  # type: ignore[no-any-return]

        d: Deferred[Any] = maybeDeferred(http.stopService)
        d.addBoth(stop_areas)
        d.addBoth(close)
        return d.addBoth(lambda _: None)


def makeService(options: Mapping[str, Any], reactor: Any = None, environ: Mapping[str, str] | None = None) -> IService:
    """Build the daemon from parsed options (twistd's entry point)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config: Config = getattr(options, "config", None) or Config.build(options, environ)
    return build_daemon(config, reactor, os.environ if environ is None else environ)


def build_settings(config: Config, reactor: Any, guard: RequestGuard, daemon: MultiService,
                   environ: Mapping[str, str], store: SettingsStore) -> SettingsRoutes:
    """The settings routes, and the reloader that applies gateway settings as they change."""

    def resolve(gateway: Any) -> GatewaySettings:
        resolved = resolve_gateway(config.pinned, environ, gateway, config.loopback_only)
        if resolved.mode == AUTH_PASSWORD and not resolved.password:
            resolved = attrs.evolve(resolved, password=gateway_password(config)[0])
        return resolved

    reloader = GatewayReloader(store, guard, reactor, blocking_runner(reactor), resolve)
    reloader.setServiceParent(daemon)
    return SettingsRoutes(store, blocking_runner(reactor), on_change=reloader.changed)


def build_runs(config: Config, reactor: Any, daemon: MultiService, environ: Mapping[str, str],
               processes: ProcessManager, sessions: SessionStore, checkpoints: CheckpointStore,
               settings: SettingsStore, chat: ChatClient) -> RunRoutes:
    """
    The agent and the run table: runs recorded under <home>/runs, executed by the Agent over
    the model (treq), the process table (Bash), the transcripts and the checkpoints.
    """
    run_blocking = blocking_runner(reactor)
    agent = CodingAgent(config.home, config.workspace, environ, chat, sessions, checkpoints, settings, processes,
                        run_blocking, reactor)
    manager = RunManager(RunStore(config.home), agent, reactor, run_blocking)
    manager.setServiceParent(daemon)

    return RunRoutes(manager, config.workspace, lambda: run_blocking(settings.merged), reactor)


def build_templates(config: Config, reactor: Any, environ: Mapping[str, str], chat: ChatClient) -> TemplateRoutes:
    """Task templates: built-in, the user's, and the model's recommendations for the workspace."""
    run_blocking = blocking_runner(reactor)
    recommender = Recommender(config.home, environ, chat, reactor, run_blocking, resolve_model)
    return TemplateRoutes(TemplateCatalog(config.home), run_blocking, recommender, config.workspace)


def build_daemon(config: Config, reactor: Any, environ: Mapping[str, str]) -> DaemonService:
    """Wire every area for ``config``."""
    endpoint = parse_endpoint(reactor, config.endpoint, environ)
    ensure_home(config.home)
    gateway = config.gateway
    if config.auth_mode == AUTH_PASSWORD:
        password, generated = gateway_password(config)
        gateway = attrs.evolve(gateway, password=password)
        password_file = str(config.home / PASSWORD_FILE)
        if generated:
            log.warn(
                "Generated a gateway password: {password} (stored in {path}; set "
                "CODEBUDDY_GATEWAY_PASSWORD to choose one)",
                password=password,
                path=password_file,
            )
        elif not config.password:
            log.info("Password auth: the gateway password is in {path}", path=password_file)
    elif not config.loopback_only:
        log.warn("Auth is off but the daemon listens beyond loopback ({endpoint})", endpoint=config.endpoint)
    guard = RequestGuard(reactor, gateway, token_file=config.home / TOKEN_FILE)
    daemon = DaemonService()

    http_service: HTTPService | None = None

    def endpoint_url() -> str:
        return http_service.url if http_service is not None else config.endpoint

    system = SystemInfo(
        reactor,
        workspace=str(config.workspace),
        home=str(config.home),
        session_id=config.session_id,
        auth_mode=lambda: guard.settings.mode,
        endpoint=endpoint_url,
        environ=environ,
        started_at=config.started_at,
    )

    def listening_url() -> str | None:
        return http_service.url if http_service is not None and http_service.port is not None else None

    store = SettingsStore(config.home, config.workspace)  # one per daemon: settings and plugins share it
    settings = build_settings(config, reactor, guard, daemon, environ, store)
    workers, daemon_routes, registration = build_workers(config, reactor, daemon, environ, listening_url)
    processes = build_process(config, reactor, guard, daemon, environ)
    sessions = build_sessions(config, reactor)
    checkpoints, internal_checkpoints = build_checkpoints(config, reactor, sessions.store,
                                                          busy=lambda session_id: runs.manager.session_busy(session_id))
    chat = ChatClient(make_http_client(reactor), reactor)  # the model client of runs and task recommendations
    runs = build_runs(config, reactor, daemon, environ, processes.manager, sessions.store, checkpoints.store, store,
                      chat)
    areas: list[Any] = [
        SystemRoutes(system, guard),
        build_fs(config, reactor, guard, daemon),
        processes,
        build_terminals(config, reactor, daemon, processes, environ),
        workers,
        daemon_routes,
        settings,
        sessions,
        checkpoints,
        runs,
        build_templates(config, reactor, environ, chat),
        build_plugins(config, reactor, environ, store),
    ]
    root, v1 = build_root(
        guard,
        areas,
        extra={b"docs": DocsResource()},
        index={"name": "codebuddy", "version": __version__, "docs": "/api/docs", "openapi": "/api/openapi.json"},
    )
    openapi = build_openapi(
        [spec for spec, _area in v1.routes],
        title="CodeBuddy Code HTTP API",
        version=__version__,
        description="REST under /api/v1. Success bodies are {\"data\": ...}; errors are "
        "{\"error\": {\"code\", \"message\", \"details\"?}}.",
    )
    root.children[b"api"].putChild(b"openapi.json", OpenAPIResource(openapi))  # type: ignore[attr-defined]
    root.putChild(b"internal", Mount(guard, "/internal", [internal_checkpoints]))  # the Web UI's file-changes forms
    site = CodeBuddySite(root, access_log=config.access_log, body_openers=v1.body_openers)

    def on_listening(port: IListeningPort) -> None:
        host = port.getHost()
        address = getattr(host, "host", None)
        if address:
            guard.add_local_host(address)
        guard.add_local_host(socket.gethostname())
        guard.add_local_host(socket.getfqdn())
        registration.listening()
        log.info(
            "codebuddy {version}: workspace {workspace}, home {home}, session {session}, auth {mode}",
            version=__version__,
            workspace=str(config.workspace),
            home=str(config.home),
            session=config.session_id,
            mode=guard.settings.mode,
        )
        reactor.callLater(0, release_startup_memory)

    http_service = HTTPService(endpoint, site, config.endpoint, on_listening=on_listening)
    http_service.setServiceParent(daemon)
    daemon.guard = guard  # type: ignore[attr-defined]
    daemon.http = http_service
    daemon.clock = reactor
    daemon.site = site  # type: ignore[attr-defined]
    return daemon

