"""An in-memory API with the filesystem area over a temporary workspace."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from codebuddy.fs.paths import Resolver
from codebuddy.fs.routes import FsRoutes
from codebuddy.fs.search import FileSearch
from codebuddy.fs.transfer import UploadOpener
from codebuddy.fs.watch import WatchService
from codebuddy.web.auth import GatewaySettings, RequestGuard
from tests.helpers import ApiFixture


def run_now(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A synchronous stand-in for deferToThreadPool."""
    return maybeDeferred(fn, *args, **kwargs)


class FsFixture(ApiFixture):
    """ApiFixture with FsRoutes over ``self.workspace`` (a fresh temporary directory)."""

    def __init__(self, settings: GatewaySettings | None = None, max_upload: int = 0, free_space: Any = None):
        self.tmp = Path(tempfile.mkdtemp(prefix="cb-fs-"))
        self.workspace = self.tmp / "ws"
        self.workspace.mkdir()
        self.home = self.tmp / "home"
        self.home.mkdir()

        def areas(guard: RequestGuard, clock: Clock) -> list[Any]:
            resolver = Resolver(self.workspace, self.home)
            self.watches = WatchService(clock)
            self.uploads = UploadOpener(resolver, guard.admits, max_upload, free_space)
            search = FileSearch(run_now, clock=clock)
            self.routes = FsRoutes(resolver, run_now, clock, self.watches, search, self.uploads)
            return [self.routes]

        super().__init__(areas, settings)
        self.site.body_openers = dict(self.v1.body_openers)

    def cleanup(self) -> None:
        for root, dirs, _files in os.walk(self.tmp):
            for name in dirs:
                try:
                    os.chmod(os.path.join(root, name), 0o755)
                except OSError:
                    pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Temporary upload files left anywhere in the tree."""
        return [str(p) for p in self.tmp.rglob("*.upload-*.tmp")]
