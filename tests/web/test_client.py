"""The bounded body reads of codebuddy.web.client."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH

from codebuddy.web.client import BodyTooLarge, discard_body, read_body


class Response:
    """Delivers its chunks to the protocol treq gives it, then ends (as a real response does)."""

    length = UNKNOWN_LENGTH

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks
        self.stopped = False

    def deliverBody(self, protocol: Any) -> None:  # noqa: N802 (Twisted's name)
        protocol.makeConnection(self)
        for chunk in self.chunks:
            if self.stopped:
                return
            protocol.dataReceived(chunk)
        protocol.connectionLost(Failure(ResponseDone()))

    def loseConnection(self) -> None:
        self.stopped = True


def result(coroutine: Any) -> Any:
    out: list[Any] = []
    ensureDeferred(coroutine).addBoth(out.append)
    return out[0]


def test_read_body_within_and_past_the_limit() -> None:
    assert result(read_body(Response(b"ab", b"cd"), 4)) == b"abcd"
    failure = result(read_body(Response(b"ab", b"cde"), 4))
    assert isinstance(failure, Failure) and failure.check(BodyTooLarge)
    assert str(failure.value) == "the answer is larger than 4 bytes"
    response = Response(b"x" * 5, b"never read")
    result(read_body(response, 4))
    assert response.stopped  # the connection is dropped at once


@pytest.mark.parametrize("chunks", [(b"x" * 10,), (b"x" * 100_000,)])
def test_discard_body_never_fails(chunks: tuple[bytes, ...]) -> None:
    assert result(discard_body(Response(*chunks))) is None
