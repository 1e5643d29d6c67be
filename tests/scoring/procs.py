"""Helpers for the scoring acceptance tests: real worker processes and committed reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import confluent_kafka
import msgspec

from forewarn.bundle import Bundle
from forewarn.contract import Alert, MaintenanceEvent, Prediction, Telemetry, encode
from forewarn.settings import KafkaSettings, TopicSettings
from forewarn.topics import Topics
from scoring.engine import Incoming, ScoringEngine
from scoring.registry import ModelRegistry
from scoring.settings import ScoringOptions
from tests.scoring.bundle_factory import TEST_TRUST, trust_env
from tests.scoring.fleet_data import FleetData
from tests.stacks import REPO

_prediction = msgspec.json.Decoder(Prediction)
_alert = msgspec.json.Decoder(Alert)

PredictionKey = tuple[str, int, str, float | None, float | None]


def produce(kafka: KafkaSettings, topic: str, records: Iterable[tuple[str, bytes, int]],
            headers: bool = True) -> int:
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 20,
                                         "enable.idempotence": True})
    n = 0
    now = str(int(time.time() * 1000))
    for key, value, ts in records:
        while True:
            try:
                producer.produce(topic, value, key, timestamp=ts, headers=[("ingest_ts", now)] if headers else None)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
    assert producer.flush(30) == 0
    return n


def produce_readings(kafka: KafkaSettings, topics: Topics, readings: Iterable[Telemetry]) -> int:
    return produce(kafka, topics.telemetry, ((r.machine_id, encode(r), r.ts) for r in readings))


def produce_events(kafka: KafkaSettings, topics: Topics, events: Iterable[MaintenanceEvent]) -> int:
    return produce(kafka, topics.maintenance, ((e.machine_id, encode(e), e.ts) for e in events), headers=False)


def publish_model(kafka: KafkaSettings, topics: Topics, key: str, value: bytes) -> None:
    produce(kafka, topics.models, [(key, value, int(time.time() * 1000))], headers=False)


def read_committed(kafka: KafkaSettings, topic: str, *, expect: int | None = None, timeout_s: float = 60.0,
                   settle_s: float = 2.0) -> list[bytes]:
    """Every committed record of ``topic``: until ``expect`` are there (then ``settle_s`` more
    to catch extras), or until nothing new came for ``settle_s`` when ``expect`` is None."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                                         "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                                         "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    last_new: float | None = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(5000, 0.2)
            for m in batch:
                if m.error() is None:
                    values.append(m.value() or b"")
            if batch or (last_new is None and consumer.assignment()):
                last_new = time.monotonic()
            if last_new is None:
                continue
            done = expect is None or len(values) >= expect
            if done and time.monotonic() - last_new > settle_s:
                break
    finally:
        consumer.close()
    return values


def prediction_keys(values: list[bytes]) -> list[PredictionKey]:
    out = []
    for v in values:
        p = _prediction.decode(v)
        out.append((p.machine_id, p.seq, p.model_version, p.p_fail, p.rul))
    return sorted(out)


def alerts(values: list[bytes]) -> list[Alert]:
    return [_alert.decode(v) for v in values]


def offline(data: FleetData, *bundles: Bundle, switch_at: int | None = None) -> list[PredictionKey]:
    """What an uninterrupted worker must commit, computed in-process."""
    registry = ModelRegistry(threads=1, trust=TEST_TRUST)
    registry.offer_bundle(bundles[0])
    engine = ScoringEngine(registry, ScoringOptions())
    cut = switch_at if switch_at is not None else len(data.readings)
    results = [engine.process([Incoming(r, 0) for r in data.readings[:cut]], [])]
    if len(bundles) > 1:
        registry.offer_bundle(bundles[1])
    results.append(engine.process([Incoming(r, 0) for r in data.readings[cut:]], []))
    return prediction_keys([v for res in results for _, v in res.predictions])


class Worker:
    """``python -m forewarn.cli score`` as a child process."""

    def __init__(self, kafka: KafkaSettings, topic_settings: TopicSettings, worker_id: str, log_dir: Path,
                 *args: str, group: str = "scoring") -> None:
        self.cmd = [sys.executable, "-m", "forewarn.cli", "--log-level", "info", "score",
                    "--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", topic_settings.prefix,
                    "--group-id", f"{topic_settings.prefix}{group}", "--worker-id", worker_id,
                    "--transaction-timeout-ms", "6000", "--session-timeout-ms", "6000", "--threads", "1", *args]
        self.log_path = log_dir / f"{worker_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = {**os.environ, "PYTHONPATH": str(REPO), **trust_env()}
        env.pop("FOREWARN_CONFIG", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def count_committed(kafka: KafkaSettings, topic: str) -> int:
    """Committed records of ``topic`` right now (read_committed, to the end)."""
    return len(read_committed(kafka, topic, timeout_s=15, settle_s=0.5))
