"""
Terminal benchmark: ``cat`` of a 64 MB base64 file in a codebuddy terminal, to one WebSocket client.

Run by hand from the repository root with the virtualenv's interpreter::

    python bench/pty.py [--repeat 5] [--raw-mib 48] [--only loop,relay,...] [--json]
                        [--codebuddy-cmd CMD] [--jupyter-python PATH] [--no-install]

Prerequisites: psutil, Twisted and Autobahn (the project's venv), and jupyter-server for the
terminado row: taken from ``--jupyter-python``, else ``/tmp/jupyter-venv``, else this interpreter;
if none has it, it is installed into ``/tmp/jupyter-venv`` (``python -m venv`` + ``pip install
jupyter-server``, only for this benchmark) unless ``--no-install`` is given.

The file is ``head -c <raw-mib>M /dev/urandom | base64`` (48 MiB -> 68 MB in 76-column lines),
made once in a scratch dir. Through a terminal every ``\n`` becomes ``\r\n`` (ONLCR), so every
row must deliver exactly file size + line count bytes ("expected"): fewer is FAILED (output was
lost), more than 4 KiB extra is FAILED too (something else was counted). Servers are pinned to the
first CPU, this script (every client) to the second. The rows:

1. **loop**: this process, pinned to the servers' CPU: ``os.openpty()``, ``cat FILE`` on the slave
   (``start_new_session``), ``os.read(master, 65536)`` until EIO. The floor.
2. **relay**: a minimal Twisted + Autobahn server (``RELAY_SERVER`` below, run with ``-c``): on a
   WebSocket open at ``/ws`` it spawns ``cat FILE`` with ``reactor.spawnProcess(usePTY=True)``,
   unregisters the upgraded HTTP channel's producer, registers the PTY as producer on the
   transport and sends each read as one binary frame; it closes when the child has ended.
   ``relay`` reads all that is available per wake-up (``os.read`` until EAGAIN, at most
   ``--relay-max-read``, 256 KiB); ``relay (8 KiB reads)`` keeps Twisted's ``PTYProcess.doRead``
   (one 8 KiB read per wake-up), for context.
3. **terminado**: jupyter-server's terminals: ``POST /api/terminals``, WebSocket
   ``/terminals/websocket/NAME``, ``["stdin", text]`` in, ``["stdout", text]`` out.
4. **codebuddy**: ``POST /api/v1/pty {"cols":200,"rows":50,"shell":SHELL,"cwd":SCRATCH}``, WebSocket
   ``/api/v1/pty/ID/ws`` without subprotocol (the JSON protocol: ``{"type":"input"}`` in,
   ``{"type":"output"}`` out). While the routes are missing (404) the row is "not measured" and
   its targets n/a; any other failure is FAILED and its targets MISSED.

All servers are started first; then come ``--repeat`` + 1 rounds, each measuring every row once
in the order above (round 0 is a warm-up, not recorded), so that changes in the machine's
background load hit all rows alike; medians are reported. The terminal rows share one shell
(``--shell``, bash by default) per server, set up with ``stty -echo``; each run waits for 0.3 s of
quiet, sends ``cat FILE; printf '%s%s\n' CBEND_ NONCE`` and ends when ``CBEND_NONCE`` (which the
typed line does not contain) appears in the output, even split across messages; the characters
before it are counted (base64 is ASCII: characters = bytes). Time runs from sending the command
(relay: from connecting) to the marker (relay: the close frame). "srv CPU" is user+system seconds
of the server process alone (psutil; the shell and ``cat`` are not counted) during the run, per GB
(10^9 bytes) delivered; for the loop, this process's own CPU. "cli CPU" is this script's CPU while
receiving, per GB; a warning is printed if it nears the elapsed time (the client would be the
limit). "RSS +MB": the server's peak RSS (process tree) during the runs minus its RSS before the
first one.

Targets: codebuddy MB/s >= 1.6x terminado's and >= 70% of the loop's; codebuddy server CPU per GB
<= the (all-reads) relay's. terminado/loop and relay/loop print as ``info``. Exit status: 1 if a
target was MISSED, 0 otherwise, 2 without psutil, 130 if interrupted.
"""

from __future__ import annotations

import os
import sys

# bench/pty.py would shadow the standard library's pty module: keep this folder last.
_BENCH_DIR = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _BENCH_DIR] + [_BENCH_DIR]

import argparse  # noqa: E402
import base64  # noqa: E402
import errno  # noqa: E402
import hashlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import (  # noqa: E402
    Launch,
    RssSampler,
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
    psutil,
    rss_mb,
    running,
    table,
    target_line,
    wait_until_healthy,
)

MIN_TIMES_TERMINADO = 1.6
MIN_LOOP_SHARE = 0.70

JUPYTER_VENV = Path("/tmp/jupyter-venv")
TRANSFER_TIMEOUT = 120.0  # seconds one cat may take, whoever relays it
QUIET = 0.3  # seconds without output that count as "the shell is waiting"
QUIET_LIMIT = 15.0  # seconds to wait for that quiet at most
EXTRA_SLACK = 4096  # bytes a terminal row may deliver beyond the expected (e.g. bracketed-paste off)
CLIENT_BOUND_SHARE = 0.8  # client CPU / elapsed above which the client may be the limit

LOOP, RELAY, RELAY_SMALL, TERMINADO, CODEBUDDY = (
    "loop (os.read on the PTY master)",
    "relay (Twisted+Autobahn, binary)",
    "relay (8 KiB reads)",
    "terminado (jupyter-server)",
    "codebuddy (JSON protocol)",
)
ROWS = {"loop": LOOP, "relay": RELAY, "relay-small": RELAY_SMALL, "terminado": TERMINADO, "codebuddy": CODEBUDDY}
ROW_KEYS = list(ROWS)
SKIPPED = "skipped (--only)"


# --------------------------------------------------------------------------- results


@dataclass
class Run:
    seconds: float
    bytes: int
    server_cpu: float | None  # seconds, user+system of the server process alone
    client_cpu: float | None  # seconds of this script's CPU while receiving
    messages: int  # WebSocket messages (loop: reads)
    largest: int  # largest message payload (loop: read) in bytes

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6


@dataclass
class Row:
    name: str
    runs: list[Run] = field(default_factory=list)
    failure: str | None = None  # FAILED: the row could not be measured (or lost data)
    not_measured: str | None = None  # n/a: e.g. the routes do not exist yet
    note: str = ""
    rss_growth_mb: float | None = None  # server RSS peak - before, over the warm-up and the runs

    @property
    def ok(self) -> bool:
        return bool(self.runs) and self.failure is None and self.not_measured is None

    @property
    def mb_s(self) -> float:
        return statistics.median(r.mb_s for r in self.runs)

    def cpu_per_gb(self, which: str = "server_cpu") -> float | None:
        values = [getattr(r, which) / (r.bytes / 1e9) for r in self.runs if getattr(r, which) is not None]
        return statistics.median(values) if values else None

    def to_json(self) -> dict[str, object]:
        result: dict[str, object] = {
            "name": self.name,
            "failure": self.failure,
            "not_measured": self.not_measured,
            "note": self.note,
            "rss_growth_mb": self.rss_growth_mb,
            "runs": [{**asdict(r), "mb_s": r.mb_s} for r in self.runs],
        }
        if self.ok:
            result.update(mb_s=self.mb_s, server_cpu_s_per_gb=self.cpu_per_gb(),
                          client_cpu_s_per_gb=self.cpu_per_gb("client_cpu"))
        return result


class Failed(Exception):
    """This row could not be measured, for the reason given."""


def server_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# --------------------------------------------------------------------------- the file


def make_file(scratch: Path, raw_mib: int) -> tuple[Path, int, int]:
    """(path, size, bytes through a tty: each \\n becomes \\r\\n) of ``head -c NM /dev/urandom | base64``."""
    path = scratch / "cat-me.b64"
    subprocess.run(["sh", "-c", f"head -c {raw_mib}M /dev/urandom | base64 > {shlex.quote(str(path))}"],
                   check=True, timeout=120)
    lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            lines += chunk.count(b"\n")
    size = path.stat().st_size
    return path, size, size + lines


def check_count(received: int, expected: int) -> None:
    if received < expected:
        raise Failed(f"received {received:,} bytes, expected {expected:,}: output was lost")
    if received > expected + EXTRA_SLACK:
        raise Failed(f"received {received:,} bytes, expected {expected:,} (+{EXTRA_SLACK} allowed)")


# --------------------------------------------------------------------------- a WebSocket client


class HandshakeFailed(Exception):
    def __init__(self, status: str, body: bytes):
        super().__init__(f"WebSocket handshake answered {status!r} {body[:200]!r}")
        self.status = status


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WebSocket:
    """A minimal blocking RFC 6455 client: enough to receive fast without becoming the limit.

    Receives into one reused 1 MiB buffer and parses frames out of a bytearray; answers pings and
    the close handshake; sends masked text frames. Every wait has a deadline (``TimeoutError``).
    """

    def __init__(self, port: int, path: str, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:" + str(port).encode()
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            if not chunk or len(head) > 65536:
                raise HandshakeFailed("connection closed during the handshake", head)
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        status, *headers = head.decode("latin-1").split("\r\n")
        if status.split()[1:2] != ["101"]:
            try:  # the error body, for the report
                self.sock.settimeout(1.0)
                rest += self.sock.recv(4096)
            except OSError:
                pass
            self.sock.close()
            raise HandshakeFailed(status, rest)
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in headers)}
        if fields.get("sec-websocket-accept") != accept:
            self.sock.close()
            raise HandshakeFailed(f"{status} with a wrong Sec-WebSocket-Accept", b"")
        self.buf = bytearray(rest)
        self.pos = 0
        self.chunk = memoryview(bytearray(1 << 20))
        self.closed = False

    def _fill(self, need: int, deadline: float) -> None:
        while len(self.buf) - self.pos < need:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            n = self.sock.recv_into(self.chunk)
            if not n:
                raise ConnectionError("the server closed the connection without a close frame")
            if self.pos:
                del self.buf[: self.pos]
                self.pos = 0
            self.buf += self.chunk[:n]

    def _frame(self, deadline: float) -> tuple[bool, int, bytes]:
        """(fin, opcode, payload); nothing is consumed unless the whole frame is there."""
        self._fill(2, deadline)
        b0, b1 = self.buf[self.pos], self.buf[self.pos + 1]
        if b1 & 0x80:
            raise ConnectionError("the server sent a masked frame")
        length, header = b1 & 0x7F, 2
        if length == 126:
            header = 4
        elif length == 127:
            header = 10
        if header > 2:
            self._fill(header, deadline)
            length = int.from_bytes(self.buf[self.pos + 2 : self.pos + header], "big")
        self._fill(header + length, deadline)
        start = self.pos + header
        payload = bytes(self.buf[start : start + length])
        self.pos = start + length
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_message(self, deadline: float) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next text/binary message; None once the server closed."""
        if self.closed:
            return None
        parts: list[bytes] = []
        opcode = 0
        while True:
            fin, op, payload = self._frame(deadline)
            if op == 0x9:
                self.send(payload, 0xA)
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                self.send(payload[:2], 0x8)
                self.closed = True
                return None
            if op != 0x0:
                opcode, parts = op, []
            parts.append(payload)
            if fin:
                return opcode, parts[0] if len(parts) == 1 else b"".join(parts)

    def send(self, payload: bytes, opcode: int = 0x1) -> None:
        n = len(payload)
        mask = os.urandom(4)
        if n < 126:
            header = bytes([0x80 | opcode, 0x80 | n])
        elif n < 1 << 16:
            header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
        keystream = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(n, "big")
        self.sock.settimeout(10.0)
        self.sock.sendall(header + mask + masked)

    def close(self) -> None:
        try:
            if not self.closed:
                self.send(b"\x03\xe8", 0x8)
                self.closed = True
        except OSError:
            pass
        self.sock.close()


# --------------------------------------------------------------------------- 1. the loop


def loop_run(path: Path, expected: int) -> Run:
    """``cat FILE`` on a PTY slave, read from the master by this process until EIO."""
    cat = shutil.which("cat") or "/bin/cat"
    master, slave = os.openpty()
    proc = None
    watchdog = None
    try:
        cpu_before = time.process_time()
        began = time.perf_counter()
        proc = subprocess.Popen([cat, str(path)], stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        slave = -1
        watchdog = threading.Timer(TRANSFER_TIMEOUT, proc.kill)  # bounded without a syscall per read
        watchdog.start()
        total = reads = largest = 0
        while True:
            try:
                data = os.read(master, 65536)
            except OSError as exc:
                if exc.errno == errno.EIO:  # the slave side is closed: cat is done
                    break
                raise
            if not data:
                break
            total += len(data)
            reads += 1
            largest = max(largest, len(data))
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu_before
        if proc.wait(10) != 0:
            raise Failed(f"cat exited with {proc.returncode} (killed after {TRANSFER_TIMEOUT:.0f} s?)")
        check_count(total, expected)
        return Run(elapsed, total, cpu, None, reads, largest)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
        if slave >= 0:
            os.close(slave)


# --------------------------------------------------------------------------- 2. the binary relay

RELAY_SERVER = r'''
import os, shutil, sys
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import main, protocol, reactor
from twisted.web import resource, server

PORT, FILE, MODE, MAX_READ = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
CAT = shutil.which("cat") or "/bin/cat"


def read_all_available(pty):
    """Replace PTYProcess.doRead (one 8 KiB read per wake-up) by reads until EAGAIN, one callback."""
    fd = pty.fd

    def doRead():
        chunks, size, result = [], 0, None
        while size < MAX_READ:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:  # EIO: the child's side is closed
                result = main.CONNECTION_LOST
                break
            if not data:
                result = main.CONNECTION_DONE
                break
            chunks.append(data)
            size += len(data)
        if chunks:
            pty.proto.childDataReceived(1, chunks[0] if len(chunks) == 1 else b"".join(chunks))
        return result

    pty.doRead = doRead


class Cat(protocol.ProcessProtocol):
    def __init__(self, ws):
        self.ws = ws

    def childDataReceived(self, fd, data):
        self.ws.sendMessage(data, isBinary=True)

    def processEnded(self, reason):
        self.ws.pty = None
        if self.ws.transport is not None:
            self.ws.transport.unregisterProducer()
        self.ws.sendClose(1000)


class Relay(WebSocketServerProtocol):
    pty = None

    def onOpen(self):
        self.transport.unregisterProducer()  # the upgraded HTTPChannel is still registered
        self.pty = reactor.spawnProcess(Cat(self), CAT, [CAT, FILE], env=dict(os.environ), usePTY=True)
        if MODE == "all":
            read_all_available(self.pty)
        self.transport.registerProducer(self.pty, True)

    def onClose(self, wasClean, code, reason):
        if self.pty is not None:
            try:
                self.pty.signalProcess("KILL")
            except Exception:
                pass


class Health(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"ok"


factory = WebSocketServerFactory()
factory.protocol = Relay
root = resource.Resource()
root.putChild(b"ws", WebSocketResource(factory))
root.putChild(b"health", Health())
site = server.Site(root)
site.log = lambda request: None
reactor.listenTCP(PORT, site, interface="127.0.0.1")
reactor.run()
'''


def relay_run(port: int, pid: int, expected: int) -> Run:
    """Connect, count binary payload bytes until the server's close frame."""
    cpu_before, client_before = server_cpu(pid), time.process_time()
    began = time.perf_counter()
    deadline = time.monotonic() + TRANSFER_TIMEOUT
    ws = WebSocket(port, "/ws")
    total = messages = largest = 0
    try:
        while (message := ws.recv_message(deadline)) is not None:
            total += len(message[1])
            messages += 1
            largest = max(largest, len(message[1]))
    finally:
        ws.close()
    elapsed = time.perf_counter() - began
    run = Run(elapsed, total, server_cpu(pid) - cpu_before, time.process_time() - client_before, messages, largest)
    check_count(total, expected)
    return run


# --------------------------------------------------------------------------- 3./4. terminals


@dataclass
class Terminal:
    """How to talk to one kind of terminal over its WebSocket."""

    encode_input: Callable[[str], bytes]
    decode_output: Callable[[int, bytes], str | None]  # text of an output message, None for others
    resize: bytes | None = None


def terminado_output(opcode: int, payload: bytes) -> str | None:
    message = json.loads(payload)
    if message[0] == "stdout":
        return str(message[1])
    if message[0] == "disconnect":
        raise Failed("terminado: the terminal's process died")
    return None


def codebuddy_output(opcode: int, payload: bytes) -> str | None:
    if opcode != 0x1:
        raise Failed(f"codebuddy sent a non-text frame (opcode {opcode}) on the JSON protocol")
    message = json.loads(payload)
    kind = message.get("type")
    if kind == "output":
        return str(message["data"])
    if kind == "exit":
        raise Failed(f"codebuddy: the terminal exited: {message}")
    return None


TERMINADO_WS = Terminal(
    encode_input=lambda text: json.dumps(["stdin", text]).encode(),
    decode_output=terminado_output,
    resize=json.dumps(["set_size", 50, 200]).encode(),
)
CODEBUDDY_WS = Terminal(
    encode_input=lambda text: json.dumps({"type": "input", "data": text}).encode(),
    decode_output=codebuddy_output,
    resize=json.dumps({"type": "resize", "cols": 200, "rows": 50}).encode(),
)


def wait_for_quiet(ws: WebSocket, terminal: Terminal) -> int:
    """Read until QUIET seconds pass without a message (at most QUIET_LIMIT); characters seen."""
    limit = time.monotonic() + QUIET_LIMIT
    seen = 0
    while True:
        if time.monotonic() > limit:
            raise Failed(f"the terminal did not go quiet within {QUIET_LIMIT:.0f} s")
        try:
            message = ws.recv_message(min(limit, time.monotonic() + QUIET))
        except TimeoutError:
            return seen
        if message is None:
            raise Failed("the WebSocket was closed by the server")
        text = terminal.decode_output(*message)
        seen += len(text or "")


def prepare_shell(ws: WebSocket, terminal: Terminal) -> None:
    """Size the terminal, wait for the prompt (and any scrollback), then ``stty -echo``."""
    if terminal.resize is not None:
        ws.send(terminal.resize)
    wait_for_quiet(ws, terminal)
    ws.send(terminal.encode_input("stty -echo\r"))
    wait_for_quiet(ws, terminal)


def terminal_run(ws: WebSocket, terminal: Terminal, path: Path, expected: int, pid: int) -> Run:
    """``cat FILE`` then a marker; the output up to the marker is counted."""
    wait_for_quiet(ws, terminal)  # answers pings sent while other rows ran; nothing else is pending
    nonce = os.urandom(6).hex()
    marker = f"CBEND_{nonce}"
    command = f"cat {shlex.quote(str(path))}; printf '%s%s\\n' CBEND_ {nonce}\r"
    cpu_before, client_before = server_cpu(pid), time.process_time()
    began = time.perf_counter()
    ws.send(terminal.encode_input(command))
    received, messages, largest = count_until(ws, terminal, marker, time.monotonic() + TRANSFER_TIMEOUT)
    elapsed = time.perf_counter() - began
    cpu, client = server_cpu(pid) - cpu_before, time.process_time() - client_before
    check_count(received, expected)
    return Run(elapsed, received, cpu, client, messages, largest)


def count_until(ws: WebSocket, terminal: Terminal, marker: str, deadline: float) -> tuple[int, int, int]:
    """(characters before ``marker``, output messages, largest payload); the marker may be split."""
    total = messages = largest = 0
    tail = ""
    keep = len(marker) - 1
    while True:
        try:
            message = ws.recv_message(deadline)
        except TimeoutError:
            raise Failed(f"no end marker after {TRANSFER_TIMEOUT:.0f} s ({total:,} bytes received)") from None
        if message is None:
            raise Failed(f"the WebSocket was closed by the server after {total:,} bytes")
        text = terminal.decode_output(*message)
        if not text:
            continue
        messages += 1
        largest = max(largest, len(message[1]))
        window = tail + text
        found = window.find(marker)
        if found >= 0:
            return total - len(tail) + found, messages, largest
        total += len(text)
        tail = window[-keep:]


# --------------------------------------------------------------------------- jupyter-server


JUPYTER_CHECK = (
    "import jupyter_server, jupyter_server_terminals, terminado; "
    "print(jupyter_server.__version__, terminado.__version__)"
)


def _versions(python: str) -> str:
    try:
        done = subprocess.run([python, "-c", JUPYTER_CHECK], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def find_jupyter(explicit: str | None, venv: Path, install: bool) -> tuple[str | None, str]:
    """(interpreter with jupyter-server and terminado, "jupyter-server X, terminado Y") or (None, why)."""
    venv_python = str(venv / "bin" / "python")
    candidates = [explicit] if explicit else [venv_python, sys.executable]
    for python in candidates:
        if python and (found := _versions(python)):
            server, terminado = found.split()
            return python, f"jupyter-server {server}, terminado {terminado}"
    if explicit:
        return None, f"{explicit} cannot import jupyter_server, jupyter_server_terminals and terminado"
    if not install:
        return None, f"jupyter-server not found (no {venv_python}); run without --no-install to install it there"
    print(f"installing jupyter-server into {venv} (only for this benchmark) ...", file=sys.stderr, flush=True)
    try:
        if not Path(venv_python).exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300,
                           capture_output=True)
        subprocess.run([venv_python, "-m", "pip", "install", "--quiet", "jupyter-server"], check=True,
                       timeout=900, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return None, f"installing jupyter-server into {venv} failed: {exc} {detail[-300:]!r}"
    found = _versions(venv_python)
    if not found:
        return None, f"jupyter-server installed into {venv} but not importable"
    server, terminado = found.split()
    return venv_python, f"jupyter-server {server}, terminado {terminado} (just installed)"


def jupyter_launch(python: str, version: str, shell: str, port: int, workdir: Path) -> Launch:
    root = workdir / "root"
    root.mkdir(parents=True)
    env = {f"JUPYTER_{d}_DIR": str(workdir / d.lower()) for d in ("CONFIG", "DATA", "RUNTIME")}
    (workdir / "config").mkdir()
    # The terminal runs --shell, as codebuddy's does (else $SHELL -l).
    (workdir / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"terminado_settings": {"shell_command": [shell]}}}))
    if int(version.split()[1].split(".")[0]) >= 2:
        auth = ["--IdentityProvider.token=", "--PasswordIdentityProvider.hashed_password="]
    else:
        auth = ["--ServerApp.token=", "--ServerApp.password="]
    argv = [
        python, "-m", "jupyter_server", *auth,
        "--no-browser", "--ServerApp.open_browser=False", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
        "--ServerApp.disable_check_xsrf=True", "--allow-root",
    ]
    return Launch(argv, port, "/api/status", env, ready_timeout=60.0)


# --------------------------------------------------------------------------- HTTP


def request_json(port: int, method: str, path: str, body: dict[str, object] | None = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data) if data else None
    except ValueError:
        return response.status, data[:300]


# --------------------------------------------------------------------------- the rows


class Subject:
    """One row: ``setup`` (start its server, open its session), then one ``run`` per round.

    Rows are measured in rounds (loop, relay, ..., codebuddy, then again), so that a change in
    the machine's background load hits every row alike; round 0 is an unrecorded warm-up. Each
    subject's servers live on its own ``ExitStack``: a row that fails is stopped at once, the
    others at the end, whatever happens.
    """

    pid: int | None = None  # the server process whose CPU and RSS are measured

    def __init__(self, row: Row):
        self.row = row
        self.stack = ExitStack()
        self.rss_before: float | None = None
        self.rss_peak: float | None = None

    def setup(self) -> None:
        """Start what is needed; may set ``row.not_measured`` or raise."""

    def run(self) -> Run:
        raise NotImplementedError

    def measured_run(self) -> Run:
        if self.pid is None:
            return self.run()
        if self.rss_before is None:
            self.rss_before = rss_mb(self.pid)
        with RssSampler(self.pid) as rss:
            run = self.run()
        if rss.peak is not None:
            self.rss_peak = rss.peak if self.rss_peak is None else max(self.rss_peak, rss.peak)
        if self.rss_before is not None and self.rss_peak is not None:
            self.row.rss_growth_mb = self.rss_peak - self.rss_before
        return run

    def start(self, launch: Launch, workdir: Path, cpu: int) -> tuple[int, int]:
        """(port, pid) of a server started on this subject's stack, once it answers 200."""
        server = self.stack.enter_context(running(launch, workdir, cpu))
        try:
            wait_until_healthy(server, launch.ready_timeout)
        except StartFailed as exc:
            raise Failed(f"{exc}\n{server.stderr_tail()}") from None
        self.pid = server.proc.pid
        return launch.port, server.proc.pid


class LoopSubject(Subject):
    def __init__(self, row: Row, path: Path, expected: int, cpu: int):
        super().__init__(row)
        self.path, self.expected, self.cpu = path, expected, cpu

    def run(self) -> Run:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self.cpu})  # this process reads, on the servers' CPU
        try:
            return loop_run(self.path, self.expected)
        finally:
            os.sched_setaffinity(0, before)


class RelaySubject(Subject):
    def __init__(self, row: Row, mode: str, max_read: int, path: Path, expected: int, scratch: Path, cpu: int):
        super().__init__(row)
        self.mode, self.max_read, self.path, self.expected = mode, max_read, path, expected
        self.scratch, self.cpu = scratch, cpu
        self.port = 0

    def setup(self) -> None:
        port = free_port()
        argv = [sys.executable, "-c", RELAY_SERVER, str(port), str(self.path), self.mode, str(self.max_read)]
        self.port, _ = self.start(Launch(argv, port, "/health"), self.scratch / f"relay-{self.mode}", self.cpu)

    def run(self) -> Run:
        assert self.pid is not None
        return relay_run(self.port, self.pid, self.expected)


class TerminalSubject(Subject):
    """A shell in a terminal behind a WebSocket: terminado's or codebuddy's."""

    terminal: Terminal

    def __init__(self, row: Row, shell: str, path: Path, expected: int, scratch: Path, cpu: int):
        super().__init__(row)
        self.shell, self.path, self.expected, self.scratch, self.cpu = shell, path, expected, scratch, cpu
        self.ws: WebSocket | None = None

    def attach(self, port: int, path: str) -> None:
        self.ws = WebSocket(port, path)
        self.stack.callback(self.ws.close)
        prepare_shell(self.ws, self.terminal)

    def run(self) -> Run:
        assert self.ws is not None and self.pid is not None
        return terminal_run(self.ws, self.terminal, self.path, self.expected, self.pid)


class TerminadoSubject(TerminalSubject):
    terminal = TERMINADO_WS

    def __init__(self, row: Row, jupyter: tuple[str | None, str], *rest: object):
        super().__init__(row, *rest)  # type: ignore[arg-type]
        self.jupyter = jupyter

    def setup(self) -> None:
        python, version = self.jupyter
        if python is None:
            self.row.not_measured = version
            return
        self.row.note = version
        workdir = self.scratch / "jupyter"
        port, _ = self.start(jupyter_launch(python, version, self.shell, free_port(), workdir), workdir, self.cpu)
        status, body = request_json(port, "POST", "/api/terminals", {})
        if status != 200 or not isinstance(body, dict) or "name" not in body:
            raise Failed(f"POST /api/terminals: HTTP {status} {body!r}")
        self.attach(port, f"/terminals/websocket/{body['name']}")


class CodebuddySubject(TerminalSubject):
    terminal = CODEBUDDY_WS

    def __init__(self, row: Row, template: list[str] | None, *rest: object):
        super().__init__(row, *rest)  # type: ignore[arg-type]
        self.template = template

    def setup(self) -> None:
        if self.template is None:
            self.row.not_measured = no_twistd_reason()
            return
        workdir = self.scratch / "codebuddy"
        workdir.mkdir()
        port, _ = self.start(codebuddy_launch(self.template, free_port(), workdir), workdir, self.cpu)
        request = {"cols": 200, "rows": 50, "shell": self.shell, "cwd": str(self.scratch)}
        status, body = request_json(port, "POST", "/api/v1/pty", request)
        if status == 404:
            self.row.not_measured = "not measured (terminal routes missing: HTTP 404)"
            return
        data = body.get("data", body) if isinstance(body, dict) else None
        session = data.get("sessionId") if isinstance(data, dict) else None
        if status not in (200, 201) or not session:
            raise Failed(f"POST /api/v1/pty: HTTP {status} {body!r}")
        self.stack.callback(request_json, port, "DELETE", f"/api/v1/pty/{session}")
        self.attach(port, f"/api/v1/pty/{session}/ws")


def guarded(subject: Subject, step: Callable[[], object]) -> bool:
    """Run ``step``; on any error the row FAILS and its servers are stopped at once."""
    try:
        step()
        return True
    except Exception as exc:  # noqa: BLE001 - the row fails, the others are still measured
        subject.row.failure = f"{type(exc).__name__}: {exc}"
        subject.row.runs = []
        subject.stack.close()
        return False


def record(subject: Subject, round_: int) -> None:
    run = subject.measured_run()
    if round_ > 0:  # round 0 is the warm-up
        subject.row.runs.append(run)


def measure_all(subjects: list[Subject], repeat: int) -> None:
    """Set every subject up, then ``repeat`` + 1 rounds (the first a warm-up); stop everything."""
    try:
        for subject in subjects:
            print(f"starting {subject.row.name} ...", file=sys.stderr, flush=True)
            guarded(subject, subject.setup)
        active = [s for s in subjects if s.row.failure is None and s.row.not_measured is None]
        for round_ in range(repeat + 1):
            print(f"round {round_} of {repeat}{' (warm-up)' if round_ == 0 else ''} ...", file=sys.stderr, flush=True)
            for subject in active:
                if subject.row.failure is None:
                    guarded(subject, lambda s=subject, r=round_: record(s, r))  # type: ignore[misc]
    finally:
        for subject in subjects:
            subject.stack.close()


# --------------------------------------------------------------------------- report


COLUMNS = [
    ("row", 34, "<"),
    ("MB/s", 7, ">"),
    ("x loop", 6, ">"),
    ("runs MB/s", 17, "<"),
    ("srv CPU s/GB", 12, ">"),
    ("cli CPU s/GB", 12, ">"),
    ("msgs/run", 8, ">"),
    ("avg msg B", 9, ">"),
    ("max msg B", 9, ">"),
    ("RSS +MB", 7, ">"),
]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_rows(rows: list[Row], loop_rate: float | None) -> list[str]:
    cells = []
    for row in rows:
        if not row.ok:
            tag = "[FAILED]" if row.failure else "skipped" if row.not_measured == SKIPPED else "not measured"
            cells.append([row.name, "-", "-", tag, "-", "-", "-", "-", "-", "-"])
            continue
        runs = row.runs
        messages = statistics.median(r.messages for r in runs)
        cells.append([
            row.name,
            f"{row.mb_s:,.1f}",
            _fmt(row.mb_s / loop_rate if loop_rate else None, ".2f"),
            " ".join(f"{r.mb_s:.0f}" for r in runs),
            _fmt(row.cpu_per_gb(), ".2f"),
            _fmt(row.cpu_per_gb("client_cpu"), ".2f"),
            f"{messages:,.0f}",
            f"{statistics.median(r.bytes / r.messages for r in runs):,.0f}",
            f"{max(r.largest for r in runs):,}",
            _fmt(row.rss_growth_mb, ".1f"),
        ])
    lines = table(COLUMNS, cells)
    for row in rows:
        if row.not_measured:
            lines.append(f"  {row.name}: {row.not_measured}")
        elif row.failure:
            first, *rest = row.failure.splitlines() or [""]
            lines.append(f"  {row.name}: [FAILED] {first}")
            lines += [f"    | {line}" for line in rest]
        elif row.note:
            lines.append(f"  {row.name}: {row.note}")
        if row.ok:
            busy = [r.client_cpu / r.seconds for r in row.runs if r.client_cpu is not None]
            if busy and max(busy) > CLIENT_BOUND_SHARE:
                lines.append(f"  WARNING: {row.name}: the client used {max(busy):.0%} of a CPU: it may be the limit")
    return lines


def evaluate(rows: dict[str, Row]) -> list[Target]:
    loop, relay, terminado, ours = rows[LOOP], rows[RELAY], rows[TERMINADO], rows[CODEBUDDY]
    targets = []

    def judge(description: str, base: Row, check: Callable[[], tuple[bool, str]]) -> None:
        if ours.not_measured:
            targets.append(Target(description, None, ours.not_measured))
        elif not ours.ok:
            targets.append(Target(description, False, f"codebuddy FAILED: {(ours.failure or '').splitlines()[0]}"))
        elif not base.ok:
            why = (base.not_measured or base.failure or "").splitlines()[0]
            targets.append(Target(description, None, f"{base.name} not measured: {why}"))
        else:
            met, detail = check()
            targets.append(Target(description, met, detail))

    judge(f"codebuddy MB/s >= {MIN_TIMES_TERMINADO}x terminado", terminado, lambda: (
        ours.mb_s >= MIN_TIMES_TERMINADO * terminado.mb_s,
        f"{ours.mb_s:,.1f} vs {terminado.mb_s:,.1f} MB/s ({ours.mb_s / terminado.mb_s:.2f}x)"))
    judge(f"codebuddy MB/s >= {MIN_LOOP_SHARE:.0%} of the bare loop", loop, lambda: (
        ours.mb_s >= MIN_LOOP_SHARE * loop.mb_s,
        f"{ours.mb_s:,.1f} vs {loop.mb_s:,.1f} MB/s ({ours.mb_s / loop.mb_s:.0%})"))

    def cpu_check() -> tuple[bool, str]:
        mine, theirs = ours.cpu_per_gb(), relay.cpu_per_gb()
        assert mine is not None and theirs is not None
        return mine <= theirs, f"{mine:.2f} vs {theirs:.2f} CPU s/GB ({mine / theirs:.2f}x)"

    judge("codebuddy server CPU per GB <= the binary relay's", relay, cpu_check)
    for base in (terminado, relay, rows[RELAY_SMALL]):
        if base.ok and loop.ok:
            targets.append(Target(f"{base.name} / loop (context)", None,
                                  f"{base.mb_s:,.1f} vs {loop.mb_s:,.1f} MB/s ({base.mb_s / loop.mb_s:.0%}), "
                                  f"{base.cpu_per_gb():.2f} server CPU s/GB", informational=True))
    return targets


# --------------------------------------------------------------------------- main


def default_shell() -> str:
    return shutil.which("bash") or "/bin/sh"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-mib", type=int, default=48, help="random MiB before base64 (48: ~68 MB of base64)")
    parser.add_argument("--repeat", type=int, default=5, help="measured rounds (5), after one warm-up round")
    parser.add_argument("--shell", default=default_shell(), help="the terminals' shell (bash)")
    parser.add_argument("--codebuddy-cmd", default=None,
                        help="command starting the daemon instead of twistd; {port}, {home}, {cwd} and {tmp} "
                        "are filled in")
    parser.add_argument("--jupyter-python", default=None,
                        help="interpreter with jupyter-server (default: the --jupyter-venv's, else this one)")
    parser.add_argument("--jupyter-venv", type=Path, default=JUPYTER_VENV,
                        help=f"venv holding jupyter-server, made and filled when missing ({JUPYTER_VENV})")
    parser.add_argument("--no-install", action="store_true",
                        help="do not install jupyter-server into the --jupyter-venv when it is missing")
    parser.add_argument("--relay-max-read", type=int, default=256 * 1024,
                        help="most bytes the relay reads per wake-up before sending a frame (256 KiB)")
    parser.add_argument("--only", default=",".join(ROW_KEYS),
                        help=f"comma-separated rows to measure (default all: {','.join(ROW_KEYS)})")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    if not only <= set(ROW_KEYS):
        parser.error(f"--only takes {', '.join(ROW_KEYS)}")
    if args.raw_mib < 1 or args.repeat < 1:
        parser.error("--raw-mib and --repeat must be >= 1")
    if psutil is None:
        print("psutil is required (pip install psutil)", file=sys.stderr)
        return 2
    install_sigterm_exit()
    server_cpu_id, client_cpu_id = choose_cpus()
    os.sched_setaffinity(0, {client_cpu_id})
    load_before = load_average()
    jupyter: tuple[str | None, str] = (None, "")
    if "terminado" in only:
        jupyter = find_jupyter(args.jupyter_python, args.jupyter_venv, not args.no_install)
    template = codebuddy_template(args.codebuddy_cmd)

    scratch = Path(tempfile.mkdtemp(prefix="codebuddy-ptybench-"))
    rows = {name: Row(name) for name in ROWS.values()}
    try:
        path, size, expected = make_file(scratch, args.raw_mib)
        common = (path, expected, scratch, server_cpu_id)
        subjects: dict[str, Subject] = {
            "loop": LoopSubject(rows[LOOP], path, expected, server_cpu_id),
            "relay": RelaySubject(rows[RELAY], "all", args.relay_max_read, *common),
            "relay-small": RelaySubject(rows[RELAY_SMALL], "small", 8192, *common),
            "terminado": TerminadoSubject(rows[TERMINADO], jupyter, args.shell, *common),
            "codebuddy": CodebuddySubject(rows[CODEBUDDY], template, args.shell, *common),
        }
        for key, subject in subjects.items():
            if key not in only:
                subject.row.not_measured = SKIPPED
        measure_all([s for k, s in subjects.items() if k in only], args.repeat)
    except KeyboardInterrupt:
        print("interrupted: all servers stopped, scratch dir removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    loop_rate = rows[LOOP].mb_s if rows[LOOP].ok else None
    print(f"cat of {size / 1e6:,.1f} MB of base64 ({expected:,} bytes through a tty), {args.repeat} measured "
          f"round(s) after a warm-up (medians); servers on CPU {server_cpu_id}, this client on CPU {client_cpu_id}; "
          f"shell {args.shell}; load average before: {describe_load(load_before)}, "
          f"after: {describe_load(load_average())}\n")
    print("\n".join(render_rows(list(rows.values()), loop_rate)))
    targets = evaluate(rows)
    print("\nTargets:")
    for target in targets:
        print(target_line(target))
    if args.json:
        print(json.dumps({
            "file_bytes": size, "expected_bytes": expected, "repeat": args.repeat, "shell": args.shell,
            "server_cpu": server_cpu_id, "client_cpu": client_cpu_id,
            "rows": [row.to_json() for row in rows.values()],
            "targets": [{**asdict(t), "verdict": t.verdict} for t in targets],
        }, indent=2))
    return 1 if any_missed(targets) else 0


if __name__ == "__main__":
    sys.exit(main())
