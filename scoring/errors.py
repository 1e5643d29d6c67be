"""The scoring package's exceptions (all :class:`~forewarn.errors.ForewarnError`)."""

from __future__ import annotations

from forewarn.errors import ForewarnError

__all__ = ["RecoveryError", "ScoringError"]


class ScoringError(ForewarnError):
    """A scoring worker cannot start or go on."""


class RecoveryError(ScoringError):
    """Window and alert state could not be rebuilt from the ``scoring.state`` changelog."""
