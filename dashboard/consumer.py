"""The background consumer: one per server process, it materialises Kafka into the store.

It assigns itself every partition of the dashboard's topics (no group rebalancing: every
dashboard process wants everything), starting from the offsets the store holds, reading
``read_committed`` so only committed output of the transactional scoring workers shows.
Offsets are also committed to Kafka under the dashboard's group id, only so that its lag is
visible like any other consumer's; the store's own offsets are what it resumes from.

It also samples the lag of every consumer group reading the dashboard's topics, and enforces
the store's retention.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
from confluent_kafka import admin as kadmin

from dashboard.ingest import ROLES, Ingest
from dashboard.store import Store
from forewarn.errors import KafkaError
from forewarn.kafka import KafkaAdmin, KafkaConsumer
from forewarn.settings import KafkaSettings
from forewarn.topics import Topics

__all__ = ["ConsumerStatus", "Materializer"]

log = logging.getLogger(__name__)

_TOPIC_RETRY_S = 5.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class ConsumerStatus:
    """What the background consumer is doing, for the pages' status line."""

    state: str = "starting"  # starting | waiting | running | stopped | failed
    detail: str = ""
    records: int = 0
    batches: int = 0
    last_batch_ms: int | None = None
    assigned: list[str] = field(default_factory=list)
    errors: int = 0


class Materializer:
    """Reads the dashboard's topics into a :class:`Store` on a daemon thread.

    ``start()`` / ``stop()``; also a context manager.
    """

    def __init__(self, store: Store, kafka: KafkaSettings, topics: Topics, *, group_id: str = "forewarn-dashboard",
                 sample_every: int = 5, poll_batch: int = 5000, lag_every_s: float = 10.0,
                 prune_every_s: float = 30.0) -> None:
        self.store = store
        self.kafka = kafka
        self.topics = topics
        self.group_id = group_id
        self.poll_batch = poll_batch
        self.lag_every_s = lag_every_s
        self.prune_every_s = prune_every_s
        self.ingest = Ingest(topics, sample_every=sample_every)
        self.status = ConsumerStatus()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._assigned: set[tuple[str, int]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Materializer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="forewarn-dashboard-consumer", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> Materializer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        consumer = KafkaConsumer(self.kafka, self.group_id, (), **{"client.id": f"{self.kafka.client_id}-dashboard"})
        admin = KafkaAdmin(self.kafka)
        next_topics = next_lag = 0.0
        next_prune = time.monotonic() + self.prune_every_s
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_topics:
                    self._assign_new(consumer)
                    next_topics = now + (_TOPIC_RETRY_S if len(self._assigned) == 0 else 30.0)
                if not self._assigned:
                    self._stop.wait(0.5)
                    continue
                self._poll_once(consumer)
                if now >= next_lag:
                    self._sample_lag(admin, consumer)
                    next_lag = now + self.lag_every_s
                if now >= next_prune:
                    self.store.prune()
                    next_prune = now + self.prune_every_s
        except Exception as error:  # the thread must report, not vanish
            self.status.state, self.status.detail = "failed", str(error)
            log.exception("dashboard consumer stopped")
        finally:
            try:
                consumer.close()
            except (KafkaError, confluent_kafka.KafkaException, RuntimeError) as error:
                log.warning("closing the dashboard consumer: %s", error)
            if self.status.state != "failed":
                self.status.state = "stopped"

    def _poll_once(self, consumer: KafkaConsumer) -> None:
        try:
            messages = consumer.consume(self.poll_batch, 0.5)
        except KafkaError as error:
            self.status.errors += 1
            self.status.detail = str(error)
            log.warning("dashboard consumer: %s", error)
            self._stop.wait(1.0)
            return
        if not messages:
            return
        batch = self.ingest.batch(messages, _now_ms())
        if self.store.closed:
            self._stop.set()
            return
        self.store.write(batch)
        self.status.records += len(messages)
        self.status.batches += 1
        self.status.last_batch_ms = _now_ms()
        self.status.state, self.status.detail = "running", ""
        try:
            consumer.client.commit(offsets=[confluent_kafka.TopicPartition(t, p, o)
                                            for (t, p), o in batch.offsets.items()], asynchronous=True)
        except confluent_kafka.KafkaException as error:  # only for lag display; the store holds the truth
            log.debug("commit for lag display failed: %s", error)

    def _assign_new(self, consumer: KafkaConsumer) -> None:
        """Assign partitions of our topics not assigned yet (topics may appear later)."""
        wanted = [getattr(self.topics, role) for role in ROLES]
        try:
            metadata = consumer.client.list_topics(timeout=5.0)
        except confluent_kafka.KafkaException as error:
            self.status.state, self.status.detail = "waiting", f"Kafka at {self.kafka.bootstrap_servers}: {error}"
            return
        stored = self.store.offsets()
        new: list[confluent_kafka.TopicPartition] = []
        missing: list[str] = []
        for name in wanted:
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                missing.append(name)
                continue
            for partition in topic.partitions:
                if (name, partition) in self._assigned:
                    continue
                offset = stored.get((name, partition), confluent_kafka.OFFSET_BEGINNING)
                new.append(confluent_kafka.TopicPartition(name, partition, offset))
        if new:
            consumer.client.incremental_assign(new)
            self._assigned.update((tp.topic, tp.partition) for tp in new)
            self.status.assigned = sorted({t for t, _ in self._assigned})
            log.info("dashboard consumer assigned %s partitions", len(new))
        if missing and not self._assigned:
            self.status.state = "waiting"
            self.status.detail = "waiting for topics: " + ", ".join(missing)
        elif self.status.state in ("starting", "waiting"):
            self.status.state, self.status.detail = "running", ""

    # -- consumer-group lag ----------------------------------------------------------------

    def _sample_lag(self, admin: KafkaAdmin, consumer: KafkaConsumer) -> None:
        try:
            rows = self._lag_rows(admin)
        except (confluent_kafka.KafkaException, KafkaError) as error:
            log.debug("lag sample failed: %s", error)
            return
        self.store.replace_lag(rows)

    def _lag_rows(self, admin: KafkaAdmin) -> list[tuple[str, str, str, int, int | None, int, int | None, int]]:
        client = admin.client
        roles = {getattr(self.topics, role): role for role in ROLES}
        groups = client.list_consumer_groups(request_timeout=5).result()
        committed: dict[str, dict[tuple[str, int], int]] = {}
        for listing in groups.valid:
            request = [confluent_kafka.ConsumerGroupTopicPartitions(listing.group_id)]
            futures = client.list_consumer_group_offsets(request, request_timeout=5)
            for future in futures.values():
                result = future.result()
                offsets = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or []
                           if tp.topic in roles}
                if offsets:
                    committed[listing.group_id] = offsets
        partitions = {tp for offsets in committed.values() for tp in offsets}
        if not partitions:
            return []
        specs: dict[Any, Any] = {confluent_kafka.TopicPartition(t, p): kadmin.OffsetSpec.latest()
                                 for t, p in partitions}
        ends: dict[tuple[str, int], int] = {}
        futures = client.list_offsets(specs, isolation_level=confluent_kafka.IsolationLevel.READ_COMMITTED,
                                      request_timeout=5)
        for tp, future in futures.items():
            ends[(tp.topic, tp.partition)] = future.result().offset
        now = _now_ms()
        rows: list[tuple[str, str, str, int, int | None, int, int | None, int]] = []
        for group, offsets in sorted(committed.items()):
            for (topic, partition), offset in sorted(offsets.items()):
                end = ends.get((topic, partition), 0)
                done = offset if offset >= 0 else None
                rows.append((group, topic, roles[topic], partition, done, end,
                             None if done is None else max(0, end - done), now))
        return rows
