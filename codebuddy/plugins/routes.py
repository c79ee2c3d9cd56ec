# -*- test-case-name: tests.plugins.test_routes -*-
"""
Plugin endpoints (acp-codebuddy.md §2.10; guide: docs/plugins.md):

- ``GET /plugins``, ``POST /plugins {"plugin": "name@market", "options"?: {"scope"}}``,
  ``POST /plugins/enable|disable|uninstall {"plugin"}``, ``POST /plugins/validate``;
- ``GET /plugins/marketplaces``, ``POST /plugins/marketplaces {"source", "name"?}``,
  ``POST /plugins/marketplaces/browse|update {"marketplace"}``, ``DELETE /plugins/marketplaces/:name``.

Thin handlers: the work is in :class:`codebuddy.plugins.manager.PluginManager`.
"""

from __future__ import annotations

from typing import Any

import attrs
from klein import Klein

from codebuddy.plugins.manager import PluginManager
from codebuddy.plugins.manifest import MAX_MANIFEST_BYTES, ValidationResult
from codebuddy.plugins.models import (
    InstalledPlugin,
    MarketplaceInfo,
    MarketplacePlugin,
    MarketplaceRemoved,
    PluginUninstalled,
)
from codebuddy.web.json import Result, json_route

__all__ = ["PluginRoutes"]

TAGS = ("Plugins",)
SMALL = 64 * 1024
_ID = ("PLUGIN_NOT_FOUND",)


@attrs.frozen
class InstallOptions:
    """Where to enable the plugin: the user's settings (default), the project's, or the local ones."""

    scope: str = "user"


@attrs.frozen
class InstallRequest:
    """A plugin of an added marketplace."""

    plugin: str = attrs.field(metadata={"doc": "name@marketplace, e.g. my-plugin@my-marketplace"})
    options: InstallOptions | None = None


@attrs.frozen
class PluginRequest:
    """One installed plugin."""

    plugin: str = attrs.field(metadata={"doc": "name@marketplace"})


@attrs.frozen
class AddMarketplaceRequest:
    """A marketplace source, and the name to know it by (default: its manifest's name)."""

    source: Any = attrs.field(metadata={
        "doc": 'owner/repo, a git URL (https://…/x.git, git@host:x.git, file://…; #ref for a branch or tag), an '
               'http(s) URL of a marketplace.json, a local folder or marketplace.json path; or a source object '
               '{"source": "github", "repo"} / {"source": "git", "url"}'})
    name: str | None = None


@attrs.frozen
class MarketplaceRequest:
    """One added marketplace."""

    marketplace: str


@attrs.frozen
class ValidateRequest:
    """A manifest on disk (file, or a folder with a manifest folder) or inline JSON."""

    path: str | None = attrs.field(default=None, metadata={
        "doc": "A marketplace.json / plugin.json, or a folder holding .codebuddy-plugin/, .workbuddy-plugin/ or "
               ".claude-plugin/ (relative to the workspace)"})
    manifest: Any = attrs.field(default=None, metadata={"doc": "The manifest's JSON, instead of path"})
    type: str | None = attrs.field(default=None, metadata={
        "doc": "marketplace or plugin (default: from the file name, else marketplace when it has plugins/owner)"})


class PluginRoutes:
    """The plugins area's HTTP surface."""

    app = Klein()

    def __init__(self, manager: PluginManager) -> None:
        self.manager = manager

    @json_route(app, "GET", "/plugins", response=list[InstalledPlugin], tags=TAGS, summary="List installed plugins")
    async def list_plugins(self, request: Any) -> list[InstalledPlugin]:
        """Installed plugins with their state (``enabled``/``status``) and manifest metadata."""
        return await self.manager.list_plugins()

    @json_route(app, "POST", "/plugins", body=InstallRequest, response=InstalledPlugin, status=201, tags=TAGS,
                errors=("MARKETPLACE_NOT_FOUND", "PLUGIN_NOT_FOUND", "MANIFEST_INVALID", "SOURCE_UNREACHABLE",
                        "SERVICE_UNAVAILABLE"),
                max_body=SMALL, summary="Install plugin")
    async def install_plugin(self, request: Any, body: InstallRequest) -> Any:
        """
        Copy (``./path`` sources) or clone (github, git, url sources) the plugin into
        ``<home>/plugins/cache/<marketplace>/<plugin>/<version>/`` after checking it, record it in
        ``installed_plugins.json`` and enable it (``enabledPlugins``). 201 when installed; an installed
        plugin is answered 200 with ``alreadyInstalled: true`` and nothing changes.
        """
        scope = body.options.scope if body.options is not None else "user"
        plugin = await self.manager.install(body.plugin, scope)
        return Result(plugin, 200 if plugin.already_installed else 201)

    @json_route(app, "POST", "/plugins/validate", body=ValidateRequest, response=ValidationResult, tags=TAGS,
                errors=("NOT_FOUND", "PATH_REQUIRED"), max_body=MAX_MANIFEST_BYTES,
                summary="Validate plugin/marketplace manifest file")
    async def validate(self, request: Any, body: ValidateRequest) -> ValidationResult:
        """
        Every problem of a marketplace.json or plugin.json, each with its JSON path and what to do
        (200 with ``valid: false`` when there are errors). On disk, component paths and relative plugin
        sources must exist, and a marketplace's local plugins are validated too.
        """
        return await self.manager.validate(body.path, body.manifest, body.type)

    @json_route(app, "POST", "/plugins/enable", body=PluginRequest, response=InstalledPlugin, tags=TAGS,
                errors=_ID, max_body=SMALL, summary="Enable plugin")
    async def enable_plugin(self, request: Any, body: PluginRequest) -> InstalledPlugin:
        """``enabledPlugins[id] = true`` in the settings of the plugin's install scope."""
        return await self.manager.set_enabled(body.plugin, True)

    @json_route(app, "POST", "/plugins/disable", body=PluginRequest, response=InstalledPlugin, tags=TAGS,
                errors=_ID, max_body=SMALL, summary="Disable plugin")
    async def disable_plugin(self, request: Any, body: PluginRequest) -> InstalledPlugin:
        """``enabledPlugins[id] = false`` in the settings of the plugin's install scope (files stay)."""
        return await self.manager.set_enabled(body.plugin, False)

    @json_route(app, "POST", "/plugins/uninstall", body=PluginRequest, response=PluginUninstalled, tags=TAGS,
                errors=_ID, max_body=SMALL, summary="Uninstall plugin")
    async def uninstall_plugin(self, request: Any, body: PluginRequest) -> PluginUninstalled:
        """Remove the plugin's files, its ``installed_plugins.json`` record and its ``enabledPlugins`` entries."""
        return await self.manager.uninstall(body.plugin)

    @json_route(app, "GET", "/plugins/marketplaces", response=list[MarketplaceInfo], tags=TAGS,
                summary="List configured plugin marketplaces")
    async def list_marketplaces(self, request: Any) -> list[MarketplaceInfo]:
        """The marketplaces of ``known_marketplaces.json``."""
        return await self.manager.list_marketplaces()

    @json_route(app, "POST", "/plugins/marketplaces", body=AddMarketplaceRequest, response=MarketplaceInfo,
                status=201, tags=TAGS, max_body=SMALL,
                errors=("ALREADY_EXISTS", "MANIFEST_INVALID", "SOURCE_UNREACHABLE", "SERVICE_UNAVAILABLE"),
                summary="Add plugin marketplace")
    async def add_marketplace(self, request: Any, body: AddMarketplaceRequest) -> MarketplaceInfo:
        """
        Fetch the marketplace (clone, copy, download) into ``<home>/plugins/marketplaces/<name>/``
        and record it. 409 ``ALREADY_EXISTS`` when the name is taken; 400 ``MANIFEST_INVALID`` (with
        every problem in ``details``) or 502 ``SOURCE_UNREACHABLE`` when the source is unusable.
        """
        return await self.manager.add_marketplace(body.source, body.name)

    @json_route(app, "POST", "/plugins/marketplaces/browse", body=MarketplaceRequest,
                response=list[MarketplacePlugin], tags=TAGS, errors=("MARKETPLACE_NOT_FOUND", "MANIFEST_INVALID"),
                max_body=SMALL, summary="Browse available plugins in marketplace")
    async def browse_marketplace(self, request: Any, body: MarketplaceRequest) -> list[MarketplacePlugin]:
        """The marketplace's plugins; ``status`` is ``"installed"`` or null."""
        return await self.manager.browse(body.marketplace)

    @json_route(app, "POST", "/plugins/marketplaces/update", body=MarketplaceRequest, response=MarketplaceInfo,
                tags=TAGS, errors=("MARKETPLACE_NOT_FOUND", "MANIFEST_INVALID", "SOURCE_UNREACHABLE",
                                   "SERVICE_UNAVAILABLE"),
                max_body=SMALL, summary="Update plugin marketplace")
    async def update_marketplace(self, request: Any, body: MarketplaceRequest) -> MarketplaceInfo:
        """Fetch the marketplace again from its source; the old copy stays if that fails. Installed plugins stay."""
        return await self.manager.update_marketplace(body.marketplace)

    @json_route(app, "DELETE", "/plugins/marketplaces/<name>", response=MarketplaceRemoved, tags=TAGS,
                errors=("MARKETPLACE_NOT_FOUND",), summary="Delete plugin marketplace")
    async def delete_marketplace(self, request: Any, name: str) -> MarketplaceRemoved:
        """Forget the marketplace and remove its copy; its installed plugins are uninstalled with it."""
        return await self.manager.remove_marketplace(name)
