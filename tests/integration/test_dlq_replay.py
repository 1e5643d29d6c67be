"""A dead letter written by a scoring worker is replayed by `forewarn dlq replay` (real broker)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from forewarn.bundle import pack
from forewarn.contract import SCHEMA_VERSION, DecodeLimits, Decoder, Telemetry, encode
from forewarn.deadletter import DeadLetter, Kind, Origin
from forewarn.kafka import KafkaProducer, read_to_end
from forewarn.settings import TopicSettings
from forewarn.topics import Topics, telemetry_topic
from scoring.settings import ScoringOptions, ScoringSettings
from scoring.testing import linear_bundle
from scoring.worker import ScoringWorker
from tests.scoring.bundle_factory import signed, trust_settings
from tests.stacks import REPO, RunningStack

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka

FreshTopics = Callable[..., tuple[TopicSettings, Topics]]
STRICT_BYTES = 256  # the worker's decoder refuses readings longer than this; the contract allows 16 KiB


def reading(machine: str, seq: int, sensors: int) -> Telemetry:
    return Telemetry(SCHEMA_VERSION, machine, "pump", int(time.time() * 1000), seq,
                     {f"sensor_{i:02d}": float(i) for i in range(sensors)})


def test_a_scoring_workers_dead_letter_is_replayed_and_a_still_invalid_one_stays(
        stack: RunningStack, fresh_topics: FreshTopics) -> None:
    kafka = stack.kafka_settings
    settings, topics = fresh_topics(partitions=3)
    machine = "site-01/pump-00007"
    big = encode(reading(machine, 1, sensors=20))  # valid by the contract, too long for the strict worker
    invalid = encode(reading(machine, 2, sensors=1)).replace(b'"seq":2', b'"seq":-5')  # invalid for everyone
    assert STRICT_BYTES < len(big) < DecodeLimits().max_message_bytes
    with KafkaProducer(kafka) as producer:
        model = signed(linear_bundle("pump", ["sensor_00", "sensor_01"], window=4))
        producer.produce(topics.models, pack(model), "pump")
        producer.produce(topics.telemetry, big, machine)
        producer.produce(topics.telemetry, invalid, machine)
        assert producer.flush(30) == 0

    worker = ScoringWorker(ScoringSettings(kafka=kafka, topics=settings, trust=trust_settings(), scoring=ScoringOptions(
        group_id=f"{settings.prefix}scoring", worker_id="dlq-test", threads=1, commit_interval_ms=100,
        session_timeout_ms=6000, transaction_timeout_ms=6000)),
        decoder=Decoder(DecodeLimits(max_message_bytes=STRICT_BYTES)))
    consumed = 0
    deadline = time.monotonic() + 90
    with worker:
        while consumed < 2 and time.monotonic() < deadline:
            consumed += worker.step()
    assert consumed == 2

    letters = [DeadLetter.from_message(m) for m in read_to_end(kafka, topics.dlq)]
    assert sorted(letter.reason for letter in letters) == ["bad_value", "too_large"], letters
    for letter in letters:
        assert letter.origin is Origin.SCORING and letter.kind is Kind.TELEMETRY
        assert letter.mqtt_topic == telemetry_topic(machine) and letter.kafka_topic == topics.telemetry
    refused = next(letter for letter in letters if letter.reason == "too_large")
    assert refused.value == big

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FOREWARN_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "forewarn.cli", "dlq", "replay",
                           "--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", settings.prefix],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "scanned 2, matched 2, replayed 1 payload(s) as 1 record(s)" in done.stdout, done.stdout
    assert "still invalid: bad_value" in done.stdout, done.stdout

    records = list(read_to_end(kafka, topics.telemetry))
    replayed = [m for m in records if any(name == "replayed_from" for name, _ in m.headers() or ())]
    assert len(records) == 3 and len(replayed) == 1, records
    back = replayed[0]
    assert back.key() == machine.encode() and back.value() == big
    assert dict(back.headers() or ())["replayed_from"] == f"{refused.partition}:{refused.offset}".encode()
