"""The notifier: alerts in, notifications out, at least once per channel and change.

One round of :meth:`Notifier.step`:

1. consume alert events (``read_committed``: only what the scoring workers committed) and apply
   them to the :class:`~notify.book.Book`;
2. escalate and remind what is due (``escalated`` events go to the alerts topic, so every
   dashboard and notifier agrees on the level);
3. send what is due per channel (one message each, or one digest); a channel that fails is
   retried with backoff, the others go on;
4. write every changed alert record to the compacted ``notify.state`` topic (on the alert's own
   partition number) and wait until Kafka confirmed them;
5. only then commit the consumed offsets.

The guarantee: a notice is an obligation from the moment its alert record, with the notice
owed, is confirmed on ``notify.state`` — and the alert event that caused it is committed only
after that. A notifier that dies anywhere reads its records back on restart (or another member
of the group does, on assignment) and consumes again from the last commit: events applied twice
change nothing, what was owed is still owed, and what was delivered is remembered by its
idempotency key. What can happen twice is a message whose delivery succeeded while the record
saying so was not yet written; it carries the same idempotency key both times. Nothing is
dropped silently: a notice is delivered, or — refused for good by its receiver, or after
``max_attempts`` — written to ``notify.dlq`` with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from forewarn.contract import Alert, NotifyPreference, encode
from forewarn.errors import KafkaError
from forewarn.kafka import OFFSET_BEGINNING, KafkaConsumer, KafkaProducer, TopicPartition, read_to_end
from forewarn.ports import ConsumerLike, ProducerLike
from forewarn.service import LoopService
from forewarn.topics import Topics
from notify.book import PERSONAL, Book, Notice, Tracked, decode_tracked
from notify.channels import EmailSender, Sender, build_senders
from notify.errors import DeliveryFailed, NotifyError
from notify.messages import Outgoing, render
from notify.metrics import NotifyMetrics
from notify.settings import EmailChannel, NotifySettings

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

ConsumerFactory = Callable[..., ConsumerLike]
ProducerFactory = Callable[..., ProducerLike]


class Notifier(LoopService):
    """``forewarn notify`` as a :class:`~forewarn.service.LoopService`. ``senders`` replaces
    the channels built from the settings, ``clock`` the wall clock (seconds), and the factories
    the Kafka clients (unit tests pass :mod:`forewarn.testing` fakes)."""

    def __init__(self, settings: NotifySettings, *, senders: Mapping[str, Sender] | None = None,
                 clock: Callable[[], float] = time.time, consumer_factory: ConsumerFactory | None = None,
                 producer_factory: ProducerFactory | None = None, metrics: NotifyMetrics | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.options = settings.notify
        if not self.options.rules:
            raise NotifyError("no notification rules: nothing would ever be sent",
                              hint="add [notify.channels.<name>] and [[notify.rules]] to forewarn.toml")
        self.topics = Topics.from_settings(settings.topics)
        self.senders = dict(senders) if senders is not None else build_senders(self.options.channels)
        self.clock = clock
        o = self.options
        self.book = Book(o.rules, timezone=o.timezone, hold_s=o.hold_s, max_attempts=o.max_attempts,
                         forget_after_s=o.forget_after_s, personal=o.personal_channel is not None)
        self.metrics = metrics or NotifyMetrics()
        self._consumer_factory: ConsumerFactory = consumer_factory or (
            lambda group, topics, **kw: KafkaConsumer(settings.kafka, group, topics, **kw))
        self._producer_factory: ProducerFactory = producer_factory or (
            lambda **kw: KafkaProducer(settings.kafka, **kw))
        self._consumer: ConsumerLike | None = None
        self._preferences: ConsumerLike | None = None  # reads notify.preferences, all of it, no group
        self._producer: ProducerLike | None = None
        self._next: dict[int, int] = {}  # partition -> next offset to commit
        self._waiting: dict[str, int] = {}  # channel -> not before (epoch ms)
        self._failures: dict[str, int] = {}  # channel -> failed attempts in a row
        self._kafka_failures = 0
        self.assigned: set[int] = set()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._consumer is not None:
            return
        self._producer = self._producer_factory()
        reset = "earliest" if self.options.from_start else "latest"
        overrides: dict[str, object] = {"auto.offset.reset": reset, "heartbeat.interval.ms": 1_000,
                                        "session.timeout.ms": self.options.session_timeout_ms}
        if self.options.instance_id:
            overrides["group.instance.id"] = self.options.instance_id
        consumer = self._consumer_factory(self.options.group_id, (), **overrides)
        needed = [self.topics.alerts, self.topics.notify_state, self.topics.notify_dlq, self.topics.notify_preferences]
        found = consumer.topic_partitions(needed)
        missing = sorted(set(needed) - set(found))
        if missing:
            consumer.close()
            raise NotifyError(f"topic(s) {', '.join(missing)} do not exist",
                              hint="create them with `forewarn topics create` (or check the topic prefix)")
        self._preferences = self._consumer_factory(f"{self.options.group_id}.preferences", ())
        self._read_preferences(read_to_end(self._preferences, [
            TopicPartition(self.topics.notify_preferences, p, OFFSET_BEGINNING)
            for p in found[self.topics.notify_preferences]]))
        consumer.subscribe([self.topics.alerts], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._consumer = consumer
        if self.options.metrics_port is not None:
            self.metrics.serve(self.options.metrics_port, self.options.metrics_host)
        log.info("notifier in group %s: %s rule(s), channels %s", self.options.group_id, len(self.options.rules),
                 ", ".join(sorted(self.senders)))

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            self._persist_and_commit(consumer)
        except KafkaError as error:
            log.warning("closing with records not written (%s): they are redone after the restart",
                        error.one_line())
        finally:
            consumer.close()
            if self._preferences is not None:
                self._preferences.close()
                self._preferences = None
            if self._producer is not None:
                self._producer.close()
                self._producer = None
            self.metrics.close()

    # -- partitions ----------------------------------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        numbers = sorted(tp.partition for tp in partitions)
        delay = 0.2
        while True:
            try:
                loaded = self._restore(numbers)
                break
            except KafkaError as error:
                if self.stopping:
                    raise
                log.warning("cannot read back the notifier's records of partitions %s (%s); trying again",
                            numbers, error.one_line())
                time.sleep(delay)
                delay = min(delay * 2, self.options.retry_max_s)
        self.assigned.update(numbers)
        log.info("assigned partitions %s; %s alert record(s) read back", numbers, loaded)

    def _restore(self, partitions: list[int]) -> int:
        """Read ``notify.state`` of ``partitions`` to its end into the book (the last record of an
        alert wins; an empty one deletes it)."""
        if not partitions:
            return 0
        reader = self._consumer_factory(f"{self.options.group_id}.restore", ())
        found: dict[str, Tracked | None] = {}
        try:
            for message in read_to_end(reader, [TopicPartition(self.topics.notify_state, p, OFFSET_BEGINNING)
                                                for p in partitions], idle_timeout_s=60.0):
                key = (message.key() or b"").decode("utf-8", "replace")
                value = message.value()
                if not value:
                    found[key] = None
                    continue
                try:
                    found[key] = decode_tracked(value)
                except msgspec.DecodeError as error:
                    log.error("a notify.state record for %s cannot be read (%s); skipped", key, error)
        finally:
            reader.close()
        kept = [t for t in found.values() if t is not None]
        for tracked in kept:
            self.book.load(tracked)
        return len(kept)

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        if self._consumer is not None:
            try:
                self._persist_and_commit(self._consumer, numbers)
            except KafkaError as error:
                log.warning("partitions %s revoked before their records were written (%s): the next owner "
                            "redoes what was not committed", sorted(numbers), error.one_line())
        self.book.drop_partitions(numbers)
        self.assigned -= numbers
        for p in numbers:
            self._next.pop(p, None)
        log.info("revoked partitions %s", sorted(numbers))

    # -- one round --------------------------------------------------------------------------

    def step(self) -> int:
        assert self._consumer is not None, "start() first"
        try:
            done = self._round(self._consumer)
        except KafkaError as error:
            self._kafka_failures += 1
            pause = min(self.options.retry_max_s, 0.1 * 2 ** min(self._kafka_failures, 10))
            log.warning("kafka: %s; going on in %.1fs", error.one_line(), pause)
            if error.fatal and self._producer is not None:
                self._producer.rebuild()
            self._stop.wait(pause)
            return 0
        self._kafka_failures = 0
        return done

    def _read_preferences(self, messages: Iterable[Any]) -> None:
        """Users' preferences (the last record of a user wins; an empty one deletes them)."""
        for message in messages:
            user = (message.key() or b"").decode("utf-8", "replace")
            try:
                if message.value():
                    preference = msgspec.json.decode(message.value(), type=NotifyPreference)
                    self.book.preferences[preference.user] = preference
                else:
                    self.book.preferences.pop(user, None)
            except msgspec.DecodeError as error:
                log.warning("notify.preferences record of %s skipped (%s)", user, error)

    def _round(self, consumer: ConsumerLike) -> int:
        if self._preferences is not None:
            self._read_preferences(self._preferences.consume(200, 0))
        messages = consumer.consume(500, self.options.poll_s)
        now = self.now_ms()
        states = self.metrics.events_by_state
        for message in messages:
            partition, offset = message.partition() or 0, message.offset()
            try:
                event = msgspec.json.decode(message.value() or b"", type=Alert)
            except msgspec.DecodeError as error:
                self.metrics.rejected.inc()
                log.warning("alerts[%s]@%s is not an alert event (%s); skipped", partition, offset, error)
            else:
                states[event.state] += 1
                self.book.apply(event, partition, now)
            if offset is not None:
                self._next[partition] = offset + 1
        assert self._producer is not None
        escalations = self.book.tick(now)
        for event in escalations:
            self._producer.produce(self.topics.alerts, encode(event), key=event.machine_id)
            self.metrics.escalations.inc()
            log.info("%s escalated to level %s", event.alert_id, event.escalation)
        sent = self._deliver(now)
        self._persist_and_commit(consumer)
        self.metrics.owed.set(sum(len(t.owed) for t in self.book.alerts.values()))
        self.metrics.tracked.set(len(self.book.alerts))
        self.metrics.flush()
        return len(messages) + len(escalations) + sent

    def _persist_and_commit(self, consumer: ConsumerLike, only: set[int] | None = None) -> None:
        """Write the changed records and wait for Kafka to confirm them (and whatever else was
        produced), then commit the consumed offsets (of ``only`` those partitions)."""
        assert self._producer is not None
        changes = self.book.changes()
        for alert_id, partition, value in changes:
            self._producer.produce(self.topics.notify_state, value, key=alert_id, partition=partition)
        left = self._producer.flush(30.0)
        if left:
            raise KafkaError(f"Kafka did not confirm {left} notifier record(s) within 30 s", code="_TIMED_OUT",
                             retriable=True, hint="is Kafka reachable?")
        self.book.written(changes)
        offsets = [TopicPartition(self.topics.alerts, p, o) for p, o in sorted(self._next.items())
                   if only is None or p in only]
        if offsets:
            consumer.commit(offsets=offsets)
            for tp in offsets:
                if self._next.get(tp.partition) == tp.offset:
                    del self._next[tp.partition]

    # -- delivery -------------------------------------------------------------------------------

    def _deliver(self, now: int) -> int:
        """Send what is due to every channel not in backoff; returns the messages delivered."""
        o = self.options
        delivered = 0
        for due in self.book.due(now, self._waiting):
            sender = self._sender(due.channel)
            if sender is None:  # a channel removed from the settings, a user without an address now
                self._dead_letter(self.book.failed(due.items, f"channel {due.channel} is not configured",
                                                   retriable=False), due.channel)
                continue
            by_key = {n.key: (t, n) for t, n in due.items}
            for message in render(due.channel, due.items, digest_min=o.digest_min, digest_lines=o.digest_lines,
                                  dashboard_url=o.dashboard_url):
                items = [by_key[e["key"]] for e in message.document["notifications"]]
                if not self._send(sender, message, items, now):
                    break
                delivered += 1
        return delivered

    def _sender(self, channel: str) -> Sender | None:
        """The sender of a configured channel, or for ``@<user>`` the personal channel's server
        writing to that user's own address."""
        found = self.senders.get(channel)
        if found is not None or not channel.startswith(PERSONAL):
            return found
        template = self.options.channels.get(self.options.personal_channel or "")
        wants = self.book.preferences.get(channel[len(PERSONAL):])
        if not isinstance(template, EmailChannel) or wants is None or wants.email is None:
            return None
        return EmailSender(channel, template.model_copy(update={"to": [wants.email]}))

    def _send(self, sender: Sender, message: Outgoing, items: list[tuple[Tracked, Notice]], now: int) -> bool:
        channel = message.channel
        try:
            sender.send(message)
        except DeliveryFailed as error:
            self._failed(channel, items, str(error), error.retriable, now)
            return False
        except Exception as error:  # noqa: BLE001 - a channel's own bug must not stop the others or the loop
            self._failed(channel, items, f"{type(error).__name__}: {error}", True, now)
            return False
        self.book.delivered(items, now)
        self._failures.pop(channel, None)
        self._waiting.pop(channel, None)
        self.metrics.deliveries.labels(channel, "delivered").inc()
        if message.digest:
            self.metrics.digests.labels(channel).inc()
        for _, notice in items:
            self.metrics.notices_by_kind[notice.kind] += 1
        log.info("%s: sent %s (%s notice(s))", channel, message.key, message.count)
        return True

    def _failed(self, channel: str, items: list[tuple[Tracked, Notice]], reason: str, retriable: bool,
                now: int) -> None:
        o = self.options
        failures = self._failures[channel] = self._failures.get(channel, 0) + 1
        pause = min(o.retry_max_s, o.retry_min_s * 2 ** min(failures - 1, 20))
        self._waiting[channel] = now + int(pause * 1000)
        self.metrics.deliveries.labels(channel, "failed").inc()
        level = logging.WARNING if failures <= 3 else logging.ERROR
        log.log(level, "%s: %s notice(s) not delivered (%s); attempt %s, next in %.1fs", channel, len(items), reason,
                failures, pause)
        self._dead_letter(self.book.failed(items, reason, retriable=retriable), channel)

    def _dead_letter(self, given_up: list[tuple[Tracked, Notice]], channel: str) -> None:
        assert self._producer is not None
        for t, notice in given_up:
            record: dict[str, Any] = {"v": 1, "channel": channel, "key": notice.key, "kind": notice.kind,
                                      "level": notice.level, "attempts": notice.attempts, "reason": notice.error,
                                      "alert": msgspec.to_builtins(t.alert)}
            self._producer.produce(self.topics.notify_dlq, msgspec.json.encode(record), key=notice.key,
                                   headers=[("reason", (notice.error or "")[:300]), ("channel", channel)])
            self.metrics.deliveries.labels(channel, "dead_lettered").inc()
            log.error("%s: gave up %s after %s attempt(s) (%s); written to %s", channel, notice.key, notice.attempts,
                      notice.error, self.topics.notify_dlq)
