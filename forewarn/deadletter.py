"""The dead-letter record: one definition for every component that writes ``telemetry.dlq``.

The bridge, the edge gateway and the scoring workers dead-letter what they cannot process, and
``forewarn dlq stats|replay`` and the dashboard read it back, so all of them build and parse
the record here. A dead letter keeps the original bytes as its value and says in its headers:

``reason``       the contract's reason code (:class:`~forewarn.contract.Reason`)
``detail``       a human-readable line
``kind``         what the payload is (:class:`Kind`): replay re-validates it as that
``mqtt_topic``   the MQTT topic it arrived on, or the one its machine publishes on when it came
                 from Kafka (so replay can route it like a fresh message); may be empty
``received_at``  epoch ms when the writing component received the payload
``origin``       the component that wrote it (``bridge``, ``edge``, ``scoring``)
``kafka_topic``  the Kafka topic it was read from or refused by, when Kafka was involved

and, when they apply, ``truncated_from`` (the payload's length before it was cut),
``kafka_refused`` (Kafka's error when a dead letter itself was refused) and
``replayed_from`` (``partition:offset`` of the dead letter a replayed record came from).

:class:`RefusalPolicy` is the one rule for records Kafka refuses for good — those it can never
store, by :func:`forewarn.kafka.classify` (too large, invalid, ...; a time-out, an authorization
error or a fatal producer error never is) —, used by the bridge and the edge alike: a refused
record is sent again alone (Kafka fails a whole produce request for one bad record, so its
neighbours may be innocent); refused ``dead_letter_after`` times, at least
once alone, it is replaced by its dead letter; a dead letter the dead-letter topic refuses is cut
to :data:`REFUSED_CUT_BYTES`; when even that is refused, :meth:`RefusalPolicy.replace` answers
``None`` and the component's last resort applies (the edge keeps it in a local table; the
bridge, which has no storage of its own, drops it with an ERROR line and a metric).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from forewarn.contract import Reason, Rejected
from forewarn.ports import MessageLike
from forewarn.topics import maintenance_topic, telemetry_topic

__all__ = [
    "INGEST_HEADER",
    "REFUSED_CUT_BYTES",
    "DeadLetter",
    "Headers",
    "Kind",
    "Origin",
    "Record",
    "RefusalPolicy",
    "ingest_ms",
]

INGEST_HEADER: Final = "ingest_ts"
"""Header on every record the bridge or edge forwards: epoch ms when the MQTT message arrived."""

REFUSED_CUT_BYTES: Final = 1024
"""A dead letter the dead-letter topic refuses is sent again cut to this many bytes."""

Headers = list[tuple[str, bytes]]


def ingest_ms(headers: Iterable[tuple[str, bytes | None]] | None) -> int | None:
    """The arrival time a record's :data:`INGEST_HEADER` carries; ``None`` when absent or not
    ASCII digits."""
    for key, value in headers or ():
        if key == INGEST_HEADER:
            return int(value) if value and value.isdigit() else None
    return None


class Record(NamedTuple):
    """One Kafka record to produce."""

    topic: str
    value: bytes
    key: str | None
    timestamp_ms: int | None
    headers: Headers


class Kind(enum.StrEnum):
    """What a payload is; the dead letter's ``kind`` header, which replay re-validates it as."""

    TELEMETRY = "telemetry"
    BATCH = "batch"
    READING = "reading"  # one reading of a gateway batch, alone in the DLQ
    MAINTENANCE = "maintenance"
    PREDICTION = "prediction"  # the edge's outputs, dead-lettered when Kafka refuses them
    ALERT = "alert"
    UNKNOWN = "unknown"


class Origin(enum.StrEnum):
    """The component that wrote a dead letter (its ``origin`` header)."""

    BRIDGE = "bridge"
    EDGE = "edge"
    SCORING = "scoring"
    UNKNOWN = "unknown"


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value is not None else ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter: the payload and why it was refused. Build it with :meth:`rejected`,
    :meth:`from_kafka` or :meth:`refused`; write it with :meth:`record`; read one back with
    :meth:`from_message` (unknown or missing headers get neutral values, never an error)."""

    value: bytes
    reason: str
    detail: str
    kind: Kind
    mqtt_topic: str
    received_at: int
    origin: Origin
    kafka_topic: str = ""
    truncated_from: int | None = None
    kafka_refused: str = ""
    partition: int = -1  # where it was read from, when it was read from the dead-letter topic
    offset: int = -1

    # -- building ----------------------------------------------------------------------

    @classmethod
    def rejected(cls, rejected: Rejected, *, mqtt_topic: str, kind: Kind, received_at: int, origin: Origin,
                 kafka_topic: str = "") -> DeadLetter:
        """A payload the contract refused, as it arrived on ``mqtt_topic``."""
        return cls(rejected.raw, str(rejected.reason), rejected.detail, kind, mqtt_topic, received_at, origin,
                   kafka_topic)

    @classmethod
    def from_kafka(cls, rejected: Rejected, *, source_topic: str, kind: Kind, key: bytes | None, received_at: int,
                   origin: Origin) -> DeadLetter:
        """A record read from Kafka (``source_topic``) that a consumer could not process. Its
        ``mqtt_topic`` is the one its machine (the record's key) publishes on, so that
        ``forewarn dlq replay`` re-validates it like a fresh message."""
        machine = _text(key)
        mqtt = ""
        if machine.count("/") == 1 and all(machine.split("/")):
            if kind is Kind.MAINTENANCE:
                mqtt = maintenance_topic(machine)
            elif kind is Kind.TELEMETRY:
                mqtt = telemetry_topic(machine)
        return cls(rejected.raw, str(rejected.reason), rejected.detail, kind, mqtt, received_at, origin,
                   kafka_topic=source_topic)

    @classmethod
    def refused(cls, *, value: bytes | None, kafka_topic: str, error: str, mqtt_topic: str, kind: Kind,
                received_at: int, origin: Origin) -> DeadLetter:
        """A valid record that Kafka refused for good on ``kafka_topic`` (reason ``kafka_refused``)."""
        return cls(value or b"", str(Reason.KAFKA_REFUSED), f"{kafka_topic}: {error}", kind, mqtt_topic,
                   received_at, origin, kafka_topic=kafka_topic)

    # -- writing -----------------------------------------------------------------------

    def headers(self) -> Headers:
        headers: Headers = [
            ("reason", self.reason.encode()),
            ("detail", self.detail.encode("utf-8", "replace")),
            ("kind", str(self.kind).encode()),
            ("mqtt_topic", self.mqtt_topic.encode("utf-8", "replace")),
            ("received_at", b"%d" % self.received_at),
            ("origin", str(self.origin).encode()),
        ]
        if self.kafka_topic:
            headers.append(("kafka_topic", self.kafka_topic.encode("utf-8", "replace")))
        if self.truncated_from is not None:
            headers.append(("truncated_from", b"%d" % self.truncated_from))
        if self.kafka_refused:
            headers.append(("kafka_refused", self.kafka_refused.encode("utf-8", "replace")))
        return headers

    def record(self, dlq_topic: str, max_bytes: int | None = None) -> Record:
        """The Kafka record for ``dlq_topic``, keyed by the MQTT topic, stamped with the
        receive time; a value longer than ``max_bytes`` is cut (``truncated_from`` says so)."""
        letter = self.cut(max_bytes) if max_bytes is not None else self
        return Record(dlq_topic, letter.value, letter.mqtt_topic or None, letter.received_at, letter.headers())

    def cut(self, max_bytes: int, refused_error: str = "") -> DeadLetter:
        """This dead letter with its value cut to ``max_bytes`` (unchanged when it fits)."""
        refused = refused_error or self.kafka_refused
        if len(self.value) <= max_bytes:
            return self if refused == self.kafka_refused else dataclasses.replace(self, kafka_refused=refused)
        original = self.truncated_from if self.truncated_from is not None else len(self.value)
        return dataclasses.replace(self, value=self.value[:max_bytes], truncated_from=original,
                                   kafka_refused=refused)

    # -- reading -----------------------------------------------------------------------

    @classmethod
    def from_message(cls, message: MessageLike) -> DeadLetter:
        """Parse a record of the dead-letter topic (written by any version of any component)."""
        return cls._parse(message.value() or b"", message.headers(), message.timestamp()[1],
                          message.partition() or 0, message.offset() or 0)

    @classmethod
    def from_record(cls, record: Record) -> DeadLetter:
        """Parse a dead-letter record not yet written (one :meth:`record` built), e.g. to replace
        it when the dead-letter topic refuses it."""
        return cls._parse(record.value, record.headers, record.timestamp_ms or 0, -1, -1)

    @classmethod
    def _parse(cls, value: bytes, raw_headers: Sequence[tuple[str, bytes]] | None, timestamp: int, partition: int,
               offset: int) -> DeadLetter:
        headers: dict[str, bytes] = {}
        for name, header in raw_headers or ():
            if isinstance(header, bytes):
                headers[name] = header
        received = _text(headers.get("received_at"))
        truncated = _text(headers.get("truncated_from"))
        kind = _text(headers.get("kind"))
        origin = _text(headers.get("origin"))
        mqtt = _text(headers.get("mqtt_topic"))
        kafka_topic = _text(headers.get("kafka_topic") or headers.get("source_topic"))
        return cls(
            value=value,
            reason=_text(headers.get("reason")) or "unknown",
            detail=_text(headers.get("detail")),
            kind=Kind(kind) if kind in Kind.__members__.values() else Kind.UNKNOWN,
            mqtt_topic=mqtt,
            received_at=int(received) if received.isascii() and received.isdigit() else max(0, timestamp),
            origin=Origin(origin) if origin in Origin.__members__.values() else Origin.UNKNOWN,
            kafka_topic=kafka_topic,
            truncated_from=int(truncated) if truncated.isascii() and truncated.isdigit() else None,
            kafka_refused=_text(headers.get("kafka_refused")),
            partition=partition,
            offset=offset,
        )


class RefusalPolicy:
    """What happens to a record Kafka refuses for good (see the module docstring): one rule for
    the bridge and the edge. Keyed by whatever identifies a record in the caller (an outbox row
    id, a message and index); :meth:`forget` once it was delivered or replaced."""

    def __init__(self, dead_letter_after: int, cut_bytes: int = REFUSED_CUT_BYTES) -> None:
        if dead_letter_after < 1:
            raise ValueError("dead_letter_after must be at least 1")
        self.dead_letter_after = dead_letter_after
        self.cut_bytes = cut_bytes
        self._refusals: dict[Hashable, tuple[int, bool]] = {}

    def refused(self, key: Hashable, *, alone: bool) -> bool:
        """Count one refusal of ``key`` (``alone``: it was the only record of its request).
        True when it is to be replaced by its dead letter now: refused ``dead_letter_after``
        times, at least once alone. Until then, the caller sends it again alone."""
        count, seen_alone = self._refusals.get(key, (0, False))
        count, seen_alone = count + 1, seen_alone or alone
        if count >= self.dead_letter_after and seen_alone:
            self._refusals.pop(key, None)  # absent when the first refusal already decides
            return True
        self._refusals[key] = (count, seen_alone)
        return False

    def refusals(self, key: Hashable) -> int:
        return self._refusals.get(key, (0, False))[0]

    def forget(self, *keys: Hashable) -> None:
        """Drop what is counted for ``keys`` (delivered, or replaced by a dead letter)."""
        for key in keys:
            self._refusals.pop(key, None)

    def replace_refused_letter(self, letter: DeadLetter, error: str) -> DeadLetter | None:
        """A dead letter the dead-letter topic refused for good: the same cut to ``cut_bytes``
        (with Kafka's error in ``kafka_refused``), or None when it was already that short — then
        the caller's last resort applies."""
        if len(letter.value) <= self.cut_bytes:
            return None
        return letter.cut(self.cut_bytes, error)
