"""Training's exceptions: one root, each one line for the CLI."""

from __future__ import annotations

from forewarn.errors import ForewarnError

__all__ = ["DataError", "ExportError", "TrainingError"]


class TrainingError(ForewarnError):
    """Root of everything training raises on purpose."""


class DataError(TrainingError):
    """Input data that cannot be used; the message names the file, row or column and what is wrong."""


class ExportError(TrainingError):
    """The ONNX export failed or disagrees with the Keras model."""
