"""The process area: E2B-compatible process management with streamed output."""
