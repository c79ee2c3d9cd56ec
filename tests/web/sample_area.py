"""A small area used by the web-core tests: one route of every kind."""

from __future__ import annotations

from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred, succeed

from codebuddy.web.errors import ApiError
from codebuddy.web.json import NO_CONTENT, accepted, created, json_route


@attrs.frozen
class Item:
    """An item."""

    item_id: str
    size_bytes: int = 0


@attrs.frozen
class NewItem:
    """What a client sends to create an item."""

    item_id: str
    size_bytes: int = 0
    tags: list[str] = attrs.Factory(list)


@attrs.frozen
class ItemQuery:
    """Listing filters."""

    limit: int = 10
    verbose: bool = False
    prefix: str | None = None


class SampleRoutes:
    """Routes covering the wrapper's behaviours."""

    app = Klein()

    def __init__(self) -> None:
        self.items: dict[str, Item] = {}
        self.pending: Deferred[Any] | None = None
        self.cancelled = False

    @json_route(app, "GET", "/items", query=ItemQuery, response=list[Item], tags=("Sample",))
    def list_items(self, request: Any, query: ItemQuery) -> Any:
        """List items."""
        names = sorted(self.items)
        if query.prefix:
            names = [n for n in names if n.startswith(query.prefix)]
        return {"items": [self.items[n] for n in names[: query.limit]], "verbose": query.verbose}

    @json_route(app, "POST", "/items", body=NewItem, response=Item, status=201, errors=("ALREADY_EXISTS",))
    def create_item(self, request: Any, body: NewItem) -> Item:
        """Create an item."""
        if body.item_id in self.items:
            raise ApiError("ALREADY_EXISTS", f"item {body.item_id} exists")
        item = self.items[body.item_id] = Item(body.item_id, body.size_bytes)
        return item

    @json_route(app, "GET", "/items/<item_id>", response=Item, errors=("NOT_FOUND",))
    def get_item(self, request: Any, item_id: str) -> Item:
        """One item."""
        try:
            return self.items[item_id]
        except KeyError:
            raise ApiError("NOT_FOUND", f"no item {item_id}") from None

    @json_route(app, "DELETE", "/items/<item_id>")
    def delete_item(self, request: Any, item_id: str) -> Any:
        """Delete an item (204)."""
        self.items.pop(item_id, None)
        return NO_CONTENT

    @json_route(app, "POST", "/items/<item_id>/touch")
    async def touch_item(self, request: Any, item_id: str) -> Any:
        """An async handler answering 202."""
        value = await succeed(item_id)
        return accepted({"touched": value})

    @json_route(app, "POST", "/made", public=True)
    def make(self, request: Any) -> Any:
        """A public route answering 201."""
        return created({"made": True})

    @json_route(app, "GET", "/slow")
    def slow(self, request: Any) -> Any:
        """A route that waits for the test to fire ``self.pending``."""
        self.pending = Deferred(lambda _d: setattr(self, "cancelled", True))
        return self.pending

    @json_route(app, "GET", "/boom", public=True)
    def boom(self, request: Any) -> Any:
        """An unexpected exception."""
        raise RuntimeError("secret internal detail")

    @json_route(app, "GET", "/boom/<n>", public=True)
    async def boom_later(self, request: Any, n: str) -> Any:
        """An unexpected exception in an async handler."""
        raise RuntimeError("secret internal detail " + n)

    @json_route(app, "GET", "/flat", top_level=True, public=True)
    def flat(self, request: Any) -> Any:
        """Fields at the top level and in data."""
        return {"a": 1}
