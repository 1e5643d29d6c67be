"""Training's Kafka paths against the real broker: export with lineage, train --from-kafka,
model publish onto the compacted models topic."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from forewarn.bundle import read_bundle, resolve_bundle, unpack
from forewarn.cli import cli
from forewarn.contract import MaintenanceEvent, Telemetry, encode
from forewarn.kafka import KafkaConsumer, KafkaProducer
from forewarn.trust import TrustList, generate_keypair, load_public_key, verify_release
from tests.stacks import RunningStack
from tests.training.synth import make_history
from training.kafka_io import export_dataset

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka

T0 = 1_767_225_600_000


def _fill(stack: RunningStack, topics: Any) -> tuple[int, int]:
    readings, events = make_history(n_machines=10, life=(30, 45), censored=1)
    sensors = [c for c in readings.columns if c.startswith("s") and c != "seq"]
    with KafkaProducer(stack.kafka_settings) as producer:
        for row in readings.itertuples(index=False):
            message = Telemetry(v=1, machine_id=row.machine_id, asset_type="pump", ts=T0 + int(row.time) * 1000,
                                seq=int(row.seq), sensors={s: float(getattr(row, s)) for s in sensors},
                                settings={"constant": 1.0})
            producer.produce(topics.telemetry, encode(message), key=row.machine_id, timestamp_ms=message.ts)
        producer.produce(topics.telemetry, b"{not json", key="site-a/pump-000")
        for row in events.itertuples(index=False):
            event = MaintenanceEvent(v=1, machine_id=row.machine_id, ts=T0 + int(row.time) * 1000, event="failure")
            producer.produce(topics.maintenance, encode(event), key=row.machine_id)
    return len(readings), len(events)


def test_export_train_publish(stack: RunningStack, fresh_topics: Any, tmp_path: Any) -> None:
    topic_settings, topics = fresh_topics(partitions=2)
    n_readings, n_events = _fill(stack, topics)

    result = export_dataset(stack.kafka_settings, topic_settings, tmp_path / "export")
    assert result.readings == {"pump": n_readings}
    assert result.events == n_events and result.rejected == 1
    ranges = result.lineage["kafka"]["topics"][topics.telemetry]
    assert sum(end - start for start, end in ranges.values()) == n_readings + 1
    exported = pd.read_parquet(tmp_path / "export" / "pump" / "readings.parquet")
    assert {"machine_id", "asset_type", "time", "seq", "s0", "constant"} <= set(exported.columns)

    flags = ["--bootstrap-servers", stack.kafka_settings.bootstrap_servers, "--topic-prefix", topic_settings.prefix]
    models = tmp_path / "models"
    runner = CliRunner()
    key, public = tmp_path / "keys" / "model.key", tmp_path / "keys" / "model.pub"
    generate_keypair(key, public)
    trained = runner.invoke(cli, ["train", "--from-kafka", "--window", "8", "--epochs", "2", "--rul-cap", "40",
                                  "--horizon", "10", "--quiet", "--out", str(models), "--key", str(key), *flags])
    assert trained.exit_code == 0, trained.output
    bundle = read_bundle(resolve_bundle(models))
    assert verify_release(bundle.release, bundle, TrustList.of([load_public_key(public)])).reason == "trained"
    assert topics.telemetry in bundle.meta.lineage["kafka"]["topics"]
    assert [f.kind for f in bundle.meta.input.features if f.name == "constant"] == []  # constant dropped

    published = runner.invoke(cli, ["model", "publish", "--models", str(models), *flags])
    assert published.exit_code == 0, published.output
    consumer = KafkaConsumer(stack.kafka_settings, f"g-{uuid.uuid4().hex}", [topics.models])
    got: list[Any] = []
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        got.extend(consumer.consume(10, 0.5))
    consumer.close()
    assert len(got) == 1 and got[0].key() == b"pump"
    received = unpack(got[0].value())
    assert received.meta == bundle.meta and received.onnx == bundle.onnx and received.release == bundle.release
