"""Per-machine state and its changelog in the compacted ``scoring.state`` topic.

Recovery design (see ``scoring/README.md``): every transaction that commits consumer offsets
also writes, to the same partition number of ``scoring.state``,

* one record per machine touched by the transaction (key = machine_id): its window slot
  (ring buffer, position, count, imputation bookkeeping, and the identity state that tells a
  restart from a duplicate: epoch ``boot``, last ``seq`` and ``ts``, the epoch's start, the
  recent seqs accepted; see :mod:`forewarn.windows`), its alert state (with the identities of
  its last repairs) and the readings held back for reordering, and
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

import msgspec

from forewarn.errors import KafkaError
from forewarn.kafka import OFFSET_BEGINNING, TopicPartition, read_to_end
from forewarn.ports import ConsumerLike
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
    """One machine's state: its window slot (``window_sig`` says which store it fits; the slot
    carries the machine's epoch, so a restarted worker applies the restart rule as before) and
    alerts. Records written before epochs and repair identities existed still decode and load."""

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


_MARKER_RETRY_S = 0.2


def _read_markers(consumer: ConsumerLike, state_topic: str, states: dict[int, PartitionState], pending: set[int],
                  timeout_s: float) -> None:
    """One read of the ``pending`` partitions from their start to their current end: each one
    whose marker is found gets its records and leaves ``pending``."""
    buffers: dict[int, dict[str, bytes]] = {p: {} for p in pending}
    source = [TopicPartition(state_topic, p, OFFSET_BEGINNING) for p in sorted(pending)]
    try:
        for message in read_to_end(consumer, source, idle_timeout_s=timeout_s, max_messages=5000):
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
                    if not pending:
                        break  # what follows the markers is not part of the committed state
            else:
                buffers[p][key.decode()] = value
    except KafkaError as error:
        # Kafka not answering for a partition (its only replica down, a leader being elected) is
        # not a broken changelog: the caller tries again later (the worker's recovery does).
        log.warning("%s: cannot read the state changelog of partitions %s yet: %s", state_topic, sorted(pending),
                    error.one_line())
        raise


def restore_partitions(consumer: ConsumerLike, state_topic: str, targets: dict[int, Marker],
                       *, timeout_s: float = 120.0) -> dict[int, PartitionState]:
    """Read ``state_topic``'s partitions up to the marker equal to each partition's committed
    offsets and return the latest record of every machine seen before it.

    ``consumer`` is a reader outside any group (its assignment is replaced; the caller closes
    it). A partition whose target is ``(-1, -1)`` (nothing committed yet) starts empty. A
    partition read to its end without its marker is read again until ``timeout_s`` has passed,
    then raises :class:`RecoveryError`, as does ``timeout_s`` without progress; a Kafka error (a
    partition without a leader, say) is raised as it is, for the caller to try again.
    """
    states = {p: PartitionState(p, target) for p, target in targets.items()}
    pending = {p for p, s in states.items() if s.target != Marker(NO_OFFSET, NO_OFFSET)}
    for p in set(states) - pending:
        states[p].done = True
    if not pending:
        return states
    started = time.monotonic()
    while True:
        _read_markers(consumer, state_topic, states, pending, timeout_s)
        if not pending:
            break
        # The previous owner's transaction commits its offsets and its changelog marker, but
        # Kafka writes the commit markers partition by partition: the offsets can be visible a
        # moment before the marker is. Read again (from the start) until the marker shows, for
        # up to ``timeout_s``; a marker still missing then is a changelog that does not match.
        if time.monotonic() - started > timeout_s:
            first = min(pending)
            raise RecoveryError(
                f"{state_topic}[{first}]: read to the end without a marker for committed offsets "
                f"{states[first].target.telemetry}/{states[first].target.maintenance}",
                hint="the state changelog does not match the consumer group; reset the group's offsets")
        log.info("%s: no marker yet for the committed offsets of partitions %s; reading again", state_topic,
                 sorted(pending))
        time.sleep(_MARKER_RETRY_S)
    log.info("restored state of partitions %s (%s machines) in %.2fs", sorted(states),
             sum(len(s.records) for s in states.values()), time.monotonic() - started)
    return states
