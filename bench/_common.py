"""
Pieces shared by the benchmarks (``bench/http.py``, ``bench/fs.py``).

Servers are started in their own process group, pinned to one CPU, on a free
loopback port; polled until healthy; measured (RSS summed over the process
tree); and always stopped as a whole group. Tables are printed with fixed
column widths; targets print as ``[ met ]``/``[MISSED]``/``[ n/a ]`` lines.

Import it after taking the bench/ folder off the front of ``sys.path`` (see
``bench/http.py``): ``bench/http.py`` would shadow the standard library's
``http`` package.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

try:
    import psutil
except ImportError:  # pragma: no cover - reported at run time
    psutil = None

BENCH_DIR = Path(os.path.dirname(os.path.realpath(__file__)))
REPO_ROOT = BENCH_DIR.parent

HEALTH_PATH = "/api/v1/health"
RATE_LIMIT_ENV = {"CODEBUDDY_RATE_LIMIT_RPS": "1000000"}
CODEBUDDY = "codebuddy"

POLL_INTERVAL = 0.010  # seconds between readiness polls
READY_TIMEOUT = 20.0  # seconds a server may take to answer its first 200
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
TAIL_LINES = 15
# Set in this sandbox's shell; a user's installed daemon has cached bytecode.
DROPPED_ENV = {"PYTHONDONTWRITEBYTECODE"}


# --------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    """One target and whether this run met it (None: could not be judged).

    An ``informational`` target is printed with its ratio but is not a target:
    it never counts as MISSED.
    """

    description: str
    met: bool | None
    detail: str
    informational: bool = False

    @property
    def verdict(self) -> str:
        if self.informational:
            return "info"
        return {True: "met", False: "MISSED", None: "n/a"}[self.met]


def target_line(target: Target) -> str:
    return f"  [{target.verdict:^6}] {target.description}: {target.detail}"


def any_missed(targets: Sequence[Target]) -> bool:
    return any(t.met is False and not t.informational for t in targets)


# --------------------------------------------------------------------------
# Tables


def table_row(cells: Sequence[str], columns: Sequence[tuple[str, int, str]]) -> str:
    """One line: each cell padded to its column's (name, width, align)."""
    return "  ".join(f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, columns, strict=True))


def table(columns: Sequence[tuple[str, int, str]], rows: Sequence[Sequence[str]]) -> list[str]:
    """Header, dashes and rows."""
    return [
        table_row([name for name, _, _ in columns], columns),
        table_row(["-" * width for _, width, _ in columns], columns),
        *(table_row(row, columns) for row in rows),
    ]


# --------------------------------------------------------------------------
# Servers


class StartFailed(Exception):
    """The server exited, or did not answer 200 in time."""


@dataclass
class Launch:
    """How to start one server: argv, extra environment, URL path to load."""

    argv: list[str]
    port: int
    path: str = HEALTH_PATH
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = READY_TIMEOUT


@dataclass
class RunningServer:
    proc: subprocess.Popen
    url: str
    workdir: Path
    spawned_at: float

    def stderr_tail(self) -> str:
        return "\n".join(
            _tail(self.workdir / name)
            for name in ("stderr.log", "stdout.log", "error.log")
            if (self.workdir / name).exists()
        ).strip()


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    text = path.read_text(errors="replace").rstrip().splitlines()
    return "\n".join(f"{path.name}: {line}" for line in text[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned_to(cpu: int) -> Callable[[], None]:
    """A ``preexec_fn`` pinning the child (and all it spawns) to one CPU."""

    def pin() -> None:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})

    return pin


@contextmanager
def running(launch: Launch, workdir: Path, cpu: int) -> Iterator[RunningServer]:
    """Start a server in its own process group; always stop the whole group."""
    workdir.mkdir(parents=True, exist_ok=True)
    inherited = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env = {**inherited, **launch.env}
    with open(workdir / "stdout.log", "wb") as out, open(workdir / "stderr.log", "wb") as err:
        spawned_at = time.monotonic()
        proc = subprocess.Popen(
            launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=workdir,
            start_new_session=True,
            preexec_fn=pinned_to(cpu),  # noqa: PLW1509 - no threads here
        )
    try:
        url = f"http://127.0.0.1:{launch.port}{launch.path}"
        yield RunningServer(proc, url, workdir, spawned_at)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers, then any stray child."""
    strays = _descendants(proc.pid)
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)
    for child in strays:  # e.g. a child that left the group; psutil checks identity
        try:
            if child.is_running():
                child.kill()
        except psutil.Error:
            pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _descendants(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy


def answers_200(url: str) -> bool:
    try:
        with _opener.open(url, timeout=1.0) as response:
            response.read()
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_until_healthy(server: RunningServer, timeout: float) -> float:
    """Poll every 10 ms; return ms from spawn to the first 200."""
    deadline = server.spawned_at + timeout
    while time.monotonic() < deadline:
        if answers_200(server.url):
            return (time.monotonic() - server.spawned_at) * 1000
        code = server.proc.poll()
        if code is not None:
            raise StartFailed(f"exited with status {code} before answering 200")
        time.sleep(POLL_INTERVAL)
    raise StartFailed(f"no 200 from {server.url} within {timeout:.0f} s")


# --------------------------------------------------------------------------
# Memory


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process and all its descendants, in MB."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 1e6
    except psutil.Error:
        return None


class RssSampler:
    """Samples ``rss_mb(pid)`` every ``interval`` s in a thread, while in its ``with``.

    ``before`` is read when entering, ``peak`` is the largest sample (``before``
    included), ``growth_mb`` is ``peak - before``.
    """

    def __init__(self, pid: int, interval: float = 0.050):
        self.pid = pid
        self.interval = interval
        self.before: float | None = None
        self.peak: float | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.before = self.peak = rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        value = rss_mb(self.pid)
        if value is not None:
            self.samples += 1
            self.peak = value if self.peak is None else max(self.peak, value)

    @property
    def growth_mb(self) -> float | None:
        if self.before is None or self.peak is None:
            return None
        return self.peak - self.before


# --------------------------------------------------------------------------
# The machine and the tools


def choose_cpus() -> tuple[int, int]:
    """First allowed CPU for the servers, second for the client (same one if only one)."""
    if not hasattr(os, "sched_getaffinity"):
        return 0, 0
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[0], cpus[1] if len(cpus) > 1 else cpus[0]


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def describe_load(value: float | None) -> str:
    if value is None:
        return "unknown"
    busy = " (busy machine: expect noisy numbers)" if value > 0.5 else ""
    return f"{value:.2f}{busy}"


def executable(path: str) -> str | None:
    return path if os.access(path, os.X_OK) else None


def find_nginx() -> str | None:
    return shutil.which("nginx") or executable("/usr/sbin/nginx")  # sbin: not on every PATH


def find_beside_python(name: str) -> str | None:
    """``name`` in the running interpreter's bin/ (the venv's), if it is there."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else None


def install_sigterm_exit() -> None:
    """A SIGTERM unwinds through the finally blocks that stop the servers."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


# --------------------------------------------------------------------------
# codebuddy


CODEBUDDY_TWISTD_ARGS = [
    "-n",
    "--pidfile=",
    "codebuddy",
    "--port",
    "tcp:{port}:interface=127.0.0.1",
    "--home",
    "{home}",
    "--cwd",
    "{cwd}",
]


def codebuddy_env() -> dict[str, str]:
    """The daemon's extra environment: the rate limit off, the repository importable."""
    return {
        **RATE_LIMIT_ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }


def codebuddy_template(command: str | None) -> list[str] | None:
    """argv with {port}/{home}/{cwd}/{tmp} fields: ``command``, else twistd beside python.

    None if there is no ``command`` and no twistd next to the interpreter.
    """
    if command:
        return shlex.split(command)
    twistd = find_beside_python("twistd")
    return None if twistd is None else [twistd, *CODEBUDDY_TWISTD_ARGS]


def no_twistd_reason() -> str:
    return f"no twistd next to {sys.executable}: run with the venv's python or pass --codebuddy-cmd"


def codebuddy_launch(template: list[str], port: int, workdir: Path) -> Launch:
    """The daemon's Launch, with its home and workspace made under ``workdir``."""
    (workdir / "home").mkdir()
    (workdir / "ws").mkdir()
    values = {"port": port, "home": workdir / "home", "cwd": workdir / "ws", "tmp": workdir}
    return Launch([arg.format(**values) for arg in template], port, env=codebuddy_env())
