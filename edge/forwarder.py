"""Drains the buffer to Kafka, oldest record first, on a thread of its own.

Records are produced in buffer-id order through an idempotent producer (``acks=all``,
``message.timeout.ms=0``: librdkafka retries forever and keeps per-partition order across
retries), and a row is removed from the buffer only when its delivery report says Kafka has
it. While Kafka is unreachable at most ``max_in_flight`` records (and ``max_in_flight_bytes``)
sit in librdkafka's queue; the rest wait on disk. A ``kill -9`` loses only the in-memory queue:
those rows are still in the buffer and are sent again (duplicates, never losses).

A failed delivery report stops intake until everything in flight is settled, then resends from
the oldest row still there. Kafka fails a whole produce request for one bad record (e.g. a
record above the topic's ``max.message.bytes`` sinks every record batched with it), so a row
that failed is sent again *alone* (innocent neighbours are delivered after records that were
queued behind them: the only way this forwarder breaks per-machine order). A record larger than
its topic's ``max.message.bytes`` (read from Kafka by ``record_limits``) is sent alone from the
start, so it sinks no neighbour. If Kafka takes a record sent alone, it was an innocent neighbour.

A failed delivery is classified by librdkafka's code (:func:`~forewarn.kafka.classify`), never
by the error's flags, as the bridge does. Only a record Kafka can never store (too large, invalid,
...) leaves the buffer without reaching its topic; every other failure (time-outs, transport,
authorization — logged at ERROR —, unknown codes) keeps the row and resends it after a backoff.
A fatal producer error (an idempotent producer's lost sequence, ``_FATAL``) rebuilds the producer
(:meth:`~forewarn.ports.ProducerLike.rebuild`) and resends from the oldest row still in the buffer:
rows Kafka did not confirm are all still there.

What happens to a record Kafka can never store is the bridge's rule,
:class:`~forewarn.deadletter.RefusalPolicy`: refused ``dead_letter_after`` times, at least once
alone, it is replaced in the buffer by its
dead letter for the ``dlq`` topic (reason ``kafka_refused``). A dead letter the dead-letter topic
refuses is replaced by the same cut to :data:`~forewarn.deadletter.REFUSED_CUT_BYTES`, and its
full bytes move to the buffer's local ``dead_letters`` table in the same transaction (the edge
has storage, so nothing is lost); a cut dead letter refused too moves to that table as well,
the edge's last resort. Each step is logged and counted; none stops the records behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge.buffer import Buffer, BufferRecord, DiskFull, Stored
from edge.metrics import EdgeMetrics
from forewarn.deadletter import DeadLetter, Kind, Origin, Record, RefusalPolicy, ingest_ms
from forewarn.errors import KafkaError
from forewarn.kafka import ErrorClass, KafkaAdmin, classify, error_code
from forewarn.metrics import Tally
from forewarn.ports import ProducerLike
from forewarn.settings import KafkaSettings
from forewarn.topics import Topics, alert_topic, maintenance_topic, prediction_topic, telemetry_topic

__all__ = ["Forwarder", "role_topics", "topic_limits"]

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.05
_ALONE_WAIT_S = 1.0  # flush after a row sent alone: its report comes without linger
_REFUSED_RETRY_S = 0.1  # a row refused for good is tried again (alone) after this, not after the backoff
_DEFAULT_LIMIT = 1_048_588  # Kafka's default max.message.bytes, until the topics' own are known
_BATCH_OVERHEAD = 128  # bytes a record batch adds to a record (Kafka checks the batch's size)
_LIMITS_RETRY_S = 60.0

# role -> the DLQ kind of its records, and their MQTT topic from their key (machine_id)
_KINDS = {"telemetry": Kind.TELEMETRY, "maintenance": Kind.MAINTENANCE, "predictions": Kind.PREDICTION,
          "alerts": Kind.ALERT}
_MQTT_TOPICS = {"telemetry": telemetry_topic, "maintenance": maintenance_topic, "predictions": prediction_topic,
                "alerts": alert_topic}


def _buffered(record: Record) -> BufferRecord:
    return BufferRecord("dlq", record.value, (record.key or "").encode(), tuple(record.headers), record.timestamp_ms)


def _letter(record: BufferRecord, topic: str) -> Record:
    key = record.key.decode(errors="replace") if record.key is not None else None
    return Record(topic, record.value or b"", key, record.ts, list(record.headers))


def role_topics(topics: Topics) -> dict[str, str]:
    """Buffer role name → Kafka topic name."""
    return {"telemetry": topics.telemetry, "maintenance": topics.maintenance, "dlq": topics.dlq,
            "predictions": topics.predictions, "alerts": topics.alerts, "pipeline": topics.pipeline}


def topic_limits(kafka: KafkaSettings, topics: Topics) -> dict[str, int]:
    """Each of the edge's Kafka topics' ``max.message.bytes``: larger records are sent alone."""
    configs = KafkaAdmin(kafka).topic_configs(role_topics(topics).values(), timeout_s=10.0)
    return {name: int(config["max.message.bytes"]) for name, config in configs.items()
            if config.get("max.message.bytes", "").isdigit()}


class Forwarder:
    """``start()`` a thread that forwards until ``stop()``; ``drain()`` forwards until empty."""

    def __init__(self, buffer: Buffer, producer: ProducerLike, topics: Topics, metrics: EdgeMetrics, *,
                 batch: int = 5000, max_in_flight: int = 50_000, max_in_flight_bytes: int = 16 * 2**20,
                 dead_letter_after: int = 3, log_period_s: float = 30.0,
                 record_limits: Callable[[], dict[str, int]] | None = None) -> None:
        self.buffer = buffer
        self.producer = producer
        self.metrics = metrics
        self.batch = batch
        self.max_in_flight = max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes
        self.dead_letter_after = dead_letter_after
        self._policy = RefusalPolicy(dead_letter_after)
        self.log_period_s = log_period_s
        self._topics = role_topics(topics)
        self._record_limits = record_limits
        self._limits: dict[str, int] = {}  # buffer role -> largest record Kafka takes
        self._limits_at = 0.0
        self._topics_dlq = topics.dlq
        self._sent_upto = 0  # highest buffer id handed to the producer
        self.in_flight = 0
        self.in_flight_bytes = 0
        self._delivered: list[int] = []
        self._failures: list[tuple[Stored, Any]] = []
        self._failed_rows: set[int] = set()  # row ids whose delivery failed: each is sent again alone
        self._alone: int | None = None  # the row sent alone, until its report
        self._forwarded = Tally(metrics.forwarded)  # by role, flushed as the rows are removed
        self._failed = False
        self._retry_at = 0.0
        self._backoff = 1.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one pump at a time (the thread, or drain after it stopped)
        self.last_delivery = time.monotonic()
        self._waiting_since = self.last_delivery  # when the records now in flight began to wait
        self._down_since: float | None = None
        self._last_log = 0.0
        self.forwarded = 0
        self.dead_lettered = 0
        self.dead_lettered_locally = 0
        self._fatal: Any = None  # a fatal producer error met: rebuild before sending more
        self._generation = 0  # bumped on every rebuild: reports of an abandoned producer are ignored
        self.producer_rebuilds = 0
        self._disk_full_warned = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edge-forwarder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._record_limits is not None and time.monotonic() >= self._limits_at:
                    self.read_limits()
                self.pump()
            except Exception:  # keep forwarding; the rows stay in the buffer
                log.exception("forwarding round failed; retrying in 1s")
                time.sleep(1.0)

    def drain(self, timeout_s: float) -> int:
        """Forward until the buffer is empty or ``timeout_s`` passed; returns the rows left."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (len(self.buffer) or self.in_flight):
            self.pump()
        return len(self.buffer)

    def read_limits(self) -> None:
        """Read the topics' ``max.message.bytes`` (the thread retries every minute while Kafka is away)."""
        assert self._record_limits is not None
        self._limits_at = time.monotonic() + _LIMITS_RETRY_S
        try:
            by_topic = self._record_limits()
        except Exception as error:  # noqa: BLE001 - Kafka away or not allowed: the default holds
            log.debug("topic limits not read (%s); assuming %s bytes", error, _DEFAULT_LIMIT)
            return
        self._limits = {role: by_topic[topic] - _BATCH_OVERHEAD for role, topic in self._topics.items()
                        if topic in by_topic}
        self._record_limits = None

    # -- one round ---------------------------------------------------------------------------

    def pump(self) -> int:
        """Hand the next rows to the producer, serve delivery reports, forget delivered rows."""
        with self._lock:
            sent = 0
            now = time.monotonic()
            if self._fatal is not None and now >= self._retry_at:
                self._rebuild()
            if self._failed and self.in_flight == 0 and now >= self._retry_at:
                log.warning("resending the buffer from its oldest row after a failed delivery")
                self._failed = False
                self._sent_upto = 0
            room = self.max_in_flight - self.in_flight
            if (self.in_flight_bytes >= self.max_in_flight_bytes or self._failed or self._alone is not None
                    or self._fatal is not None):
                room = 0
            if room > 0:
                sent = self._send(min(room, self.batch))
            try:
                if self._alone is not None:
                    self.producer.flush(_ALONE_WAIT_S)
                else:
                    self.producer.poll(0.0 if sent else _IDLE_WAIT_S)
            except KafkaError as error:  # confluent-kafka raises a fatal client error from poll/flush
                self._met(error)
            self._settle()
            self._watch(time.monotonic())
            return sent

    def _send(self, limit: int) -> int:
        rows = self.buffer.peek(limit, after_id=self._sent_upto)
        sent = 0
        limits = self._limits
        for stored in rows:
            r = stored.record
            size = r.size
            alone = stored.id in self._failed_rows or size - 64 > limits.get(r.topic, _DEFAULT_LIMIT)
            if alone and (sent or self.in_flight):
                break  # a row that failed goes alone: once everything before it is settled
            self._produce(stored, size)
            sent += 1
            if alone:
                self._alone = stored.id
                break
            if self.in_flight_bytes >= self.max_in_flight_bytes:
                break
        return sent

    def _produce(self, stored: Stored, size: int) -> None:
        r = stored.record
        callback = self._callback(stored, size)
        self._sent_upto = stored.id
        if self.in_flight == 0:  # nothing was waiting: the wait starts now, not at the last delivery
            self._waiting_since = time.monotonic()
        self.in_flight += 1
        self.in_flight_bytes += size
        try:
            self.producer.produce(self._topics.get(r.topic, r.topic), r.value, r.key, headers=list(r.headers) or None,
                                  timestamp_ms=r.ts, on_delivery=callback)
        except KafkaError as error:  # refused before sending (e.g. larger than message.max.bytes, or _FATAL)
            callback(error, None)

    def _met(self, error: KafkaError) -> None:
        if classify(error) is ErrorClass.FATAL:
            self._fatal = error
        else:
            log.warning("Kafka producer: %s", error.one_line())

    def _rebuild(self) -> None:
        """A new producer after a fatal error; every row it did not confirm is still in the
        buffer and is sent again, from the oldest."""
        error, self._fatal = self._fatal, None
        self._generation += 1
        self.producer_rebuilds += 1
        self.metrics.producer_rebuilds.inc()
        self.producer.rebuild()
        self.in_flight = 0
        self.in_flight_bytes = 0
        self._failures = []
        self._alone = None
        self._failed = False
        self._sent_upto = 0
        log.error("the Kafka producer met a fatal error (%s: %s); built a new producer (rebuild %s) and resending "
                  "the buffer (%s rows) from its oldest row", error_code(error), error, self.producer_rebuilds,
                  len(self.buffer))

    def _callback(self, stored: Stored, size: int) -> Any:
        generation = self._generation

        def on_delivery(error: Any, _message: Any) -> None:
            if generation != self._generation:  # a report of an abandoned producer
                return
            self.in_flight -= 1
            self.in_flight_bytes -= size
            if error is None:
                self._delivered.append(stored.id)
                self._forwarded[stored.record.topic] += 1
            else:
                self._failures.append((stored, error))

        return on_delivery

    def _settle(self) -> None:
        if self._failures:
            self._failed_deliveries()
        if self._alone is not None and self.in_flight == 0:  # its report is in
            if self._alone in self._delivered:  # an innocent neighbour of a bad record
                self._failed_rows.discard(self._alone)
                self._policy.forget(self._alone)
            self._alone = None
        if not self._delivered:
            return
        done, self._delivered = self._delivered, []
        self.buffer.remove(done)
        self.forwarded += len(done)
        self.last_delivery = time.monotonic()
        if not self._failed:
            self._backoff = 1.0
        self._forwarded.flush()

    def _failed_deliveries(self) -> None:
        failures, self._failures = self._failures, []
        self.metrics.kafka_errors.inc(len(failures))
        retry_soon = True
        denied: list[tuple[Stored, Any]] = []
        for stored, error in failures:
            kind = classify(error)
            if kind is ErrorClass.FATAL:
                self._fatal = error  # the rebuild resends it with every other row not confirmed
            elif kind is ErrorClass.AUTHORIZATION:
                denied.append((stored, error))
            permanent = kind is ErrorClass.NEVER_STORABLE
            retry_soon = retry_soon and permanent
            self._failed_rows.add(stored.id)  # from now on it is sent alone
            if permanent and self._policy.refused(stored.id, alone=stored.id == self._alone):
                try:
                    self._dead_letter(stored, error)
                except DiskFull:
                    # The row stays as it is and is sent (alone) again; its dead letter is
                    # written on a later round, once the disk has room.
                    if not self._disk_full_warned:
                        log.warning("no room on the disk to dead-letter row %s of %s; it stays in the buffer and "
                                    "is tried again", stored.id, self.buffer.path)
                        self._disk_full_warned = True
                else:
                    self._failed_rows.discard(stored.id)
                    self._disk_full_warned = False
        if denied:
            stored, error = denied[0]
            log.error("Kafka refuses the edge (%s: %s) for %s row(s), first on its %s topic: they stay in the buffer "
                      "and are resent; grant the edge's principal Write on that topic", error_code(error), error,
                      len(denied), stored.record.topic)
            if self._down_since is None:  # the uplink is down until the grant is back, not after a grace period
                self._down_since = self.last_delivery
                self._last_log = time.monotonic()
                self.metrics.uplink_up.set(0)
        if not self._failed:
            stored, error = failures[0]
            log.error("Kafka did not take %s record(s) (first: a %s record, %s: %s); sending each again alone after "
                      "the records before it", len(failures), stored.record.topic, error_code(error), error)
            self._failed = True
        delay = _REFUSED_RETRY_S if retry_soon else self._backoff
        self._retry_at = time.monotonic() + delay
        if not retry_soon:
            self._backoff = min(self._backoff * 2, 30.0)

    def _dead_letter(self, stored: Stored, error: Any) -> None:
        """Replace a record Kafka refuses for good by its dead letter (a refused dead letter by
        its cut, or, refused cut, move it to the local table)."""
        r = stored.record
        topic = self._topics.get(r.topic, r.topic)
        code = error_code(error)
        refusal = f"{code}: {error}"
        detail = f"{topic}: {refusal}"
        now_ms = int(time.time() * 1000)
        if r.topic == "dlq":
            letter = DeadLetter.from_record(_letter(r, topic))
            cut = self._policy.replace_refused_letter(letter, refusal)
            if cut is None:
                self.buffer.dead_letter(stored.id, "kafka_refused", detail, now_ms)
                self.dead_lettered_locally += 1
                self.metrics.dead_letters.labels("local", code).inc()
                log.error("Kafka refused dead-letter record %s for good (%s): kept in the local dead_letters table "
                          "of %s", stored.id, detail, self.buffer.path)
                return
            self.buffer.replace(stored.id, _buffered(cut.record(self._topics_dlq)),
                                keep=("kafka_refused", detail, now_ms))
            self.dead_lettered_locally += 1
            self.metrics.dead_letters.labels("dlq_cut", code).inc()
            log.error("Kafka refused a dead-letter record of %s bytes for good (%s): sending its first %s bytes "
                      "instead; the whole record is kept in the local dead_letters table of %s", len(letter.value),
                      detail, len(cut.value), self.buffer.path)
            return
        key = (r.key or b"").decode(errors="replace")
        to_mqtt = _MQTT_TOPICS.get(r.topic)
        ingest = ingest_ms(r.headers)
        letter = DeadLetter.refused(value=r.value, kafka_topic=topic, error=refusal,
                                    mqtt_topic=to_mqtt(key) if to_mqtt and key else "",
                                    kind=_KINDS.get(r.topic, Kind.UNKNOWN),
                                    received_at=ingest if ingest is not None else now_ms,
                                    origin=Origin.EDGE)
        self.buffer.replace(stored.id, _buffered(letter.record(self._topics_dlq)))
        self.dead_lettered += 1
        self.metrics.dead_letters.labels("dlq", code).inc()
        log.error("Kafka refused a %s record %s times for good (%s): sent to the dead-letter topic instead",
                  r.topic, self.dead_letter_after, detail)

    def _watch(self, now: float) -> None:
        # Down when Kafka has confirmed nothing for 5 s while records wait: an edge idle for
        # longer than that is not down when its next record goes out.
        waiting = self.in_flight > 0 and now - max(self.last_delivery, self._waiting_since) > 5.0
        if waiting:
            if self._down_since is None:
                self._down_since = self.last_delivery
                self.metrics.uplink_up.set(0)
                log.warning("uplink down: Kafka confirmed nothing for %.0fs; buffering on disk (%s records)",
                            now - self.last_delivery, len(self.buffer))
                self._last_log = now
            elif now - self._last_log >= self.log_period_s:
                self._last_log = now
                log.warning("uplink down for %.0fs: %s records (%.1f MB, %.0f%% of the bound) buffered",
                            now - self._down_since, len(self.buffer), self.buffer.bytes / 1e6,
                            self.buffer.fill * 100)
        elif self._down_since is not None and self.last_delivery > self._down_since:  # delivered again
            log.warning("uplink back after %.0fs; draining %s buffered records", now - self._down_since,
                        len(self.buffer))
            self._down_since = None
            self.metrics.uplink_up.set(1)
