"""Acceptance tests of the scoring workers with real Kafka and real processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from forewarn.bundle import Bundle, pack
from forewarn.contract import Telemetry
from forewarn.errors import KafkaError
from forewarn.kafka import KafkaProducer
from forewarn.settings import KafkaSettings, TopicSettings
from forewarn.topics import Topics
from scoring.settings import ScoringOptions, ScoringSettings
from scoring.worker import ScoringWorker
from tests.scoring.bundle_factory import trust_settings
from tests.scoring.fleet_data import FleetData, fitted_bundle, simulate
from tests.scoring.procs import (
    PredictionKey,
    Worker,
    alerts,
    count_committed,
    offline,
    prediction_keys,
    produce_events,
    produce_readings,
    publish_model,
    read_committed,
    wait_for,
)
from tests.stacks import REPO, RunningStack

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka

FreshTopics = Callable[..., tuple[TopicSettings, Topics]]
# Batches of up to 150 readings in slices of 40: the kill tests also cover the inference thread.
FAST = ("--max-batch", "150", "--commit-interval-ms", "50", "--score-slice", "40")


@pytest.fixture(scope="module")
def data() -> FleetData:
    return simulate(machines=12, ticks=150, seed=5)


@pytest.fixture(scope="module")
def bundle(data: FleetData) -> Bundle:
    return fitted_bundle(data)


def feed(kafka: KafkaSettings, topics: Topics, readings: list[Telemetry], chunk: int, pause_s: float) -> None:
    for start in range(0, len(readings), chunk):
        produce_readings(kafka, topics, readings[start:start + chunk])
        time.sleep(pause_s)


def test_kill_9_twice_commits_exactly_the_reference(stack: RunningStack, fresh_topics: FreshTopics,
                                                    data: FleetData, bundle: Bundle, tmp_path: Path) -> None:
    expected = offline(data, bundle)
    kafka = stack.kafka_settings
    runs: list[list[PredictionKey]] = []
    for crash in (False, True):
        settings, topics = fresh_topics(partitions=3)
        publish_model(kafka, topics, "pump", pack(bundle))
        worker = Worker(kafka, settings, "w1", tmp_path, *FAST).start()
        feeder = threading.Thread(target=feed, args=(kafka, topics, data.readings, 100, 0.4))
        feeder.start()
        starts = 1
        if crash:
            for fraction in (0.2, 0.55):
                wait_for(lambda f=fraction, t=topics: count_committed(kafka, t.predictions) >= f * len(expected),
                         90, f"{fraction:.0%} of the predictions")
                wait_for(lambda n=starts, w=worker: w.log().count("assigned partitions") >= n, 60, "the assignment")
                worker.kill()
                worker = Worker(kafka, settings, "w1", tmp_path, *FAST).start()
                starts += 1
        feeder.join()
        values = read_committed(kafka, topics.predictions, expect=len(expected), timeout_s=120)
        assert worker.alive(), worker.log()
        assert worker.terminate() == 0, worker.log()
        runs.append(prediction_keys(values))
        if crash:
            assert worker.log().count("restored") >= 2, worker.log()
    reference, crashed = runs
    assert len(set(reference)) == len(reference)
    assert reference == expected
    assert crashed == reference


def test_two_workers_one_killed(stack: RunningStack, fresh_topics: FreshTopics, data: FleetData, bundle: Bundle,
                                tmp_path: Path) -> None:
    expected = offline(data, bundle)
    kafka = stack.kafka_settings
    settings, topics = fresh_topics(partitions=3)
    publish_model(kafka, topics, "pump", pack(bundle))
    a = Worker(kafka, settings, "a", tmp_path, *FAST).start()
    b = Worker(kafka, settings, "b", tmp_path, *FAST).start()
    wait_for(lambda: "assigned partitions" in a.log() and "assigned partitions" in b.log(), 60, "both assigned")
    half = len(data.readings) // 2
    produce_readings(kafka, topics, data.readings[:half])
    wait_for(lambda: count_committed(kafka, topics.predictions) > 0.25 * len(expected), 60, "some predictions")
    a.kill()
    produce_readings(kafka, topics, data.readings[half:])
    values = read_committed(kafka, topics.predictions, expect=len(expected), timeout_s=120)
    assert b.terminate() == 0, b.log()
    assert prediction_keys(values) == expected


def test_model_switch_without_gap_and_corrupt_bundle_refused(stack: RunningStack, fresh_topics: FreshTopics,
                                                             data: FleetData, bundle: Bundle,
                                                             tmp_path: Path) -> None:
    kafka = stack.kafka_settings
    settings, topics = fresh_topics(partitions=3)
    v2 = fitted_bundle(data, version="v2", shift=0.3)
    half = len(data.readings) // 2
    expected = offline(data, bundle, v2, switch_at=half)
    publish_model(kafka, topics, "pump", pack(bundle))
    worker = Worker(kafka, settings, "w", tmp_path, *FAST).start()
    produce_readings(kafka, topics, data.readings[:half])
    first = len([k for k in expected if k[2] == "v1"])
    read_committed(kafka, topics.predictions, expect=first, timeout_s=90)
    publish_model(kafka, topics, "pump", pack(v2))
    wait_for(lambda: "now serving pump@v2" in worker.log(), 30, "the switch to v2")
    corrupt = bytearray(pack(fitted_bundle(data, version="v3")))
    corrupt[-40] ^= 0xFF  # flips a byte of model.onnx: the sha256 no longer matches
    publish_model(kafka, topics, "pump", bytes(corrupt))
    wait_for(lambda: "refused serving bundle" in worker.log(), 30, "the corrupt bundle to be refused")
    produce_readings(kafka, topics, data.readings[half:])
    values = read_committed(kafka, topics.predictions, expect=len(expected), timeout_s=90)
    assert worker.terminate() == 0, worker.log()
    assert prediction_keys(values) == expected
    events = alerts(read_committed(kafka, topics.alerts, timeout_s=20, settle_s=1.0))
    refused = [e for e in events if e.rule == "model_refused"]
    assert len(refused) == 1 and "sha256" in (refused[0].message or ""), refused


def test_simulator_duplicates_and_out_of_order_do_not_change_predictions(
        stack: RunningStack, fresh_topics: FreshTopics, data: FleetData, bundle: Bundle, tmp_path: Path) -> None:
    kafka = stack.kafka_settings
    results = []
    # Recent event times: the telemetry topic's 7-day retention would delete older records.
    start = datetime.fromtimestamp(time.time() // 86_400 * 86_400 - 86_400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for faults in ((), ("--fault-duplicate", "0.05", "--fault-out-of-order", "0.05")):
        settings, topics = fresh_topics(partitions=3)
        publish_model(kafka, topics, "pump", pack(bundle))
        subprocess.run([sys.executable, "-m", "forewarn.cli", "simulate", "history", "--to-kafka",
                        "--asset-type", "pump", "--machines", "8", "--ticks", "120", "--seed", "11", "--start", start,
                        "--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", settings.prefix, *faults],
                       cwd=REPO, check=True, capture_output=True, timeout=120)
        worker = Worker(kafka, settings, "w", tmp_path, *FAST).start()
        values = read_committed(kafka, topics.predictions, timeout_s=90, settle_s=4.0)
        assert worker.terminate() == 0, worker.log()
        results.append(prediction_keys(values))
    clean, faulty = results
    assert len(clean) > 500
    assert faulty == clean


def test_alert_opens_before_failure_and_repair_resolves_it(stack: RunningStack, fresh_topics: FreshTopics,
                                                           data: FleetData, bundle: Bundle,
                                                           tmp_path: Path) -> None:
    kafka = stack.kafka_settings
    settings, topics = fresh_topics(partitions=3)
    publish_model(kafka, topics, "pump", pack(bundle))
    worker = Worker(kafka, settings, "w", tmp_path, *FAST).start()
    wait_for(lambda: "assigned partitions" in worker.log(), 60, "the assignment")
    # Deliver in time order, the way a plant would: readings first, then what happened.
    by_time = sorted(data.readings, key=lambda r: r.ts)
    events = sorted(data.events, key=lambda e: e.ts)
    step = 300
    for start in range(0, len(by_time), step):
        chunk = by_time[start:start + step]
        produce_readings(kafka, topics, chunk)
        time.sleep(0.4)
        due = [e for e in events if e.ts <= chunk[-1].ts]
        events = events[len(due):]
        produce_events(kafka, topics, due)
    produce_events(kafka, topics, events)
    time.sleep(1.0)
    found = alerts(read_committed(kafka, topics.alerts, timeout_s=30, settle_s=2.0))
    assert worker.terminate() == 0, worker.log()
    failures = [e for e in data.events if e.event == "failure"]
    repairs = {e.machine_id: e.ts for e in data.events if e.event == "repair"}
    warned = [f for f in failures if any(a.machine_id == f.machine_id and a.state == "open" and a.ts <= f.ts
                                         for a in found)]
    assert len(warned) >= len(failures) // 2, (len(warned), len(failures))
    resolved = [a for a in found if a.state == "resolved" and a.message == "repaired"]
    assert resolved and all(a.machine_id in repairs for a in resolved)
    assert all(a.model_version == "v1" for a in found if a.state == "open")


class _AbortOnce:
    """The real transactional producer, except that one armed commit fails the way an
    abortable broker error does (the transaction stays open, for the worker to abort)."""

    def __init__(self, producer: KafkaProducer) -> None:
        self.producer = producer
        self.armed = False
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.producer, name)

    def commit_transaction(self, timeout_s: float = 60.0) -> None:
        if self.armed:
            self.armed = False
            self.failed += 1
            raise KafkaError("commit transaction: injected abortable error", code="INVALID_PRODUCER_EPOCH",
                             txn_requires_abort=True)
        self.producer.commit_transaction(timeout_s)


def test_aborted_transaction_rewinds_on_the_real_broker(stack: RunningStack, fresh_topics: FreshTopics,
                                                        data: FleetData, bundle: Bundle) -> None:
    expected = offline(data, bundle)
    kafka = stack.kafka_settings
    settings, topics = fresh_topics(partitions=3)
    publish_model(kafka, topics, "pump", pack(bundle))
    produce_readings(kafka, topics, data.readings)
    wrapped: list[_AbortOnce] = []

    def producer_factory(**overrides: Any) -> Any:
        wrapped.append(_AbortOnce(KafkaProducer(kafka, **overrides)))
        return wrapped[-1]

    worker = ScoringWorker(ScoringSettings(kafka=kafka, topics=settings, trust=trust_settings(),
                               scoring=ScoringOptions(
        group_id=f"{settings.prefix}scoring", worker_id="abort", threads=1, max_batch=150, commit_interval_ms=50,
        session_timeout_ms=6000, transaction_timeout_ms=6000)), producer_factory=producer_factory)

    def accepted() -> float:
        return worker.metrics.registry.get_sample_value("forewarn_scoring_readings_total", {"outcome": "accepted"}) or 0

    deadline = time.monotonic() + 120
    with worker:
        while worker.batches < 3 and time.monotonic() < deadline:
            worker.step()
        wrapped[0].armed = True
        while accepted() < len(data.readings) and time.monotonic() < deadline:
            worker.step()
    assert wrapped[0].failed == 1
    values = read_committed(kafka, topics.predictions, expect=len(expected), timeout_s=60)
    assert prediction_keys(values) == expected
