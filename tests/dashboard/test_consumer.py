"""The dashboard's background consumer on the in-memory Kafka: what it reads into the store,
where it resumes, what it commits, the lag it samples, how it reports trouble, and its thread."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
import duckdb

from dashboard import queries
from dashboard.consumer import Materializer
from dashboard.settings import DashboardSettings
from dashboard.store import Batch, Store
from forewarn.contract import Alert, Prediction, Reason, Rejected, encode
from forewarn.deadletter import DeadLetter, Kind, Origin
from forewarn.errors import KafkaError
from forewarn.kafka import GroupLag, kafka_error
from forewarn.service import ServiceThread
from forewarn.settings import KafkaSettings
from forewarn.testing import FakeConsumer, InMemoryKafka, broker_error
from forewarn.topics import Topics

SETTINGS = DashboardSettings()
TOPICS = Topics.from_settings(SETTINGS.topics)
T0 = 1_764_201_600_000
GROUP = "dash-test"


def prediction(machine: str, seq: int, p_fail: float = 0.1) -> bytes:
    return encode(Prediction(v=1, machine_id=machine, asset_type="pump", ts=T0 + seq * 60_000, seq=seq, model="pump",
                             model_version="v1", scored_at=T0 + seq * 60_000 + 50, p_fail=p_fail, rul=50.0,
                             ingest_ts=T0 + seq * 60_000 + 5))


def produce_predictions(kafka: InMemoryKafka, machines: Iterable[str], seqs: Iterable[int]) -> int:
    producer = kafka.producer()
    n = 0
    for seq in seqs:
        for machine in machines:
            producer.produce(TOPICS.predictions, prediction(machine, seq), key=machine)
            n += 1
    producer.flush()
    return n


@dataclass
class InMemoryLag:
    """Group lag of an :class:`InMemoryKafka`, as ``KafkaAdmin.group_lag`` reports it from a broker:
    every group's committed offsets against the partitions' last stable offsets."""

    kafka: InMemoryKafka
    calls: list[list[str]] = field(default_factory=list)

    def group_lag(self, topics: Iterable[str] | None = None, timeout_s: float = 5.0) -> list[GroupLag]:
        wanted = None if topics is None else set(topics)
        self.calls.append(sorted(wanted or ()))
        return [GroupLag(group_id, topic, partition, offset if offset >= 0 else None,
                         self.kafka.last_stable_offset(topic, partition))
                for group_id, group in sorted(self.kafka.groups.items())
                for (topic, partition), offset in sorted(group.committed.items())
                if wanted is None or topic in wanted]


def materializer(kafka: InMemoryKafka, store: Store, **options: Any) -> Materializer:
    options.setdefault("lag_source", InMemoryLag(kafka))
    options.setdefault("consumer_factory", kafka.consumer)
    return Materializer(store, KafkaSettings(), TOPICS, group_id=GROUP, **options)


def steps_until_idle(m: Materializer, limit: int = 50) -> int:
    """Step until a step reads nothing; returns the records read."""
    total = 0
    for _ in range(limit):
        read = m.step()
        total += read
        if read == 0:
            return total
    raise AssertionError(f"still reading after {limit} steps")


def test_it_reads_every_partition_into_the_store_and_commits_for_lag_display() -> None:
    kafka = InMemoryKafka(partitions=3)
    machines = [f"a/p{i}" for i in range(9)]
    sent = produce_predictions(kafka, machines, range(4))
    store = Store()
    with materializer(kafka, store, poll_batch=10) as m:
        assert steps_until_idle(m) == sent
        assert m.status.state == "running" and m.status.records == sent and m.status.batches >= sent // 10
        assert m.status.assigned == [TOPICS.predictions]
    assert m.status.state == "stopped"
    assert store.counts()["predictions"] == sent and store.counts()["machines"] == len(machines)
    ends = {(TOPICS.predictions, p): len(part) for p, part in enumerate(kafka.topic(TOPICS.predictions)) if part}
    assert store.offsets() == ends
    assert kafka.committed(GROUP) == ends  # its own lag shows like any other group's


def test_it_resumes_from_the_stores_offsets_not_from_kafkas() -> None:
    kafka = InMemoryKafka(partitions=2)
    first = produce_predictions(kafka, ["a/p1", "a/p2", "a/p3"], range(3))
    store = Store()
    with materializer(kafka, store) as m:
        assert steps_until_idle(m) == first
    kafka.groups.pop(GROUP)  # what Kafka holds for the group does not matter
    later = produce_predictions(kafka, ["a/p1", "a/p2", "a/p3"], range(3, 5))
    with materializer(kafka, store) as again:
        assert steps_until_idle(again) == later
    assert store.counts()["predictions"] == first + later


def test_read_committed_only_committed_transactions_show() -> None:
    kafka = InMemoryKafka(partitions=1)
    worker = kafka.producer(**{"transactional.id": "scoring-1"})
    worker.init_transactions()
    worker.begin_transaction()
    worker.produce(TOPICS.predictions, prediction("a/p1", 1), key="a/p1")
    worker.abort_transaction()
    worker.begin_transaction()
    worker.produce(TOPICS.predictions, prediction("a/p1", 2), key="a/p1")
    store = Store()
    with materializer(kafka, store) as m:
        assert steps_until_idle(m) == 0  # aborted, then still open
        worker.commit_transaction()
        assert steps_until_idle(m) == 1
    assert list(store.read("SELECT seq FROM predictions")["seq"]) == [2]


def test_topics_that_appear_later_are_picked_up_and_waiting_says_which() -> None:
    kafka = InMemoryKafka(partitions=1)
    store = Store()
    with materializer(kafka, store, topics_every_s=0.0) as m:
        assert m.step() == 0
        assert m.status.state == "waiting" and TOPICS.predictions in m.status.detail
        produce_predictions(kafka, ["a/p1"], range(2))
        assert steps_until_idle(m) == 2
        assert m.status.state == "running" and m.status.assigned == [TOPICS.predictions]
        kafka.producer().produce(TOPICS.alerts, encode(Alert(
            v=1, alert_id="a/p1:1", machine_id="a/p1", state="open", severity="warning", rule="p_fail_above",
            opened_at=T0, ts=T0, p_fail=0.7, model_version="v1", asset_type="pump")), key="a/p1")
        assert steps_until_idle(m) == 1
        assert m.status.assigned == sorted([TOPICS.predictions, TOPICS.alerts])
    assert list(queries.alert_list(store)["status"]) == ["open"]


def test_lag_of_every_group_on_the_dashboards_topics_is_sampled() -> None:
    kafka = InMemoryKafka(partitions=1)
    produce_predictions(kafka, ["a/p1"], range(5))
    kafka.group("slow-reader").committed[(TOPICS.predictions, 0)] = 2
    kafka.group("other-topics").committed[("elsewhere", 0)] = 1
    lag = InMemoryLag(kafka)
    store = Store()
    with materializer(kafka, store, lag_every_s=0.0, lag_source=lag) as m:
        steps_until_idle(m)
        m.step()  # samples after the commit of the last batch
    assert lag.calls and all(TOPICS.predictions in topics and "elsewhere" not in topics for topics in lag.calls)
    rows = store.read("SELECT group_id, topic, role, committed, end_offset, lag FROM consumer_lag ORDER BY group_id")
    assert rows.values.tolist() == [[GROUP, TOPICS.predictions, "predictions", 5, 5, 0],
                                    ["slow-reader", TOPICS.predictions, "predictions", 2, 5, 3]]


class _FlakyConsumer(FakeConsumer):
    """A fake consumer whose next ``consume`` calls raise the given errors first."""

    failures: list[Exception]

    def consume(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[Any]:
        if self.failures:
            raise self.failures.pop(0)
        return super().consume(max_messages, timeout_s)


def flaky(kafka: InMemoryKafka, failures: list[Exception]) -> Any:
    def factory(group_id: str, topics: Iterable[str] = (), **overrides: Any) -> _FlakyConsumer:
        consumer = _FlakyConsumer(kafka, topics, group_id=group_id)
        consumer.failures = failures
        return consumer

    return factory


def test_a_kafka_error_is_counted_and_reading_goes_on() -> None:
    kafka = InMemoryKafka(partitions=1)
    produce_predictions(kafka, ["a/p1"], range(3))
    error = kafka_error(broker_error(confluent_kafka.KafkaError._TRANSPORT, "broker down", retriable=True), "consume")
    store = Store()
    with materializer(kafka, store, consumer_factory=flaky(kafka, [error])) as m:
        assert m.step() == 0
        assert m.status.errors == 1 and "broker down" in m.status.detail
        assert steps_until_idle(m) == 3
        assert m.status.state == "running" and not m.stopping
    assert store.counts()["predictions"] == 3


def test_any_other_failure_stops_it_and_says_failed() -> None:
    kafka = InMemoryKafka(partitions=1)
    produce_predictions(kafka, ["a/p1"], range(3))
    m = materializer(kafka, Store(), consumer_factory=flaky(kafka, [ValueError("a bug")]))
    m.run()  # returns by itself: the failure stops the loop, and run closes it
    assert m.status.state == "failed" and m.status.detail == "a bug" and m.stopping
    assert m.step() == 0  # closed for good


def test_a_closed_store_stops_it() -> None:
    kafka = InMemoryKafka(partitions=1)
    produce_predictions(kafka, ["a/p1"], range(3))
    store = Store()
    with materializer(kafka, store) as m:
        assert steps_until_idle(m) == 3
        store.close()  # the server process is going away
        produce_predictions(kafka, ["a/p1"], range(3, 5))
        assert m.step() == 0 and m.stopping
    assert m.status.state == "stopped" and m.status.records == 3


def test_on_its_thread_it_fills_the_store_until_stopped() -> None:
    kafka = InMemoryKafka(partitions=2)
    sent = produce_predictions(kafka, [f"a/p{i}" for i in range(5)], range(20))
    store = Store()
    with ServiceThread(materializer(kafka, store), "test-dashboard-consumer") as background:
        assert background.running
        deadline = time.monotonic() + 20
        while background.service.status.records < sent and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not background.running
    assert background.service.status.state == "stopped" and background.service.status.records == sent
    assert store.counts()["predictions"] == sent


def test_dead_letters_of_every_component_are_counted_by_reason() -> None:
    kafka = InMemoryKafka(partitions=1)
    producer = kafka.producer()
    raw = b'{"machine_id": "a/p1", "oops"'
    bridge = DeadLetter.rejected(Rejected(Reason.NOT_JSON, "bad json", raw), mqtt_topic="forewarn/a/p1/telemetry",
                                 kind=Kind.TELEMETRY, received_at=T0, origin=Origin.BRIDGE)
    scoring = DeadLetter.from_kafka(Rejected(Reason.MISSING_FIELD, "missing seq", b"{}"), source_topic=TOPICS.telemetry,
                                    kind=Kind.TELEMETRY, key=b"a/p2", received_at=T0, origin=Origin.SCORING)
    for letter in (bridge, scoring):
        record = letter.record(TOPICS.dlq)
        producer.produce(record.topic, record.value, record.key, headers=record.headers,
                         timestamp_ms=record.timestamp_ms)
    producer.produce(TOPICS.dlq, b"?", headers=None)  # headers lost: still counted
    producer.flush()
    store = Store()
    with materializer(kafka, store) as m:
        assert steps_until_idle(m) == 3
    samples = queries.dlq_samples(store).sort_values("reason")[["reason", "detail", "mqtt_topic", "size"]]
    assert samples.astype(object).where(samples.notna(), None).values.tolist() == [
        [str(Reason.MISSING_FIELD), "missing seq", "forewarn/a/p2/telemetry", 2],  # replayable like a fresh one
        [str(Reason.NOT_JSON), "bad json", "forewarn/a/p1/telemetry", len(raw)],
        ["unknown", "", None, 1],
    ]
    assert sorted(queries.dlq_by_reason(store)["reason"]) == sorted([str(Reason.NOT_JSON), str(Reason.MISSING_FIELD),
                                                                     "unknown"])


def test_unreachable_kafka_shows_as_waiting() -> None:
    kafka = InMemoryKafka(partitions=1)

    class Unreachable(FakeConsumer):
        def topic_partitions(self, topics: Iterable[str] | None = None,
                             timeout_s: float = 10.0) -> dict[str, list[int]]:
            raise KafkaError("Kafka at 127.0.0.1:1 is unreachable: broker down", code="_TRANSPORT", retriable=True)

    def factory(group_id: str, topics: Iterable[str] = (), **overrides: Any) -> FakeConsumer:
        return Unreachable(kafka, topics, group_id=group_id)

    with materializer(kafka, Store(), consumer_factory=factory) as m:
        assert m.step() == 0
        assert m.status.state == "waiting" and "unreachable" in m.status.detail


def test_a_record_the_store_cannot_hold_is_skipped_and_reading_goes_on() -> None:
    kafka = InMemoryKafka(partitions=1)
    producer = kafka.producer()
    huge = (b'{"v":1,"machine_id":"a/p0","asset_type":"pump","ts":1764201600000,"seq":%d,"model":"m",'
            b'"model_version":"v1","scored_at":1764201600050}' % (2**64 + 5))
    producer.produce(TOPICS.predictions, huge, key="a/p0")
    producer.flush()
    sent = produce_predictions(kafka, ["a/p0", "a/p1"], range(3))
    store = Store()
    with materializer(kafka, store) as m:
        assert steps_until_idle(m) == sent + 1
        assert m.status.state == "running" and m.status.skipped == {"predictions": 1}
    assert store.counts()["predictions"] == sent
    assert store.offsets() == {(TOPICS.predictions, 0): sent + 1}


class PickyStore(Store):
    """A store that refuses any batch holding a prediction of ``a/poison``, as DuckDB would a
    value it cannot convert."""

    def write(self, batch: Batch) -> None:
        if any(row[0] == "a/poison" for row in batch.rows.get("predictions", [])):
            raise duckdb.ConversionException("Conversion Error: a value DuckDB cannot hold")
        super().write(batch)


def test_a_batch_the_store_refuses_is_written_record_by_record_and_the_refused_one_skipped() -> None:
    kafka = InMemoryKafka(partitions=1)
    produce_predictions(kafka, ["a/p0"], range(2))
    produce_predictions(kafka, ["a/poison"], range(1))
    produce_predictions(kafka, ["a/p1"], range(2))
    store = PickyStore()
    with materializer(kafka, store) as m:
        assert steps_until_idle(m) == 5
        assert m.status.state == "running" and m.status.skipped == {"predictions": 1}
    assert store.counts()["predictions"] == 4 and store.offsets() == {(TOPICS.predictions, 0): 5}
