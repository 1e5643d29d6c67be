"""The scoring worker against a real Kafka broker that is killed (kill -9) in the middle of the
worker's transactions and started again: the worker process keeps running, and every reading
gets exactly one committed prediction (none lost, none doubled), as in an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from forewarn.bundle import Bundle, pack
from forewarn.contract import PipelineStats
from forewarn.kafka import KafkaAdmin
from forewarn.settings import TopicSettings
from forewarn.stack import LocalStack
from forewarn.topics import Topics, topic_specs
from tests.integration import test_scoring_worker
from tests.scoring.fleet_data import FleetData
from tests.scoring.procs import (
    Worker,
    offline,
    prediction_keys,
    produce_readings,
    publish_model,
    read_committed,
    wait_for,
)

pytestmark = pytest.mark.integration  # a private Mosquitto and Kafka (own_stack): its Kafka is killed

# One reading per transaction, so that the worker is still busy with its backlog (in a transaction
# nearly all the time) when the broker dies, and pipeline stats every second, so that they span
# the outage.
SLOW = ("--max-batch", "1", "--commit-interval-ms", "50", "--stats-interval-s", "1")
# What the worker logs when a transaction fails (see scoring.worker).
_FAILED = ("committing the transaction", "transaction failed", "transactional producer failed")

_stats = msgspec.json.Decoder(PipelineStats)

data = test_scoring_worker.data  # the fleet and bundle of the other worker acceptance tests
bundle = test_scoring_worker.bundle


def test_kafka_killed_mid_transaction_loses_and_doubles_nothing(own_stack: LocalStack, data: FleetData,
                                                                 bundle: Bundle, tmp_path: Path) -> None:
    expected = offline(data, bundle)
    kafka = own_stack.kafka_settings
    settings = TopicSettings(prefix="faults.", partitions=3)
    topics = Topics.from_settings(settings)
    admin = KafkaAdmin(kafka)
    admin.ensure_topics(topic_specs(settings))
    publish_model(kafka, topics, "pump", pack(bundle))
    produce_readings(kafka, topics, data.readings)
    worker = Worker(kafka, settings, "faulty", tmp_path, *SLOW).start()

    def consumed() -> int:
        """Readings the worker's committed transactions consumed (one quick admin call: a read
        of the predictions topic takes long enough for the worker to finish its backlog)."""
        return sum(lag.committed or 0 for lag in admin.group_lag([topics.telemetry]))

    try:
        # Well before the end of the backlog: the worker is still busy with it after this.
        wait_for(lambda: consumed() >= 0.05 * len(data.readings), 120, "the worker to be scoring")
        before, at_kill = len(worker.log()), consumed()
        own_stack.kafka.process.kill()  # kill -9, while the worker has a transaction open
        try:
            wait_for(lambda: not worker.alive() or any(line in worker.log()[before:] for line in _FAILED), 120,
                     "the worker to find its transaction failed")
        except AssertionError as error:
            raise AssertionError(f"{error} ({at_kill} of {len(data.readings)} readings committed before the kill); "
                                 f"the worker logged since:\n{worker.log()[before:][-4000:]}") from None
        assert worker.alive(), (worker.proc.returncode if worker.proc else None, worker.log())
        own_stack.kafka.start()
        own_stack.kafka.wait_ready(120)
        values = read_committed(kafka, topics.predictions, expect=len(expected), timeout_s=240, settle_s=3.0)
        assert worker.alive(), worker.log()
        assert worker.terminate() == 0, worker.log()
        assert prediction_keys(values) == expected, worker.log()
    finally:
        if worker.alive():
            worker.kill()
    # What the worker says it scored, in its committed pipeline stats, is what it committed.
    stats = [_stats.decode(v) for v in read_committed(kafka, topics.pipeline, timeout_s=30, settle_s=1.0)]
    assert sum(s.counts.get("scored", 0) for s in stats) == len(expected), worker.log()
    assert {s.source for s in stats} == {"faulty"} and {s.role for s in stats} == {"scoring"}
