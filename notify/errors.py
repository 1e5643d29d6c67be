"""The notifier's exceptions (all :class:`~forewarn.errors.ForewarnError`)."""

from __future__ import annotations

from forewarn.errors import ForewarnError

__all__ = ["DeliveryFailed", "NotifyError"]


class NotifyError(ForewarnError):
    """The notifier cannot start or go on (a channel it cannot build, settings that route nowhere)."""


class DeliveryFailed(NotifyError):
    """One attempt at sending to a channel failed. ``retriable`` False means the receiver refused
    this message for good (an HTTP 4xx, an SMTP 5xx for a recipient): sending it again cannot
    help, so it goes to the dead-letter topic at once. Anything else is retried with backoff."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable
