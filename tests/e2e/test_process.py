"""The process area over a real daemon: the spec's examples verbatim, stdin to cat, signal by tag."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
import pytest_twisted
import treq

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.e2e
TIMEOUT = 15


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def call(daemon: Daemon, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
    response = await treq.post(daemon.url + "/api/v1/process/" + path, json=body, **kwargs).addTimeout(
        TIMEOUT, _reactor()
    )
    content = await response.content()
    return response.code, json.loads(content)


async def sse(daemon: Daemon, path: str, body: Any) -> list[tuple[str, Any]]:
    """(event, data) pairs of an SSE response read to its end."""
    response = await treq.post(
        daemon.url + "/api/v1/process/" + path, json=body, headers={"Accept": "text/event-stream"}
    ).addTimeout(TIMEOUT, _reactor())
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
    raw = (await response.content()).decode()
    frames = []
    for block in raw.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(":"))
        if "event" in fields:
            frames.append((fields["event"], json.loads(fields["data"])))
    return frames


@pytest_twisted.ensureDeferred
async def test_spec_examples(daemon: Daemon) -> None:
    """The spec's process/start example, verbatim, in JSON and SSE mode."""
    (daemon.workspace / "script.py").write_text("print('hello from script')\n")
    example = {"process": {"cmd": "python3", "args": ["script.py"]}, "tag": "my-script"}
    status, body = await call(daemon, "start", example)
    assert status == 200 and body["data"]["tag"] == "my-script" and body["data"]["pid"] > 0
    frames = await sse(daemon, "start", {"process": {"cmd": "python3", "args": ["script.py"]}, "tag": "my-script2"})
    assert frames[0][0] == "start" and frames[-1] == ("end", {"exitCode": 0, "exited": True, "status": "exit status 0"})
    assert "".join(d.get("stdout", "") for e, d in frames if e == "data") == "hello from script\n"
    frames = await sse(daemon, "connect", {"process": {"tag": "my-script"}})
    events = [e for e, _ in frames]
    assert events[0] == "start" and events[-1] == "end" and set(events[1:-1]) == {"data"}, frames
    assert "".join(d.get("stdout", "") for e, d in frames if e == "data") == "hello from script\n", frames
    status, listing = await call(daemon, "start", {"process": {"cmd": "true"}, "wait": True})
    assert listing["data"]["exitCode"] == 0
    response = await treq.get(daemon.url + "/api/v1/process/list").addTimeout(TIMEOUT, _reactor())
    rows = json.loads(await response.content())["data"]["processes"]
    assert any(r["tag"] == "my-script" and r["status"] == "exited" and r["exitCode"] == 0 for r in rows)


@pytest_twisted.ensureDeferred
async def test_stdin_to_cat_and_signal_by_tag(daemon: Daemon) -> None:
    """Input reaches cat, closing stdin ends it; a signal by tag kills a sleeper's group."""
    await call(daemon, "start", {"process": {"cmd": "cat"}, "tag": "cat"})
    assert (await call(daemon, "input/send", {"process": {"tag": "cat"}, "input": {"stdin": "hello\n"}}))[0] == 200
    assert (await call(daemon, "stdin/close", {"process": {"tag": "cat"}}))[0] == 200
    frames = await sse(daemon, "connect", {"process": {"tag": "cat"}})
    assert frames[0][0] == "start" and frames[-1][0] == "end"
    assert "".join(d.get("stdout", "") for e, d in frames if e == "data") == "hello\n"

    await call(daemon, "start", {"process": {"cmd": "/bin/bash", "args": ["-c", "sleep 60"]}, "tag": "sleeper"})
    status, _ = await call(daemon, "signal/send", {"process": {"tag": "sleeper"}, "signal": 15})
    assert status == 200
    frames = await sse(daemon, "connect", {"process": {"tag": "sleeper"}})
    assert frames[-1][0] == "end" and frames[-1][1]["status"] == "signal: terminated"
    status, body = await call(daemon, "signal/send", {"process": {"tag": "sleeper"}, "signal": 15})
    assert (status, body["error"]["code"]) == (409, "CONFLICT")
    status, body = await call(daemon, "signal/send", {"process": {"tag": "nobody"}, "signal": 15})
    assert (status, body["error"]["code"]) == (404, "PROCESS_NOT_FOUND")


def test_shutdown_ends_streams_with_end_events(daemon: Daemon) -> None:
    """SIGTERM to the daemon: a client following a process gets its `end` event (the child was
    terminated) and a properly finished response, not a cut connection."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(daemon.url)
    body = json.dumps({"process": {"cmd": "sh", "args": ["-c", "echo ready; exec sleep 60"]}}).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"POST /api/v1/process/start HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
            b"Content-Type: application/json\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        received = b""
        while b"ready" not in received:
            chunk = sock.recv(65536)
            assert chunk, "the stream ended before the child printed"
            received += chunk
        assert daemon.stop() in (0, -signal.SIGTERM)  # twistd exits with the signal that stopped it
        while chunk := sock.recv(65536):
            received += chunk
    text = received.decode()
    assert "event: end" in text and '"status":"signal: terminated"' in text
    assert text.endswith("0\r\n\r\n"), "the chunked response was not finished"
