"""The filesystem area: E2B-compatible files, fs operations, watching and fuzzy search."""
