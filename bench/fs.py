"""
Filesystem benchmark: codebuddy's file and fs endpoints against baselines.

Run it by hand, from the repository root, with the virtualenv's interpreter::

    python bench/fs.py [--size-mib 1024] [--repeat 3] [--tree-files 100000]
                       [--scratch DIR] [--only download,upload,list,search]
                       [--codebuddy-cmd CMD] [--json]

Prerequisites: ``apt-get install nginx-light curl`` (nginx-light has the
WebDAV module), psutil, and ripgrep (the ``rg`` next to the interpreter, as
the daemon uses it, else ``rg`` on PATH). A missing tool skips its rows.

One run measures four things, each printed as a table plus target lines:

1. download of a ``--size-mib`` file from the page cache: ``GET
   /api/v1/files/download`` vs nginx serving the same file (sendfile on);
   curl as the client, a small Python socket reader as a client-ceiling
   check, ``dd`` as a reference; the daemon's RSS growth during transfers;
2. upload of the same file: ``POST /api/v1/files/upload`` vs nginx WebDAV
   ``PUT``, interleaved, every upload verified (size and sampled checksum);
3. ``POST /api/v1/fs/list`` with depth 3 on a generated tree vs a Python
   walk doing what the endpoint must (scandir + lstat of every entry);
4. ``GET /api/v1/fs/search`` p50 on the same tree vs ``rg --files``, once
   with the daemon's file-list cache warm and once cold.

Servers run pinned to the first CPU, every client (this process, curl, the
reader) on the second. Everything is created under one scratch directory,
removed at the end, and every server's process group is stopped, also on
Ctrl-C or SIGTERM. Exit status: 1 if a target was MISSED, 0 otherwise,
2 on bad prerequisites, 130 if interrupted.
"""

# ruff: noqa: E402 - the sys.path fix below must run before any other import

from __future__ import annotations

import os
import sys

# ``python bench/fs.py`` puts bench/ first on sys.path, where bench/http.py
# would shadow the standard library's ``http`` package (http.client, urllib).
# It goes to the end instead, where the shared ``_common`` module is still found.
_BENCH_DIR = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _BENCH_DIR]
sys.path.append(_BENCH_DIR)

import argparse
import hashlib
import http.client
import json
import math
import re
import shlex
import shutil
import stat
import statistics
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _common import (
    CODEBUDDY,
    Launch,
    RssSampler,
    RunningServer,
    StartFailed,
    Target,
    any_missed,
    choose_cpus,
    codebuddy_launch,
    codebuddy_template,
    describe_load,
    find_beside_python,
    find_nginx,
    free_port,
    install_sigterm_exit,
    load_average,
    no_twistd_reason,
    pinned_to,
    psutil,
    running,
    table,
    target_line,
    wait_until_healthy,
)

INSTALL_HINT = "apt-get install nginx-light curl ripgrep"
NGINX = "nginx"

# Targets.
MIN_DOWNLOAD_SHARE = 0.90  # of nginx's throughput
MIN_UPLOAD_SHARE = 0.60  # of nginx's WebDAV PUT throughput
MAX_RSS_GROWTH_MB = 32.0  # daemon RSS peak minus before, during one transfer
MAX_LIST_VS_WALK = 2.0  # fs/list depth 3 time vs the reference walk
MAX_SEARCH_VS_RG = 1.5  # search p50 vs `rg --files` p50

LIST_DEPTH = 3
SEARCH_LIMIT = 50
RSS_INTERVAL = 0.050  # seconds between RSS samples during a transfer
RG_RUNS = 11  # `rg --files` runs per variant (at least --repeat)
SAMPLE_CHUNKS = 16  # chunks compared between an upload and its source
SAMPLE_CHUNK_BYTES = 64 * 1024
PROBE_BYTES = 64 * 1024
REQUEST_TIMEOUT = 120.0  # seconds for one fs/list or search request
RG_TIMEOUT = 120.0
SECTIONS = ("download", "upload", "list", "search")
MB = 1e6

# The search queries: all distinct, varied (many, few and no matches; names,
# path fragments, extensions, abbreviations). The first 20 are measured warm,
# the rest cold; each warm query is preceded by an unmeasured "primer" one.
WARM_QUERIES = [
    "client",
    "server_0042",
    "handlers",
    "auth_000/model",
    "core/cache",
    "test_0099.py",
    "widget.ts",
    "docs/render",
    "errors",
    "utils/text_017",
    "router",
    "schema_013",
    "main_0001",
    "storage/base",
    "json",
    "plugins/jobs",
    "zzqx_no_match",
    "ctrl",
    "hlprs",
    "metrics/helpers_00",
]
COLD_QUERIES = [
    "service",
    "views/index",
    "sync_",
    "constants.rs",
    "api/auth",
    "worker",
    "parser_0",
    "io_007",
    "types.go",
    "evt",
    "lib/db_003",
    "controller_0050",
]

# The generated tree: TOP_NAMES[:10] / <sub stem>_NNN / <file stem>_NNNN.<ext>
TOP_NAMES = ["api", "core", "docs", "lib", "models", "plugins", "scripts", "services", "tests", "utils"]
SUB_STEMS = [
    "auth", "cache", "config", "db", "events", "handlers", "http", "io", "jobs", "metrics",
    "parser", "render", "router", "schema", "storage", "sync", "tasks", "text", "views", "workers",
]  # fmt: skip
FILE_STEMS = [
    "client", "server", "model", "utils", "test", "index", "main", "helpers", "types",
    "constants", "errors", "base", "widget", "controller", "service",
]  # fmt: skip
EXTENSIONS = ["py", "ts", "js", "go", "rs", "md", "json", "yaml", "c", "h", "txt"]


# --------------------------------------------------------------------------
# Results


@dataclass
class Row:
    """One line of a section's table: samples of one server/method."""

    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    status: str = "ok"  # "ok", "failed" or "skipped"
    rss_growth_mb: list[float] = field(default_factory=list)  # one per transfer
    command: str = ""
    note: str = ""
    error: str = ""
    fmt: str = ",.0f"

    @property
    def value(self) -> float | None:
        return statistics.median(self.samples) if self.samples and self.status == "ok" else None

    @property
    def max_rss_growth(self) -> float | None:
        return max(self.rss_growth_mb) if self.rss_growth_mb else None

    def fail(self, error: str) -> None:
        self.status = "failed"
        self.error = f"{self.error}\n{error}".strip()

    def runs_text(self) -> str:
        if not self.samples:
            return "-"
        values = self.samples
        if len(values) <= 5:
            return ", ".join(format(v, self.fmt) for v in values)
        p90 = statistics.quantiles(values, n=10)[-1]
        return f"n={len(values)} min {min(values):{self.fmt}} p90 {p90:{self.fmt}} max {max(values):{self.fmt}}"

    def to_json(self) -> dict:
        return {**asdict(self), "value": self.value, "max_rss_growth_mb": self.max_rss_growth}


@dataclass
class Section:
    title: str
    header: list[str]
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, name: str, unit: str, fmt: str = ",.0f", command: str = "", note: str = "") -> Row:
        row = Row(name, unit, command=command, note=note, fmt=fmt)
        self.rows.append(row)
        return row


@dataclass
class Settings:
    size_mib: int
    repeat: int
    tree_files: int
    scratch: str
    sections: list[str]
    server_cpu: int
    client_cpu: int
    nginx: str | None
    curl: str | None
    rg: str | None
    cache_seconds: float
    cold_queries: int
    load_average: float | None

    @property
    def size(self) -> int:
        return self.size_mib * 1024 * 1024

    @property
    def transfer_timeout(self) -> float:
        """Seconds one transfer of the big file may take (at least ~4 MB/s)."""
        return 60.0 + self.size_mib * 0.25


# --------------------------------------------------------------------------
# The scratch dir: big file, generated tree


@dataclass
class Tree:
    root: Path
    top: int
    sub: int
    files_per_dir: int

    @property
    def files(self) -> int:
        return self.top * self.sub * self.files_per_dir

    @property
    def entries_to_depth_3(self) -> int:
        return self.top + self.top * self.sub + self.files

    def describe(self) -> str:
        return (
            f"{self.top} dirs x {self.sub} subdirs x {self.files_per_dir} files = {self.files:,} files, "
            f"{self.entries_to_depth_3:,} entries at depths 1-3"
        )


def tree_shape(files: int) -> tuple[int, int, int]:
    """(top dirs, subdirs per top dir, files per subdir) for about ``files`` files."""
    top = min(len(TOP_NAMES), max(1, files))
    sub = max(1, min(100, round(math.sqrt(files / top))))
    return top, sub, max(1, math.ceil(files / (top * sub)))


def make_tree(root: Path, files: int) -> Tree:
    top, sub, per_dir = tree_shape(files)
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    n = 0
    for i in range(top):
        for j in range(sub):
            directory = root / TOP_NAMES[i] / f"{SUB_STEMS[(i * sub + j) % len(SUB_STEMS)]}_{j:03d}"
            directory.mkdir(parents=True)
            for k in range(per_dir):
                name = f"{FILE_STEMS[n % len(FILE_STEMS)]}_{k:04d}.{EXTENSIONS[n % len(EXTENSIONS)]}"
                os.close(os.open(directory / name, flags, 0o644))
                n += 1
    return Tree(root, top, sub, per_dir)


def make_big_file(path: Path, size: int) -> None:
    """Random content (so that a misplaced block fails the sampled checksum)."""
    chunk = 8 * 1024 * 1024
    with open(path, "wb") as out:
        left = size
        while left:
            out.write(os.urandom(min(chunk, left)))
            left -= min(chunk, left)


def sampled_digest(path: Path, size: int) -> str:
    """blake2b of SAMPLE_CHUNKS chunks spread over the file, first and last included."""
    digest = hashlib.blake2b()
    span = max(0, size - SAMPLE_CHUNK_BYTES)
    with open(path, "rb") as f:
        for i in range(SAMPLE_CHUNKS):
            f.seek(span * i // (SAMPLE_CHUNKS - 1))
            digest.update(f.read(SAMPLE_CHUNK_BYTES))
    return digest.hexdigest()


def check_space(scratch: Path, size: int) -> str | None:
    need = 3 * size + 1024**3  # big file, one upload, nginx's body temp file, the tree
    free = shutil.disk_usage(scratch).free
    if free < need:
        return f"only {free / 1024**3:.1f} GiB free under {scratch}, need {need / 1024**3:.1f} GiB"
    return None


def filesystem_of(path: Path) -> str:
    best = None
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        if (str(path) + "/").startswith(mount.rstrip("/") + "/") and (best is None or len(mount) > len(best[0])):
            best = (mount, part.fstype, part.device)
    return f"{best[1]} on {best[0]} ({best[2]})" if best else "unknown filesystem"


# --------------------------------------------------------------------------
# Servers


NGINX_CONF = """\
# Generated by bench/fs.py: static files with sendfile, WebDAV PUT under /up/.
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_max_body_size 0;
    client_body_temp_path {body_temp};
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /up/ {{
            dav_methods PUT;
            create_full_put_path on;
        }}
    }}
}}
"""


def nginx_launch(nginx: str, port: int, workdir: Path, root: Path, body_temp: Path, ready: str) -> Launch:
    # As root, workers would run as "nobody" and could not read or write the
    # scratch dir (mode 0700): keep them as the current user.
    user = ""
    if os.geteuid() == 0:
        import grp
        import pwd

        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, dir=workdir, port=port, root=root, body_temp=body_temp))
    argv = [nginx, "-e", str(workdir / "error.log"), "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"]
    return Launch(argv, port, path=ready)


@dataclass
class Servers:
    """The two servers of the run (either may be missing, with the reason)."""

    codebuddy: RunningServer | None = None
    codebuddy_error: str = ""
    codebuddy_command: str = ""
    nginx: RunningServer | None = None
    nginx_error: str = ""
    nginx_command: str = ""

    @property
    def codebuddy_port(self) -> int:
        return urllib.parse.urlsplit(self.codebuddy.url).port

    @property
    def nginx_base(self) -> str:
        parts = urllib.parse.urlsplit(self.nginx.url)
        return f"{parts.scheme}://{parts.netloc}"

    def codebuddy_alive(self) -> str | None:
        """Why the daemon cannot be measured, or None."""
        if self.codebuddy is None:
            return f"the daemon did not start: {self.codebuddy_error}"
        code = self.codebuddy.proc.poll()
        if code is not None:
            return f"the daemon exited with status {code}\n{self.codebuddy.stderr_tail()}"
        return None


def start_servers(stack: ExitStack, settings: Settings, scratch: Path, command: str | None) -> Servers:
    servers = Servers()
    template = codebuddy_template(command)
    if template is None:
        servers.codebuddy_error = no_twistd_reason()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="codebuddy-", dir=scratch))
        launch = codebuddy_launch(template, free_port(), workdir)
        # Bytecode goes to the scratch dir, not into the source tree.
        launch.env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in launch.env.items() if k != "PYTHONPYCACHEPREFIX")
        servers.codebuddy_command = f"{env} {shlex.join(launch.argv)}"
        server = stack.enter_context(running(launch, workdir, settings.server_cpu))
        try:
            wait_until_healthy(server, launch.ready_timeout)
            servers.codebuddy = server
        except StartFailed as exc:
            servers.codebuddy_error = f"{exc}\n{server.stderr_tail()}".strip()
    if settings.nginx is None:
        servers.nginx_error = f"nginx not found ({INSTALL_HINT})"
    else:
        workdir = Path(tempfile.mkdtemp(prefix="nginx-", dir=scratch))
        (scratch / "data" / "ready.txt").write_text("ok\n")
        launch = nginx_launch(
            settings.nginx, free_port(), workdir, scratch, scratch / "nginx-body", "/data/ready.txt"
        )
        servers.nginx_command = shlex.join(launch.argv)
        server = stack.enter_context(running(launch, workdir, settings.server_cpu))
        try:
            wait_until_healthy(server, launch.ready_timeout)
            servers.nginx = server
        except StartFailed as exc:
            servers.nginx_error = f"{exc}\n{server.stderr_tail()}".strip()
    return servers


# --------------------------------------------------------------------------
# Clients


class ClientError(Exception):
    """A transfer or request did not do what it should (status, size, content)."""


def curl_download_argv(settings: Settings, url: str) -> list[str]:
    return [
        settings.curl or "curl",
        "-s",
        "--noproxy",
        "*",
        "--max-time",
        f"{settings.transfer_timeout:.0f}",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{speed_download} %{time_total}",
        url,
    ]


def curl_upload_argv(settings: Settings, url: str, source: Path, post: bool, response: Path) -> list[str]:
    # -T streams the file (--data-binary @file would read it all into memory
    # first); -X POST only changes the method. curl sends "Expect: 100-continue"
    # to both servers alike.
    extra = ["-X", "POST", "-H", "Content-Type: application/octet-stream"] if post else []
    return [
        settings.curl or "curl",
        "-s",
        "--noproxy",
        "*",
        "--max-time",
        f"{settings.transfer_timeout:.0f}",
        *extra,
        "-T",
        str(source),
        "-o",
        str(response),
        "-w",
        "%{http_code} %{size_upload} %{speed_upload} %{time_total}",
        url,
    ]


# A tiny HTTP/1.1 GET client reading into one reused 4 MiB buffer: the
# client-ceiling check for curl. Prints: status, body bytes, seconds, chunked.
READER = r"""
import socket, sys, time
host, port, target, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
view = memoryview(bytearray(4 << 20))
start = time.perf_counter()
sock = socket.create_connection((host, port), timeout=timeout)
sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    n = sock.recv_into(view)
    if not n:
        break
    head += bytes(view[:n])
header, _, rest = head.partition(b"\r\n\r\n")
lines = header.decode("latin-1").split("\r\n")
status = int(lines[0].split()[1])
length, chunked = None, 0
for line in lines[1:]:
    name, _, value = line.partition(":")
    if name.strip().lower() == "content-length":
        length = int(value)
    elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
        chunked = 1
got = len(rest)
while length is None or got < length:
    n = sock.recv_into(view)
    if not n:
        break
    got += n
elapsed = time.perf_counter() - start
sock.close()
print(status, got, f"{elapsed:.6f}", chunked)
"""


def reader_argv(settings: Settings, url: str) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    timeout = f"{settings.transfer_timeout:.0f}"
    return [sys.executable, "-I", "-c", READER, parts.hostname, str(parts.port), target, timeout]


def reader_display(settings: Settings, url: str) -> str:
    """The reader's command line, with the script shown as $READER (bench/fs.py's READER)."""
    argv = reader_argv(settings, url)
    return shlex.join(argv[:3]) + ' "$READER" ' + shlex.join(argv[4:])


def run_client(argv: list[str], timeout: float) -> list[str]:
    """Run a client (inheriting this process's CPU); its stdout split in fields."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ClientError(f"no answer within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise ClientError(f"{Path(argv[0]).name} exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout.split()


def download_once(settings: Settings, url: str, client: str) -> float:
    """MB/s of one download of the big file; checks status and size."""
    if client == "curl":
        code, size, _speed, seconds = run_client(curl_download_argv(settings, url), settings.transfer_timeout + 10)
        status, got, chunked = int(code), int(size), False
    else:
        code, size, seconds, chunked_flag = run_client(reader_argv(settings, url), settings.transfer_timeout + 10)
        status, got, chunked = int(code), int(size), chunked_flag == "1"
    if status != 200:
        raise ClientError(f"HTTP {status}")
    # A chunked answer read raw includes the chunk framing.
    if got != settings.size and not (chunked and got >= settings.size):
        raise ClientError(f"got {got:,} bytes, expected {settings.size:,}")
    return got / float(seconds) / MB


def upload_once(settings: Settings, url: str, source: Path, dest: Path, post: bool, scratch: Path) -> float:
    """MB/s of one upload; then checks the destination's size and sampled checksum."""
    response = scratch / "upload-response.txt"
    argv = curl_upload_argv(settings, url, source, post, response)
    code, sent, _speed, seconds = run_client(argv, settings.transfer_timeout + 10)
    body = response.read_text(errors="replace")[:500] if response.exists() else ""
    if not 200 <= int(code) < 300:
        raise ClientError(f"HTTP {code}: {body}".strip())
    if int(sent) != settings.size:
        raise ClientError(f"curl sent {int(sent):,} bytes, expected {settings.size:,}")
    verify_upload(source, dest, settings.size)
    return settings.size / float(seconds) / MB


def verify_upload(source: Path, dest: Path, size: int) -> None:
    try:
        got = dest.stat().st_size
    except FileNotFoundError as exc:
        raise ClientError(f"{dest} does not exist after the upload") from exc
    if got != size:
        raise ClientError(f"{dest} has {got:,} bytes, expected {size:,}")
    if sampled_digest(dest, size) != sampled_digest(source, size):
        raise ClientError(f"{dest} differs from the source ({SAMPLE_CHUNKS} sampled chunks)")


def http_request(
    port: int, method: str, target: str, body: bytes | None = None, headers: dict | None = None,
    timeout: float = REQUEST_TIMEOUT, limit: int | None = None,
) -> tuple[int, bytes, float]:  # fmt: skip
    """(status, body, seconds from sending the request to the last body byte read).

    The connection is made before the clock starts. ``limit``: read at most
    that many body bytes (a probe), then drop the connection.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.connect()
        start = time.perf_counter()
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read(limit) if limit is not None else response.read()
        return response.status, data, time.perf_counter() - start
    except (OSError, http.client.HTTPException) as exc:
        raise ClientError(f"{method} {target}: {exc.__class__.__name__}: {exc}") from exc
    finally:
        conn.close()


def short(data: bytes, limit: int = 300) -> str:
    return data[:limit].decode("utf-8", "replace")


def rg_argv(settings: Settings, tree: Path) -> list[str]:
    return [settings.rg or "rg", "--files", str(tree)]


# --------------------------------------------------------------------------
# Reference walks (what fs/list must do, without HTTP and JSON)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    return "unknown"


def reference_walk(root: str, depth: int) -> list[dict]:
    """``os.scandir`` + ``lstat`` of every entry down to ``depth`` (1 = children only).

    One dict per entry with what the endpoint reports at the least: name,
    path, type (a link's target type), size, permission bits, mtime.
    """
    entries: list[dict] = []
    pending = [(root, 1)]
    while pending:
        directory, level = pending.pop()
        with os.scandir(directory) as it:
            for entry in it:
                st = os.lstat(entry.path)
                mode = st.st_mode
                kind = _kind(mode)
                if stat.S_ISLNK(mode):
                    try:
                        kind = _kind(os.stat(entry.path).st_mode)
                    except OSError:
                        kind = "unknown"
                entries.append(
                    {
                        "name": entry.name,
                        "path": entry.path,
                        "type": kind,
                        "size": st.st_size,
                        "mode": stat.S_IMODE(mode),
                        "mtime": st.st_mtime_ns,
                    }
                )
                if level < depth and stat.S_ISDIR(mode):
                    pending.append((entry.path, level + 1))
    return entries


def scandir_only(root: str, depth: int) -> int:
    """Entries down to ``depth`` with ``os.scandir`` alone (d_type, no stat): the floor."""
    count = 0
    pending = [(root, 1)]
    while pending:
        directory, level = pending.pop()
        with os.scandir(directory) as it:
            for entry in it:
                count += 1
                if level < depth and entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, level + 1))
    return count


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


# --------------------------------------------------------------------------
# 1. Download


def bench_download(settings: Settings, servers: Servers, big: Path) -> Section:
    size = f"{settings.size_mib} MiB"
    section = Section(
        f"1. Download of a {size} file from the page cache",
        [
            f"median of {settings.repeat} runs, interleaved: nginx, codebuddy, nginx, codebuddy (curl), "
            "then the same with the Python reader; MB/s = bytes / total time (1 MB = 10^6 bytes)",
        ],
    )
    dd = section.row(
        "dd bs=1M (page cache, no HTTP)", "MB/s", command=f"dd if={big} of=/dev/null bs=1M", note="reference"
    )
    cb_url = None
    if servers.codebuddy is not None:
        cb_url = (
            f"http://127.0.0.1:{servers.codebuddy_port}/api/v1/files/download?path="
            + urllib.parse.quote(str(big), safe="/")
        )
    ng_url = f"{servers.nginx_base}/data/{big.name}" if servers.nginx else None
    ng_curl = section.row(f"{NGINX} sendfile, curl", "MB/s", note="baseline")
    cb_curl = section.row(f"{CODEBUDDY} GET /files/download, curl", "MB/s", note="measured")
    ng_reader = section.row(f"{NGINX} sendfile, python reader", "MB/s", note="client-ceiling check")
    cb_reader = section.row(f"{CODEBUDDY} GET /files/download, python reader", "MB/s", note="client-ceiling check")
    for row, url, client in (
        (ng_curl, ng_url, "curl"), (cb_curl, cb_url, "curl"),
        (ng_reader, ng_url, "python"), (cb_reader, cb_url, "python"),
    ):  # fmt: skip
        if url:
            row.command = (
                shlex.join(curl_download_argv(settings, url)) if client == "curl" else reader_display(settings, url)
            )

    # dd: the first read (untimed) makes sure the file is in the page cache.
    try:
        _dd(big)
        for _ in range(settings.repeat):
            dd.samples.append(_dd(big))
    except ClientError as exc:
        dd.fail(str(exc))

    if ng_url is None:
        for row in (ng_curl, ng_reader):
            row.status, row.error = "skipped", servers.nginx_error
    if settings.curl is None:
        for row in (ng_curl, cb_curl):
            row.status, row.error = "skipped", f"curl not found ({INSTALL_HINT})"
    if cb_url is None or (why := _probe_download(servers, cb_url)):
        reason = servers.codebuddy_alive() or why
        for row in (cb_curl, cb_reader):
            row.fail(reason)

    plan = []
    for _ in range(settings.repeat):
        plan += [(ng_curl, ng_url, "curl", servers.nginx), (cb_curl, cb_url, "curl", servers.codebuddy)]
    for _ in range(settings.repeat):
        plan += [(ng_reader, ng_url, "python", servers.nginx), (cb_reader, cb_url, "python", servers.codebuddy)]
    # One untimed warm-up per server, with curl, RSS still sampled.
    warmed: set[str] = set()
    for row, url, client, server in plan:
        if row.status != "ok":
            continue
        if row.name.startswith(CODEBUDDY) and (why := servers.codebuddy_alive()):
            row.fail(why)
            continue
        try:
            if server.url not in warmed:
                warmed.add(server.url)
                _sampled(row, server, lambda url=url, client=client: download_once(settings, url, client))
            row.samples.append(
                _sampled(row, server, lambda url=url, client=client: download_once(settings, url, client))
            )
        except ClientError as exc:
            row.fail(str(exc))

    section.targets += [
        _share_target("download", cb_curl, ng_curl, MIN_DOWNLOAD_SHARE),
        _rss_target("download", [cb_curl, cb_reader]),
        _share_target("download (python reader; not the target)", cb_reader, ng_reader, MIN_DOWNLOAD_SHARE, info=True),
    ]
    section.notes.append(_client_ceiling(ng_curl, ng_reader, cb_curl, dd))
    return section


def _dd(path: Path) -> float:
    argv = ["dd", f"if={path}", "of=/dev/null", "bs=1M"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClientError(f"dd: {exc}") from exc
    match = re.search(r"^(\d+) bytes .* copied, ([\d.,]+) s", done.stderr, re.MULTILINE)
    if done.returncode != 0 or not match:
        raise ClientError(f"dd failed: {done.stderr.strip()}")
    return int(match.group(1)) / float(match.group(2).replace(",", ".")) / MB


def _probe_download(servers: Servers, url: str) -> str | None:
    """Why codebuddy's download cannot be measured (status, body), or None."""
    parts = urllib.parse.urlsplit(url)
    try:
        status, body, _ = http_request(
            servers.codebuddy_port, "GET", f"{parts.path}?{parts.query}", timeout=30, limit=PROBE_BYTES
        )
    except ClientError as exc:
        return str(exc)
    return None if status == 200 else f"probe GET answered HTTP {status}: {short(body)}"


def _sampled(row: Row, server: RunningServer, transfer: Callable[[], float]) -> float:
    """Run ``transfer`` while sampling the server's RSS; record the growth on ``row``."""
    with RssSampler(server.proc.pid, RSS_INTERVAL) as rss:
        result = transfer()
    if rss.growth_mb is not None:
        row.rss_growth_mb.append(rss.growth_mb)
    return result


def _client_ceiling(ng_curl: Row, ng_reader: Row, cb_curl: Row, dd: Row) -> str:
    rates = {name: row.value for name, row in (("curl", ng_curl), ("python reader", ng_reader)) if row.value}
    if not rates:
        return "client ceiling: not measured (no nginx rows)"
    best = max(rates, key=rates.get)
    ceiling = rates[best]
    text = [f"client ceiling (fastest client against nginx, medians): {ceiling:,.0f} MB/s with {best}"]
    if "curl" in rates:
        text.append(f"curl gets {rates['curl'] / ceiling:.0%} of that from nginx")
    if dd.value:
        text.append(f"dd reads the file at {dd.value:,.0f} MB/s")
    if cb_curl.value:
        share = cb_curl.value / ceiling
        text.append(
            f"codebuddy with curl is at {share:.0%} of the ceiling"
            + (
                ": close to it, the client may be what limits both and flatter the ratio"
                if share >= 0.85
                else ", so the client is not what limits codebuddy"
            )
        )
    text.append(
        "codebuddy's rate depends on the client's read pattern too (the reader does 4 MiB recv_into calls, "
        "curl small reads): compare the reader rows as well, not just the ceiling"
    )
    return "\n  ".join(text) + "."


# --------------------------------------------------------------------------
# 2. Upload


def bench_upload(settings: Settings, servers: Servers, big: Path, scratch: Path) -> Section:
    section = Section(
        f"2. Upload of a {settings.size_mib} MiB file",
        [
            f"median of {settings.repeat} runs, interleaved nginx, codebuddy, nginx, ...; `sync` before each run; "
            f"destination and temp files in {scratch / 'up'} (same filesystem for both); every upload checked "
            f"(size, {SAMPLE_CHUNKS} sampled chunks) and deleted",
        ],
    )
    up = scratch / "up"
    up.mkdir(exist_ok=True)
    ng = section.row(f"{NGINX} WebDAV PUT, curl -T", "MB/s", note="baseline")
    cb = section.row(f"{CODEBUDDY} POST /files/upload, curl -T -X POST", "MB/s", note="measured")
    response = scratch / "upload-response.txt"

    def ng_url(i: int) -> str:
        return f"{servers.nginx_base}/up/nginx-{i}.bin"

    def cb_url(dest: Path) -> str:
        query = urllib.parse.quote(str(dest), safe="/")
        return f"http://127.0.0.1:{servers.codebuddy_port}/api/v1/files/upload?path={query}"

    if servers.nginx is None:
        ng.status, ng.error = "skipped", servers.nginx_error
    else:
        ng.command = shlex.join(curl_upload_argv(settings, ng_url(0), big, False, response))
    if settings.curl is None:
        for row in (ng, cb):
            row.status, row.error = "skipped", f"curl not found ({INSTALL_HINT})"
    if servers.codebuddy is not None:
        cb.command = shlex.join(curl_upload_argv(settings, cb_url(up / "codebuddy-0.bin"), big, True, response))
    if cb.status == "ok" and (why := servers.codebuddy_alive() or _probe_upload(servers, up, cb_url)):
        cb.fail(why)

    for i in range(settings.repeat):
        for row in (ng, cb):
            if row.status != "ok":
                continue
            if row is cb and (why := servers.codebuddy_alive()):
                row.fail(why)
                continue
            dest = up / (f"nginx-{i}.bin" if row is ng else f"codebuddy-{i}.bin")
            url = ng_url(i) if row is ng else cb_url(dest)
            server = servers.nginx if row is ng else servers.codebuddy
            _sync()
            try:
                row.samples.append(
                    _sampled(row, server, lambda url=url, dest=dest, row=row: upload_once(
                        settings, url, big, dest, row is cb, scratch))
                )
                leftovers = sorted(p.name for p in up.iterdir() if p != dest)
                if leftovers:
                    row.note = f"left beside the destination: {', '.join(leftovers)}"
            except ClientError as exc:
                row.fail(str(exc))
            finally:
                for path in up.iterdir():
                    _unlink(path)

    section.targets += [
        _share_target("upload", cb, ng, MIN_UPLOAD_SHARE),
        _rss_target("upload", [cb]),
    ]
    return section


def _probe_upload(servers: Servers, up: Path, cb_url: Callable[[Path], str]) -> str | None:
    """A small upload first: why the big ones cannot be measured, or None."""
    dest = up / "probe.bin"
    payload = os.urandom(PROBE_BYTES)
    parts = urllib.parse.urlsplit(cb_url(dest))
    try:
        status, body, _ = http_request(
            servers.codebuddy_port, "POST", f"{parts.path}?{parts.query}", payload,
            {"Content-Type": "application/octet-stream"}, timeout=30,
        )  # fmt: skip
        if not 200 <= status < 300:
            return f"probe upload answered HTTP {status}: {short(body)}"
        if not dest.exists() or dest.read_bytes() != payload:
            return f"probe upload answered {status} but {dest} does not hold the payload"
        return None
    except ClientError as exc:
        return str(exc)
    finally:
        for path in up.iterdir():
            _unlink(path)


def _sync() -> None:
    """Flush dirty pages so that no run pays for the previous run's writeback."""
    try:
        subprocess.run(["sync"], timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _unlink(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


# --------------------------------------------------------------------------
# 3. fs/list


def bench_list(settings: Settings, servers: Servers, tree: Tree) -> Section:
    expected = tree.entries_to_depth_3
    section = Section(
        f"3. fs/list depth {LIST_DEPTH} on a tree of {tree.files:,} files",
        [
            f"tree: {tree.describe()}; median of {settings.repeat} runs, interleaved, after one warm-up each",
            "codebuddy: http.client POST from this process, timed from sending the request to the last "
            "byte of the JSON answer (connection made before)",
        ],
    )
    body = json.dumps({"path": str(tree.root), "depth": LIST_DEPTH}).encode()
    cb = section.row(
        f"{CODEBUDDY} POST /fs/list depth {LIST_DEPTH}", "ms", ",.1f",
        command=f"POST /api/v1/fs/list {body.decode()}", note="measured",
    )  # fmt: skip
    walk = section.row(
        "reference walk: scandir + lstat + dicts", "ms", ",.1f", note="baseline (bench/fs.py reference_walk)"
    )
    walk_json = section.row("reference walk + json.dumps", "ms", ",.1f", note="context")
    scan = section.row("scandir only (no stat)", "ms", ",.1f", note="context: the floor")
    root = str(tree.root)
    counts: dict[str, int] = {}
    cb_bytes: list[int] = []

    def run_walk() -> None:
        ms, entries = timed(lambda: reference_walk(root, LIST_DEPTH))
        walk.samples.append(ms)
        counts["walk"] = len(entries)

    def run_walk_json() -> None:
        walk_json.samples.append(timed(lambda: json.dumps({"data": {"entries": reference_walk(root, LIST_DEPTH)}}))[0])

    def run_scan() -> None:
        ms, count = timed(lambda: scandir_only(root, LIST_DEPTH))
        scan.samples.append(ms)
        counts["scandir"] = count

    def run_cb() -> None:
        if why := servers.codebuddy_alive():
            raise ClientError(why)
        headers = {"Content-Type": "application/json"}
        with RssSampler(servers.codebuddy.proc.pid, RSS_INTERVAL) as rss:
            status, data, seconds = http_request(servers.codebuddy_port, "POST", "/api/v1/fs/list", body, headers)
        if status != 200:
            raise ClientError(f"HTTP {status}: {short(data)}")
        try:
            entries = json.loads(data)["data"]["entries"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ClientError(f"unexpected answer ({exc.__class__.__name__}): {short(data)}") from exc
        if len(entries) != expected:
            raise ClientError(f"answered {len(entries):,} entries, expected {expected:,}: not comparable")
        cb.samples.append(seconds * 1000)
        cb_bytes.append(len(data))
        if rss.growth_mb is not None:
            cb.rss_growth_mb.append(rss.growth_mb)

    steps: list[tuple[Row, Callable[[], None]]] = [
        (walk, run_walk), (walk_json, run_walk_json), (scan, run_scan), (cb, run_cb)
    ]  # fmt: skip
    for round_ in range(settings.repeat + 1):  # round 0: warm-up
        for row, step in steps:
            if row.status != "ok":
                continue
            try:
                step()
                if round_ == 0:
                    row.samples.clear()
                    row.rss_growth_mb.clear()
            except ClientError as exc:
                row.fail(str(exc))

    for name in ("walk", "scandir"):
        if counts.get(name, expected) != expected:
            section.notes.append(f"! the {name} counted {counts[name]:,} entries, expected {expected:,}")
    if cb_bytes:
        cb.note = f"measured; {expected:,} entries, {statistics.median(cb_bytes) / MB:.1f} MB of JSON"
    section.targets.append(_time_target(f"fs/list depth {LIST_DEPTH}", cb, walk, MAX_LIST_VS_WALK))
    return section


# --------------------------------------------------------------------------
# 4. fs/search


def bench_search(settings: Settings, servers: Servers, tree: Tree) -> Section:
    gap = settings.cache_seconds + 0.6
    cold = COLD_QUERIES[: settings.cold_queries]
    section = Section(
        f"4. fs/search p50 on a tree of {tree.files:,} files",
        [
            f"warm: {len(WARM_QUERIES)} distinct queries, each right after an unmeasured primer query on the "
            "same path (the daemon's file list is cached); "
            f"cold: {len(cold)} other distinct queries, each {gap:.1f} s after the previous request ended "
            f"(the cache lives ~{settings.cache_seconds:g} s)",
            f"rg: p50 of {max(RG_RUNS, settings.repeat)} runs, pinned to the daemon's CPU "
            f"(CPU {settings.server_cpu}) like the daemon's own rg; {settings.rg or 'rg: not found'}",
        ],
    )
    rg_null = section.row(
        "rg --files TREE > /dev/null", "ms", ",.1f", command=f"{shlex.join(rg_argv(settings, tree.root))} > /dev/null",
        note="baseline",
    )  # fmt: skip
    rg_pipe = section.row(
        "rg --files TREE | read by python", "ms", ",.1f", command=shlex.join(rg_argv(settings, tree.root)),
        note="context: output through a pipe, as the daemon reads it",
    )  # fmt: skip
    warm = section.row(f"{CODEBUDDY} search, warm (list cached)", "ms", ",.1f", note="measured")
    cold_row = section.row(f"{CODEBUDDY} search, cold (list not cached)", "ms", ",.1f", note="measured")

    if settings.rg is None:
        for row in (rg_null, rg_pipe):
            row.status, row.error = "skipped", f"rg not found ({INSTALL_HINT})"
    else:
        try:
            _rg_once(settings, tree, devnull=True)  # warm-up
            for _ in range(max(RG_RUNS, settings.repeat)):
                rg_null.samples.append(_rg_once(settings, tree, devnull=True))
                rg_pipe.samples.append(_rg_once(settings, tree, devnull=False))
        except ClientError as exc:
            rg_null.fail(str(exc))
            rg_pipe.fail(str(exc))

    def query(q: str) -> tuple[float, int]:
        if why := servers.codebuddy_alive():
            raise ClientError(why)
        params = urllib.parse.urlencode({"query": q, "limit": SEARCH_LIMIT, "path": str(tree.root)})
        status, data, seconds = http_request(servers.codebuddy_port, "GET", f"/api/v1/fs/search?{params}", timeout=60)
        if status != 200:
            raise ClientError(f"query {q!r}: HTTP {status}: {short(data)}")
        try:
            body = json.loads(data)
            items = body["items"] if "items" in body else body["data"]["items"]
            if not isinstance(items, list):
                raise TypeError("items is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise ClientError(f"query {q!r}: unexpected answer ({exc}): {short(data)}") from exc
        if len(items) > SEARCH_LIMIT:
            raise ClientError(f"query {q!r}: {len(items)} items, over limit={SEARCH_LIMIT}")
        return seconds * 1000, len(items)

    hits: dict[str, list[int]] = {"warm": [], "cold": []}
    try:
        if why := servers.codebuddy_alive():
            raise ClientError(why)
        for i, q in enumerate(WARM_QUERIES):
            query(f"primer{i}")
            ms, n = query(q)
            warm.samples.append(ms)
            hits["warm"].append(n)
    except ClientError as exc:
        warm.fail(str(exc))
    if warm.status == "ok":
        try:
            for q in cold:
                time.sleep(gap)
                ms, n = query(q)
                cold_row.samples.append(ms)
                hits["cold"].append(n)
        except ClientError as exc:
            cold_row.fail(str(exc))
    else:
        cold_row.fail("not measured: the warm queries failed")
    for name, row in (("warm", warm), ("cold", cold_row)):
        if hits[name]:
            row.note = f"measured; items per query {min(hits[name])}-{max(hits[name])}"

    binding = _time_target("search p50, cold (file list not cached)", cold_row, rg_null, MAX_SEARCH_VS_RG)
    binding.description += " [the target]"
    info = _time_target("search p50, warm (file list cached)", warm, rg_null, MAX_SEARCH_VS_RG, info=True)
    section.targets += [binding, info]
    section.notes.append(
        "The issue's target, 'within 1.5x of `rg --files` alone', is judged on the cold p50: a search that "
        "walks the tree (rg --files plus matching, JSON, HTTP) against the walk alone. The warm p50 skips the "
        "walk (cache hit), so it is reported with its ratio but is not the target."
    )
    return section


def _rg_once(settings: Settings, tree: Tree, devnull: bool) -> float:
    argv = rg_argv(settings, tree.root)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if devnull else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=RG_TIMEOUT,
            check=False,
            preexec_fn=pinned_to(settings.server_cpu),  # noqa: PLW1509 - no other thread runs now
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClientError(f"rg: {exc}") from exc
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise ClientError(f"rg exited with {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}")
    listed = 0 if devnull else done.stdout.count(b"\n")
    if not devnull and listed != tree.files:
        raise ClientError(f"rg --files listed {listed:,} files, expected {tree.files:,}")
    return elapsed


# --------------------------------------------------------------------------
# Targets


def _not_comparable(ours: Row, base: Row) -> tuple[bool | None, str] | None:
    if base.status == "skipped":
        return None, f"{base.name} was not measured ({base.error or 'skipped'})"
    if ours.status != "ok" or ours.value is None:
        first = (ours.error.splitlines() or [ours.status])[0]
        return False, f"{CODEBUDDY} was not measured ({ours.status}: {first})"
    if base.status != "ok" or base.value is None:
        return None, f"{base.name} has no valid measurement ({base.status})"
    return None


def _share_target(what: str, ours: Row, base: Row, share: float, info: bool = False) -> Target:
    description = f"{CODEBUDDY} {what} throughput >= {share:.0%} of {base.name}"
    if unjudged := _not_comparable(ours, base):
        return Target(description, *unjudged, informational=info)
    got, needed = ours.value, share * base.value
    detail = f"{got:,.0f} vs {needed:,.0f} MB/s needed ({got / base.value:.2f}x {base.name})"
    return Target(description, got >= needed, detail, informational=info)


def _time_target(what: str, ours: Row, base: Row, factor: float, info: bool = False) -> Target:
    description = f"{CODEBUDDY} {what} <= {factor:g}x {base.name}"
    if unjudged := _not_comparable(ours, base):
        return Target(description, *unjudged, informational=info)
    got, allowed = ours.value, factor * base.value
    met = got <= allowed
    detail = f"{got:,.1f} ms vs {allowed:,.1f} ms allowed ({got / base.value:.2f}x)"
    if info:
        detail += " - within it" if met else " - not within it"
    return Target(description, met, detail, informational=info)


def _rss_target(what: str, rows: list[Row]) -> Target:
    description = f"{CODEBUDDY} RSS growth during one {what} < {MAX_RSS_GROWTH_MB:g} MB"
    growths = [g for row in rows for g in row.rss_growth_mb]
    if not growths:
        return Target(description, False, f"no {CODEBUDDY} {what} was measured")
    worst = max(growths)
    detail = (
        f"worst {worst:.1f} MB over {len(growths)} transfers (peak minus before, sampled every "
        f"{RSS_INTERVAL * 1000:.0f} ms)"
    )
    return Target(description, worst < MAX_RSS_GROWTH_MB, detail)


# --------------------------------------------------------------------------
# Output

COLUMNS = [
    ("server / method", 48, "<"),
    ("value", 9, ">"),
    ("unit", 4, "<"),
    ("runs", 44, "<"),
    ("RSS +MB", 7, ">"),
]


def _cells(row: Row) -> list[str]:
    name = row.name if row.status == "ok" else f"{row.name} [{row.status.upper()}]"
    value = "-" if row.value is None else format(row.value, row.fmt)
    growth = "-" if row.max_rss_growth is None else f"{row.max_rss_growth:.1f}"
    return [name, value, row.unit, row.runs_text() if row.status == "ok" else "-", growth]


def render_section(section: Section) -> str:
    out = [f"== {section.title} ==", *section.header, ""]
    out += table(COLUMNS, [_cells(row) for row in section.rows])
    out += ["", "value: median of runs (p50). RSS +MB: the server's worst RSS growth during one request/transfer."]
    for row in section.rows:
        line = f"  {row.name}: {row.status}" + (f" - {row.note}" if row.note else "")
        if row.command:
            line += f"\n    $ {row.command}"
        if row.error:
            line += "\n" + "\n".join(f"    | {e}" for e in row.error.splitlines()[-20:])
        out.append(line)
    out += [f"  {note}" for note in section.notes]
    out += ["", "Targets:", *(target_line(t) for t in section.targets), ""]
    return "\n".join(out)


def render_header(settings: Settings, servers: Servers, scratch: Path) -> str:
    return "\n".join(
        [
            f"bench/fs.py: servers on CPU {settings.server_cpu}, clients (curl, reader, this process) on CPU "
            f"{settings.client_cpu}; 1-minute load average before the run: {describe_load(settings.load_average)}, "
            f"at the end: {describe_load(load_average())}",
            f"scratch: {scratch} ({filesystem_of(scratch)})",
            f"{CODEBUDDY}: " + (
                f"$ {servers.codebuddy_command}" if servers.codebuddy else f"[FAILED] {servers.codebuddy_error}"
            ),
            f"{NGINX}: "
            + (f"$ {servers.nginx_command}" if servers.nginx else f"[SKIPPED/FAILED] {servers.nginx_error}")
            + " (sendfile on, 1 worker, access_log off; WebDAV PUT under /up/)",
            "",
        ]
    )  # fmt: skip


# --------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark codebuddy's file/fs endpoints against nginx, dd, a Python walk and rg.",
        epilog=f"Needs: {INSTALL_HINT}; psutil.",
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the transferred file (1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, median reported (3)")
    parser.add_argument("--tree-files", type=int, default=100_000, help="files in the generated tree (100000)")
    parser.add_argument(
        "--scratch", help=f"directory to create the scratch dir in (default: {tempfile.gettempdir()})"
    )
    parser.add_argument("--only", help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    parser.add_argument(
        "--codebuddy-cmd",
        help="command starting the daemon instead of twistd; {port}, {home}, {cwd} and {tmp} are filled in",
    )
    parser.add_argument(
        "--cache-seconds", type=float, default=2.0, help="lifetime of the daemon's search file-list cache (2.0)"
    )
    parser.add_argument(
        "--cold-queries", type=int, default=10, help=f"cold search queries, at most {len(COLD_QUERIES)} (10)"
    )
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.repeat < 1 or args.tree_files < 1:
        parser.error("--size-mib, --repeat and --tree-files must be >= 1")
    if not 1 <= args.cold_queries <= len(COLD_QUERIES):
        parser.error(f"--cold-queries must be between 1 and {len(COLD_QUERIES)}")
    args.sections = SECTIONS if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(args.sections) - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args


def make_settings(args: argparse.Namespace) -> Settings:
    server_cpu, client_cpu = choose_cpus()
    return Settings(
        size_mib=args.size_mib,
        repeat=args.repeat,
        tree_files=args.tree_files,
        scratch=args.scratch or tempfile.gettempdir(),
        sections=list(args.sections),
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        nginx=find_nginx(),
        curl=shutil.which("curl"),
        rg=find_beside_python("rg") or shutil.which("rg"),
        cache_seconds=args.cache_seconds,
        cold_queries=args.cold_queries,
        load_average=load_average(),
    )


def warnings_for(settings: Settings) -> list[str]:
    warnings = []
    for tool, what in (("nginx", "nginx rows"), ("curl", "curl rows"), ("rg", "rg rows")):
        if getattr(settings, tool) is None:
            warnings.append(f"{tool} not found: the {what} are skipped. Install: {INSTALL_HINT}")
    if settings.server_cpu == settings.client_cpu:
        warnings.append("only one CPU available: servers and clients share it")
    return warnings


@contextmanager
def scratch_dir(base: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="codebuddy-fsbench-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(settings: Settings, args: argparse.Namespace) -> tuple[str, list[Section]]:
    with scratch_dir(settings.scratch) as scratch, ExitStack() as stack:
        if problem := check_space(scratch, settings.size if {"download", "upload"} & set(settings.sections) else 0):
            raise SystemExit(f"bench/fs.py: {problem} (use --scratch or --size-mib)")
        for name in ("data", "up", "nginx-body"):
            (scratch / name).mkdir()
        big = scratch / "data" / "big.bin"
        tree: Tree | None = None
        if {"download", "upload"} & set(settings.sections):
            progress(f"writing a {settings.size_mib} MiB file ...")
            make_big_file(big, settings.size)
        if {"list", "search"} & set(settings.sections):
            progress(f"generating a tree of {settings.tree_files:,} files ...")
            tree = make_tree(scratch / "tree", settings.tree_files)
        progress("starting codebuddy and nginx ...")
        servers = start_servers(stack, settings, scratch, args.codebuddy_cmd)
        sections = []
        if "download" in settings.sections:
            progress("1/4 download ...")
            sections.append(bench_download(settings, servers, big))
        if "upload" in settings.sections:
            progress("2/4 upload ...")
            sections.append(bench_upload(settings, servers, big, scratch))
        if "list" in settings.sections:
            progress("3/4 fs/list ...")
            sections.append(bench_list(settings, servers, tree))
        if "search" in settings.sections:
            progress("4/4 fs/search (the cold queries wait for the daemon's cache to expire) ...")
            sections.append(bench_search(settings, servers, tree))
        header = render_header(settings, servers, scratch)
        progress("stopping the servers and removing the scratch dir ...")
    return header, sections


def as_json(settings: Settings, sections: list[Section]) -> str:
    report = {
        "settings": asdict(settings),
        "sections": [
            {
                "title": s.title,
                "rows": [row.to_json() for row in s.rows],
                "targets": [{**asdict(t), "verdict": t.verdict} for t in s.targets],
                "notes": s.notes,
            }
            for s in sections
        ],
    }
    return json.dumps(report, indent=2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if psutil is None:
        print("psutil is required (pip install psutil)", file=sys.stderr)
        return 2
    install_sigterm_exit()
    settings = make_settings(args)
    warnings = warnings_for(settings)
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {settings.client_cpu})  # clients inherit it; servers are re-pinned
    try:
        header, sections = run(settings, args)
    except KeyboardInterrupt:
        print("interrupted: all servers stopped, scratch dir removed", file=sys.stderr)
        return 130

    print(header)
    for section in sections:
        print(render_section(section))
    if warnings:
        print("Prerequisites:", *(f"  WARNING: {w}" for w in warnings), sep="\n")
    targets = [t for s in sections for t in s.targets]
    print("Summary:", *(target_line(t) for t in targets), sep="\n")
    if args.json:
        print(as_json(settings, sections))
    return 1 if any_missed(targets) else 0


if __name__ == "__main__":
    sys.exit(main())
