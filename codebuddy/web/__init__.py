"""HTTP plumbing shared by every area: envelope, errors, auth guard, SSE, OpenAPI."""
