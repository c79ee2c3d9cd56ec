"""
Plugins and marketplaces (acp-codebuddy.md §2.10): add marketplaces from directories, manifest
files, URLs and git repositories, browse and install their plugins into ``<home>/plugins/``,
switch them on and off through the ``enabledPlugins`` setting, and validate manifests.
"""
