"""
Shared fixtures for in-memory API tests: the real resource tree behind StubTreq.

``ApiFixture`` builds what ``codebuddy.tap`` builds (guard, areas, docs, OpenAPI) around a
``Clock`` so that tests control time, and answers requests through ``StubTreq`` so that
handlers see real ``Request`` objects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from codebuddy.web.auth import GatewaySettings, RequestGuard
from codebuddy.web.openapi import DocsResource, OpenAPIResource, build_openapi
from codebuddy.web.root import build_root
from codebuddy.web.server import CodeBuddySite


class ApiFixture:
    """A resource tree with the given areas, a Clock and a StubTreq client."""

    def __init__(
        self,
        areas: list[Any] | Callable[[RequestGuard, Clock], list[Any]],
        settings: GatewaySettings | None = None,
        clock: Clock | None = None,
    ):
        self.clock = clock or Clock()
        self.clock.advance(1_000_000)
        self.guard = RequestGuard(self.clock, settings or GatewaySettings())
        if callable(areas):
            areas = areas(self.guard, self.clock)
        self.root, self.v1 = build_root(self.guard, areas, extra={b"docs": DocsResource()})
        self.openapi = build_openapi([s for s, _a in self.v1.routes], "test", "0")
        self.root.children[b"api"].putChild(b"openapi.json", OpenAPIResource(self.openapi))
        self.treq = StubTreq(self.root)
        # Serve through our Site (bounded bodies, request class) instead of StubTreq's own.
        agent = self.treq._agent
        self.site = CodeBuddySite(self.root, access_log="none", reactor=agent._memoryReactor)
        agent._serverFactory = self.site

    def request(self, method: str, path: str | bytes, **kwargs: Any) -> tuple[Any, bytes]:
        """
        Make a request and return (response, body bytes), flushing until done. A ``bytes``
        path is sent as it is (percent-escapes kept), for non-ASCII query values.
        """
        if isinstance(path, bytes):
            url: str | bytes = b"http://127.0.0.1:8080" + path
        else:
            url = path if path.startswith("http") else "http://127.0.0.1:8080" + path
        d = self.treq.request(method, url, **kwargs)
        self._pump(d)
        response = _result(d)
        body_d = treq.content(response)
        self._pump(body_d)
        return response, _result(body_d)

    def _pump(self, d: Any, rounds: int = 10_000) -> None:
        """Flush the in-memory connection until ``d`` fires (producers write in rounds)."""
        fired: list[bool] = []
        d.addBoth(lambda r: (fired.append(True), r)[1])
        for _ in range(rounds):
            self.treq.flush()
            self.clock.advance(0)
            if fired:
                return

    def json(self, method: str, path: str | bytes, **kwargs: Any) -> tuple[int, Any, Any]:
        """(status, parsed JSON body, response) of a request."""
        response, body = self.request(method, path, **kwargs)
        return response.code, json.loads(body) if body else None, response


def _result(d: Any) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise AssertionError("the request did not complete")
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


class ApiTestCase(SynchronousTestCase):
    """Assertion helpers for envelope responses."""

    def assertError(self, result: tuple[int, Any, Any], status: int, code: str) -> dict[str, Any]:
        actual_status, body, _response = result
        self.assertEqual((actual_status, body["error"]["code"]), (status, code), body)
        self.assertIsInstance(body["error"]["message"], str)
        return body["error"]

    def assertData(self, result: tuple[int, Any, Any], status: int = 200) -> Any:
        actual_status, body, _response = result
        self.assertEqual(actual_status, status, body)
        self.assertIn("data", body)
        return body["data"]
