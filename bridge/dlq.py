"""The dead-letter topic: count its records by reason, and replay those that now pass.

Both read the whole topic, from its first to its current last record, without a consumer
group (nothing is committed): ``replay`` after a contract fix re-validates every matching
record and re-sends the ones that pass, with their original ingest time. Running it twice
re-sends twice; downstream drops duplicates by (machine_id, seq) as it does for the bridge's.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka

from bridge.errors import BridgeError
from forewarn.deadletter import DeadLetter
from forewarn.errors import KafkaError
from forewarn.kafka import KafkaConsumer, KafkaProducer
from forewarn.ports import ProducerLike
from forewarn.routing import Router
from forewarn.settings import KafkaSettings
from forewarn.topics import Topics

__all__ = ["ReplayResult", "read_dead_letters", "replay", "replay_records", "stats"]

log = logging.getLogger(__name__)


def read_dead_letters(kafka: KafkaSettings, topic: str, idle_timeout_s: float = 30.0) -> Iterator[DeadLetter]:
    """Every record of ``topic`` from the first to the last present when this starts."""
    consumer = KafkaConsumer(kafka, f"forewarn-dlq-reader-{uuid.uuid4().hex[:8]}")
    try:
        client = consumer.client
        try:
            metadata = client.list_topics(topic, timeout=10)
        except confluent_kafka.KafkaException as exc:
            raise BridgeError(f"cannot read topic {topic}: {exc}", hint="is Kafka running?") from None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise BridgeError(f"dead-letter topic {topic} not found", hint="check --topic-prefix")
        ends: dict[int, int] = {}
        assignment = []
        for partition in found.partitions:
            low, high = client.get_watermark_offsets(confluent_kafka.TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
                assignment.append(confluent_kafka.TopicPartition(topic, partition, low))
        if not ends:
            return
        client.assign(assignment)
        last = time.monotonic()
        while ends:
            messages = consumer.consume(1000, 0.5)
            if messages:
                last = time.monotonic()
            elif time.monotonic() - last > idle_timeout_s:
                raise BridgeError(f"no records from {topic} for {idle_timeout_s:.0f}s while "
                                  f"{len(ends)} partition(s) were not read to the end", hint="is Kafka healthy?")
            for message in messages:
                partition, offset = message.partition(), message.offset()
                yield DeadLetter.from_message(message)
                if partition in ends and offset + 1 >= ends[partition]:
                    del ends[partition]
    finally:
        consumer.close()


def stats(kafka: KafkaSettings, topics: Topics) -> collections.Counter[str]:
    """How many dead-letter records there are, by reason."""
    return collections.Counter(letter.reason for letter in read_dead_letters(kafka, topics.dlq))


@dataclass
class ReplayResult:
    scanned: int = 0
    matched: int = 0
    replayed_payloads: int = 0
    records_sent: int = 0
    still_invalid: collections.Counter[str] = field(default_factory=collections.Counter)


def replay_records(letters: Iterator[DeadLetter], router: Router, producer: ProducerLike,
                   reason: str | None = None) -> ReplayResult:
    """Re-validate ``letters`` (those with ``reason``, or all) and send those that pass."""
    result = ReplayResult()
    failures: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    for letter in letters:
        result.scanned += 1
        if reason is not None and letter.reason != reason:
            continue
        result.matched += 1
        routed = router.route_dead_letter(letter.mqtt_topic, letter.kind, letter.value, letter.received_at)
        if routed.rejected or not routed.records:
            result.still_invalid.update(routed.rejected or ["no_records"])
            continue
        for record in routed.records:
            headers = [*record.headers, ("replayed_from", f"{letter.partition}:{letter.offset}".encode())]
            producer.produce(record.topic, record.value, record.key, headers=headers,
                             timestamp_ms=record.timestamp_ms, on_delivery=delivered)
            result.records_sent += 1
        result.replayed_payloads += 1
        producer.poll(0)
    left = producer.flush(60)
    if left or failures:
        raise BridgeError(f"replay: {len(failures)} record(s) failed and {left} not confirmed by Kafka",
                          hint="run the replay again once Kafka is healthy (duplicates are harmless)")
    return result


def replay(kafka: KafkaSettings, topics: Topics, reason: str | None = None) -> ReplayResult:
    """``forewarn dlq replay``: re-validate the dead-letter topic and re-send what passes."""
    producer = KafkaProducer(kafka, **{"message.timeout.ms": 120_000})
    try:
        return replay_records(read_dead_letters(kafka, topics.dlq), Router(topics), producer, reason)
    except KafkaError as error:
        raise BridgeError(f"replay failed: {error}", hint="is Kafka running?") from None
    finally:
        producer.close(timeout_s=5)
