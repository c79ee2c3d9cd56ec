"""
Sessions benchmark: ``GET /api/v1/sessions?cwd=*`` over many transcripts, cold and warm.

Run it by hand, from the repository root, with the virtualenv's interpreter::

    python bench/sessions.py [--sessions 10000] [--projects 50] [--warm 20] [--cold 3]
                             [--scratch DIR] [--codebuddy-cmd CMD] [--json]

It generates ``--sessions`` transcripts (seeded, realistic mix: user and assistant messages,
tool calls with outputs of 0.1-2.5 KB, file-history snapshots, AI titles, renames at the end, a
few empty sessions, one malformed line in 1% of them) in a scratch home, spread over
``--projects`` workspaces, then measures, in one run:

1. baselines, in this process pinned to the daemon's CPU:
   - ``scandir + stat``: a bare ``os.scandir`` + ``stat`` of the same files (the floor of any
     listing that notices changed files; median of 5);
   - ``naive full parse``: what a listing without a cache costs on every request: read every
     file whole, ``json.loads`` every line, fold it (the daemon's own rules), sort, encode;
2. the daemon (``twistd -n codebuddy``, pinned to the first CPU; this client on the second),
   over loopback with ``http.client``, time to the last byte of the body:
   - cold: the first request after a start (the daemon's cache is empty; the OS page cache is
     warm, the files were just written or read), ``--cold`` starts (at least 2);
   - warm: ``--warm`` requests after that;
   - after appends: one line appended to 1% of the transcripts before each of 5 requests
     (those files are read from their previous end only);
   - ``/health`` latency (a second connection, in a loop) during the first start's cold
     listing: the walk runs in the thread pool, the reactor keeps answering. That listing,
     slowed by the probes, is reported on its own row, not with the other cold ones;
   - the daemon's RSS before the first listing and after the warm ones (the cache's size).

Every daemon answer is checked against the naive listing (same sessions, same fields, same
order); a mismatch fails the run. Target: warm p50 under 300 ms for 10,000 transcripts.
Exit status: 1 if a target was MISSED or a check failed, 0 otherwise, 130 if interrupted.
"""

# ruff: noqa: E402 - the sys.path fix below must run before any other import

from __future__ import annotations

import os
import sys

# bench/http.py would shadow the standard library's http package: keep this folder last; the
# repository root goes first, for codebuddy's own transcript rules in the naive baseline.
_BENCH_DIR = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [os.path.dirname(_BENCH_DIR)] + [
    p for p in sys.path if os.path.realpath(p or os.curdir) != _BENCH_DIR] + [_BENCH_DIR]

import argparse
import http.client
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    Launch,
    StartFailed,
    Target,
    any_missed,
    choose_cpus,
    codebuddy_env,
    codebuddy_template,
    describe_load,
    free_port,
    install_sigterm_exit,
    load_average,
    no_twistd_reason,
    rss_mb,
    running,
    table,
    target_line,
    wait_until_healthy,
)

from codebuddy.sessions.transcript import Summary, project_id

MAX_WARM_MS = 300.0
PATH = "/api/v1/sessions?cwd=*"
SEED = 20250615
T0 = 1_750_000_000_000


# --------------------------------------------------------------------------- transcripts


def iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


WORDS = ("refactor parser cache listing tests docs flaky build deploy session transcript latency fix bug "
         "add feature review error handler endpoint config migrate schema index query optimise").split()


def sentence(rnd: random.Random, words: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(words))


def transcript(rnd: random.Random, session_id: str, cwd: str, start: int) -> bytes:
    """One session's JSONL, CodeBuddy's item shapes."""
    at = start
    lines: list[dict[str, Any]] = []

    def item(**fields: Any) -> None:
        nonlocal at
        at += rnd.randint(200, 20_000)
        lines.append({**fields, "id": f"i{len(lines)}", "parentId": f"i{len(lines) - 1}" if lines else None,
                      "timestamp": iso(at), "cwd": cwd, "sessionId": session_id})

    if rnd.random() < 0.02:  # empty: a snapshot only
        item(type="file-history-snapshot", snapshot={"files": {}})
        return b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    for turn in range(rnd.randint(1, 8)):
        item(type="file-history-snapshot", snapshot={"files": {"src/app.py": {"version": turn}}})
        item(type="message", role="user", content=[{"type": "input_text", "text": sentence(rnd, rnd.randint(4, 60))}])
        for call in range(rnd.randint(0, 4)):
            item(type="function_call", name=rnd.choice(["Read", "Bash", "Edit", "Grep"]), callId=f"c{turn}-{call}",
                 arguments=json.dumps({"command": sentence(rnd, 4)}))
            item(type="function_call_result", callId=f"c{turn}-{call}", status="completed",
                 output={"type": "text", "text": "\n".join(sentence(rnd, 10) for _ in range(rnd.randint(1, 40)))})
        item(type="message", role="assistant", status="completed",
             content=[{"type": "output_text", "text": sentence(rnd, rnd.randint(8, 250))}])
        if turn == 0 and rnd.random() < 0.3:
            item(type="ai-title", aiTitle=sentence(rnd, 4))
    if rnd.random() < 0.1:
        lines.append({"type": "custom-title", "customTitle": sentence(rnd, 3), "sessionId": session_id})
    data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    if rnd.random() < 0.01:
        data += b"{this line is not JSON\n"
    return data


def generate(home: Path, sessions: int, projects: int) -> tuple[int, int]:
    """Write the transcripts; (files, bytes)."""
    rnd = random.Random(SEED)
    total = 0
    for n in range(sessions):
        cwd = f"/home/dev/project-{n % projects:03d}"
        directory = home / "projects" / project_id(cwd)
        directory.mkdir(parents=True, exist_ok=True)
        data = transcript(rnd, f"{n:08d}-5e55-4d0b-9c3a-{n:012x}", cwd, T0 + n * 60_000)
        (directory / f"{n:08d}-5e55-4d0b-9c3a-{n:012x}.jsonl").write_bytes(data)
        total += len(data)
    return sessions, total


def append_some(home: Path, share: float, round_: int) -> int:
    """Append one user message to ``share`` of the transcripts; how many."""
    files = sorted((home / "projects").glob("*/*.jsonl"))
    step = max(1, int(1 / share))
    chosen = files[round_ % step::step]
    for path in chosen:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"more {round_}"}],
                "timestamp": iso(T0 + 10**10 + round_), "cwd": "/home/dev/appended"}
        with open(path, "ab") as handle:
            handle.write(json.dumps(item).encode() + b"\n")
    return len(chosen)


# --------------------------------------------------------------------------- baselines


def bare_walk(home: Path) -> int:
    """``os.scandir`` + ``stat`` of every transcript; how many."""
    count = 0
    with os.scandir(home / "projects") as projects:
        for project in projects:
            with os.scandir(project.path) as entries:
                for entry in entries:
                    entry.stat()
                    count += 1
    return count


def naive_rows(home: Path) -> list[dict[str, Any]]:
    """Every file read whole, every line parsed and folded; rows sorted newest first."""
    rows = []
    for path in (home / "projects").glob("*/*.jsonl"):
        summary = Summary()
        with open(path, "rb") as handle:
            for raw in handle:
                try:
                    item = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(item, dict):
                    summary.add(item)
        if not summary.message_count:
            continue
        mtime = path.stat().st_mtime_ns // 1_000_000
        rows.append({
            "id": path.stem, "name": summary.name,
            "createdAt": summary.first_at if summary.first_at is not None else mtime,
            "updatedAt": summary.last_at if summary.last_at is not None else mtime,
            "messageCount": summary.message_count, "isCurrent": False,
            "isUserDefinedTitle": 1 if summary.custom_title else 0, "projectId": path.parent.name,
            "cwd": summary.cwd, "status": "pending", "isPlayground": False,
        })
    rows.sort(key=lambda r: (r["updatedAt"], r["id"]), reverse=True)
    return rows


def naive_listing(home: Path) -> tuple[list[dict[str, Any]], int]:
    rows = naive_rows(home)
    body = json.dumps({"data": {"sessions": rows}}, ensure_ascii=False, separators=(",", ":")).encode()
    return rows, len(body)


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - began) * 1000, result


# --------------------------------------------------------------------------- the daemon


def fetch(conn: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    """(ms to the last byte, body) of one GET on a kept-alive connection."""
    began = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - began) * 1000
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status} {body[:200]!r}")
    return elapsed, body


def check(body: bytes, expected: list[dict[str, Any]], what: str) -> str | None:
    """None if the daemon's sessions are the expected rows, else what differs."""
    got = json.loads(body)["data"]["sessions"]
    if got == expected:
        return None
    if len(got) != len(expected):
        return f"{what}: {len(got)} sessions, expected {len(expected)}"
    for mine, theirs in zip(got, expected, strict=True):
        if mine != theirs:
            return f"{what}: first difference {mine} != {theirs}"
    return f"{what}: differs"


class HealthProbe:
    """GET /health in a loop on its own connection, while a listing runs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self._stop.is_set():
            self.samples.append(fetch(conn, "/api/v1/health")[0])
            time.sleep(0.005)
        conn.close()


def launch_for(template: list[str], workdir: Path) -> Launch:
    port = free_port()
    values = {"port": port, "home": workdir / "home", "cwd": workdir / "ws", "tmp": workdir}
    return Launch([arg.format(**values) for arg in template], port, env=codebuddy_env())


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--projects", type=int, default=50)
    parser.add_argument("--warm", type=int, default=20, help="warm requests (after each cold one)")
    parser.add_argument("--cold", type=int, default=3, help="daemon starts, one cold request each (>= 2)")
    parser.add_argument("--scratch", default=None, help="parent dir of the scratch dir (default: the temp dir)")
    parser.add_argument("--codebuddy-cmd", default=None,
                        help="daemon command with {port} {home} {cwd} fields (default: twistd beside python)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.cold < 2 or args.warm < 1:
        parser.error("--cold must be at least 2 and --warm at least 1")
    install_sigterm_exit()
    template = codebuddy_template(args.codebuddy_cmd)
    if template is None:
        print(no_twistd_reason())
        return 2
    server_cpu, client_cpu = choose_cpus()
    os.sched_setaffinity(0, {client_cpu})
    scratch = Path(tempfile.mkdtemp(prefix="codebuddy-sessbench-", dir=args.scratch))
    targets: list[Target] = []
    failures: list[str] = []
    try:
        workdir = scratch / "daemon"
        home = workdir / "home"
        (workdir / "ws").mkdir(parents=True)
        home.mkdir()
        began = time.perf_counter()
        files, size = generate(home, args.sessions, args.projects)
        print(f"{files:,} transcripts, {size / 1e6:,.1f} MB in {args.projects} projects "
              f"(generated in {time.perf_counter() - began:.1f} s); load average {describe_load(load_average())}")
        print(f"daemon on CPU {server_cpu}, client on CPU {client_cpu}; cold = the daemon's cache empty "
              "(the OS page cache is warm)\n")

        # 1. baselines, on the daemon's CPU
        os.sched_setaffinity(0, {server_cpu})
        walk = [timed(bare_walk, home)[0] for _ in range(5)]
        naive_ms, (expected, naive_bytes) = timed(naive_listing, home)
        os.sched_setaffinity(0, {client_cpu})

        # 2. the daemon
        cold: list[float] = []
        probed: list[float] = []
        warm: list[float] = []
        health: list[float] = []
        rss: list[tuple[float | None, float | None]] = []
        body = b""
        for start in range(args.cold):
            launch = launch_for(template, workdir)
            with running(launch, workdir, server_cpu) as server:
                wait_until_healthy(server, launch.ready_timeout)
                conn = http.client.HTTPConnection("127.0.0.1", launch.port, timeout=300)
                rss_before = rss_mb(server.proc.pid)
                if start == 0:
                    with HealthProbe(launch.port) as probe:
                        elapsed, body = fetch(conn, PATH)
                    probed.append(elapsed)
                    health.extend(probe.samples)
                else:
                    elapsed, body = fetch(conn, PATH)
                    cold.append(elapsed)
                if (problem := check(body, expected, f"cold request {start + 1}")) is not None:
                    failures.append(problem)
                for _ in range(args.warm):
                    elapsed, body = fetch(conn, PATH)
                    warm.append(elapsed)
                if (problem := check(body, expected, "warm request")) is not None:
                    failures.append(problem)
                rss.append((rss_before, rss_mb(server.proc.pid)))
                if start == args.cold - 1:
                    appended_ms = []
                    for round_ in range(5):
                        count = append_some(home, 0.01, round_)
                        appended_ms.append(fetch(conn, PATH)[0])
                    os.sched_setaffinity(0, {server_cpu})
                    expected_after = naive_rows(home)
                    os.sched_setaffinity(0, {client_cpu})
                    elapsed, body = fetch(conn, PATH)
                    if (problem := check(body, expected_after, "after appends")) is not None:
                        failures.append(problem)
                conn.close()
    except (StartFailed, RuntimeError, OSError) as exc:
        print(f"[FAILED] {exc}")
        return 1
    except KeyboardInterrupt:
        print("interrupted: the daemon stopped, scratch dir removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    warm_p50, walk_p50 = statistics.median(warm), statistics.median(walk)
    columns = [("what", 44, "<"), ("p50 ms", 9, ">"), ("p95/max ms", 11, ">"), ("runs", 5, ">"), ("x walk", 7, ">")]
    rows = [
        ["scandir + stat (baseline, in-process)", f"{walk_p50:.1f}", f"{max(walk):.1f}", str(len(walk)), "1.00"],
        ["naive full parse + encode (baseline)", f"{naive_ms:.0f}", f"{naive_ms:.0f}", "1",
         f"{naive_ms / walk_p50:.1f}"],
        [f"codebuddy cold ({len(body) / 1e6:.1f} MB body)", f"{statistics.median(cold):.0f}", f"{max(cold):.0f}",
         str(len(cold)), f"{statistics.median(cold) / walk_p50:.1f}"],
        ["codebuddy warm", f"{warm_p50:.1f}", f"{pct(warm, 0.95):.1f}", str(len(warm)), f"{warm_p50 / walk_p50:.2f}"],
        [f"codebuddy after appending to {count} files", f"{statistics.median(appended_ms):.1f}",
         f"{max(appended_ms):.1f}", str(len(appended_ms)), f"{statistics.median(appended_ms) / walk_p50:.2f}"],
        ["codebuddy cold, /health probed meanwhile", f"{probed[0]:.0f}", f"{probed[0]:.0f}", "1",
         f"{probed[0] / walk_p50:.1f}"],
        ["/health during that cold listing", f"{statistics.median(health):.1f}" if health else "-",
         f"{max(health):.1f}" if health else "-", str(len(health)), ""],
    ]
    print(f"GET {PATH}: {len(expected):,} sessions listed (of {files:,}; empty ones skipped); "
          f"naive body {naive_bytes / 1e6:.1f} MB\n")
    print("\n".join(table(columns, rows)))
    before, after = rss[-1]
    if before is not None and after is not None:
        print(f"\ndaemon RSS: {before:.0f} MB before the first listing, {after:.0f} MB after the warm ones "
              f"(+{after - before:.0f} MB: the cache of {len(expected):,} rows)")
    targets.append(Target(f"warm p50 < {MAX_WARM_MS:.0f} ms for {files:,} transcripts", warm_p50 < MAX_WARM_MS,
                          f"{warm_p50:.1f} ms"))
    targets.append(Target("warm vs a bare scandir + stat of the same files", None,
                          f"{warm_p50 / walk_p50:.2f}x ({warm_p50:.1f} vs {walk_p50:.1f} ms)", informational=True))
    targets.append(Target("cold vs the naive full parse", None,
                          f"{statistics.median(cold) / naive_ms:.2f}x ({statistics.median(cold):.0f} vs "
                          f"{naive_ms:.0f} ms)", informational=True))
    targets.append(Target("every answer equals the naive listing", not failures, "; ".join(failures) or "yes"))
    print("\nTargets:")
    for target in targets:
        print(target_line(target))
    if args.json:
        results = {"sessions": files, "bytes": size, "listed": len(expected), "walk_ms": walk, "naive_ms": naive_ms,
                   "cold_ms": cold, "cold_probed_ms": probed, "warm_ms": warm, "appended_ms": appended_ms,
                   "health_ms": health, "rss_mb": rss}
        print(json.dumps(results, indent=2))
    return 1 if any_missed(targets) else 0


if __name__ == "__main__":
    sys.exit(main())
