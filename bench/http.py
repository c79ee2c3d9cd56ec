"""
HTTP benchmark: codebuddy's ``GET /api/v1/health`` against baseline servers.

Run it by hand, from the repository root, with the interpreter of the
virtualenv that has Twisted (it is also used for the twisted.web baselines)::

    python bench/http.py [--duration 10] [--connections 50] [--json]
                         [--codebuddy-cmd CMD] [--jupyter-python PATH]

Prerequisites: ``apt-get install wrk nginx-light`` (a missing tool skips its
rows with that hint), psutil, and optionally jupyter-server (see --help).

What it does, in one run and one server at a time (never two at once):

* every server is started pinned to the first CPU and wrk
  (``wrk -t1 -cN -dDs --latency URL``) to the second, on a free loopback
  port picked at run time;
* each server is first started once, untimed, to fill the bytecode cache
  (Python servers cache it in the scratch dir: PYTHONPYCACHEPREFIX, with
  PYTHONDONTWRITEBYTECODE dropped), so that every measured start is a warm
  start, like that of an installed daemon;
* it is then started, polled every 10 ms until its URL answers 200 (then
  "idle MB" is read), warmed up with 1 s of wrk, measured with one wrk run
  of ``--duration`` seconds and stopped (its whole process group); and
  started 3 more times just to time spawn-to-first-200 ("start ms" is
  their median);
* codebuddy is started as a user would start it (``twistd -n codebuddy``,
  with the repository on PYTHONPATH) and with
  ``CODEBUDDY_RATE_LIMIT_RPS=1000000``, so that its per-client rate limit,
  which still runs, does not throttle the load generator.

How to read the table:

* ``req/s``: wrk's Requests/sec; ``p50 ms``/``p99 ms``: wrk's latency
  percentiles (closed loop: N connections, each sending its next request as
  soon as the previous answer arrived);
* ``non-2xx``: answers with status >= 400 counted by wrk, ``sock err``:
  wrk's connect/read/write/timeout errors.  A row with either is flagged
  with ``!`` and its numbers are not comparable (an error page is cheap);
* ``idle MB``: RSS after the first healthy answer, before any load;
  ``RSS MB``: RSS right after the measured run.  Both are summed over the
  server's process tree (nginx: master + worker);
* ``start ms``: median time from spawning the process to the first 200.

The targets below the table compare the ``codebuddy`` row with the
``twisted.web bare`` row (a plain ``Resource`` tree behind a default
``Site``, access log included, like twistd) and with jupyter-server.  The
``no access log`` and ``nginx`` rows are references only.  The exit status
is 1 if a target was MISSED, 0 otherwise.
"""

from __future__ import annotations

import os
import sys

# ``python bench/http.py`` puts bench/ first on sys.path, where this file
# would shadow the standard library's ``http`` package (urllib needs it).
_BENCH_DIR = os.path.dirname(os.path.realpath(__file__))
# It goes to the end instead, where the shared ``_common`` module is still found.
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _BENCH_DIR]
sys.path.append(_BENCH_DIR)

import argparse
import json
import re
import shlex
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _common import (
    CODEBUDDY,
    HEALTH_PATH,
    Launch,
    StartFailed,
    Target,
    any_missed,
    choose_cpus,
    codebuddy_launch,
    codebuddy_template,
    describe_load,
    find_nginx,
    free_port,
    install_sigterm_exit,
    load_average,
    no_twistd_reason,
    pinned_to,
    psutil,
    rss_mb,
    running,
    table_row,
    target_line,
    wait_until_healthy,
)

BARE_TWISTED = Path(_BENCH_DIR) / "baselines" / "bare_twisted.py"

JUPYTER_PATH = "/api/status"
HEALTH_JSON = json.dumps(
    {"data": {"status": "ok", "uptime": 1.5, "platforms": ["generic", "wecom", "wechat-kf"]}},
    separators=(",", ":"),
)
INSTALL_HINT = "apt-get install wrk nginx-light"

BARE = "twisted.web bare"
BARE_NO_LOG = "twisted.web bare (no access log)"
NGINX = "nginx"
JUPYTER = "jupyter-server /api/status"

STARTUP_REPEATS = 3

# Targets: codebuddy compared with the baselines.
MIN_SHARE_OF_BARE = 0.70
MIN_TIMES_JUPYTER = 4.0
MAX_P99_VS_BARE = 1.5
MAX_IDLE_RSS_MB = 60.0
MAX_START_MS = 1500.0


# --------------------------------------------------------------------------
# Results


@dataclass
class WrkStats:
    """What one wrk run reported."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


@dataclass
class RowResult:
    """One row of the table: one server, started and measured alone."""

    name: str
    status: str = "skipped"  # "ok", "failed" or "skipped"
    url: str = ""
    command: str = ""
    env: dict[str, str] = field(default_factory=dict)
    wrk: WrkStats | None = None
    idle_rss_mb: float | None = None
    rss_mb: float | None = None
    start_ms: list[float] = field(default_factory=list)
    note: str = ""
    error: str = ""

    @property
    def median_start_ms(self) -> float | None:
        return statistics.median(self.start_ms) if self.start_ms else None

    @property
    def flagged(self) -> bool:
        """True if wrk saw errors: the numbers are then not comparable."""
        return self.wrk is not None and (self.wrk.non_2xx > 0 or self.wrk.socket_errors > 0)

    def to_json(self) -> dict:
        data = asdict(self)
        data["median_start_ms"] = self.median_start_ms
        data["flagged"] = self.flagged
        return data


@dataclass
class Settings:
    duration: int
    connections: int
    warmup: int
    server_cpu: int
    wrk_cpu: int
    wrk: str | None
    nginx: str | None
    load_average: float | None  # 1-minute load before the run: other work skews results


# --------------------------------------------------------------------------
# Servers


@dataclass
class ServerSpec:
    """A row to measure: ``launch(port, workdir)`` builds the command."""

    name: str
    launch: Callable[[int, Path], Launch] | None
    note: str = ""
    skip_reason: str = ""


# --------------------------------------------------------------------------
# wrk


def wrk_argv(settings: Settings, url: str, duration: int) -> list[str]:
    return [
        settings.wrk or "wrk",
        "-t1",
        f"-c{settings.connections}",
        f"-d{duration}s",
        "--latency",
        url,
    ]


def run_wrk(settings: Settings, url: str, duration: int) -> WrkStats:
    result = subprocess.run(
        wrk_argv(settings, url, duration),
        capture_output=True,
        check=False,
        text=True,
        timeout=duration + 30,
        preexec_fn=pinned_to(settings.wrk_cpu),
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr.strip()}")
    return parse_wrk(result.stdout)


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _to_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(output: str) -> WrkStats:
    """Parse ``wrk --latency`` output (latencies converted to ms)."""

    def percentile(p: str) -> float:
        match = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
        if not match:
            raise ValueError(f"no {p}% latency in wrk output:\n{output}")
        return _to_ms(*match.groups())

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    if not rps or not total:
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkStats(
        requests_per_s=float(rps.group(1)),
        p50_ms=percentile("50"),
        p99_ms=percentile("99"),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(map(int, sockets.groups())) if sockets else 0,
    )


# --------------------------------------------------------------------------
# One row


def measure(spec: ServerSpec, settings: Settings, scratch: Path) -> RowResult:
    """Start the server alone, load it, stop it; then time 3 more starts."""
    row = RowResult(spec.name, note=spec.note)
    if spec.launch is None:
        row.error = spec.skip_reason
        return row
    try:
        # An untimed start fills the bytecode cache, so that idle RSS and start
        # times are those of an installed server, not of a first compilation.
        _start_only(spec, settings, scratch, row, timed=False)
        _load_run(spec, settings, scratch, row)
        for _ in range(STARTUP_REPEATS):
            _start_only(spec, settings, scratch, row)
        row.status = "ok"
    except (StartFailed, RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
        row.status = "failed"
        row.error = f"{exc}\n{row.error}".strip()
    return row


def _fresh_launch(spec: ServerSpec, scratch: Path) -> tuple[Launch, Path]:
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    launch = spec.launch(free_port(), workdir)
    # Python servers cache their bytecode under the scratch dir, not in the
    # source trees: the untimed first start fills it, the timed ones use it.
    launch.env = {"PYTHONPYCACHEPREFIX": str(scratch / "pycache"), **launch.env}
    return launch, workdir


def _load_run(spec: ServerSpec, settings: Settings, scratch: Path, row: RowResult) -> None:
    launch, workdir = _fresh_launch(spec, scratch)
    row.command = shlex.join(launch.argv)
    row.env = {k: v for k, v in launch.env.items() if k != "PYTHONPYCACHEPREFIX"}
    with running(launch, workdir, settings.server_cpu) as server:
        row.url = server.url
        try:
            wait_until_healthy(server, launch.ready_timeout)
            row.idle_rss_mb = rss_mb(server.proc.pid)
            if settings.wrk is None:
                row.note = _join(row.note, f"no load: wrk missing ({INSTALL_HINT})")
                return
            run_wrk(settings, server.url, settings.warmup)
            row.wrk = run_wrk(settings, server.url, settings.duration)
            row.rss_mb = rss_mb(server.proc.pid)
            if server.proc.poll() is not None:
                raise StartFailed(f"died during the run (status {server.proc.returncode})")
        except (StartFailed, RuntimeError, subprocess.SubprocessError):
            row.error = server.stderr_tail()
            raise


def _start_only(spec: ServerSpec, settings: Settings, scratch: Path, row: RowResult, timed: bool = True) -> None:
    launch, workdir = _fresh_launch(spec, scratch)
    with running(launch, workdir, settings.server_cpu) as server:
        try:
            elapsed = wait_until_healthy(server, launch.ready_timeout)
            if timed:
                row.start_ms.append(elapsed)
        except StartFailed:
            row.error = server.stderr_tail()
            raise


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


# --------------------------------------------------------------------------
# The rows


def codebuddy_spec(command: str | None) -> ServerSpec:
    note = "env CODEBUDDY_RATE_LIMIT_RPS=1000000 (limiter still runs)"
    template = codebuddy_template(command)
    if template is None:
        return ServerSpec(CODEBUDDY, None, note, no_twistd_reason())

    def launch(port: int, workdir: Path) -> Launch:
        return codebuddy_launch(template, port, workdir)

    return ServerSpec(CODEBUDDY, launch, note)


def bare_twisted_spec(access_log: bool) -> ServerSpec:
    def launch(port: int, workdir: Path) -> Launch:
        argv = [sys.executable, str(BARE_TWISTED), str(port)]
        return Launch(argv if access_log else [*argv, "--no-access-log"], port)

    note = "target baseline" if access_log else "reference"
    return ServerSpec(BARE if access_log else BARE_NO_LOG, launch, note)


NGINX_CONF = """\
# Generated by bench/http.py; one worker, pinned to the server CPU by the
# affinity it inherits from the master.
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = {path} {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""


def nginx_spec(nginx: str | None) -> ServerSpec:
    if nginx is None:
        return ServerSpec(NGINX, None, "reference", f"nginx not found ({INSTALL_HINT})")

    def launch(port: int, workdir: Path) -> Launch:
        conf = workdir / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(dir=workdir, port=port, path=HEALTH_PATH, body=HEALTH_JSON)
        )
        argv = [nginx, "-e", str(workdir / "error.log"), "-p", str(workdir), "-c", str(conf)]
        return Launch([*argv, "-g", "daemon off;"], port)

    return ServerSpec(NGINX, launch, "reference")


def find_jupyter(python: str | None) -> tuple[list[str] | None, str]:
    """The command prefix running jupyter-server, and its version or why none."""
    candidates = [python] if python else [sys.executable]
    for interpreter in candidates:
        version = _command_output(
            [interpreter, "-c", "import jupyter_server as j; print(j.__version__)"]
        )
        if version:
            return [interpreter, "-m", "jupyter_server"], version
    if not python:
        executable = shutil.which("jupyter-server")
        version = executable and _command_output([executable, "--version"])
        if version:
            return [executable], version
    where = python or f"{sys.executable} (and no jupyter-server on PATH)"
    return None, f"jupyter_server not importable by {where}; pass --jupyter-python"


def _command_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, check=False, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (
        done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else ""
    )


def jupyter_spec(python: str | None) -> ServerSpec:
    prefix, version = find_jupyter(python)
    if prefix is None:
        return ServerSpec(JUPYTER, None, "", version)
    # jupyter-server 2 moved the token to IdentityProvider (ServerApp.token is
    # a deprecated alias); 1.x only knows ServerApp.token / ServerApp.password.
    if int(version.split(".")[0]) >= 2:
        auth = ["--IdentityProvider.token=", "--PasswordIdentityProvider.hashed_password="]
    else:
        auth = ["--ServerApp.token=", "--ServerApp.password="]

    def launch(port: int, workdir: Path) -> Launch:
        root = workdir / "root"
        root.mkdir()
        argv = [
            *prefix,
            *auth,
            "--no-browser",
            "--ServerApp.open_browser=False",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",  # else it silently moves to another port
            f"--ServerApp.root_dir={root}",
            "--allow-root",  # refuses to start as root otherwise
        ]
        env = {f"JUPYTER_{d}_DIR": str(workdir / d.lower()) for d in ("CONFIG", "DATA", "RUNTIME")}
        return Launch(argv, port, JUPYTER_PATH, env, ready_timeout=60.0)

    return ServerSpec(JUPYTER, launch, f"jupyter-server {version}")


# --------------------------------------------------------------------------
# Targets


def evaluate(rows: dict[str, RowResult]) -> list[Target]:
    ours, bare, jupyter = rows[CODEBUDDY], rows[BARE], rows[JUPYTER]
    return [
        _throughput_vs(
            ours, bare, MIN_SHARE_OF_BARE, f"req/s >= {MIN_SHARE_OF_BARE:.0%} of {BARE}"
        ),
        _throughput_vs(
            ours, jupyter, MIN_TIMES_JUPYTER, f"req/s >= {MIN_TIMES_JUPYTER:g}x {JUPYTER}"
        ),
        _p99_vs(ours, bare),
        _idle_rss(ours),
        _start_time(ours),
    ]


def _not_comparable(ours: RowResult, base: RowResult) -> tuple[bool | None, str] | None:
    """(met, detail) when the two loads cannot be compared, else None.

    Our own failure or error answers are a miss; a skipped or broken
    baseline, or no load at all (wrk missing), cannot judge (n/a).
    """
    if base.status == "skipped":
        return None, f"{base.name} was not measured ({base.error or 'skipped'})"
    if ours.status != "ok":
        return False, f"{CODEBUDDY} was not measured ({ours.status})"
    if ours.wrk is None:
        return None, f"no load was generated (wrk missing: {INSTALL_HINT})"
    if ours.flagged:
        errors = f"{ours.wrk.non_2xx} non-2xx, {ours.wrk.socket_errors} socket errors"
        return False, f"{CODEBUDDY} answered with errors ({errors})"
    if base.wrk is None or base.flagged:
        return None, f"{base.name} has no valid measurement ({base.status})"
    return None


def _throughput_vs(ours: RowResult, base: RowResult, factor: float, text: str) -> Target:
    description = f"{CODEBUDDY} {text}"
    if unjudged := _not_comparable(ours, base):
        return Target(description, *unjudged)
    got, needed = ours.wrk.requests_per_s, factor * base.wrk.requests_per_s
    detail = (
        f"{got:,.0f} vs {needed:,.0f} needed ({got / base.wrk.requests_per_s:.2f}x {base.name})"
    )
    return Target(description, got >= needed, detail)


def _p99_vs(ours: RowResult, bare: RowResult) -> Target:
    description = f"{CODEBUDDY} p99 <= {MAX_P99_VS_BARE:g}x {BARE} p99"
    if unjudged := _not_comparable(ours, bare):
        return Target(description, *unjudged)
    got, allowed = ours.wrk.p99_ms, MAX_P99_VS_BARE * bare.wrk.p99_ms
    return Target(description, got <= allowed, f"{got:.2f} ms vs {allowed:.2f} ms allowed")


def _idle_rss(ours: RowResult) -> Target:
    description = f"{CODEBUDDY} idle RSS < {MAX_IDLE_RSS_MB:g} MB"
    if ours.idle_rss_mb is None:
        return Target(description, False, f"{CODEBUDDY} was not measured ({ours.status})")
    return Target(description, ours.idle_rss_mb < MAX_IDLE_RSS_MB, f"{ours.idle_rss_mb:.1f} MB")


def _start_time(ours: RowResult) -> Target:
    description = f"{CODEBUDDY} start to first healthy < {MAX_START_MS / 1000:g} s"
    if len(ours.start_ms) < STARTUP_REPEATS:
        return Target(description, False, f"{CODEBUDDY} did not start {STARTUP_REPEATS} times")
    samples = ", ".join(f"{ms:.0f}" for ms in ours.start_ms)
    median = ours.median_start_ms
    return Target(description, median < MAX_START_MS, f"median {median:.0f} ms of [{samples}] ms")


# --------------------------------------------------------------------------
# Output


COLUMNS = [
    ("server", 34, "<"),
    ("req/s", 9, ">"),
    ("p50 ms", 8, ">"),
    ("p99 ms", 8, ">"),
    ("non-2xx", 8, ">"),
    ("sock err", 8, ">"),
    ("idle MB", 8, ">"),
    ("RSS MB", 7, ">"),
    ("start ms", 9, ">"),
]


def _cells(row: RowResult) -> list[str]:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    name = ("! " if row.flagged else "") + row.name
    if row.status != "ok":
        name = f"{row.name} [{row.status.upper()}]"
    w = row.wrk
    return [
        name,
        num(w and w.requests_per_s, ",.0f"),
        num(w and w.p50_ms, ".2f"),
        num(w and w.p99_ms, ".2f"),
        num(w and w.non_2xx, "d"),
        num(w and w.socket_errors, "d"),
        num(row.idle_rss_mb, ".1f"),
        num(row.rss_mb, ".1f"),
        num(row.median_start_ms, ".0f"),
    ]


def _line(cells: list[str]) -> str:
    return table_row(cells, COLUMNS)


def render(
    settings: Settings, rows: list[RowResult], targets: list[Target], warnings: list[str]
) -> str:
    out = [
        (
            f"GET {HEALTH_PATH} (jupyter-server: GET {JUPYTER_PATH}), "
            f"wrk -t1 -c{settings.connections} -d{settings.duration}s --latency "
            f"after a {settings.warmup} s warm-up; servers on CPU {settings.server_cpu}, "
            f"wrk on CPU {settings.wrk_cpu}, one server at a time; "
            f"load average before the run: {_load(settings)}"
        ),
        (
            f"{CODEBUDDY} runs with CODEBUDDY_RATE_LIMIT_RPS=1000000: the default per-client "
            "rate limit would throttle wrk; the limiter code still runs."
        ),
        "",
        _line([name for name, _, _ in COLUMNS]),
        _line(["-" * width for _, width, _ in COLUMNS]),
        *(_line(_cells(row)) for row in rows),
        "",
        (
            "idle MB: RSS after the first 200; RSS MB: after the run; start ms: median of "
            f"{STARTUP_REPEATS} warm spawns to first 200. '!' = wrk saw errors, not comparable."
        ),
    ]
    if warnings:
        out += ["", "Prerequisites:", *(f"  WARNING: {w}" for w in warnings)]
    notes = [_row_notes(row) for row in rows]
    out += ["", "Rows:", *filter(None, notes)]
    out += ["", "Targets:"]
    out += [target_line(t) for t in targets]
    return "\n".join(out)


def _load(settings: Settings) -> str:
    return describe_load(settings.load_average)


def _row_notes(row: RowResult) -> str:
    lines = [f"  {row.name}: {row.status}" + (f" - {row.note}" if row.note else "")]
    if row.command:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in row.env.items())
        lines.append(f"    $ {env + ' ' if env else ''}{row.command}")
    if row.flagged:
        lines.append(
            f"    ! {row.wrk.non_2xx} non-2xx answers, {row.wrk.socket_errors} socket errors"
        )
    if row.error:
        lines += [f"    | {line}" for line in row.error.splitlines()]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark codebuddy's GET /api/v1/health against baselines.",
        epilog=f"Needs: {INSTALL_HINT}; optional: jupyter-server (pip install jupyter-server).",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load (10)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up load (1)")
    parser.add_argument(
        "--codebuddy-cmd",
        help="command starting the daemon instead of twistd; {port}, {home}, {cwd} and "
        "{tmp} are filled in. PYTHONPATH gets the repo root prepended "
        "(prefix with 'env -u PYTHONPATH' to measure an installed copy)",
    )
    parser.add_argument(
        "--jupyter-python",
        help="interpreter that can import jupyter_server (default: this one, else a "
        "jupyter-server executable on PATH, else the row is skipped)",
    )
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.connections < 1 or args.warmup < 1:
        parser.error("--duration, --connections and --warmup must be >= 1")
    return args


def prerequisites(settings: Settings) -> list[str]:
    """Warnings about missing tools (nothing here is fatal)."""
    warnings = []
    if settings.wrk is None:
        warnings.append(f"wrk not found: no load is generated. Install: {INSTALL_HINT}")
    if settings.nginx is None:
        warnings.append(f"nginx not found: the nginx row is skipped. Install: {INSTALL_HINT}")
    if settings.server_cpu == settings.wrk_cpu:
        warnings.append("only one CPU available: servers and wrk share it")
    return warnings


def make_settings(args: argparse.Namespace) -> Settings:
    server_cpu, wrk_cpu = choose_cpus()
    return Settings(
        duration=args.duration,
        connections=args.connections,
        warmup=args.warmup,
        server_cpu=server_cpu,
        wrk_cpu=wrk_cpu,
        wrk=shutil.which("wrk"),
        nginx=find_nginx(),
        load_average=load_average(),
    )


def measure_all(specs: list[ServerSpec], settings: Settings) -> list[RowResult]:
    """One server at a time; every child and the scratch dir are gone after."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="codebuddy-bench-", ignore_cleanup_errors=True) as tmp:
        for spec in specs:
            print(f"measuring {spec.name} ...", file=sys.stderr, flush=True)
            rows.append(measure(spec, settings, Path(tmp)))
    return rows


def as_json(settings: Settings, rows: list[RowResult], targets: list[Target]) -> str:
    report = {
        "settings": asdict(settings),
        "rows": [row.to_json() for row in rows],
        "targets": [{**asdict(t), "verdict": t.verdict} for t in targets],
    }
    return json.dumps(report, indent=2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if psutil is None:
        print("psutil is required (pip install psutil)", file=sys.stderr)
        return 2
    install_sigterm_exit()
    settings = make_settings(args)
    warnings = prerequisites(settings)
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)

    specs = [
        codebuddy_spec(args.codebuddy_cmd),
        bare_twisted_spec(access_log=True),
        bare_twisted_spec(access_log=False),
        nginx_spec(settings.nginx),
        jupyter_spec(args.jupyter_python),
    ]
    try:
        rows = measure_all(specs, settings)
    except KeyboardInterrupt:
        print("interrupted: all servers stopped, scratch dir removed", file=sys.stderr)
        return 130

    targets = evaluate({row.name: row for row in rows})
    print(render(settings, rows, targets, warnings))
    if args.json:
        print(as_json(settings, rows, targets))
    return 1 if any_missed(targets) else 0


if __name__ == "__main__":
    sys.exit(main())
