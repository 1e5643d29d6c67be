"""The scoring worker: a Kafka consumer-group member that scores telemetry exactly once.

Each step consumes one batch of ``telemetry`` and ``maintenance`` records, runs it through the
:class:`~scoring.engine.ScoringEngine`, and then, in one Kafka transaction, produces the
predictions, the alert events, the dead letters of what the contract refused, the changed
machines' state and a marker to ``scoring.state``, and the consumer offsets. Readers use
``read_committed``, so each prediction is seen exactly once. A transaction error that requires
an abort rewinds the worker to the committed state (changelog and offsets) and the batch is
done again.

On assignment the worker rebuilds the state of its new partitions from the ``scoring.state``
changelog as of the committed offsets (see :mod:`scoring.state`); models are loaded from a
models folder and from the compacted ``models`` topic, and swapped only between batches.

The Kafka clients come from factories called with the adapters' own arguments
(``producer_factory(**overrides)``, ``consumer_factory(group_id, topics, **overrides)``), by
default :class:`~forewarn.kafka.KafkaProducer` and :class:`~forewarn.kafka.KafkaConsumer` on the
settings' cluster; :class:`forewarn.testing.InMemoryKafka`'s ``producer`` and ``consumer`` take
the same arguments, so unit tests run the worker on the in-memory fakes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import msgspec

from forewarn.contract import (
    SCHEMA_VERSION,
    Alert,
    Decoder,
    MaintenanceEvent,
    Rejected,
    Telemetry,
    encode,
    model_refused_alert,
)
from forewarn.deadletter import INGEST_HEADER, DeadLetter, Kind, Origin
from forewarn.errors import KafkaError
from forewarn.kafka import OFFSET_INVALID, KafkaConsumer, KafkaProducer, TopicPartition, read_to_end
from forewarn.ports import ConsumerLike, MessageLike, TransactionalProducerLike
from forewarn.service import LoopService
from forewarn.topics import Topics
from scoring.engine import BatchResult, Incoming, ScoringEngine
from scoring.errors import ScoringError
from scoring.metrics import ScoringMetrics
from scoring.registry import ModelRegistry, Offer
from scoring.settings import ScoringSettings
from scoring.state import MARKER_KEY, NO_OFFSET, Marker, encode_marker, encode_record, restore_partitions

__all__ = ["ConsumerFactory", "ProducerFactory", "ScoringWorker"]

log = logging.getLogger(__name__)



class ProducerFactory(Protocol):
    """Builds the worker's transactional producer from librdkafka overrides."""

    def __call__(self, **overrides: Any) -> TransactionalProducerLike: ...


class ConsumerFactory(Protocol):
    """Builds a consumer of group ``group_id`` (subscribed to ``topics`` when given)."""

    def __call__(self, group_id: str, topics: Iterable[str] = (), **overrides: Any) -> ConsumerLike: ...


def _header(message: MessageLike, name: str) -> int | None:
    for key, value in message.headers() or ():
        if key == name and value:
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ScoringWorker(LoopService):
    """A :class:`~forewarn.service.LoopService`: ``start()``, ``step()`` until ``stop()``, then
    ``close()``; or ``run()``. ``decoder`` is the contract decoder telemetry and maintenance
    records are validated with (its limits decide what is dead-lettered)."""

    def __init__(self, settings: ScoringSettings, *, registry: ModelRegistry | None = None,
                 metrics: ScoringMetrics | None = None, clock: Callable[[], float] = time.time,
                 decoder: Decoder | None = None, producer_factory: ProducerFactory | None = None,
                 consumer_factory: ConsumerFactory | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.options = settings.scoring
        self.topics = Topics.from_settings(settings.topics)
        self.worker_id = self.options.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.registry = registry or ModelRegistry(threads=self.options.threads, batch_size=self.options.score_batch,
                                                  shadow=self.options.shadow)
        self.metrics = metrics if metrics is not None else ScoringMetrics()
        self.clock = clock
        self.engine = ScoringEngine(self.registry, self.options, clock)
        self.decoder = decoder if decoder is not None else Decoder(settings.input.limits(), clock)
        self._fast_telemetry = msgspec.json.Decoder(Telemetry)
        kafka = settings.kafka

        def kafka_producer(**overrides: Any) -> TransactionalProducerLike:
            return KafkaProducer(kafka, **overrides)

        def kafka_consumer(group_id: str, topics: Iterable[str] = (), **overrides: Any) -> ConsumerLike:
            return KafkaConsumer(kafka, group_id, topics, **overrides)

        self._producer_factory: ProducerFactory = producer_factory or kafka_producer
        self._consumer_factory: ConsumerFactory = consumer_factory or kafka_consumer
        self._started = False
        self._producer: TransactionalProducerLike | None = None
        self._consumer: ConsumerLike | None = None
        self._models: ConsumerLike | None = None
        self._owned: set[int] = set()
        self._next: dict[tuple[str, int], int] = {}
        self._pending_alerts: list[Alert] = []
        self._last_lag = 0.0
        self._last_shadow_log = 0.0
        self.batches = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Load models (folder, then the ``models`` topic up to its end), start the
        transactional producer and subscribe. Raises :class:`ScoringError` on bad setup."""
        if self._started:
            return
        if self.options.models_dir is not None:
            for offer in self.registry.load_dir(self.options.models_dir):
                self._record_offer(offer)
        self._models = self._consumer_factory(f"{self.options.group_id}.models", (),
                                              **{"isolation.level": "read_uncommitted"})
        self._load_models_topic()
        tid = f"{self.options.group_id}.{self.worker_id}"
        self._producer = self._producer_factory(**{
            "transactional.id": tid,
            "transaction.timeout.ms": self.options.transaction_timeout_ms,
            "linger.ms": 2,  # commit_transaction flushes anyway; a long linger only adds latency
            # The coordinator answers CONCURRENT_TRANSACTIONS while it still writes the last
            # transaction's markers; librdkafka's default 100 ms backoff then made every
            # back-to-back send_offsets_to_transaction wait for it. Retry sooner.
            "retry.backoff.ms": 5,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
        })
        try:
            self._producer.init_transactions()
        except KafkaError as error:
            raise ScoringError(f"cannot start the transactional producer {tid}: {error.one_line()}",
                               hint="is Kafka running and reachable?") from None
        overrides: dict[str, object] = {
            "partition.assignment.strategy": "range",
            "max.poll.interval.ms": 300_000,
            "session.timeout.ms": self.options.session_timeout_ms,
            "heartbeat.interval.ms": 1_000,
            "fetch.wait.max.ms": 20,
            "queued.min.messages": 200_000,
        }
        if self.options.worker_id:
            # Static membership: a restarted worker gets its partitions back without waiting for
            # the session of its killed predecessor to time out.
            overrides["group.instance.id"] = self.options.worker_id
        consumer = self._consumer_factory(self.options.group_id, (), **overrides)
        consumer.subscribe([self.topics.telemetry, self.topics.maintenance],
                           on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._consumer = consumer
        if self.options.metrics_port is not None:
            self.metrics.serve(self.options.metrics_port)
        self._started = True
        log.info("scoring worker %s started (group %s, transactional.id %s)", self.worker_id,
                 self.options.group_id, tid)

    def close(self) -> None:
        """Leave the group, release the clients and stop the metrics endpoint."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._models is not None:
            self._models.close()
            self._models = None
        if self._producer is not None:
            self._producer.close(10.0)
            self._producer = None
        self.engine.close()
        self.metrics.close()
        self._started = False

    # -- one iteration ----------------------------------------------------------------------

    def step(self) -> int:
        """Consume, score and commit one batch; returns the records it consumed (a batch whose
        transaction was aborted is consumed again by the next step)."""
        assert self._consumer is not None and self._producer is not None, "start() first"
        self._poll_models(0.0)
        if not self.registry.serving:
            log.info("waiting for a model on %s", self.topics.models)
            self._poll_models(1.0)
            return 0
        messages = self._next_batch()
        if not messages and not self._pending_alerts:
            self._maybe_lag()
            return 0
        readings: list[Incoming] = []
        events: list[tuple[MaintenanceEvent, int]] = []
        rejected: list[tuple[Rejected, MessageLike]] = []
        telemetry, decoder = self.topics.telemetry, self.decoder
        nxt = self._next
        for message in messages:
            topic, partition = message.topic() or "", message.partition() or 0
            nxt[(topic, partition)] = (message.offset() or 0) + 1
            raw = message.value() or b""
            # Event time is checked against the bridge's arrival time (the ingest header);
            # records produced without one are checked against now.
            ingest = _header(message, INGEST_HEADER)
            arrived = ingest if ingest is not None else decoder.arrival_ms()
            if topic == telemetry:
                reading = self._decode_telemetry(raw, arrived)
                if isinstance(reading, Rejected):
                    rejected.append((reading, message))
                else:
                    readings.append(Incoming(reading, partition, ingest))
            else:
                event = decoder.maintenance(raw, arrived)
                if isinstance(event, Rejected):
                    rejected.append((event, message))
                else:
                    events.append((event, partition))
        result = self.engine.process(readings, events)
        alerts = [*self._pending_alerts, *result.alerts]
        if self._transact(result, alerts, rejected, {m.partition() or 0 for m in messages}):
            self._observe(result, alerts, len(readings), len(rejected))
            self.batches += 1
        self._maybe_lag()
        return len(messages)

    def _next_batch(self) -> Sequence[MessageLike]:
        """Whatever has been fetched already, up to ``max_batch`` records; when nothing has, the
        first record to arrive within ``commit_interval_ms`` and whatever came with it. A batch
        never waits for more records than are there, so it holds what arrived while the last
        one was scored: small and quick at a low rate, large (fewer transactions) when behind."""
        assert self._consumer is not None
        consumer, most = self._consumer, self.options.max_batch
        messages = consumer.consume(most, 0)
        if messages:
            return messages
        first = consumer.consume(1, self.options.commit_interval_ms / 1000)
        if not first or most == 1:
            return first
        return [*first, *consumer.consume(most - 1, 0)]

    def _decode_telemetry(self, raw: bytes, arrived_ms: int) -> Telemetry | Rejected:
        """The contract decoder's verdict, with a fast path for the common good reading: JSON
        has no NaN/Infinity and msgspec refuses out-of-range numbers, so a reading that decodes,
        is small enough and has a ts within the arrival-time bounds needs no further checks."""
        limits = self.decoder.limits
        if len(raw) <= limits.max_message_bytes:
            try:
                reading = self._fast_telemetry.decode(raw)
            except (msgspec.MsgspecError, RecursionError):
                pass
            else:
                lo, hi = limits.ts_window(arrived_ms)
                if reading.v == SCHEMA_VERSION and lo <= reading.ts <= hi:
                    return reading
        return self.decoder.telemetry(raw, arrived_ms)

    def _transact(self, result: BatchResult, alerts: list[Alert], rejected: list[tuple[Rejected, MessageLike]],
                  moved: set[int]) -> bool:
        """Produce the batch's output and commit it with the offsets; False when the
        transaction had to be aborted (the worker is rewound to the committed state)."""
        assert self._producer is not None and self._consumer is not None
        producer = self._producer
        produce = producer.produce
        started = time.perf_counter()
        try:
            producer.begin_transaction()
            predictions, alerts_topic, state = self.topics.predictions, self.topics.alerts, self.topics.scoring_state
            for key, value in result.predictions:
                produce(predictions, value, key)
            for alert in alerts:
                produce(alerts_topic, encode(alert), alert.machine_id)
            if rejected:
                now_ms = int(self.clock() * 1000)
                for reason, message in rejected:
                    source = message.topic() or ""
                    kind = Kind.MAINTENANCE if source == self.topics.maintenance else Kind.TELEMETRY
                    letter = DeadLetter.from_kafka(reason, source_topic=source, kind=kind, key=message.key(),
                                                   received_at=now_ms, origin=Origin.SCORING).record(self.topics.dlq)
                    produce(letter.topic, letter.value, letter.key, headers=letter.headers,
                            timestamp_ms=letter.timestamp_ms)
            for partition, machines in result.dirty.items():
                for key, record in self.engine.export(machines):
                    produce(state, encode_record(record), key, partition=partition)
            for partition in sorted(moved & self._owned):
                marker = Marker(self._next.get((self.topics.telemetry, partition), NO_OFFSET),
                                self._next.get((self.topics.maintenance, partition), NO_OFFSET))
                produce(state, encode_marker(marker), MARKER_KEY, partition=partition)
            offsets = [TopicPartition(t, p, o) for (t, p), o in self._next.items() if p in self._owned]
            if offsets:
                producer.send_offsets_to_transaction(offsets, self._consumer.consumer_group_metadata())
            producer.commit_transaction()
        except KafkaError as error:
            if not error.txn_requires_abort:
                raise ScoringError(f"transaction failed: {error.one_line()}",
                                   hint="the worker stops; restarted, it resumes from the committed state") from None
            log.warning("transaction aborted (%s); rewinding to the committed state", error.one_line())
            try:
                producer.abort_transaction()
            except KafkaError as abort_error:
                raise ScoringError(f"aborting the transaction failed: {abort_error.one_line()}",
                                   hint="the worker stops; restarted, it resumes from the committed state") from None
            self._rewind()
            return False
        self._pending_alerts.clear()
        self.metrics.transaction.observe(time.perf_counter() - started)
        return True

    def _observe(self, result: BatchResult, alerts: list[Alert], n_readings: int, n_rejected: int) -> None:
        """Count a committed batch."""
        m = self.metrics
        m.observe_batch(result, alerts, n_readings, n_rejected, self.clock() * 1000)
        for report in result.shadow:
            m.agreement.labels(report.asset_type).set(report.agreement)
            m.shadow_delta.labels(report.asset_type).set(report.abs_p_fail)
            if time.monotonic() - self._last_shadow_log > 30:
                self._last_shadow_log = time.monotonic()
                log.info("shadow %s vs serving (%s): agreement %.3f over %s, mean |dp_fail| %.4f, |drul| %.2f",
                         report.candidate, report.asset_type, report.agreement, report.n, report.abs_p_fail,
                         report.abs_rul)

    def _maybe_lag(self) -> None:
        if self._consumer is None or time.monotonic() - self._last_lag < 10:
            return
        self._last_lag = time.monotonic()
        consumer, telemetry = self._consumer, self.topics.telemetry
        for p in sorted(self._owned):
            try:
                # The high watermark of the last fetch response: no broker round trip in the loop.
                _, high = consumer.watermarks(telemetry, p, cached=True)
            except KafkaError:
                continue
            position = self._next.get((telemetry, p))
            if position is not None and high >= 0:
                self.metrics.lag.labels(str(p)).set(max(0, high - position))

    # -- models -----------------------------------------------------------------------------

    def _load_models_topic(self, timeout_s: float = 30.0) -> None:
        """Read the compacted ``models`` topic from its start to its current end; the models
        consumer is left at the end, where :meth:`_poll_models` goes on."""
        assert self._models is not None
        try:
            # Every record in order (not only the latest per key): when the newest bundle of a
            # key is bad, the one before it keeps serving, as it would have without a restart.
            for message in read_to_end(self._models, self.topics.models, idle_timeout_s=timeout_s, max_messages=100):
                key = (message.key() or b"").decode(errors="replace")
                self._record_offer(self.registry.offer(key, message.value()))
        except KafkaError as error:
            if error.code == "UNKNOWN_TOPIC_OR_PART":
                raise ScoringError(f"topic {self.topics.models} does not exist",
                                   hint="create the topics with `forewarn topics create`") from None
            raise ScoringError(f"cannot read {self.topics.models}: {error}",
                               hint=error.hint or "start Kafka with `forewarn stack up` or fix --bootstrap-servers"
                               ) from None

    def _poll_models(self, timeout_s: float) -> None:
        if self._models is None:
            return
        for message in self._models.consume(10, timeout_s):
            key = (message.key() or b"").decode(errors="replace")
            self._record_offer(self.registry.offer(key, message.value()))

    def _record_offer(self, offer: Offer) -> None:
        self.metrics.models.labels(offer.role, offer.outcome).inc()
        refusal = offer.refusal
        if refusal is None:
            return
        self._pending_alerts.append(model_refused_alert(offer.asset_type, refusal.version, offer.role, refusal.reason,
                                                        refusal.detail, int(self.clock() * 1000)))

    # -- rebalancing and recovery -------------------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        """Rebuild the state of the assigned partitions as of the group's committed offsets."""
        assert self._consumer is not None
        numbers = {tp.partition for tp in partitions}
        started = time.monotonic()
        try:
            committed = self._consumer.committed(partitions, timeout_s=self.options.restore_timeout_s)
        except KafkaError as error:
            raise ScoringError(f"cannot read committed offsets: {error.one_line()}") from None
        targets: dict[int, list[int]] = {p: [NO_OFFSET, NO_OFFSET] for p in numbers}
        for tp in committed:
            if tp.offset >= 0:
                index = 0 if tp.topic == self.topics.telemetry else 1
                targets[tp.partition][index] = tp.offset
                self._next[(tp.topic, tp.partition)] = tp.offset
        markers = {p: Marker(t, m) for p, (t, m) in targets.items()}
        reader = self._consumer_factory(f"{self.options.group_id}.restore", (),
                                        **{"enable.auto.offset.store": False})
        try:
            states = restore_partitions(reader, self.topics.scoring_state, markers,
                                        timeout_s=self.options.restore_timeout_s)
        finally:
            reader.close()
        kept = 0
        for state in states.values():
            kept += self.engine.restore(state)
        self._owned = numbers
        self.metrics.restore.observe(time.monotonic() - started)
        log.info("assigned partitions %s; restored %s windows in %.2fs", sorted(numbers), kept,
                 time.monotonic() - started)

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        self.engine.forget_partitions(numbers)
        self._owned -= numbers
        for key in [k for k in self._next if k[1] in numbers]:
            del self._next[key]
        log.info("revoked partitions %s", sorted(numbers))

    def _rewind(self) -> None:
        """After an aborted transaction: rebuild the owned partitions' state from the
        changelog and assign them again at the committed offsets, so the next step consumes
        the aborted batch again."""
        assert self._consumer is not None
        consumer = self._consumer
        assignment = consumer.assignment()
        owned = set(self._owned)
        self._on_revoke(assignment)
        self._on_assign(assignment)
        # OFFSET_INVALID: nothing committed yet, so the committed offset, i.e. auto.offset.reset.
        consumer.assign([TopicPartition(tp.topic, tp.partition, self._next.get((tp.topic, tp.partition),
                                                                                OFFSET_INVALID))
                         for tp in assignment])
        log.info("rewound partitions %s to the committed state", sorted(owned))
