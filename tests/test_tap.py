"""twistd plugin, options, configuration precedence and the composition root."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from pathlib import Path

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from codebuddy.config import (
    Config,
    ConfigError,
    coerce_endpoint,
    endpoint_is_loopback,
    gateway_password,
)
from codebuddy.systemd import sd_notify
from codebuddy.tap import Options, makeService


def parse(*args: str, env: dict[str, str] | None = None) -> Options:
    options = Options()
    saved = dict(os.environ)
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        options.parseOptions(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return options


class PluginTests(SynchronousTestCase):
    def test_plugin_discovered(self) -> None:
        """twistd finds exactly one service maker named codebuddy."""
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "codebuddy"]
        self.assertEqual(len(makers), 1)
        self.assertIn("CodeBuddy", makers[0].description)

    def test_no_init_in_twisted_dirs(self) -> None:
        """twisted/ and twisted/plugins/ have no __init__.py (it would shadow Twisted)."""
        root = Path(__file__).resolve().parent.parent
        self.assertFalse((root / "twisted" / "__init__.py").exists())
        self.assertFalse((root / "twisted" / "plugins" / "__init__.py").exists())


class EndpointTests(SynchronousTestCase):
    def test_bare_port_binds_loopback(self) -> None:
        """A bare port binds 127.0.0.1."""
        self.assertEqual(coerce_endpoint("8080"), "tcp:8080:interface=127.0.0.1")

    def test_host(self) -> None:
        """--host applies to a bare port; IPv6 hosts get tcp6 with escaped colons."""
        self.assertEqual(coerce_endpoint("80", "0.0.0.0"), "tcp:80:interface=0.0.0.0")
        self.assertEqual(coerce_endpoint("80", "::1"), "tcp6:80:interface=\\:\\:1")

    def test_endpoint_string_kept(self) -> None:
        """Endpoint descriptions are taken as they are."""
        for value in ("tcp:8080:interface=0.0.0.0", "unix:/run/cb.sock", "systemd:domain=INET:index=0"):
            self.assertEqual(coerce_endpoint(value), value)

    def test_bad_values(self) -> None:
        """Nonsense ports and --host with an endpoint string are errors."""
        for port, host in (("99999", None), ("eighty", None), ("tcp:80", "0.0.0.0")):
            with self.subTest(port=port):
                self.assertRaises(ConfigError, coerce_endpoint, port, host)

    def test_loopback_detection(self) -> None:
        """Only loopback TCP and UNIX sockets count as local."""
        local = ["tcp:1:interface=127.0.0.1", "tcp6:1:interface=\\:\\:1", "unix:/tmp/x", "tcp:1:interface=localhost"]
        remote = [
            "tcp:1",
            "tcp:1:interface=0.0.0.0",
            "tcp6:1",
            "systemd:domain=INET:index=0",
            "tcp:1:interface=10.0.0.2",
        ]
        for value in local:
            self.assertTrue(endpoint_is_loopback(value), value)
        for value in remote:
            self.assertFalse(endpoint_is_loopback(value), value)


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.home = tempfile.mkdtemp()
        self.addCleanup(_rmtree, self.home)

    def test_defaults(self) -> None:
        """Defaults: port 8080 on loopback, auth none, a generated session id, cwd workspace."""
        config = parse("--home", self.home, env={}).config
        self.assertEqual(config.endpoint, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(config.auth_mode, "none")
        self.assertEqual(config.workspace, Path.cwd().resolve())
        self.assertEqual(len(config.session_id), 36)
        self.assertEqual(config.access_log, "none")

    def test_all_options(self) -> None:
        """Every documented option is parsed."""
        config = parse(
            "--port", "9000", "--host", "0.0.0.0", "--session-id", "s", "--cwd", self.home,
            "--home", self.home, "--auth", "password", "--password", "pw", "--access-log", "-", env={},
        ).config
        self.assertEqual(
            (config.endpoint, config.session_id, config.workspace, config.auth_mode),
            ("tcp:9000:interface=0.0.0.0", "s", Path(self.home).resolve(), "password"),
        )
        self.assertEqual((config.password, config.access_log), ("pw", "-"))

    def test_non_loopback_enables_password(self) -> None:
        """Binding beyond loopback turns password auth on by itself."""
        self.assertEqual(parse("--host", "0.0.0.0", "--home", self.home, env={}).config.auth_mode, "password")
        self.assertEqual(
            parse("--port", "tcp:80:interface=0.0.0.0", "--home", self.home, env={}).config.auth_mode, "password"
        )

    def test_env_and_settings(self) -> None:
        """Option > environment > user settings for auth mode and password."""
        Path(self.home, "settings.json").write_text(
            '{"gateway": {"auth": "password", "password": "from-settings", "corsOrigins": ["https://a.example"]}}'
        )
        config = parse("--home", self.home, env={}).config
        self.assertEqual((config.auth_mode, config.password), ("password", "from-settings"))
        self.assertEqual(config.gateway.cors_origins, ("https://a.example",))
        env = {"CODEBUDDY_GATEWAY_AUTH": "password", "CODEBUDDY_GATEWAY_PASSWORD": "from-env"}
        self.assertEqual(parse("--home", self.home, env=env).config.password, "from-env")
        self.assertEqual(parse("--home", self.home, "--auth", "none", env=env).config.auth_mode, "none")

    def test_config_dir_env(self) -> None:
        """CODEBUDDY_CONFIG_DIR sets the home dir."""
        config = parse(env={"CODEBUDDY_CONFIG_DIR": self.home}).config
        self.assertEqual(config.home, Path(self.home))

    def test_broken_settings_ignored(self) -> None:
        """An unparseable settings file does not stop the daemon."""
        Path(self.home, "settings.json").write_text("{nope")
        self.assertEqual(parse("--home", self.home, env={}).config.auth_mode, "none")

    def test_bad_options_exit_with_one_line(self) -> None:
        """Bad options raise SystemExit with one clear line, not a traceback."""
        for args in (["--auth", "maybe"], ["--port", "http"], ["--cwd", "/no/such/dir"], ["--bogus"]):
            with self.subTest(args=args):
                with self.assertRaises(SystemExit) as caught:
                    parse("--home", self.home, *args, env={})
                message = str(caught.exception.code)
                self.assertTrue(message.startswith("twistd codebuddy: "), message)
                self.assertEqual(message.count("\n"), 0)

    def test_rate_limit_env(self) -> None:
        """CODEBUDDY_RATE_LIMIT_RPS and _BURST configure the limiter; junk is an error."""
        config = parse("--home", self.home, env={"CODEBUDDY_RATE_LIMIT_RPS": "5"}).config
        self.assertEqual((config.gateway.rate_limit_rps, config.gateway.rate_limit_burst), (5.0, 10.0))
        with self.assertRaises(SystemExit):
            parse("--home", self.home, env={"CODEBUDDY_RATE_LIMIT_RPS": "fast"})

    def test_empty_env_does_not_override_settings(self) -> None:
        """An empty variable counts as unset: the settings' value stays."""
        Path(self.home, "settings.json").write_text('{"gateway": {"rateLimit": {"requestsPerSecond": 7}}}')
        config = parse("--home", self.home, env={"CODEBUDDY_RATE_LIMIT_RPS": ""}).config
        self.assertEqual(config.gateway.rate_limit_rps, 7.0)


class PasswordTests(SynchronousTestCase):
    def test_generated_once_and_private(self) -> None:
        """A generated password is stored 0600 and reused on the next start."""
        home = Path(tempfile.mkdtemp())
        self.addCleanup(_rmtree, str(home))
        config = Config.build({"home": str(home / "h"), "auth": "password"}, environ={})
        first, generated = gateway_password(config)
        self.assertTrue(generated)
        path = home / "h" / "gateway-password"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        again, generated_again = gateway_password(config)
        self.assertEqual((again, generated_again), (first, False))
        self.assertGreaterEqual(len(first), 20)


class MakeServiceTests(SynchronousTestCase):
    def test_multiservice_listens(self) -> None:
        """makeService builds a MultiService that listens on the configured endpoint when started."""
        home = tempfile.mkdtemp()
        self.addCleanup(_rmtree, home)
        reactor = MemoryReactorClock()
        options = parse("--home", home, "--port", "tcp:8123:interface=127.0.0.1", env={})
        service = makeService(options, reactor=reactor, environ={})
        self.assertIsInstance(service, MultiService)
        service.startService()
        self.assertEqual([(p[0], p[3]) for p in reactor.tcpServers], [(8123, "127.0.0.1")])
        service.stopService()


class NotifyTests(SynchronousTestCase):
    def test_sd_notify(self) -> None:
        """sd_notify sends one datagram to $NOTIFY_SOCKET and is a no-op without it."""
        directory = tempfile.mkdtemp()
        self.addCleanup(_rmtree, directory)
        path = os.path.join(directory, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(path)
            self.assertTrue(sd_notify(b"READY=1", {"NOTIFY_SOCKET": path}))
            self.assertEqual(server.recv(100), b"READY=1")
        self.assertFalse(sd_notify(b"READY=1", {}))
        self.assertFalse(sd_notify(b"READY=1", {"NOTIFY_SOCKET": path + ".gone"}))


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
