"""Checkpoints: one per user message; file backups under ``<home>/file-history/<sessionId>/``, diff and revert."""
