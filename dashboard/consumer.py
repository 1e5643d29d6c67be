"""The background consumer: one per server process, it materialises Kafka into the store.

It assigns itself every partition of the dashboard's topics (no group rebalancing: every
dashboard process wants everything), starting from the offsets the store holds, reading
``read_committed`` so only committed output of the transactional scoring workers shows.
Offsets are also committed to Kafka under the dashboard's group id, only so that its lag is
visible like any other consumer's; the store's own offsets are what it resumes from.

It also samples the lag of every consumer group reading the dashboard's topics, and enforces
the store's retention.

:class:`Materializer` is a :class:`~forewarn.service.LoopService` (``start`` / ``step`` /
``close``), so tests drive it step by step on the in-memory fakes; :class:`ServiceThread` runs
it on a daemon thread, which is how a dashboard server process uses it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import duckdb

from dashboard.ingest import ROLES, Ingest
from dashboard.store import Batch, Store
from forewarn.errors import KafkaError
from forewarn.kafka import OFFSET_BEGINNING, GroupLag, KafkaAdmin, KafkaConsumer, TopicPartition
from forewarn.ports import ConsumerLike, MessageLike
from forewarn.service import LoopService, ServiceThread
from forewarn.settings import KafkaSettings
from forewarn.topics import Topics

__all__ = ["ConsumerFactory", "ConsumerStatus", "LagSource", "Materializer", "ServiceThread"]

log = logging.getLogger(__name__)

_TOPIC_RETRY_S = 5.0  # while none of the topics exists (or sooner, with a shorter topics_every_s)
_NO_TOPICS_WAIT_S = 0.5
_ERROR_WAIT_S = 1.0
_POLL_TIMEOUT_S = 0.5
_ADMIN_TIMEOUT_S = 5.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ConsumerFactory(Protocol):
    """Builds the consumer like ``KafkaConsumer(settings, group_id, topics, **overrides)`` with the
    settings bound (``functools.partial(KafkaConsumer, settings)`` or ``InMemoryKafka.consumer``)."""

    def __call__(self, group_id: str, topics: Iterable[str] = (), **overrides: Any) -> ConsumerLike: ...


class LagSource(Protocol):
    """Consumer-group lag, as :meth:`forewarn.kafka.KafkaAdmin.group_lag` reports it."""

    def group_lag(self, topics: Iterable[str] | None = None, timeout_s: float = 5.0) -> list[GroupLag]: ...


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
    skipped: dict[str, int] = field(default_factory=dict)  # records skipped by role: undecodable or unstorable


class Materializer(LoopService):
    """Reads the dashboard's topics into a :class:`Store`, one batch per :meth:`step`.

    ``start()`` builds the clients (no network until the first step); ``step()`` looks for new
    topics and partitions every ``topics_every_s`` (every few seconds while there are none),
    reads one batch, writes it to the store with its offsets, samples group lag every
    ``lag_every_s`` and prunes the store every ``prune_every_s``; ``close()`` releases the
    consumer. A Kafka error while reading is counted in :attr:`status` and retried; any other
    failure sets the status to ``failed`` and stops the loop (the thread reports, never
    vanishes). A closed store stops it too.

    ``consumer_factory`` and ``lag_source`` default to the real clients built from ``kafka``;
    unit tests pass ``InMemoryKafka.consumer`` and a lag source of their own.
    """

    def __init__(self, store: Store, kafka: KafkaSettings, topics: Topics, *, group_id: str = "forewarn-dashboard",
                 sample_every: int = 5, poll_batch: int = 5000, lag_every_s: float = 10.0,
                 prune_every_s: float = 30.0, topics_every_s: float = 30.0,
                 consumer_factory: ConsumerFactory | None = None, lag_source: LagSource | None = None) -> None:
        super().__init__()
        self.store = store
        self.kafka = kafka
        self.topics = topics
        self.group_id = group_id
        self.poll_batch = poll_batch
        self.lag_every_s = lag_every_s
        self.prune_every_s = prune_every_s
        self.topics_every_s = topics_every_s
        self.ingest = Ingest(topics, sample_every=sample_every, max_future_ms=store.retention.max_future_ms)
        self.status = ConsumerStatus(skipped=self.ingest.bad)
        self._consumer_factory: ConsumerFactory = consumer_factory or functools.partial(KafkaConsumer, kafka)
        self._lag_source = lag_source
        self._roles = {getattr(topics, role): role for role in ROLES}
        self._consumer: ConsumerLike | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._next_topics = self._next_lag = self._next_prune = 0.0
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Build the consumer and the lag source (idempotent; no network yet)."""
        if self._consumer is not None or self._closed:
            return
        self._consumer = self._consumer_factory(self.group_id, (),
                                                **{"client.id": f"{self.kafka.client_id}-dashboard"})
        if self._lag_source is None:
            self._lag_source = KafkaAdmin(self.kafka)
        self._next_topics = self._next_lag = 0.0
        self._next_prune = time.monotonic() + self.prune_every_s

    def step(self) -> int:
        """One round; returns how many records were read (0 when there were none)."""
        self.start()
        consumer = self._consumer
        if consumer is None:  # closed
            return 0
        try:
            return self._round(consumer)
        except Exception as error:  # the loop must report, not vanish
            self.status.state, self.status.detail = "failed", str(error)
            log.exception("dashboard consumer stopped")
            self.stop()
            return 0

    def close(self) -> None:
        """Release the consumer; the status says ``stopped`` (unless it ``failed``). A closed
        materializer stays stopped: it does not start again."""
        consumer, self._consumer = self._consumer, None
        self._closed = True
        self.stop()
        if consumer is not None:
            consumer.close()  # the adapter logs a Kafka error while leaving, never raises it
        if self.status.state != "failed":
            self.status.state = "stopped"

    # -- one round -------------------------------------------------------------------------

    def _round(self, consumer: ConsumerLike) -> int:
        now = time.monotonic()
        if now >= self._next_topics:
            self._assign_new(consumer)
            self._next_topics = now + (min(_TOPIC_RETRY_S, self.topics_every_s) if not self._assigned
                                       else self.topics_every_s)
        if not self._assigned:
            self._stop.wait(_NO_TOPICS_WAIT_S)
            return 0
        read = self._poll_once(consumer)
        if now >= self._next_lag:
            self._sample_lag()
            self._next_lag = now + self.lag_every_s
        if now >= self._next_prune:
            self.store.prune()
            self._next_prune = now + self.prune_every_s
        return read

    def _poll_once(self, consumer: ConsumerLike) -> int:
        try:
            messages = consumer.consume(self.poll_batch, _POLL_TIMEOUT_S)
        except KafkaError as error:
            self.status.errors += 1
            self.status.detail = str(error)
            log.warning("dashboard consumer: %s", error)
            self._stop.wait(_ERROR_WAIT_S)
            return 0
        if not messages:
            return 0
        batch = self.ingest.batch(messages, _now_ms())
        if self.store.closed:
            self.stop()
            return 0
        try:
            self.store.write(batch)
        except duckdb.IOException:
            raise  # the disk, not a record: nothing can be stored
        except duckdb.Error as error:
            log.warning("a batch of %s records did not fit the store (%s): writing them one by one",
                        len(messages), error)
            self._write_one_by_one(messages)
        self.status.records += len(messages)
        self.status.batches += 1
        self.status.last_batch_ms = _now_ms()
        self.status.state, self.status.detail = "running", ""
        try:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()],
                            asynchronous=True)
        except KafkaError as error:  # only for lag display; the store holds the truth
            log.debug("commit for lag display failed: %s", error)
        return len(messages)

    def _write_one_by_one(self, messages: Sequence[MessageLike]) -> None:
        """Write each record of a batch the store refused on its own; one the store still
        refuses is skipped (counted, logged) and only its offset is kept, so reading goes on."""
        for message in messages:
            batch = self.ingest.batch([message], _now_ms())
            try:
                self.store.write(batch)
            except duckdb.IOException:
                raise
            except duckdb.Error as error:
                role = self.ingest.role(message.topic() or "") or "unknown"
                self.ingest.bad[role] = self.ingest.bad.get(role, 0) + 1
                log.warning("skipped a %s record at %s/%s the store refused: %s", role, message.partition(),
                            message.offset(), error)
                self.store.write(Batch(offsets=batch.offsets))

    def _assign_new(self, consumer: ConsumerLike) -> None:
        """Assign partitions of our topics not assigned yet (topics may appear later)."""
        try:
            existing = consumer.topic_partitions(list(self._roles), timeout_s=_ADMIN_TIMEOUT_S)
        except KafkaError as error:
            self.status.state, self.status.detail = "waiting", str(error)
            return
        stored = self.store.offsets()
        new = [TopicPartition(name, partition, stored.get((name, partition), OFFSET_BEGINNING))
               for name, partitions in existing.items() for partition in partitions
               if (name, partition) not in self._assigned]
        missing = [name for name in self._roles if name not in existing]
        if new:
            consumer.incremental_assign(new)
            self._assigned.update((tp.topic, tp.partition) for tp in new)
            self.status.assigned = sorted({t for t, _ in self._assigned})
            log.info("dashboard consumer assigned %s partitions", len(new))
        if missing and not self._assigned:
            self.status.state = "waiting"
            self.status.detail = "waiting for topics: " + ", ".join(missing)
        elif self.status.state in ("starting", "waiting"):
            self.status.state, self.status.detail = "running", ""

    # -- consumer-group lag ----------------------------------------------------------------

    def _sample_lag(self) -> None:
        if self._lag_source is None:
            return
        try:
            lags = self._lag_source.group_lag(list(self._roles), timeout_s=_ADMIN_TIMEOUT_S)
        except KafkaError as error:
            log.debug("lag sample failed: %s", error)
            return
        now = _now_ms()
        self.store.replace_lag([(g.group, g.topic, self._roles[g.topic], g.partition, g.committed, g.end, g.lag, now)
                                for g in lags if g.topic in self._roles])


