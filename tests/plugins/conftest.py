"""Fixtures of the plugin tests: a home, a workspace and the plugins area over them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plugins.helpers import Fixture


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
def api(home: Path, workspace: Path) -> Fixture:
    return Fixture(home, workspace)
