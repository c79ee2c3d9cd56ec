# -*- test-case-name: tests.templates.test_routes -*-
"""
``/api/v1/tasks/templates`` (spec "Task Templates"; acp-codebuddy.md §2.12).

``GET`` answers the built-in and user templates with the recommendation ``status``. ``POST
.../refresh`` asks a model for templates suited to the workspace; the daemon has no model
access yet (it arrives with the agent), so it answers 400 ``MODEL_NOT_CONFIGURED`` and the
status stays ``idle``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred

from codebuddy.templates.catalog import TaskTemplate, TemplateCatalog
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

    def __init__(self, catalog: TemplateCatalog, run_blocking: Callable[..., Deferred[Any]]) -> None:
        self.catalog = catalog
        self.run_blocking = run_blocking

    @json_route(app, "GET", "/tasks/templates", query=TemplatesQuery, response=TemplateList, tags=TAGS,
                summary="Get task templates")
    async def templates(self, request: Any, query: TemplatesQuery) -> TemplateList:
        """
        The built-in templates, then the user's own from ``<home>/tasks/templates.json`` (a user
        template with a built-in id replaces it; unusable entries are skipped and listed in
        ``warnings``).
        """
        templates, warnings = await self.run_blocking(self.catalog.templates)
        return TemplateList(templates, "idle", warnings=warnings)

    @json_route(app, "POST", "/tasks/templates/refresh", response=RefreshStarted, tags=TAGS,
                errors=("MODEL_NOT_CONFIGURED",), summary="Refresh (trigger AI recommendations)")
    async def refresh(self, request: Any) -> RefreshStarted:
        """
        Would ask the model for templates suited to this workspace. No model is configured in
        this daemon yet: 400 ``MODEL_NOT_CONFIGURED`` (the built-in and user templates are unchanged).
        """
        raise ApiError("MODEL_NOT_CONFIGURED", "No model is configured for task recommendations: this daemon "
                       "cannot reach a model yet (model settings CODEBUDDY_BASE_URL, CODEBUDDY_API_KEY, "
                       "CODEBUDDY_MODEL and models.json arrive with the agent). The built-in and user templates "
                       "are still listed by GET /api/v1/tasks/templates.")
