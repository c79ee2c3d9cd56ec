"""The filesystem area over real sockets: the spec's examples, big and interrupted transfers, watch, search."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import pytest_twisted
import treq

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.e2e


async def call(daemon: Daemon, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await treq.request(method, daemon.url + path, **kwargs)
    body = await response.content()
    return response.code, json.loads(body) if body else None


def wait_until(predicate: Any, timeout: float = 20.0) -> bool:
    """Poll a condition the daemon changes asynchronously, with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest_twisted.ensureDeferred
async def test_spec_examples(daemon: Daemon) -> None:
    """Every filesystem example of the spec, verbatim, answers as documented."""
    Path("/tmp/test.txt").write_text("hello from the spec\n")
    Path("/tmp/local-file.txt").write_text("local file\n")
    shutil.rmtree("/tmp/new-dir", ignore_errors=True)
    try:
        response = await treq.get(daemon.url + "/api/v1/files/download?path=/tmp/test.txt")
        assert (response.code, await response.content()) == (200, b"hello from the spec\n")
        with open("/tmp/local-file.txt", "rb") as handle:
            status, body = await call(
                daemon, "POST", "/api/v1/files/upload?path=/tmp/upload.txt",
                headers={"Content-Type": "application/octet-stream"}, data=handle,
            )
        assert status == 200 and body["data"][0]["path"] == "/tmp/upload.txt"
        assert Path("/tmp/upload.txt").read_text() == "local file\n"
        status, body = await call(daemon, "POST", "/api/v1/fs/stat", json={"path": "/tmp"})
        assert status == 200 and body["data"]["entry"]["type"] == "directory"
        status, body = await call(daemon, "POST", "/api/v1/fs/list", json={"path": "/tmp", "depth": 2})
        assert status == 200 and isinstance(body["data"]["entries"], list)
        status, body = await call(daemon, "POST", "/api/v1/fs/mkdir", json={"path": "/tmp/new-dir"})
        assert status == 200 and Path("/tmp/new-dir").is_dir()
        (daemon.workspace / "src" / "components").mkdir(parents=True)
        (daemon.workspace / "src" / "components" / "Button.tsx").write_text("x")
        status, body = await call(daemon, "GET", "/api/v1/fs/search?query=component&limit=10")
        assert status == 200
        assert body["items"] == body["data"]["items"]
        assert any(item["path"].endswith("src/components") for item in body["items"])
    finally:
        for path in ("/tmp/test.txt", "/tmp/local-file.txt", "/tmp/upload.txt"):
            Path(path).unlink(missing_ok=True)
        shutil.rmtree("/tmp/new-dir", ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_large_binary_round_trip_and_resume(daemon: Daemon) -> None:
    """A 24 MiB binary upload comes back byte for byte, and a Range request resumes it."""
    data = os.urandom(24 * 1024 * 1024)
    source = daemon.workspace / "source.bin"
    source.write_bytes(data)
    with open(source, "rb") as handle:
        status, body = await call(
            daemon, "POST", "/api/v1/files/upload?path=copy.bin",
            headers={"Content-Type": "application/octet-stream"}, data=handle,
        )
    assert status == 200 and body["data"][0]["size"] == len(data)
    response = await treq.get(daemon.url + "/api/v1/files/download?path=copy.bin")
    received = await response.content()
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    offset = 10_000_001
    url = daemon.url + "/api/v1/files/download?path=copy.bin"
    response = await treq.get(url, headers={"Range": f"bytes={offset}-"})
    assert response.code == 206
    assert await response.content() == data[offset:]
    assert not list(daemon.workspace.glob(".*.upload-*.tmp"))


def test_interrupted_upload_leaves_nothing(daemon: Daemon) -> None:
    """An upload cut off mid-body keeps the old file and removes its temporary file."""
    target = daemon.workspace / "keep.txt"
    target.write_text("old content")
    parts = urlsplit(daemon.url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(
            f"POST /api/v1/files/upload?path={quote(str(target))} HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n".encode()
        )
        sock.sendall(b"x" * 1_000_000)
        assert wait_until(lambda: list(daemon.workspace.glob(".keep.txt.upload-*.tmp")))
    assert wait_until(lambda: not list(daemon.workspace.glob(".keep.txt.upload-*.tmp")))
    assert target.read_text() == "old content"


def test_watch_sees_changes(daemon: Daemon) -> None:
    """fs/watch streams a start event, then create, write and remove of the test's own files, with ids."""
    parts = urlsplit(daemon.url)
    body = json.dumps({"path": str(daemon.workspace)}).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/fs/watch HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        received = bytearray()

        def read_until(marker: bytes) -> None:
            deadline = time.monotonic() + 10
            while marker not in received:
                assert time.monotonic() < deadline, f"no {marker!r} in {bytes(received)!r}"
                chunk = sock.recv(65536)
                assert chunk, "the stream ended"
                received.extend(chunk)

        read_until(b"event: start")
        assert b"text/event-stream" in received
        target = daemon.workspace / "watched.txt"
        target.write_text("one")
        read_until(b'"type":"write"')
        target.unlink()
        read_until(b'"type":"remove"')
    events = [json.loads(line[len(b"data: "):]) for line in bytes(received).split(b"\n")
              if line.startswith(b"data: {") and b'"type":"start"' not in line]
    kinds = [(e["type"], e["name"]) for e in events]
    assert kinds[0] == ("create", "watched.txt")
    assert ("remove", "watched.txt") in kinds
    assert b"\nid: " in received


@pytest_twisted.ensureDeferred
async def test_errors_over_the_wire(daemon: Daemon) -> None:
    """The documented errors answer with their status and code over a real socket."""
    (daemon.workspace / "file.txt").write_text("x")
    cases = [
        ("POST", "/api/v1/fs/stat", {"json": {"path": "missing"}}, 404, "NOT_FOUND"),
        ("POST", "/api/v1/fs/stat", {"json": {}}, 400, "PATH_REQUIRED"),
        ("POST", "/api/v1/fs/list", {"json": {"path": "file.txt"}}, 400, "PATH_NOT_DIRECTORY"),
        ("POST", "/api/v1/fs/mkdir", {"json": {"path": "file.txt"}}, 409, "ALREADY_EXISTS"),
        ("GET", f"/api/v1/files/download?path={quote(str(daemon.workspace))}", {}, 400, "PATH_NOT_DIRECTORY"),
        ("GET", "/api/v1/files/download?path=file.txt", {"headers": {"Range": "bytes=50-"}}, 416,
         "RANGE_NOT_SATISFIABLE"),
    ]
    for method, path, kwargs, status, code in cases:
        got_status, body = await call(daemon, method, path, **kwargs)
        assert (got_status, body["error"]["code"]) == (status, code), (path, body)
