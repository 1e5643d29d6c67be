"""The simulators' root exception."""

from __future__ import annotations

from forewarn.errors import ForewarnError

__all__ = ["SimulatorError"]


class SimulatorError(ForewarnError):
    """The simulator was asked for something it cannot do (bad option, unreadable file)."""
