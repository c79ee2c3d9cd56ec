"""Sessions: the transcripts in ``<home>/projects/<projectId>/<sessionId>.jsonl``, listed, renamed, deleted."""
