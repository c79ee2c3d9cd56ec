"""codebuddy: a Twisted daemon implementing the CodeBuddy Code HTTP API."""

__version__ = "0.1.0"
