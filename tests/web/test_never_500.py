"""
Every route of the settings, sessions, checkpoints, runs, templates and plugins areas, given
arbitrary JSON bodies, query values and path segments, answers a JSON envelope and never a 500.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import succeed

from codebuddy.checkpoints.routes import CheckpointRoutes
from codebuddy.checkpoints.store import CheckpointStore
from codebuddy.fs.paths import Resolver
from codebuddy.plugins.manager import PluginManager
from codebuddy.plugins.routes import PluginRoutes
from codebuddy.plugins.sources import Git, ManifestFetcher
from codebuddy.runs.manager import RunManager
from codebuddy.runs.records import RunStore
from codebuddy.runs.routes import RunRoutes
from codebuddy.sessions.routes import SessionsRoutes
from codebuddy.sessions.store import SessionStore
from codebuddy.settings.routes import SettingsRoutes
from codebuddy.settings.store import SettingsStore
from codebuddy.templates.catalog import TemplateCatalog
from codebuddy.templates.recommend import Recommender
from codebuddy.templates.routes import TemplateRoutes
from tests.helpers import ApiFixture
from tests.plugins.helpers import NoNetwork
from tests.runs.helpers import ScriptedExecutor
from tests.workers.test_routes import run_now

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["text", "prompt", "values", "value", "plugin", "source", "name", "marketplace", "paths", "path",
          "checkpointId", "scope", "sessionId", "cwd", "permissionMode", "timeoutMs", "sender", "payload", "type",
          "manifest", "options"]
BODIES = st.one_of(JSON, st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5))
SEGMENTS = st.one_of(st.sampled_from(["x", "model", "permissions", "..", "%2e%2e", "a.b", "-", "current", "%00",
                                      "%2F", "permissions.allow", "my-marketplace"]),
                     st.text(st.characters(codec="ascii", exclude_characters="/?#%"), min_size=1, max_size=12))
QUERY = st.dictionaries(st.sampled_from(["scope", "cwd", "projectId", "path", "sessionId", "after", "tail"]),
                        st.text(max_size=10), max_size=3)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> ApiFixture:
    root = tmp_path_factory.mktemp("never500")
    home, ws = root / "home", root / "ws"
    ws.mkdir()

    def areas(guard: Any, clock: Any) -> list[Any]:
        sessions = SessionStore(home)
        settings_store = SettingsStore(home, ws)
        manager = RunManager(RunStore(home), ScriptedExecutor(), clock, run_now)
        manager.startService()
        return [
            SettingsRoutes(settings_store, run_now),
            SessionsRoutes(sessions, run_now, str(ws), "current"),
            CheckpointRoutes(CheckpointStore(home, sessions), run_now, "current"),
            RunRoutes(manager, ws, lambda: succeed({}), clock),
            TemplateRoutes(TemplateCatalog(home), run_now, Recommender(home, {}, None, clock, run_now,
                                                                       lambda *a: None), ws),
            PluginRoutes(PluginManager(home, settings_store, run_now, ManifestFetcher(NoNetwork(), clock),
                                       Resolver(ws), clock, Git())),
        ]

    return ApiFixture(areas)


def routes(api: ApiFixture) -> list[tuple[str, str]]:
    found = []
    for path, methods in api.openapi["paths"].items():
        if "/stream" in path:
            continue  # streams stay open; their errors are tested where they live
        for method in methods:
            found.append((method.upper(), path))
    return found


def check(response: Any, body: bytes, where: str) -> None:
    assert response.code != 500, f"{where}: 500 {body[:300]!r}"
    if response.code == 204:
        return
    data = json.loads(body)
    if response.code >= 400:
        assert isinstance(data["error"]["code"], str) and data["error"]["message"], where


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_routes_never_500(api: ApiFixture, data: st.DataObject) -> None:
    method, path = data.draw(st.sampled_from(routes(api)))
    concrete = re.sub(r"\{[^}]+\}", lambda _m: data.draw(SEGMENTS), path)
    query = data.draw(QUERY)
    url = concrete + ("?" + urlencode(query) if query else "")
    kwargs: dict[str, Any] = {}
    if method in ("POST", "PUT"):
        kwargs["data"] = json.dumps(data.draw(BODIES)).encode()
        kwargs["headers"] = {"Content-Type": "application/json"}
    response, body = api.request(method, url.encode("ascii"), **kwargs)
    check(response, body, f"{method} {url} {kwargs.get('data', b'')[:200]!r}")
