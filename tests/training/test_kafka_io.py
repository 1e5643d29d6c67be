"""Training's Kafka export and bundle publishing on the in-memory fakes: what is read (ranges,
since/until), decoded, counted as rejected and written; and a refused bundle is an error."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from forewarn.bundle import Bundle, unpack
from forewarn.contract import MaintenanceEvent, Telemetry, encode
from forewarn.settings import KafkaSettings, TopicSettings
from forewarn.testing import FakeConsumer, FakeProducer, InMemoryKafka
from forewarn.topics import Topics
from tests.scoring.bundle_factory import tiny_meta, tiny_onnx
from tests.training.synth import make_history
from training.errors import TrainingError
from training.kafka_io import export_dataset, publish_bundle

T0 = 1_767_225_600_000
TOPICS = Topics.from_settings(TopicSettings())


@pytest.fixture
def kafka():
    broker = InMemoryKafka()
    for name in (TOPICS.telemetry, TOPICS.maintenance, TOPICS.models):
        broker.create_topic(name, partitions=2)
    readings, events = make_history(n_machines=6, life=(20, 30), censored=1)
    producer = FakeProducer(broker)
    for row in readings.sort_values(["time", "machine_id"]).itertuples(index=False):
        message = Telemetry(v=1, machine_id=row.machine_id, asset_type="pump", ts=T0 + int(row.time) * 1000,
                            seq=int(row.seq), sensors={"s0": float(row.s0), "s1": float(row.s1)},
                            settings={"speed": 1.0})
        producer.produce(TOPICS.telemetry, encode(message), key=row.machine_id, timestamp_ms=message.ts)
    producer.produce(TOPICS.telemetry, b"{not json", key="site-a/pump-000", timestamp_ms=T0)
    for row in events.itertuples(index=False):
        event = MaintenanceEvent(v=1, machine_id=row.machine_id, ts=T0 + int(row.time) * 1000, event="failure")
        producer.produce(TOPICS.maintenance, encode(event), key=row.machine_id, timestamp_ms=event.ts)
    producer.flush()
    return broker, readings, events


def test_export_writes_every_reading_and_event_with_lineage(kafka, tmp_path):
    broker, readings, events = kafka
    result = export_dataset(KafkaSettings(), TopicSettings(), tmp_path, consumer=FakeConsumer(broker))
    assert result.readings == {"pump": len(readings)} and result.events == len(events) and result.rejected == 1
    ranges = result.lineage["kafka"]["topics"][TOPICS.telemetry]
    assert sum(end - start for start, end in ranges.values()) == len(readings) + 1
    frame = pd.read_parquet(tmp_path / "pump" / "readings.parquet")
    assert list(frame.columns) == ["machine_id", "asset_type", "time", "seq", "s0", "s1", "speed"]
    assert len(frame) == len(readings) and frame.groupby("machine_id")["seq"].is_monotonic_increasing.all()
    assert len(pd.read_parquet(tmp_path / "pump" / "events.parquet")) == len(events)
    assert json.loads((tmp_path / "pump" / "settings.json").read_text()) == {"settings": ["speed"]}
    assert json.loads((tmp_path / "lineage.json").read_text()) == result.lineage


def test_export_between_since_and_until(kafka, tmp_path):
    broker, readings, _ = kafka
    since = datetime.fromtimestamp((T0 + 5_000) / 1000, UTC)
    until = datetime.fromtimestamp((T0 + 15_000) / 1000, UTC)
    result = export_dataset(KafkaSettings(), TopicSettings(), tmp_path, since=since, until=until,
                            consumer=FakeConsumer(broker))
    expected = int(((readings["time"] >= 5) & (readings["time"] < 15)).sum())
    assert result.readings == {"pump": expected} and result.rejected == 0
    assert result.events == 0  # every failure comes after 15 s
    assert result.lineage["kafka"]["since"] == since.isoformat()


def test_publish_puts_the_bundle_on_the_models_topic(kafka):
    broker, _, _ = kafka
    onnx = tiny_onnx()
    bundle = Bundle(meta=tiny_meta(onnx), onnx=onnx)
    assert publish_bundle(KafkaSettings(), TopicSettings(), bundle, producer=FakeProducer(broker)) == TOPICS.models
    [message] = broker.messages(TOPICS.models)
    assert message.key() == b"pump" and dict(message.headers())["version"] == bundle.meta.version.encode()
    assert unpack(message.value()) == bundle


def test_publish_fails_when_kafka_refuses_the_bundle(kafka):
    broker, _, _ = kafka
    onnx = tiny_onnx()
    producer = FakeProducer(broker)
    producer.fail_next = 1
    with pytest.raises(TrainingError, match="refused"):
        publish_bundle(KafkaSettings(), TopicSettings(), Bundle(meta=tiny_meta(onnx), onnx=onnx), producer=producer)
    assert broker.messages(TOPICS.models) == []


def test_export_keeps_each_maintenance_event_once_and_every_boot_of_a_restarted_device(tmp_path):
    broker = InMemoryKafka()
    for name in (TOPICS.telemetry, TOPICS.maintenance):
        broker.create_topic(name, partitions=1)
    producer = FakeProducer(broker)
    machine = "site-a/pump-001"
    # The device restarted: seq starts again from 0 with boot 2; one reading was redelivered.
    readings = [Telemetry(v=1, machine_id=machine, asset_type="pump", ts=T0 + (boot * 10 + seq) * 1000, seq=seq,
                          sensors={"s0": float(seq)}, boot=boot) for boot in (1, 2) for seq in range(10)]
    for reading in [*readings, readings[3]]:
        producer.produce(TOPICS.telemetry, encode(reading), key=machine, timestamp_ms=reading.ts)
    named = MaintenanceEvent(v=1, machine_id=machine, ts=T0 + 25_000, event="failure", event_id="WO-7")
    unnamed = MaintenanceEvent(v=1, machine_id=machine, ts=T0 + 26_000, event="repair")
    # A dead-letter replay and a redelivery send both again.
    for event in (named, unnamed, named, unnamed):
        producer.produce(TOPICS.maintenance, encode(event), key=machine, timestamp_ms=event.ts)
    producer.flush()
    result = export_dataset(KafkaSettings(), TopicSettings(), tmp_path, consumer=FakeConsumer(broker))
    assert result.readings == {"pump": 20} and result.events == 2 and result.duplicate_events == 2
    assert result.lineage["kafka"]["duplicate_events"] == 2
    frame = pd.read_parquet(tmp_path / "pump" / "readings.parquet")
    assert list(frame["boot"]) == [1] * 10 + [2] * 10 and list(frame["seq"]) == [*range(10), *range(10)]
    events = pd.read_parquet(tmp_path / "pump" / "events.parquet")
    assert list(events["event"]) == ["failure", "repair"]
    assert events["event_id"].iloc[0] == "WO-7" and pd.isna(events["event_id"].iloc[1])
    # The folder loads for training with both boots' readings, boot a key, not a sensor.
    from training.dataset import load_events, load_readings

    loaded = load_readings(tmp_path / "pump")
    assert len(loaded.frame) == 20 and loaded.value_columns == ["s0"]
    assert len(load_events(tmp_path / "pump", loaded.time_kind).frame) == 2
