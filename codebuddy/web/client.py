# -*- test-case-name: tests.web.test_client -*-
"""
Outgoing HTTP shared by the areas that call other servers with treq (remote daemons, plugin
marketplaces): answers read with a size bound. Time bounds are Twisted's own
``Deferred.addTimeout(seconds, clock)`` (a timed-out call fails with ``TimeoutError``).
"""

from __future__ import annotations

from typing import Any

import treq

__all__ = ["BodyTooLarge", "discard_body", "read_body"]


class BodyTooLarge(Exception):
    """An answer was longer than the bound it was read with."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit


async def read_body(response: Any, limit: int) -> bytes:
    """The body of an ``unbuffered`` treq response; :class:`BodyTooLarge` past ``limit`` bytes."""
    body = bytearray()

    def collect(data: bytes) -> None:
        body.extend(data)
        if len(body) > limit:
            raise BodyTooLarge(limit)

    await treq.collect(response, collect)
    return bytes(body)


async def discard_body(response: Any, limit: int = 65536) -> None:
    """Read (at most ``limit`` bytes of) an answer nobody needs, so its connection is released."""
    try:
        await read_body(response, limit)
    except Exception:  # noqa: BLE001 - the status already told what mattered
        pass
