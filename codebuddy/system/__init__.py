"""The system area: health, info, metrics, environment, and the auth endpoints."""
