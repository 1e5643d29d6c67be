"""The scoring worker on the in-memory Kafka fakes: transactions, offsets, duplicates, dead
letters, rebalance and restore, and an aborted transaction done again."""

from __future__ import annotations

from typing import Any

import pytest

from forewarn.bundle import Bundle, pack
from forewarn.contract import Telemetry, encode
from forewarn.deadletter import INGEST_HEADER, DeadLetter, Kind, Origin
from forewarn.settings import TopicSettings
from forewarn.testing import FakeProducer, InMemoryKafka
from forewarn.topics import Topics, telemetry_topic
from scoring.engine import Incoming, ScoringEngine
from scoring.registry import ModelRegistry
from scoring.settings import ScoringOptions, ScoringSettings
from scoring.worker import ScoringWorker
from tests.scoring.bundle_factory import TEST_TRUST, trust_settings
from tests.scoring.fleet_data import FleetData, fitted_bundle, simulate
from tests.scoring.procs import PredictionKey, prediction_keys

GROUP = "scoring"
SETTINGS = TopicSettings(prefix="unit.", partitions=3)
TOPICS = Topics.from_settings(SETTINGS)


@pytest.fixture(scope="module")
def data() -> FleetData:
    return simulate(machines=6, ticks=40, seed=7)


@pytest.fixture(scope="module")
def bundle(data: FleetData) -> Bundle:
    return fitted_bundle(data, window=6)


def cluster(bundle: Bundle) -> InMemoryKafka:
    """Topics as `forewarn topics create` makes them, the model published."""
    kafka = InMemoryKafka(partitions=3)
    for name in (TOPICS.telemetry, TOPICS.maintenance, TOPICS.predictions, TOPICS.alerts, TOPICS.scoring_state,
                 TOPICS.dlq):
        kafka.create_topic(name, 3)
    kafka.create_topic(TOPICS.models, 1)
    kafka.producer().produce(TOPICS.models, pack(bundle), "pump")
    return kafka


def worker(kafka: InMemoryKafka, worker_id: str = "w1", **options: Any) -> ScoringWorker:
    settings = ScoringSettings(topics=SETTINGS, trust=trust_settings(),
                               scoring=ScoringOptions(
        group_id=GROUP, worker_id=worker_id, threads=1, **{"max_batch": 60, **options}))
    return ScoringWorker(settings, producer_factory=kafka.producer, consumer_factory=kafka.consumer)


def feed(kafka: InMemoryKafka, readings: list[Telemetry]) -> None:
    producer = kafka.producer()
    for r in readings:
        producer.produce(TOPICS.telemetry, encode(r), r.machine_id, headers=[(INGEST_HEADER, b"%d" % r.ts)])


def drain(*workers: ScoringWorker) -> None:
    """Step every worker until none consumes anything."""
    while sum(w.step() for w in workers):
        pass


def committed_predictions(kafka: InMemoryKafka) -> list[PredictionKey]:
    return prediction_keys([m.value() or b"" for m in kafka.messages(TOPICS.predictions)])


def offline(data: FleetData, bundle: Bundle) -> list[PredictionKey]:
    """What an uninterrupted worker must commit, computed without Kafka."""
    registry = ModelRegistry(threads=1, trust=TEST_TRUST)
    registry.offer_bundle(bundle)
    result = ScoringEngine(registry, ScoringOptions()).process([Incoming(r, 0) for r in data.readings], [])
    return prediction_keys([v for _, v in result.predictions])


def counted(w: ScoringWorker, outcome: str) -> int:
    return int(w.metrics.registry.get_sample_value("forewarn_scoring_readings_total", {"outcome": outcome}) or 0)


def test_a_batch_commits_its_predictions_state_and_offsets_in_one_transaction(data: FleetData,
                                                                             bundle: Bundle) -> None:
    kafka = cluster(bundle)
    feed(kafka, data.readings)
    w = worker(kafka, max_batch=len(data.readings))
    w.start()
    assert w.step() == len(data.readings)
    written = [m for name in (TOPICS.predictions, TOPICS.scoring_state) for part in kafka.topic(name) for m in part
               if not m._control]
    transactions = {id(m._txn) for m in written}
    assert len(transactions) == 1 and written[0]._txn is not None and written[0]._txn.state == "committed"
    assert committed_predictions(kafka) == offline(data, bundle)
    ends = {(TOPICS.telemetry, p): len(part) for p, part in enumerate(kafka.topic(TOPICS.telemetry)) if part}
    assert kafka.committed(GROUP) == ends
    assert counted(w, "accepted") == len(data.readings)
    w.close()


def test_the_whole_stream_in_small_batches_gives_the_reference(data: FleetData, bundle: Bundle) -> None:
    kafka = cluster(bundle)
    feed(kafka, data.readings)
    w = worker(kafka, max_batch=25)
    w.run(idle_exit_s=0.0)  # a LoopService: runs until idle, then closes
    assert w.batches >= len(data.readings) // 25
    assert committed_predictions(kafka) == offline(data, bundle)


def test_duplicates_are_dropped(data: FleetData, bundle: Bundle) -> None:
    kafka = cluster(bundle)
    half = len(data.readings) // 2
    feed(kafka, data.readings[:half])
    feed(kafka, data.readings)  # the first half again: a bridge that re-sent after a lost ack
    w = worker(kafka)
    w.start()
    drain(w)
    assert committed_predictions(kafka) == offline(data, bundle)
    assert counted(w, "dropped") == half
    w.close()


def test_rejected_records_become_dead_letters_that_name_their_mqtt_topic(data: FleetData, bundle: Bundle) -> None:
    kafka = cluster(bundle)
    good = data.readings[0]
    bad = encode(good).replace(b'"seq":%d' % good.seq, b'"seq":-5')
    producer = kafka.producer()
    producer.produce(TOPICS.telemetry, bad, good.machine_id)
    producer.produce(TOPICS.maintenance, b"{not json", good.machine_id)
    feed(kafka, data.readings)
    w = worker(kafka)
    w.start()
    drain(w)
    letters = [DeadLetter.from_message(m) for m in kafka.messages(TOPICS.dlq)]
    by_kind = {letter.kind: letter for letter in letters}
    assert len(letters) == 2 and set(by_kind) == {Kind.TELEMETRY, Kind.MAINTENANCE}
    reading = by_kind[Kind.TELEMETRY]
    assert reading.value == bad and reading.origin is Origin.SCORING and reading.reason == "bad_value"
    assert reading.mqtt_topic == telemetry_topic(good.machine_id) and reading.kafka_topic == TOPICS.telemetry
    assert by_kind[Kind.MAINTENANCE].value == b"{not json"
    assert all(m._txn is not None and m._txn.state == "committed" for part in kafka.topic(TOPICS.dlq)
               for m in part if not m._control)
    assert committed_predictions(kafka) == offline(data, bundle)  # the rest is scored as if they were not there
    assert counted(w, "rejected") == 2  # the outcome counts maintenance records too, as it always did
    w.close()


def test_a_rebalance_restores_state_from_the_changelog_and_predicts_the_same(data: FleetData,
                                                                            bundle: Bundle) -> None:
    kafka = cluster(bundle)
    third = len(data.readings) // 3
    a = worker(kafka, "a")
    a.start()
    feed(kafka, data.readings[:third])
    drain(a)
    b = worker(kafka, "b")  # joins: the group shares the partitions, b restores its own from the changelog
    b.start()
    feed(kafka, data.readings[third:2 * third])
    drain(b, a)
    assert a._owned and b._owned and not a._owned & b._owned
    b.close()  # leaves: a takes every partition back, restoring b's from the changelog
    feed(kafka, data.readings[2 * third:])
    drain(a)
    assert a._owned == {0, 1, 2}
    assert committed_predictions(kafka) == offline(data, bundle)
    a.close()


def test_an_abortable_transaction_error_rewinds_and_does_the_batch_again(data: FleetData, bundle: Bundle) -> None:
    kafka = cluster(bundle)
    producers: list[FakeProducer] = []

    def producer_factory(**overrides: Any) -> FakeProducer:
        producers.append(kafka.producer(**overrides))
        return producers[-1]

    settings = ScoringSettings(topics=SETTINGS, trust=trust_settings(),
                               scoring=ScoringOptions(group_id=GROUP, worker_id="w", threads=1,
                                                                       max_batch=40))
    w = ScoringWorker(settings, producer_factory=producer_factory, consumer_factory=kafka.consumer)
    w.start()
    half = len(data.readings) // 2
    feed(kafka, data.readings[:half])
    drain(w)
    before = kafka.committed(GROUP)
    predictions_before = len(kafka.messages(TOPICS.predictions))
    feed(kafka, data.readings[half:])
    producers[0].fail_next = 1  # the next record's delivery fails: the commit answers "abort"
    assert w.step() > 0
    assert kafka.committed(GROUP) == before
    assert len(kafka.messages(TOPICS.predictions)) == predictions_before
    drain(w)
    assert committed_predictions(kafka) == offline(data, bundle)
    assert counted(w, "accepted") == len(data.readings)  # the aborted batch is counted once
    w.close()
