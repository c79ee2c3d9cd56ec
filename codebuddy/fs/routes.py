"""
Filesystem endpoints: ``/fs/*`` (E2B ``filesystem.proto``) and ``/files/*`` (envd's HTTP API).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from codebuddy.fs import ops
from codebuddy.fs.entries import EntryInfo
from codebuddy.fs.paths import Resolver
from codebuddy.fs.search import ContentResults, FileSearch, SearchItem
from codebuddy.fs.transfer import FailedBody, UploadOpener, UploadSink, compose, serve_file
from codebuddy.fs.watch import FsEvent, WatcherEvents, WatchService
from codebuddy.web.errors import ApiError
from codebuddy.web.json import NO_CONTENT, Empty, Encoded, also_as, json_route
from codebuddy.web.sse import serve_log

TAGS = ("Filesystem",)
RunBlocking = Callable[..., Deferred[Any]]


@attrs.frozen
class PathRequest:
    """A path: absolute, ``~/...``, or relative to the workspace."""

    path: str | None = None


@attrs.frozen
class ListRequest:
    """A directory and how many levels to list (0 counts as 1)."""

    path: str | None = None
    depth: int = 1


@attrs.frozen
class MoveRequest:
    """Rename ``source`` to ``destination`` (parents created)."""

    source: str | None = None
    destination: str | None = None


@attrs.frozen
class ComposeRequest:
    """Concatenate ``sourcePaths`` into ``destination`` (sources deleted unless ``keepSources``)."""

    source_paths: list[str] = attrs.field(factory=list, metadata=also_as("source_paths"))
    destination: str | None = None
    keep_sources: bool = attrs.field(default=False, metadata=also_as("keep_sources"))


@attrs.frozen
class WatchRequest:
    """A directory to watch (E2B ``WatchDirRequest``)."""

    path: str | None = None
    recursive: bool = False
    include_entry: bool = attrs.field(default=True, metadata=also_as("include_entry"))
    allow_network_mounts: bool = attrs.field(default=False, metadata=also_as("allow_network_mounts"))


@attrs.frozen
class WatcherRequest:
    """A polling watcher's id."""

    watcher_id: str | None = attrs.field(default=None, metadata=also_as("watcher_id"))


@attrs.frozen
class EntryResult:
    """One entry (E2B ``StatResponse``/``MakeDirResponse``/``MoveResponse``)."""

    entry: EntryInfo


@attrs.frozen
class EntriesResult:
    """Directory entries (E2B ``ListDirResponse``)."""

    entries: list[EntryInfo]


@attrs.frozen
class WatcherCreated:
    """The new watcher's id."""

    watcher_id: str


@attrs.frozen
class PathQuery:
    """The ``path`` query parameter."""

    path: str | None = None


@attrs.frozen
class SearchQuery:
    """Fuzzy file search over ``path`` (default: the workspace)."""

    query: str | None = None
    limit: int = 50
    path: str | None = None


@attrs.frozen
class SearchResults:
    """Fuzzy search results, best first."""

    items: list[SearchItem]


@attrs.frozen
class ContentSearchRequest:
    """A ripgrep content search (what the Web UI's search view sends)."""

    query: str | None = None
    cwd: str | None = None
    is_regex: bool = False
    case_sensitive: bool = False
    whole_word: bool = False
    include_glob: str | None = None
    exclude_glob: str | None = None
    max_results: int = 200


class FsRoutes:
    """The filesystem area's HTTP surface."""

    app = Klein()

    def __init__(
        self,
        resolver: Resolver,
        run_blocking: RunBlocking,
        clock: IReactorTime,
        watches: WatchService,
        search: FileSearch,
        uploads: UploadOpener,
    ):
        self.resolver = resolver
        self.run_blocking = run_blocking
        self.clock = clock
        self.watches = watches
        self.search = search
        self.uploads = uploads
        self.body_openers = {("POST", "/files/upload"): uploads}

    # -- filesystem.proto

    @json_route(app, "POST", "/fs/stat", body=PathRequest, response=EntryResult, tags=TAGS,
                errors=("PATH_REQUIRED", "NOT_FOUND", "PERMISSION_DENIED"), summary="File or directory info")
    def stat(self, request: Any, body: PathRequest) -> Deferred[EntryResult]:
        """The entry at ``path`` (``lstat``: a link is described, with its target's type)."""
        path = self.resolver.resolve(body.path)
        return self.run_blocking(ops.stat_path, path).addCallback(EntryResult)

    @json_route(app, "POST", "/fs/list", body=ListRequest, response=EntriesResult, tags=TAGS,
                errors=("PATH_REQUIRED", "NOT_FOUND", "PATH_NOT_DIRECTORY", "PERMISSION_DENIED"),
                summary="List a directory")
    def list_dir(self, request: Any, body: ListRequest) -> Deferred[Any]:
        """Entries down to ``depth`` levels (default 1); symlinked directories are not entered."""
        path = self.resolver.resolve(body.path)
        if body.depth < 0:
            raise ApiError("BAD_REQUEST", "depth must not be negative", [{"field": "depth", "message": "negative"}])

        # Walked and encoded in a thread: a 100k-entry listing never holds up the reactor.
        return self.run_blocking(ops.list_dir_json, path, body.depth).addCallback(Encoded)

    @json_route(app, "POST", "/fs/mkdir", body=PathRequest, response=EntryResult, tags=TAGS,
                errors=("PATH_REQUIRED", "ALREADY_EXISTS", "PATH_NOT_DIRECTORY", "PERMISSION_DENIED"),
                summary="Create a directory (and its parents)")
    def make_dir(self, request: Any, body: PathRequest) -> Deferred[EntryResult]:
        """Create ``path`` like ``mkdir -p``; an existing directory is 409 ``ALREADY_EXISTS``."""
        path = self.resolver.resolve(body.path)
        return self.run_blocking(ops.make_dir, path).addCallback(EntryResult)

    @json_route(app, "POST", "/fs/remove", body=PathRequest, response=Empty, tags=TAGS,
                errors=("PATH_REQUIRED", "PERMISSION_DENIED"), summary="Remove a file or a tree")
    def remove(self, request: Any, body: PathRequest) -> Deferred[Empty]:
        """Remove a file, link or directory tree; a missing path is not an error."""
        path = self.resolver.resolve(body.path)
        return self.run_blocking(ops.remove, path).addCallback(lambda _: Empty())

    @json_route(app, "POST", "/fs/move", body=MoveRequest, response=EntryResult, tags=TAGS,
                errors=("PATH_REQUIRED", "NOT_FOUND", "PATH_NOT_DIRECTORY", "PERMISSION_DENIED", "CONFLICT"),
                summary="Move or rename")
    def move(self, request: Any, body: MoveRequest) -> Deferred[EntryResult]:
        """Rename ``source`` to ``destination``; answers the destination's entry."""
        source = self.resolver.resolve(body.source, "source")
        destination = self.resolver.resolve(body.destination, "destination")
        return self.run_blocking(ops.move, source, destination).addCallback(EntryResult)

    # -- watching

    @json_route(app, "POST", "/fs/watch", body=WatchRequest, stream=True, tags=TAGS,
                errors=("PATH_REQUIRED", "NOT_FOUND", "PATH_NOT_DIRECTORY", "WATCH_LIMIT_REACHED", "BAD_REQUEST",
                        "PERMISSION_DENIED"),
                summary="Watch a directory (SSE)")
    def watch(self, request: Any, body: WatchRequest) -> Deferred[Any]:
        """A ``start`` event, then one ``event: fs_event`` per change (create, write, remove, rename, chmod)."""
        path = self.resolver.resolve(body.path)
        stream = self.watches.open_stream(path, body.recursive, body.include_entry, body.allow_network_mounts)

        def release(result: Any) -> Any:
            stream.close()
            return result

        return serve_log(request, stream.log, self.clock, from_start=True).addBoth(release)

    @json_route(app, "POST", "/fs/watcher/create", body=WatchRequest, response=WatcherCreated, tags=TAGS,
                errors=("PATH_REQUIRED", "NOT_FOUND", "PATH_NOT_DIRECTORY", "WATCH_LIMIT_REACHED", "BAD_REQUEST",
                        "PERMISSION_DENIED"),
                summary="Create a polling watcher")
    def create_watcher(self, request: Any, body: WatchRequest) -> WatcherCreated:
        """A watcher whose events are fetched with ``fs/watcher/events`` (removed after 10 idle minutes)."""
        path = self.resolver.resolve(body.path)
        return WatcherCreated(
            self.watches.create_watcher(path, body.recursive, body.include_entry, body.allow_network_mounts)
        )

    @json_route(app, "POST", "/fs/watcher/events", body=WatcherRequest, response=WatcherEvents, tags=TAGS,
                errors=("NOT_FOUND",), summary="Get a watcher's events")
    def watcher_events(self, request: Any, body: WatcherRequest) -> WatcherEvents:
        """The events since the last call (and how many were dropped from the bounded queue)."""
        return self.watches.watcher_events(_watcher_id(body))

    @json_route(app, "POST", "/fs/watcher/remove", body=WatcherRequest, response=Empty, tags=TAGS,
                errors=("NOT_FOUND",), summary="Remove a watcher")
    def remove_watcher(self, request: Any, body: WatcherRequest) -> Empty:
        """Stop a polling watcher."""
        self.watches.remove_watcher(_watcher_id(body))
        return Empty()

    # -- search

    @json_route(app, "GET", "/fs/search", query=SearchQuery, response=SearchResults, top_level=True, tags=TAGS,
                errors=("NOT_FOUND", "PATH_NOT_DIRECTORY", "PERMISSION_DENIED", "BAD_REQUEST"),
                summary="Fuzzy file search")
    def fuzzy_search(self, request: Any, query: SearchQuery) -> Deferred[SearchResults]:
        """fzf-style search over file and directory paths (ripgrep lists them, honouring .gitignore)."""
        root = self.resolver.resolve(query.path) if query.path else self.resolver.workspace
        limit = min(max(query.limit, 1), 1000)
        return self.search.search(root, query.query, limit).addCallback(SearchResults)

    @json_route(app, "POST", "/fs/search-content", body=ContentSearchRequest, response=ContentResults,
                top_level=True, tags=TAGS,
                errors=("NOT_FOUND", "PATH_NOT_DIRECTORY", "PERMISSION_DENIED", "BAD_REQUEST"),
                summary="Search file contents (ripgrep)")
    def search_content(self, request: Any, body: ContentSearchRequest) -> Deferred[ContentResults]:
        """Matching lines with their absolute path, line and column."""
        if not body.query:
            raise ApiError("BAD_REQUEST", "query is required", [{"field": "query", "message": "required"}])
        root = self.resolver.resolve(body.cwd) if body.cwd else self.resolver.workspace
        return self.search.search_content(
            root,
            body.query,
            is_regex=body.is_regex,
            case_sensitive=body.case_sensitive,
            whole_word=body.whole_word,
            include_glob=body.include_glob,
            exclude_glob=body.exclude_glob,
            max_results=min(max(body.max_results, 1), 10_000),
        )

    # -- envd's HTTP file API

    @json_route(app, "GET", "/files/download", query=PathQuery, tags=TAGS, content_type="application/octet-stream",
                errors=("PATH_REQUIRED", "NOT_FOUND", "PATH_NOT_DIRECTORY", "RANGE_NOT_SATISFIABLE",
                        "PERMISSION_DENIED"),
                summary="Download a file")
    def download(self, request: Any, query: PathQuery) -> Any:
        """The file's bytes, streamed; ``HEAD`` and single ``Range`` requests (206/416) supported."""
        return serve_file(request, self.resolver.resolve(query.path), self.clock)

    @json_route(app, "POST", "/files/upload", query=PathQuery, response=list[EntryInfo], tags=TAGS,
                errors=("PATH_REQUIRED", "PATH_NOT_DIRECTORY", "INSUFFICIENT_STORAGE", "PAYLOAD_TOO_LARGE",
                        "UNSUPPORTED_MEDIA_TYPE", "PERMISSION_DENIED"),
                summary="Upload files")
    def upload(self, request: Any, query: PathQuery) -> Deferred[list[EntryInfo]]:
        """
        ``application/octet-stream`` to ``?path=``, or ``multipart/form-data`` parts named ``file``
        (to ``?path=`` or each part's filename); ``Content-Encoding: gzip`` accepted. Written to
        a temporary file beside the destination and renamed when complete.
        """
        sink = request.content
        if isinstance(sink, FailedBody):
            raise sink.error
        if not isinstance(sink, UploadSink):
            raise ApiError("BAD_REQUEST", "The upload body could not be received")
        sink.complete()
        return self.run_blocking(sink.commit)

    @json_route(app, "POST", "/files/compose", body=ComposeRequest, response=EntryInfo, tags=TAGS,
                errors=("PATH_REQUIRED", "NOT_FOUND", "INSUFFICIENT_STORAGE", "PATH_NOT_DIRECTORY"),
                summary="Concatenate files")
    def compose(self, request: Any, body: ComposeRequest) -> Deferred[EntryInfo]:
        """Concatenate ``sourcePaths`` into ``destination`` (atomic; sources removed unless ``keepSources``)."""
        sources = [self.resolver.resolve(p, "sourcePaths") for p in body.source_paths]
        destination = self.resolver.resolve(body.destination, "destination")
        return self.run_blocking(compose, sources, destination, body.keep_sources)


def _watcher_id(body: WatcherRequest) -> str:
    if not body.watcher_id:
        raise ApiError("BAD_REQUEST", "watcherId is required", [{"field": "watcherId", "message": "required"}])
    return body.watcher_id


__all__ = ["FsEvent", "FsRoutes", "NO_CONTENT"]
