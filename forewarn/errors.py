"""The root of Forewarn's exceptions. Every package raises subclasses of
:class:`ForewarnError`; the CLI turns them into one actionable line."""

from __future__ import annotations

__all__ = ["ConfigError", "ForewarnError", "KafkaError", "MqttError", "StackError"]


class ForewarnError(Exception):
    """Base of every error Forewarn raises on purpose.

    ``hint`` is what the user can do about it; the CLI prints ``message (hint)``.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        text = str(self).strip().replace("\n", " ")
        return f"{text} ({self.hint})" if self.hint else text


class ConfigError(ForewarnError):
    """Settings that cannot be read or do not make sense."""


class StackError(ForewarnError):
    """The local Mosquitto/Kafka stack could not be started, stopped or found."""


class KafkaError(ForewarnError):
    """A Kafka operation failed; keeps librdkafka's error code and whether a retry may help."""

    def __init__(self, message: str, *, code: str | None = None, retriable: bool = False,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.retriable = retriable


class MqttError(ForewarnError):
    """An MQTT operation failed (connect, subscribe, publish)."""

    def __init__(self, message: str, *, reason_code: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason_code = reason_code
