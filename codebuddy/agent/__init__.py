"""The coding agent behind ``POST /api/v1/runs``: model access (``model``), and later the loop and its tools."""
