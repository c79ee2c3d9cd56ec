"""The route wrapper and dispatcher: envelope, status codes, errors, 404/405, async, HEAD."""

from __future__ import annotations

import json

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from tests.helpers import ApiFixture, ApiTestCase
from tests.web.sample_area import Item, SampleRoutes


class RoutingTests(ApiTestCase):
    def setUp(self) -> None:
        self.area = SampleRoutes()
        self.api = ApiFixture([self.area])

    def test_static_route_envelope(self) -> None:
        """A static GET route answers 200 with the result under ``data``."""
        self.area.items["a"] = Item("a", 3)
        data = self.assertData(self.api.json("GET", "/api/v1/items"))
        self.assertEqual(data["items"], [{"itemId": "a", "sizeBytes": 3}])

    def test_json_content_type(self) -> None:
        """Every JSON answer says application/json."""
        _status, _body, response = self.api.json("GET", "/api/v1/items")
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["application/json; charset=utf-8"]
        )

    def test_created_status(self) -> None:
        """A route declared with status=201 answers 201 and the model in camelCase."""
        data = self.assertData(
            self.api.json("POST", "/api/v1/items", json={"itemId": "x", "sizeBytes": 7}), 201
        )
        self.assertEqual(data, {"itemId": "x", "sizeBytes": 7})
        self.assertEqual(self.area.items["x"], Item("x", 7))

    def test_domain_error(self) -> None:
        """An ApiError raised by a handler becomes the error envelope with its status."""
        self.api.json("POST", "/api/v1/items", json={"itemId": "x"})
        error = self.assertError(
            self.api.json("POST", "/api/v1/items", json={"itemId": "x"}), 409, "ALREADY_EXISTS"
        )
        self.assertIn("x", error["message"])

    def test_variable_route(self) -> None:
        """Routes with path variables are matched by the area's Klein app."""
        self.area.items["b"] = Item("b")
        self.assertEqual(self.assertData(self.api.json("GET", "/api/v1/items/b"))["itemId"], "b")
        self.assertError(self.api.json("GET", "/api/v1/items/zz"), 404, "NOT_FOUND")

    def test_no_content(self) -> None:
        """NO_CONTENT answers 204 with an empty body."""
        response, body = self.api.request("DELETE", "/api/v1/items/b")
        self.assertEqual((response.code, body), (204, b""))

    def test_async_handler(self) -> None:
        """A coroutine handler's result is serialised once it completes (202 here)."""
        data = self.assertData(self.api.json("POST", "/api/v1/items/q/touch"), 202)
        self.assertEqual(data, {"touched": "q"})

    def test_deferred_handler(self) -> None:
        """A handler returning a Deferred answers when it fires."""
        d = self.api.treq.get("http://127.0.0.1/api/v1/slow")
        self.api.treq.flush()
        self.assertNoResult(d)
        assert self.area.pending is not None
        self.area.pending.callback({"late": True})
        self.api.treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)

    def test_unknown_route(self) -> None:
        """An unknown path under /api/v1 is a JSON 404 NOT_FOUND."""
        for path in ("/api/v1/nothing", "/api/v1/items/a/b/c", "/api/v1/", "/api/nope", "/api"):
            with self.subTest(path=path):
                self.assertError(self.api.json("GET", path), 404, "NOT_FOUND")

    def test_outside_api(self) -> None:
        """Paths outside /api are JSON 404s too, never HTML."""
        self.assertError(self.api.json("GET", "/favicon.ico"), 404, "NOT_FOUND")

    def test_wrong_method(self) -> None:
        """A known path with the wrong method is 405 METHOD_NOT_ALLOWED with an Allow header."""
        status, body, response = self.api.json("PUT", "/api/v1/items")
        self.assertEqual((status, body["error"]["code"]), (405, "METHOD_NOT_ALLOWED"))
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD, POST"])
        self.assertError(self.api.json("PATCH", "/api/v1/items/a"), 405, "METHOD_NOT_ALLOWED")

    def test_head(self) -> None:
        """HEAD on a GET route answers the headers without a body."""
        response, body = self.api.request("HEAD", "/api/v1/items")
        self.assertEqual((response.code, body), (200, b""))

    def test_unexpected_exception(self) -> None:
        """An unexpected exception is a 500 naming only an incident id, and is logged with it."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for path in ("/api/v1/boom", "/api/v1/boom/7"):
            with self.subTest(path=path):
                status, body, _r = self.api.json("GET", path)
                self.assertEqual((status, body["error"]["code"]), (500, "INTERNAL_ERROR"))
                self.assertNotIn("secret", json.dumps(body))
                incident = body["error"]["details"]["incident"]
                logged = [e for e in observer if e.get("incident") == incident]
                self.assertEqual(len(logged), 1)
                self.assertEqual(logged[0]["log_level"], LogLevel.critical)
        self.flushLoggedErrors(RuntimeError)

    def test_top_level(self) -> None:
        """top_level routes carry their fields at the top level and under data."""
        status, body, _r = self.api.json("GET", "/api/v1/flat")
        self.assertEqual((status, body), (200, {"a": 1, "data": {"a": 1}}))


class BodyTests(ApiTestCase):
    def setUp(self) -> None:
        self.area = SampleRoutes()
        self.api = ApiFixture([self.area])

    def post(self, body: bytes, content_type: str | None = "application/json") -> tuple[int, object, object]:
        headers = {"content-type": content_type} if content_type else {}
        return self.api.json("POST", "/api/v1/items", data=body, headers=headers)

    def test_wrong_type_names_field(self) -> None:
        """A field of the wrong type is 400 BAD_REQUEST whose details name the camelCase field."""
        error = self.assertError(self.post(b'{"itemId": 5}'), 400, "BAD_REQUEST")
        self.assertEqual(error["details"][0]["field"], "itemId")
        self.assertIn("itemId", error["message"])

    def test_no_coercion(self) -> None:
        """Numbers are not turned into strings, nor booleans into numbers."""
        self.assertError(self.post(b'{"itemId": "a", "sizeBytes": true}'), 400, "BAD_REQUEST")
        self.assertError(self.post(b'{"itemId": "a", "sizeBytes": "3"}'), 400, "BAD_REQUEST")

    def test_nested_list_path(self) -> None:
        """Errors inside lists carry the index in the field path."""
        error = self.assertError(self.post(b'{"itemId": "a", "tags": ["x", 3]}'), 400, "BAD_REQUEST")
        self.assertEqual(error["details"][0]["field"], "tags[1]")

    def test_missing_field(self) -> None:
        """A missing required field is named."""
        error = self.assertError(self.post(b'{"sizeBytes": 1}'), 400, "BAD_REQUEST")
        self.assertEqual(error["details"], [{"field": "itemId", "message": "required field missing"}])

    def test_not_an_object(self) -> None:
        """A JSON array where an object is expected is a 400."""
        self.assertError(self.post(b"[1, 2]"), 400, "BAD_REQUEST")

    def test_invalid_json(self) -> None:
        """Unparseable JSON is a 400 BAD_REQUEST."""
        self.assertError(self.post(b'{"itemId": '), 400, "BAD_REQUEST")
        self.assertError(self.post(b"\xff\xfe"), 400, "BAD_REQUEST")

    def test_wrong_content_type(self) -> None:
        """A non-JSON content type is 415 UNSUPPORTED_MEDIA_TYPE."""
        self.assertError(self.post(b'{"itemId": "a"}', "text/plain"), 415, "UNSUPPORTED_MEDIA_TYPE")

    def test_missing_content_type_accepted(self) -> None:
        """A JSON body without a content type is accepted (curl -d without -H)."""
        self.assertData(self.post(b'{"itemId": "a"}', None), 201)

    def test_json_variants(self) -> None:
        """application/json with parameters and +json types are accepted."""
        self.assertData(self.post(b'{"itemId": "a"}', "application/json; charset=utf-8"), 201)
        self.assertData(self.post(b'{"itemId": "b"}', "application/merge-patch+json"), 201)

    def test_extra_fields_ignored(self) -> None:
        """Unknown fields are ignored, as in protobuf JSON."""
        self.assertData(self.post(b'{"itemId": "a", "username": "root"}'), 201)

    def test_too_large(self) -> None:
        """A body over the route's limit is 413 PAYLOAD_TOO_LARGE."""
        big = b'{"itemId": "' + b"a" * (1024 * 1024) + b'"}'
        self.assertError(self.post(big), 413, "PAYLOAD_TOO_LARGE")

    def test_over_site_cap(self) -> None:
        """A body over the site's cap is dropped while it arrives, then answered 413."""
        self.api.site.body_cap = 1000
        self.assertError(self.post(b'{"itemId": "' + b"a" * 5000 + b'"}'), 413, "PAYLOAD_TOO_LARGE")

    def test_empty_body_is_empty_object(self) -> None:
        """An empty body counts as {} (so all-optional models accept a bare POST)."""
        error = self.assertError(self.post(b""), 400, "BAD_REQUEST")
        self.assertEqual(error["details"][0]["field"], "itemId")


class QueryTests(ApiTestCase):
    def setUp(self) -> None:
        self.area = SampleRoutes()
        for name in ("a1", "a2", "b1"):
            self.area.items[name] = Item(name)
        self.api = ApiFixture([self.area])

    def test_query_model(self) -> None:
        """Query parameters are coerced to the model's types."""
        data = self.assertData(self.api.json("GET", "/api/v1/items?limit=1&prefix=a&verbose=true"))
        self.assertEqual((len(data["items"]), data["verbose"]), (1, True))

    def test_bad_query(self) -> None:
        """An uncoercible query parameter is a 400 naming it."""
        error = self.assertError(self.api.json("GET", "/api/v1/items?limit=ten"), 400, "BAD_REQUEST")
        self.assertEqual(error["details"][0]["field"], "limit")


class NonApiMethodTests(ApiTestCase):
    def setUp(self) -> None:
        self.api = ApiFixture([SampleRoutes()])

    def test_read_only_resources(self) -> None:
        """Docs, the OpenAPI document and / answer other methods with a JSON 405, never HTML."""
        for path in ("/", "/api/docs", "/api/openapi.json", "/api/docs/swagger-ui.css"):
            with self.subTest(path=path):
                status, body, response = self.api.json("POST", path)
                self.assertEqual((status, body["error"]["code"]), (405, "METHOD_NOT_ALLOWED"))
                self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])

    def test_failure_outside_routes_is_json(self) -> None:
        """An exception escaping the resource tree itself is a JSON 500 with an incident id."""

        def explode(request: object, exempt_header: bool = False) -> None:
            raise RuntimeError("guard bug")

        self.api.guard.screen = explode  # type: ignore[method-assign]
        status, body, response = self.api.json("GET", "/api/v1/items")
        self.assertEqual((status, body["error"]["code"]), (500, "INTERNAL_ERROR"))
        self.assertIn("application/json", response.headers.getRawHeaders("content-type")[0])
        self.flushLoggedErrors(RuntimeError)


class EncodingTests(ApiTestCase):
    def test_dumps_lone_surrogates(self) -> None:
        """Undecodable names (lone surrogates) are escaped, not a crash."""
        from codebuddy.web.json import dumps

        self.assertEqual(json.loads(dumps({"name": "caf\udce9"})), {"name": "caf\udce9"})
        self.assertEqual(dumps({"name": "café"}), '{"name":"café"}'.encode())

    def test_deep_and_nan_bodies(self) -> None:
        """Absurdly nested bodies and NaN are 400s, not 500s."""
        api = ApiFixture([SampleRoutes()])
        for body in (b"[" * 100_000, b'{"itemId": NaN}'):
            with self.subTest(body=body[:10]):
                status, result, _r = api.json(
                    "POST", "/api/v1/items", data=body, headers={"content-type": "application/json"}
                )
                self.assertEqual((status, result["error"]["code"]), (400, "BAD_REQUEST"))


class FreshQueryModelTests(ApiTestCase):
    def test_query_types_resolved_before_first_use(self) -> None:
        """A query model never structured before (string annotations) still coerces its numbers."""
        import attrs
        from klein import Klein

        from codebuddy.web.json import json_route

        @attrs.frozen
        class FreshQuery:
            limit: int = 5
            exact: bool = False

        class FreshRoutes:
            app = Klein()

            @json_route(app, "GET", "/fresh", query=FreshQuery)
            def fresh(self, request: object, query: FreshQuery) -> dict[str, object]:
                return {"limit": query.limit, "exact": query.exact}

        api = ApiFixture([FreshRoutes()])
        data = self.assertData(api.json("GET", "/api/v1/fresh?limit=50&exact=1"))
        self.assertEqual(data, {"limit": 50, "exact": True})
