"""The scoring worker: a Kafka consumer-group member that scores telemetry exactly once.

Each step consumes one batch of ``telemetry`` and ``maintenance`` records, runs it through the
:class:`~scoring.engine.ScoringEngine`, and then, in one Kafka transaction, produces the
predictions, the alert events, the dead letters of what the contract refused, the changed
machines' state and a marker to ``scoring.state``, every ``stats_interval_s`` a
:class:`~forewarn.contract.PipelineStats` record (what committed batches scored, and why the
rest was not) to ``pipeline.stats``, and the consumer offsets. Readers use ``read_committed``,
so each prediction is seen exactly once, and an aborted batch is never counted.

Kafka failures never end the worker, and never lose or double a prediction; they are told apart
by librdkafka's flags. A retriable commit (a timeout) is retried until the transaction timeout;
then, or on an error that requires an abort, the transaction is aborted. A fatal producer error
(fenced, e.g. after the coordinator timed the transaction out), an abort that fails, or a call
stuck past its timeout drop the producer: a new one's ``init_transactions`` ends what it left
open. Either way the worker rewinds to the committed state (changelog and offsets) and does the
batch again, checking first whether a commit whose answer was lost had landed after all. A
failed fetch rewinds too; a fenced consumer is replaced by a new group member, and only a
consumer fenced again and again (a twin with the same worker id) ends the worker, with one line.
While Kafka is away recovery is retried with a pause that doubles up to ``retry_backoff_max_s``.
A record the engine cannot process goes to the dead-letter topic as ``unprocessable`` and the
batch is scored without it.

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
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msgspec

from forewarn.contract import (
    SCHEMA_VERSION,
    Alert,
    Decoder,
    MaintenanceEvent,
    PipelineStats,
    Reason,
    Rejected,
    Telemetry,
    encode,
    model_refused_alert,
)
from forewarn.deadletter import DeadLetter, Kind, Origin, ingest_ms
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

_FENCE_LIMIT, _FENCE_WINDOW_S = 3, 600.0  # consumer fencings that mean another process has this worker id
_FIRST_PAUSE_S = 0.05  # the first pause of a recovery that failed; it doubles with every failure in a row
_HANG_GRACE_S = 10.0  # how long past its own timeout a Kafka call may block before it counts as stuck
_Event = tuple[MaintenanceEvent, int]  # an event and its partition, as the engine takes them
_T = TypeVar("_T")
_Item = tuple[_T, MessageLike]  # what the engine takes, and the record it came from


class ProducerFactory(Protocol):
    """Builds the worker's transactional producer from librdkafka overrides."""

    def __call__(self, **overrides: Any) -> TransactionalProducerLike: ...


class ConsumerFactory(Protocol):
    """Builds a consumer of group ``group_id`` (subscribed to ``topics`` when given)."""

    def __call__(self, group_id: str, topics: Iterable[str] = (), **overrides: Any) -> ConsumerLike: ...


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
        self.registry = registry or ModelRegistry.from_settings(settings.trust, threads=self.options.threads,
                                                                batch_size=self.options.score_batch,
                                                                shadow=self.options.shadow)
        self.metrics = metrics if metrics is not None else ScoringMetrics()
        self.clock = clock
        limits = settings.input.limits()
        self.engine = ScoringEngine(self.registry, self.options, clock, max_future_ms=limits.max_future_ms)
        self.decoder = decoder if decoder is not None else Decoder(limits, clock)
        self._fast_telemetry = msgspec.json.Decoder(Telemetry)
        kafka = settings.kafka

        def kafka_producer(**overrides: Any) -> TransactionalProducerLike:
            return KafkaProducer(kafka, **overrides)

        def kafka_consumer(group_id: str, topics: Iterable[str] = (), **overrides: Any) -> ConsumerLike:
            return KafkaConsumer(kafka, group_id, topics, **overrides)

        self._producer_factory: ProducerFactory = producer_factory or kafka_producer
        self._consumer_factory: ConsumerFactory = consumer_factory or kafka_consumer
        self._started = False
        self._transactional_id = f"{self.options.group_id}.{self.worker_id}"
        self._recovering = False  # a failure left the worker off the committed state: rewind first
        self._failures = 0  # failed transactions and recoveries since the last commit
        self._fenced: list[float] = []  # when the consumer failed for good (monotonic)
        self._stats_since = int(clock() * 1000)
        self._stats_counts: dict[str, int] = {}  # committed, not yet published
        self._stats_resets: dict[str, int] = {}
        self._attempt: _Attempt | None = None  # the transaction that failed, whose outcome recovery checks
        self._landed = False  # whether it committed after all
        self._last_committed: dict[tuple[str, int], int] = {}  # offsets as of the last commit or rewind
        self._final_stats = False  # closing: publish what was counted, due or not
        self._producer: TransactionalProducerLike | None = None
        self._abandoned: list[TransactionalProducerLike] = []  # producers stuck in a call: kept, never closed
        self._consumer: ConsumerLike | None = None
        self._models: ConsumerLike | None = None
        self._models_next: dict[tuple[str, int], int] = {}  # the next models record to offer, per partition
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
        try:
            self._producer = self._start_producer()
        except KafkaError as error:
            raise ScoringError(f"cannot start the transactional producer {self._transactional_id}: "
                               f"{error.one_line()}", hint="is Kafka running and reachable?") from None
        self._consumer = self._join()
        if self.options.metrics_port is not None:
            self.metrics.serve(self.options.metrics_port, self.options.metrics_host)
        self._started = True
        log.info("scoring worker %s started (group %s, transactional.id %s)", self.worker_id,
                 self.options.group_id, self._transactional_id)

    def _join(self) -> ConsumerLike:
        """A new member of the scoring group, subscribed (partitions come with its first consume)."""
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
        return consumer

    def _start_producer(self) -> TransactionalProducerLike:
        """A new transactional producer, registered: its ``init_transactions`` fences any older
        producer of this worker id and aborts the transaction that one left open."""
        producer = self._producer_factory(**{
            "transactional.id": self._transactional_id,
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
            producer.init_transactions()
        except KafkaError:
            producer.close(1.0)
            raise
        return producer

    def close(self) -> None:
        """Publish the pipeline stats still waiting for their interval, leave the group, release
        the clients and stop the metrics endpoint."""
        if self._consumer is not None and self._producer is not None and not self._recovering and (
                self._stats_counts or self._stats_resets):
            self._final_stats = True
            try:
                self._transact(BatchResult(), [], [], set())
            except ScoringError as error:
                log.warning("the last pipeline stats were not published: %s", error.one_line())
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._models is not None:
            self._models.close()
            self._models = None
        self._drop_producer(10.0)
        self.engine.close()
        self.metrics.close()
        self._started = False

    # -- one iteration ----------------------------------------------------------------------

    def step(self) -> int:
        """Consume, score and commit one batch; returns the records it consumed (a batch whose
        transaction failed is consumed again by a later step, once the worker is rewound)."""
        assert self._consumer is not None, "start() first"
        if self._recovering and not self._recover():
            return 0
        self._poll_models(0.0)
        if not self.registry.serving:
            log.info("waiting for a model on %s", self.topics.models)
            self._poll_models(1.0)
            return 0
        try:
            messages = self._next_batch()
        except KafkaError as error:
            self._consume_failed(error)
            return 0
        if self._recovering:  # a rebalance could not rebuild state: these records are read again
            return 0
        now_ms = int(self.clock() * 1000)
        if not messages and not self._pending_alerts and not self._stats_due(now_ms, False):
            self._maybe_lag()
            return 0
        readings, events, rejected = self._decode(messages)
        processed = self._process(readings, events)
        if processed is None:
            return 0
        result, unprocessable = processed
        rejected.extend(unprocessable)
        alerts = [*self._pending_alerts, *result.alerts]
        if self._transact(result, alerts, rejected, {m.partition() or 0 for m in messages}):
            left_out = sum(1 for _, message in unprocessable if message.topic() == self.topics.telemetry)
            self._observe(result, alerts, len(readings) - left_out, len(rejected))
            self.batches += 1
        self._maybe_lag()
        return len(messages)

    def _decode(self, messages: Sequence[MessageLike]) -> tuple[list[_Item[Incoming]], list[_Item[_Event]],
                                                                 list[tuple[Rejected, MessageLike]]]:
        """The batch's readings and maintenance events, each with its record, and what the
        contract refused (or what its decoding could not handle, which is refused as
        ``unprocessable``)."""
        readings: list[_Item[Incoming]] = []
        events: list[_Item[_Event]] = []
        rejected: list[tuple[Rejected, MessageLike]] = []
        telemetry, decoder = self.topics.telemetry, self.decoder
        nxt = self._next
        # Event time is checked against the bridge's arrival time (the ingest header); records
        # produced without one are checked against the time this batch is decoded.
        now_ms = decoder.arrival_ms()
        for message in messages:
            topic, partition = message.topic() or "", message.partition() or 0
            nxt[(topic, partition)] = (message.offset() or 0) + 1
            raw = message.value() or b""
            ingest = ingest_ms(message.headers())
            arrived = ingest if ingest is not None else now_ms
            try:
                if topic == telemetry:
                    reading = self._decode_telemetry(raw, arrived)
                    if isinstance(reading, Rejected):
                        rejected.append((reading, message))
                    else:
                        readings.append((Incoming(reading, partition, ingest), message))
                else:
                    event = decoder.maintenance(raw, arrived)
                    if isinstance(event, Rejected):
                        rejected.append((event, message))
                    else:
                        events.append(((event, partition), message))
            except Exception as error:  # noqa: BLE001 - one record must never stop the worker
                rejected.append((_unprocessable(error, raw, "decoding"), message))
        return readings, events, rejected

    def _process(self, readings: list[_Item[Incoming]], events: list[_Item[_Event]]
                 ) -> tuple[BatchResult, list[tuple[Rejected, MessageLike]]] | None:
        """The engine's result for the batch. When processing raises, the records that make it
        raise are found and left out (see :meth:`_isolate`); ``None`` when that could not be
        done because Kafka was unreachable (the worker then rewinds and reads the batch again)."""
        try:
            return self.engine.process([r for r, _ in readings], [e for e, _ in events]), []
        except Exception as error:  # noqa: BLE001 - any record the engine cannot handle is dead-lettered
            log.error("scoring a batch of %s readings and %s maintenance events failed (%s: %s); looking for "
                      "the records that cannot be processed", len(readings), len(events), type(error).__name__,
                      error)
        try:
            return self._isolate(readings, events)
        except KafkaError as error:
            log.warning("cannot rebuild state to isolate the failing records (%s); rewinding", error.one_line())
            self._recovering = True
            return None

    def _isolate(self, readings: list[_Item[Incoming]], events: list[_Item[_Event]]
                 ) -> tuple[BatchResult, list[tuple[Rejected, MessageLike]]]:
        """Process the batch again one record at a time, in the engine's order (readings, then
        events), from the committed state. A record that raises is dead-lettered as
        ``unprocessable``; as the failed call may have left state half-updated, state goes back
        to the committed one, the records before it are done again in one call, and the pass
        goes on after it. Predictions do not depend on where a batch is cut, so the result is
        what the whole batch would have given without the records left out."""
        items: list[tuple[Incoming | None, _Event | None, MessageLike]] = [
            *((r, None, m) for r, m in readings), *((None, e, m) for e, m in events)]
        bad: dict[int, Rejected] = {}
        self._restore_owned()
        results: list[BatchResult] = []
        index = 0
        while index < len(items):
            reading, event, message = items[index]
            try:
                results.append(self.engine.process([reading] if reading is not None else [],
                                                   [event] if event is not None else []))
            except Exception as error:  # noqa: BLE001 - this record is one the engine cannot handle
                bad[index] = _unprocessable(error, message.value() or b"", "scoring")
                log.error("record %s[%s]@%s cannot be processed (%s); it goes to the dead-letter topic",
                          message.topic(), message.partition(), message.offset(), bad[index].detail)
                results = self._redo(items[:index], bad)
            index += 1
        return _merge(results), [(bad[i], items[i][2]) for i in sorted(bad)]

    def _redo(self, items: list[tuple[Incoming | None, _Event | None, MessageLike]],
              bad: dict[int, Rejected]) -> list[BatchResult]:
        """From the committed state, the results of ``items`` but the ``bad`` ones: in one call
        (each of them went through alone already), else, should they fail together, one by one."""
        self._restore_owned()
        kept = [item for i, item in enumerate(items) if i not in bad]
        try:
            return [self.engine.process([r for r, _, _ in kept if r is not None],
                                        [e for _, e, _ in kept if e is not None])]
        except Exception as error:  # noqa: BLE001 - then one by one, as before
            log.warning("records that score alone fail together (%s: %s); scoring them one by one",
                        type(error).__name__, error)
        self._restore_owned()
        return [self.engine.process([r] if r is not None else [], [e] if e is not None else []) for r, e, _ in kept]

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
        """Produce the batch's output (and, when due, the pipeline stats) and commit it with the
        offsets; False when the transaction failed (the worker is rewound to the committed
        state, or will be before its next batch)."""
        assert self._producer is not None and self._consumer is not None
        producer = self._producer
        produce = producer.produce
        started = time.perf_counter()
        now_ms = int(self.clock() * 1000)
        counts, resets = self._batch_counts(result, rejected)
        stats = self._stats_record(now_ms, counts, resets)
        offered = {k: o for k, o in self._next.items() if k[1] in self._owned}
        moves = any(self._last_committed.get(k) != o for k, o in offered.items())
        attempt = _Attempt(offered, moves, counts, resets, stats)
        try:
            producer.begin_transaction()
            predictions, alerts_topic, state = self.topics.predictions, self.topics.alerts, self.topics.scoring_state
            for key, value in result.predictions:
                produce(predictions, value, key)
            for alert in alerts:
                produce(alerts_topic, encode(alert), alert.machine_id)
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
            if stats is not None:
                produce(self.topics.pipeline, encode(stats), self.worker_id)
            offsets = [TopicPartition(t, p, o) for (t, p), o in attempt.offsets.items()]
            if offsets:
                self._send_offsets(producer, offsets, self._consumer.consumer_group_metadata())
            self._commit(producer)
        except KafkaError as error:
            self._attempt, self._landed = attempt, False
            self._transaction_failed(error)
            return self._landed
        self._committed(attempt)
        self.metrics.transaction.observe(time.perf_counter() - started)
        return True

    def _committed(self, attempt: _Attempt) -> None:
        self._pending_alerts.clear()
        self._failures = 0
        self._last_committed = attempt.offsets
        self._count_stats(attempt.counts, attempt.resets, attempt.stats)

    def _commit(self, producer: TransactionalProducerLike) -> None:
        """Commit the open transaction. A retriable failure (a timeout: the commit goes on in
        the background, and calling it again resumes it) is retried until the transaction
        timeout has passed."""
        self._retrying(producer.commit_transaction, "committing the transaction")

    def _retrying(self, call: Callable[[float], None], what: str) -> None:
        """``call(timeout_s)`` again while it fails retriably, until the transaction timeout has
        passed or the worker is stopping, with a short pause when it fails at once."""
        deadline = time.monotonic() + self.options.transaction_timeout_ms / 1000
        while True:
            try:
                call(max(1.0, deadline - time.monotonic()))
                return
            except KafkaError as error:
                if (not error.retriable or error.fatal or error.txn_requires_abort or error.code == "_CONFLICT"
                        or time.monotonic() >= deadline or self.stopping):
                    raise
                log.warning("%s: %s; trying again", what, error.one_line())
                self._stop.wait(_FIRST_PAUSE_S)

    def _transaction_failed(self, error: KafkaError) -> None:
        """Undo a failed transaction. Fatal (the producer cannot go on, e.g. fenced after the
        coordinator timed the transaction out): drop the producer; a new one's
        ``init_transactions`` aborts what this one left open. Otherwise abort, and drop the
        producer when the abort fails too. Then rewind, at once or before the next batch."""
        self._failures += 1
        if error.fatal:
            log.error("transactional producer failed for good (%s); starting a new one and rewinding to the "
                      "committed state", error.one_line())
            self._drop_producer()
        else:
            log.warning("transaction failed (%s); aborting it and rewinding to the committed state",
                        error.one_line())
            if not self._abort():
                self._drop_producer()
        self._recovering = True
        self._recover()

    def _abort(self) -> bool:
        """Abort the open transaction (retrying a timeout until the transaction timeout has
        passed); False when it could not be aborted (a commit still in progress included)."""
        assert self._producer is not None
        try:
            # _CONFLICT: a timed-out commit still runs in the background; it cannot be aborted
            # beside it, and only a new producer ends it.
            self._retrying(self._producer.abort_transaction, "aborting the transaction")
        except KafkaError as error:
            log.warning("aborting the transaction failed (%s); a new producer will abort it", error.one_line())
            return False
        return True

    def _send_offsets(self, producer: TransactionalProducerLike, offsets: list[TopicPartition],
                      metadata: object) -> None:
        """librdkafka's ``send_offsets_to_transaction`` can block for good, past its timeout,
        while the group coordinator is down (confluentinc/librdkafka#5456), so it runs on a
        helper thread. A call that has not returned ``_HANG_GRACE_S`` after its timeout is a
        fatal producer error: the producer is abandoned (never closed: a thread is inside it)
        and a new one, which fences it, takes over."""
        timeout_s = self.options.transaction_timeout_ms / 1000
        failed: list[BaseException] = []

        def send() -> None:
            try:
                producer.send_offsets_to_transaction(offsets, metadata, timeout_s)
            except BaseException as error:  # noqa: BLE001 - raised again on the worker's thread
                failed.append(error)

        # A daemon thread: one stuck for good must not keep the process from exiting.
        thread = threading.Thread(target=send, name="send-offsets", daemon=True)
        thread.start()
        thread.join(timeout_s + _HANG_GRACE_S)
        if thread.is_alive():
            self._abandoned.append(producer)
            raise KafkaError(f"send offsets to transaction: no answer {timeout_s + _HANG_GRACE_S:.0f}s after the "
                             "call (confluentinc/librdkafka#5456); the producer is abandoned", code="_TIMED_OUT",
                             fatal=True)
        if failed:
            raise failed[0]

    def _drop_producer(self, timeout_s: float = 1.0) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            if any(producer is stuck for stuck in self._abandoned):
                return
            try:
                producer.close(timeout_s)
            except KafkaError as error:
                log.warning("closing the producer: %s", error.one_line())

    def _recover(self) -> bool:
        """Bring the worker back to the committed state after a failure: a new transactional
        producer if the old one was dropped, then :meth:`_rewind`. On a Kafka error the worker
        stays in recovery and the next step tries again, after a pause that doubles with every
        failure in a row up to ``retry_backoff_max_s``."""
        if self._failures > 1:
            pause = min(self.options.retry_backoff_max_s, _FIRST_PAUSE_S * 2 ** min(self._failures - 2, 30))
            self._stop.wait(pause)
        try:
            if self._producer is None:
                self._producer = self._start_producer()
            self._rewind()
        except KafkaError as error:
            self._failures += 1
            log.warning("recovering to the committed state failed (%s); trying again", error.one_line())
            return False
        self._recovering = False
        self._check_attempt()
        return True

    def _check_attempt(self) -> None:
        """A commit whose answer was lost (Kafka died after writing it) may have committed
        after all: when the committed offsets, now read back, are the failed transaction's, it
        is counted as committed (its predictions are not produced again: reading goes on from
        those offsets)."""
        attempt, self._attempt = self._attempt, None
        self._landed = attempt is not None and attempt.moves and all(
            self._next.get(k) == o for k, o in attempt.offsets.items())
        if self._landed and attempt is not None:
            log.info("the failed transaction had committed after all")
            self._committed(attempt)

    def _consume_failed(self, error: KafkaError) -> None:
        """A fatal consumer error (librdkafka's ``_FATAL``: with static membership, the group
        fenced this member, which also happens to a lone worker when the coordinator comes back
        after a crash) leaves the group with a new member; fenced that way again and again
        within ``_FENCE_WINDOW_S``, another process runs under this worker id, and the worker
        ends with one line. Anything else may have cost records fetched in the same call: rewind
        to the committed offsets."""
        self._failures += 1
        if error.fatal or error.code == "_FATAL":
            now = time.monotonic()
            self._fenced = [t for t in self._fenced if now - t < _FENCE_WINDOW_S] + [now]
            if len(self._fenced) >= _FENCE_LIMIT:
                self._recovering = True  # nothing more is written, the last stats included
                raise ScoringError(f"the consumer of group {self.options.group_id} was fenced "
                                   f"{len(self._fenced)} times in a row: {error.one_line()}",
                                   hint="is another worker running with the same worker id? give each its own")
            log.error("the consumer failed for good (%s); joining the group again with a new one",
                      error.one_line())
            self._rejoin()
            return
        log.warning("consuming failed (%s); rewinding to the committed state", error.one_line())
        self._recovering = True
        self._recover()

    def _rejoin(self) -> None:
        """Drop the consumer and what it owned; the new member restores what it is assigned."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                consumer.close()
            except KafkaError as error:
                log.warning("closing the failed consumer: %s", error.one_line())
        self._on_revoke([TopicPartition(self.topics.telemetry, p) for p in sorted(self._owned)])
        self._next.clear()
        self._consumer = self._join()

    # -- pipeline stats -----------------------------------------------------------------------

    def _batch_counts(self, result: BatchResult, rejected: list[tuple[Rejected, MessageLike]]
                      ) -> tuple[dict[str, int], dict[str, int]]:
        """The batch's readings by outcome (scored, each reason not scored, rejected) and its
        window restarts by why."""
        counts = {reason: n for reason, n in result.not_scored.items() if n}
        if result.predictions:
            counts["scored"] = counts.get("scored", 0) + len(result.predictions)
        telemetry = self.topics.telemetry
        letters = sum(1 for _, message in rejected if message.topic() == telemetry)
        if letters:
            counts["rejected"] = counts.get("rejected", 0) + letters
        return counts, {why: n for why, n in result.resets.items() if n}

    def _stats_due(self, now_ms: int, counted: bool) -> bool:
        """Whether a stats record goes into this transaction: the interval has passed and
        something was counted (by committed batches or this one)."""
        waiting = counted or bool(self._stats_counts) or bool(self._stats_resets)
        return waiting and (self._final_stats or now_ms - self._stats_since >= self.options.stats_interval_s * 1000)

    def _stats_record(self, now_ms: int, counts: dict[str, int], resets: dict[str, int]) -> PipelineStats | None:
        if not self._stats_due(now_ms, bool(counts or resets)):
            return None
        until = max(now_ms, self._stats_since)
        return PipelineStats(SCHEMA_VERSION, self.worker_id, "scoring", self._stats_since, until,
                             _added(self._stats_counts, counts), _added(self._stats_resets, resets))

    def _count_stats(self, counts: dict[str, int], resets: dict[str, int], published: PipelineStats | None) -> None:
        """After a commit: what was published starts a new period; else the batch's counts
        wait for the next record."""
        if published is not None:
            self._stats_counts, self._stats_resets = {}, {}
            self._stats_since = published.until
        else:
            self._stats_counts = _added(self._stats_counts, counts)
            self._stats_resets = _added(self._stats_resets, resets)

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
                self._models_next[(message.topic() or "", message.partition() or 0)] = (message.offset() or 0) + 1
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
        """Offer what arrived on the ``models`` topic. A failed fetch may have taken records
        with it: the reader goes back to the first record not yet offered."""
        if self._models is None:
            return
        try:
            messages = self._models.consume(10, timeout_s)
        except KafkaError as error:
            log.warning("reading %s failed (%s); reading it again", self.topics.models, error.one_line())
            try:
                for (topic, partition), offset in sorted(self._models_next.items()):
                    self._models.seek(TopicPartition(topic, partition, offset))
            except KafkaError as seek_error:
                log.warning("going back on %s failed: %s", self.topics.models, seek_error.one_line())
            return
        for message in messages:
            self._models_next[(message.topic() or "", message.partition() or 0)] = (message.offset() or 0) + 1
            key = (message.key() or b"").decode(errors="replace")
            self._record_offer(self.registry.offer(key, message.value()))

    def _record_offer(self, offer: Offer) -> None:
        self.metrics.models.labels(offer.role, offer.outcome).inc()
        refusal = offer.refusal
        if refusal is None:
            return
        self.metrics.refusals.labels(offer.asset_type, offer.role, refusal.reason).inc()
        self._pending_alerts.append(model_refused_alert(offer.asset_type, refusal.version, offer.role, refusal.reason,
                                                        refusal.detail, int(self.clock() * 1000)))

    # -- rebalancing and recovery -------------------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        """Rebuild the state of the assigned partitions as of the group's committed offsets.
        When Kafka does not answer, the worker rewinds before its next batch instead."""
        try:
            self._assign_state(partitions)
        except KafkaError as error:
            log.warning("cannot rebuild the state of partitions %s (%s); trying again",
                        sorted(tp.partition for tp in partitions), error.one_line())
            self._owned = {tp.partition for tp in partitions}
            self._failures += 1
            self._recovering = True

    def _assign_state(self, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        started = time.monotonic()
        markers = self._committed_markers(partitions, set_next=True)
        kept = self._restore(markers)
        self._owned = numbers
        self._last_committed.update({k: o for k, o in self._next.items() if k[1] in numbers})
        self.metrics.restore.observe(time.monotonic() - started)
        log.info("assigned partitions %s; restored %s windows in %.2fs", sorted(numbers), kept,
                 time.monotonic() - started)

    def _committed_markers(self, partitions: list[TopicPartition], *, set_next: bool) -> dict[int, Marker]:
        """The changelog marker each partition's state is restored to: the group's committed
        offsets (``set_next``: reading continues from there)."""
        assert self._consumer is not None
        committed = self._consumer.committed(partitions, timeout_s=self.options.restore_timeout_s)
        targets: dict[int, list[int]] = {tp.partition: [NO_OFFSET, NO_OFFSET] for tp in partitions}
        for tp in committed:
            if tp.offset >= 0:
                index = 0 if tp.topic == self.topics.telemetry else 1
                targets[tp.partition][index] = tp.offset
                if set_next:
                    self._next[(tp.topic, tp.partition)] = tp.offset
        return {p: Marker(t, m) for p, (t, m) in targets.items()}

    def _restore(self, markers: dict[int, Marker]) -> int:
        """Load the partitions' state from the changelog up to ``markers``; returns the windows kept."""
        reader = self._consumer_factory(f"{self.options.group_id}.restore", (),
                                        **{"enable.auto.offset.store": False})
        try:
            states = restore_partitions(reader, self.topics.scoring_state, markers,
                                        timeout_s=self.options.restore_timeout_s)
        finally:
            reader.close()
        return sum(self.engine.restore(state) for state in states.values())

    def _restore_owned(self) -> None:
        """Put the engine back to the committed state of the owned partitions, leaving the
        consumer where it is (to process the records in hand again)."""
        assert self._consumer is not None
        partitions = [TopicPartition(t, p) for t in (self.topics.telemetry, self.topics.maintenance)
                      for p in sorted(self._owned)]
        self.engine.forget_partitions(set(self._owned))
        self._restore(self._committed_markers(partitions, set_next=False))

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        self.engine.forget_partitions(numbers)
        self._owned -= numbers
        for key in [k for k in self._next if k[1] in numbers]:
            del self._next[key]
        log.info("revoked partitions %s", sorted(numbers))

    def _rewind(self) -> None:
        """After a failed transaction: rebuild the owned partitions' state from the changelog
        and assign them again at the committed offsets, so the next step consumes the failed
        batch again. Raises :class:`KafkaError` when Kafka does not answer."""
        assert self._consumer is not None
        consumer = self._consumer
        assignment = consumer.assignment()
        owned = set(self._owned)
        self._on_revoke(assignment)
        self._assign_state(assignment)
        # OFFSET_INVALID: nothing committed yet, so the committed offset, i.e. auto.offset.reset.
        consumer.assign([TopicPartition(tp.topic, tp.partition, self._next.get((tp.topic, tp.partition),
                                                                                OFFSET_INVALID))
                         for tp in assignment])
        log.info("rewound partitions %s to the committed state", sorted(owned))


@dataclass(frozen=True)
class _Attempt:
    """What one transaction commits: the next offsets, and the pipeline counts it adds."""

    offsets: dict[tuple[str, int], int]
    moves: bool  # whether they go beyond what was committed before (else a commit cannot be told from none)
    counts: dict[str, int]
    resets: dict[str, int]
    stats: PipelineStats | None


def _unprocessable(error: Exception, raw: bytes, doing: str) -> Rejected:
    return Rejected(Reason.UNPROCESSABLE, f"{doing} raised {type(error).__name__}: {error}"[:1000], raw)


def _added(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for key, n in b.items():
        out[key] = out.get(key, 0) + n
    return out


def _merge(results: list[BatchResult]) -> BatchResult:
    """One batch's result from the results of its parts, in order."""
    merged = BatchResult()
    for r in results:
        merged.predictions.extend(r.predictions)
        merged.prediction_ts.extend(r.prediction_ts)
        merged.alerts.extend(r.alerts)
        for partition, machines in r.dirty.items():
            merged.dirty[partition] |= machines
        merged.accepted += r.accepted
        merged.dropped += r.dropped
        merged.unscored += r.unscored
        merged.held += r.held
        merged.not_scored = _added(merged.not_scored, r.not_scored)
        merged.resets = _added(merged.resets, r.resets)
        merged.per_asset = _added(merged.per_asset, r.per_asset)
        for asset, seconds in r.inference_s.items():
            merged.inference_s[asset] = merged.inference_s.get(asset, 0.0) + seconds
        merged.shadow.extend(r.shadow)
    return merged
