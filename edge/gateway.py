"""The edge gateway: a bridge and a scorer composed at the plant, with a durable buffer.

Threads: paho's network thread only appends received messages to an inbox; the gateway's
loop (the thread calling :meth:`EdgeGateway.run`) takes up to ``max_batch`` of them, routes
them with the bridge's :class:`~forewarn.routing.Router` (same validation, same dead-letter
records, same ``ingest_ts`` header), scores the good readings with the scoring core's
:class:`~scoring.engine.ScoringEngine` (same windows, bundle and alert rules as the
data-centre workers), and commits telemetry, maintenance events, dead letters, predictions,
alert events — and the touched machines' windows — to the SQLite buffer in one transaction.
Only then are the MQTT messages acknowledged and the predictions and alerts published on the
plant's broker (``forewarn/<site>/<machine>/prediction`` and ``.../alert``). A
:class:`~edge.forwarder.Forwarder` thread drains the buffer to Kafka.

So the ack point is the buffer commit: a ``kill -9`` before it means no PUBACK (the broker
redelivers from the persistent session); after it, the records are on disk. A crash between
the commit and the PUBACK duplicates a message; the windows drop the duplicate reading by
(machine_id, seq), Kafka consumers do the same.

When the buffer is full under the ``block`` policy, the scored batch is kept in memory and
retried; no further message is taken or acknowledged, so the plant broker holds them.

When the buffer's file system is full (:class:`~edge.buffer.DiskFull`), the edge goes on
scoring and publishing predictions and alerts locally, but acknowledges nothing: the scored
batches are held in memory (up to ``disk_full_hold_bytes``; beyond it no more messages are
taken) and their commit is retried every second; as space returns they are committed oldest
first, each in its own transaction (so a little room lets some go in), and acknowledged. One
error line says when this starts, an info line when it ends.

Every ``stats_interval_s`` the edge buffers a :class:`~forewarn.contract.PipelineStats` record
(role ``edge``, source = its client id) for the ``pipeline.stats`` topic: what it scored and
what not, by reason, of the batches committed in that interval.

The inbox is bounded (``receive_maximum + max_batch`` messages): Mosquitto 2.0 sends well beyond
the Receive Maximum the edge asks for, so when the inbox is full paho's network thread waits in
the callback until the loop took a batch. It then reads nothing from its socket and TCP holds
the broker back; the broker keeps the messages in the session (edge/README.md, "Footprint and
throughput", says what this bounds).
"""

from __future__ import annotations

import collections
import ctypes
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec

from edge.buffer import Buffer, BufferFull, BufferRecord, DiskFull
from edge.errors import EdgeError
from edge.forwarder import Forwarder, topic_limits
from edge.metrics import BatchCounts, EdgeMetrics, PipelineTally
from edge.models import ModelSync
from edge.settings import EdgeSettings
from forewarn.contract import Alert, Decoder, MaintenanceEvent, Telemetry, encode, model_refused_alert
from forewarn.deadletter import Kind
from forewarn.errors import MqttError
from forewarn.kafka import KafkaProducer
from forewarn.mqtt import MqttClient
from forewarn.ports import ConsumerLike, MqttLike, ProducerLike
from forewarn.routing import Router
from forewarn.service import LoopService
from forewarn.topics import MQTT_ROOT, Topics, alert_topic, mqtt_subscriptions, prediction_topic
from scoring.engine import BatchResult, Incoming, ScoringEngine
from scoring.registry import ModelRegistry, Offer
from scoring.state import MachineRecord, Marker, PartitionState, decode_record, encode_record

__all__ = ["EdgeGateway", "subscriptions"]

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.01
_BLOCKED_RETRY_S = 0.5
_DISK_RETRY_S = 1.0
_MAX_OUTGOING = 2000  # local publications queued in paho before scoring waits for its network thread
_MAX_OUTGOING_WAIT_S = 2.0
_TRIM_EVERY_S = 10.0
_telemetry = msgspec.json.Decoder(Telemetry)
_maintenance = msgspec.json.Decoder(MaintenanceEvent)


def _malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)``: hands the free memory malloc keeps in its arenas back to the
    system (after a scoring burst). None where there is none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: int(trim(0))


def subscriptions(sites: tuple[str, ...] = ()) -> list[str]:
    """The MQTT filters the edge subscribes to: every site's inbound topics, or only ``sites``'."""
    if not sites:
        return mqtt_subscriptions()
    return [f for site in sites for f in (f"{MQTT_ROOT}/{site}/+/telemetry", f"{MQTT_ROOT}/{site}/gateway/+/batch",
                                          f"{MQTT_ROOT}/{site}/+/maintenance")]


@dataclass
class _Batch:
    """Scored MQTT messages between scoring and the buffer commit."""

    counts: BatchCounts
    acks: list[tuple[int, int, int]] = field(default_factory=list)  # (mid, qos, epoch)
    records: list[BufferRecord] = field(default_factory=list)
    state: dict[str, bytes] = field(default_factory=dict)
    predictions: list[tuple[str, bytes]] = field(default_factory=list)
    alerts: list[tuple[str, bytes, str]] = field(default_factory=list)  # (machine_id, JSON, state)
    published: bool = False  # its predictions and alerts are out on the plant broker already
    size: int = 0  # bytes of its records in the buffer (counted while the disk is full)


class EdgeGateway(LoopService):
    """MQTT in, local scoring, buffer, Kafka out. ``run()`` blocks until :meth:`stop`.

    ``mqtt``, ``producer`` and ``models_consumer`` default to the real adapters; unit tests
    pass the in-memory fakes of :mod:`forewarn.testing`.
    """

    def __init__(self, settings: EdgeSettings, *, mqtt: MqttLike | None = None,
                 producer: ProducerLike | None = None, models_consumer: ConsumerLike | None = None,
                 metrics: EdgeMetrics | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.settings = settings
        self.options = o = settings.edge
        self.topics = Topics.from_settings(settings.topics)
        limits = settings.input.limits()
        self.router = Router(self.topics, Decoder(limits, clock))
        self._roles = {self.topics.telemetry: "telemetry", self.topics.maintenance: "maintenance",
                       self.topics.dlq: "dlq"}
        self.metrics = metrics or EdgeMetrics()
        self.clock = clock
        scoring = settings.scoring.model_copy(update={"shadow": False})  # candidates are a data-centre concern
        self.registry = ModelRegistry.from_settings(settings.trust, threads=scoring.threads,
                                                    batch_size=scoring.score_batch, shadow=False)
        self.engine = ScoringEngine(self.registry, scoring, clock, max_future_ms=limits.max_future_ms)
        self.models = ModelSync(self.registry, o.bundles_dir, kafka=settings.kafka if o.models_sync else None,
                                models_topic=self.topics.models, group_id=f"{o.client_id}.models",
                                consumer=models_consumer, seed_dir=o.models_dir)
        self._own_producer = producer is None
        self._producer = producer
        self.mqtt: MqttLike = mqtt if mqtt is not None else MqttClient(
            settings.mqtt, o.client_id, clean_start=False, session_expiry_s=o.session_expiry_s, manual_ack=True,
            receive_maximum=o.receive_maximum)
        self.mqtt.on_message = self._on_message
        if isinstance(self.mqtt, MqttClient):
            self.mqtt.on_connected = self._on_connected
        self.buffer: Buffer | None = None
        self.forwarder: Forwarder | None = None
        self._inbox: collections.deque[tuple[Any, int, float]] = collections.deque()
        # Only paho's own thread may wait for room (a fake delivering from the test's thread would deadlock).
        self._inbox_max = o.receive_maximum + o.max_batch if isinstance(self.mqtt, MqttClient) else 0
        self._room = threading.Event()
        self._blocked: _Batch | None = None
        self._blocked_since = 0.0
        # Batches scored while the disk is full: published, not acknowledged, committed oldest first.
        self._held: collections.deque[_Batch] = collections.deque()
        self._held_bytes = 0
        self._disk_full_since: float | None = None
        self._pipeline = PipelineTally(o.client_id, int(clock() * 1000))
        self._next_stats = time.monotonic() + o.stats_interval_s
        self._next_retry = 0.0
        self._epoch = 0
        self._intake = False
        self._started = False
        self._next_housekeeping = 0.0
        self._trim = _malloc_trim()
        self._next_trim = 0.0
        self._last_full_log = 0.0
        self._events: list[Alert] = []  # model_refused events for the next commit

    @staticmethod
    def _producer_overrides(settings: EdgeSettings) -> dict[str, Any]:
        """librdkafka's queue bounded by what the forwarder keeps in flight (its defaults, 100,000
        records and 1 GB, would let it hold far more than the edge's memory); small batches
        (64 KiB: librdkafka's batch buffers grow while the uplink is down); a reconnect at least
        every 2 s while the uplink is down (librdkafka's backoff grows to 10 s, which delays the
        drain after Kafka is back). ``kafka.extra`` wins."""
        o = settings.edge
        overrides: dict[str, Any] = {"queue.buffering.max.messages": 2 * o.max_forward_in_flight,
                                     "queue.buffering.max.kbytes": 2 * o.max_forward_in_flight_bytes // 1024,
                                     "linger.ms": 20, "batch.size": 65_536, "reconnect.backoff.max.ms": 2000}
        return {k: v for k, v in overrides.items() if k not in settings.kafka.extra}

    # -- paho's network thread -----------------------------------------------------------

    def _on_message(self, message: Any) -> None:
        inbox = self._inbox
        if self._inbox_max and len(inbox) >= self._inbox_max:
            self._room.clear()
            while len(inbox) >= self._inbox_max and self._intake:
                self._room.wait(0.1)  # paho's thread stops reading: TCP backpressure on the broker
        if self._intake:
            inbox.append((message, self._epoch, time.time()))

    def _on_connected(self, session_present: bool) -> None:
        self._epoch += 1  # ids of an older connection are never acknowledged on this one
        if not session_present:
            log.info("mqtt session was not present: a new session starts")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Open the buffer, load the bundles on disk, restore windows, start forwarding,
        connect to the plant's broker and subscribe."""
        if self._started:
            return
        o = self.options
        try:
            o.data_dir.mkdir(parents=True, exist_ok=True)
            self.buffer = Buffer(o.buffer_path, max_bytes=o.buffer_max_bytes, policy=o.buffer_policy,
                                 warn_fraction=o.buffer_warn_fraction, synchronous=o.buffer_sync)
        except (OSError, sqlite3.Error) as error:
            raise EdgeError(f"cannot open the edge buffer under {o.data_dir}: {error}",
                            hint="fix --data-dir, its permissions or its free space") from None
        if self.buffer.moved_aside is not None:
            self.metrics.buffer_moved_aside.inc()
        if len(self.buffer):
            log.info("buffer holds %s records (%.1f MB) from before; forwarding them first", len(self.buffer),
                     self.buffer.bytes / 1e6)
        self._offered(self.models.load_local())
        self._restore_windows()
        if self.options.metrics_port is not None:
            self.metrics.serve(self.options.metrics_port, self.options.metrics_host)
        if self._producer is None:
            self._producer = KafkaProducer(self.settings.kafka, **self._producer_overrides(self.settings))
        self.forwarder = Forwarder(self.buffer, self._producer, self.topics, self.metrics, batch=o.forward_batch,
                                   max_in_flight=o.max_forward_in_flight,
                                   max_in_flight_bytes=o.max_forward_in_flight_bytes,
                                   dead_letter_after=o.dead_letter_after, log_period_s=o.uplink_log_s,
                                   record_limits=partial(topic_limits, self.settings.kafka, self.topics)
                                   if self._own_producer else None)
        self.forwarder.start()
        self._intake = True
        filters = subscriptions(o.sites)
        self._started = True
        try:
            self.mqtt.connect()
            self.mqtt.subscribe(filters, qos=1)
        except BaseException:
            self.close()
            raise
        log.info("edge %s subscribed to %s; buffer %s (%s, bound %.0f MB); uplink %s", o.client_id,
                 ", ".join(filters), o.buffer_path, o.buffer_policy, o.buffer_max_bytes / 1e6,
                 self.settings.kafka.bootstrap_servers)

    def _restore_windows(self) -> None:
        assert self.buffer is not None
        if not self.options.persist_windows:
            return
        saved = self.buffer.load_state()
        if saved:
            kept = self._load_windows(saved)
            log.info("restored %s of %s machine windows from the buffer database", kept, len(saved))

    def _load_windows(self, saved: dict[str, bytes]) -> int:
        """Replace the engine's machine state by ``saved``; returns the windows kept."""
        records: dict[str, MachineRecord] = {}
        for key, blob in saved.items():
            try:
                records[key] = decode_record(blob)
            except msgspec.DecodeError:
                log.warning("%s: saved window state unreadable; it restarts", key)
        return self.engine.restore(PartitionState(0, Marker(-1, -1), records))

    def _rewind(self) -> None:
        """Put the engine back to the state that goes with what was scored so far: the committed
        windows, and those of the batches held on a full disk (a failed call may have left state
        half-updated). Without ``persist_windows`` the windows restart."""
        assert self.buffer is not None
        saved = self.buffer.load_state() if self.options.persist_windows else {}
        for held in self._held:
            saved.update(held.state)
        self._load_windows(saved)

    def _process(self, readings: list[Incoming], events: list[tuple[MaintenanceEvent, int]]
                 ) -> tuple[BatchResult, int]:
        """The engine's result for the batch, and how many readings it could not process.

        When processing raises (the engine is meant never to), the records that make it raise
        are found one at a time from the rewound state and left out of scoring, and the rest is
        scored again in one call (predictions do not depend on where a batch is cut). What was
        left out is still buffered and forwarded: the data centre gets every reading; it is
        counted ``unscorable`` and logged. No record can make the edge exit or crash-loop."""
        try:
            return self.engine.process(readings, events), 0
        except Exception as error:  # noqa: BLE001 - one record must never stop the edge
            log.error("scoring a batch of %s readings and %s maintenance events failed (%s: %s); looking for "
                      "the records that cannot be processed", len(readings), len(events), type(error).__name__,
                      error)
        bad_readings: set[int] = set()
        bad_events: set[int] = set()
        for _ in range(len(readings) + len(events) + 1):
            good = [r for i, r in enumerate(readings) if i not in bad_readings]
            good_events = [e for i, e in enumerate(events) if i not in bad_events]
            self._rewind()
            try:
                return self.engine.process(good, good_events), len(bad_readings)
            except Exception:  # noqa: BLE001, S110 - the search below finds the record
                pass
            if not self._culprit(readings, events, bad_readings, bad_events):
                log.error("the batch fails only as a whole; none of its %s readings is scored", len(readings))
                bad_readings.update(range(len(readings)))
                bad_events.update(range(len(events)))
        self._rewind()
        return BatchResult(), len(readings)

    def _culprit(self, readings: list[Incoming], events: list[tuple[MaintenanceEvent, int]],
                 bad_readings: set[int], bad_events: set[int]) -> bool:
        """Process the records not yet left out one at a time, in the engine's order (readings,
        then events), from the rewound state; add the first that raises to its set."""
        self._rewind()
        for i, item in enumerate(readings):
            if i in bad_readings:
                continue
            try:
                self.engine.process([item], [])
            except Exception as error:  # noqa: BLE001 - this is the reading the engine cannot handle
                bad_readings.add(i)
                log.error("reading %s seq %s cannot be scored (%s: %s); it is buffered and forwarded unscored",
                          item.reading.machine_id, item.reading.seq, type(error).__name__, error)
                return True
        for i, event in enumerate(events):
            if i in bad_events:
                continue
            try:
                self.engine.process([], [event])
            except Exception as error:  # noqa: BLE001 - this is the event the engine cannot handle
                bad_events.add(i)
                log.error("maintenance event %s cannot be applied (%s: %s); it is buffered and forwarded",
                          event[0].identity, type(error).__name__, error)
                return True
        return False

    # -- the loop --------------------------------------------------------------------------

    def step(self, wait_s: float = _IDLE_WAIT_S) -> int:
        """One round: models, then score and commit up to ``max_batch`` messages. Returns how
        many messages were committed (and acknowledged)."""
        self._offered(self.models.poll())
        now = time.monotonic()
        if now >= self._next_housekeeping:
            self._housekeeping(now)
        if self._blocked is not None:
            if now < self._next_retry:
                time.sleep(min(wait_s * 5, self._next_retry - now))
                return 0
            return self._commit(self._blocked)
        held = self._held
        inbox = self._inbox
        n = min(len(inbox), self.options.max_batch)
        if held and self._held_bytes >= self.options.disk_full_hold_bytes:
            n = 0  # the hold is full: the broker keeps the rest until space returns
        if n or self._events:
            batch = self._score([inbox.popleft() for _ in range(n)])
            self._room.set()
            if not held:
                return self._commit(batch)
            self._publish(batch)
            batch.published = True
            self._hold(batch)
        elif not held:
            time.sleep(wait_s)
            return 0
        if now < self._next_retry:
            if not n:
                time.sleep(min(wait_s * 5, self._next_retry - now))
            return 0
        committed = 0
        while held:  # oldest first, each in its own transaction: what fits goes in
            batch = held[0]
            done = self._commit(batch)
            if held and held[0] is batch:
                break
            committed += done
        return committed

    def _offered(self, offers: list[Offer]) -> None:
        """Count model offers; a refused bundle becomes a ``model_refused`` alert event, committed
        and published with the next batch like the alerts of the rules (the old model keeps serving)."""
        for offer in offers:
            self.metrics.models.labels(offer.outcome).inc()
            refusal = offer.refusal
            if refusal is not None:
                self.metrics.refusals.labels(offer.asset_type, offer.role, refusal.reason).inc()
                self._events.append(model_refused_alert(offer.asset_type, refusal.version, offer.role, refusal.reason,
                                                        refusal.detail, int(self.clock() * 1000)))

    def _score(self, messages: list[tuple[Any, int, float]]) -> _Batch:
        started = time.perf_counter()
        counts = BatchCounts(self.metrics)
        batch = _Batch(counts)
        kinds, rejected = counts.received, counts.rejected
        route = self.router.route
        roles = self._roles
        readings: list[Incoming] = []
        events: list[tuple[MaintenanceEvent, int]] = []
        records = batch.records
        for message, epoch, received in messages:
            try:
                topic = message.topic
            except UnicodeDecodeError:
                topic = repr(message._topic)
            received_ms = int(received * 1000)
            try:
                routed = route(topic, message.payload, received_ms)
            except Exception:  # noqa: BLE001 - a routing bug must not stop the stream; internal_error logs it
                routed = self.router.internal_error(topic, message.payload, received_ms)
            kinds[routed.kind] += 1
            for reason in routed.rejected:
                rejected[reason] += 1
            if routed.rejected and routed.kind is not Kind.MAINTENANCE:
                counts.readings["rejected"] += len(routed.rejected)
            for rec in routed.records:
                role = roles[rec.topic]
                key = rec.key.encode() if rec.key is not None else None
                records.append(BufferRecord(role, rec.value, key, tuple(rec.headers), rec.timestamp_ms))
                if role == "telemetry":
                    readings.append(Incoming(_telemetry.decode(rec.value), 0, received_ms))
                elif role == "maintenance":
                    events.append((_maintenance.decode(rec.value), 0))
            if message.qos:
                batch.acks.append((message.mid, message.qos, epoch))
        result, unprocessable = self._process(readings, events)
        if self._events:  # model_refused events go first
            result.alerts[:0] = self._events
            self._events = []
        readings_by = counts.readings
        readings_by["scored"] += len(result.predictions)
        readings_by["unscorable"] += unprocessable
        readings_by.update(result.not_scored)
        counts.resets.update(result.resets)
        for machine_id, value in result.predictions:
            records.append(BufferRecord("predictions", value, machine_id.encode()))
        batch.predictions = result.predictions
        for alert in result.alerts:
            value = encode(alert)
            records.append(BufferRecord("alerts", value, alert.machine_id.encode(), (), alert.ts))
            batch.alerts.append((alert.machine_id, value, alert.state))
            counts.alerts[alert.state] += 1
        if self.options.persist_windows and result.dirty:
            machines = set().union(*result.dirty.values())
            batch.state = {key: encode_record(record) for key, record in self.engine.export(machines)}
        batch.size = sum(r.size for r in records)
        self.metrics.step_seconds.observe(time.perf_counter() - started)
        return batch

    def _commit(self, batch: _Batch) -> int:
        """Commit a batch to the buffer, then acknowledge and publish it; returns the messages
        acknowledged. Or hold it (a full buffer: no scoring meanwhile; a full disk: scoring and
        local publishing go on) and return 0."""
        assert self.buffer is not None
        try:
            self.buffer.put_many(batch.records, list(batch.state.items()))
        except BufferFull as full:
            if self._held and self._held[0] is batch:  # held for the disk: retried with the rest
                self._next_retry = time.monotonic() + _BLOCKED_RETRY_S
                log.debug("held batch waits for room in the buffer: %s", full)
            else:
                self._hold_blocked(batch, full)
            return 0
        except DiskFull as full:
            self._hold_disk_full(batch, full)
            return 0
        self._released(batch)
        epoch = self._epoch
        acked = 0
        for mid, qos, message_epoch in batch.acks:
            if message_epoch == epoch:
                self.mqtt.ack(mid, qos)
                acked += 1
        if not batch.published:
            self._publish(batch)
        counts = batch.counts
        counts.acked.n += acked
        buffered = counts.buffered
        for record in batch.records:
            buffered[record.topic] += 1
        counts.predictions.n += buffered["predictions"]
        self._pipeline.add(counts)
        counts.flush()
        return len(batch.acks)

    def _hold_blocked(self, batch: _Batch, full: BufferFull) -> None:
        now = time.monotonic()
        if self._blocked is None:
            self._blocked_since = now
            self.metrics.buffer_blocked.set(1)
            log.warning("%s; not acknowledging MQTT until the uplink drains it (the broker keeps the "
                        "messages)", full)
        self._blocked = batch
        self._next_retry = now + _BLOCKED_RETRY_S

    def _hold(self, batch: _Batch) -> None:
        self._held.append(batch)
        self._held_bytes += batch.size
        self.metrics.disk_held_bytes.set(self._held_bytes)

    def _hold_disk_full(self, batch: _Batch, full: DiskFull) -> None:
        now = time.monotonic()
        if self._disk_full_since is None:
            self._disk_full_since = now
            self.metrics.disk_full.set(1)
            log.error("%s; scoring and local alerts go on, but no MQTT message is acknowledged until space "
                      "returns (the broker keeps them; the edge holds at most %s bytes of scored records)", full,
                      self.options.disk_full_hold_bytes)
        if not batch.published:
            self._publish(batch)
            batch.published = True
        if self._blocked is batch:
            self._blocked = None
            self.metrics.buffer_blocked.set(0)
        if not self._held or self._held[0] is not batch:
            self._hold(batch)
        self._next_retry = now + _DISK_RETRY_S

    def _released(self, batch: _Batch) -> None:
        """``batch`` is committed: leave the blocked or disk-full state it was held in."""
        if self._blocked is batch:
            log.warning("buffer has room again after %.0fs; acknowledging MQTT again",
                        time.monotonic() - self._blocked_since)
            self._blocked = None
            self.metrics.buffer_blocked.set(0)
        if self._held and self._held[0] is batch:
            self._held.popleft()
            self._held_bytes -= batch.size
            self.metrics.disk_held_bytes.set(self._held_bytes)
        if not self._held and self._disk_full_since is not None:
            log.info("the edge buffer's disk has room again after %.0fs: the held messages are committed; "
                     "acknowledging MQTT again", time.monotonic() - self._disk_full_since)
            self._disk_full_since = None
            self.metrics.disk_full.set(0)

    def _send_stats(self) -> None:
        """Buffer the pipeline stats of the interval that ends now (kept for the next try when the
        buffer or its disk is full)."""
        assert self.buffer is not None
        until = int(self.clock() * 1000)
        stats = self._pipeline.stats(until)
        try:
            self.buffer.put_many([BufferRecord("pipeline", encode(stats), stats.source.encode(), (), until)])
        except (BufferFull, DiskFull) as full:
            log.debug("pipeline stats not buffered yet: %s", full)
            return
        self.metrics.stats_sent.inc()
        self._pipeline.restart(until)

    def _publish(self, batch: _Batch) -> None:
        qos = self.options.publish_qos
        publish = self.mqtt.publish
        try:
            if self.options.publish_predictions:
                for i, (machine_id, value) in enumerate(batch.predictions):
                    if i % 500 == 0:
                        self._wait_for_outgoing()
                    publish(prediction_topic(machine_id), value, qos)
            for machine_id, value, _state in batch.alerts:
                publish(alert_topic(machine_id), value, qos)
        except (MqttError, OSError) as error:  # the plant broker is away: the buffer has them anyway
            log.warning("local publish failed (%s); predictions and alerts still go to the buffer", error)

    def _wait_for_outgoing(self) -> None:
        """Backpressure for local publications: paho queues them without bound, and scoring
        outruns its network thread; wait (at most ``_MAX_OUTGOING_WAIT_S``) while more than
        ``_MAX_OUTGOING`` are queued. No wait while the plant broker is away (they stay queued)."""
        queueing = self.mqtt
        if isinstance(queueing, MqttClient) and not queueing.is_connected:
            return
        deadline = time.monotonic() + _MAX_OUTGOING_WAIT_S
        while queueing.outgoing_packets > _MAX_OUTGOING and time.monotonic() < deadline:
            time.sleep(0.002)

    def _housekeeping(self, now: float) -> None:
        self._next_housekeeping = now + 1.0
        if self._trim is not None and now >= self._next_trim:
            self._next_trim = now + _TRIM_EVERY_S
            self._trim()
        box = self.buffer
        if box is None:
            return
        if now >= self._next_stats:
            self._next_stats = now + self.options.stats_interval_s
            self._send_stats()
        m = self.metrics
        m.buffer_records.set(len(box))
        m.buffer_bytes.set(box.bytes)
        m.buffer_fill.set(box.fill)
        m.buffer_near_full.set(1 if box.near_full else 0)
        m.evicted.set(box.counter("evicted"))
        if box.near_full and now - self._last_full_log >= self.options.uplink_log_s:
            self._last_full_log = now
            log.warning("edge buffer near full: %.0f%% (%s records, %.1f of %.1f MB); policy %s", box.fill * 100,
                        len(box), box.bytes / 1e6, box.max_bytes / 1e6, box.policy)

    # -- shutdown --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop intake, disconnect MQTT (unprocessed messages stay unacknowledged on the
        broker), buffer the last pipeline stats, forward what the buffer holds for up to
        ``shutdown_timeout_s``, close."""
        if not self._started:
            return
        self._started = False
        self._intake = False
        self._room.set()
        dropped = len(self._inbox) + sum(len(b.acks) for b in (*self._held, self._blocked) if b is not None)
        self._inbox.clear()
        try:
            self.mqtt.disconnect()
        except (MqttError, OSError) as error:  # already gone; the broker keeps the session either way
            log.warning("mqtt disconnect: %s", error)
        if self.buffer is not None:
            self._send_stats()  # the last interval's counts, forwarded with the rest
        left = 0
        if self.forwarder is not None:
            self.forwarder.stop()
            left = self.forwarder.drain(self.options.shutdown_timeout_s)
        if self._producer is not None and self._own_producer:
            self._producer.close(timeout_s=0.0 if left else 5.0)
        self.models.close()
        if self.buffer is not None:
            self.buffer.close()
        self.metrics.close()
        log.info("edge stopped: %s buffered records left for the next run, %s received messages left "
                 "unacknowledged for the broker to resend", left, dropped)
