"""
Runs benchmark: what the agent's run stream adds to a model's streamed chunks, and how the
daemon answers ``/health`` while many runs stream.

Run it by hand, from the repository root, with the virtualenv's interpreter::

    python bench/runs.py [--chunks 200] [--spacing-ms 10] [--rounds 3] [--concurrent 50]
                         [--run-chunks 100] [--idle-probes 1000] [--codebuddy-cmd CMD] [--json]

A fake OpenAI-compatible model (this script with ``--serve-fake PORT``, a separate twisted.web
process like ``tests/agent/fake_openai.py``, on the client's CPU) answers every chat completion
with a stream of ``chunks`` content deltas, ``spacing`` ms apart, after a 200 ms lead (so the
run's SSE client is connected before the first one). The prompt says how many chunks and how
far apart (``"chunks=200 spacing=10"``). Each delta's text is ``"<seq>@<send time>;"``, the
send time being ``time.monotonic()`` (one clock for every process on the machine) taken when
the chunk is written, so every client measures each chunk's one-way latency exactly.

1. **Latency per chunk** (``--rounds`` rounds, alternating):
   - baseline: a client reading the fake model's SSE directly (``POST /v1/chat/completions``);
   - codebuddy: ``POST /api/v1/runs`` (a new session each time), then an SSE client of
     ``GET /api/v1/runs/:id/stream`` reading ``message.delta`` events. The chunk goes fake →
     daemon (treq, the agent's parser) → run event log → SSE client. Chunks sent before the
     stream's response began (replayed, none in practice) are not counted.
   Reported: median and p95 of each path, and the extra (codebuddy minus baseline) at each.
   Target: median extra under 2 ms.
2. **Health under runs**: ``GET /api/v1/health`` p99 from one keep-alive client in a loop,
   idle (``--idle-probes`` requests) and while ``--concurrent`` runs on different sessions
   stream ``--run-chunks`` chunks each to as many SSE clients (one thread each); every run must
   complete with all its chunks. Target: p99 under runs at most 5x the idle p99.

The daemon (``twistd -n codebuddy``) is pinned to the first CPU, the fake model and the clients
to the second. Every loop is bounded in count and time; only loopback addresses are used.
Exit status: 1 if a target was MISSED or a run failed, 0 otherwise, 130 if interrupted.
"""

# ruff: noqa: E402 - the sys.path fix below must run before any other import

from __future__ import annotations

import os
import sys

# bench/http.py would shadow the standard library's http package: keep this folder last.
_BENCH_DIR = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _BENCH_DIR] + [_BENCH_DIR]

import argparse
import http.client
import json
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import (
    StartFailed,
    Target,
    any_missed,
    choose_cpus,
    codebuddy_launch,
    codebuddy_template,
    describe_load,
    free_port,
    install_sigterm_exit,
    load_average,
    no_twistd_reason,
    pinned_to,
    running,
    stop,
    table,
    target_line,
    wait_until_healthy,
)

MAX_EXTRA_MEDIAN_MS = 2.0
MAX_HEALTH_RATIO = 5.0
LEAD_S = 0.2  # the fake's wait before the first chunk
RUN_DEADLINE_S = 120.0  # a run (or the whole concurrent burst) must end within this
PROBE_DEADLINE_S = 60.0
PROBE_MAX = 50_000
STAMP = re.compile(r"(\d+)@([0-9.]+);")


# --------------------------------------------------------------------------- the fake model


def serve_fake(port: int) -> None:
    """The fake model: a chat-completions SSE stream of stamped chunks (runs until killed)."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> bytes:
        data: dict[str, Any] = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
                                "model": "bench-model",
                                "choices": [] if delta is None else [{"index": 0, "delta": delta,
                                                                      "finish_reason": finish}]}
        if usage is not None:
            data["usage"] = usage
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    class Completions(Resource):
        isLeaf = True

        def render_POST(self, request: Any) -> Any:  # noqa: N802 (twisted.web's name)
            body = json.loads(request.content.read() or b"{}")
            prompt = next((m.get("content") for m in reversed(body.get("messages", []))
                           if m.get("role") == "user"), "") or ""
            params = dict(re.findall(r"(\w+)=([0-9.]+)", prompt if isinstance(prompt, str) else ""))
            count, spacing = int(params.get("chunks", 10)), float(params.get("spacing", 10)) / 1000
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(chunk({"role": "assistant", "content": ""}))
            calls: list[Any] = []
            gone: list[bool] = []
            request.notifyFinish().addBoth(lambda _: (gone.append(True), [c.cancel() for c in calls if c.active()]))
            began = time.monotonic() + LEAD_S

            def send(seq: int) -> None:
                if gone:
                    return
                if seq < count:
                    request.write(chunk({"content": f"{seq}@{time.monotonic():.6f};"}))
                    delay = max(0.0, began + (seq + 1) * spacing - time.monotonic())
                    calls.append(reactor.callLater(delay, send, seq + 1))
                    return
                request.write(chunk({}, "stop"))
                if (body.get("stream_options") or {}).get("include_usage"):
                    request.write(chunk(None, usage={"prompt_tokens": 10, "completion_tokens": count,
                                                     "total_tokens": 10 + count}))
                request.write(b"data: [DONE]\n\n")
                request.finish()

            calls.append(reactor.callLater(LEAD_S, send, 0))
            return NOT_DONE_YET

    site = Site(Completions())
    site.log = lambda request: None  # type: ignore[method-assign]
    reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.run()


@contextmanager
def fake_model(port: int, cpu: int, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The fake in its own process group, pinned to ``cpu``; stopped as a group."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "fake.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, os.path.realpath(__file__), "--serve-fake", str(port)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=pinned_to(cpu))  # noqa: PLW1509
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise StartFailed(f"the fake model did not start: {(workdir / 'fake.log').read_text()}") from None
                time.sleep(0.01)
        yield proc
    finally:
        stop(proc)


# --------------------------------------------------------------------------- clients


def stamps(text: str, arrived: float, since: float, out: list[float]) -> int:
    """Append the latency (ms) of each stamped chunk in ``text`` sent after ``since``; how many chunks."""
    found = 0
    for _seq, sent in STAMP.findall(text):
        found += 1
        if float(sent) >= since:
            out.append((arrived - float(sent)) * 1000)
    return found


def direct(port: int, chunks: int, spacing_ms: float) -> list[float]:
    """Per-chunk latency of a client reading the fake model's stream itself."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=RUN_DEADLINE_S)
    body = {"model": "bench-model", "stream": True,
            "messages": [{"role": "user", "content": f"chunks={chunks} spacing={spacing_ms}"}]}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    since = time.monotonic()
    latencies: list[float] = []
    while line := response.readline():
        if not line.startswith(b"data: {"):
            continue
        arrived = time.monotonic()
        choices = json.loads(line[6:])["choices"]
        if choices and choices[0]["delta"].get("content"):
            stamps(choices[0]["delta"]["content"], arrived, since, latencies)
    conn.close()
    return latencies


class RunClient:
    """Start one run and read its SSE stream to the end: chunk latencies, deltas seen, final status."""

    def __init__(self, port: int, prompt: str, session: str) -> None:
        self.port = port
        self.prompt = prompt
        self.session = session
        self.latencies: list[float] = []
        self.chunks = 0
        self.status = "not started"
        self.error = ""
        self.first_delta_at: float | None = None
        self.completed_at: float | None = None

    def run(self) -> RunClient:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - reported in the results
            self.error = f"{type(exc).__name__}: {exc}"
        return self

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=RUN_DEADLINE_S)
        conn.request("POST", "/api/v1/runs", json.dumps({"text": self.prompt, "sessionId": self.session}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        if response.status != 202:
            raise RuntimeError(f"POST /runs: HTTP {response.status} {answer}")
        run_id = answer["data"]["runId"]
        conn.request("GET", f"/api/v1/runs/{run_id}/stream", headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        since = time.monotonic()
        event = ""
        while line := response.readline():
            if line.startswith(b"event: "):
                event = line[7:].strip().decode()
            elif line.startswith(b"data: "):
                arrived = time.monotonic()
                if event == "message.delta":
                    self.chunks += stamps(json.loads(line[6:])["text"], arrived, since, self.latencies)
                    if self.first_delta_at is None:
                        self.first_delta_at = arrived
                elif event == "run.completed":
                    self.completed_at = arrived
                    data = json.loads(line[6:])
                    self.status = data["status"]
                    if data.get("error"):
                        self.error = f"{data['error']['code']}: {data['error']['message']}"
                    break
        conn.close()


class HealthProbe:
    """
    ``GET /api/v1/health`` in a loop on one keep-alive connection, bounded in count and time, in a
    child process of its own (so the run clients' threads do not delay it through this process's
    GIL): ``run()`` probes ``count`` times and answers the samples; ``with`` probes until the end
    of the block (or the deadline).
    """

    def __init__(self, port: int, count: int | None = None) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.port = port
        self.count = count
        self.samples: list[float] = []
        self.times: list[float] = []
        self.errors = 0
        self._stop = context.Event()
        self._queue = context.Queue()
        self._process = context.Process(target=self._probe, name="health-probe", daemon=True)

    def run(self) -> list[float]:
        with self:
            self._process.join(PROBE_DEADLINE_S + 5)
        return self.samples

    def __enter__(self) -> HealthProbe:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.samples, self.times, self.errors = self._queue.get(timeout=PROBE_DEADLINE_S + 10)
        self._process.join(10)

    def _probe(self) -> None:
        samples: list[float] = []
        times: list[float] = []
        errors = 0
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        deadline = time.monotonic() + PROBE_DEADLINE_S
        limit = self.count or PROBE_MAX
        while len(samples) < limit and time.monotonic() < deadline and not self._stop.is_set():
            began = time.perf_counter()
            conn.request("GET", "/api/v1/health")
            response = conn.getresponse()
            response.read()
            elapsed = (time.perf_counter() - began) * 1000
            if response.status == 200:
                samples.append(elapsed)
                times.append(time.monotonic())
            else:
                errors += 1
            time.sleep(0.001)
        conn.close()
        self._queue.put((samples, times, errors))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=200, help="chunks per latency round")
    parser.add_argument("--spacing-ms", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds (each: baseline, then codebuddy)")
    parser.add_argument("--concurrent", type=int, default=50, help="concurrent runs in section 2")
    parser.add_argument("--run-chunks", type=int, default=100, help="chunks of each concurrent run")
    parser.add_argument("--run-spacing-ms", type=float, default=None,
                        help="chunk spacing of the concurrent runs (default: --spacing-ms)")
    parser.add_argument("--idle-probes", type=int, default=1000)
    parser.add_argument("--codebuddy-cmd", default=None,
                        help="daemon command with {port} {home} {cwd} fields (default: twistd beside python)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-fake", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake is not None:
        serve_fake(args.serve_fake)
        return 0
    install_sigterm_exit()
    template = codebuddy_template(args.codebuddy_cmd)
    if template is None:
        print(no_twistd_reason())
        return 2
    server_cpu, client_cpu = choose_cpus()
    os.sched_setaffinity(0, {client_cpu})
    scratch = Path(tempfile.mkdtemp(prefix="codebuddy-runsbench-"))
    targets: list[Target] = []
    failures: list[str] = []
    print(f"load average {describe_load(load_average())}; daemon on CPU {server_cpu}, fake model and clients on "
          f"CPU {client_cpu}\n")
    try:
        fake_port, port = free_port(), free_port()
        with fake_model(fake_port, client_cpu, scratch / "fake"):
            (scratch / "daemon").mkdir()
            launch = codebuddy_launch(template, port, scratch / "daemon")
            launch.env.update({"CODEBUDDY_BASE_URL": f"http://127.0.0.1:{fake_port}/v1",
                               "CODEBUDDY_MODEL": "bench-model"})
            with running(launch, scratch / "daemon", server_cpu) as server:
                wait_until_healthy(server, launch.ready_timeout)

                # 1. latency per chunk
                prompt = f"chunks={args.chunks} spacing={args.spacing_ms:g}"
                RunClient(port, "chunks=5 spacing=1", "bench-warmup").run()  # warm up imports and pools
                base: list[float] = []
                ours: list[float] = []
                for round_ in range(args.rounds):
                    base.extend(direct(fake_port, args.chunks, args.spacing_ms))
                    client = RunClient(port, prompt, f"bench-latency-{round_}").run()
                    if client.status != "completed" or client.chunks != args.chunks:
                        failures.append(f"latency run {round_}: {client.status} with {client.chunks} chunks "
                                        f"{client.error}")
                    ours.extend(client.latencies)

                # 2. health, idle then under concurrent runs
                idle = HealthProbe(port, args.idle_probes).run()
                run_spacing = args.spacing_ms if args.run_spacing_ms is None else args.run_spacing_ms
                clients = [RunClient(port, f"chunks={args.run_chunks} spacing={run_spacing:g}",
                                     f"bench-concurrent-{n}") for n in range(args.concurrent)]
                threads = [threading.Thread(target=c.run, name=f"run-{n}", daemon=True)
                           for n, c in enumerate(clients)]
                began = time.monotonic()
                with HealthProbe(port) as busy:
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join(max(0.0, began + RUN_DEADLINE_S - time.monotonic()))
                burst_s = time.monotonic() - began
                completed = sum(1 for c in clients if c.status == "completed" and c.chunks == args.run_chunks)
                for n, c in enumerate(clients):
                    if c.status != "completed" or c.chunks != args.run_chunks:
                        failures.append(f"concurrent run {n}: {c.status}, {c.chunks} chunks {c.error}")
                        break
                concurrent_latency = [x for c in clients for x in c.latencies]
    except (StartFailed, RuntimeError, OSError) as exc:
        print(f"[FAILED] {exc}")
        return 1
    except KeyboardInterrupt:
        print("interrupted: the daemon and the fake stopped, scratch dir removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if not base or not ours or not idle or not busy.samples:
        print(f"[FAILED] no samples: {'; '.join(failures)}")
        return 1
    extra_p50 = statistics.median(ours) - statistics.median(base)
    extra_p95 = pct(ours, 0.95) - pct(base, 0.95)
    print(f"1. Latency per chunk: {args.rounds} rounds of {args.chunks} chunks {args.spacing_ms:g} ms apart "
          "(send → client, ms)\n")
    columns = [("path", 46, "<"), ("chunks", 7, ">"), ("p50 ms", 8, ">"), ("p95 ms", 8, ">"), ("max ms", 8, ">")]
    rows = [
        ["fake model → client (baseline)", str(len(base)), f"{statistics.median(base):.2f}",
         f"{pct(base, 0.95):.2f}", f"{max(base):.2f}"],
        ["fake model → daemon → /runs/:id/stream client", str(len(ours)), f"{statistics.median(ours):.2f}",
         f"{pct(ours, 0.95):.2f}", f"{max(ours):.2f}"],
        ["extra (codebuddy - baseline)", "", f"{extra_p50:.2f}", f"{extra_p95:.2f}", ""],
        [f"during section 2 ({args.concurrent} runs at once)", str(len(concurrent_latency)),
         f"{statistics.median(concurrent_latency):.2f}" if concurrent_latency else "-",
         f"{pct(concurrent_latency, 0.95):.2f}" if concurrent_latency else "-",
         f"{max(concurrent_latency):.2f}" if concurrent_latency else "-"],
    ]
    print("\n".join(table(columns, rows)))
    print(f"\n2. GET /api/v1/health from one client, idle and during {args.concurrent} concurrent runs started at "
          f"once ({args.run_chunks} chunks {run_spacing:g} ms apart each; {completed}/{args.concurrent} completed "
          f"in {burst_s:.1f} s)\n")
    # the burst's phases: until every run streams, while all stream, after the first ended
    all_streaming = max((c.first_delta_at for c in clients if c.first_delta_at is not None), default=None)
    first_done = min((c.completed_at for c in clients if c.completed_at is not None), default=None)
    phases: list[tuple[str, list[float]]] = [(f"{args.concurrent} runs (the target)", busy.samples)]
    if all_streaming is not None and first_done is not None:
        timed = list(zip(busy.times, busy.samples, strict=True))
        phases += [
            ("  starting (until all stream)", [x for t, x in timed if t < all_streaming]),
            ("  all streaming", [x for t, x in timed if all_streaming <= t < first_done]),
            ("  ending (after the first ended)", [x for t, x in timed if t >= first_done]),
        ]
    columns = [("when", 34, "<"), ("requests", 9, ">"), ("p50 ms", 8, ">"), ("p99 ms", 8, ">"), ("max ms", 8, ">")]
    rows = [["idle", str(len(idle)), f"{statistics.median(idle):.2f}", f"{pct(idle, 0.99):.2f}", f"{max(idle):.2f}"]]
    for name, values in phases:
        rows.append([name, str(len(values)), f"{statistics.median(values):.2f}" if values else "-",
                     f"{pct(values, 0.99):.2f}" if values else "-", f"{max(values):.2f}" if values else "-"])
    print("\n".join(table(columns, rows)))
    ratio = pct(busy.samples, 0.99) / pct(idle, 0.99)
    targets.append(Target(f"median extra latency per chunk < {MAX_EXTRA_MEDIAN_MS:g} ms",
                          extra_p50 < MAX_EXTRA_MEDIAN_MS, f"{extra_p50:.2f} ms (p95 extra {extra_p95:.2f} ms)"))
    targets.append(Target(f"{args.concurrent} concurrent runs all complete", completed == args.concurrent,
                          f"{completed}/{args.concurrent}"))
    targets.append(Target(f"health p99 during runs <= {MAX_HEALTH_RATIO:g}x idle", ratio <= MAX_HEALTH_RATIO,
                          f"{ratio:.2f}x ({pct(busy.samples, 0.99):.2f} vs {pct(idle, 0.99):.2f} ms)"))
    targets.append(Target("every run completed with all its chunks", not failures, "; ".join(failures) or "yes"))
    print("\nTargets:")
    for target in targets:
        print(target_line(target))
    if args.json:
        print(json.dumps({"baseline_ms": base, "codebuddy_ms": ours, "concurrent_ms": concurrent_latency,
                          "health_idle_ms": idle, "health_busy_ms": busy.samples, "burst_s": burst_s,
                          "completed": completed, "failures": failures}))
    return 1 if any_missed(targets) else 0


if __name__ == "__main__":
    sys.exit(main())
