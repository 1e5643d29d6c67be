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
    """A Kafka operation failed. Keeps what librdkafka said about it, so callers decide by the
    broker's classification and never by parsing the message:

    - ``code``: librdkafka's name of the error (``MSG_SIZE_TOO_LARGE``, ``_FENCED``,
      ``UNKNOWN_TOPIC_OR_PART``, ...), ``None`` when the failure did not come from librdkafka;
    - ``retriable``: the same call may succeed when tried again;
    - ``fatal``: the client can no longer be used (a fenced transactional producer, ...): close it
      and build a new one;
    - ``txn_requires_abort``: the current transaction cannot be committed; abort it and start over
      from the last committed state.

    The flags are librdkafka's for the transactional and admin APIs; on a produce or delivery
    error confluent-kafka leaves them False whatever the code (``fatal`` is set only on a fatal
    client error raised from ``poll``/``flush``). What a produce or delivery error means is
    :func:`forewarn.kafka.classify`, by ``code``.
    """

    def __init__(self, message: str, *, code: str | None = None, retriable: bool = False, fatal: bool = False,
                 txn_requires_abort: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.retriable = retriable
        self.fatal = fatal
        self.txn_requires_abort = txn_requires_abort


class MqttError(ForewarnError):
    """An MQTT operation failed (connect, subscribe, publish)."""

    def __init__(self, message: str, *, reason_code: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason_code = reason_code
