"""Thin, lazy adapters over confluent-kafka: the only code that touches a librdkafka client.

No network in ``__init__``: the librdkafka client is created on first use. The producer is
idempotent with ``acks=all`` by default, retries a full local queue (``BufferError``) by serving
delivery reports, and flushes on close. librdkafka's ``error_cb`` goes to the logger. Readers use
``read_committed`` by default, so they only ever see committed output of the transactional
scoring workers.

Every failure is raised as :class:`forewarn.errors.KafkaError` carrying librdkafka's error name
(``code``) and its ``retriable`` / ``fatal`` / ``txn_requires_abort`` flags; no
``confluent_kafka.KafkaException`` escapes this module (a fatal client error, which
confluent-kafka raises from ``poll``/``flush`` instead of calling ``error_cb``, included).

What a failed delivery means is decided by :func:`classify`, a table of librdkafka's codes, and
never by the error's flags: confluent-kafka builds delivery-report errors with ``retriable()`` and
``fatal()`` both False whatever the code (``_MSG_TIMED_OUT``, ``TOPIC_AUTHORIZATION_FAILED`` and
``MSG_SIZE_TOO_LARGE`` alike), so the flags cannot tell "retry" from "never storable". Partitions and offsets are
:class:`TopicPartition` values (re-exported from confluent-kafka, like the offset constants), so
the in-memory fakes of :mod:`forewarn.testing` speak exactly the same API.

:func:`read_to_end` is the one way to read topics from their start (or given offsets) to the end
they had when reading started.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import confluent_kafka
from confluent_kafka import admin as kadmin

from forewarn.errors import KafkaError
from forewarn.ports import ConsumerLike
from forewarn.settings import KafkaSettings
from forewarn.topics import TopicSpec

__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "OFFSET_INVALID",
    "DeliveryCallback",
    "ErrorClass",
    "GroupLag",
    "GroupMetadata",
    "Headers",
    "KafkaAdmin",
    "KafkaConsumer",
    "KafkaProducer",
    "Message",
    "RebalanceCallback",
    "TopicCheck",
    "TopicPartition",
    "classify",
    "error_code",
    "kafka_error",
    "raise_for_error",
    "read_to_end",
    "refused_for_good",
]

log = logging.getLogger(__name__)

Message = confluent_kafka.Message
TopicPartition = confluent_kafka.TopicPartition
OFFSET_BEGINNING: int = confluent_kafka.OFFSET_BEGINNING
OFFSET_END: int = confluent_kafka.OFFSET_END
OFFSET_INVALID: int = confluent_kafka.OFFSET_INVALID  # "no offset": nothing committed, not fetched yet
DeliveryCallback = Callable[[confluent_kafka.KafkaError | None, confluent_kafka.Message], None]
Headers = Sequence[tuple[str, bytes | str]]
RebalanceCallback = Callable[[list[confluent_kafka.TopicPartition]], None]
GroupMetadata = object  # opaque: what consumer_group_metadata() returns, for send_offsets_to_transaction

_UNSET_PARTITION = -1  # librdkafka's RD_KAFKA_PARTITION_UA: the partitioner chooses
_NO_LEADER_YET = frozenset({confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
                            confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
                            confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART})
_CREATE_TOPICS = "create the topics with `forewarn topics create` (or check the topic prefix)"


def _error_cb(error: confluent_kafka.KafkaError) -> None:
    # librdkafka reports transient broker trouble here; it keeps retrying on its own.
    level = logging.ERROR if error.fatal() else logging.WARNING
    log.log(level, "kafka: %s", error)


# -- errors ---------------------------------------------------------------------------------

def kafka_error(error: confluent_kafka.KafkaError, what: str, *, hint: str | None = None) -> KafkaError:
    """The :class:`KafkaError` for a librdkafka error object: ``"<what>: <librdkafka's text>"``
    with its code name and its retriable / fatal / txn_requires_abort flags."""
    # librdkafka's _FATAL event says the client is unusable whatever its flags say.
    fatal = bool(error.fatal()) or error.code() == confluent_kafka.KafkaError._FATAL
    return KafkaError(f"{what}: {error.str()}", code=error.name(), retriable=bool(error.retriable()),
                      fatal=fatal, txn_requires_abort=bool(error.txn_requires_abort()), hint=hint)


def raise_for_error(error: confluent_kafka.KafkaError | None, what: str) -> None:
    """Raise :func:`kafka_error` for a librdkafka error object; nothing for ``None``."""
    if error is not None:
        raise kafka_error(error, what)


def _wrap(exc: confluent_kafka.KafkaException, what: str, *, hint: str | None = None) -> KafkaError:
    err = exc.args[0] if exc.args else None
    if isinstance(err, confluent_kafka.KafkaError):
        return kafka_error(err, what, hint=hint)
    return KafkaError(f"{what}: {exc}", hint=hint)


class ErrorClass(enum.StrEnum):
    """What a Kafka error means for the record (or the client) it is about."""

    NEVER_STORABLE = "never_storable"
    """Kafka can never store this record as it is (too large, invalid, corrupt, a timestamp the
    topic refuses): sending it again cannot help; it goes to the dead-letter topic."""
    RETRIABLE = "retriable"
    """Transient (time-outs, transport, leadership moving, replicas missing, ...), and any code
    this table does not know: send again with backoff, never acknowledge upstream meanwhile."""
    AUTHORIZATION = "authorization"
    """Not allowed or not authenticated (ACLs, SASL, TLS): retried with backoff, never
    acknowledged, logged at ERROR; it lasts until an operator fixes the grant."""
    FATAL = "fatal"
    """The client can never deliver again (an idempotent producer lost its sequence, a producer
    fenced, librdkafka's ``_FATAL``): build a new client and re-send what it did not confirm."""


_CODE_TABLE: dict[ErrorClass, tuple[str, ...]] = {
    ErrorClass.NEVER_STORABLE: (
        "MSG_SIZE_TOO_LARGE",  # above the topic's max.message.bytes (or the local message.max.bytes)
        "INVALID_MSG",  # the broker's CORRUPT_MESSAGE: CRC mismatch, bad record
        "INVALID_MSG_SIZE",
        "RECORD_LIST_TOO_LARGE",  # a batch above the segment size: sent alone, still too large
        "INVALID_RECORD",  # the broker's record validation refused it (e.g. a compacted topic and no key)
        "INVALID_TIMESTAMP",  # outside the topic's message.timestamp.{before,after}.max.ms
        "UNSUPPORTED_FOR_MESSAGE_FORMAT",  # the topic's message format cannot hold it (headers, ...)
    ),
    ErrorClass.RETRIABLE: (
        "_MSG_TIMED_OUT",  # message.timeout.ms expired: Kafka may be away, the record is not stored
        "_TIMED_OUT", "_TIMED_OUT_QUEUE", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_DESTROY",
        "_DESTROY_BROKER", "_PURGE_QUEUE", "_PURGE_INFLIGHT", "_QUEUE_FULL", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION",
        "_UNKNOWN_BROKER", "_NODE_UPDATE", "_WAIT_COORD", "_RETRY", "_IN_PROGRESS", "_PREV_IN_PROGRESS", "_INTR",
        "_ISR_INSUFF", "_FAIL",
        "REQUEST_TIMED_OUT", "NETWORK_EXCEPTION", "BROKER_NOT_AVAILABLE", "REPLICA_NOT_AVAILABLE",
        "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "PREFERRED_LEADER_NOT_AVAILABLE",
        "ELIGIBLE_LEADERS_NOT_AVAILABLE", "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH",
        "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "KAFKA_STORAGE_ERROR",
        "UNKNOWN_TOPIC_OR_PART",  # a topic being created or a partition moving; a missing topic stays loud
        "UNKNOWN_TOPIC_ID", "THROTTLING_QUOTA_EXCEEDED", "REBOOTSTRAP_REQUIRED", "NOT_CONTROLLER",
        "COORDINATOR_LOAD_IN_PROGRESS", "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR", "CONCURRENT_TRANSACTIONS",
        "REBALANCE_IN_PROGRESS", "OFFSET_NOT_AVAILABLE", "UNSTABLE_OFFSET_COMMIT",
    ),
    ErrorClass.AUTHORIZATION: (
        "TOPIC_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        "GROUP_AUTHORIZATION_FAILED", "DELEGATION_TOKEN_AUTHORIZATION_FAILED", "SASL_AUTHENTICATION_FAILED",
        "ILLEGAL_SASL_STATE", "UNSUPPORTED_SASL_MECHANISM", "UNACCEPTABLE_CREDENTIAL", "SECURITY_DISABLED",
        "_AUTHENTICATION", "_SSL",
    ),
    ErrorClass.FATAL: (
        "_FATAL",  # a fatal error was raised: the underlying one comes from poll/flush
        "_FENCED", "_GAPLESS_GUARANTEE", "_INCONSISTENT",
        "OUT_OF_ORDER_SEQUENCE_NUMBER", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH", "UNKNOWN_PRODUCER_ID",
        "INVALID_PRODUCER_ID_MAPPING", "INVALID_TXN_STATE", "TRANSACTION_COORDINATOR_FENCED",
        "INVALID_TRANSACTION_TIMEOUT",
    ),
}
ERROR_CLASSES: Mapping[str, ErrorClass] = {code: kind for kind, codes in _CODE_TABLE.items() for code in codes}
"""librdkafka's error name -> :class:`ErrorClass`; a name not in it is :attr:`ErrorClass.RETRIABLE`."""


def classify(error: object) -> ErrorClass:
    """The class of a delivery error (a ``confluent_kafka.KafkaError``) or of a
    :class:`KafkaError` raised by this module, by librdkafka's code (:data:`ERROR_CLASSES`).
    An error flagged fatal is :attr:`ErrorClass.FATAL` whatever its code (confluent-kafka sets
    the flag only on a real fatal error); an unknown code is retried, never acknowledged."""
    fatal = getattr(error, "fatal", False)
    if callable(fatal):
        fatal = fatal()
    if fatal:
        return ErrorClass.FATAL
    return ERROR_CLASSES.get(error_code(error), ErrorClass.RETRIABLE)


def refused_for_good(error: object) -> bool:
    """Whether Kafka can never store the record a delivery (or produce) error is about:
    :func:`classify` says :attr:`ErrorClass.NEVER_STORABLE`. Anything else is retried."""
    return classify(error) is ErrorClass.NEVER_STORABLE


def error_code(error: object) -> str:
    """librdkafka's name of a delivery or produce error (``MSG_SIZE_TOO_LARGE``)."""
    name = getattr(error, "name", None)
    if callable(name):
        return str(name())
    code = getattr(error, "code", None)
    return code if isinstance(code, str) else type(error).__name__


# -- clients ----------------------------------------------------------------------------------

class _Lazy:
    def __init__(self, settings: KafkaSettings, overrides: dict[str, Any]) -> None:
        self.settings = settings
        self._overrides = overrides

    def config(self, defaults: dict[str, Any]) -> dict[str, Any]:
        conf = {**defaults, **self.settings.librdkafka(), **self._overrides}
        conf.setdefault("error_cb", _error_cb)
        conf.setdefault("logger", log)
        return conf


class KafkaProducer(_Lazy):
    """Idempotent producer (acks=all). Pass ``transactional_id`` for exactly-once output.

    ``produce`` is meant for hot paths: one call into librdkafka per record, positional, no
    per-call allocation beyond the record itself. When librdkafka's local queue is full it serves
    delivery reports and retries, so a record is never dropped for lack of room. Transactions
    (``init_transactions`` ... ``commit_transaction``) raise :class:`KafkaError` whose
    ``txn_requires_abort`` says "abort and start over" and ``fatal`` says "build a new producer".
    """

    DEFAULTS: dict[str, Any] = {  # noqa: RUF012 - read-only by convention
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 0,  # never give up on a record: lose nothing while Kafka is away
    }

    def __init__(self, settings: KafkaSettings, **overrides: Any) -> None:
        super().__init__(settings, overrides)
        self._producer: confluent_kafka.Producer | None = None

    def _create(self) -> confluent_kafka.Producer:
        conf = self.config(self.DEFAULTS)
        if "transactional.id" in conf and "message.timeout.ms" not in self._overrides:
            # librdkafka requires message.timeout.ms <= transaction.timeout.ms.
            conf["message.timeout.ms"] = conf.get("transaction.timeout.ms", 60000)
        self._producer = confluent_kafka.Producer(conf)
        return self._producer

    @property
    def _client(self) -> confluent_kafka.Producer:
        producer = self._producer
        return producer if producer is not None else self._create()

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        *,
        headers: Headers | None = None,
        timestamp_ms: int | None = None,
        on_delivery: DeliveryCallback | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record. ``partition=None`` lets the partitioner choose (by key);
        ``timestamp_ms`` ``None`` or 0 means "now". ``on_delivery(error, message)`` runs from
        :meth:`poll` / :meth:`flush`. A full local queue is waited out (delivery reports are
        served meanwhile); a record librdkafka refuses at once raises :class:`KafkaError`
        (``MSG_SIZE_TOO_LARGE``, ``_STATE`` outside a transaction, ...)."""
        producer = self._producer
        if producer is None:
            producer = self._create()
        if headers is not None and type(headers) is not list:
            headers = list(headers)
        # Positional, in librdkafka's order: topic, value, key, partition, callback, on_delivery
        # (an alias of callback), timestamp, headers. -1 and 0 are librdkafka's "unset".
        part = _UNSET_PARTITION if partition is None else partition
        try:
            producer.produce(topic, value, key, part, on_delivery, None, timestamp_ms or 0, headers)
        except BufferError:
            self._produce_when_room(producer, topic, value, key, part, on_delivery, timestamp_ms or 0, headers)
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, f"produce to {topic}") from None

    @staticmethod
    def _produce_when_room(producer: confluent_kafka.Producer, topic: str, value: bytes | None,
                           key: bytes | str | None, partition: int, on_delivery: DeliveryCallback | None,
                           timestamp_ms: int, headers: Headers | None) -> None:
        """The one retry of a full local queue: serve delivery reports until there is room."""
        while True:
            producer.poll(0.05)
            try:
                producer.produce(topic, value, key, partition, on_delivery, None, timestamp_ms, headers)
                return
            except BufferError:
                continue
            except confluent_kafka.KafkaException as exc:
                raise _wrap(exc, f"produce to {topic}") from None

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served. A fatal client error is raised
        here (``fatal`` set, ``code`` the underlying error): :meth:`rebuild` then."""
        try:
            return int(self._client.poll(timeout_s))
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "serve delivery reports") from None

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for outstanding records; returns how many are still not delivered. Raises a
        fatal client error as :meth:`poll` does."""
        if self._producer is None:
            return 0
        try:
            return int(self._producer.flush(timeout_s))
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "flush") from None

    def rebuild(self) -> None:
        """Abandon the librdkafka client (after a fatal error it can never deliver again) and
        build a new one on next use. What the old one had queued or in flight is purged and
        its delivery reports are never served: the caller treats every record it did not see
        confirmed as not sent, and sends it again through the new client."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.purge(in_queue=True, in_flight=True, blocking=False)
        except (confluent_kafka.KafkaException, RuntimeError) as exc:
            log.debug("purging the abandoned producer failed (%s)", exc)

    def __len__(self) -> int:
        """Records queued or in flight (not yet reported delivered or failed)."""
        return 0 if self._producer is None else len(self._producer)

    # -- transactions (scoring workers) --------------------------------------------------

    def init_transactions(self, timeout_s: float = 60.0) -> None:
        """Register the ``transactional.id`` with its coordinator: fences any older producer with
        the same id and aborts the transaction it left open."""
        try:
            self._client.init_transactions(timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "init transactions") from None

    def begin_transaction(self) -> None:
        try:
            self._client.begin_transaction()
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "begin transaction") from None

    def send_offsets_to_transaction(self, offsets: Sequence[confluent_kafka.TopicPartition],
                                    group_metadata: GroupMetadata, timeout_s: float = 30.0) -> None:
        """Commit consumer offsets (the next offset to read, per partition) as part of the
        current transaction. ``group_metadata`` is :meth:`KafkaConsumer.consumer_group_metadata`."""
        try:
            self._client.send_offsets_to_transaction(list(offsets), group_metadata, timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "send offsets to transaction") from None

    def commit_transaction(self, timeout_s: float = 60.0) -> None:
        """Flush and commit. A ``retriable`` error may be retried by calling this again;
        ``txn_requires_abort`` means call :meth:`abort_transaction`; ``fatal`` means close."""
        try:
            self._client.commit_transaction(timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "commit transaction") from None

    def abort_transaction(self, timeout_s: float = 60.0) -> None:
        """Abort: read_committed readers never see what the transaction produced."""
        try:
            self._client.abort_transaction(timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "abort transaction") from None

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush what is queued; log what could not be delivered."""
        left = self.flush(timeout_s)
        if left:
            log.warning("kafka producer closed with %s records not delivered", left)
        self._producer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class KafkaConsumer(_Lazy):
    """A consumer: ``read_committed``, manual commits by default.

    Either a consumer-group member (``topics`` given here, or :meth:`subscribe`) whose
    partitions the group assigns, or a reader of partitions it picks itself (:meth:`assign`);
    never both. Rebalance callbacks get the list of :class:`TopicPartition` concerned and run
    inside :meth:`consume`; what they raise comes out of :meth:`consume`.
    """

    DEFAULTS: dict[str, Any] = {  # noqa: RUF012 - read-only by convention
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }

    def __init__(self, settings: KafkaSettings, group_id: str, topics: Iterable[str] = (),
                 **overrides: Any) -> None:
        super().__init__(settings, {"group.id": group_id, **overrides})
        self.group_id = group_id
        self.topics = list(topics)
        self._consumer: confluent_kafka.Consumer | None = None
        self._on_assign: Callable[..., None] | None = None
        self._on_revoke: Callable[..., None] | None = None
        self._deferred: confluent_kafka.KafkaError | None = None  # raised on the next consume

    def subscribe(self, topics: Sequence[str], *, on_assign: RebalanceCallback | None = None,
                  on_revoke: RebalanceCallback | None = None) -> None:
        """Join the group for ``topics`` (replacing an earlier subscription). ``on_assign`` runs
        with the partitions the group gives this member, before any of their records is
        returned; ``on_revoke`` with the partitions taken away (also on :meth:`close`), after
        the last of their records was returned."""
        self.topics = list(topics)
        self._on_assign = None if on_assign is None else (lambda _consumer, parts: on_assign(parts))
        self._on_revoke = None if on_revoke is None else (lambda _consumer, parts: on_revoke(parts))
        if self._consumer is not None:
            self._subscribe(self._consumer)

    def _subscribe(self, consumer: confluent_kafka.Consumer) -> None:
        kwargs: dict[str, Any] = {}
        if self._on_assign is not None:
            kwargs["on_assign"] = self._on_assign
        if self._on_revoke is not None:
            kwargs["on_revoke"] = self._on_revoke
        try:
            consumer.subscribe(self.topics, **kwargs)
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, f"subscribe to {', '.join(self.topics)}") from None

    @property
    def _client(self) -> confluent_kafka.Consumer:
        consumer = self._consumer
        if consumer is None:
            consumer = self._consumer = confluent_kafka.Consumer(self.config(self.DEFAULTS))
            if self.topics:
                self._subscribe(consumer)
        return consumer

    def consume(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[confluent_kafka.Message]:
        """Up to ``max_messages`` records, waiting at most ``timeout_s`` for the first. Partition
        EOF events are skipped, other retriable errors logged, the rest raised — after the good
        records that came with them: those are returned first (their position has moved on) and
        the error is raised by the next call."""
        deferred, self._deferred = self._deferred, None
        raise_for_error(deferred, "consume")
        try:
            messages = self._client.consume(max_messages, timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "consume") from None
        good: list[confluent_kafka.Message] = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                continue
            elif error.fatal() or not error.retriable() or error.code() == confluent_kafka.KafkaError._FATAL:
                if not good:
                    raise_for_error(error, "consume")
                self._deferred = self._deferred or error
            else:
                log.warning("kafka consume: %s", error)
        return good

    def commit(self, asynchronous: bool = False, *,
               offsets: Sequence[confluent_kafka.TopicPartition] | None = None) -> None:
        """Commit ``offsets`` (each the next offset to read), or else the position of every
        assigned partition. Nothing to commit is not an error."""
        try:
            if offsets is None:
                self._client.commit(asynchronous=asynchronous)
            elif offsets:
                self._client.commit(offsets=list(offsets), asynchronous=asynchronous)
        except confluent_kafka.KafkaException as exc:
            wrapped = _wrap(exc, "commit offsets")
            if wrapped.code != "_NO_OFFSET":
                raise wrapped from None

    # -- partitions and offsets --------------------------------------------------------------

    def assign(self, partitions: Sequence[confluent_kafka.TopicPartition]) -> None:
        """Read exactly these partitions from their offsets (``OFFSET_BEGINNING``,
        ``OFFSET_END``, an offset, or ``OFFSET_INVALID`` for the committed offset), replacing
        the current assignment."""
        try:
            self._client.assign(list(partitions))
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "assign partitions") from None

    def incremental_assign(self, partitions: Sequence[confluent_kafka.TopicPartition]) -> None:
        """Add partitions to the current assignment, keeping the others where they are."""
        try:
            self._client.incremental_assign(list(partitions))
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "assign partitions") from None

    def unassign(self) -> None:
        """Stop reading every assigned partition."""
        try:
            self._client.unassign()
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "unassign partitions") from None

    def assignment(self) -> list[confluent_kafka.TopicPartition]:
        """The partitions this consumer reads now."""
        try:
            return list(self._client.assignment())
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "read the assignment") from None

    def seek(self, partition: confluent_kafka.TopicPartition) -> None:
        """Continue an assigned partition at ``partition.offset``; records fetched already and
        not yet returned are dropped. Only for a partition being fetched (after a
        :meth:`consume`): right after :meth:`assign` librdkafka may still fetch from the assigned
        offset too, so to start elsewhere assign with that offset instead."""
        try:
            self._client.seek(partition)
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, f"seek {partition.topic}[{partition.partition}] to {partition.offset}") from None

    def position(self, partitions: Sequence[confluent_kafka.TopicPartition]) -> list[confluent_kafka.TopicPartition]:
        """Per partition, the offset of the next record :meth:`consume` would return (past
        transaction markers and aborted records it skipped); ``OFFSET_INVALID`` before the
        first fetch."""
        try:
            return list(self._client.position(list(partitions)))
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "read positions") from None

    def committed(self, partitions: Sequence[confluent_kafka.TopicPartition],
                  timeout_s: float = 10.0) -> list[confluent_kafka.TopicPartition]:
        """The group's committed offsets of ``partitions`` (``OFFSET_INVALID`` where none)."""
        try:
            result = list(self._client.committed(list(partitions), timeout=timeout_s))
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "read committed offsets") from None
        for tp in result:
            if tp.error is not None:
                raise kafka_error(tp.error, f"read the committed offset of {tp.topic}[{tp.partition}]")
        return result

    def watermarks(self, topic: str, partition: int, *, cached: bool = False,
                   timeout_s: float = 10.0) -> tuple[int, int]:
        """``(low, high)``: the first offset and one past the last. For a ``read_committed``
        consumer the high mark is the last stable offset: the first offset of a transaction
        still open, else the end. ``cached=True`` costs no round trip: the marks of the last
        fetch response (``OFFSET_INVALID`` before the first). A live query retries for up to
        ``timeout_s`` while the partition has no leader yet (a topic just created)."""
        tp = confluent_kafka.TopicPartition(topic, partition)
        client = self._client
        if cached:
            try:
                low, high = client.get_watermark_offsets(tp, cached=True)
            except confluent_kafka.KafkaException as exc:
                raise _wrap(exc, f"read the cached watermarks of {topic}[{partition}]") from None
            return int(low), int(high)
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(0.1, deadline - time.monotonic())
            try:
                marks = client.get_watermark_offsets(tp, timeout=left, cached=False)
            except confluent_kafka.KafkaException as exc:
                error = exc.args[0] if exc.args else None
                transient = isinstance(error, confluent_kafka.KafkaError) and (
                    error.retriable() or error.code() in _NO_LEADER_YET
                    or error.code() == confluent_kafka.KafkaError._TIMED_OUT)
                if not transient or time.monotonic() >= deadline:
                    raise _wrap(exc, f"read the watermarks of {topic}[{partition}]",
                                hint="is Kafka reachable and the cluster healthy?") from None
                time.sleep(0.2)
                continue
            if marks is None:  # older clients answer a timeout with None
                raise KafkaError(f"read the watermarks of {topic}[{partition}]: timed out after {timeout_s:.0f}s",
                                 code="_TIMED_OUT", retriable=True, hint="is Kafka reachable?")
            return int(marks[0]), int(marks[1])

    def offsets_for_times(self, partitions: Sequence[confluent_kafka.TopicPartition],
                          timeout_s: float = 10.0) -> list[confluent_kafka.TopicPartition]:
        """Per partition (its ``offset`` field holding a timestamp in ms), the first offset
        whose record timestamp is at or after it; ``OFFSET_END`` (-1) when there is none."""
        try:
            result = list(self._client.offsets_for_times(list(partitions), timeout=timeout_s))
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "look up offsets for times") from None
        for tp in result:
            if tp.error is not None:
                raise kafka_error(tp.error, f"look up offsets for times of {tp.topic}[{tp.partition}]")
        return result

    def partitions(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        """The partition numbers of ``topic``, sorted; :class:`KafkaError` with code
        ``UNKNOWN_TOPIC_OR_PART`` when it does not exist."""
        found = self.topic_partitions([topic], timeout_s)
        if topic not in found:
            raise KafkaError(f"Kafka topic {topic} does not exist", code="UNKNOWN_TOPIC_OR_PART", hint=_CREATE_TOPICS)
        return found[topic]

    def topic_partitions(self, topics: Iterable[str] | None = None,
                         timeout_s: float = 10.0) -> dict[str, list[int]]:
        """``{topic: sorted partition numbers}`` of those of ``topics`` that exist (of every
        topic when ``None``), from one metadata request. Unreachable Kafka raises a retriable
        :class:`KafkaError`."""
        names = None if topics is None else list(topics)
        try:
            if names is not None and len(names) == 1:
                metadata = self._client.list_topics(names[0], timeout=timeout_s)
            else:
                metadata = self._client.list_topics(timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, f"Kafka at {self.settings.bootstrap_servers} is unreachable",
                        hint="start it with `forewarn stack up` or fix kafka.bootstrap_servers") from None
        wanted = set(metadata.topics) if names is None else set(names)
        return {name: sorted(info.partitions) for name, info in metadata.topics.items()
                if name in wanted and info.error is None}

    def consumer_group_metadata(self) -> GroupMetadata:
        """This member's group metadata, for :meth:`KafkaProducer.send_offsets_to_transaction`."""
        try:
            return self._client.consumer_group_metadata()
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "read the consumer group metadata") from None

    def close(self) -> None:
        """Leave the group (``on_revoke`` runs) and release the client. A Kafka error while
        leaving is logged, not raised: the client is released either way, and the group
        reassigns the partitions once the session times out."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except confluent_kafka.KafkaException as exc:
                log.warning("%s", _wrap(exc, "closing the kafka consumer").one_line())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# -- reading to the end ---------------------------------------------------------------------

def read_to_end(
    kafka: KafkaSettings | ConsumerLike,
    source: str | Sequence[str | confluent_kafka.TopicPartition],
    *,
    stop_at: Mapping[tuple[str, int], int] | None = None,
    idle_timeout_s: float = 30.0,
    max_messages: int = 1000,
    overrides: Mapping[str, Any] | None = None,
) -> Iterator[confluent_kafka.Message]:
    """Every record of ``source`` from its start to the end it had when this was called, in
    offset order per partition.

    ``source`` names topics (all their partitions, from the first record) and/or
    :class:`TopicPartition` values (from their ``offset``: an offset, ``OFFSET_BEGINNING`` or
    ``OFFSET_INVALID`` for the first record). ``stop_at`` ends a partition earlier, at an offset
    (exclusive). With :class:`KafkaSettings` a private consumer (``read_committed``, plus
    ``overrides``) is built and closed when the iteration ends; with a consumer (not subscribed
    to a group) its assignment is replaced by ``source``, and it is left positioned at each
    partition's end, ready to go on consuming what came later.

    The end of a partition is its high watermark when reading starts (for a ``read_committed``
    reader the last stable offset: a transaction still open then is not waited for). A
    partition is done when the consumer's position reaches it, which also covers a partition
    ending in a transaction marker or an aborted transaction: both take offsets that are never
    delivered. Empty partitions are done at once. A topic that does not exist raises
    :class:`KafkaError` (``UNKNOWN_TOPIC_OR_PART``); no progress for ``idle_timeout_s`` raises a
    retriable one.
    """
    if isinstance(kafka, KafkaSettings):
        consumer: ConsumerLike = KafkaConsumer(kafka, f"forewarn-read-{uuid.uuid4().hex[:12]}", (),
                                               **dict(overrides or {}))
        try:
            yield from _read_to_end(consumer, source, stop_at, idle_timeout_s, max_messages, own=True)
        finally:
            consumer.close()
    else:
        yield from _read_to_end(kafka, source, stop_at, idle_timeout_s, max_messages, own=False)


@dataclass
class _Range:
    start: int
    end: int


def _plan(consumer: ConsumerLike, source: str | Sequence[str | confluent_kafka.TopicPartition],
          stop_at: Mapping[tuple[str, int], int] | None, timeout_s: float) -> dict[tuple[str, int], _Range]:
    wanted: list[tuple[str, int, int]] = []
    for item in [source] if isinstance(source, str) else source:
        if isinstance(item, str):
            wanted.extend((item, p, OFFSET_BEGINNING) for p in consumer.partitions(item))
        else:
            wanted.append((item.topic, item.partition, item.offset))
    ranges: dict[tuple[str, int], _Range] = {}
    for topic, partition, offset in wanted:
        low, high = consumer.watermarks(topic, partition, timeout_s=timeout_s)
        end = high if stop_at is None else min(high, stop_at.get((topic, partition), high))
        start = low if offset in (OFFSET_BEGINNING, OFFSET_INVALID) or 0 <= offset < low else offset
        if start == OFFSET_END:
            start = high
        ranges[(topic, partition)] = _Range(start, end)
    return ranges


def _read_to_end(consumer: ConsumerLike, source: str | Sequence[str | confluent_kafka.TopicPartition],
                 stop_at: Mapping[tuple[str, int], int] | None, idle_timeout_s: float, max_messages: int,
                 *, own: bool) -> Iterator[confluent_kafka.Message]:
    ranges = _plan(consumer, source, stop_at, idle_timeout_s)
    # Empty partitions are assigned too (unless the consumer is ours): a caller's consumer goes
    # on reading them after the end.
    consumer.assign([confluent_kafka.TopicPartition(t, p, r.start) for (t, p), r in ranges.items()
                     if not own or r.start < r.end])
    pending = {key for key, r in ranges.items() if r.start < r.end}
    overshot: set[tuple[str, int]] = set()  # partitions whose records past the end were fetched and skipped
    last_positions: dict[tuple[str, int], int] = {}
    progress = time.monotonic()
    wait_s = max(0.05, min(0.5, idle_timeout_s))
    while pending:
        messages = consumer.consume(max_messages, wait_s)
        for message in messages:
            key = (message.topic(), message.partition())
            bounds = ranges.get(key)
            offset = message.offset()
            if bounds is None or offset is None:
                continue
            if offset >= bounds.end:
                overshot.add(key)
                pending.discard(key)
                continue
            yield message
            if offset + 1 >= bounds.end:
                pending.discard(key)
        if messages:
            progress = time.monotonic()
        if not pending:
            break
        order = sorted(pending)
        for tp in consumer.position([confluent_kafka.TopicPartition(t, p) for t, p in order]):
            key = (tp.topic, tp.partition)
            if tp.offset >= ranges[key].end:
                pending.discard(key)
            if tp.offset != last_positions.get(key):  # moving past markers or aborted records is progress
                last_positions[key] = tp.offset
                progress = time.monotonic()
        if pending and time.monotonic() - progress > idle_timeout_s:
            where = ", ".join(f"{t}[{p}] at {last_positions.get((t, p), OFFSET_INVALID)} of {ranges[(t, p)].end}"
                              for t, p in sorted(pending))
            raise KafkaError(f"reading to the end: no progress for {idle_timeout_s:.0f}s ({where})",
                             code="_TIMED_OUT", retriable=True,
                             hint="is Kafka healthy? are the partitions' leaders available?")
    if not own:
        for topic, partition in sorted(overshot):
            consumer.seek(confluent_kafka.TopicPartition(topic, partition, ranges[(topic, partition)].end))


# -- administration -------------------------------------------------------------------------

class TopicCheck:
    """What ``ensure_topics`` found or did for one topic."""

    def __init__(self, spec: TopicSpec, action: str, problems: list[str]) -> None:
        self.spec, self.action, self.problems = spec, action, problems

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class GroupLag:
    """How far one consumer group is behind on one partition."""

    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group committed nothing for it
    end: int  # the partition's end for read_committed readers (last stable offset)

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(0, self.end - self.committed)


def _topic_problems(spec: TopicSpec, topic: Any, config: Mapping[str, str]) -> list[str]:
    """What keeps an existing topic (its metadata and configuration) from holding ``spec``."""
    problems: list[str] = []
    partitions = list(topic.partitions.values())
    if len(partitions) < spec.partitions:
        problems.append(f"has {len(partitions)} partitions, wants {spec.partitions}")
    replicas = min((len(p.replicas) for p in partitions), default=0)
    if spec.replication_factor and replicas < spec.replication_factor:
        problems.append(f"has {replicas} replica(s), wants {spec.replication_factor}")
    policy, want = config.get("cleanup.policy"), spec.config.get("cleanup.policy")
    if want and policy and policy != want:
        problems.append(f"cleanup.policy is {policy}, wants {want}")
    min_insync = int(config.get("min.insync.replicas", "1"))
    if min_insync > replicas:
        problems.append(f"min.insync.replicas is {min_insync} on {replicas} replica(s): every acks=all write "
                        "is refused (NOT_ENOUGH_REPLICAS)")
    elif min_insync < spec.min_insync:
        problems.append(f"min.insync.replicas is {min_insync}, wants {spec.min_insync}: an acknowledged write "
                        f"may be on {min_insync} broker(s) only and lost with them")
    short = sorted(p.id for p in partitions if len(p.isrs) < min(min_insync, replicas))
    if short:
        problems.append(f"partition(s) {', '.join(map(str, short))} have fewer in-sync replicas than "
                        f"min.insync.replicas ({min_insync}) now: writes to them are refused until a broker returns")
    return problems


class KafkaAdmin(_Lazy):
    """Topic administration, consumer-group offsets and reachability checks."""

    def __init__(self, settings: KafkaSettings, **overrides: Any) -> None:
        super().__init__(settings, overrides)
        self._admin: kadmin.AdminClient | None = None
        self._refused_login: confluent_kafka.KafkaError | None = None

    @property
    def _client(self) -> kadmin.AdminClient:
        if self._admin is None:
            conf = self.config({})
            if conf.get("error_cb") is _error_cb:
                conf["error_cb"] = self._on_error
            self._admin = kadmin.AdminClient(conf)
        return self._admin

    def _on_error(self, error: confluent_kafka.KafkaError) -> None:
        # A refused login reaches only error_cb; the request that follows just times out.
        if error.code() == confluent_kafka.KafkaError._AUTHENTICATION:
            self._refused_login = error
        _error_cb(error)

    def ping(self, timeout_s: float = 5.0) -> Any:
        """Cluster metadata, or :class:`KafkaError` saying the cluster is unreachable."""
        try:
            return self._client.list_topics(timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            self._client.poll(0)  # error_cb (where a refused login shows) runs only from poll
            if self._refused_login is not None:
                raise KafkaError(f"Kafka at {self.settings.bootstrap_servers} refused the login of "
                                 f"{self.settings.sasl_username!r} ({self._refused_login.str()})",
                                 code="_AUTHENTICATION",
                                 hint="check kafka.sasl_username and its password (kafka.sasl_password_file)") from None
            raise KafkaError(f"Kafka at {self.settings.bootstrap_servers} is unreachable ({exc.args[0]})",
                             retriable=True,
                             hint="start it with `forewarn stack up` or fix kafka.bootstrap_servers") from None

    def ensure_topics(self, specs: Iterable[TopicSpec], timeout_s: float = 30.0) -> list[TopicCheck]:
        """Create missing topics; check existing ones against their spec. Idempotent.

        Replication follows the cluster (:meth:`TopicSpec.for_cluster`). An existing topic is
        reported when it has fewer partitions or replicas than its spec, another cleanup
        policy, a ``min.insync.replicas`` below the spec's (an acknowledged write could live on
        fewer brokers than the guarantees count on) or above its replica count (every acks=all
        write is refused), or partitions whose in-sync replicas are fewer than that now.
        """
        metadata = self.ping(timeout_s)
        brokers = len(metadata.brokers)
        specs = [s.for_cluster(brokers) for s in specs]
        existing = metadata.topics
        checks: list[TopicCheck] = []
        to_create = [s for s in specs if s.name not in existing]
        for spec in to_create:
            if (spec.replication_factor or 1) > brokers:
                raise KafkaError(f"topic {spec.name} wants {spec.replication_factor} replicas but the cluster at "
                                 f"{self.settings.bootstrap_servers} has {brokers} broker(s)",
                                 code="INVALID_REPLICATION_FACTOR",
                                 hint="lower topics.replication_factor (--replication-factor) or leave it unset "
                                      "to follow the cluster")
        if to_create:
            futures = self._client.create_topics(
                [kadmin.NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor or -1,
                                 config=s.config) for s in to_create],
                operation_timeout=timeout_s, request_timeout=timeout_s)
            for spec in to_create:
                try:
                    futures[spec.name].result()
                    checks.append(TopicCheck(spec, "created", []))
                except confluent_kafka.KafkaException as exc:
                    wrapped = _wrap(exc, f"create topic {spec.name}")
                    if wrapped.code == "TOPIC_ALREADY_EXISTS":
                        checks.append(TopicCheck(spec, "exists", []))
                    else:
                        raise wrapped from None
            self._wait_for_leaders([s.name for s in to_create], timeout_s)
        present = [s for s in specs if s.name in existing]
        if present:
            configs = self._describe_configs([s.name for s in present], timeout_s)
            for spec in present:
                checks.append(TopicCheck(spec, "exists", _topic_problems(spec, existing[spec.name],
                                                                         configs.get(spec.name, {}))))
        order = {s.name: i for i, s in enumerate(specs)}
        return sorted(checks, key=lambda c: order[c.spec.name])

    def _wait_for_leaders(self, names: list[str], timeout_s: float) -> None:
        """Return once every partition of ``names`` has a leader in the metadata this client
        gets: the controller has created them, but each broker learns of them a moment later."""
        deadline = time.monotonic() + timeout_s
        while True:
            topics = self.ping(timeout_s).topics
            waiting = [n for n in names if n not in topics or topics[n].error is not None
                       or any(p.leader < 0 for p in topics[n].partitions.values())]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise KafkaError(f"topic(s) {', '.join(waiting)} were created but have no leader after "
                                 f"{timeout_s:.0f}s", code="LEADER_NOT_AVAILABLE", retriable=True,
                                 hint="check `forewarn stack status` (or the cluster's brokers)")
            time.sleep(0.1)

    def topic_configs(self, names: Iterable[str], timeout_s: float = 30.0) -> dict[str, dict[str, str]]:
        """Each topic's configuration (``max.message.bytes``, ``cleanup.policy``, ...)."""
        return self._describe_configs(list(names), timeout_s)

    def alter_topic_configs(self, configs: Mapping[str, Mapping[str, str]], timeout_s: float = 30.0) -> None:
        """Set configuration entries of existing topics (``{topic: {name: value}}``; entries
        not named keep their value) and return once :meth:`topic_configs` reports them."""
        resources = [kadmin.ConfigResource(kadmin.ResourceType.TOPIC, topic, incremental_configs=[
            kadmin.ConfigEntry(name, str(value), incremental_operation=kadmin.AlterConfigOpType.SET)
            for name, value in entries.items()]) for topic, entries in configs.items()]
        if not resources:
            return
        for resource, future in self._client.incremental_alter_configs(
                resources, request_timeout=timeout_s).items():
            try:
                future.result(timeout_s)
            except confluent_kafka.KafkaException as exc:
                raise _wrap(exc, f"alter the configuration of topic {resource.name}") from None
        deadline = time.monotonic() + timeout_s
        while True:
            have = self._describe_configs(list(configs), timeout_s)
            if all(have.get(t, {}).get(k) == str(v) for t, entries in configs.items() for k, v in entries.items()):
                return
            if time.monotonic() > deadline:
                raise KafkaError(f"the new configuration of {', '.join(configs)} was not visible "
                                 f"within {timeout_s:.0f}s", code="_TIMED_OUT", retriable=True)
            time.sleep(0.1)

    def _describe_configs(self, names: list[str], timeout_s: float) -> dict[str, dict[str, str]]:
        resources = [kadmin.ConfigResource(kadmin.ResourceType.TOPIC, n) for n in names]
        result: dict[str, dict[str, str]] = {}
        for resource, future in self._client.describe_configs(resources, request_timeout=timeout_s).items():
            try:
                entries = future.result()
            except confluent_kafka.KafkaException as exc:
                raise _wrap(exc, f"describe topic {resource.name}") from None
            result[resource.name] = {k: str(v.value) for k, v in entries.items()}
        return result

    def delete_topics(self, names: Iterable[str], timeout_s: float = 30.0) -> None:
        futures = self._client.delete_topics(list(names), operation_timeout=timeout_s)
        for name, future in futures.items():
            try:
                future.result()
            except confluent_kafka.KafkaException as exc:
                wrapped = _wrap(exc, f"delete topic {name}")
                if wrapped.code != "UNKNOWN_TOPIC_OR_PART":
                    raise wrapped from None

    # -- consumer groups -----------------------------------------------------------------

    def consumer_group_offsets(self, topics: Iterable[str] | None = None,
                               timeout_s: float = 5.0) -> dict[str, dict[tuple[str, int], int]]:
        """``{group: {(topic, partition): committed offset}}`` of every consumer group, limited to
        ``topics`` when given; groups that committed nothing there are left out."""
        wanted = None if topics is None else set(topics)
        try:
            groups = self._client.list_consumer_groups(request_timeout=timeout_s).result()
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "list consumer groups") from None
        committed: dict[str, dict[tuple[str, int], int]] = {}
        for listing in groups.valid:
            what = f"list the offsets of consumer group {listing.group_id}"
            request = [confluent_kafka.ConsumerGroupTopicPartitions(listing.group_id)]
            try:  # the request itself may raise (e.g. the client is gone), not only its future
                futures = self._client.list_consumer_group_offsets(request, request_timeout=timeout_s)
            except confluent_kafka.KafkaException as exc:
                raise _wrap(exc, what) from None
            for future in futures.values():
                try:
                    result = future.result()
                except confluent_kafka.KafkaException as exc:
                    raise _wrap(exc, what) from None
                offsets = {(tp.topic, tp.partition): int(tp.offset) for tp in result.topic_partitions or []
                           if wanted is None or tp.topic in wanted}
                if offsets:
                    committed[listing.group_id] = offsets
        return committed

    def end_offsets(self, partitions: Iterable[tuple[str, int]], *, read_committed: bool = True,
                    timeout_s: float = 5.0) -> dict[tuple[str, int], int]:
        """Each partition's end: the last stable offset for ``read_committed`` readers, else the
        high watermark."""
        specs: dict[Any, Any] = {confluent_kafka.TopicPartition(t, p): kadmin.OffsetSpec.latest()
                                 for t, p in partitions}
        if not specs:
            return {}
        level = (confluent_kafka.IsolationLevel.READ_COMMITTED if read_committed
                 else confluent_kafka.IsolationLevel.READ_UNCOMMITTED)
        ends: dict[tuple[str, int], int] = {}
        try:  # the request itself may raise, not only its futures
            futures = self._client.list_offsets(specs, isolation_level=level, request_timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "list end offsets") from None
        for tp, future in futures.items():
            try:
                ends[(tp.topic, tp.partition)] = int(future.result().offset)
            except confluent_kafka.KafkaException as exc:
                raise _wrap(exc, f"list the end offset of {tp.topic}[{tp.partition}]") from None
        return ends

    def group_lag(self, topics: Iterable[str] | None = None, timeout_s: float = 5.0) -> list[GroupLag]:
        """Every consumer group's lag on the partitions of ``topics`` it committed offsets for,
        sorted by group, topic and partition."""
        committed = self.consumer_group_offsets(topics, timeout_s)
        ends = self.end_offsets({tp for offsets in committed.values() for tp in offsets}, timeout_s=timeout_s)
        return [GroupLag(group, topic, partition, offset if offset >= 0 else None, ends.get((topic, partition), 0))
                for group, offsets in sorted(committed.items())
                for (topic, partition), offset in sorted(offsets.items())]

    # -- security --------------------------------------------------------------------------

    def create_acls(self, grants: Iterable[AclGrant], timeout_s: float = 30.0) -> int:
        """Allow each grant (Kafka keeps one binding per distinct grant, so applying the same
        table again changes nothing); returns how many were applied. Needs the ``ALTER``
        permission on the cluster (a super user)."""
        bindings = [grant.binding() for grant in grants]
        if not bindings:
            return 0
        try:
            futures = self._client.create_acls(bindings, request_timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, "create ACLs", hint=_SUPER_USER) from None
        for binding, future in futures.items():
            try:
                future.result()
            except confluent_kafka.KafkaException as exc:
                raise _wrap(exc, f"create the ACL {binding.principal} {binding.operation.name} "
                                 f"{binding.restype.name} {binding.name}", hint=_SUPER_USER) from None
        return len(bindings)

    def upsert_scram_user(self, user: str, password: str, *, iterations: int = 8192,
                          timeout_s: float = 30.0) -> None:
        """Create ``user``'s SCRAM-SHA-512 credential, or replace it (a password rotation):
        connections authenticated before keep working, new ones need the new password. The
        password goes to the broker inside the SASL_SSL session only; it is never logged."""
        info = kadmin.ScramCredentialInfo(kadmin.ScramMechanism.SCRAM_SHA_512, iterations)
        upsertion = kadmin.UserScramCredentialUpsertion(user, info, password.encode())
        try:
            futures = self._client.alter_user_scram_credentials([upsertion], request_timeout=timeout_s)
            for future in futures.values():
                future.result()
        except confluent_kafka.KafkaException as exc:
            raise _wrap(exc, f"set the SCRAM credential of {user}", hint=_SUPER_USER) from None


_SUPER_USER = "connect as the cluster's admin (a super user), e.g. with HOME/secure/clients/admin.toml"

_ACL_RESOURCES: Mapping[str, kadmin.ResourceType] = {
    "topic": kadmin.ResourceType.TOPIC, "group": kadmin.ResourceType.GROUP,
    "transactional_id": kadmin.ResourceType.TRANSACTIONAL_ID, "cluster": kadmin.ResourceType.BROKER}


@dataclass(frozen=True)
class AclGrant:
    """One allowed operation: ``User:<principal>`` may ``operation`` the ``resource`` named
    ``name`` (every resource whose name starts with it when ``prefixed``), from any host.
    Operations are Kafka's (``read``, ``write``, ``describe``, ``describe_configs``, ...);
    read and write imply describe."""

    principal: str
    operation: str
    resource: str
    name: str
    prefixed: bool = False

    def binding(self) -> kadmin.AclBinding:
        pattern = kadmin.ResourcePatternType.PREFIXED if self.prefixed else kadmin.ResourcePatternType.LITERAL
        return kadmin.AclBinding(_ACL_RESOURCES[self.resource], self.name, pattern, f"User:{self.principal}", "*",
                                 kadmin.AclOperation[self.operation.upper()], kadmin.AclPermissionType.ALLOW)
