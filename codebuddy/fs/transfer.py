"""
File transfer: streamed downloads with Range, streamed atomic uploads, compose.

Uploads never pass through memory or a spool file. When the request line and headers of
``POST /api/v1/files/upload`` have arrived, :class:`UploadOpener` (registered with the
Site) checks the caller and the destination and makes an :class:`UploadSink` the
request's body: each chunk is written (after gzip decoding and multipart parsing, both
incremental) straight into a temporary file beside its destination. The route commits
(fsync, rename) once the body is complete; an interrupted, oversized or failed upload
removes its temporary files and leaves any old file untouched.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import re
import secrets
import stat
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web import http
from werkzeug.sansio.multipart import Data, Epilogue, File, MultipartDecoder, NeedData
from zope.interface import implementer

from codebuddy.fs.entries import EntryInfo, entry_info
from codebuddy.fs.paths import Resolver, os_error
from codebuddy.web.errors import ApiError
from codebuddy.web.json import RESPONSE_WRITTEN
from codebuddy.web.server import StreamedBody

CHUNK = 1024 * 1024
DIR_MODE = 0o755
FILE_MODE = 0o666


def _directory_error(path: str) -> ApiError:
    return ApiError("PATH_NOT_DIRECTORY", f"Path is a directory, not a file: {path}")


# --------------------------------------------------------------------------- download


@implementer(IPushProducer)
class FileSender:
    """
    Streams ``length`` bytes of ``handle`` from ``offset`` to ``request``, 1 MiB per reactor
    turn, as a push producer: the transport pauses it while its buffer is full, so memory
    stays flat whatever the file size and however slow the client.
    """

    def __init__(self, request: Any, handle: Any, offset: int, length: int, clock: IReactorTime):
        self.request = request
        self.handle = handle
        self.remaining = length
        self.clock = clock
        self.paused = False
        self.done: Deferred[Any] = Deferred()
        self._call: Any = None
        handle.seek(offset)

    def start(self) -> Deferred[Any]:
        transport = getattr(getattr(self.request, "channel", None), "transport", None)
        if getattr(transport, "SEND_LIMIT", CHUNK) < CHUNK:
            # Twisted sends at most 128 KiB per send(2); let a download hand the kernel
            # a whole chunk at once (on this connection only).
            transport.SEND_LIMIT = CHUNK  # type: ignore[union-attr]
        self.request.registerProducer(self, True)
        self._schedule()
        return self.done

    def _schedule(self) -> None:
        if self._call is None and not self.paused and self.handle is not None:
            self._call = self.clock.callLater(0, self._send)

    def _send(self) -> None:
        self._call = None
        if self.handle is None or self.paused:
            return
        data = self.handle.read(min(CHUNK, self.remaining)) if self.remaining > 0 else b""
        if not data:
            self._finish()
            return
        self.remaining -= len(data)
        self.request.write(data)
        if self.remaining <= 0:
            self._finish()
        else:
            self._schedule()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        # The transport's buffer is empty: refill it now rather than a reactor turn later.
        self.paused = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._send()

    def stopProducing(self) -> None:
        self._close()
        if not self.done.called:
            self.done.callback(RESPONSE_WRITTEN)

    def _finish(self) -> None:
        self._close()
        if getattr(self.request, "producer", None) is self:
            self.request.unregisterProducer()
        if not self.done.called:
            self.done.callback(RESPONSE_WRITTEN)

    def _close(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self.handle is not None:
            self.handle.close()
            self.handle = None


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """
    ``(start, end_inclusive)`` of a single ``Range: bytes=`` header, ``None`` to send the
    whole file (no header, several ranges, or another unit). Raises 416 when unsatisfiable.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        count = int(last)
        if count == 0:
            raise _unsatisfiable(size)
        return max(size - count, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise _unsatisfiable(size)
    return start, min(end, size - 1)


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(
        "RANGE_NOT_SATISFIABLE",
        f"Requested range not satisfiable (file size {size})",
        headers={"Content-Range": f"bytes */{size}"},
    )


def content_disposition(name: str) -> str:
    """``inline; filename="x"`` with an RFC 5987 ``filename*`` for non-ASCII names."""
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
    value = f'inline; filename="{ascii_name}"'
    if ascii_name != name:
        value += f"; filename*=UTF-8''{quote(name, safe='', errors='surrogateescape')}"
    return value


def content_type(name: str) -> str:
    guessed, _encoding = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def serve_file(request: Any, path: str, clock: IReactorTime) -> Deferred[Any] | Any:
    """Answer ``request`` with the file at ``path`` (HEAD, Range); returns when written."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang the reactor (it is refused below).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise (os_error(exc, path) or exc) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _directory_error(path)
        if not stat.S_ISREG(st.st_mode):
            raise ApiError("BAD_REQUEST", f"Not a regular file: {path}")
        size = st.st_size
        span = None
        if _if_range_holds(request, st.st_mtime):
            span = parse_range(_header(request, b"range"), size)
    except BaseException:
        os.close(fd)
        raise
    handle = os.fdopen(fd, "rb", buffering=0)
    name = os.path.basename(path)
    request.setHeader(b"content-type", content_type(name).encode())
    request.setHeader(b"content-disposition", content_disposition(name).encode("latin-1"))
    request.setHeader(b"accept-ranges", b"bytes")
    request.setHeader(b"cache-control", b"no-cache")
    if request.setLastModified(st.st_mtime) == http.CACHED and span is None:
        handle.close()
        return RESPONSE_WRITTEN  # 304 Not Modified (If-Modified-Since)
    if span is None:
        start, length = 0, size
        request.setResponseCode(200)
    else:
        start, length = span[0], span[1] - span[0] + 1
        request.setResponseCode(206)
        request.setHeader(b"content-range", f"bytes {span[0]}-{span[1]}/{size}".encode())
    request.setHeader(b"content-length", str(length).encode())
    if request.method == b"HEAD":
        handle.close()
        return RESPONSE_WRITTEN
    return FileSender(request, handle, start, length, clock).start()


def _if_range_holds(request: Any, mtime: float) -> bool:
    """``If-Range``: resume only if the client's validator is our Last-Modified date."""
    value = _header(request, b"if-range")
    if value is None:
        return True
    return value.strip() == http.datetimeToString(int(mtime)).decode()


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


# --------------------------------------------------------------------------- upload


class _Target:
    """One destination of an upload: its temporary file until committed."""

    def __init__(self, destination: str):
        self.destination = destination
        directory, name = os.path.split(destination)
        self.temp = os.path.join(directory, f".{name}.upload-{secrets.token_hex(6)}.tmp")
        self.fd: int | None = None

    def open(self) -> None:
        directory = os.path.dirname(self.destination)
        if os.path.isdir(self.destination):
            raise _directory_error(self.destination)
        try:
            os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
        except FileExistsError:
            raise ApiError("PATH_NOT_DIRECTORY", f"A parent of {self.destination} is not a directory") from None
        except NotADirectoryError:
            raise ApiError("PATH_NOT_DIRECTORY", f"A parent of {self.destination} is not a directory") from None
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def commit(self, durable: bool = True) -> None:
        """fsync (unless not ``durable``), keep the old file's permissions, rename over the destination."""
        assert self.fd is not None
        try:
            old = os.stat(self.destination)
        except OSError:
            old = None
        if old is not None and stat.S_ISREG(old.st_mode):
            os.fchmod(self.fd, old.st_mode & 0o7777)
        if durable:
            os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        os.replace(self.temp, self.destination)

    def discard(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        try:
            os.unlink(self.temp)
        except OSError:
            pass


class UploadSink(StreamedBody):
    """
    The body of an upload request (used by twisted.web as ``request.content``).

    Octet-stream bodies go to one destination; multipart bodies to one destination per
    ``file`` part (the ``?path=`` or the part's filename). An error stops writing, keeps
    counting, and is answered by the route once the body is complete.
    """

    log = Logger()

    def __init__(
        self,
        resolver: Resolver,
        path: str | None,
        media_type: str,
        boundary: bytes | None,
        gzip: bool,
        max_bytes: int = 0,
        durable: bool = True,
    ):
        self.resolver = resolver
        self.durable = durable
        self.path = path
        self.multipart = media_type == "multipart/form-data"
        self.decoder = MultipartDecoder(boundary) if self.multipart and boundary else None
        self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        self.max_bytes = max_bytes
        self.written = 0
        self.targets: list[_Target] = []
        self.current: _Target | None = None
        self.error: ApiError | None = None
        self.state = "receiving"  # receiving -> committing -> committed | aborted
        self._ended = False
        if not self.multipart:
            self._start_target(path)

    # -- the file-like interface twisted.web uses

    def consume(self, data: bytes) -> None:
        if self.error is not None or self.state != "receiving":
            return
        try:
            if self.inflater is not None:
                data = self.inflater.decompress(data)
            self._consume(data)
        except ApiError as exc:
            self._fail(exc)
        except zlib.error as exc:
            self._fail(ApiError("BAD_REQUEST", f"Invalid gzip body: {exc}"))
        except OSError as exc:
            self._fail(os_error(exc, self.current.destination if self.current else None) or _io_error(exc))

    def close(self) -> None:
        """The request is over (answered, or the connection was lost): drop what is not committed."""
        if self.state == "receiving":
            self.abort()

    # -- body handling

    def _consume(self, data: bytes) -> None:
        if self.decoder is None:
            if self.multipart:
                raise ApiError("BAD_REQUEST", "multipart/form-data without a boundary")
            self._write(data)
            return
        self.decoder.receive_data(data)
        self._drain_decoder()

    def _drain_decoder(self) -> None:
        assert self.decoder is not None
        while True:
            try:
                event = self.decoder.next_event()
            except ValueError as exc:
                raise ApiError("BAD_REQUEST", f"Malformed multipart body: {exc}") from None
            if isinstance(event, NeedData):
                return
            if isinstance(event, File) and event.name == "file":
                destination = self.path or event.filename
                if not destination:
                    raise ApiError("PATH_REQUIRED", "A file part has no filename and no ?path= was given")
                self._start_target(destination)
            elif isinstance(event, Data):
                if self.current is not None:
                    self._write(event.data)
                    if not event.more_data:
                        self.current = None
            elif isinstance(event, Epilogue):
                self._ended = True
                return
            else:
                self.current = None

    def _start_target(self, path: str | None) -> None:
        destination = self.resolver.resolve(path)
        if any(t.destination == destination for t in self.targets):
            raise ApiError("BAD_REQUEST", f"Several files in one upload go to the same path: {destination}")
        target = _Target(destination)
        try:
            target.open()
        except OSError as exc:
            raise os_error(exc, destination) or _io_error(exc) from None
        self.targets.append(target)
        self.current = target

    def _write(self, data: bytes) -> None:
        if not data:
            return
        self.written += len(data)
        if self.max_bytes and self.written > self.max_bytes:
            raise ApiError("PAYLOAD_TOO_LARGE", f"Upload exceeds the limit of {self.max_bytes} bytes")
        assert self.current is not None
        self.current.write(data)

    def _fail(self, error: ApiError) -> None:
        self.error = error
        self._discard_all()

    # -- end of body

    def complete(self) -> None:
        """The whole body arrived: check it is well-formed; raises the upload's error."""
        if self.error is None:
            try:
                if self.inflater is not None:
                    tail = self.inflater.flush()
                    if not self.inflater.eof:
                        raise ApiError("BAD_REQUEST", "Truncated gzip body")
                    self._consume(tail)
                if self.decoder is not None:
                    self.decoder.receive_data(None)
                    self._drain_decoder()
                    if not self._ended:
                        raise ApiError("BAD_REQUEST", "Truncated multipart body")
                if not self.targets:
                    raise ApiError("BAD_REQUEST", "The multipart body has no part named 'file'")
            except ApiError as exc:
                self._fail(exc)
            except zlib.error as exc:
                self._fail(ApiError("BAD_REQUEST", f"Invalid gzip body: {exc}"))
            except OSError as exc:
                self._fail(os_error(exc) or _io_error(exc))
        if self.error is not None:
            raise self.error
        self.state = "committing"

    def commit(self) -> list[EntryInfo]:
        """fsync and rename every temporary file (runs in a thread); the entries written."""
        try:
            for target in self.targets:
                target.commit(self.durable)
        except OSError as exc:
            self._discard_all()
            self.state = "aborted"
            raise (os_error(exc) or _io_error(exc)) from None
        self.state = "committed"
        return [entry_info(t.destination) for t in self.targets]

    def abort(self) -> None:
        self.state = "aborted"
        self._discard_all()

    def _discard_all(self) -> None:
        for target in self.targets:
            target.discard()
        self.current = None


def _io_error(exc: OSError) -> ApiError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError("INSUFFICIENT_STORAGE", "Not enough disk space available")
    return ApiError("INTERNAL_ERROR", f"I/O error: {exc.strerror or exc}")


def parse_content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``multipart/form-data; boundary=x`` -> ``("multipart/form-data", {"boundary": "x"})``."""
    if not value:
        return "", {}
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        key, sep, val = part.strip().partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"')
    return media.strip().lower(), params


class UploadOpener:
    """
    Chooses the body sink of an upload request once its headers have arrived.

    Returns ``None`` (the Site's default bounded body) when the caller may not upload
    (the route then answers 401/403) or when the request is not one we stream.
    """

    def __init__(
        self,
        resolver: Resolver,
        allowed: Callable[[Any], bool],
        max_bytes: int = 0,
        free_space: Callable[[str], int] | None = None,
        durable: bool = True,
    ):
        self.resolver = resolver
        self.allowed = allowed
        self.max_bytes = max_bytes
        self.durable = durable
        self.free_space = free_space or _free_space

    def open_body(self, request: Any, uri: bytes, length: int | None) -> Any:
        _path, _, query = uri.partition(b"?")
        request.args = http.parse_qs(query, 1)
        if not self.allowed(request):
            return None
        path_values = request.args.get(b"path")
        path = path_values[0].decode("utf-8", "surrogateescape") if path_values else None
        media, params = parse_content_type(_header(request, b"content-type"))
        encoding = (_header(request, b"content-encoding") or "identity").strip().lower()
        sink_error: ApiError | None = None
        if media not in ("application/octet-stream", "multipart/form-data"):
            sink_error = ApiError(
                "UNSUPPORTED_MEDIA_TYPE",
                "Upload with Content-Type application/octet-stream or multipart/form-data",
            )
        elif encoding not in ("identity", "gzip", "x-gzip"):
            sink_error = ApiError("BAD_REQUEST", f"Unsupported Content-Encoding {encoding!r} (use gzip or none)")
        elif self.max_bytes and length is not None and length > self.max_bytes and encoding == "identity":
            sink_error = ApiError("PAYLOAD_TOO_LARGE", f"Upload exceeds the limit of {self.max_bytes} bytes")
        if sink_error is None:
            try:
                sink = UploadSink(
                    self.resolver,
                    path,
                    media,
                    params.get("boundary", "").encode("latin-1") or None,
                    gzip=encoding in ("gzip", "x-gzip"),
                    max_bytes=self.max_bytes,
                    durable=self.durable,
                )
            except ApiError as exc:
                sink_error = exc
            else:
                if length and sink.targets and self.free_space(sink.targets[0].destination) < length:
                    sink._fail(ApiError("INSUFFICIENT_STORAGE", "Not enough disk space available for this upload"))
                return sink
        return FailedBody(sink_error)


class FailedBody(StreamedBody):
    """A body that is refused before it arrives: counted and dropped, answered with ``error``."""

    def __init__(self, error: ApiError):
        self.error = error


def _free_space(path: str) -> int:
    directory = os.path.dirname(path)
    while directory and not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    try:
        st = os.statvfs(directory or "/")
    except OSError:
        return 2**63
    return st.f_bavail * st.f_frsize


# --------------------------------------------------------------------------- compose


def compose(sources: list[str], destination: str, keep_sources: bool = False) -> EntryInfo:
    """
    Concatenate ``sources`` into ``destination`` atomically (kernel copy, temp file, rename),
    then delete the sources unless ``keep_sources`` (E2B envd deletes them).
    """
    if not sources:
        raise ApiError("BAD_REQUEST", "sourcePaths must not be empty", [{"field": "sourcePaths", "message": "empty"}])
    for source in sources:
        if source == destination:
            raise ApiError("BAD_REQUEST", f"A source is the destination: {source}")
        try:
            st = os.stat(source)
        except OSError as exc:
            raise (os_error(exc, source) or _io_error(exc)) from None
        if not stat.S_ISREG(st.st_mode):
            raise ApiError("BAD_REQUEST", f"Not a regular file: {source}")
    target = _Target(destination)
    try:
        target.open()
        assert target.fd is not None
        for source in sources:
            with open(source, "rb") as handle:
                _copy_all(handle.fileno(), target.fd)
        target.commit()
    except OSError as exc:
        target.discard()
        raise (os_error(exc, destination) or _io_error(exc)) from None
    except BaseException:
        target.discard()
        raise
    if not keep_sources:
        for source in sources:
            try:
                os.unlink(source)
            except OSError:
                pass
    return entry_info(destination)


def _copy_all(src: int, dst: int) -> None:
    while True:
        try:
            copied = os.copy_file_range(src, dst, 1 << 30)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            break
        if copied == 0:
            return
    while chunk := os.read(src, CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
