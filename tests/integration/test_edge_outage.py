"""Edge acceptance tests with a real Mosquitto, a real Kafka and real ``forewarn edge`` processes.

The outage test stops the Kafka of a private stack (never the shared session one). Its size
comes from the environment: ``FOREWARN_EDGE_TEST_READINGS`` (default 4,000) and
``FOREWARN_EDGE_TEST_OUTAGE_S`` (default 20); the issue's full size is 20000 and 60.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from forewarn.bundle import pack, write_bundle
from forewarn.contract import Alert, Prediction, Telemetry
from forewarn.kafka import KafkaAdmin
from forewarn.settings import KafkaSettings, TopicSettings
from forewarn.stack import LocalStack
from forewarn.topics import Topics, topic_specs
from scoring.engine import Incoming, ScoringEngine
from scoring.registry import ModelRegistry
from scoring.settings import ScoringOptions
from tests.edge.helpers import edge_bundle, fleet, mqtt_messages
from tests.edge.procs import EdgeProcess, LocalScreen, identities, out_of_order, publish_paced, read_topic
from tests.scoring.bundle_factory import TEST_TRUST
from tests.scoring.procs import publish_model
from tests.stacks import RunningStack, free_port

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka

READINGS = int(os.environ.get("FOREWARN_EDGE_TEST_READINGS", "4000"))
OUTAGE_S = float(os.environ.get("FOREWARN_EDGE_TEST_OUTAGE_S", "20"))
MACHINES = 50

_prediction = msgspec.json.Decoder(Prediction)
_alert = msgspec.json.Decoder(Alert)


def reference(readings: list[Telemetry]) -> tuple[set[tuple[str, int]], set[tuple[str, str, int]]]:
    """Predictions (machine, seq) and alert events (alert_id, state, ts) of an uninterrupted run."""
    registry = ModelRegistry(threads=1, trust=TEST_TRUST)
    registry.offer_bundle(edge_bundle())
    engine = ScoringEngine(registry, ScoringOptions())
    result = engine.process([Incoming(r, 0) for r in readings], [])
    predictions = {(m, _prediction.decode(v).seq) for m, v in result.predictions}
    return predictions, {(a.alert_id, a.state, a.ts) for a in result.alerts}


def report(what: str, seen: dict[tuple[str, int], int], expected: set[tuple[str, int]]) -> tuple[int, int]:
    lost = len(expected - seen.keys())
    extra = len(seen.keys() - expected)
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    print(f"{what}: expected {len(expected)}, distinct {len(seen)}, lost {lost}, unexpected {extra}, "
          f"duplicates {duplicates}")
    return lost + extra, duplicates


def test_kafka_away_with_kill_9_loses_nothing_and_keeps_local_alerts(own_stack: LocalStack, tmp_path: Path) -> None:
    local = own_stack
    settings = TopicSettings(prefix="edge.", partitions=3)
    KafkaAdmin(local.kafka_settings).ensure_topics(topic_specs(settings))
    topics = Topics.from_settings(settings)
    seed = tmp_path / "seed"
    bundle = edge_bundle()
    write_bundle(seed, bundle.meta, bundle.onnx, make_current=True, release=bundle.release)
    readings = fleet(MACHINES, READINGS // MACHINES)
    expected_readings = {(r.machine_id, r.seq) for r in readings}
    expected_predictions, expected_alerts = reference(readings)
    screen = LocalScreen(local.mqtt_settings)
    edge = EdgeProcess(tmp_path / "edge.log", local.kafka_settings, local.mqtt_settings, settings, tmp_path / "data",
                       "--models-dir", str(seed), "--no-models-sync", "--shutdown-timeout", "5").start()
    duration = OUTAGE_S + 10
    started = time.monotonic()
    publisher = publish_paced(local.mqtt_settings, mqtt_messages(readings), duration)
    try:
        time.sleep(3)
        local.kafka.stop()
        down_at = time.monotonic()
        time.sleep(OUTAGE_S / 2)
        edge.kill9()  # during the outage: everything it acknowledged must survive
        killed_at = time.monotonic()
        edge.start()
        time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))
        during = screen.count("prediction", down_at, time.monotonic())
        alerts_during = screen.count("alert", down_at, time.monotonic())
        local.kafka.start()
        local.kafka.wait_ready(120)
        up_at = time.monotonic()
        print(f"Kafka away {up_at - down_at:.0f}s; edge killed {killed_at - down_at:.0f}s into it; "
              f"{during} predictions and {alerts_during} alerts published locally meanwhile")
        publisher.join(duration + 120)
        telemetry = read_topic(local.kafka_settings, topics.telemetry, expect=len(readings), timeout_s=180)
        drained_at = time.monotonic()
        predictions = read_topic(local.kafka_settings, topics.predictions, expect=len(expected_predictions),
                                 timeout_s=60)
        alerts = read_topic(local.kafka_settings, topics.alerts, expect=len(expected_alerts), timeout_s=30)
    finally:
        code = edge.terminate()
        screen.close()
    log = edge.log()
    print(f"published over {duration:.0f}s from t0; readings drained to Kafka {drained_at - up_at:.1f}s after it "
          f"came back (t={drained_at - started:.0f}s)")
    assert code == 0, log[-3000:]
    assert during > 0, "local predictions continue while Kafka is away"
    assert alerts_during > 0, "local alerts continue while Kafka is away"
    assert "uplink down" in log and "uplink back" in log, log[-3000:]
    lost, _ = report("readings", identities(telemetry), expected_readings)
    assert lost == 0
    assert out_of_order(telemetry) == 0
    lost, _ = report("predictions", identities(predictions), expected_predictions)
    assert lost == 0
    assert out_of_order(predictions) == 0
    seen_alerts: dict[tuple[str, str, int], int] = {}
    for _p, _k, value in alerts:
        a = _alert.decode(value)
        seen_alerts[(a.alert_id, a.state, a.ts)] = seen_alerts.get((a.alert_id, a.state, a.ts), 0) + 1
    missing = expected_alerts - seen_alerts.keys()
    print(f"alerts: expected {len(expected_alerts)}, distinct {len(seen_alerts)}, lost {len(missing)}, "
          f"duplicates {sum(n - 1 for n in seen_alerts.values())}")
    assert not missing and seen_alerts.keys() <= expected_alerts


def test_starts_without_uplink_on_the_bundle_synced_to_disk(
        stack: RunningStack, fresh_topics: Callable[..., tuple[TopicSettings, Topics]], tmp_path: Path) -> None:
    settings, topics = fresh_topics()
    publish_model(stack.kafka_settings, topics, "pump", pack(edge_bundle("synced")))
    data = tmp_path / "data"
    first = EdgeProcess(tmp_path / "edge.log", stack.kafka_settings, stack.mqtt_settings, settings, data,
                        "--sites", "site-off", "--session-expiry", "60", client_id="edge-sync").start()
    deadline = time.monotonic() + 60
    while not (data / "models" / "pump" / "current").is_file():
        assert time.monotonic() < deadline, first.log()
        time.sleep(0.2)
    assert first.terminate() == 0, first.log()
    assert (data / "models" / "pump" / "current").read_text().strip() == "synced"
    nowhere = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    screen = LocalScreen(stack.mqtt_settings)
    offline = EdgeProcess(tmp_path / "offline.log", nowhere, stack.mqtt_settings, settings, data,
                          "--shutdown-timeout", "1", "--sites", "site-off", "--session-expiry", "60",
                          client_id="edge-offline").start()
    try:
        readings = fleet(5, 20, site="site-off")
        publish_paced(stack.mqtt_settings, mqtt_messages(readings), 1.0).join(60)
        expected, _alerts = reference(readings)
        deadline = time.monotonic() + 60
        while screen.count("prediction") < len(expected):
            assert time.monotonic() < deadline, offline.log()
            time.sleep(0.2)
    finally:
        code = offline.terminate()
        screen.close()
    log = offline.log()
    assert code == 0, log
    assert "pump=pump/synced" in log or "synced" in log, log
    assert "buffered records left for the next run" in log
