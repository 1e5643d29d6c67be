"""The dashboard's exceptions."""

from __future__ import annotations

from forewarn.errors import ForewarnError

__all__ = ["DashboardError", "StoreError"]


class DashboardError(ForewarnError):
    """Root of the dashboard's errors."""


class StoreError(DashboardError):
    """The embedded store cannot be opened or written."""
