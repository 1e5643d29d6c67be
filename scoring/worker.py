"""The scoring worker: a Kafka consumer-group member that scores telemetry exactly once.

Each loop iteration consumes one batch of ``telemetry`` and ``maintenance`` records, runs it
through the :class:`~scoring.engine.ScoringEngine`, and then, in one Kafka transaction,
produces the predictions, the alert events, the changed machines' state and a marker to
``scoring.state``, and the consumer offsets (``send_offsets_to_transaction``). Readers use
``read_committed``, so each prediction is seen exactly once.

On assignment the worker rebuilds the state of its new partitions from the ``scoring.state``
changelog as of the committed offsets (see :mod:`scoring.state`); models are loaded from a
models folder and from the compacted ``models`` topic, and swapped only between batches.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import confluent_kafka
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
from forewarn.kafka import KafkaConsumer, KafkaProducer
from forewarn.topics import Topics
from scoring.engine import BatchResult, Incoming, ScoringEngine
from scoring.errors import ScoringError
from scoring.metrics import ScoringMetrics
from scoring.registry import ModelRegistry, Offer
from scoring.settings import ScoringSettings
from scoring.state import MARKER_KEY, NO_OFFSET, Marker, encode_marker, encode_record, restore_partitions

__all__ = ["ScoringWorker"]

log = logging.getLogger(__name__)

_MAX_LATENCY_SAMPLES = 1000
_NO_LEADER_YET = {confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
                  confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
                  confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART}


def _header(message: confluent_kafka.Message, name: str) -> int | None:
    for key, value in message.headers() or ():
        if key == name and value:
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ScoringWorker:
    """``start()``, then ``run()`` until ``stop()`` (or use it as a context manager)."""

    def __init__(self, settings: ScoringSettings, *, registry: ModelRegistry | None = None,
                 metrics: ScoringMetrics | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.options = settings.scoring
        self.topics = Topics.from_settings(settings.topics)
        self.worker_id = self.options.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.registry = registry or ModelRegistry(threads=self.options.threads, batch_size=self.options.score_batch,
                                                  shadow=self.options.shadow)
        self.metrics = metrics or ScoringMetrics()
        self.clock = clock
        self.engine = ScoringEngine(self.registry, self.options, clock)
        self.decoder = Decoder()
        self._fast_telemetry = msgspec.json.Decoder(Telemetry)
        self._stop = threading.Event()
        self._started = False
        self._producer: KafkaProducer | None = None
        self._consumer: KafkaConsumer | None = None
        self._models: KafkaConsumer | None = None
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
        self._models = KafkaConsumer(self.settings.kafka, f"{self.options.group_id}.models", (),
                                     **{"isolation.level": "read_uncommitted"})
        self._load_models_topic()
        tid = f"{self.options.group_id}.{self.worker_id}"
        self._producer = KafkaProducer(self.settings.kafka, **{
            "transactional.id": tid,
            "transaction.timeout.ms": self.options.transaction_timeout_ms,
            "linger.ms": 2,  # commit_transaction flushes anyway; a long linger only adds latency
            # The coordinator answers CONCURRENT_TRANSACTIONS while it still writes the last
            # transaction's markers; librdkafka's default 100 ms backoff then made every
            # back-to-back send_offsets_to_transaction take ~40 ms. Retry sooner.
            "retry.backoff.ms": 5,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
        })
        self._producer.init_transactions()
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
        consumer = KafkaConsumer(self.settings.kafka, self.options.group_id,
                                 [self.topics.telemetry, self.topics.maintenance], **overrides)
        consumer.on_rebalance(self._on_assign, self._on_revoke)
        self._consumer = consumer
        if self.options.metrics_port is not None:
            self.metrics.serve(self.options.metrics_port)
        self._started = True
        log.info("scoring worker %s started (group %s, transactional.id %s)", self.worker_id,
                 self.options.group_id, tid)

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return (safe from signal handlers)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Leave the group and release the clients (call after :meth:`run` returned)."""
        if self._consumer is not None:
            try:
                self._consumer.close()
            except confluent_kafka.KafkaException as error:
                log.warning("closing the consumer: %s", error)
            self._consumer = None
        if self._models is not None:
            self._models.close()
            self._models = None
        if self._producer is not None:
            self._producer.close(10.0)
            self._producer = None
        self.engine.close()
        self._started = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self.close()

    def run(self, max_batches: int | None = None, idle_exit_s: float | None = None) -> None:
        """Score until :meth:`stop` (or ``max_batches`` transactions, or ``idle_exit_s`` seconds
        without records — for tests and benchmarks)."""
        self.start()
        idle_since = time.monotonic()
        while not self._stop.is_set():
            if max_batches is not None and self.batches >= max_batches:
                break
            if self.step():
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                break

    # -- one iteration ----------------------------------------------------------------------

    def step(self) -> int:
        """Consume, score and commit one batch; returns the records it consumed."""
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
        rejected: list[tuple[Rejected, confluent_kafka.Message]] = []
        telemetry, decoder = self.topics.telemetry, self.decoder
        nxt = self._next
        for message in messages:
            topic, partition = message.topic() or "", message.partition() or 0
            nxt[(topic, partition)] = (message.offset() or 0) + 1
            raw = message.value() or b""
            if topic == telemetry:
                reading = self._decode_telemetry(raw)
                if isinstance(reading, Rejected):
                    rejected.append((reading, message))
                else:
                    readings.append(Incoming(reading, partition, _header(message, INGEST_HEADER)))
            else:
                event = decoder.maintenance(raw)
                if isinstance(event, Rejected):
                    rejected.append((event, message))
                else:
                    events.append((event, partition))
        result = self.engine.process(readings, events)
        self._transact(result, rejected, {m.partition() or 0 for m in messages})
        self._observe(result, len(readings), len(rejected))
        self.batches += 1
        self._maybe_lag()
        return len(messages)

    def _next_batch(self) -> list[confluent_kafka.Message]:
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
        return first + consumer.consume(most - 1, 0)

    def _decode_telemetry(self, raw: bytes) -> Telemetry | Rejected:
        """The contract decoder's verdict, with a fast path for the common good reading: JSON
        has no NaN/Infinity and msgspec refuses out-of-range numbers, so a reading that decodes,
        is small enough and has an in-range ts needs no further checks."""
        limits = self.decoder.limits
        if len(raw) <= limits.max_message_bytes:
            try:
                reading = self._fast_telemetry.decode(raw)
            except (msgspec.MsgspecError, RecursionError):
                pass
            else:
                if reading.v == SCHEMA_VERSION and limits.ts_min_ms <= reading.ts <= limits.ts_max_ms:
                    return reading
        return self.decoder.telemetry(raw)

    def _transact(self, result: BatchResult, rejected: list[tuple[Rejected, confluent_kafka.Message]],
                  moved: set[int]) -> None:
        assert self._producer is not None and self._consumer is not None
        producer = self._producer
        raw = producer.client
        started = time.perf_counter()
        try:
            producer.begin_transaction()
            predictions, alerts, state = self.topics.predictions, self.topics.alerts, self.topics.scoring_state
            for key, value in result.predictions:
                self._produce(raw, predictions, value, key)
            for alert in [*self._pending_alerts, *result.alerts]:
                self._produce(raw, alerts, encode(alert), alert.machine_id)
                self.metrics.alerts.labels(alert.state, alert.rule).inc()
            now_ms = int(time.time() * 1000)
            for reason, message in rejected:
                source = message.topic() or ""
                kind = Kind.MAINTENANCE if source == self.topics.maintenance else Kind.TELEMETRY
                letter = DeadLetter.from_kafka(reason, source_topic=source, kind=kind, key=message.key(),
                                               received_at=now_ms, origin=Origin.SCORING).record(self.topics.dlq)
                self._produce(raw, letter.topic, letter.value, letter.key, headers=list(letter.headers))
            for partition, machines in result.dirty.items():
                for key, record in self.engine.export(machines):
                    self._produce(raw, state, encode_record(record), key, partition=partition)
            for partition in sorted(moved & self._owned):
                marker = Marker(self._next.get((self.topics.telemetry, partition), NO_OFFSET),
                                self._next.get((self.topics.maintenance, partition), NO_OFFSET))
                self._produce(raw, state, encode_marker(marker), MARKER_KEY, partition=partition)
            offsets = [confluent_kafka.TopicPartition(t, p, o) for (t, p), o in self._next.items()
                       if p in self._owned]
            if offsets:
                producer.send_offsets_to_transaction(offsets, self._consumer.client.consumer_group_metadata())
            producer.commit_transaction()
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, confluent_kafka.KafkaError) and error.txn_requires_abort():
                log.warning("transaction aborted (%s); rewinding to the committed state", error.str())
                producer.abort_transaction()
                self._rewind()
                return
            raise ScoringError(f"transaction failed: {exc}",
                               hint="the worker stops; restarted, it resumes from the committed state") from None
        self._pending_alerts.clear()
        self.metrics.transaction.observe(time.perf_counter() - started)

    @staticmethod
    def _produce(raw: confluent_kafka.Producer, topic: str, value: bytes, key: str | bytes | None, *,
                 partition: int = -1, headers: list[tuple[str, str | bytes]] | None = None) -> None:
        while True:
            try:
                if headers is None:
                    raw.produce(topic, value, key, partition)
                else:
                    raw.produce(topic, value, key, partition, headers=headers)
                return
            except BufferError:
                raw.poll(0.05)

    def _observe(self, result: BatchResult, n_readings: int, n_rejected: int) -> None:
        m = self.metrics
        m.batch_size.observe(n_readings)
        m.readings.labels("accepted").inc(result.accepted)
        m.readings.labels("dropped").inc(result.dropped)
        m.readings.labels("unscored").inc(result.unscored)
        m.readings.labels("rejected").inc(n_rejected)
        for asset, seconds in result.inference_s.items():
            m.inference.labels(asset).observe(seconds)
        for asset, count in result.per_asset.items():
            m.predictions.labels(asset).inc(count)
        if result.prediction_ts:
            now_ms = self.clock() * 1000
            step = max(1, len(result.prediction_ts) // _MAX_LATENCY_SAMPLES)
            event = m.latency.labels("event")
            ingest = m.latency.labels("ingest")
            for ts, ingest_ts in result.prediction_ts[::step]:
                event.observe(max(0.0, (now_ms - ts) / 1000))
                if ingest_ts is not None:
                    ingest.observe(max(0.0, (now_ms - ingest_ts) / 1000))
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
        client = self._consumer.client
        for p in sorted(self._owned):
            tp = confluent_kafka.TopicPartition(self.topics.telemetry, p)
            try:
                # The high watermark of the last fetch response: no broker round trip in the loop.
                _, high = client.get_watermark_offsets(tp, cached=True)
            except confluent_kafka.KafkaException:
                continue
            position = self._next.get((self.topics.telemetry, p))
            if position is not None and high >= 0:
                self.metrics.lag.labels(str(p)).set(max(0, high - position))

    # -- models -----------------------------------------------------------------------------

    def _load_models_topic(self, timeout_s: float = 30.0) -> None:
        """Read the compacted ``models`` topic from its start to its current end."""
        assert self._models is not None
        client = self._models.client
        try:
            metadata = client.list_topics(self.topics.models, timeout=10.0)
        except confluent_kafka.KafkaException as exc:
            raise ScoringError(f"Kafka at {self.settings.kafka.bootstrap_servers} is unreachable ({exc.args[0]})",
                               hint="start it with `forewarn stack up` or fix --bootstrap-servers") from None
        topic = metadata.topics.get(self.topics.models)
        if topic is None or topic.error is not None:
            raise ScoringError(f"topic {self.topics.models} does not exist",
                               hint="create the topics with `forewarn topics create`")
        parts = [confluent_kafka.TopicPartition(self.topics.models, p, confluent_kafka.OFFSET_BEGINNING)
                 for p in sorted(topic.partitions)]
        deadline = time.monotonic() + timeout_s
        ends = {tp.partition: self._high_watermark(tp, deadline) for tp in parts}
        client.assign(parts)
        while time.monotonic() < deadline:
            positions = {tp.partition: tp.offset for tp in client.position(parts)}
            if all(positions[p] >= ends[p] or ends[p] == 0 for p in ends):
                break
            # Every record in order (not only the latest per key): when the newest bundle of a
            # key is bad, the one before it keeps serving, as it would have without a restart.
            for message in self._models.consume(100, 0.2):
                key = (message.key() or b"").decode(errors="replace")
                self._record_offer(self.registry.offer(key, message.value()))

    def _high_watermark(self, tp: confluent_kafka.TopicPartition, deadline: float) -> int:
        """The partition's end offset, retrying while a just-created topic has no leader yet."""
        assert self._models is not None
        while True:
            try:
                return int(self._models.client.get_watermark_offsets(tp, timeout=10.0)[1])
            except confluent_kafka.KafkaException as exc:
                error = exc.args[0] if exc.args else None
                retriable = isinstance(error, confluent_kafka.KafkaError) and (
                    error.retriable() or error.code() in _NO_LEADER_YET)
                if not retriable or time.monotonic() > deadline:
                    raise ScoringError(f"cannot read the end of {tp.topic}[{tp.partition}]: {error}",
                                       hint="check the broker's log; is the cluster healthy?") from None
                time.sleep(0.5)

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

    def _on_assign(self, consumer: confluent_kafka.Consumer, partitions: list[confluent_kafka.TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        started = time.monotonic()
        committed = consumer.committed(partitions, timeout=self.options.restore_timeout_s)
        targets: dict[int, list[int]] = {p: [NO_OFFSET, NO_OFFSET] for p in numbers}
        for tp in committed:
            if tp.error is not None:
                raise ScoringError(f"cannot read committed offsets: {tp.error}")
            if tp.offset >= 0:
                index = 0 if tp.topic == self.topics.telemetry else 1
                targets[tp.partition][index] = tp.offset
                self._next[(tp.topic, tp.partition)] = tp.offset
        markers = {p: Marker(t, m) for p, (t, m) in targets.items()}
        states = restore_partitions(self.settings.kafka, self.topics.scoring_state, markers,
                                    group_id=f"{self.options.group_id}.restore",
                                    timeout_s=self.options.restore_timeout_s)
        kept = 0
        for state in states.values():
            kept += self.engine.restore(state)
        self._owned = numbers
        self.metrics.restore.observe(time.monotonic() - started)
        log.info("assigned partitions %s; restored %s windows in %.2fs", sorted(numbers), kept,
                 time.monotonic() - started)

    def _on_revoke(self, consumer: confluent_kafka.Consumer, partitions: list[confluent_kafka.TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        self.engine.forget_partitions(numbers)
        self._owned -= numbers
        for key in [k for k in self._next if k[1] in numbers]:
            del self._next[key]
        log.info("revoked partitions %s", sorted(numbers))

    def _rewind(self) -> None:
        """After an aborted transaction: rebuild the owned partitions' state from the
        changelog and seek back to the committed offsets."""
        assert self._consumer is not None
        client = self._consumer.client
        assignment = client.assignment()
        owned = set(self._owned)
        self._on_revoke(client, assignment)
        self._on_assign(client, assignment)
        seek_to = [confluent_kafka.TopicPartition(tp.topic, tp.partition,
                                                  self._next.get((tp.topic, tp.partition),
                                                                 confluent_kafka.OFFSET_BEGINNING))
                   for tp in assignment]
        for tp in seek_to:
            client.seek(tp)
        log.info("rewound partitions %s to the committed state", sorted(owned))

