"""In-memory fakes of the Kafka and MQTT adapters, for unit tests only.

They keep the adapters' method names and semantics that matter to components (keyed
partitioning, delivery callbacks served on poll/flush, manual MQTT acks), so a component can
be unit-tested without a broker. Integration tests use the real brokers instead.
"""

from __future__ import annotations

import itertools
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FakeConsumer", "FakeMessage", "FakeMqtt", "FakeMqttMessage", "FakeProducer", "InMemoryKafka"]


@dataclass
class FakeMessage:
    """Looks like confluent_kafka.Message to the code that reads it."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: list[tuple[str, bytes]] | None
    _timestamp: int

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp)

    def error(self) -> None:
        return None


@dataclass
class InMemoryKafka:
    """Topics as lists of partitions; the same key always lands in the same partition."""

    partitions: int = 3
    topics: dict[str, list[list[FakeMessage]]] = field(default_factory=dict)

    def topic(self, name: str) -> list[list[FakeMessage]]:
        return self.topics.setdefault(name, [[] for _ in range(self.partitions)])

    def append(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]] | None,
               timestamp_ms: int, partition: int | None) -> FakeMessage:
        parts = self.topic(topic)
        p = partition if partition is not None else (zlib.crc32(key) % len(parts) if key else 0)
        message = FakeMessage(topic, p, len(parts[p]), key, value, headers, timestamp_ms)
        parts[p].append(message)
        return message

    def messages(self, topic: str) -> list[FakeMessage]:
        """Every record of a topic, partition by partition."""
        return [m for part in self.topic(topic) for m in part]


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


class FakeProducer:
    """Appends to an :class:`InMemoryKafka`; delivery callbacks run on ``poll``/``flush``.

    ``fail_next`` makes the next N deliveries report an error instead (to test retries).
    """

    def __init__(self, kafka: InMemoryKafka) -> None:
        self.kafka = kafka
        self._pending: list[tuple[Callable[[Any, Any], None] | None, Any, Any]] = []
        self.fail_next = 0
        self._clock = itertools.count(1_700_000_000_000)

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None, *,
                headers: Sequence[tuple[str, bytes | str]] | None = None, timestamp_ms: int | None = None,
                on_delivery: Callable[[Any, Any], None] | None = None, partition: int | None = None) -> None:
        hdrs = [(k, _as_bytes(v) or b"") for k, v in headers] if headers else None
        if self.fail_next > 0:
            self.fail_next -= 1
            self._pending.append((on_delivery, "simulated delivery failure", None))
            return
        message = self.kafka.append(topic, value, _as_bytes(key), hdrs,
                                    timestamp_ms if timestamp_ms is not None else next(self._clock), partition)
        self._pending.append((on_delivery, None, message))

    def poll(self, timeout_s: float = 0.0) -> int:
        pending, self._pending = self._pending, []
        for callback, error, message in pending:
            if callback is not None:
                callback(error, message)
        return len(pending)

    def flush(self, timeout_s: float = 30.0) -> int:
        self.poll()
        return 0

    def close(self, timeout_s: float = 30.0) -> None:
        self.flush()

    def __len__(self) -> int:
        return len(self._pending)


class FakeConsumer:
    """Reads every partition of ``topics`` from the start; ``commit`` records positions."""

    def __init__(self, kafka: InMemoryKafka, topics: Iterable[str]) -> None:
        self.kafka = kafka
        self.topics = list(topics)
        self.position: dict[tuple[str, int], int] = defaultdict(int)
        self.committed: dict[tuple[str, int], int] = {}

    def consume(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[FakeMessage]:
        out: list[FakeMessage] = []
        for topic in self.topics:
            for p, part in enumerate(self.kafka.topic(topic)):
                start = self.position[(topic, p)]
                take = part[start:start + max_messages - len(out)]
                out.extend(take)
                self.position[(topic, p)] = start + len(take)
                if len(out) >= max_messages:
                    return out
        return out

    def commit(self, asynchronous: bool = False) -> None:
        self.committed = dict(self.position)

    def close(self) -> None:
        return None


@dataclass
class FakeMqttMessage:
    topic: str
    payload: bytes
    qos: int = 1
    mid: int = 0
    retain: bool = False


class FakeMqtt:
    """An MQTT client double: ``deliver`` plays the broker, ``acks`` records manual acks."""

    def __init__(self) -> None:
        self.on_message: Callable[[Any], None] | None = None
        self.connected = False
        self.subscriptions: list[str] = []
        self.published: list[FakeMqttMessage] = []
        self.acks: list[int] = []
        self._mids = itertools.count(1)

    def connect(self, timeout_s: float = 10.0) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        self.subscriptions.extend(topics)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> FakeMqttMessage:
        message = FakeMqttMessage(topic, _as_bytes(payload) or b"", qos, next(self._mids), retain)
        self.published.append(message)
        return message

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)

    def deliver(self, topic: str, payload: bytes | str, qos: int = 1) -> FakeMqttMessage:
        """Hand a message to ``on_message`` as the broker would; returns it (with its mid)."""
        message = FakeMqttMessage(topic, _as_bytes(payload) or b"", qos, next(self._mids))
        if self.on_message is not None:
            self.on_message(message)
        return message
