"""The bridge service: MQTT (QoS 1, persistent shared-subscription session) → Kafka, at least once.

One thread: the loop (the thread that calls :meth:`Bridge.run`) reads PUBLISH packets from its
subscriber (:class:`bridge._subscriber.Subscriber`, or any :class:`~bridge._subscriber.SubscriberLike`),
decodes, produces, serves Kafka's delivery reports, sends the PUBACKs, keep-alives and
reconnects. So the producer and every piece of state have one owner and no message crosses the
GIL between threads.

At least once: a message's PUBACK is sent only when Kafka confirmed every record made from it.
Acknowledgements go out in the order messages arrived (as MQTT asks), so one slow record holds
back the ones behind it; a record Kafka failed to deliver is re-sent, never skipped.

What a failure means is :func:`forewarn.kafka.classify`'s table of librdkafka's codes, never the
error's flags (a delivery report's are always False):

- never storable (too large, invalid record, ...): the record follows
  :class:`forewarn.deadletter.RefusalPolicy`: sent again alone, then replaced by its dead letter
  (reason ``kafka_refused``) and acknowledged; a dead letter the DLQ refuses is cut short. When
  even that is refused, the bridge — which has no storage of its own — drops it with an ERROR
  line holding the whole record and counts it. So such a record never holds the
  acknowledgements behind it. This is the only way a message is acknowledged without its
  records in Kafka;
- retriable (``message.timeout.ms`` expired, transport, leaders moving, unknown codes) and
  authorization (a revoked ACL, failed SASL): re-sent with backoff, never acknowledged meanwhile;
  authorization is logged at ERROR and raises ``forewarn_bridge_kafka_waiting`` at once. When the
  oldest message is scheduled, every later one that failed too is scheduled with it, for the
  same moment and after it (per key in order): after an outage thousands fail together;
- fatal (an idempotent producer's lost sequence, ``_FATAL``, raised from ``poll``/``flush`` or
  ``produce`` or reported for a record): the producer is rebuilt
  (:meth:`~forewarn.ports.ProducerLike.rebuild`) and every record of every message Kafka did not
  confirm is sent again through the new one, in arrival order, before anything new is read.

Backpressure: the broker sends at most ``receive_maximum`` unacknowledged messages (MQTT 5
Receive Maximum; ``max_inflight_messages`` on Mosquitto for 3.1.1), and the loop stops reading
the socket while ``max_in_flight`` records are unacknowledged: the kernel's buffers fill and TCP
holds the broker back, whatever it does with Receive Maximum, so memory stays bounded. When
Kafka is away nothing gets confirmed, so nothing gets acknowledged and Mosquitto keeps the
session's messages.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from typing import Any

from bridge._mqtt_packets import Oversized
from bridge._subscriber import Message, Subscriber, SubscriberLike
from bridge.errors import BridgeError
from bridge.metrics import BridgeMetrics
from bridge.settings import BridgeSettings
from forewarn.contract import Decoder
from forewarn.deadletter import DeadLetter, Kind, Origin, Record, RefusalPolicy, ingest_ms
from forewarn.errors import KafkaError
from forewarn.kafka import ErrorClass, KafkaAdmin, KafkaProducer, classify, error_code
from forewarn.ports import ProducerLike
from forewarn.routing import Routed, Router, parse_topic
from forewarn.service import LoopService
from forewarn.topics import Topics, mqtt_subscriptions

__all__ = ["Bridge", "subscriptions"]

log = logging.getLogger(__name__)

_STEP_MESSAGES = 2000  # messages handled between two polls of the producer
_STEP_RECORDS = 5000  # and about this many records: delivery reports and PUBACKs keep flowing
_IDLE_WAIT_S = 0.005
_LINGER_MS = 20  # the producer's linger unless kafka.extra sets one
_BUSY_WAIT_S = 0.001  # wait for delivery reports while records are in flight: short, the socket may fill
_ALONE_WAIT_S = 1.0  # flush around a record sent alone after Kafka refused it for good (bounded: the loop waits)


def subscriptions(share_group: str) -> list[str]:
    """The MQTT filters the bridge subscribes to (shared when ``share_group`` is set)."""
    filters = mqtt_subscriptions()
    return [f"$share/{share_group}/{f}" for f in filters] if share_group else filters


class _Pending:
    """One MQTT message between its arrival and its acknowledgement."""

    __slots__ = ("alone", "attempts", "epoch", "error", "failed", "mid", "qos", "received", "records", "refused",
                 "remaining", "topic")

    def __init__(self, mid: int, qos: int, epoch: int, received: float, records: list[Record], topic: str) -> None:
        self.mid = mid
        self.qos = qos
        self.epoch = epoch
        self.received = received
        self.records = records
        self.topic = topic
        self.remaining = len(records)
        self.failed = False
        self.error: Any = None
        self.attempts = 0
        self.refused: list[tuple[Any, Any]] | None = None  # (Record or librdkafka message, error)
        self.alone: set[int] | None = None  # id() of the records whose last send was alone

    def on_delivery(self, error: Any, message: Any) -> None:
        self.remaining -= 1
        if error is not None:
            self.fail(message, error)

    def fail(self, what: Any, error: Any) -> None:
        self.failed = True
        self.error = error
        if self.refused is None:
            self.refused = []
        self.refused.append((what, error))

    def failed_records(self) -> list[tuple[int, Any]] | None:
        """(index in ``records``, error) of the records that failed, or None when a report did
        not say which record it was about."""
        found: list[tuple[int, Any]] = []
        for what, error in self.refused or ():
            if isinstance(what, Record):
                found.append((self.records.index(what), error))
                continue
            if what is None:
                return None
            key = what.key()
            for i, r in enumerate(self.records):
                if r.topic == what.topic() and r.value == what.value() and (r.key.encode() if r.key else None) == key:
                    found.append((i, error))
                    break
            else:
                return None
        return found


class Bridge(LoopService):
    """MQTT → Kafka. ``run()`` blocks until :meth:`stop` (e.g. from a signal handler), then drains.

    ``producer`` and ``subscriber`` default to the real ones built from ``settings``; unit tests
    pass in-memory doubles (:class:`forewarn.testing.FakeProducer` and a ``SubscriberLike``),
    which take exactly the same path through the bridge.
    """

    def __init__(self, settings: BridgeSettings, *, producer: ProducerLike | None = None,
                 subscriber: SubscriberLike | None = None, metrics: BridgeMetrics | None = None,
                 decoder: Decoder | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.options = settings.bridge
        self.topics = Topics.from_settings(settings.topics)
        self.router = Router(self.topics, decoder or Decoder(settings.input.limits()), self.options.dlq_max_bytes)
        self.metrics = metrics or BridgeMetrics()
        self._own_producer = producer is None
        self.producer: ProducerLike = producer if producer is not None else KafkaProducer(
            settings.kafka, **self._producer_overrides(settings))
        self.subscriber: SubscriberLike = subscriber if subscriber is not None else Subscriber(
            settings.mqtt, self.options.client_id, clean_start=False,
            session_expiry_s=self.options.session_expiry_s, receive_maximum=self.options.receive_maximum,
            max_packet_bytes=self.options.max_packet_bytes, announce_max_packet=self.options.announce_max_packet,
            shared_subscriptions=self.options.shared_subscriptions)
        self.subscriber.on_connected = self._on_connected
        self._refusals = RefusalPolicy(self.options.dead_letter_after)
        self._records_per_message = 1.0
        self._acks: list[int] = []  # packet ids to acknowledge at the end of this round
        self._pending: collections.deque[_Pending] = collections.deque()
        self._live: dict[int, _Pending] = {}  # mid -> newest pending message with that id
        self._retry: list[tuple[float, _Pending, list[Record]]] = []
        self._epoch = 0  # bumped on every (re)connect: ids of an older connection are never acknowledged
        self._intake = False
        self._started = False
        self.in_flight = 0  # records of unacknowledged messages
        self._last_progress = time.monotonic()
        self._waiting_since: float | None = None
        self._last_wait_log = 0.0
        self._next_housekeeping = 0.0
        self._fatal: Any = None  # a fatal producer error met this round: rebuild before going on
        self._rebuild_at = 0.0
        self._rebuilds_in_a_row = 0
        self.producer_rebuilds = 0
        self._counted: tuple[int, int, int] = (0, 0, 0)  # oversized, malformed, rebuilds already exported
        self._roles = {self.topics.telemetry: "telemetry", self.topics.maintenance: "maintenance",
                       self.topics.dlq: "dlq"}

    @staticmethod
    def _producer_overrides(settings: BridgeSettings) -> dict[str, Any]:
        # Throughput over a few ms of latency: larger produce requests cost the broker (and the
        # box it may share) much less per record. kafka.extra still wins.
        overrides: dict[str, Any] = {"queue.buffering.max.messages": max(100_000, 2 * settings.bridge.max_in_flight),
                                     "linger.ms": _LINGER_MS}
        return {k: v for k, v in overrides.items() if k not in settings.kafka.extra}

    def _on_connected(self, session_present: bool) -> None:
        """The subscriber (re)connected; called on the loop's thread before any message of the
        new connection is read."""
        self._epoch += 1
        if not session_present:
            log.info("mqtt session was not present: a new session starts (nothing was queued for it)")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Serve metrics, check Kafka's topics, connect to MQTT and subscribe."""
        if self._started:
            return
        if self.options.metrics_port is not None:
            self.metrics.serve(self.options.metrics_port, self.options.metrics_host)
        if self.options.check_topics and self._own_producer:
            self._check_topics()
        self._intake = True
        filters = subscriptions(self.options.share_group)
        # Subscribing first lets the subscriber probe a 3.1.1 broker for shared subscriptions
        # before the session resumes (not while the broker pushes the queued messages).
        self.subscriber.subscribe(filters, qos=1)
        self.subscriber.connect()
        self._started = True
        log.info("bridge %s subscribed to %s; forwarding to %s, %s and %s", self.options.client_id,
                 ", ".join(filters), self.topics.telemetry, self.topics.maintenance, self.topics.dlq)

    def _check_topics(self) -> None:
        try:
            metadata = KafkaAdmin(self.settings.kafka).ping(timeout_s=10)
        except KafkaError as error:
            log.warning("Kafka is not reachable at start (%s); MQTT messages stay unacknowledged until it is",
                        error.one_line())
            return
        missing = [t for t in (self.topics.telemetry, self.topics.maintenance, self.topics.dlq)
                   if t not in metadata.topics]
        if missing:
            raise BridgeError(f"Kafka topic(s) missing: {', '.join(missing)}",
                              hint="run `forewarn topics create` with the same topic prefix")

    # -- the loop --------------------------------------------------------------------------

    def step(self, wait_s: float = _IDLE_WAIT_S) -> int:
        """One round: read what arrived (within the in-flight bound), serve delivery reports,
        acknowledge, housekeeping. Returns how many messages were handled."""
        handled = 0
        reader = self.subscriber
        room = self.options.max_in_flight - self.in_flight
        if room > 0 and self._intake and self._fatal is None:  # nothing new into a broken producer
            want = max(1, int(min(_STEP_MESSAGES, room, _STEP_RECORDS) / self._records_per_message))
            messages = reader.read(want)
            if messages:
                handled = self._handle_read(messages)
        self._poll(0.0)
        if self._pending:
            self._acknowledge()
        else:
            self._last_progress = time.monotonic()
        if not handled:  # nothing arrived: wait a little for delivery reports or the socket
            if self._pending:
                self._poll(min(wait_s, _BUSY_WAIT_S))
                self._acknowledge()
            else:
                reader.wait_readable(wait_s)
        now = time.monotonic()
        if self._fatal is not None:
            self._rebuild_producer(now)
        elif self._retry:
            self._resend_due(now)
        if now >= self._next_housekeeping:
            self._housekeeping(now)
        return handled

    def _poll(self, timeout_s: float) -> None:
        try:
            self.producer.poll(timeout_s)
        except KafkaError as error:  # confluent-kafka raises a fatal client error from poll/flush
            self._producer_failed(error)

    def _flush(self, timeout_s: float) -> None:
        try:
            self.producer.flush(timeout_s)
        except KafkaError as error:
            self._producer_failed(error)

    def _producer_failed(self, error: KafkaError) -> None:
        if classify(error) is ErrorClass.FATAL:
            self._fatal = error
        else:  # not expected from poll/flush: log it, the records' own reports decide
            log.warning("Kafka producer: %s", error.one_line())

    def _handle_read(self, messages: list[Message]) -> int:
        """Route and produce the messages of one read of the subscriber (all of the current connection)."""
        received_ms = int(time.time() * 1000)
        arrived = time.monotonic()
        epoch = self._epoch
        route = self.router.route
        rejected = self.metrics.rejected_by_reason
        received = self.metrics.received_by_kind
        live = self._live
        append = self._pending.append
        produce = self._produce
        records_total = 0
        for topic, payload, qos, mid in messages:
            try:
                if type(payload) is Oversized:  # too long to read whole: its head becomes the dead letter
                    kind = parse_topic(topic)[0]
                    bad = payload.rejected()
                    routed = Routed(kind, [self.router.dead_letter(bad, topic, kind, received_ms)], [str(bad.reason)])
                else:
                    routed = route(topic, payload, received_ms)
            except Exception:  # noqa: BLE001 - a routing bug must not stop the stream; internal_error logs it
                routed = self.router.internal_error(topic, payload, received_ms)
            received[routed.kind] += 1
            if routed.rejected:
                for reason in routed.rejected:
                    rejected[reason] += 1
            records = routed.records
            pending = _Pending(mid, qos, epoch, arrived, records, topic)
            if qos:
                live[mid] = pending
            append(pending)
            records_total += len(records)
            produce(pending, records)
        self.in_flight += records_total
        self._records_per_message = max(1.0, records_total / len(messages))
        return len(messages)

    def _produce(self, pending: _Pending, records: list[Record]) -> None:
        callback = pending.on_delivery
        produce = self.producer.produce
        for topic, value, key, timestamp_ms, headers in records:
            try:
                produce(topic, value, key, headers=headers, timestamp_ms=timestamp_ms, on_delivery=callback)
            except KafkaError as error:  # refused locally (e.g. too large, or _FATAL): decided with the rest
                pending.remaining -= 1
                pending.fail(Record(topic, value, key, timestamp_ms, headers), error)
                if classify(error) is ErrorClass.FATAL:
                    self._fatal = error

    def _acknowledge(self) -> None:
        pending = self._pending
        live = self._live
        epoch = self._epoch
        acks = self._acks
        forwarded = self.metrics.forwarded_by_topic
        acked = self.metrics.acked_now
        observe = self.metrics.ack_latency.observe
        now = time.monotonic()
        roles = self._roles
        while pending:
            head = pending[0]
            if head.remaining:
                break
            if head.failed:
                self._schedule_failed(now)
                break
            pending.popleft()
            self._last_progress = now
            self._rebuilds_in_a_row = 0
            self.in_flight -= len(head.records)
            for record in head.records:
                forwarded[roles[record.topic]] += 1
            if head.attempts:
                self._refusals.forget(*[(head, id(r)) for r in head.records])
            if not head.qos:
                continue
            if live.get(head.mid) is head:
                del live[head.mid]
                if head.epoch == epoch:
                    acks.append(head.mid)
                    observe(now - head.received)
                    acked.n += 1
        if acks:
            self.subscriber.ack_many(acks)
            acks.clear()

    def _schedule_failed(self, now: float) -> None:
        """The oldest message failed: it, and every later one whose reports are all in with a
        failure Kafka may still take, are scheduled for re-sending now (after an outage thousands
        fail together; one backoff each, one after the other, would take as many backoffs)."""
        pending = self._pending
        due = self._schedule_retry(pending[0], now)
        if due is None:  # sent alone, or the producer is being rebuilt
            return
        others = 0
        for later in itertools.islice(pending, 1, None):
            if later.failed and not later.remaining and self._schedule_retry(later, now, due=due) is not None:
                others += 1
        if others:
            log.warning("re-sending the records of %s later MQTT message(s) Kafka did not take either", others)

    def _schedule_retry(self, pending: _Pending, now: float, *, due: float | None = None) -> float | None:
        """Decide what happens to a message whose records were all reported, some failed, by the
        errors' class. ``due`` given: one of many, re-sent at the oldest one's time (after it, so
        per key in order), logged in the caller's summary, never sent alone (that waits until it
        is the oldest). Returns when it is re-sent, None when it was not scheduled."""
        quiet = due is not None
        if self._fatal is not None:  # the rebuild at the end of this round re-sends it
            return None
        failed = pending.failed_records()
        errors = [pending.error] if failed is None else [error for _i, error in failed]
        classes = {classify(error) for error in errors}
        if ErrorClass.FATAL in classes:
            self._fatal = next(e for e in errors if classify(e) is ErrorClass.FATAL)
            return None
        alone = failed is not None and classes == {ErrorClass.NEVER_STORABLE}
        if alone and quiet:
            return None
        pending.failed = False
        pending.refused = None
        pending.attempts += 1
        self.metrics.kafka_errors_now.n += 1
        if alone:
            assert failed is not None
            self._send_alone(pending, failed)
            return None
        pending.alone = None  # re-sent with the others below
        records = pending.records if failed is None else [pending.records[i] for i, _error in failed]
        pending.remaining = len(records)
        delay = min(self.options.retry_backoff_s * pending.attempts, 30.0) if due is None else due - now
        if ErrorClass.AUTHORIZATION in classes and not quiet:
            denied = next(e for e in errors if classify(e) is ErrorClass.AUTHORIZATION)
            log.error("Kafka refuses the bridge (%s: %s): %s record(s) of an MQTT message stay unacknowledged and "
                      "are re-sent in %.1fs (attempt %s); grant the bridge's principal Write on %s",
                      error_code(denied), denied, len(records), delay, pending.attempts + 1,
                      ", ".join(sorted({r.topic for r in records})))
            if self._waiting_since is None:
                self._waiting_since = self._last_progress
                self.metrics.kafka_waiting.set(1)
        elif not quiet:
            log.warning("Kafka did not take a record (%s: %s); re-sending %s record(s) of that MQTT message in "
                        "%.1fs (attempt %s)", error_code(pending.error), pending.error, len(records), delay,
                        pending.attempts + 1)
        self._retry.append((now + delay, pending, records))
        return now + delay

    def _rebuild_producer(self, now: float) -> None:
        """The producer met a fatal error: a new one, and every record Kafka did not confirm sent
        again through it, message by message in arrival order (so per key), before anything new."""
        if now < self._rebuild_at:
            return
        error, self._fatal = self._fatal, None
        self._rebuilds_in_a_row += 1
        self._rebuild_at = now + min(self.options.retry_backoff_s * 2 ** (self._rebuilds_in_a_row - 1), 30.0)
        self.producer_rebuilds += 1
        self.metrics.kafka_errors_now.n += 1
        self.producer.rebuild()  # reports of the old producer never come: unconfirmed means not sent
        self._retry = []
        self._refusals = RefusalPolicy(self.options.dead_letter_after)
        kept: collections.deque[_Pending] = collections.deque()
        resend: list[_Pending] = []
        for old in self._pending:
            if not old.remaining and not old.failed:  # Kafka confirmed all of it
                kept.append(old)
                continue
            fresh = _Pending(old.mid, old.qos, old.epoch, old.received, old.records, old.topic)
            fresh.attempts = old.attempts + 1
            if self._live.get(old.mid) is old:
                self._live[old.mid] = fresh
            kept.append(fresh)
            resend.append(fresh)
        self._pending = kept
        log.error("the Kafka producer met a fatal error (%s: %s); built a new producer (rebuild %s) and re-sent "
                  "the %s record(s) of %s MQTT message(s) Kafka had not confirmed", error_code(error), error,
                  self.producer_rebuilds, sum(len(p.records) for p in resend), len(resend))
        for fresh in resend:
            self._produce(fresh, fresh.records)

    def _resend_due(self, now: float) -> None:
        due = [(p, records) for t, p, records in self._retry if t <= now]
        if due:
            self._retry = [item for item in self._retry if item[0] > now]
            for pending, records in due:
                self._produce(pending, records)

    def _send_alone(self, pending: _Pending, failed: list[tuple[int, Any]]) -> None:
        """Kafka refused these records for good, maybe only for a bad neighbour in the same
        request: each is sent again alone (everything else flushed first), or replaced as the
        refusal policy says."""
        pending.remaining = len(failed)
        self._flush(_ALONE_WAIT_S)
        policy = self._refusals
        alone = pending.alone if pending.alone is not None else set()
        pending.alone = alone
        dropped: set[int] = set()
        for index, error in failed:
            record = pending.records[index]
            if policy.refused((pending, id(record)), alone=id(record) in alone):
                letter = self._dead_letter(pending, record, error)
                if letter is None:
                    dropped.add(index)
                    pending.remaining -= 1
                    continue
                pending.records[index] = record = letter
            else:
                log.warning("Kafka refused a %s record (%s); sending it again alone (refusal %s of %s)", record.topic,
                            error, policy.refusals((pending, id(record))), self.options.dead_letter_after)
            alone.add(id(record))
            self._produce(pending, [record])
            self._flush(_ALONE_WAIT_S)
        if dropped:
            self.in_flight -= len(dropped)
            pending.records = [r for i, r in enumerate(pending.records) if i not in dropped]

    def _dead_letter(self, pending: _Pending, record: Record, error: Any) -> Record | None:
        """What replaces a record Kafka refuses for good: its dead letter; for a dead letter, what
        the refusal policy makes of it; None when it has nothing left (the bridge's last resort:
        the record is dropped, logged whole at ERROR and counted)."""
        code = error_code(error)
        dlq = self.topics.dlq
        if record.topic != dlq:
            kind = Kind.READING if pending.topic.endswith("/batch") else Kind.TELEMETRY
            if record.topic == self.topics.maintenance:
                kind = Kind.MAINTENANCE
            ingest = ingest_ms(record.headers)
            received = ingest if ingest is not None else int(time.time() * 1000)
            letter = DeadLetter.refused(value=record.value, kafka_topic=record.topic, error=f"{code}: {error}",
                                        mqtt_topic=pending.topic, kind=kind, received_at=received,
                                        origin=Origin.BRIDGE).record(dlq)
            self.metrics.dead_letters.labels("dlq", code).inc()
            log.error("Kafka refused a %s record %s times for good (%s: %s); sent to %s instead", record.topic,
                      self.options.dead_letter_after, code, error, dlq)
            return letter
        cut = self._refusals.replace_refused_letter(DeadLetter.from_record(record), f"{code}: {error}")
        if cut is not None:
            self.metrics.dead_letters.labels("dlq_cut", code).inc()
            log.error("%s refused a dead-letter record of %s bytes (%s: %s); sending its first %s bytes instead", dlq,
                      len(record.value), code, error, len(cut.value))
            return cut.record(dlq)
        self.metrics.dead_letters.labels("dropped", code).inc()
        log.error("%s refused a dead-letter record for good (%s: %s); DROPPED it: MQTT topic %s, headers %s, "
                  "payload %r", dlq, code, error, pending.topic, record.headers, record.value)
        return None

    def _housekeeping(self, now: float) -> None:
        self._next_housekeeping = now + 0.5
        self.subscriber.housekeeping()  # keep-alive and reconnects, also while intake is paused
        self._flush_metrics()
        self._watch_kafka(now)

    def _watch_kafka(self, now: float) -> None:
        period = self.options.kafka_wait_log_s
        stalled = bool(self._pending) and now - self._last_progress >= period
        if stalled:
            if self._waiting_since is None:
                self._waiting_since = self._last_progress
                self.metrics.kafka_waiting.set(1)
            if now - self._last_wait_log >= period:
                self._last_wait_log = now
                log.warning("waiting for Kafka: %s records of %s MQTT messages unconfirmed for %.0fs; not "
                            "acknowledging MQTT (the broker keeps the messages)",
                            self.in_flight, len(self._pending), now - self._waiting_since)
        elif self._waiting_since is not None and now - self._last_progress < period:
            log.warning("Kafka confirms records again after %.0fs; acknowledging MQTT again",
                        now - self._waiting_since)
            self._waiting_since = None
            self.metrics.kafka_waiting.set(0)

    def _flush_metrics(self) -> None:
        m = self.metrics
        m.flush()
        m.in_flight.set(self.in_flight)
        m.in_flight_messages.set(len(self._pending))
        # The subscriber and the rebuild path keep plain totals; the counters take what is new.
        totals = (getattr(self.subscriber, "oversized", 0), getattr(self.subscriber, "malformed", 0),
                  self.producer_rebuilds)
        for counter, total, seen in zip((m.mqtt_oversized, m.mqtt_malformed, m.producer_rebuilds), totals,
                                        self._counted, strict=True):
            if total > seen:
                counter.inc(total - seen)
        self._counted = totals

    # -- shutdown --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop intake, wait (up to ``shutdown_timeout_s``) for Kafka, acknowledge what it
        confirmed, disconnect. Messages not confirmed stay on the broker for the next run."""
        if not self._started:
            return
        self._started = False
        self._intake = False
        deadline = time.monotonic() + self.options.shutdown_timeout_s
        while self._pending and time.monotonic() < deadline:
            self._poll(0.05)
            self._acknowledge()
            now = time.monotonic()
            if self._fatal is not None:
                self._rebuild_producer(now)
            self._resend_due(now)
            if now >= self._next_housekeeping:
                self._housekeeping(now)
        self._flush_metrics()
        if self._pending:
            log.warning("shutting down with %s MQTT messages (%s records) not confirmed by Kafka; the broker "
                        "will send them again", len(self._pending), self.in_flight)
        log.info("bridge stopped")
        try:
            self.subscriber.disconnect()
        finally:
            if self._own_producer:
                try:
                    self.producer.close(timeout_s=0.0 if self._pending else 5.0)
                except KafkaError as error:  # a fatal error met while closing: nothing more to confirm
                    log.warning("closing the Kafka producer: %s", error.one_line())
            self.metrics.close()
