"""Per-machine state and its changelog in the compacted ``scoring.state`` topic.

Recovery design (see ``scoring/README.md``): every transaction that commits consumer offsets
also writes, to the same partition number of ``scoring.state``,

* one record per machine touched by the transaction (key = machine_id): its window slot
  (ring buffer, position, count, seq high-water mark, imputation bookkeeping) and its alert
  state, and
* one marker per assigned partition (key = :data:`MARKER_KEY`) holding the telemetry and
  maintenance offsets that the transaction commits.

Because the records, the marker and the offsets are committed atomically, the latest record
of every key up to the marker equal to the committed offsets *is* the state at those offsets.
A worker that gets a partition reads its changelog partition up to that marker and resumes
from the committed offsets: nothing is replayed, nothing is scored twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import confluent_kafka
import msgspec

from forewarn.kafka import KafkaConsumer
from forewarn.settings import KafkaSettings
from scoring.alerts import MachineAlerts
from scoring.errors import RecoveryError

__all__ = ["MARKER_KEY", "MachineRecord", "Marker", "PartitionState", "restore_partitions"]

log = logging.getLogger(__name__)

MARKER_KEY = b"~offsets"
NO_OFFSET = -1


class Marker(msgspec.Struct, frozen=True, array_like=True):
    """The offsets (next to read) one transaction committed for one partition."""

    telemetry: int
    maintenance: int


class MachineRecord(msgspec.Struct, frozen=True, array_like=True):
    """One machine's state: its window slot (``window_sig`` says which store it fits) and alerts."""

    asset_type: str
    window_sig: str
    window: bytes
    alerts: MachineAlerts | None = None
    held: list[tuple[bytes, int]] = []  # readings held back for reordering: (JSON, ingest_ts or -1)


_marker_encoder = msgspec.msgpack.Encoder()
_marker_decoder = msgspec.msgpack.Decoder(Marker)
_record_decoder = msgspec.msgpack.Decoder(MachineRecord)


def encode_marker(marker: Marker) -> bytes:
    return _marker_encoder.encode(marker)


def encode_record(record: MachineRecord) -> bytes:
    return _marker_encoder.encode(record)


def decode_record(data: bytes) -> MachineRecord:
    return _record_decoder.decode(data)


@dataclass
class PartitionState:
    """What the changelog held for one partition, as of its committed offsets."""

    partition: int
    target: Marker
    records: dict[str, MachineRecord] = field(default_factory=dict)
    done: bool = False


def restore_partitions(settings: KafkaSettings, state_topic: str, targets: dict[int, Marker],
                       *, group_id: str, timeout_s: float = 120.0) -> dict[int, PartitionState]:
    """Read ``state_topic``'s partitions up to the marker equal to each partition's committed
    offsets and return the latest record of every machine seen before it.

    A partition whose target is ``(-1, -1)`` (nothing committed yet) starts empty.
    """
    states = {p: PartitionState(p, target) for p, target in targets.items()}
    pending = {p for p, s in states.items() if s.target != Marker(NO_OFFSET, NO_OFFSET)}
    for p in set(states) - pending:
        states[p].done = True
    if not pending:
        return states
    started = time.monotonic()
    consumer = KafkaConsumer(settings, group_id, (), **{"enable.auto.offset.store": False})
    try:
        client = consumer.client
        client.assign([confluent_kafka.TopicPartition(state_topic, p, confluent_kafka.OFFSET_BEGINNING)
                       for p in sorted(pending)])
        buffers: dict[int, dict[str, bytes]] = {p: {} for p in pending}
        while pending:
            if time.monotonic() - started > timeout_s:
                raise RecoveryError(
                    f"{state_topic}: no state marker for partitions {sorted(pending)} matching the committed "
                    f"offsets after {timeout_s:.0f}s",
                    hint="the state changelog was deleted or truncated; reset the consumer group's offsets")
            for message in consumer.consume(5000, 0.5):
                p = message.partition()
                if p not in pending:
                    continue
                key = message.key() or b""
                value = message.value() or b""
                if key == MARKER_KEY:
                    if _marker_decoder.decode(value) == states[p].target:
                        pending.discard(p)
                        states[p].records = {k: decode_record(v) for k, v in buffers.pop(p).items()}
                        states[p].done = True
                else:
                    buffers[p][key.decode()] = value
            if pending:
                _check_not_exhausted(client, state_topic, pending, states)
    finally:
        consumer.close()
    log.info("restored state of partitions %s (%s machines) in %.2fs", sorted(states),
             sum(len(s.records) for s in states.values()), time.monotonic() - started)
    return states


def _check_not_exhausted(client: confluent_kafka.Consumer, topic: str, pending: set[int],
                         states: dict[int, PartitionState]) -> None:
    """Fail fast when a partition was read to its end without finding its marker."""
    for p in list(pending):
        tp = confluent_kafka.TopicPartition(topic, p)
        position = client.position([tp])[0].offset
        _low, high = client.get_watermark_offsets(tp, timeout=5.0, cached=False)
        if position >= 0 and high >= 0 and position >= high:
            raise RecoveryError(
                f"{topic}[{p}]: read to the end without a marker for committed offsets "
                f"{states[p].target.telemetry}/{states[p].target.maintenance}",
                hint="the state changelog does not match the consumer group; reset the group's offsets")

