"""
The daemon's configuration: command-line options, then the environment, then settings.

Precedence for every value is option > environment > user settings (``<home>/settings.json``,
key ``gateway``) > default. Gateway settings are read from the *user* scope only: a
project's ``.codebuddy/settings.json`` comes with a repository and must not be able to
open the daemon to other origins or set its password.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger

from codebuddy.storage import atomic_write
from codebuddy.web.auth import AUTH_MODES, AUTH_NONE, AUTH_PASSWORD, GatewaySettings, is_loopback_host

log = Logger(namespace="codebuddy.config")

DEFAULT_PORT = "8080"
PASSWORD_FILE = "gateway-password"
TOKEN_FILE = "gateway-tokens.json"


class ConfigError(Exception):
    """A configuration value is wrong; the message says which and why."""


def coerce_endpoint(port: str, host: str | None = None) -> str:
    """
    ``8080`` -> ``tcp:8080:interface=127.0.0.1``; an endpoint description is kept as is.

    ``host`` applies to a bare port only; IPv6 addresses get a ``tcp6`` endpoint.
    """
    port = port.strip()
    if port.isdigit():
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"--port {port} is not a valid port number (0-65535)")
        interface = host or "127.0.0.1"
        if ":" in interface:
            return f"tcp6:{port}:interface={interface.replace(':', chr(92) + ':')}"
        return f"tcp:{port}:interface={interface}"
    if host:
        raise ConfigError("--host applies to a bare --port only; put interface= in the endpoint description")
    if ":" not in port:
        raise ConfigError(f"--port {port!r} is neither a port number nor an endpoint description")
    return port


def _endpoint_args(description: str) -> tuple[str, list[str], dict[str, str]]:
    parts = re.split(r"(?<!\\):", description)
    kind = parts[0].lower()
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for part in parts[1:]:
        part = part.replace("\\:", ":")
        if "=" in part:
            key, _, value = part.partition("=")
            keywords[key] = value
        else:
            positional.append(part)
    return kind, positional, keywords


def endpoint_is_loopback(description: str) -> bool:
    """
    Does this endpoint accept connections from this machine only?

    ``tcp``/``tcp6``/``ssl`` are loopback when their ``interface`` is; ``unix`` sockets are
    local; anything else (``systemd:``, unknown kinds) is treated as reachable from outside.
    """
    kind, _positional, keywords = _endpoint_args(description)
    if kind == "unix":
        return True
    if kind in ("tcp", "tcp6", "ssl"):
        interface = keywords.get("interface", "")
        return bool(interface) and is_loopback_host(interface)
    return False


def default_home(environ: Mapping[str, str]) -> Path:
    configured = environ.get("CODEBUDDY_CONFIG_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(environ.get("HOME") or Path.home()) / ".codebuddy"


def read_settings_file(path: Path) -> dict[str, Any]:
    """A settings file as a dict; a missing file is ``{}``, a broken one is reported and ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warn("Cannot read settings {path}: {error}", path=str(path), error=str(exc))
        return {}
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        log.error("Settings file {path} is not valid JSON ({error}); ignoring it", path=str(path), error=str(exc))
        return {}
    return data if isinstance(data, dict) else {}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _number(value: Any, default: float, what: str) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if number < 0:
        raise ConfigError(f"{what} must not be negative, got {value!r}")
    return number


def _origins(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(o.strip() for o in value.split(",") if o.strip())
    if isinstance(value, list):
        return tuple(str(o).strip() for o in value if str(o).strip())
    return ()


@attrs.frozen
class Config:
    """Everything the daemon was told at start-up."""

    endpoint: str
    home: Path
    workspace: Path
    session_id: str
    auth_mode: str
    password: str | None
    access_log: str
    loopback_only: bool
    gateway: GatewaySettings
    max_upload_bytes: int = 0
    upload_fsync: bool = True
    pty_idle_timeout: float = 24 * 3600.0
    started_at: float = attrs.field(factory=time.time)
    # the command line's auth and password: they win over settings changed at run time
    pinned: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def build(cls, options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
        """Resolve options, environment and user settings into a Config."""
        env = os.environ if environ is None else environ
        endpoint = coerce_endpoint(str(options.get("port") or DEFAULT_PORT), options.get("host"))
        home = Path(options["home"]).expanduser() if options.get("home") else default_home(env)
        workspace = Path(options.get("cwd") or os.getcwd()).expanduser()
        if not workspace.is_dir():
            raise ConfigError(f"--cwd {workspace} is not a directory")
        workspace = workspace.resolve()
        loopback = endpoint_is_loopback(endpoint)
        settings = read_settings_file(home / "settings.json")
        gateway = settings.get("gateway") if isinstance(settings.get("gateway"), dict) else {}
        assert isinstance(gateway, dict)

        pinned = {k: str(options[k]) for k in ("auth", "password") if options.get(k)}
        gateway_settings = resolve_gateway(pinned, env, gateway, loopback)
        return cls(
            endpoint=endpoint,
            home=home,
            workspace=workspace,
            session_id=str(options.get("session-id") or uuid.uuid4()),
            auth_mode=gateway_settings.mode,
            password=gateway_settings.password,
            access_log=str(options.get("access-log") or "none"),
            loopback_only=loopback,
            max_upload_bytes=int(_number(env.get("CODEBUDDY_MAX_UPLOAD_BYTES"), 0, "CODEBUDDY_MAX_UPLOAD_BYTES")),
            upload_fsync=(env.get("CODEBUDDY_UPLOAD_FSYNC") or "1").strip().lower() not in ("0", "false", "no", "off"),
            # seconds a terminal may go without any viewer before it is ended (0: never)
            pty_idle_timeout=_number(env.get("CODEBUDDY_PTY_IDLE_TIMEOUT"), 24 * 3600.0, "CODEBUDDY_PTY_IDLE_TIMEOUT"),
            gateway=gateway_settings,
            pinned=pinned,
        )


def resolve_gateway(pinned: Mapping[str, str], env: Mapping[str, str], gateway: Any,
                    loopback: bool) -> GatewaySettings:
    """
    The gateway settings from the command line's ``auth``/``password`` (``pinned``), the
    environment and the user settings' ``gateway`` object, in that order. Also used when the
    user settings change while the daemon runs.
    """
    if not isinstance(gateway, dict):
        gateway = {}
    mode = pinned.get("auth") or env.get("CODEBUDDY_GATEWAY_AUTH") or gateway.get("auth")
    if mode:
        mode = str(mode).strip().lower()
        if mode not in AUTH_MODES:
            raise ConfigError(f"auth mode must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
    else:
        mode = AUTH_NONE if loopback else AUTH_PASSWORD
    password = pinned.get("password") or env.get("CODEBUDDY_GATEWAY_PASSWORD") or gateway.get("password")
    if password is not None and not isinstance(password, str):
        raise ConfigError("gateway.password must be a string")

    cors = _origins(env.get("CODEBUDDY_CODE_CORS_ORIGINS")) + _origins(gateway.get("corsOrigins"))
    hosts = _origins(env.get("CODEBUDDY_ALLOWED_HOSTS")) + _origins(gateway.get("allowedHosts"))
    require_header = _truthy(env.get("CODEBUDDY_REQUIRE_REQUEST_HEADER")) or (
        gateway.get("requireRequestHeader") is True
    )
    if _truthy(env.get("CODEBUDDY_DISABLE_REQUEST_VALIDATION")):
        require_header = False
    limit = gateway.get("rateLimit") if isinstance(gateway.get("rateLimit"), dict) else {}
    assert isinstance(limit, dict)
    rps = _number(
        env.get("CODEBUDDY_RATE_LIMIT_RPS") or limit.get("requestsPerSecond"),
        1000.0,
        "CODEBUDDY_RATE_LIMIT_RPS",
    )
    burst = _number(
        env.get("CODEBUDDY_RATE_LIMIT_BURST") or limit.get("burst"), max(2 * rps, 1.0), "CODEBUDDY_RATE_LIMIT_BURST"
    )
    return GatewaySettings(
        mode=mode,
        password=password or None,
        cors_origins=cors,
        allowed_hosts=hosts,
        require_request_header=require_header,
        rate_limit_rps=rps,
        rate_limit_burst=burst,
    )


def ensure_home(home: Path) -> None:
    """Create the home dir (0700) if it does not exist yet."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)


def gateway_password(config: Config) -> tuple[str, bool]:
    """
    The password for auth mode ``password``: the configured one, else the one generated
    earlier (``<home>/gateway-password``), else a new one stored there with mode 0600.
    Returns ``(password, generated_now)``.
    """
    if config.password:
        return config.password, False
    path = config.home / PASSWORD_FILE
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        stored = ""
    if stored:
        return stored, False
    ensure_home(config.home)
    password = secrets.token_urlsafe(18)
    atomic_write(path, (password + "\n").encode(), mode=0o600)
    return password, True


__all__ = [
    "AUTH_PASSWORD",
    "Config",
    "ConfigError",
    "coerce_endpoint",
    "endpoint_is_loopback",
    "gateway_password",
    "resolve_gateway",
]
