"""
Who may talk to the daemon: auth modes, login tokens, rate limits and the request guard.

The guard runs in two steps (ARCHITECTURE.md §4):

* :meth:`RequestGuard.screen` runs for every ``/api`` request before routing: the general
  rate limit, the ``Host`` check (auth ``none`` only, against DNS rebinding), the ``Origin``
  check with CORS headers and preflights, and the optional ``X-CodeBuddy-Request`` header.
* :meth:`RequestGuard.authenticate` runs for every route that is not public, once the
  route is known: Bearer / ``?password=`` / ``?token=`` / cookie, compared in constant time.
  Failed credentials count against the same per-client limiter as failed logins, so a
  password cannot be guessed through any endpoint faster than through the login.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import re
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from codebuddy.storage import atomic_write
from codebuddy.web.errors import ApiError

TOKEN_COOKIE = "codebuddy_token"
TOKEN_TTL = 24 * 3600.0

AUTH_NONE = "none"
AUTH_PASSWORD = "password"
AUTH_MODES = (AUTH_NONE, AUTH_PASSWORD)


# --------------------------------------------------------------------------- limits


class _BoundedTable(OrderedDict[str, Any]):
    """An LRU dict: the least recently touched key is dropped past ``limit`` keys."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def touch(self, key: str, factory: Callable[[], Any]) -> Any:
        value = self.get(key)
        if value is None:
            value = self[key] = factory()
            if len(self) > self.limit:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return value


class TokenBucket:
    """
    Per-client token buckets: ``rate`` requests a second sustained, ``burst`` at once.

    ``take(key)`` returns ``None`` when the request may go ahead, else the seconds to wait.
    A rate of 0 disables the limiter.
    """

    def __init__(self, clock: IReactorTime, rate: float, burst: float, max_clients: int = 10_000):
        self.clock = clock
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets = _BoundedTable(max_clients)

    def configure(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)

    def take(self, key: str) -> float | None:
        if self.rate <= 0:
            return None
        now = self.clock.seconds()
        bucket = self._buckets.touch(key, lambda: [self.burst, now])
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate


@attrs.frozen
class Window:
    """At most ``count`` events per ``seconds``."""

    count: int
    seconds: float


class FailureLimiter:
    """
    Counts failed logins per client and refuses a client once any window is full.

    Defaults follow the CodeBuddy server: 2 failures a minute and 12 an hour.
    """

    def __init__(
        self,
        clock: IReactorTime,
        windows: Iterable[Window] = (Window(2, 60.0), Window(12, 3600.0)),
        max_clients: int = 10_000,
    ):
        self.clock = clock
        self.windows = tuple(windows)
        self._longest = max(w.seconds for w in self.windows)
        self._failures = _BoundedTable(max_clients)

    def retry_after(self, key: str) -> float | None:
        """Seconds until ``key`` may try again, or ``None`` if it may try now."""
        times = self._failures.get(key)
        if not times:
            return None
        now = self.clock.seconds()
        while times and times[0] <= now - self._longest:
            times.popleft()
        wait: float | None = None
        for window in self.windows:
            recent = [t for t in times if t > now - window.seconds]
            if len(recent) >= window.count:
                # Never 0: the client is refused now, so it must wait a little.
                until = max(recent[-window.count] + window.seconds - now, 0.001)
                wait = until if wait is None else max(wait, until)
        return wait

    def record_failure(self, key: str) -> None:
        self._failures.touch(key, deque).append(self.clock.seconds())

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)


def retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


# --------------------------------------------------------------------------- tokens


# A login token: 32 random bytes, url-safe base64 without padding.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


class TokenStore:
    """
    Login tokens: 32 random bytes, url-safe, valid for ``ttl`` seconds, kept hashed.

    With a ``path`` the hashes survive a restart (a browser's stored token keeps working):
    the file (mode 0600) holds only SHA-256 digests and expiry times, and is bound to
    the password it was issued for, so changing the password revokes every token.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        ttl: float = TOKEN_TTL,
        max_tokens: int = 10_000,
        path: Path | None = None,
        password: str | None = None,
    ):
        self.clock = clock
        self.ttl = ttl
        self.max_tokens = max_tokens
        self.path = path
        self._expiry: OrderedDict[bytes, float] = OrderedDict()
        self._salt = secrets.token_hex(16)
        self._binding = self._fingerprint(self._salt, password)
        self._load(password)

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()

    @staticmethod
    def _fingerprint(salt: str, password: str | None) -> str:
        return hashlib.sha256((salt + "\0" + (password or "")).encode("utf-8", "surrogateescape")).hexdigest()

    def issue(self) -> tuple[str, float]:
        """A new token and its expiry (epoch seconds)."""
        self.prune(save=False)
        token = secrets.token_urlsafe(32)
        expires = self.clock.seconds() + self.ttl
        self._expiry[self._key(token)] = expires
        while len(self._expiry) > self.max_tokens:
            self._expiry.popitem(last=False)
        self._save()
        return token, expires

    def valid(self, token: str) -> bool:
        expires = self._expiry.get(self._key(token))
        if expires is None:
            return False
        if expires <= self.clock.seconds():
            del self._expiry[self._key(token)]
            return False
        return True

    def rebind(self, password: str | None) -> None:
        """The password changed: revoke every token and bind the store to the new one."""
        self._expiry.clear()
        self._salt = secrets.token_hex(16)
        self._binding = self._fingerprint(self._salt, password)
        self._save()

    def prune(self, save: bool = True) -> None:
        now = self.clock.seconds()
        expired = [k for k, exp in self._expiry.items() if exp <= now]
        for key in expired:
            del self._expiry[key]
        if expired and save:
            self._save()

    def _load(self, password: str | None) -> None:
        """Adopt the tokens of the token file if it was written for the same password."""
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            salt, binding, tokens = data["salt"], data["binding"], data["tokens"]
            if not (isinstance(salt, str) and isinstance(binding, str) and isinstance(tokens, dict)):
                raise ValueError("unexpected layout")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.log.warn("Ignoring unreadable token file {path}: {error}", path=str(self.path), error=str(exc))
            return
        if not hmac.compare_digest(self._fingerprint(salt, password), binding):
            return  # issued for another password: all revoked
        self._salt, self._binding = salt, binding
        now = self.clock.seconds()
        for digest, expires in tokens.items():
            if isinstance(expires, (int, float)) and expires > now:
                try:
                    self._expiry[bytes.fromhex(digest)] = float(expires)
                except ValueError:
                    continue

    def _save(self) -> None:
        if self.path is None:
            return
        data = {
            "salt": self._salt,
            "binding": self._binding,
            "tokens": {digest.hex(): expires for digest, expires in self._expiry.items()},
        }
        try:
            atomic_write(self.path, json.dumps(data).encode(), mode=0o600)
        except OSError as exc:
            self.log.warn("Cannot save login tokens to {path}: {error}", path=str(self.path), error=str(exc))


# --------------------------------------------------------------------------- hosts and origins

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def split_host(host: str) -> str:
    """``example.com:8080`` -> ``example.com``; ``[::1]:80`` -> ``::1``."""
    host = host.strip()
    if host.startswith("["):
        return host[1:].split("]", 1)[0].lower()
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".").lower()


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``::1`` and v4-mapped loopback."""
    host = host.lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def origin_matches(origin: str, pattern: str) -> bool:
    """
    Does ``origin`` (``scheme://host[:port]``) match a configured pattern?

    Patterns: ``*``, an exact origin, or ``scheme://*.domain`` (any subdomain, not the
    bare domain itself).
    """
    pattern = pattern.strip().rstrip("/")
    if pattern == "*":
        return True
    if "://*." in pattern:
        scheme, rest = pattern.split("://*.", 1)
        parts = urlsplit(origin)
        host = parts.hostname or ""
        suffix = rest.split(":", 1)[0].lower()
        return parts.scheme == scheme.lower() and host.endswith("." + suffix)
    return origin.lower() == pattern.lower()


# --------------------------------------------------------------------------- authenticator


@attrs.define
class GatewaySettings:
    """The guard's settings; replaced as a whole when settings change at run time."""

    mode: str = AUTH_NONE
    password: str | None = None
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    require_request_header: bool = False
    rate_limit_rps: float = 1000.0
    rate_limit_burst: float = 2000.0


def client_key(request: Any) -> str:
    """The rate-limit key of a request: its peer's address (unix sockets share one key)."""
    addr = request.getClientAddress()
    return str(getattr(addr, "host", None) or "local")


class RequestGuard:
    """Authentication and request screening for one daemon."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        settings: GatewaySettings,
        local_hosts: Iterable[str] = (),
        token_file: Path | None = None,
    ):
        self.clock = clock
        self.settings = settings
        self.tokens = TokenStore(clock, path=token_file, password=settings.password)
        self.login_failures = FailureLimiter(clock)
        self.requests = TokenBucket(clock, settings.rate_limit_rps, settings.rate_limit_burst)
        self.local_hosts = {h.lower() for h in local_hosts}

    # -- configuration

    @property
    def auth_enabled(self) -> bool:
        return self.settings.mode == AUTH_PASSWORD

    def update(self, settings: GatewaySettings) -> None:
        """Apply new settings; a changed password revokes every token issued for the old one."""
        if settings.password != self.settings.password:
            self.tokens.rebind(settings.password)
        self.settings = settings
        self.requests.configure(settings.rate_limit_rps, settings.rate_limit_burst)

    def add_local_host(self, host: str) -> None:
        """A host name or address the daemon is reached by (its bound address, its hostname)."""
        self.local_hosts.add(host.lower())

    # -- screening (before routing)

    def screen(self, request: Any, exempt_header: bool = False) -> ApiError | None:
        """
        Route-independent checks. Returns the error to answer, or ``None`` to go on.
        Sets CORS headers for allowed cross-origin requests.
        """
        wait = self.requests.take(client_key(request))
        if wait is not None:
            return ApiError("RATE_LIMITED", "Too many requests; slow down", headers=retry_after_header(wait))
        settings = self.settings
        if settings.mode == AUTH_NONE:
            host = request.getHeader(b"host")
            if host is not None and not self.host_allowed(split_host(host.decode("latin-1"))):
                return ApiError(
                    "FORBIDDEN",
                    "Host header not allowed (the daemon answers only its own names without auth)",
                )
        origin = request.getHeader(b"origin")
        if origin is not None:
            origin_text = origin.decode("latin-1")
            if not self.origin_allowed(origin_text, request):
                return ApiError("FORBIDDEN", f"Origin {origin_text} is not allowed")
            request.setHeader(b"access-control-allow-origin", origin)
            request.setHeader(b"access-control-allow-credentials", b"true")
            request.setHeader(b"access-control-expose-headers", b"Retry-After, Content-Disposition, Location")
            request.setHeader(b"vary", b"Origin")
        if (
            settings.require_request_header
            and not exempt_header
            and request.method != b"OPTIONS"
            and request.getHeader(b"x-codebuddy-request") != b"1"
        ):
            return ApiError("FORBIDDEN", "Missing header X-CodeBuddy-Request: 1")
        return None

    def host_allowed(self, host: str) -> bool:
        if not host or is_ip_literal(host) or is_loopback_host(host) or host in self.local_hosts:
            return True
        if host in (h.lower() for h in self.settings.allowed_hosts):
            return True
        return any(urlsplit(o).hostname == host for o in self.settings.cors_origins if o != "*")

    def origin_allowed(self, origin: str, request: Any) -> bool:
        if origin == "null":
            return "null" in self.settings.cors_origins
        parts = urlsplit(origin)
        host = parts.hostname or ""
        if parts.scheme in ("http", "https") and is_loopback_host(host):
            return True
        own = request.getHeader(b"host")
        if own is not None and parts.netloc.lower() == own.decode("latin-1").lower():
            return True
        return any(origin_matches(origin, p) for p in self.settings.cors_origins)

    def admits(self, request: Any) -> bool:
        """
        Would ``request`` pass the Host and Origin checks and authentication? Asked when only
        its headers have arrived, before a streamed body is written anywhere.
        """
        if self.settings.mode == AUTH_NONE:
            host = request.getHeader(b"host")
            if host is not None and not self.host_allowed(split_host(host.decode("latin-1"))):
                return False
        origin = request.getHeader(b"origin")
        if origin is not None and not self.origin_allowed(origin.decode("latin-1"), request):
            return False
        return self.is_authenticated(request)

    # -- authentication (after routing)

    def credentials(self, request: Any) -> list[str]:
        """Every credential the request carries, in the order they are checked."""
        found: list[str] = []
        header = request.getHeader(b"authorization")
        if header is not None:
            scheme, _, value = header.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                found.append(value.strip())
        for name in (b"password", b"token"):
            for value in request.args.get(name, ()):
                if value:
                    found.append(value.decode("utf-8", "replace"))
        cookie = request.getCookie(TOKEN_COOKIE.encode())
        if cookie:
            found.append(cookie.decode("latin-1"))
        return found

    def check_credential(self, credential: str) -> bool:
        password = self.settings.password
        if password is not None and hmac.compare_digest(
            credential.encode("utf-8", "surrogateescape"), password.encode("utf-8")
        ):
            return True
        return self.tokens.valid(credential)

    def is_authenticated(self, request: Any) -> bool:
        """True in mode ``none``, or when one of the request's credentials is valid."""
        if not self.auth_enabled:
            return True
        return any(self.check_credential(c) for c in self.credentials(request))

    def authenticate(self, request: Any) -> None:
        """Raise ``AUTH_REQUIRED``/``AUTH_INVALID``/``AUTH_RATE_LIMITED`` unless authenticated."""
        if not self.auth_enabled:
            return
        found = self.credentials(request)
        if not found:
            raise ApiError("AUTH_REQUIRED", "Authentication required")
        key = client_key(request)
        wait = self.login_failures.retry_after(key)
        if wait is not None:
            raise ApiError(
                "AUTH_RATE_LIMITED", "Too many failed authentication attempts", headers=retry_after_header(wait)
            )
        if any(self.check_credential(c) for c in found):
            return
        # A stale token (after a restart, from a browser's storage or cookie) is no password
        # guess: guessing a 256-bit token is hopeless, and counting them would lock every
        # returning browser out. Anything else counts like a failed login.
        if any(not TOKEN_SHAPE.fullmatch(c) for c in found):
            self.login_failures.record_failure(key)
        raise ApiError("AUTH_INVALID", "Invalid credentials")

    def login(self, request: Any, password: str | None) -> tuple[str, float]:
        """
        Check ``password`` and issue a token. Raises ``AUTH_RATE_LIMITED`` while the client
        is locked out (even for a right password), ``BAD_REQUEST`` without a password and
        ``AUTH_INVALID`` for a wrong one.
        """
        key = client_key(request)
        wait = self.login_failures.retry_after(key)
        if wait is not None:
            raise ApiError(
                "AUTH_RATE_LIMITED", "Too many login attempts; try again later", headers=retry_after_header(wait)
            )
        if self.auth_enabled:
            if not password:
                raise ApiError("BAD_REQUEST", "A password is required", [{"field": "password", "message": "required"}])
            expected = self.settings.password or ""
            if not hmac.compare_digest(password.encode("utf-8", "surrogateescape"), expected.encode("utf-8")):
                self.login_failures.record_failure(key)
                self.log.warn("Failed login from {client}", client=key)
                raise ApiError("AUTH_INVALID", "Incorrect password")
        return self.tokens.issue()
