# -*- test-case-name: tests.templates.test_routes -*-
"""
``/api/v1/tasks/templates`` (spec "Task Templates"; acp-codebuddy.md §2.12).

``GET`` answers the built-in, user and AI-recommended templates with the recommendation
``status``. ``POST .../refresh`` starts the recommendation request in the background
(:mod:`codebuddy.templates.recommend`) and answers ``{status: "loading", message}`` at once;
clients poll ``GET`` until ``status`` is no longer ``loading``. Without a model: 400
``MODEL_NOT_CONFIGURED`` saying what to set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred

from codebuddy.agent.model import ModelNotConfigured
from codebuddy.templates.catalog import TaskTemplate, TemplateCatalog
from codebuddy.templates.recommend import Recommender
from codebuddy.web.errors import ApiError
from codebuddy.web.json import json_route, omit_if_default

__all__ = ["TemplateRoutes"]

TAGS = ("Task templates",)


@attrs.define
class TemplatesQuery:
    session_id: str | None = attrs.field(default=None, metadata={
        "doc": "The session the templates are for (accepted for compatibility; the list is per workspace)"})


@attrs.frozen
class TemplateList:
    """The templates and the state of the AI recommendations."""

    templates: list[TaskTemplate]
    status: str = attrs.field(metadata={"doc": "idle, loading, done or error (AI recommendations)"})
    cached_at: int | None = attrs.field(default=None, metadata={
        **omit_if_default(), "doc": "When the cached recommendations were made (ms)"})
    error: str | None = attrs.field(default=None, metadata=omit_if_default())
    warnings: list[str] = attrs.field(factory=list, metadata={
        **omit_if_default(), "doc": "User template entries that were skipped, and why"})


@attrs.frozen
class RefreshStarted:
    status: str
    message: str


class TemplateRoutes:
    """The task template endpoints over one :class:`TemplateCatalog`."""

    app = Klein()

    def __init__(self, catalog: TemplateCatalog, run_blocking: Callable[..., Deferred[Any]],
                 recommender: Recommender, workspace: Path) -> None:
        self.catalog = catalog
        self.run_blocking = run_blocking
        self.recommender = recommender
        self.workspace = workspace

    @json_route(app, "GET", "/tasks/templates", query=TemplatesQuery, response=TemplateList, tags=TAGS,
                summary="Get task templates")
    async def templates(self, request: Any, query: TemplatesQuery) -> TemplateList:
        """
        The built-in templates, then the user's own from ``<home>/tasks/templates.json`` (a user
        template with a built-in id replaces it; unusable entries are skipped and listed in
        ``warnings``).
        """
        templates, warnings = await self.run_blocking(self.catalog.templates)
        state = await self.recommender.state(self.workspace)
        taken = {t.id for t in templates}
        templates += [t for t in state.templates if t.id not in taken]
        return TemplateList(templates, state.status, state.cached_at, state.error, warnings)

    @json_route(app, "POST", "/tasks/templates/refresh", response=RefreshStarted, tags=TAGS,
                errors=("MODEL_NOT_CONFIGURED",), summary="Refresh (trigger AI recommendations)")
    async def refresh(self, request: Any) -> RefreshStarted:
        """
        Ask the model for templates suited to this workspace, in the background: answers
        ``{status: "loading"}`` at once (also while a refresh already runs); ``GET`` then shows
        ``loading`` until the templates (``source: "ai"``) are ``done``, or ``error``. 400
        ``MODEL_NOT_CONFIGURED`` without a model.
        """
        try:
            state = await self.recommender.refresh(self.workspace)
        except ModelNotConfigured as exc:
            raise ApiError("MODEL_NOT_CONFIGURED", f"Task recommendations need a model. {exc}") from None
        return RefreshStarted(state.status, "Asking the model for task templates suited to this workspace; "
                              "poll GET /api/v1/tasks/templates until status is done or error")
