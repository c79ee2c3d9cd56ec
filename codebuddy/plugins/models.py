"""What the plugin area answers (attrs models; camelCase on the wire through ``web.json``)."""

from __future__ import annotations

from typing import Any

import attrs

from codebuddy.web.json import omit_if_default


@attrs.frozen
class MarketplaceInfo:
    """A marketplace added with ``POST /plugins/marketplaces``."""

    name: str
    type: str = attrs.field(metadata={"doc": "github, git, url, directory or file"})
    source: dict[str, Any] = attrs.field(metadata={
        "doc": 'As stored in known_marketplaces.json: {"source": "github", "repo"}, {"source": "git", "url"}, '
               '{"source": "url", "url"}, {"source": "directory", "path"} or {"source": "file", "path"}'})
    location: str = attrs.field(metadata={"doc": "The source in one line (repo, URL or path)"})
    install_location: str = attrs.field(metadata={"doc": "The marketplace's copy: <home>/plugins/marketplaces/<name>"})
    last_updated: int | None = attrs.field(metadata={"doc": "When it was added or last updated, ms since the epoch"})
    description: str | None
    owner: Any = attrs.field(metadata={"doc": "The manifest's owner object ({name, email?})"})
    version: str | None
    plugin_count: int
    error: str | None = attrs.field(default=None, metadata={
        **omit_if_default(), "doc": "Why its manifest cannot be read (update or remove it)"})


@attrs.frozen
class MarketplacePlugin:
    """A plugin offered by a marketplace (``POST /plugins/marketplaces/browse``)."""

    id: str = attrs.field(metadata={"doc": "name@marketplace, what POST /plugins installs"})
    name: str
    version: str | None
    description: str | None
    marketplace_name: str
    status: str | None = attrs.field(metadata={
        "doc": '"installed", or null when it is not (the Web UI treats any string as installed)'})
    installed: bool
    author: Any = attrs.field(metadata={"doc": "The manifest's author object ({name, email?, url?})"})
    license: str | None
    homepage: str | None
    repository: str | None
    keywords: list[str]
    category: str | None
    features: list[str] = attrs.field(metadata={
        "doc": "Component kinds: commands, agents, skills, hooks, mcpServers, outputStyles, lspServers"})
    source: Any = attrs.field(metadata={"doc": 'The entry\'s source: "./path" or a source object'})
    installed_version: str | None = attrs.field(default=None, metadata=omit_if_default())


@attrs.frozen
class InstalledPlugin:
    """An installed plugin (``GET /plugins``)."""

    id: str = attrs.field(metadata={"doc": "name@marketplace"})
    name: str
    marketplace: str
    version: str
    enabled: bool = attrs.field(metadata={"doc": "enabledPlugins[id] in the settings (local > project > user)"})
    status: str = attrs.field(metadata={"doc": "enabled or disabled"})
    install_scope: str = attrs.field(metadata={"doc": "user, project or local: the settings file it is enabled in"})
    install_path: str
    installed_at: int | None = attrs.field(metadata={"doc": "ms since the epoch"})
    last_updated: int | None = attrs.field(metadata={"doc": "ms since the epoch"})
    description: str | None
    author: Any
    homepage: str | None
    repository: str | None
    license: str | None
    keywords: list[str]
    category: str | None
    features: list[str]
    source: Any = attrs.field(metadata={"doc": "The marketplace entry's source (null when the marketplace is gone)"})
    can_remove: bool
    can_switchoff: bool
    can_edit: bool
    git_commit_sha: str | None = attrs.field(default=None, metadata=omit_if_default())
    already_installed: bool = attrs.field(default=False, metadata={
        **omit_if_default(), "doc": "Install only: true when it was installed before (nothing changed)"})


@attrs.frozen
class PluginUninstalled:
    """What ``POST /plugins/uninstall`` did."""

    id: str
    uninstalled: bool
    removed_files: bool = attrs.field(metadata={"doc": "Its cache folder was removed"})


@attrs.frozen
class MarketplaceRemoved:
    """What ``DELETE /plugins/marketplaces/:name`` did."""

    name: str
    removed: bool
    uninstalled_plugins: list[str] = attrs.field(metadata={"doc": "Plugins of the marketplace, uninstalled with it"})
