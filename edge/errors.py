"""The edge gateway's exceptions."""

from __future__ import annotations

from forewarn.errors import ForewarnError

__all__ = ["EdgeError"]


class EdgeError(ForewarnError):
    """The edge gateway cannot start or run (bad data dir, no MQTT broker, ...)."""
