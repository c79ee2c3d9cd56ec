"""The generated OpenAPI document and the offline Swagger UI."""

from __future__ import annotations

import json
import re

from codebuddy.web.errors import CATALOGUE
from tests.helpers import ApiFixture, ApiTestCase
from tests.web.sample_area import SampleRoutes
from tests.web.test_auth import make_api


def _refs(node: object) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                found.add(value)
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


class OpenAPITests(ApiTestCase):
    def setUp(self) -> None:
        self.api = make_api()
        status, self.doc, _r = self.api.json("GET", "/api/openapi.json")
        self.assertEqual(status, 200)

    def test_version_rendered_by_bundled_ui(self) -> None:
        """The document is OpenAPI 3.0.x, which the bundled Swagger UI 4 renders."""
        self.assertTrue(self.doc["openapi"].startswith("3.0."))

    def test_every_route_listed(self) -> None:
        """Every declared route appears with its method, path parameters in {braces}."""
        ops = {(m.upper(), p) for p, item in self.doc["paths"].items() for m in item}
        for spec, _area in self.api.v1.routes:
            self.assertIn((spec.method, "/api/v1" + spec.openapi_path), ops)
        self.assertIn(("GET", "/api/v1/items/{item_id}"), ops)
        self.assertIn(("GET", "/api/v1/health"), ops)

    def test_refs_resolve(self) -> None:
        """Every $ref points at a component that exists."""
        names = set(self.doc["components"]["schemas"])
        for ref in _refs(self.doc):
            self.assertIn(ref.removeprefix("#/components/schemas/"), names)

    def test_models_camel_case(self) -> None:
        """Schemas use the wire names (camelCase) and list required fields."""
        item = self.doc["components"]["schemas"]["NewItem"]
        self.assertEqual(set(item["properties"]), {"itemId", "sizeBytes", "tags"})
        self.assertEqual(item["required"], ["itemId"])
        self.assertEqual(item["properties"]["tags"], {"type": "array", "items": {"type": "string"}})

    def test_aliases(self) -> None:
        """Fields published under a second name (E2B's snake_case metrics) show both names."""
        metrics = self.doc["components"]["schemas"]["Metrics"]["properties"]
        self.assertEqual(metrics["cpu_count"]["type"], metrics["cpuCount"]["type"])
        self.assertIn("diskTotal", metrics)
        self.assertIn("disk_total", metrics)

    def test_error_codes(self) -> None:
        """Routes list their error codes by status; the whole catalogue is in x-error-codes."""
        create = self.doc["paths"]["/api/v1/items"]["post"]["responses"]
        schema = create["409"]["content"]["application/json"]["schema"]
        self.assertIn("ALREADY_EXISTS", schema["properties"]["error"]["properties"]["code"]["enum"])
        self.assertIn("BAD_REQUEST", create["400"]["description"])
        self.assertIn("201", create)
        codes = {row["code"] for row in self.doc["x-error-codes"]}
        self.assertEqual(codes, set(CATALOGUE))

    def test_security(self) -> None:
        """Public routes need no security; others accept bearer, query and cookie credentials."""
        self.assertEqual(self.doc["paths"]["/api/v1/health"]["get"]["security"], [])
        secured = self.doc["paths"]["/api/v1/info"]["get"]["security"]
        self.assertIn({"bearer": []}, secured)
        self.assertIn({"cookie": []}, secured)

    def test_query_parameters(self) -> None:
        """Query models become query parameters with types."""
        params = {p["name"]: p for p in self.doc["paths"]["/api/v1/items"]["get"]["parameters"]}
        self.assertEqual(params["limit"]["schema"], {"type": "integer"})
        self.assertFalse(params["limit"]["required"])

    def test_operation_ids_unique(self) -> None:
        """Operation ids are unique (Swagger UI deep links rely on them)."""
        ids = [op["operationId"] for item in self.doc["paths"].values() for op in item.values()]
        self.assertEqual(len(ids), len(set(ids)))


class DocsTests(ApiTestCase):
    def setUp(self) -> None:
        self.api = ApiFixture([SampleRoutes()])

    def test_page_offline(self) -> None:
        """/api/docs is an HTML page whose scripts and styles are all local."""
        response, body = self.api.request("GET", "/api/docs")
        self.assertEqual(response.code, 200)
        self.assertIn("text/html", response.headers.getRawHeaders("content-type")[0])
        self.assertEqual(re.findall(rb"https?://", body), [])
        assets = re.findall(rb'(?:src|href)="([^"]+)"', body)
        self.assertTrue(assets)
        for asset in assets:
            with self.subTest(asset=asset):
                asset_response, asset_body = self.api.request("GET", asset.decode())
                self.assertEqual(asset_response.code, 200)
                self.assertGreater(len(asset_body), 100)

    def test_initializer(self) -> None:
        """The UI loads our document and has the online validator switched off."""
        _r, body = self.api.request("GET", "/api/docs/codebuddy-init.js")
        self.assertIn(b'url: "/api/openapi.json"', body)
        self.assertIn(b"validatorUrl: null", body)

    def test_unknown_asset(self) -> None:
        """Unknown files under /api/docs are JSON 404s (no directory listing)."""
        self.assertError(self.api.json("GET", "/api/docs/nope.js"), 404, "NOT_FOUND")
        self.assertError(self.api.json("GET", "/api/docs/index.j2"), 404, "NOT_FOUND")

    def test_trailing_slash(self) -> None:
        """/api/docs/ serves the page too."""
        response, body = self.api.request("GET", "/api/docs/")
        self.assertEqual(response.code, 200)
        self.assertIn(b"swagger-ui", body)
        json.dumps  # noqa: B018 - keep import used
