"""
Baseline for ``bench/http.py``: the cheapest reasonable twisted.web server.

Serves ``GET /api/v1/health`` with the same JSON document as the codebuddy
daemon, from a plain ``Resource`` tree (``api`` -> ``v1`` -> leaf ``health``)
behind a default ``Site``, on 127.0.0.1 only::

    python bench/baselines/bare_twisted.py PORT [--no-access-log]

Logging is sent to stdout with the same text observer ``twistd -n`` uses, so
the default ``Site`` writes one access-log line per request through the
legacy log, as a twistd application would.  ``--no-access-log`` replaces
``site.log`` with a no-op, to show what that line costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

PLATFORMS = ["generic", "wecom", "wechat-kf"]


class Health(Resource):
    isLeaf = True

    def __init__(self, started: float) -> None:
        super().__init__()
        self._started = started

    def render_GET(self, request: Request) -> bytes:
        body = {
            "data": {
                "status": "ok",
                "uptime": time.monotonic() - self._started,
                "platforms": PLATFORMS,
            }
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body, separators=(",", ":")).encode()


def make_site(access_log: bool = True) -> Site:
    root = Resource()
    api = Resource()
    v1 = Resource()
    root.putChild(b"api", api)
    api.putChild(b"v1", v1)
    v1.putChild(b"health", Health(time.monotonic()))
    site = Site(root)
    if not access_log:
        site.log = lambda request: None  # type: ignore[method-assign]
    return site


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--no-access-log", action="store_true")
    args = parser.parse_args(argv)

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    reactor.listenTCP(args.port, make_site(not args.no_access_log), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
