"""Test-wide settings: a derandomized hypothesis profile (Twisted's own)."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "codebuddy",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.load_profile("codebuddy")
