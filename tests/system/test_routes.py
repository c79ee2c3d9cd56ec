"""System endpoints: health, info, metrics, envs."""

from __future__ import annotations

import os

from twisted.internet.task import Clock

from codebuddy import __version__
from codebuddy.system.info import SystemInfo, child_environment
from codebuddy.system.routes import SystemRoutes
from codebuddy.web.auth import GatewaySettings, RequestGuard
from tests.helpers import ApiFixture, ApiTestCase

ENVIRON = {
    "PATH": "/usr/bin",
    "HOME": "/home/u",
    "CODEBUDDY_GATEWAY_PASSWORD": "hunter2",
    "CODEBUDDY_API_KEY": "sk-123",
    "CODEBUDDY_WECOM_SECRET": "x",
    "CODEBUDDY_MODEL": "gpt",
    "NOTIFY_SOCKET": "/run/systemd/notify",
    "LISTEN_FDS": "1",
}


class SystemRoutesTests(ApiTestCase):
    def setUp(self) -> None:
        def areas(guard: RequestGuard, clock: Clock) -> list[object]:
            self.system = SystemInfo(
                clock,
                workspace=os.getcwd(),
                home="/tmp/home",
                session_id="my-session",
                auth_mode=lambda: guard.settings.mode,
                endpoint=lambda: "http://127.0.0.1:8080",
                environ=ENVIRON,
                started_at=1_700_000_000.5,
            )
            return [SystemRoutes(self.system, guard)]

        self.api = ApiFixture(areas, GatewaySettings())

    def test_health_exact(self) -> None:
        """/health answers exactly the spec's shape: status, uptime, platforms."""
        self.api.clock.advance(12.3)
        status, body, _r = self.api.json("GET", "/api/v1/health")
        self.assertEqual(status, 200)
        expected = {"status": "ok", "uptime": 12.3, "platforms": ["generic", "wecom", "wechat-kf"]}
        self.assertEqual(body, {"data": expected})

    def test_info(self) -> None:
        """/info carries version, OS, Python, hostname, pid, cwd, home, session, auth mode and start time."""
        data = self.assertData(self.api.json("GET", "/api/v1/info"))
        self.assertEqual(data["version"], __version__)
        self.assertEqual(data["pid"], os.getpid())
        self.assertEqual(data["cwd"], os.getcwd())
        self.assertEqual(data["homeDir"], "/tmp/home")
        self.assertEqual(data["sessionId"], "my-session")
        self.assertEqual(data["authMode"], "none")
        self.assertEqual(data["startedAt"], 1_700_000_000_500)
        for key in ("os", "arch", "hostname", "pythonVersion", "platform", "endpoint"):
            self.assertTrue(data[key], key)

    def test_metrics_fields(self) -> None:
        """/metrics has the spec's camelCase fields, E2B's snake_case ones, and this instance."""
        data = self.assertData(self.api.json("GET", "/api/v1/metrics"))
        for key in ("ts", "cpuCount", "cpuUsedPct", "memTotalMib", "memUsedMib", "diskUsed", "diskTotal"):
            self.assertIsInstance(data[key], (int, float), key)
        for key in ("cpu_count", "cpu_used_pct", "mem_total_mib", "mem_used_mib", "disk_used", "disk_total"):
            self.assertIsInstance(data[key], (int, float), key)
        self.assertEqual(data["cpu_count"], data["cpuCount"])
        self.assertGreater(data["diskTotal"], 0)
        self.assertLessEqual(data["diskUsed"], data["diskTotal"])
        (instance,) = data["instances"]
        self.assertEqual((instance["pid"], instance["id"], instance["isCurrent"]), (os.getpid(), "my-session", True))
        for key in ("rssMib", "heapUsedMib", "heapTotalMib", "uptimeSeconds"):
            self.assertIsInstance(instance[key], (int, float), key)
        self.assertGreater(instance["rssMib"], 1)

    def test_cpu_sampled_between_calls(self) -> None:
        """CPU usage is computed from the interval between samples, not by blocking."""
        sampler = self.system.cpu
        first = sampler.percent()
        self.api.clock.advance(5)
        second = sampler.percent()
        self.assertTrue(0.0 <= first <= 100.0 and 0.0 <= second <= 100.0)

    def test_envs_without_secrets(self) -> None:
        """/envs is the children's environment: the daemon's secrets and systemd plumbing removed."""
        data = self.assertData(self.api.json("GET", "/api/v1/envs"))
        self.assertEqual(data, {"PATH": "/usr/bin", "HOME": "/home/u", "CODEBUDDY_MODEL": "gpt"})

    def test_child_environment(self) -> None:
        """Only CODEBUDDY_ secrets are removed; a user's own variables stay."""
        env = child_environment({"MY_TOKEN": "keep", "CODEBUDDY_TOKEN": "drop", "LISTEN_PID": "1"})
        self.assertEqual(env, {"MY_TOKEN": "keep"})
