"""The bridge's root exception."""

from __future__ import annotations

from forewarn.errors import ForewarnError

__all__ = ["BridgeError"]


class BridgeError(ForewarnError):
    """The bridge could not start, run or finish what it was asked to do."""
