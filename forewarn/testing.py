"""In-memory fakes of the Kafka and MQTT adapters, for unit tests only.

They speak the adapters' API (:class:`forewarn.ports.ProducerLike`,
:class:`~forewarn.ports.TransactionalProducerLike`, :class:`~forewarn.ports.ConsumerLike`,
:class:`~forewarn.ports.MqttLike`) with the semantics components rely on, so a component can be
unit-tested without a broker:

- a partition is a log: every record and every transaction marker takes the next offset, and the
  same key always lands in the same partition;
- delivery callbacks run on ``poll``/``flush``, never inside ``produce``;
- transactions: what a transaction produced is in the log at once, but a ``read_committed``
  consumer sees it only once committed, never when aborted, and reads no further than the first
  offset of a transaction still open (the last stable offset); ``read_uncommitted`` sees it all.
  A newer producer with the same transactional id fences the older one (fatal ``_FENCED``) and
  aborts what it left open; offsets sent to a transaction become the group's committed offsets on
  commit, and a stale group generation makes them fail with an abortable ``ILLEGAL_GENERATION``;
- consumer groups: a subscribed consumer joins its group at its first ``consume``; partitions are
  shared among the members by range, rebalance callbacks run inside ``consume`` (and ``on_revoke``
  on ``close``); every member acts on a rebalance at its own next ``consume`` (members do not wait
  for each other); commits are stored per group;
- errors are :class:`forewarn.errors.KafkaError` built from real ``confluent_kafka.KafkaError``
  objects, exactly as the adapter builds them; delivery reports carry such objects too, with
  ``retriable()`` and ``fatal()`` False whatever the code, as confluent-kafka builds them;
- a fatal producer error (``FakeProducer.fatal_next``) behaves as librdkafka's: the record that
  met it is not written and its report carries the code; the next ``poll``/``flush`` raises it
  once with ``fatal`` set; every ``produce`` after it raises ``_FATAL`` until ``rebuild()``,
  which drops the reports not served yet (as abandoning a real client does).

Fakes never wait: ``consume`` and ``poll`` return at once, whatever their timeout.
Integration tests use the real brokers instead.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import confluent_kafka

from forewarn.errors import KafkaError
from forewarn.kafka import OFFSET_BEGINNING, OFFSET_END, OFFSET_INVALID, TopicPartition, kafka_error

__all__ = [
    "FakeConsumer",
    "FakeGroupMetadata",
    "FakeMessage",
    "FakeMqtt",
    "FakeMqttMessage",
    "FakeProducer",
    "InMemoryKafka",
    "broker_error",
]

_E = confluent_kafka.KafkaError
RebalanceCallback = Callable[[list[Any]], None]


def broker_error(code: int, reason: str | None = None, *, fatal: bool = False, retriable: bool = False,
                 txn_requires_abort: bool = False) -> confluent_kafka.KafkaError:
    """A real ``confluent_kafka.KafkaError`` for one of its codes (``KafkaError.MSG_SIZE_TOO_LARGE``,
    ``KafkaError._FENCED``, ...), with librdkafka's text for it unless ``reason`` is given."""
    return confluent_kafka.KafkaError(code, reason, fatal=fatal, retriable=retriable,
                                      txn_requires_abort=txn_requires_abort)


class _Transaction:
    """One transaction of one producer: ``open``, then ``committed`` or ``aborted``."""

    __slots__ = ("offsets", "state", "touched")

    def __init__(self) -> None:
        self.state: Literal["open", "committed", "aborted"] = "open"
        self.touched: set[tuple[str, int]] = set()
        self.offsets: dict[str, dict[tuple[str, int], int]] = {}  # group -> offsets, applied on commit


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
    _error: confluent_kafka.KafkaError | None = None
    _txn: _Transaction | None = field(default=None, repr=False, compare=False)
    _control: bool = False  # a transaction marker: takes an offset, is never delivered

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
        return (confluent_kafka.TIMESTAMP_CREATE_TIME, self._timestamp)

    def error(self) -> confluent_kafka.KafkaError | None:
        return self._error

    def visible(self, read_committed: bool) -> bool:
        """Whether a consumer with that isolation level is handed this entry."""
        if self._control:
            return False
        txn = self._txn
        if txn is None or not read_committed:
            return True
        return txn.state == "committed"


@dataclass
class _Group:
    members: list[FakeConsumer] = field(default_factory=list)
    generation: int = 0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    layout: dict[str, int] = field(default_factory=dict)  # partitions of the subscribed topics, as last assigned
    metadata_version: int = -1


@dataclass(frozen=True)
class FakeGroupMetadata:
    """What :meth:`FakeConsumer.consumer_group_metadata` hands to a transaction."""

    group_id: str
    generation: int  # -1: not a group member (partitions assigned by hand)
    member_id: str


@dataclass
class InMemoryKafka:
    """Topics as lists of partitions (logs of :class:`FakeMessage`, transaction markers
    included), consumer groups and transactional ids. Producing to a topic creates it with
    ``partitions`` partitions, as a broker with automatic topic creation would."""

    partitions: int = 3
    topics: dict[str, list[list[FakeMessage]]] = field(default_factory=dict)
    groups: dict[str, _Group] = field(default_factory=dict)
    _epochs: dict[str, int] = field(default_factory=dict)
    _open: dict[str, _Transaction] = field(default_factory=dict)
    _metadata_version: int = 0
    _clock: Iterator[int] = field(default_factory=lambda: itertools.count(1_700_000_000_000))

    def create_topic(self, name: str, partitions: int | None = None) -> list[list[FakeMessage]]:
        """Create ``name`` (if missing) with ``partitions`` partitions; returns its partitions."""
        if name not in self.topics:
            self.topics[name] = [[] for _ in range(partitions or self.partitions)]
            self._metadata_version += 1
        return self.topics[name]

    def topic(self, name: str) -> list[list[FakeMessage]]:
        """The partitions of ``name`` (created when missing)."""
        return self.topics[name] if name in self.topics else self.create_topic(name)

    def append(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]] | None,
               timestamp_ms: int, partition: int | None, txn: _Transaction | None = None) -> FakeMessage:
        """Write one record (outside any transaction unless ``txn``); returns it with its offset."""
        parts = self.topic(topic)
        if partition is None or partition < 0:
            p = zlib.crc32(key) % len(parts) if key else 0
        elif partition >= len(parts):
            raise kafka_error(broker_error(_E._UNKNOWN_PARTITION), f"produce to {topic}[{partition}]")
        else:
            p = partition
        message = FakeMessage(topic, p, len(parts[p]), key, value, headers, timestamp_ms, None, txn)
        parts[p].append(message)
        if txn is not None:
            txn.touched.add((topic, p))
        return message

    def consumer(self, group_id: str | None = None, topics: Iterable[str] = (), **overrides: Any) -> FakeConsumer:
        """A :class:`FakeConsumer` built like ``KafkaConsumer(settings, group_id, topics, **overrides)``:
        of the librdkafka overrides, ``isolation.level`` and ``auto.offset.reset`` apply, the rest
        is ignored. Lets a client factory serve fakes and real clients alike."""
        isolation = overrides.get("isolation.level", "read_committed")
        reset = overrides.get("auto.offset.reset", "earliest")
        return FakeConsumer(self, topics, group_id=group_id, isolation_level=isolation,
                            auto_offset_reset="latest" if reset in ("latest", "largest", "end") else "earliest")

    def producer(self, **overrides: Any) -> FakeProducer:
        """A :class:`FakeProducer` built like ``KafkaProducer(settings, **overrides)``: of the
        librdkafka overrides only ``transactional.id`` applies."""
        return FakeProducer(self, transactional_id=overrides.get("transactional.id"))

    def messages(self, topic: str) -> list[FakeMessage]:
        """Every record of a topic a ``read_committed`` reader sees, partition by partition
        (no markers, nothing aborted, nothing of an open transaction)."""
        return [m for part in self.topic(topic) for m in part if m.visible(read_committed=True)]

    def committed(self, group_id: str) -> dict[tuple[str, int], int]:
        """What ``group_id`` committed, ``{(topic, partition): next offset}``."""
        return dict(self.group(group_id).committed)

    def group(self, group_id: str) -> _Group:
        return self.groups.setdefault(group_id, _Group())

    def last_stable_offset(self, topic: str, partition: int) -> int:
        """The first offset of a transaction still open, else the end of the partition."""
        part = self.topic(topic)[partition]
        for entry in part:
            if entry._txn is not None and entry._txn.state == "open":
                return entry._offset
        return len(part)

    def _end(self, txn: _Transaction, state: Literal["committed", "aborted"]) -> None:
        """Close a transaction: its state, then one marker in every partition it wrote to."""
        txn.state = state
        for topic, p in sorted(txn.touched):
            part = self.topics[topic][p]
            part.append(FakeMessage(topic, p, len(part), None, None, None, self._now(), None, txn, True))
        if state == "committed":
            for group_id, offsets in txn.offsets.items():
                self.group(group_id).committed.update(offsets)

    def _now(self) -> int:
        return next(self._clock)


def _fenced_error() -> confluent_kafka.KafkaError:
    return broker_error(_E._FENCED, "This instance has been fenced by a newer instance", fatal=True)


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


class FakeProducer:
    """Appends to an :class:`InMemoryKafka`; delivery callbacks run on ``poll``/``flush``.

    ``fail_next`` makes the next N deliveries report ``delivery_error`` instead (the record is
    not written; by default ``_MSG_TIMED_OUT``, what a ``message.timeout.ms`` expiry reports).
    ``fatal_next`` makes the next record meet that fatal error (see the module). ``rebuilds``
    counts :meth:`rebuild` calls. With ``transactional_id`` it is a transactional producer.
    """

    def __init__(self, kafka: InMemoryKafka, *, transactional_id: str | None = None) -> None:
        self.kafka = kafka
        self.transactional_id = transactional_id
        self._pending: list[tuple[Callable[[Any, Any], None] | None, Any, Any]] = []
        self.fail_next = 0
        self.delivery_error: confluent_kafka.KafkaError = broker_error(_E._MSG_TIMED_OUT)
        self.fatal_next: confluent_kafka.KafkaError | None = None
        self.rebuilds = 0
        self._broken: confluent_kafka.KafkaError | None = None  # the fatal error met, until rebuild()
        self._raise_broken = False  # the next poll/flush raises it
        self._clock = itertools.count(1_700_000_000_000)
        self._epoch: int | None = None
        self._txn: _Transaction | None = None
        self._txn_failed: confluent_kafka.KafkaError | None = None
        self._fatal: confluent_kafka.KafkaError | None = None

    # -- producing -------------------------------------------------------------------------

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None, *,
                headers: Sequence[tuple[str, bytes | str]] | None = None, timestamp_ms: int | None = None,
                on_delivery: Callable[[Any, Any], None] | None = None, partition: int | None = None) -> None:
        hdrs = [(k, _as_bytes(v) or b"") for k, v in headers] if headers else None
        bkey = _as_bytes(key)
        if self._broken is not None:
            raise kafka_error(broker_error(_E._FATAL), f"produce to {topic}")
        if self.fatal_next is not None:
            fatal, self.fatal_next = self.fatal_next, None
            self._broken, self._raise_broken = fatal, True
            report = broker_error(fatal.code(), fatal.str())  # a delivery report's error: no flags
            unsent = FakeMessage(topic, -1 if partition is None else partition, OFFSET_INVALID, bkey, value, hdrs,
                                 timestamp_ms or 0, report)
            self._pending.append((on_delivery, report, unsent))
            return
        if self.transactional_id is not None:
            if self._fatal is not None:
                raise kafka_error(self._fatal, f"produce to {topic}")
            if self._txn is None:
                raise kafka_error(broker_error(_E._STATE, "Operation not valid in state Ready"),
                                  f"produce to {topic}")
            if self._fenced():  # the broker refuses the record; the producer learns it is fenced
                self._fatal = _fenced_error()
                unsent = FakeMessage(topic, -1 if partition is None else partition, OFFSET_INVALID, bkey, value, hdrs,
                                     timestamp_ms or 0, self._fatal)
                self._pending.append((on_delivery, self._fatal, unsent))
                return
        if self.fail_next > 0:
            self.fail_next -= 1
            unsent = FakeMessage(topic, -1 if partition is None else partition, OFFSET_INVALID, bkey, value, hdrs,
                                 timestamp_ms or 0, self.delivery_error)
            self._pending.append((on_delivery, self.delivery_error, unsent))
            if self._txn is not None:
                self._txn_failed = self.delivery_error
            return
        message = self.kafka.append(topic, value, bkey, hdrs, timestamp_ms or next(self._clock), partition, self._txn)
        self._pending.append((on_delivery, None, message))

    def poll(self, timeout_s: float = 0.0) -> int:
        pending, self._pending = self._pending, []
        for callback, error, message in pending:
            if callback is not None:
                callback(error, message)
        if self._raise_broken and self._broken is not None:
            self._raise_broken = False
            broken = self._broken
            raise kafka_error(broker_error(broken.code(), broken.str(), fatal=True), "serve delivery reports")
        return len(pending)

    def flush(self, timeout_s: float = 30.0) -> int:
        self.poll()
        return 0

    def rebuild(self) -> None:
        """A new client: reports not served yet are dropped, a fatal error is forgotten, and a
        transactional producer needs ``init_transactions`` again."""
        self.rebuilds += 1
        self._pending = []
        self._broken, self._raise_broken = None, False
        if self.transactional_id is not None:
            self._epoch, self._txn, self._txn_failed, self._fatal = None, None, None, None

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush; a transaction left open stays open (until a producer with the same id starts)."""
        self.flush()

    def __len__(self) -> int:
        return len(self._pending)

    # -- transactions ----------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._txn is not None

    def _fenced(self) -> bool:
        tid = self.transactional_id
        return tid is not None and self._epoch is not None and self.kafka._epochs.get(tid) != self._epoch

    def _check_usable(self, what: str, *, local: bool = False) -> None:
        """Raise what librdkafka would: fatal once fenced (learnt from the broker, so not by a
        ``local`` call such as ``begin_transaction``), ``_STATE`` before ``init_transactions``."""
        if self._fatal is None and not local and self._fenced():
            self._fatal = _fenced_error()
        if self._fatal is not None:
            raise kafka_error(self._fatal, what)
        if self._epoch is None:
            raise kafka_error(broker_error(_E._STATE, "Operation not valid in state Init"), what)

    def init_transactions(self, timeout_s: float = 60.0) -> None:
        tid = self.transactional_id
        if tid is None:
            raise kafka_error(broker_error(_E._NOT_CONFIGURED, "The Transactional API requires "
                                           "transactional.id to be configured"), "init transactions")
        left = self.kafka._open.pop(tid, None)
        if left is not None and left.state == "open":
            self.kafka._end(left, "aborted")
        self._epoch = self.kafka._epochs[tid] = self.kafka._epochs.get(tid, 0) + 1

    def begin_transaction(self) -> None:
        self._check_usable("begin transaction", local=True)
        if self._txn is not None:
            raise kafka_error(broker_error(_E._STATE, "Operation not valid in state InTransaction"),
                              "begin transaction")
        self._txn = _Transaction()
        self._txn_failed = None
        assert self.transactional_id is not None
        self.kafka._open[self.transactional_id] = self._txn

    def _current(self, what: str) -> _Transaction:
        self._check_usable(what)
        if self._txn is None:
            raise kafka_error(broker_error(_E._STATE, "Operation not valid in state Ready"), what)
        return self._txn

    def send_offsets_to_transaction(self, offsets: Sequence[Any], group_metadata: object,
                                    timeout_s: float = 30.0) -> None:
        txn = self._current("send offsets to transaction")
        if not isinstance(group_metadata, FakeGroupMetadata):
            raise kafka_error(broker_error(_E._INVALID_ARG, "group_metadata must come from a FakeConsumer"),
                              "send offsets to transaction")
        group = self.kafka.group(group_metadata.group_id)
        if group_metadata.generation >= 0 and (group_metadata.generation != group.generation or not any(
                m.member_id == group_metadata.member_id for m in group.members)):
            error = broker_error(_E.ILLEGAL_GENERATION, "Broker: Specified group generation id is not valid",
                                 txn_requires_abort=True)
            self._txn_failed = error
            raise kafka_error(error, "send offsets to transaction")
        txn.offsets.setdefault(group_metadata.group_id, {}).update(
            {(tp.topic, tp.partition): tp.offset for tp in offsets if tp.offset >= 0})

    def commit_transaction(self, timeout_s: float = 60.0) -> None:
        txn = self._current("commit transaction")
        self.poll()  # commit flushes: every delivery report of the transaction is served first
        if self._txn_failed is not None:
            failed = self._txn_failed
            raise kafka_error(broker_error(failed.code(), failed.str(), txn_requires_abort=True), "commit transaction")
        self.kafka._end(txn, "committed")
        self._finish()

    def abort_transaction(self, timeout_s: float = 60.0) -> None:
        txn = self._current("abort transaction")
        self.poll()  # the fake broker had every record already: their reports say delivered, as librdkafka's do
        self.kafka._end(txn, "aborted")
        self._finish()

    def _finish(self) -> None:
        assert self.transactional_id is not None
        self.kafka._open.pop(self.transactional_id, None)
        self._txn = None
        self._txn_failed = None


_member_ids = itertools.count(1)
_group_ids = itertools.count(1)


class FakeConsumer:
    """A consumer of an :class:`InMemoryKafka`: a group member when it has ``topics`` (or after
    :meth:`subscribe`), else a reader of the partitions given to :meth:`assign`.

    ``group_id=None`` gives it a group of its own. Offsets start at the group's committed
    offsets, else at ``auto_offset_reset`` (``earliest`` / ``latest``).
    """

    def __init__(self, kafka: InMemoryKafka, topics: Iterable[str] = (), *, group_id: str | None = None,
                 isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed",
                 auto_offset_reset: Literal["earliest", "latest"] = "earliest",
                 on_assign: RebalanceCallback | None = None, on_revoke: RebalanceCallback | None = None) -> None:
        self.kafka = kafka
        self.group_id = group_id if group_id is not None else f"fake-group-{next(_group_ids)}"
        self.member_id = f"{self.group_id}-member-{next(_member_ids):04d}"
        self.read_committed = isolation_level == "read_committed"
        self.auto_offset_reset = auto_offset_reset
        self.topics: list[str] = []
        self._subscribed = False
        self._on_assign: RebalanceCallback | None = None
        self._on_revoke: RebalanceCallback | None = None
        self._generation = -1
        self._assignment: dict[tuple[str, int], None] = {}  # ordered set
        self._positions: dict[tuple[str, int], int] = {}  # OFFSET_* constants until the first fetch resolves them
        self._fetched: set[tuple[str, int]] = set()  # partitions with a position to report
        self._cached: dict[tuple[str, int], tuple[int, int]] = {}
        self._assigned_by_callback = False
        self._closed = False
        topics = list(topics)
        if topics:
            self.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke)

    # -- group membership ------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], *, on_assign: RebalanceCallback | None = None,
                  on_revoke: RebalanceCallback | None = None) -> None:
        self._check_open()
        self.topics = list(topics)
        self._on_assign, self._on_revoke = on_assign, on_revoke
        group = self.kafka.group(self.group_id)
        if self._subscribed and self in group.members:
            group.generation += 1  # a new subscription rejoins
        self._subscribed = True

    def _share(self, group: _Group) -> list[tuple[str, int]]:
        """The range assignor: per topic, consecutive partitions to the members in id order."""
        mine: list[tuple[str, int]] = []
        for topic in sorted(set(self.topics)):
            if topic not in self.kafka.topics:
                continue
            members = sorted((m for m in group.members if topic in m.topics), key=lambda m: m.member_id)
            n, k = len(self.kafka.topics[topic]), len(members)
            index = members.index(self)
            size, extra = divmod(n, k)
            first = index * size + min(index, extra)
            mine.extend((topic, p) for p in range(first, first + size + (1 if index < extra else 0)))
        return mine

    def _rebalance_if_needed(self) -> None:
        group = self.kafka.group(self.group_id)
        if self not in group.members:
            group.members.append(self)
            group.generation += 1
        if group.metadata_version != self.kafka._metadata_version:  # topics appeared: ours?
            group.metadata_version = self.kafka._metadata_version
            layout = {t: len(self.kafka.topics[t]) for m in group.members for t in m.topics if t in self.kafka.topics}
            if layout != group.layout:
                group.layout = layout
                group.generation += 1
        if self._generation == group.generation:
            return
        self._revoke()
        self._generation = group.generation
        share = self._share(group)
        self._assigned_by_callback = False
        if self._on_assign is not None:
            self._on_assign([TopicPartition(t, p) for t, p in share])
        if not self._assigned_by_callback:
            self._assignment = dict.fromkeys(share)
            self._positions = dict.fromkeys(share, OFFSET_INVALID)
            self._fetched = set()

    def _revoke(self) -> None:
        if not self._assignment:
            return
        revoked = list(self._assignment)
        self._assignment, self._positions, self._fetched = {}, {}, set()
        if self._on_revoke is not None:
            self._on_revoke([TopicPartition(t, p) for t, p in revoked])

    def consumer_group_metadata(self) -> FakeGroupMetadata:
        self._check_open()
        member = self._subscribed and self in self.kafka.group(self.group_id).members
        return FakeGroupMetadata(self.group_id, self._generation if member else -1, self.member_id)

    # -- reading ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Consumer closed")

    def _start(self, key: tuple[str, int], offset: int) -> int:
        """Where reading starts for an offset constant: committed, else reset, else as given."""
        if offset == OFFSET_INVALID:
            committed = self.kafka.group(self.group_id).committed.get(key)
            if committed is not None:
                return committed
            offset = OFFSET_BEGINNING if self.auto_offset_reset == "earliest" else OFFSET_END
        if offset == OFFSET_BEGINNING:
            return 0
        if offset == OFFSET_END:
            return self._high(*key)
        return offset

    def _high(self, topic: str, partition: int) -> int:
        if self.read_committed:
            return self.kafka.last_stable_offset(topic, partition)
        return len(self.kafka.topics[topic][partition])

    def consume(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[FakeMessage]:
        """Up to ``max_messages`` records of the assigned partitions, in order; never waits."""
        self._check_open()
        if self._subscribed:
            self._rebalance_if_needed()
        out: list[FakeMessage] = []
        for key in list(self._assignment):
            topic, p = key
            if topic not in self.kafka.topics or p >= len(self.kafka.topics[topic]):
                continue
            part = self.kafka.topics[topic][p]
            position = self._positions.get(key, OFFSET_INVALID)
            if position < 0:
                position = self._start(key, position)
            high = self._high(topic, p)
            while position < high and len(out) < max_messages:
                entry = part[position]
                position += 1
                if entry.visible(self.read_committed):
                    out.append(entry)
            self._positions[key] = position
            self._fetched.add(key)
            self._cached[key] = (0, high)
            if len(out) >= max_messages:
                break
        return out

    def commit(self, asynchronous: bool = False, *, offsets: Sequence[Any] | None = None) -> None:
        self._check_open()
        group = self.kafka.group(self.group_id)
        if self._subscribed and self in group.members and self._generation != group.generation:
            if asynchronous:  # the failure goes to librdkafka's commit callback, which the adapter has not
                return
            raise kafka_error(broker_error(_E.ILLEGAL_GENERATION, "Broker: Specified group generation id is not valid"),
                              "commit offsets")
        if offsets is None:
            chosen = {k: o for k, o in self._positions.items() if o >= 0 and k in self._fetched}
        else:
            chosen = {(tp.topic, tp.partition): tp.offset for tp in offsets if tp.offset >= 0}
        group.committed.update(chosen)

    def close(self) -> None:
        """Leave the group (``on_revoke`` runs for what was assigned)."""
        if self._closed:
            return
        group = self.kafka.group(self.group_id)
        if self._subscribed and self in group.members:
            self._revoke()
            group.members.remove(self)
            group.generation += 1
        self._closed = True

    # -- partitions and offsets ------------------------------------------------------------

    def assign(self, partitions: Sequence[Any]) -> None:
        self._check_open()
        self._assignment = dict.fromkeys((tp.topic, tp.partition) for tp in partitions)
        self._positions = {(tp.topic, tp.partition): tp.offset for tp in partitions}
        self._fetched = set()
        self._assigned_by_callback = True

    def incremental_assign(self, partitions: Sequence[Any]) -> None:
        self._check_open()
        for tp in partitions:
            self._assignment[(tp.topic, tp.partition)] = None
            self._positions[(tp.topic, tp.partition)] = tp.offset
            self._fetched.discard((tp.topic, tp.partition))
        self._assigned_by_callback = True

    def unassign(self) -> None:
        self._check_open()
        self._assignment, self._positions, self._fetched = {}, {}, set()

    def assignment(self) -> list[Any]:
        self._check_open()
        return [TopicPartition(t, p) for t, p in self._assignment]

    def seek(self, partition: Any) -> None:
        self._check_open()
        key = (partition.topic, partition.partition)
        if key not in self._assignment:
            raise kafka_error(broker_error(_E._UNKNOWN_PARTITION), f"seek {key[0]}[{key[1]}] to {partition.offset}")
        offset = partition.offset
        self._positions[key] = offset if offset >= 0 else self._start(key, offset)
        self._fetched.add(key)

    def position(self, partitions: Sequence[Any]) -> list[Any]:
        self._check_open()
        out = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            offset = self._positions.get(key, OFFSET_INVALID) if key in self._fetched else OFFSET_INVALID
            out.append(TopicPartition(tp.topic, tp.partition, offset))
        return out

    def committed(self, partitions: Sequence[Any], timeout_s: float = 10.0) -> list[Any]:
        self._check_open()
        stored = self.kafka.group(self.group_id).committed
        return [TopicPartition(tp.topic, tp.partition, stored.get((tp.topic, tp.partition), OFFSET_INVALID))
                for tp in partitions]

    def watermarks(self, topic: str, partition: int, *, cached: bool = False,
                   timeout_s: float = 10.0) -> tuple[int, int]:
        self._check_open()
        if cached:
            return self._cached.get((topic, partition), (OFFSET_INVALID, OFFSET_INVALID))
        if topic not in self.kafka.topics or partition >= len(self.kafka.topics[topic]):
            raise kafka_error(broker_error(_E.UNKNOWN_TOPIC_OR_PART),
                              f"read the watermarks of {topic}[{partition}]")
        return 0, self._high(topic, partition)

    def offsets_for_times(self, partitions: Sequence[Any], timeout_s: float = 10.0) -> list[Any]:
        self._check_open()
        out = []
        for tp in partitions:
            part = self.kafka.topic(tp.topic)[tp.partition]
            found = next((m._offset for m in part if not m._control and m._timestamp >= tp.offset), OFFSET_END)
            out.append(TopicPartition(tp.topic, tp.partition, found))
        return out

    def partitions(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        found = self.topic_partitions([topic], timeout_s)
        if topic not in found:
            raise KafkaError(f"Kafka topic {topic} does not exist", code="UNKNOWN_TOPIC_OR_PART",
                             hint="create the topics with `forewarn topics create` (or check the topic prefix)")
        return found[topic]

    def topic_partitions(self, topics: Iterable[str] | None = None,
                         timeout_s: float = 10.0) -> dict[str, list[int]]:
        self._check_open()
        names = list(self.kafka.topics) if topics is None else list(topics)
        return {n: list(range(len(self.kafka.topics[n]))) for n in names if n in self.kafka.topics}


@dataclass
class FakeMqttMessage:
    topic: str
    payload: bytes
    qos: int = 1
    mid: int = 0
    retain: bool = False


class FakeMqtt:
    """An MQTT client double: ``deliver`` plays the broker, ``acks`` records manual acks.

    Publishes are recorded in ``published``; ``puback`` plays the broker acknowledging them
    (``on_published(mid)``), at once for every publish while ``auto_puback`` is true.
    ``outgoing_packets`` is what :class:`forewarn.mqtt.MqttClient` reports as queued for the socket:
    0 unless a test sets it.
    """

    def __init__(self) -> None:
        self.on_message: Callable[[Any], None] | None = None
        self.on_published: Callable[[int], None] | None = None
        self.auto_puback = True
        self.outgoing_packets = 0
        self.connected = False
        self.subscriptions: list[str] = []
        self.published: list[FakeMqttMessage] = []
        self.acks: list[int] = []
        self._unacked: list[int] = []
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
        self._unacked.append(message.mid)
        if self.auto_puback:
            self.puback()
        return message

    def puback(self, mid: int | None = None) -> None:
        """The broker acknowledges publish ``mid`` (every unacknowledged one when ``None``)."""
        done = list(self._unacked) if mid is None else [mid]
        self._unacked = [m for m in self._unacked if m not in done]
        if self.on_published is not None:
            for m in done:
                self.on_published(m)

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)

    def deliver(self, topic: str, payload: bytes | str, qos: int = 1) -> FakeMqttMessage:
        """Hand a message to ``on_message`` as the broker would; returns it (with its mid)."""
        message = FakeMqttMessage(topic, _as_bytes(payload) or b"", qos, next(self._mids))
        if self.on_message is not None:
            self.on_message(message)
        return message
