"""The scoring worker against a real Kafka broker that is killed (kill -9) in the middle of the
worker's transactions and started again: the worker process keeps running, and every reading
gets exactly one committed prediction (none lost, none doubled), as in an uninterrupted run."""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec
import pytest

from forewarn.bundle import Bundle, pack
from forewarn.contract import PipelineStats, Telemetry, encode
from forewarn.kafka import KafkaAdmin, KafkaProducer
from forewarn.settings import KafkaSettings, TopicSettings
from forewarn.stack import LocalStack
from forewarn.topics import Topics, topic_specs
from tests.integration.test_scoring_worker import offline
from tests.scoring.fleet_data import FleetData, fitted_bundle, simulate
from tests.scoring.procs import (
    Worker,
    count_committed,
    prediction_keys,
    publish_model,
    read_committed,
    wait_for,
)

pytestmark = pytest.mark.integration  # a private Mosquitto and Kafka (own_stack): its Kafka is killed

# Tiny batches, so that the worker is still busy with the first half (in a transaction nearly all
# the time) when the broker dies, and pipeline stats every second, so that they span the outage.
SLOW = ("--max-batch", "3", "--commit-interval-ms", "50", "--stats-interval-s", "1")
# What the worker logs when Kafka fails it (see scoring.worker).
_FAILED = ("committing the transaction", "transaction failed", "transactional producer failed",
           "consuming failed")

_stats = msgspec.json.Decoder(PipelineStats)


@pytest.fixture(scope="module")
def data() -> FleetData:
    return simulate(machines=8, ticks=120, seed=9)


@pytest.fixture(scope="module")
def bundle(data: FleetData) -> Bundle:
    return fitted_bundle(data)


def feed(kafka: KafkaSettings, topics: Topics, readings: list[Telemetry], done: threading.Event) -> None:
    """Produce ``readings`` in small chunks, through the broker's outage: the adapter's
    idempotent producer keeps what it cannot deliver yet, in order, and never gives up."""
    with KafkaProducer(kafka) as producer:
        for start in range(0, len(readings), 8):
            for r in readings[start:start + 8]:
                producer.produce(topics.telemetry, encode(r), r.machine_id, timestamp_ms=r.ts)
            producer.poll(0.1)
        while producer.flush(1.0):
            pass
    done.set()


def test_kafka_killed_mid_transaction_loses_and_doubles_nothing(own_stack: LocalStack, data: FleetData,
                                                                 bundle: Bundle, tmp_path: Path) -> None:
    expected = offline(data, bundle)
    kafka = own_stack.kafka_settings
    settings = TopicSettings(prefix="faults.", partitions=3)
    topics = Topics.from_settings(settings)
    KafkaAdmin(kafka).ensure_topics(topic_specs(settings))
    publish_model(kafka, topics, "pump", pack(bundle))
    worker = Worker(kafka, settings, "faulty", tmp_path, *SLOW).start()
    wait_for(lambda: "assigned partitions" in worker.log(), 120, "the assignment")
    fed = threading.Event()
    feeder = threading.Thread(target=feed, args=(kafka, topics, data.readings, fed), daemon=True)
    feeder.start()
    # Three readings per transaction: the worker is still busy with its backlog after this.
    wait_for(lambda: count_committed(kafka, topics.predictions) >= 0.15 * len(expected), 120,
             "the worker to be scoring")
    before = len(worker.log())
    own_stack.kafka.process.kill()  # kill -9, while the worker has a transaction open
    wait_for(lambda: any(line in worker.log()[before:] for line in _FAILED), 120,
             "the worker to find Kafka gone")
    assert worker.alive(), worker.log()
    own_stack.kafka.start()
    own_stack.kafka.wait_ready(120)
    wait_for(fed.is_set, 120, "every reading to be produced")
    feeder.join()
    values = read_committed(kafka, topics.predictions, expect=len(expected), timeout_s=240, settle_s=3.0)
    assert worker.alive(), worker.log()
    assert worker.terminate() == 0, worker.log()
    assert prediction_keys(values) == expected, worker.log()
    # What the worker says it scored, in its committed pipeline stats, is what it committed.
    stats = [_stats.decode(v) for v in read_committed(kafka, topics.pipeline, timeout_s=30, settle_s=1.0)]
    assert sum(s.counts.get("scored", 0) for s in stats) == len(expected)
    assert {s.source for s in stats} == {"faulty"} and {s.role for s in stats} == {"scoring"}
