"""Drains the outbox to Kafka, oldest record first, on a thread of its own.

Records are produced in outbox-id order through an idempotent producer (``acks=all``,
``message.timeout.ms=0``: librdkafka retries forever and keeps per-partition order across
retries), and a row is removed from the outbox only when its delivery report says Kafka has
it. While Kafka is unreachable at most ``max_in_flight`` records sit in librdkafka's queue; the
rest wait on disk. A ``kill -9`` loses only the in-memory queue: those rows are still in the
outbox and are sent again (duplicates, never losses).

A failed delivery report (rare with infinite retries: e.g. an authorisation error) stops
intake until everything in flight is settled, then resends from the oldest row still there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from edge.buffer import Outbox
from edge.metrics import EdgeMetrics
from forewarn.ports import ProducerLike
from forewarn.topics import Topics

__all__ = ["Forwarder", "role_topics"]

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.05


def role_topics(topics: Topics) -> dict[str, str]:
    """Outbox role name → Kafka topic name."""
    return {"telemetry": topics.telemetry, "maintenance": topics.maintenance, "dlq": topics.dlq,
            "predictions": topics.predictions, "alerts": topics.alerts}


class Forwarder:
    """``start()`` a thread that forwards until ``stop()``; ``drain()`` forwards until empty."""

    def __init__(self, outbox: Outbox, producer: ProducerLike, topics: Topics, metrics: EdgeMetrics, *,
                 batch: int = 5000, max_in_flight: int = 50_000, log_period_s: float = 30.0) -> None:
        self.outbox = outbox
        self.producer = producer
        self.metrics = metrics
        self.batch = batch
        self.max_in_flight = max_in_flight
        self.log_period_s = log_period_s
        self._topics = role_topics(topics)
        self._sent_upto = 0  # highest outbox id handed to the producer
        self.in_flight = 0
        self._delivered: list[int] = []
        self._roles: Counter[str] = Counter()
        self._failed = False
        self._retry_at = 0.0
        self._backoff = 1.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one pump at a time (the thread, or drain after it stopped)
        self.last_delivery = time.monotonic()
        self._down_since: float | None = None
        self._last_log = 0.0
        self.forwarded = 0

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
                self.pump()
            except Exception:  # keep forwarding; the rows stay in the outbox
                log.exception("forwarding round failed; retrying in 1s")
                time.sleep(1.0)

    def drain(self, timeout_s: float) -> int:
        """Forward until the outbox is empty or ``timeout_s`` passed; returns the rows left."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (len(self.outbox) or self.in_flight):
            self.pump()
        return len(self.outbox)

    # -- one round ---------------------------------------------------------------------------

    def pump(self) -> int:
        """Hand the next rows to the producer, serve delivery reports, forget delivered rows."""
        with self._lock:
            sent = 0
            now = time.monotonic()
            if self._failed and self.in_flight == 0 and now >= self._retry_at:
                log.warning("resending the buffer from its oldest row after a failed delivery")
                self._failed = False
                self._sent_upto = 0
            room = self.max_in_flight - self.in_flight
            if not self._failed and room > 0:
                sent = self._send(min(room, self.batch))
            self.producer.poll(0.0 if sent else _IDLE_WAIT_S)
            self._settle()
            self._watch(time.monotonic())
            return sent

    def _send(self, limit: int) -> int:
        rows = self.outbox.peek(limit, after_id=self._sent_upto)
        produce = self.producer.produce
        topics = self._topics
        for stored in rows:
            r = stored.record
            topic = topics.get(r.topic, r.topic)
            produce(topic, r.value, r.key, headers=list(r.headers) or None, timestamp_ms=r.ts,
                    on_delivery=self._callback(stored.id, r.topic))
            self._sent_upto = stored.id
            self.in_flight += 1
        return len(rows)

    def _callback(self, row_id: int, role: str) -> Any:
        def on_delivery(error: Any, _message: Any) -> None:
            self.in_flight -= 1
            if error is None:
                self._delivered.append(row_id)
                self._roles[role] += 1
                return
            self.metrics.kafka_errors.inc()
            if not self._failed:
                log.error("Kafka refused a %s record (%s); resending from the oldest buffered row", role, error)
                self._failed = True
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, 30.0)

        return on_delivery

    def _settle(self) -> None:
        if not self._delivered:
            return
        done, self._delivered = self._delivered, []
        self.outbox.remove(done)
        self.forwarded += len(done)
        self.last_delivery = time.monotonic()
        if not self._failed:
            self._backoff = 1.0
        for role, n in self._roles.items():
            self.metrics.forwarded.labels(role).inc(n)
        self._roles.clear()

    def _watch(self, now: float) -> None:
        waiting = self.in_flight > 0 and now - self.last_delivery > 5.0
        if waiting:
            if self._down_since is None:
                self._down_since = self.last_delivery
                self.metrics.uplink_up.set(0)
                log.warning("uplink down: Kafka confirmed nothing for %.0fs; buffering on disk (%s records)",
                            now - self.last_delivery, len(self.outbox))
                self._last_log = now
            elif now - self._last_log >= self.log_period_s:
                self._last_log = now
                log.warning("uplink down for %.0fs: %s records (%.1f MB, %.0f%% of the bound) buffered",
                            now - self._down_since, len(self.outbox), self.outbox.bytes / 1e6,
                            self.outbox.fill * 100)
        elif self._down_since is not None and now - self.last_delivery < 1.0:
            log.warning("uplink back after %.0fs; draining %s buffered records", now - self._down_since,
                        len(self.outbox))
            self._down_since = None
            self.metrics.uplink_up.set(1)
