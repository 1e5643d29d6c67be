"""The edge gateway with the in-memory fakes: ack point, buffer policy, forwarding, windows kept
across restarts, model sync."""

from __future__ import annotations

import collections
import itertools
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edge.gateway import EdgeGateway, subscriptions
from edge.models import ModelSync
from edge.settings import EdgeOptions, EdgeSettings
from forewarn.bundle import current_version, pack
from forewarn.contract import (
    PIPELINE_OUTCOMES,
    SCHEMA_VERSION,
    Alert,
    MaintenanceEvent,
    PipelineStats,
    Prediction,
    encode,
)
from forewarn.testing import FakeConsumer, FakeMqtt, FakeProducer, InMemoryKafka
from forewarn.topics import Topics
from scoring.engine import Incoming, ScoringEngine
from scoring.registry import ModelRegistry
from scoring.settings import ScoringOptions
from tests.edge.helpers import WINDOW, AwayProducer, edge_bundle, fleet, mqtt_messages, reading, run_until, seeded
from tests.scoring.bundle_factory import TEST_TRUST
from tests.scoring.faulty import POISON, BrittleEngine
from tests.stacks import REPO

_prediction = msgspec.json.Decoder(Prediction)
_alert = msgspec.json.Decoder(Alert)
_stats = msgspec.json.Decoder(PipelineStats)


def reference(readings: list[Any]) -> list[tuple[str, int]]:
    registry = ModelRegistry(threads=1, trust=TEST_TRUST)
    registry.offer_bundle(edge_bundle())
    engine = ScoringEngine(registry, ScoringOptions())
    result = engine.process([Incoming(r, 0) for r in readings], [])
    return sorted((m, _prediction.decode(v).seq) for m, v in result.predictions)


def test_acknowledges_after_commit_scores_publishes_and_forwards(tmp_path: Path) -> None:
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    readings = fleet(6, 20)
    with EdgeGateway(seeded(tmp_path), mqtt=mqtt, producer=FakeProducer(kafka)) as gw:
        assert mqtt.subscriptions == subscriptions()
        mids = [mqtt.deliver(t, p).mid for t, p in mqtt_messages(readings)]
        run_until(gw, lambda: len(mqtt.acks) == len(mids))
        assert mqtt.acks == mids
        assert gw.forwarder is not None
        run_until(gw, lambda: len(kafka.messages("predictions")) == len(reference(readings)))
    topics = Topics.from_settings(gw.settings.topics)
    assert len(kafka.messages(topics.telemetry)) == len(readings)
    predicted = sorted((p.machine_id, p.seq) for p in
                       (_prediction.decode(m.value() or b"") for m in kafka.messages(topics.predictions)))
    assert predicted == reference(readings)
    local = [m for m in mqtt.published if m.topic.endswith("/prediction")]
    assert len(local) == len(predicted)
    alerts = [_alert.decode(m.value() or b"") for m in kafka.messages(topics.alerts)]
    assert {a.state for a in alerts} >= {"open"}
    assert len([m for m in mqtt.published if m.topic.endswith("/alert")]) == len(alerts)
    # per machine, telemetry arrives in seq order
    for part in kafka.topic(topics.telemetry):
        seen: dict[bytes, int] = {}
        for m in part:
            seq = msgspec.json.decode(m.value() or b"")["seq"]
            assert seq > seen.get(m.key() or b"", -1)
            seen[m.key() or b""] = seq


def test_uplink_away_buffers_and_drains_in_order(tmp_path: Path) -> None:
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    producer = AwayProducer(kafka)
    readings = fleet(3, 30)
    with EdgeGateway(seeded(tmp_path, max_forward_in_flight=50), mqtt=mqtt, producer=producer) as gw:
        for t, p in mqtt_messages(readings):
            mqtt.deliver(t, p)
        run_until(gw, lambda: len(mqtt.acks) == len(readings))
        assert gw.buffer is not None and len(gw.buffer) > len(readings)  # telemetry + predictions + alerts
        assert gw.forwarder is not None and gw.forwarder.in_flight <= 50
        assert not kafka.messages("telemetry")
        producer.up = True
        run_until(gw, lambda: gw.buffer is not None and len(gw.buffer) == 0)
    assert len(kafka.messages("telemetry")) >= len(readings)


def test_block_policy_stops_acknowledging_until_the_buffer_drains(tmp_path: Path) -> None:
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    producer = AwayProducer(kafka)
    readings = fleet(2, 200, hot_every=0)
    settings = seeded(tmp_path, buffer_max_bytes=64 * 1024, max_batch=20, max_forward_in_flight=10)
    with EdgeGateway(settings, mqtt=mqtt, producer=producer) as gw:
        for t, p in mqtt_messages(readings):
            mqtt.deliver(t, p)
        deadline = time.monotonic() + 10
        while gw._blocked is None:
            assert time.monotonic() < deadline
            gw.step(0.001)
        acked = len(mqtt.acks)
        assert 0 < acked < len(readings)
        for _ in range(20):
            gw.step(0.001)
        assert len(mqtt.acks) == acked, "nothing is acknowledged while the buffer is full"
        assert gw.metrics.buffer_blocked._value.get() == 1
        sample = gw.metrics.registry.get_sample_value
        assert sample("forewarn_edge_acked_total") == acked
        assert sample("forewarn_edge_received_total", {"kind": "telemetry"}) == acked, "the held-back batch uncounted"
        producer.up = True
        run_until(gw, lambda: len(mqtt.acks) == len(readings), timeout_s=30)
        run_until(gw, lambda: gw.buffer is not None and len(gw.buffer) == 0, timeout_s=30)
        assert sample("forewarn_edge_acked_total") == len(readings)
        assert sample("forewarn_edge_received_total", {"kind": "telemetry"}) == len(readings), "each batch once"
        assert sample("forewarn_edge_buffered_total", {"topic": "telemetry"}) == len(readings)
        assert sample("forewarn_edge_forwarded_total", {"topic": "telemetry"}) == len(readings)
        assert sample("forewarn_edge_readings_total", {"outcome": "duplicate"}) == 0
    seqs = sorted(msgspec.json.decode(m.value() or b"")["seq"] for m in kafka.messages("telemetry")
                  if m.key() == b"site-e/pump-0000")
    assert seqs == list(range(200))


def test_drop_oldest_policy_keeps_acknowledging_and_counts_evictions(tmp_path: Path) -> None:
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    readings = fleet(2, 200, hot_every=0)
    settings = seeded(tmp_path, buffer_max_bytes=64 * 1024, buffer_policy="drop_oldest", max_batch=20,
                      shutdown_timeout_s=0.2, max_forward_in_flight=10)
    with EdgeGateway(settings, mqtt=mqtt, producer=AwayProducer(kafka)) as gw:
        for t, p in mqtt_messages(readings):
            mqtt.deliver(t, p)
        run_until(gw, lambda: len(mqtt.acks) == len(readings))
        assert gw.buffer is not None
        assert gw.buffer.counter("evicted") > 0 and gw.buffer.bytes <= 64 * 1024


def test_restart_keeps_windows_so_predictions_match_an_uninterrupted_run(tmp_path: Path) -> None:
    kafka = InMemoryKafka()
    readings = fleet(4, 24)
    half = len(readings) // 2
    for part in (readings[:half], readings[half:]):
        mqtt = FakeMqtt()
        with EdgeGateway(seeded(tmp_path), mqtt=mqtt, producer=FakeProducer(kafka)) as gw:
            for t, p in mqtt_messages(part):
                mqtt.deliver(t, p)
            run_until(gw, lambda mqtt=mqtt, part=part: len(mqtt.acks) == len(part))
    predicted = sorted((p.machine_id, p.seq) for p in
                       (_prediction.decode(m.value() or b"") for m in kafka.messages("predictions")))
    assert predicted == reference(readings)


def test_invalid_payload_goes_to_the_dead_letter_topic_and_is_acknowledged(tmp_path: Path) -> None:
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    with EdgeGateway(seeded(tmp_path), mqtt=mqtt, producer=FakeProducer(kafka)) as gw:
        mid = mqtt.deliver("forewarn/site-e/pump-1/telemetry", b"{not json").mid
        run_until(gw, lambda: mqtt.acks == [mid])
        run_until(gw, lambda: len(kafka.messages("telemetry.dlq")) == 1)
    headers = dict(kafka.messages("telemetry.dlq")[0].headers() or [])
    assert headers["reason"] == b"not_json"


def test_model_sync_keeps_the_last_good_bundle_on_disk(tmp_path: Path) -> None:
    kafka = InMemoryKafka(partitions=1)
    registry = ModelRegistry(threads=1, trust=TEST_TRUST)
    disk = tmp_path / "models"
    sync = ModelSync(registry, disk, consumer=FakeConsumer(kafka, ["models"]))
    assert sync.load_local() == [] and not registry.serving
    good = edge_bundle("v2")
    kafka.append("models", pack(good), b"pump", None, 0, None)
    offers = sync.poll()
    assert [o.outcome for o in offers] == ["accepted"]
    assert current_version(disk, "pump") == "v2"
    tampered = pack(edge_bundle("v3"))[:-8] + b"garbage!"
    kafka.append("models", tampered, b"pump", None, 0, None)
    assert [o.outcome for o in sync.poll()] == ["refused"]
    assert current_version(disk, "pump") == "v2"
    # a new edge starts offline from what is on disk
    other = ModelRegistry(threads=1, trust=TEST_TRUST)
    ModelSync(other, disk).load_local()
    assert other.serving["pump"].meta.version == "v2"


def test_local_publications_wait_while_paho_has_many_queued(tmp_path: Path) -> None:
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    readings = fleet(2, 30, hot_every=0)
    with EdgeGateway(seeded(tmp_path), mqtt=mqtt, producer=FakeProducer(kafka)) as gw:
        mqtt.outgoing_packets = 5000  # paho's network thread is behind
        for t, p in mqtt_messages(readings):
            mqtt.deliver(t, p)
        stepping = threading.Thread(target=lambda: run_until(gw, lambda: len(mqtt.acks) == len(readings)))
        stepping.start()
        time.sleep(0.5)
        assert not [m for m in mqtt.published if m.topic.endswith("/prediction")], "scoring waits for the socket"
        mqtt.outgoing_packets = 0
        stepping.join(10)
        assert not stepping.is_alive()
    expected = reference(readings)
    assert expected and len([m for m in mqtt.published if m.topic.endswith("/prediction")]) == len(expected)


def test_the_scoring_section_configures_the_edge_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREWARN_SCORING__STRIDE", "5")
    monkeypatch.setenv("FOREWARN_SCORING__ALERTS__P_FAIL", "0.5")
    monkeypatch.setenv("FOREWARN_SCORING__SHADOW", "true")
    settings = EdgeSettings(edge=EdgeOptions(data_dir=tmp_path))
    assert settings.scoring.stride == 5 and settings.scoring.alerts.p_fail == 0.5
    gw = EdgeGateway(settings, mqtt=FakeMqtt(), producer=FakeProducer(InMemoryKafka()))
    assert gw.engine.options.stride == 5 and gw.engine.options.alerts.p_fail == 0.5
    assert not gw.engine.options.shadow, "shadow candidates are left to the data centre"
    monkeypatch.setenv("FOREWARN_EDGE__STRIDE", "5")
    with pytest.raises(ValueError, match="stride"):
        EdgeSettings()  # scoring options are no longer part of [edge]: a stale variable fails loudly


def test_sites_setting_and_subscriptions() -> None:
    options = EdgeOptions(sites="site-a, site-b")
    assert options.sites == ("site-a", "site-b")
    assert subscriptions(options.sites)[:3] == ["forewarn/site-a/+/telemetry", "forewarn/site-a/gateway/+/batch",
                                                "forewarn/site-a/+/maintenance"]
    with pytest.raises(ValueError, match="may not contain"):
        EdgeOptions(sites=("a/b",))


def test_edge_imports_no_tensorflow_keras_or_streamlit() -> None:
    code = ("import sys, edge.gateway, edge.cli, edge.models; "
            "bad = [m for m in ('tensorflow', 'keras', 'streamlit', 'tf2onnx') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_refused_bundle_is_reported_as_a_model_refused_event_and_the_old_model_keeps_serving(
        tmp_path: Path) -> None:
    kafka, mqtt = InMemoryKafka(partitions=1), FakeMqtt()
    corrupt = pack(edge_bundle("v9"))[:-8] + b"garbage!"
    kafka.append("models", corrupt, b"pump", None, 0, None)
    readings = fleet(2, 12, hot_every=0)
    with EdgeGateway(seeded(tmp_path), mqtt=mqtt, producer=FakeProducer(kafka),
                     models_consumer=FakeConsumer(kafka, ["models"])) as gw:
        run_until(gw, lambda: any(m.topic == "forewarn/models/pump/alert" for m in mqtt.published))
        for t, p in mqtt_messages(readings):
            mqtt.deliver(t, p)
        run_until(gw, lambda: len(kafka.messages("predictions")) == len(reference(readings)))
        assert gw.registry.serving["pump"].meta.version == "v1"
        assert gw.metrics.models.labels("refused")._value.get() == 1
    [local] = [m for m in mqtt.published if m.topic == "forewarn/models/pump/alert"]
    [event] = [_alert.decode(m.value() or b"") for m in kafka.messages("alerts") if m.key() == b"models/pump"]
    assert event == _alert.decode(local.payload)
    assert (event.rule, event.state, event.machine_id) == ("model_refused", "open", "models/pump")
    assert event.message is not None and "sha256_mismatch" in event.message
    assert current_version(tmp_path / "data" / "models", "pump") == "v1"


def test_readings_not_scored_are_counted_by_reason_and_reach_the_pipeline_topic(tmp_path: Path) -> None:
    """Warm-up, duplicates, a restarted device (a new boot, seq from 0 again) and a rejected payload:
    each reading is counted once under its outcome, in the metrics and in the edge's PipelineStats."""
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    start = int(time.time() * 1000) - 3_600_000
    first = [reading("site-e/pump-1", seq, start_ms=start) for seq in range(12)]
    duplicates = first[6:9]
    restarted = [msgspec.structs.replace(reading("site-e/pump-1", seq, start_ms=start + 60_000), boot=1)
                 for seq in range(8)]
    phases = [mqtt_messages(first), mqtt_messages(duplicates), mqtt_messages(restarted),
              [("forewarn/site-e/pump-1/telemetry", b"{oops")]]
    with EdgeGateway(seeded(tmp_path, stats_interval_s=0.01), mqtt=mqtt, producer=FakeProducer(kafka)) as gw:
        for phase in phases:  # each phase committed before the next arrives
            mids = [mqtt.deliver(t, p).mid for t, p in phase]
            run_until(gw, lambda mids=mids: mqtt.acks[-len(mids):] == mids)
        sample = gw.metrics.registry.get_sample_value
        run_until(gw, lambda: stats_total(kafka, gw) == outcomes(gw), timeout_s=20)
    predictions = len(kafka.messages("predictions"))  # all forwarded by the close
    counted = outcomes(gw)
    assert counted["duplicate"] == len(duplicates)
    assert counted["rejected"] == 1
    assert counted["warmup"] == 2 * (WINDOW - 1), "the first window, then the restarted one"
    assert counted["scored"] == predictions == len(first) + len(restarted) - 2 * (WINDOW - 1)
    assert sum(counted.values()) == len(first) + len(duplicates) + len(restarted) + 1
    assert sample("forewarn_edge_window_resets_total", {"reason": "restart"}) == 1
    records = [_stats.decode(m.value() or b"") for m in kafka.messages(gw.topics.pipeline)]
    assert {(r.source, r.role) for r in records} == {("edge-test", "edge")}
    assert sum(r.resets.get("restart", 0) for r in records) == 1
    assert all(a.until <= b.since for a, b in itertools.pairwise(records)), "intervals follow one another"


def outcomes(gw: EdgeGateway) -> dict[str, int]:
    sample = gw.metrics.registry.get_sample_value
    return {o: int(sample("forewarn_edge_readings_total", {"outcome": o}) or 0) for o in PIPELINE_OUTCOMES}


def stats_total(kafka: InMemoryKafka, gw: EdgeGateway) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter({o: 0 for o in PIPELINE_OUTCOMES})
    for m in kafka.messages(gw.topics.pipeline):
        total.update(_stats.decode(m.value() or b"").counts)
    return dict(total)


def test_a_reading_the_engine_cannot_process_is_forwarded_unscored_and_the_rest_scored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    readings = fleet(3, 20)
    third = len(readings) // 3
    poison = msgspec.structs.replace(readings[third], machine_id=POISON)
    event = MaintenanceEvent(SCHEMA_VERSION, POISON, poison.ts, "repair", event_id="wo-1")
    messages = [*mqtt_messages([*readings[:third], poison, *readings[third:]]),
                (f"forewarn/{POISON}/maintenance", encode(event))]
    with EdgeGateway(seeded(tmp_path, max_batch=25), mqtt=mqtt, producer=FakeProducer(kafka)) as gw:
        gw.engine = BrittleEngine(gw.registry, gw.engine.options)
        mids = [mqtt.deliver(t, p).mid for t, p in messages]
        run_until(gw, lambda: mqtt.acks == mids, timeout_s=30)
        run_until(gw, lambda: len(kafka.messages("predictions")) >= len(reference(readings)), timeout_s=30)
        sample = gw.metrics.registry.get_sample_value
        assert sample("forewarn_edge_readings_total", {"outcome": "unscorable"}) == 1
    predicted = sorted((p.machine_id, p.seq) for p in
                       (_prediction.decode(m.value() or b"") for m in kafka.messages("predictions")))
    assert predicted == reference(readings), "the rest is scored as if the poison had never come"
    assert len(kafka.messages("telemetry")) == len(readings) + 1, "the poison is forwarded all the same"
    assert len(kafka.messages("maintenance")) == 1
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"{POISON} seq" in line and "OverflowError" in line for line in lines)
    assert any("wo-1 cannot be applied" in line for line in lines)


def test_a_stopping_edge_sends_the_pipeline_stats_of_its_last_interval(tmp_path: Path) -> None:
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    readings = fleet(2, 10, hot_every=0)
    with EdgeGateway(seeded(tmp_path, stats_interval_s=3600), mqtt=mqtt, producer=FakeProducer(kafka)) as gw:
        mids = [mqtt.deliver(t, p).mid for t, p in mqtt_messages(readings)]
        run_until(gw, lambda: mqtt.acks == mids)
        assert not kafka.messages(gw.topics.pipeline), "the interval has not ended yet"
    assert stats_total(kafka, gw) == outcomes(gw)
    assert sum(outcomes(gw).values()) == len(readings)
