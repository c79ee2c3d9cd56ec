"""The remote daemon client: bounded, capped, no redirects, failures as one-line RemoteErrors."""

from __future__ import annotations

from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.static import Data
from twisted.web.util import Redirect

from codebuddy.workers.remote import RemoteClient, RemoteError


class Pumped:
    """StubTreq whose bytes move at once."""

    def __init__(self, resource: Resource) -> None:
        self.stub = StubTreq(resource)
        self.headers: list[Any] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.headers.append(kwargs.get("headers"))
        d = self.stub.request(method, url, **kwargs)
        self.stub.flush()
        return d


def at_x(resource: Resource) -> Resource:
    root = Resource()
    root.putChild(b"x", resource)
    return root


def outcome(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not finished"
    return results[0]


def test_json_answer_and_headers() -> None:
    http = Pumped(at_x(Data(b'{"data": [1]}', "application/json")))
    client = RemoteClient(http, Clock())
    assert outcome(client.fetch_json("GET", "http://r/x", "tok")) == (200, {"data": [1]})
    assert http.headers[0]["Authorization"] == "Bearer tok" and http.headers[0]["X-CodeBuddy-Request"] == "1"
    assert outcome(client.fetch_json("GET", "http://r/x", None)) == (200, {"data": [1]})
    assert "Authorization" not in http.headers[1]


@pytest.mark.parametrize(
    ("resource", "reason"),
    [
        (Data(b"<html>hi</html>", "text/html"), "not JSON"),
        (Data(b"[" + b"1," * 600 + b"1]", "application/json"), "larger than 1000 bytes"),
    ],
)
def test_unusable_answers(resource: Resource, reason: str) -> None:
    client = RemoteClient(Pumped(at_x(resource)), Clock(), max_body=1000)
    failure = outcome(client.fetch_json("GET", "http://r/x", None))
    assert failure.check(RemoteError) and reason in str(failure.value)


def test_redirects_are_not_followed() -> None:
    """A redirect is an answer of its own: the credential never goes to another host."""
    http = Pumped(at_x(Redirect(b"http://elsewhere/steal")))
    failure = outcome(RemoteClient(http, Clock()).fetch_json("GET", "http://r/x", "tok"))
    assert failure.check(RemoteError) and "HTTP 302" in str(failure.value)
    assert len(http.headers) == 1


def test_timeout_and_cancel() -> None:
    """No answer within the bound is a RemoteError naming it; a caller's cancel stays a cancel."""

    class Silent:
        def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
            return Deferred()

    clock = Clock()
    client = RemoteClient(Silent(), clock, timeout=3)
    d = client.fetch_json("GET", "http://r/x", None)
    clock.advance(2.9)
    assert not d.called
    clock.advance(0.1)
    failure = outcome(d)
    assert str(failure.value) == "no answer within 3 s"
    d = client.fetch_json("DELETE", "http://r/x", None, timeout=13)
    clock.advance(12)
    assert not d.called
    d.cancel()
    assert outcome(d).check(Exception) and not clock.getDelayedCalls()
