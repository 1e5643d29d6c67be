"""The dead-letter topic: count its records by reason, and replay those that now pass.

Both read the whole topic, from its first to its current last record, without a consumer
group (nothing is committed): ``replay`` after a contract fix re-validates every matching
record — whichever component wrote it: bridge, edge or scoring worker
(:meth:`forewarn.routing.Router.route_dead_letter`) — and re-sends the ones that pass, with
their original ingest time. Running it twice
re-sends twice; downstream drops duplicates by (machine_id, seq) as it does for the bridge's.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import BridgeError
from forewarn.deadletter import DeadLetter
from forewarn.errors import KafkaError
from forewarn.kafka import KafkaProducer, read_to_end
from forewarn.ports import ConsumerLike, ProducerLike
from forewarn.routing import Router
from forewarn.settings import KafkaSettings
from forewarn.topics import Topics

__all__ = ["ReplayResult", "read_dead_letters", "replay", "replay_records", "stats"]

log = logging.getLogger(__name__)


def read_dead_letters(kafka: KafkaSettings | ConsumerLike, topic: str,
                      idle_timeout_s: float = 30.0) -> Iterator[DeadLetter]:
    """Every record of ``topic`` from the first to the last present when this starts, read by a
    private consumer (or by ``kafka`` itself when it is a consumer, e.g. a test's fake)."""
    try:
        for message in read_to_end(kafka, topic, idle_timeout_s=idle_timeout_s):
            yield DeadLetter.from_message(message)
    except KafkaError as error:
        if error.code == "UNKNOWN_TOPIC_OR_PART":
            raise BridgeError(f"dead-letter topic {topic} not found", hint="check --topic-prefix") from None
        raise BridgeError(f"cannot read topic {topic}: {error.one_line()}", hint="is Kafka running?") from None


def stats(kafka: KafkaSettings | ConsumerLike, topics: Topics) -> collections.Counter[str]:
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
