"""
What the daemon says about itself and its machine: health, info, metrics, environment.

Heap figures for a Python process (``heapUsedMib``/``heapTotalMib`` of ``/metrics``, named
after the Node.js fields the CodeBuddy clients read): CPython has no single heap size, so
``heapUsedMib`` is the process's private resident memory (RSS minus shared pages: the
object heap and malloc arenas) and ``heapTotalMib`` the size of its data segment (the
address space reserved for heap and stacks). Both come from ``/proc/<pid>/statm`` via
psutil, so they are cheap enough to read on every request.
"""

from __future__ import annotations

import getpass
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import psutil
from twisted.internet.interfaces import IReactorTime

from codebuddy import __version__
from codebuddy.web.json import also_as

PLATFORMS = ["generic", "wecom", "wechat-kf"]
MIB = 1024 * 1024

# Variables the daemon reads for itself and its children must not see or leak.
_SECRET_NAMES = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|APIKEY|PRIVATE_KEY|CREDENTIAL)", re.I)
_DAEMON_PLUMBING = frozenset(
    {"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"}
)


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """
    The environment processes started by the daemon inherit (and ``/envs`` shows):
    the daemon's own minus systemd plumbing and the daemon's secrets
    (``CODEBUDDY_*`` variables naming a password, secret, token or key).
    """
    clean: dict[str, str] = {}
    for key, value in environ.items():
        if key in _DAEMON_PLUMBING:
            continue
        if key.startswith("CODEBUDDY_") and _SECRET_NAMES.search(key):
            continue
        clean[key] = value
    return clean


@attrs.frozen
class Health:
    """Liveness of the daemon."""

    status: str
    uptime: float = attrs.field(metadata={"doc": "Seconds since the daemon started"})
    platforms: list[str] = attrs.field(metadata={"doc": "Webhook platforms this daemon accepts"})


@attrs.frozen
class Info:
    """Environment of the daemon."""

    version: str
    os: str
    os_release: str
    platform: str
    arch: str
    hostname: str
    user_name: str
    pid: int
    cwd: str = attrs.field(metadata={"doc": "The workspace (--cwd)"})
    home_dir: str = attrs.field(metadata={"doc": "The state directory (--home)"})
    session_id: str
    auth_mode: str
    gateway_mode: str
    endpoint: str
    started_at: int = attrs.field(metadata={"doc": "Start time, milliseconds since the epoch"})
    uptime: float
    python_version: str
    twisted_version: str


@attrs.frozen
class Instance:
    """One codebuddy process on this machine."""

    id: str
    pid: int
    cwd: str
    hostname: str
    rss_mib: float
    heap_used_mib: float
    heap_total_mib: float
    uptime_seconds: float
    version: str
    is_current: bool
    cpu_pct: float | None = None
    error: str | None = None


@attrs.frozen
class Metrics:
    """Machine metrics (camelCase for CodeBuddy clients, plus E2B's snake_case names)."""

    ts: int = attrs.field(metadata={"doc": "Unix time, seconds"})
    cpu_count: int = attrs.field(metadata=also_as("cpu_count"))
    cpu_used_pct: float = attrs.field(metadata=also_as("cpu_used_pct"))
    mem_total_mib: int = attrs.field(metadata=also_as("mem_total_mib"))
    mem_used_mib: int = attrs.field(metadata=also_as("mem_used_mib"))
    mem_total: int = attrs.field(metadata=also_as("mem_total", doc="Bytes"))
    mem_used: int = attrs.field(metadata=also_as("mem_used", doc="Bytes"))
    mem_cache: int = attrs.field(metadata=also_as("mem_cache", doc="Bytes (page cache and buffers)"))
    disk_used: int = attrs.field(metadata=also_as("disk_used", doc="Bytes used on the workspace's filesystem"))
    disk_total: int = attrs.field(metadata=also_as("disk_total", doc="Bytes"))
    disk_path: str
    instances: list[Instance]


class CpuSampler:
    """
    Machine CPU usage without blocking: the percentage between the previous sample and
    now, re-sampled at most once every ``min_interval`` seconds (cached in between).
    """

    def __init__(self, clock: IReactorTime, min_interval: float = 1.0):
        self.clock = clock
        self.min_interval = min_interval
        self._last_at = clock.seconds()
        self._last = psutil.cpu_times()
        self._value = 0.0

    def percent(self) -> float:
        now = self.clock.seconds()
        if now - self._last_at >= self.min_interval:
            current = psutil.cpu_times()
            busy = _busy(current) - _busy(self._last)
            total = sum(current) - sum(self._last)
            self._value = round(max(0.0, min(100.0, 100.0 * busy / total)), 2) if total > 0 else 0.0
            self._last, self._last_at = current, now
        return self._value


def _busy(times: Any) -> float:
    idle = times.idle + getattr(times, "iowait", 0.0)
    return float(sum(times) - idle)


def process_instance(
    pid: int, *, instance_id: str, cwd: str, version: str, is_current: bool, hostname: str
) -> Instance:
    """Memory and uptime of one codebuddy process; ``error`` set when it cannot be read."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            mem = proc.memory_info()
            created = proc.create_time()
        private = max(mem.rss - getattr(mem, "shared", 0), 0)
        return Instance(
            id=instance_id,
            pid=pid,
            cwd=cwd,
            hostname=hostname,
            rss_mib=round(mem.rss / MIB, 2),
            heap_used_mib=round(private / MIB, 2),
            heap_total_mib=round(getattr(mem, "data", mem.vms) / MIB, 2),
            uptime_seconds=round(max(time.time() - created, 0.0), 1),
            version=version,
            is_current=is_current,
        )
    except (psutil.Error, OSError) as exc:
        return Instance(
            id=instance_id,
            pid=pid,
            cwd=cwd,
            hostname=hostname,
            rss_mib=0.0,
            heap_used_mib=0.0,
            heap_total_mib=0.0,
            uptime_seconds=0.0,
            version=version,
            is_current=is_current,
            error=str(exc) or type(exc).__name__,
        )


class SystemInfo:
    """The system area's domain: built once per daemon."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        workspace: str,
        home: str,
        session_id: str,
        auth_mode: Callable[[], str],
        endpoint: Callable[[], str],
        environ: Mapping[str, str] | None = None,
        started_at: float | None = None,
        instances: Callable[[], list[Instance]] | None = None,
    ):
        self.clock = clock
        self.workspace = workspace
        self.home = home
        self.session_id = session_id
        self.auth_mode = auth_mode
        self.endpoint = endpoint
        self.environ = os.environ if environ is None else environ
        self.started_at = time.time() if started_at is None else started_at
        self._started_clock = clock.seconds()
        self.hostname = socket.gethostname()
        self.cpu = CpuSampler(clock)
        self._other_instances = instances

    def uptime(self) -> float:
        return round(self.clock.seconds() - self._started_clock, 3)

    def health(self) -> Health:
        return Health(status="ok", uptime=self.uptime(), platforms=PLATFORMS)

    def info(self) -> Info:
        import twisted

        uname = platform.uname()
        mode = self.auth_mode()
        return Info(
            version=__version__,
            os=sys.platform,
            os_release=uname.release,
            platform=platform.platform(),
            arch=uname.machine,
            hostname=self.hostname,
            user_name=_user_name(),
            pid=os.getpid(),
            cwd=self.workspace,
            home_dir=self.home,
            session_id=self.session_id,
            auth_mode=mode,
            gateway_mode=mode,
            endpoint=self.endpoint(),
            started_at=int(self.started_at * 1000),
            uptime=self.uptime(),
            python_version=platform.python_version(),
            twisted_version=twisted.__version__,
        )

    def current_instance(self) -> Instance:
        return process_instance(
            os.getpid(),
            instance_id=self.session_id,
            cwd=self.workspace,
            version=__version__,
            is_current=True,
            hostname=self.hostname,
        )

    def metrics(self) -> Metrics:
        vm = psutil.virtual_memory()
        try:
            disk = psutil.disk_usage(self.workspace)
            disk_path = self.workspace
        except OSError:
            disk = psutil.disk_usage("/")
            disk_path = "/"
        disk_used = disk.total - disk.free  # E2B: total minus what unprivileged users may use
        mem_used = vm.total - vm.available
        mem_cache = int(getattr(vm, "cached", 0) + getattr(vm, "buffers", 0))
        instances = [self.current_instance()]
        if self._other_instances is not None:
            instances += [i for i in self._other_instances() if i.pid != os.getpid()]
        return Metrics(
            ts=int(time.time()),
            cpu_count=psutil.cpu_count() or 1,
            cpu_used_pct=self.cpu.percent(),
            mem_total_mib=vm.total // MIB,
            mem_used_mib=mem_used // MIB,
            mem_total=vm.total,
            mem_used=mem_used,
            mem_cache=mem_cache,
            disk_used=disk_used,
            disk_total=disk.total,
            disk_path=disk_path,
            instances=instances,
        )

    def envs(self) -> dict[str, str]:
        return child_environment(self.environ)


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
