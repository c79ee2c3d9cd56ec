"""
The ``twistd codebuddy`` plugin.

Kept import-light on purpose: twistd imports every plugin module on every
start, so the options and the service live in :mod:`codebuddy.tap`.
"""

from twisted.application.service import ServiceMaker

CodeBuddy = ServiceMaker(
    "CodeBuddy",
    "codebuddy.tap",
    "The CodeBuddy Code HTTP API daemon: files, processes, terminals and agents over HTTP.",
    "codebuddy",
)
