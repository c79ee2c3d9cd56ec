"""The request guard: auth modes, credentials, tokens, login limiter, origins, hosts, CORS, rate limit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from codebuddy.system.info import SystemInfo
from codebuddy.system.routes import SystemRoutes
from codebuddy.web.auth import (
    FailureLimiter,
    GatewaySettings,
    RequestGuard,
    TokenBucket,
    TokenStore,
    is_loopback_host,
    origin_matches,
    split_host,
)
from tests.helpers import ApiFixture, ApiTestCase
from tests.web.sample_area import SampleRoutes

PASSWORD = "correct horse"


def make_api(**settings: object) -> ApiFixture:
    """The sample area and the real system area behind a guard with ``settings``."""

    def areas(guard: RequestGuard, clock: Clock) -> list[object]:
        system = SystemInfo(
            clock,
            workspace="/",
            home="/tmp",
            session_id="s1",
            auth_mode=lambda: guard.settings.mode,
            endpoint=lambda: "http://127.0.0.1:8080",
            environ={},
        )
        return [SampleRoutes(), SystemRoutes(system, guard)]

    return ApiFixture(areas, GatewaySettings(**settings))  # type: ignore[arg-type]


class PasswordModeTests(ApiTestCase):
    def setUp(self) -> None:
        self.api = make_api(mode="password", password=PASSWORD)

    def test_required(self) -> None:
        """Without credentials a protected route is 401 AUTH_REQUIRED."""
        self.assertError(self.api.json("GET", "/api/v1/items"), 401, "AUTH_REQUIRED")

    def test_loopback_must_authenticate(self) -> None:
        """Loopback clients authenticate too (a reverse proxy makes remote traffic local)."""
        self.assertError(self.api.json("GET", "http://localhost/api/v1/items"), 401, "AUTH_REQUIRED")

    def test_public_routes(self) -> None:
        """Health, auth status, docs and the OpenAPI document need no credentials."""
        for path in ("/api/v1/health", "/api/v1/auth/status", "/api/openapi.json", "/api/docs"):
            with self.subTest(path=path):
                response, _body = self.api.request("GET", path)
                self.assertEqual(response.code, 200)

    def test_bearer_password(self) -> None:
        """Authorization: Bearer <password> is accepted."""
        self.assertData(self.api.json("GET", "/api/v1/items", headers={"Authorization": f"Bearer {PASSWORD}"}))

    def test_query_password(self) -> None:
        """?password= is accepted."""
        self.assertData(self.api.json("GET", "/api/v1/items?password=correct%20horse"))

    def test_wrong_password(self) -> None:
        """A wrong credential is 401 AUTH_INVALID."""
        self.assertError(
            self.api.json("GET", "/api/v1/items", headers={"Authorization": "Bearer nope"}), 401, "AUTH_INVALID"
        )

    def test_unknown_route_needs_auth(self) -> None:
        """Unauthenticated clients get 401, not 404, for unknown routes (nothing leaks)."""
        self.assertError(self.api.json("GET", "/api/v1/secret/thing"), 401, "AUTH_REQUIRED")
        self.assertError(self.api.json("GET", "/api/v1/items/x/y/z"), 401, "AUTH_REQUIRED")

    def test_status(self) -> None:
        """auth/status reports authEnabled and authenticated at the top level and in data."""
        _s, body, _r = self.api.json("GET", "/api/v1/auth/status")
        self.assertEqual((body["authEnabled"], body["authenticated"], body["mode"]), (True, False, "password"))
        self.assertEqual(body["data"]["authEnabled"], True)
        _s, body, _r = self.api.json("GET", "/api/v1/auth/status", headers={"Authorization": f"Bearer {PASSWORD}"})
        self.assertTrue(body["authenticated"])

    def login(self, password: object) -> tuple[int, object, object]:
        return self.api.json("POST", "/api/v1/auth/login", json={"password": password})

    def test_login_token(self) -> None:
        """Login returns a token (top level and data) usable as Bearer, ?token= and cookie."""
        status, body, response = self.login(PASSWORD)
        self.assertEqual(status, 200)
        assert isinstance(body, dict)
        token = body["token"]
        self.assertEqual(body["data"]["token"], token)
        self.assertTrue(body["success"])
        self.assertGreaterEqual(len(token), 43)
        cookie = response.headers.getRawHeaders("set-cookie")[0]
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=strict", cookie)
        self.assertIn(f"codebuddy_token={token}", cookie)
        self.assertData(self.api.json("GET", "/api/v1/items", headers={"Authorization": f"Bearer {token}"}))
        self.assertData(self.api.json("GET", f"/api/v1/items?token={token}"))
        self.assertData(self.api.json("GET", "/api/v1/items", headers={"Cookie": f"codebuddy_token={token}"}))

    def test_token_expires(self) -> None:
        """A token is valid for 24 hours, not longer."""
        _s, body, _r = self.login(PASSWORD)
        assert isinstance(body, dict)
        headers = {"Authorization": f"Bearer {body['token']}"}
        self.api.clock.advance(24 * 3600 - 1)
        self.assertData(self.api.json("GET", "/api/v1/items", headers=headers))
        self.api.clock.advance(2)
        self.assertError(self.api.json("GET", "/api/v1/items", headers=headers), 401, "AUTH_INVALID")

    def test_login_wrong_password(self) -> None:
        """A wrong password is 401 AUTH_INVALID."""
        self.assertError(self.login("bad"), 401, "AUTH_INVALID")

    def test_login_missing_password(self) -> None:
        """A login without a password is 400 BAD_REQUEST naming the field."""
        error = self.assertError(self.api.json("POST", "/api/v1/auth/login", json={}), 400, "BAD_REQUEST")
        self.assertEqual(error["details"][0]["field"], "password")

    def test_login_rate_limited(self) -> None:
        """After 2 failures in a minute the third attempt is 429 with Retry-After, even if right."""
        self.login("bad1")
        self.login("bad2")
        status, body, response = self.login(PASSWORD)
        self.assertEqual((status, body["error"]["code"]), (429, "AUTH_RATE_LIMITED"))  # type: ignore[index]
        retry = int(response.headers.getRawHeaders("retry-after")[0])
        self.assertTrue(0 < retry <= 60, retry)
        self.api.clock.advance(61)
        self.assertEqual(self.login(PASSWORD)[0], 200)

    def test_hourly_limit(self) -> None:
        """At most 12 failures an hour, however they are spread over the minutes."""
        for _ in range(6):
            self.assertEqual(self.login("bad")[0], 401)
            self.assertEqual(self.login("bad")[0], 401)
            self.api.clock.advance(61)
        self.assertError(self.login(PASSWORD), 429, "AUTH_RATE_LIMITED")
        self.api.clock.advance(3600)
        self.assertEqual(self.login(PASSWORD)[0], 200)

    def test_bad_credentials_count_as_failed_logins(self) -> None:
        """Guessing through any endpoint is limited like the login."""
        for _ in range(2):
            self.assertError(self.api.json("GET", "/api/v1/items?password=x"), 401, "AUTH_INVALID")
        self.assertError(self.api.json("GET", "/api/v1/items?password=x"), 429, "AUTH_RATE_LIMITED")

    def test_stale_tokens_do_not_lock_out(self) -> None:
        """Stale tokens (e.g. from before a restart) are refused without counting as password guesses."""
        stale = "A" * 43
        for _ in range(5):
            response = self.api.json("GET", "/api/v1/items", headers={"Cookie": f"codebuddy_token={stale}"})
            self.assertError(response, 401, "AUTH_INVALID")
        self.assertEqual(self.login(PASSWORD)[0], 200)

    def test_password_change_revokes_tokens(self) -> None:
        """Changing the password revokes tokens issued for the old one."""
        _s, body, _r = self.login(PASSWORD)
        assert isinstance(body, dict)
        self.api.guard.update(GatewaySettings(mode="password", password="new"))
        self.assertError(
            self.api.json("GET", "/api/v1/items", headers={"Authorization": f"Bearer {body['token']}"}),
            401,
            "AUTH_INVALID",
        )

    def test_no_host_check_in_password_mode(self) -> None:
        """With a password, any Host name is fine (the daemon is meant to be reached remotely)."""
        self.assertData(
            self.api.json("GET", "http://box.example.com/api/v1/items", headers={"Authorization": f"Bearer {PASSWORD}"})
        )


class NoneModeTests(ApiTestCase):
    def setUp(self) -> None:
        self.api = make_api(mode="none", cors_origins=("https://app.example.com", "https://*.corp.example"))

    def test_open(self) -> None:
        """Mode none needs no credentials."""
        self.assertData(self.api.json("GET", "/api/v1/items"))
        _s, body, _r = self.api.json("GET", "/api/v1/auth/status")
        self.assertEqual((body["authEnabled"], body["authenticated"]), (False, True))

    def test_login_in_none_mode(self) -> None:
        """Login succeeds in mode none (there is nothing to check) and returns a token."""
        status, body, _r = self.api.json("POST", "/api/v1/auth/login", json={})
        self.assertEqual((status, body["success"]), (200, True))

    def test_foreign_host_refused(self) -> None:
        """A Host that is not a loopback name, an address or ours is 403 (DNS rebinding)."""
        self.assertError(self.api.json("GET", "http://evil.example/api/v1/items"), 403, "FORBIDDEN")

    def test_allowed_hosts(self) -> None:
        """Loopback names, IP literals and hosts of allowed origins pass the Host check."""
        for host in ("localhost:8080", "127.0.0.1", "[::1]:8080", "10.1.2.3", "app.example.com", "x.localhost"):
            with self.subTest(host=host):
                self.assertData(self.api.json("GET", "/api/v1/items", headers={"Host": host}))

    def test_foreign_origin_refused(self) -> None:
        """A browser request from a foreign origin is 403 FORBIDDEN."""
        self.assertError(
            self.api.json("GET", "/api/v1/items", headers={"Origin": "https://evil.example"}), 403, "FORBIDDEN"
        )
        self.assertError(self.api.json("GET", "/api/v1/items", headers={"Origin": "null"}), 403, "FORBIDDEN")

    def test_allowed_origins(self) -> None:
        """Loopback origins, our own origin and configured ones get CORS headers."""
        for origin in (
            "http://localhost:3000",
            "http://127.0.0.1:5173",
            "https://app.example.com",
            "https://a.corp.example",
            "http://127.0.0.1:8080",
        ):
            with self.subTest(origin=origin):
                status, _b, response = self.api.json("GET", "/api/v1/items", headers={"Origin": origin})
                self.assertEqual(status, 200)
                self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), [origin])
                self.assertEqual(response.headers.getRawHeaders("access-control-allow-credentials"), ["true"])

    def test_preflight(self) -> None:
        """A CORS preflight from an allowed origin is 204 with the allowed methods and headers."""
        response, body = self.api.request(
            "OPTIONS",
            "/api/v1/items",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-codebuddy-request",
            },
        )
        self.assertEqual((response.code, body), (204, b""))
        self.assertIn("POST", response.headers.getRawHeaders("access-control-allow-methods")[0])
        self.assertEqual(
            response.headers.getRawHeaders("access-control-allow-headers"), ["content-type, x-codebuddy-request"]
        )

    def test_preflight_foreign(self) -> None:
        """A preflight from a foreign origin is 403."""
        self.assertError(
            self.api.json(
                "OPTIONS",
                "/api/v1/items",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            ),
            403,
            "FORBIDDEN",
        )

    def test_request_header_accepted_not_required(self) -> None:
        """X-CodeBuddy-Request: 1 is accepted and not required by default."""
        self.assertData(self.api.json("GET", "/api/v1/items", headers={"X-CodeBuddy-Request": "1"}))
        self.assertData(self.api.json("GET", "/api/v1/items"))


class RequestHeaderTests(ApiTestCase):
    def test_required_by_setting(self) -> None:
        """With require_request_header, requests without it are 403, except probes and login."""
        api = make_api(require_request_header=True)
        self.assertError(api.json("GET", "/api/v1/items"), 403, "FORBIDDEN")
        self.assertData(api.json("GET", "/api/v1/items", headers={"X-CodeBuddy-Request": "1"}))
        self.assertData(api.json("GET", "/api/v1/health"))
        self.assertData(api.json("GET", "/api/v1/auth/status"))


class RateLimitTests(ApiTestCase):
    def test_rate_limited(self) -> None:
        """Past the burst, requests are 429 RATE_LIMITED with Retry-After until tokens refill."""
        api = make_api(rate_limit_rps=2, rate_limit_burst=3)
        for _ in range(3):
            self.assertData(api.json("GET", "/api/v1/health"))
        status, body, response = api.json("GET", "/api/v1/health")
        self.assertEqual((status, body["error"]["code"]), (429, "RATE_LIMITED"))
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])
        self.assertEqual(response.phrase, b"Too Many Requests")
        api.clock.advance(0.5)
        self.assertData(api.json("GET", "/api/v1/health"))

    def test_default_is_generous(self) -> None:
        """The default limit lets a busy client make hundreds of requests at once."""
        api = make_api()
        for _ in range(300):
            self.assertEqual(api.request("GET", "/api/v1/health")[0].code, 200)


class LimiterUnitTests(SynchronousTestCase):
    def test_bucket_refills(self) -> None:
        """A bucket refills at its rate up to its burst."""
        clock = Clock()
        bucket = TokenBucket(clock, rate=1, burst=2)
        self.assertEqual([bucket.take("a"), bucket.take("a")], [None, None])
        self.assertAlmostEqual(bucket.take("a") or 0, 1.0)
        self.assertIsNone(bucket.take("b"))
        clock.advance(1)
        self.assertIsNone(bucket.take("a"))

    def test_bucket_disabled(self) -> None:
        """A rate of 0 disables the limiter."""
        bucket = TokenBucket(Clock(), rate=0, burst=0)
        self.assertTrue(all(bucket.take("a") is None for _ in range(100)))

    def test_bucket_bounded(self) -> None:
        """The limiter forgets the least recent clients past its size."""
        bucket = TokenBucket(Clock(), rate=1, burst=1, max_clients=10)
        for i in range(100):
            bucket.take(str(i))
        self.assertEqual(len(bucket._buckets), 10)

    @given(st.lists(st.floats(min_value=0, max_value=200), max_size=40))
    def test_failure_limiter_windows(self, gaps: list[float]) -> None:
        """The limiter refuses exactly when 2 failures fell in the last minute or 12 in the last hour."""
        clock = Clock()
        limiter = FailureLimiter(clock)
        times: list[float] = []
        for gap in gaps:
            clock.advance(gap)
            now = clock.seconds()
            minute = [t for t in times if t > now - 60]
            hour = [t for t in times if t > now - 3600]
            blocked = len(minute) >= 2 or len(hour) >= 12
            self.assertEqual(limiter.retry_after("k") is not None, blocked)
            if not blocked:
                limiter.record_failure("k")
                times.append(now)

    def test_token_store(self) -> None:
        """Tokens are unique, url-safe and expire."""
        clock = Clock()
        store = TokenStore(clock, ttl=10)
        a, _ = store.issue()
        b, _ = store.issue()
        self.assertNotEqual(a, b)
        self.assertTrue(store.valid(a))
        self.assertFalse(store.valid(a + "x"))
        clock.advance(10)
        self.assertFalse(store.valid(a))


class TokenFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        import tempfile
        from pathlib import Path

        directory = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, directory, True)
        self.path = Path(directory) / "gateway-tokens.json"

    def test_tokens_survive_restart(self) -> None:
        """Tokens are kept (hashed, 0600) across a restart with the same password."""
        import stat

        clock = Clock()
        token, _ = TokenStore(clock, path=self.path, password="pw").issue()
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertNotIn(token, self.path.read_text())
        self.assertTrue(TokenStore(clock, path=self.path, password="pw").valid(token))

    def test_other_password_revokes(self) -> None:
        """A restart with another password revokes the stored tokens."""
        clock = Clock()
        token, _ = TokenStore(clock, path=self.path, password="pw").issue()
        self.assertFalse(TokenStore(clock, path=self.path, password="other").valid(token))

    def test_expired_not_loaded(self) -> None:
        """Expired tokens are not loaded back."""
        clock = Clock()
        token, _ = TokenStore(clock, ttl=10, path=self.path, password="pw").issue()
        clock.advance(11)
        self.assertFalse(TokenStore(clock, path=self.path, password="pw").valid(token))

    def test_rebind(self) -> None:
        """Changing the password at run time revokes tokens in memory and on disk."""
        clock = Clock()
        store = TokenStore(clock, path=self.path, password="pw")
        token, _ = store.issue()
        store.rebind("new")
        self.assertFalse(store.valid(token))
        self.assertFalse(TokenStore(clock, path=self.path, password="pw").valid(token))

    def test_corrupt_file_ignored(self) -> None:
        """An unreadable token file is ignored (and replaced at the next login)."""
        self.path.write_text("{broken")
        store = TokenStore(Clock(), path=self.path, password="pw")
        token, _ = store.issue()
        self.assertTrue(TokenStore(Clock(), path=self.path, password="pw").valid(token))


class HostTests(SynchronousTestCase):
    def test_split_host(self) -> None:
        """Ports and brackets are removed from Host values."""
        self.assertEqual(split_host("Example.COM:80"), "example.com")
        self.assertEqual(split_host("[::1]:8080"), "::1")
        self.assertEqual(split_host("::1"), "::1")

    def test_loopback(self) -> None:
        """Loopback names and addresses are recognised; others are not."""
        for host in ("localhost", "a.localhost", "127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
            self.assertTrue(is_loopback_host(host), host)
        for host in ("10.0.0.1", "0.0.0.0", "example.com", "localhost.evil.com"):
            self.assertFalse(is_loopback_host(host), host)

    def test_origin_patterns(self) -> None:
        """Origin patterns: '*', exact, and scheme://*.domain (subdomains only)."""
        self.assertTrue(origin_matches("https://a.b.example.com", "https://*.example.com"))
        self.assertFalse(origin_matches("https://example.com", "https://*.example.com"))
        self.assertFalse(origin_matches("http://a.example.com", "https://*.example.com"))
        self.assertFalse(origin_matches("https://evilexample.com", "https://*.example.com"))
        self.assertTrue(origin_matches("https://x.y", "*"))
        self.assertTrue(origin_matches("https://App.Example.com", "https://app.example.com/"))
