# -*- test-case-name: tests.workers.test_routes -*-
"""
Worker endpoints: ``/workers``, ``/workers/:id``, ``/workers/:id/logs`` (acp-codebuddy.md §2.13).

Ids:

- a local worker is its pid (``"4242"``); ``/workers/:id`` also takes its name;
- a remote daemon added with ``POST /workers`` is ``manual-<hex>`` (or its name);
- a worker of a remote daemon is ``<manualId>:<its id there>`` (``manual-1a2b3c4d:4242``); the
  part after the first ``:`` is resolved by the remote daemon, so ``<name>:<worker name>``
  works too. Whole ids are tried first, so a local name holding a ``:`` still matches.

Listing without ``local=true`` merges, for each remote daemon, its registration (kind
``daemon``, mode ``remote``, status ``running`` or ``offline`` with ``error``) and the workers
of its own ``GET /api/v1/workers?local=true``, fetched in parallel, each bounded by the
remote client's timeout: an unreachable remote never fails the list. ``DELETE``, ``GET`` and
``logs`` of a remote worker are proxied to its daemon with the stored credential.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import attrs
from klein import Klein
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime

from codebuddy.web.errors import CATALOGUE, ApiError
from codebuddy.web.json import created, json_route, omit_if_default
from codebuddy.web.sse import resume_point
from codebuddy.workers.control import Terminator
from codebuddy.workers.daemon import DaemonControl, DaemonInfo
from codebuddy.workers.logs import DEFAULT_TAIL, LOG_TYPES, MAX_TAIL, LogFollower, read_tail, select_log
from codebuddy.workers.registry import KINDS, LocalWorker, Registry, RemoteRecord, valid_name
from codebuddy.workers.remote import RemoteClient, RemoteError, StreamRelay

__all__ = ["DaemonRoutes", "WorkersRoutes"]

TAGS = ("Workers",)
RunBlocking = Callable[..., Deferred[Any]]
API = "/api/v1"
_NOT_FOUND = ("WORKER_NOT_FOUND",)
_REMOTE = ("WORKER_UNREACHABLE",)
# Seconds listings leave a remote alone after it refused our credentials (401) or our rate (429).
BACKOFF = {401: 900.0, 429: 60.0}


@attrs.frozen
class Worker:
    """A running codebuddy process (local), a remote daemon, or one of its workers (remote)."""

    id: str = attrs.field(metadata={"doc": "pid (local), manual-<hex> (remote daemon), <manualId>:<id> (its workers)"})
    pid: int | None
    name: str | None
    kind: str = attrs.field(metadata={"doc": "interactive | bg | daemon | daemon-worker"})
    status: str = attrs.field(metadata={"doc": "running, offline (remote not answering) or unknown (another host)"})
    mode: str = attrs.field(metadata={"doc": "local or remote"})
    endpoint: str | None
    url: str | None
    cwd: str | None
    session_id: str | None
    started_at: int | None = attrs.field(metadata={"doc": "Milliseconds since the epoch"})
    version: str | None
    hostname: str | None
    log_path: str | None
    current: bool = attrs.field(default=False, metadata={"doc": "True for the daemon answering (on its own list)"})
    via: str | None = attrs.field(default=None, metadata={**omit_if_default(), "doc": "The remote daemon's id"})
    remote_id: str | None = attrs.field(default=None, metadata={**omit_if_default(), "doc": "The id on that daemon"})
    error: str | None = attrs.field(default=None, metadata={**omit_if_default(), "doc": "Why a remote is offline"})


@attrs.frozen
class ListQuery:
    """``kind`` filters by kind; ``local=true`` leaves remote daemons out."""

    kind: str | None = None
    local: bool = False


@attrs.frozen
class LogsQuery:
    """Which log (default: the first of telemetry, process, debug, transcript that exists), how many lines."""

    type: str | None = None
    tail: int = DEFAULT_TAIL
    follow: bool = False


@attrs.frozen
class WorkerLogs:
    """The last ``tail`` lines of one of the worker's logs."""

    content: str
    type: str
    available_types: list[str]
    log_path: str
    offset: int = attrs.field(metadata={"doc": "Byte offset just after content: follow from it with ?after="})


@attrs.frozen
class AddWorkerRequest:
    """A remote codebuddy daemon: base URL, a unique name, and its token or password if it asks for one."""

    url: str
    name: str
    token: str | None = None
    password: str | None = None


@attrs.frozen
class Terminated:
    """What ``DELETE`` did: ``terminated`` (with the last signal needed) or ``removed`` (a registration)."""

    id: str
    pid: int | None
    status: str
    signal: str | None = attrs.field(metadata={"doc": "SIGTERM, SIGKILL, or null when it was already gone"})


def _str(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    return value if isinstance(value, str) else None


def _int(item: dict[str, Any], key: str) -> int | None:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def _check_url(url: str) -> str:
    def bad(message: str) -> ApiError:
        return ApiError("BAD_REQUEST", f"url {message}", [{"field": "url", "message": message}])

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise bad(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise bad("must start with http:// or https://")
    if not parts.hostname:
        raise bad("has no host")
    if parts.username is not None or parts.password is not None:
        raise bad("must not hold credentials: send token or password instead")
    if parts.query or parts.fragment:
        raise bad("must not have a query or fragment")
    if port == 0:
        raise bad("has port 0")
    return url.strip().rstrip("/")


class WorkersRoutes:
    """The workers area's HTTP surface."""

    app = Klein()

    def __init__(
        self,
        registry: Registry,
        remote: RemoteClient,
        terminator: Terminator,
        clock: IReactorTime,
        run_blocking: RunBlocking,
        own_pid: int | None = None,
    ) -> None:
        self.registry = registry
        self.remote = remote
        self.terminator = terminator
        self.clock = clock
        self.run_blocking = run_blocking
        self._own_pid = own_pid
        self._backoff: dict[str, tuple[float, str]] = {}

    @property
    def own_pid(self) -> int:
        """This daemon's pid (read when needed: twistd forks into the background after building the areas)."""
        return os.getpid() if self._own_pid is None else self._own_pid

    # -- rows

    def _local_row(self, worker: LocalWorker) -> Worker:
        r = worker.record
        return Worker(
            id=str(r.pid), pid=r.pid, name=r.name, kind=r.kind, status=worker.status, mode="local",
            endpoint=r.endpoint, url=r.endpoint, cwd=r.cwd, session_id=r.session_id, started_at=r.started_at,
            version=r.version, hostname=r.hostname, log_path=r.log_path, current=r.pid == self.own_pid,
        )

    def _manual_row(self, remote: RemoteRecord, status: str, error: str | None = None) -> Worker:
        return Worker(
            id=remote.id, pid=None, name=remote.name, kind="daemon", status=status, mode="remote",
            endpoint=remote.url, url=remote.url, cwd=None, session_id=None, started_at=None,
            version=None, hostname=None, log_path=None, error=error,
        )

    def _remote_row(self, remote: RemoteRecord, item: dict[str, Any]) -> Worker:
        remote_id = _str(item, "id") or str(_int(item, "pid") or "")
        return Worker(
            id=f"{remote.id}:{remote_id}", pid=_int(item, "pid"), name=_str(item, "name"),
            kind=_str(item, "kind") or "interactive", status=_str(item, "status") or "running", mode="remote",
            endpoint=_str(item, "endpoint"), url=remote.url, cwd=_str(item, "cwd"),
            session_id=_str(item, "sessionId"), started_at=_int(item, "startedAt"),
            version=_str(item, "version"), hostname=_str(item, "hostname"), log_path=_str(item, "logPath"),
            via=remote.id, remote_id=remote_id,
        )

    def _remote_failure(self, remote: RemoteRecord, status: int, body: Any) -> ApiError:
        """The error to answer for a remote daemon's non-2xx answer."""
        error = body.get("error") if isinstance(body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        text = f"remote worker daemon {remote.name!r}: {message or f'HTTP {status}'}"
        # The remote's refusals of *this daemon* (credentials, origin, rate) are not the client's: 502.
        if isinstance(code, str) and code in CATALOGUE and 400 <= status < 500 and status not in (401, 403, 429):
            return ApiError(code, text, error.get("details") if isinstance(error, dict) else None)
        if status == 401:
            text = f"remote worker daemon {remote.name!r} refused the stored credentials ({code or status})"
        elif status in (403, 429):
            text = f"remote worker daemon {remote.name!r} refused the request ({code or status}: {message})"
        return ApiError("WORKER_UNREACHABLE", text, {"status": status, "code": code})

    async def _remote_rows(self, remote: RemoteRecord, ask_now: bool = False) -> list[Worker]:
        """
        The remote daemon's row and its workers' rows. A remote that refused the stored
        credentials (or limited our rate) is not asked again by listings for a while: every
        failed attempt counts against this daemon's address in the remote's login limiter,
        and would lock out the other registrations of that host too. ``ask_now`` asks anyway.
        """
        now = self.clock.seconds()
        until, reason = self._backoff.get(remote.id, (0.0, ""))
        if not ask_now and now < until:
            return [self._manual_row(remote, "offline", f"{reason}; not asked again for {until - now:.0f} s "
                                     f"(GET /api/v1/workers/{remote.id} asks now)")]
        url = f"{remote.url}{API}/workers?local=true"
        try:
            status, body = await self.remote.fetch_json("GET", url, remote.credential)
        except RemoteError as exc:
            return [self._manual_row(remote, "offline", str(exc))]
        data = body.get("data") if isinstance(body, dict) else None
        if status != 200 or not isinstance(data, list):
            failure = self._remote_failure(remote, status, body)
            if status in BACKOFF:
                self._backoff[remote.id] = (self.clock.seconds() + BACKOFF[status], failure.message)
            return [self._manual_row(remote, "offline", failure.message)]
        self._backoff.pop(remote.id, None)
        rows = [self._manual_row(remote, "running")]
        rows.extend(self._remote_row(remote, item) for item in data if isinstance(item, dict))
        return rows

    async def _resolve(self, key: str) -> LocalWorker | RemoteRecord | tuple[RemoteRecord, str]:
        local = await self.run_blocking(self.registry.find_local, key)
        if local is not None:
            return local  # type: ignore[no-any-return]
        remote = await self.run_blocking(self.registry.find_remote, key)
        if remote is not None:
            return remote  # type: ignore[no-any-return]
        head, sep, rest = key.partition(":")
        if sep and rest:
            remote = await self.run_blocking(self.registry.find_remote, head)
            if remote is not None:
                return remote, rest
        raise ApiError("WORKER_NOT_FOUND", f"No worker {key!r} (not a live pid, name or remote worker id)")

    async def _proxy(self, remote: RemoteRecord, method: str, path: str, timeout: float | None = None) -> Any:
        try:
            status, body = await self.remote.fetch_json(method, f"{remote.url}{API}{path}", remote.credential,
                                                        timeout=timeout)
        except RemoteError as exc:
            raise ApiError("WORKER_UNREACHABLE", f"remote worker daemon {remote.name!r} ({remote.url}): {exc}",
                           {"url": remote.url}) from None
        data = body.get("data") if isinstance(body, dict) else None
        if status in BACKOFF:
            self._backoff[remote.id] = (self.clock.seconds() + BACKOFF[status],
                                        self._remote_failure(remote, status, body).message)
        elif 200 <= status < 300:
            self._backoff.pop(remote.id, None)
        if not 200 <= status < 300 or not isinstance(data, dict):
            if 200 <= status < 300:
                raise ApiError("WORKER_UNREACHABLE",
                               f"remote worker daemon {remote.name!r} answered HTTP {status} without data",
                               {"status": status})
            raise self._remote_failure(remote, status, body)
        return data

    # -- routes

    @json_route(app, "GET", "/workers", query=ListQuery, response=list[Worker], tags=TAGS,
                errors=("BAD_REQUEST",), summary="List workers")
    async def list_workers(self, request: Any, query: ListQuery) -> list[Worker]:
        """
        Running codebuddy processes of this machine (stale registry files are pruned) and,
        unless ``local=true``, every remote daemon added with ``POST /workers`` and its workers
        (an unreachable one is listed ``offline``). ``kind`` filters all of them.
        """
        if query.kind is not None and query.kind not in KINDS:
            raise ApiError("BAD_REQUEST", f"kind must be one of {', '.join(KINDS)}",
                           [{"field": "kind", "message": f"invalid value {query.kind!r}"}])
        local = await self.run_blocking(self.registry.local_workers)
        rows = [self._local_row(worker) for worker in local]
        if not query.local:
            remotes = await self.run_blocking(self.registry.remotes)
            results = await DeferredList([Deferred.fromCoroutine(self._remote_rows(r)) for r in remotes],
                                         consumeErrors=True)
            for remote, (ok, value) in zip(remotes, results, strict=True):
                if ok:
                    rows.extend(value)
                else:
                    failure: Any = value
                    rows.append(self._manual_row(remote, "offline", str(failure.value)))
        if query.kind is not None:
            rows = [row for row in rows if row.kind == query.kind]
        return rows

    @json_route(app, "POST", "/workers", body=AddWorkerRequest, response=Worker, status=201, tags=TAGS,
                errors=("BAD_REQUEST", "ALREADY_EXISTS"), max_body=64 * 1024, summary="Add a remote worker")
    async def add_worker(self, request: Any, body: AddWorkerRequest) -> Any:
        """
        Register another codebuddy daemon by its base URL. ``token`` or ``password`` (not both)
        is sent to it as ``Authorization: Bearer``; the file that keeps it is mode 0600. The
        answer says whether it answers now (``running``) or not (``offline``, still added).
        """
        url = _check_url(body.url)
        reason = valid_name(body.name)
        if reason is not None:
            raise ApiError("BAD_REQUEST", f"name {reason}", [{"field": "name", "message": reason}])
        if body.token and body.password:
            raise ApiError("BAD_REQUEST", "give token or password, not both",
                           [{"field": "password", "message": "token is given too"}])
        record = await self.run_blocking(self.registry.add_remote, url, body.name, body.token or None,
                                         body.password or None, int(time.time() * 1000))
        rows = await self._remote_rows(record, ask_now=True)
        return created(rows[0])

    @json_route(app, "GET", "/workers/<worker_id>", response=Worker, tags=TAGS,
                errors=_NOT_FOUND + _REMOTE, summary="Show a worker")
    async def show(self, request: Any, worker_id: str) -> Worker:
        """A worker by pid or name, a remote daemon by id or name, or a remote daemon's worker."""
        found = await self._resolve(worker_id)
        if isinstance(found, LocalWorker):
            return self._local_row(found)
        if isinstance(found, RemoteRecord):
            return (await self._remote_rows(found, ask_now=True))[0]
        remote, rest = found
        data = await self._proxy(remote, "GET", f"/workers/{quote(rest, safe='')}")
        return self._remote_row(remote, data)

    @json_route(app, "DELETE", "/workers/<worker_id>", response=Terminated, tags=TAGS,
                errors=_NOT_FOUND + _REMOTE + ("CONFLICT", "PERMISSION_DENIED"), summary="Terminate a worker")
    async def delete(self, request: Any, worker_id: str) -> Terminated:
        """
        A local worker: SIGTERM to its process group, SIGKILL 5 s later if it is still there;
        answered once it is gone, and its registry file is removed. A remote daemon: its
        registration is removed. A remote daemon's worker: the daemon is asked to terminate it.
        This daemon does not terminate itself here (``POST /daemon/stop`` does).
        """
        found = await self._resolve(worker_id)
        if isinstance(found, RemoteRecord):
            await self.run_blocking(self.registry.remove_remote, found.id)
            return Terminated(found.id, None, "removed", None)
        if isinstance(found, tuple):
            remote, rest = found
            timeout = self.terminator.grace + self.terminator.kill_wait + self.remote.timeout
            data = await self._proxy(remote, "DELETE", f"/workers/{quote(rest, safe='')}", timeout=timeout)
            remote_id = _str(data, "id") or rest
            signal = _str(data, "signal")
            return Terminated(f"{remote.id}:{remote_id}", _int(data, "pid"), _str(data, "status") or "terminated",
                              signal)
        record = found.record
        if record.pid == self.own_pid:
            raise ApiError("CONFLICT", "This is the daemon answering; stop it with POST /api/v1/daemon/stop",
                           {"pid": record.pid})
        if found.status == "unknown":
            raise ApiError("CONFLICT", f"Worker {record.pid} runs on host {record.hostname!r}, not this one",
                           {"hostname": record.hostname})
        signal_sent = await self.terminator.terminate(record.pid)
        await self.run_blocking(self.registry.remove_stale, record)
        return Terminated(str(record.pid), record.pid, "terminated", signal_sent)

    # Not declared stream=True: the JSON answer is the main one, and OpenAPI shows one success body.
    @json_route(app, "GET", "/workers/<worker_id>/logs", query=LogsQuery, response=WorkerLogs,
                tags=TAGS, errors=("BAD_REQUEST",) + _NOT_FOUND + ("WORKER_NO_LOGS",) + _REMOTE,
                summary="Read or follow a worker's logs")
    async def logs(self, request: Any, worker_id: str, query: LogsQuery) -> Any:
        """
        The last ``tail`` lines (default 200) of the worker's ``type`` log (``telemetry``,
        ``process``, ``debug`` or ``transcript``; without ``type``, the first of those that
        exists), with every type it has in ``availableTypes``. ``follow=true`` (or
        ``Accept: text/event-stream``) answers Server-Sent Events instead: ``info``, the tail,
        then what is appended (``data: {"content"}``, ids are byte offsets: ``Last-Event-ID``
        or ``?after=`` resumes).
        """
        if query.type is not None and query.type not in LOG_TYPES:
            raise ApiError("BAD_REQUEST", f"type must be one of {', '.join(LOG_TYPES)}",
                           [{"field": "type", "message": f"invalid value {query.type!r}"}])
        if not 1 <= query.tail <= MAX_TAIL:
            raise ApiError("BAD_REQUEST", f"tail must be between 1 and {MAX_TAIL}",
                           [{"field": "tail", "message": "out of range"}])
        accept = request.getHeader(b"accept") or b""
        follow = (query.follow or b"text/event-stream" in accept.lower()) and request.method != b"HEAD"
        found = await self._resolve(worker_id)
        if isinstance(found, RemoteRecord):
            raise ApiError("WORKER_NO_LOGS", f"{found.id} is a remote daemon's registration; its workers' logs "
                           f"are at /workers/{found.id}:<id>/logs", {"availableTypes": []})
        if isinstance(found, tuple):
            return await self._remote_logs(request, found[0], found[1], query, follow)
        choice = await self.run_blocking(select_log, self.registry.home, found.record, query.type)
        if follow:
            info = {"type": choice.type, "logPath": str(choice.path), "availableTypes": choice.available}
            follower = LogFollower(request, choice.path, self.clock, info)
            after = resume_point(request)
            if after is not None:
                await self._tail(choice.path, 1)  # readable? (answers 403/404 before the stream starts)
                return await follower.start(after)
            tail = await self._tail(choice.path, query.tail)
            return await follower.start(tail.offset, tail.content)
        tail = await self._tail(choice.path, query.tail)
        return WorkerLogs(tail.content, choice.type, choice.available, str(choice.path), tail.offset)

    async def _tail(self, path: Any, lines: int) -> Any:
        try:
            return await self.run_blocking(read_tail, path, lines)
        except FileNotFoundError:
            raise ApiError("WORKER_NO_LOGS", f"The log {path} was removed") from None
        except PermissionError:
            raise ApiError("PERMISSION_DENIED", f"Not allowed to read {path}") from None
        except OSError as exc:
            raise ApiError("WORKER_NO_LOGS", f"Cannot read the log {path}: {exc.strerror or exc}") from None

    async def _remote_logs(self, request: Any, remote: RemoteRecord, rest: str, query: LogsQuery,
                           follow: bool) -> Any:
        params: dict[str, str] = {"tail": str(query.tail)}
        if query.type is not None:
            params["type"] = query.type
        if follow:
            params["follow"] = "true"
        path = f"/workers/{quote(rest, safe='')}/logs?{urlencode(params)}"
        if not follow:
            data = await self._proxy(remote, "GET", path)
            content, log_type = _str(data, "content"), _str(data, "type")
            if content is None or log_type is None:
                raise ApiError("WORKER_UNREACHABLE", f"remote worker daemon {remote.name!r} answered no log content")
            types = data.get("availableTypes")
            return WorkerLogs(content, log_type, [t for t in types if isinstance(t, str)] if isinstance(types, list)
                              else [log_type], _str(data, "logPath") or "", _int(data, "offset") or 0)
        extra = {"Accept": "text/event-stream"}
        after = resume_point(request)
        if after is not None:
            extra["Last-Event-ID"] = str(after)
        try:
            response = await self.remote.open_stream(f"{remote.url}{API}{path}", remote.credential, extra)
        except RemoteError as exc:
            raise ApiError("WORKER_UNREACHABLE", f"remote worker daemon {remote.name!r} ({remote.url}): {exc}",
                           {"url": remote.url}) from None
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if response.code != 200 or not content_type.startswith(b"text/event-stream"):
            try:
                body = await self.remote.read_json(response)
            except RemoteError:
                body = None
            raise self._remote_failure(remote, response.code if response.code != 200 else 502, body)
        return await StreamRelay(request).relay(response)


DAEMON_TAGS = ("Daemon",)


@attrs.frozen
class StartDaemonRequest:
    """Port (default 8080) and interface (default 127.0.0.1; another one turns password auth on)."""

    port: int | None = None
    host: str | None = None


class DaemonRoutes:
    """``/daemon/status``, ``/daemon/start``, ``/daemon/stop``, ``/daemon/restart`` (acp-codebuddy.md §2.13)."""

    app = Klein()

    def __init__(self, control: DaemonControl) -> None:
        self.control = control

    @json_route(app, "GET", "/daemon/status", response=DaemonInfo, tags=DAEMON_TAGS, summary="Daemon status")
    async def status(self, request: Any) -> DaemonInfo:
        """The running daemon (registered worker of kind ``daemon``), or ``{"status": "stopped"}``."""
        return await self.control.status()

    @json_route(app, "POST", "/daemon/start", body=StartDaemonRequest, response=DaemonInfo, tags=DAEMON_TAGS,
                errors=("BAD_REQUEST", "DAEMON_START_FAILED"), max_body=4096, summary="Start the daemon")
    async def start(self, request: Any, body: StartDaemonRequest) -> DaemonInfo:
        """
        Idempotent: a running daemon is answered with ``alreadyRunning: true``. Otherwise a detached
        ``twistd codebuddy`` is started and answered once it answers ``/api/v1/health`` (20 s at most;
        ``DAEMON_START_FAILED`` with the log's tail otherwise, e.g. when the port is in use).
        """
        if body.port is not None and not 0 < body.port < 65536:
            raise ApiError("BAD_REQUEST", "port must be between 1 and 65535",
                           [{"field": "port", "message": "out of range"}])
        host = body.host.strip() if body.host else None
        if host is not None and (host.startswith("-") or any(c.isspace() for c in host)):
            raise ApiError("BAD_REQUEST", "host is not an interface address", [{"field": "host", "message": "invalid"}])
        return await self.control.start(body.port, host)

    @json_route(app, "POST", "/daemon/stop", response=DaemonInfo, tags=DAEMON_TAGS,
                errors=("DAEMON_NOT_RUNNING", "CONFLICT", "PERMISSION_DENIED"), summary="Stop the daemon")
    async def stop(self, request: Any) -> DaemonInfo:
        """
        SIGTERM to the daemon, SIGKILL 5 s later if needed; answered once it is gone. When the daemon
        is the one answering, it answers ``{"status": "stopping"}`` first and then stops.
        """
        return await self.control.stop()

    @json_route(app, "POST", "/daemon/restart", response=DaemonInfo, tags=DAEMON_TAGS,
                errors=("DAEMON_NOT_RUNNING", "CONFLICT", "PERMISSION_DENIED", "DAEMON_START_FAILED"),
                summary="Restart the daemon")
    async def restart(self, request: Any) -> DaemonInfo:
        """
        Stop the daemon and start it again on the same port, host and workspace, answered once the
        new one answers health. A systemd service is restarted by ``systemctl restart`` (a system
        unit only when this daemon runs as root; 409 ``CONFLICT`` with the command otherwise). The
        daemon answering answers ``{"status": "restarting"}`` first; its replacement takes over once
        it has exited (same port; a new pid and ``startedAt``).
        """
        return await self.control.restart()
