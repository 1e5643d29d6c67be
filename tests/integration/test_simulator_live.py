"""The simulator against a real Mosquitto (and Kafka for history --to-kafka)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from forewarn.cli import cli
from forewarn.contract import Decoder, MaintenanceEvent, Rejected, Telemetry
from forewarn.kafka import KafkaConsumer
from forewarn.mqtt import MqttClient, MqttMessage
from forewarn.settings import TopicSettings
from forewarn.topics import Topics
from simulators.faults import FaultConfig
from simulators.fleet import FleetConfig
from simulators.live import run_live
from simulators.messages import Delivery, MessageBuilder
from tests.stacks import RunningStack

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka

decoder = Decoder()


class Subscriber:
    """Collects everything under forewarn/# at QoS 1."""

    def __init__(self, stack: RunningStack) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.mqtt = MqttClient(stack.mqtt_settings, f"sub-{uuid.uuid4().hex[:8]}", on_message=self._on_message)

    def _on_message(self, message: MqttMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def start(self) -> None:
        self.mqtt.connect()
        self.mqtt.subscribe(["forewarn/#"], qos=1)
        probe = f"forewarn/probe/{uuid.uuid4().hex[:8]}/telemetry"
        self.mqtt.publish(probe, b"probe", qos=1)
        self.wait_for(lambda: any(t == probe for t, _ in self.messages), 10)
        with self._lock:
            self.messages.clear()

    def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()

    def count(self) -> int:
        with self._lock:
            return len(self.messages)


@pytest.fixture
def subscriber(stack: RunningStack) -> Iterator[Subscriber]:
    sub = Subscriber(stack)
    sub.start()
    try:
        yield sub
    finally:
        sub.mqtt.disconnect()


def decode_all(messages: list[tuple[str, bytes]]) -> tuple[list[Telemetry], list[Rejected], list[MaintenanceEvent]]:
    readings: list[Telemetry] = []
    rejected: list[Rejected] = []
    events: list[MaintenanceEvent] = []
    for topic, payload in messages:
        if topic.endswith("/maintenance"):
            event = decoder.maintenance(payload)
            assert isinstance(event, MaintenanceEvent), event
            events.append(event)
        elif topic.endswith("/batch"):
            _, good, bad = decoder.batch(payload)
            readings += good
            rejected += bad
        else:
            reading = decoder.telemetry(payload)
            if isinstance(reading, Rejected):
                rejected.append(reading)
            else:
                assert topic == f"forewarn/{reading.machine_id}/telemetry"
                readings.append(reading)
    return readings, rejected, events


@pytest.mark.parametrize("delivery", ["single", "batch"])
def test_live_qos1_every_message_arrives_and_decodes(stack: RunningStack, subscriber: Subscriber,
                                                    delivery: Delivery) -> None:
    config = FleetConfig(machines=40, sites=2, stagger=True, seed=21, start_ms=1_767_225_600_000)
    client = MqttClient(stack.mqtt_settings, f"sim-{uuid.uuid4().hex[:8]}")
    client.connect()
    try:
        summary = run_live(config, client, qos=1, speed=0, ticks=40, delivery=delivery, batch_size=25)
    finally:
        client.disconnect()
    assert summary.unacked == 0
    assert subscriber.wait_for(lambda: subscriber.count() >= summary.messages, 30)
    readings, rejected, events = decode_all(subscriber.messages)
    assert not rejected
    assert len(readings) == summary.readings == summary.report.readings > 0.9 * 40 * 2 * 40
    assert len(events) == summary.failures + summary.repairs > 0
    assert len({(r.machine_id, r.seq) for r in readings}) == len(readings)
    if delivery == "batch":
        batches = [t for t, _ in subscriber.messages if t.endswith("/batch")]
        assert set(batches) == {"forewarn/site-01/gateway/gw-1/batch", "forewarn/site-02/gateway/gw-1/batch"}


def test_live_faults_reach_the_broker_as_reported(stack: RunningStack, subscriber: Subscriber) -> None:
    faults = FaultConfig(missing=0.02, non_finite=0.01, duplicate=0.02, out_of_order=0.02, malformed=0.03,
                         burst=0.002, clock_skew=0.1)
    config = FleetConfig(machines=50, seed=5, stagger=True, start_ms=1_767_225_600_000)
    client = MqttClient(stack.mqtt_settings, f"sim-{uuid.uuid4().hex[:8]}")
    client.connect()
    try:
        summary = run_live(config, client, qos=1, speed=0, ticks=60, builder_factory=lambda sink, ids: MessageBuilder(
            sink, ids, faults=faults, seed=5, delivery="batch", batch_size=50))
    finally:
        client.disconnect()
    assert subscriber.wait_for(lambda: subscriber.count() >= summary.messages, 30)
    readings, rejected, _ = decode_all(subscriber.messages)
    report = summary.report
    assert Counter(r.reason.value for r in rejected) == Counter(report.expected_rejections)
    assert len(readings) == report.to_dict()["expected_valid_readings"]
    keys = Counter((r.machine_id, r.seq) for r in readings)
    assert sum(n - 1 for n in keys.values()) == report.injected["duplicate"]


def test_sigterm_stops_cleanly_after_acknowledgements(stack: RunningStack, subscriber: Subscriber,
                                                      tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {**os.environ, "FOREWARN_MQTT__PORT": str(stack.mqtt_port), "FOREWARN_MQTT__HOST": "127.0.0.1"}
    command = [sys.executable, "-c", "from forewarn.cli import main; main()", "simulate", "live",
               "--machines", "200", "--sample-period-s", "1", "--speed", "20", "--report", str(report),
               "--progress-s", "0.5"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert subscriber.wait_for(lambda: subscriber.count() > 2000, 30), process.stderr
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "0 unacknowledged" in err
    data = json.loads(report.read_text())
    # Everything the simulator published was acknowledged, so the broker delivers all of it.
    assert subscriber.wait_for(lambda: subscriber.count() >= data["messages"], 30)
    assert subscriber.count() == data["messages"]
    readings, rejected, _ = decode_all(subscriber.messages)
    assert not rejected and len(readings) == data["readings_sent"]
    # A run is a restart of its devices: one new boot epoch on every reading, seq from 0, and a
    # simulated clock that starts --behind-h (24) hours back and never runs ahead of the wall clock.
    assert len({r.boot for r in readings}) == 1 and readings[0].boot is not None
    assert min(r.seq for r in readings) == 0
    now_s = time.time()
    assert now_s - 24 * 3600 - 60 < min(r.ts for r in readings) / 1000 < max(r.ts for r in readings) / 1000 <= now_s


def test_history_to_kafka(stack: RunningStack, fresh_topics: Callable[..., tuple[TopicSettings, Topics]]) -> None:
    settings, topics = fresh_topics()
    env = {"FOREWARN_KAFKA__BOOTSTRAP_SERVERS": stack.bootstrap, "FOREWARN_TOPICS__PREFIX": settings.prefix}
    result = CliRunner().invoke(cli, ["simulate", "history", "--to-kafka", "--machines", "4", "--asset-type",
                                      "motor", "--seed", "2"], env=env)
    assert result.exit_code == 0, result.output
    readings_expected = int(result.output.split(" readings")[0].split()[-1])
    consumer = KafkaConsumer(stack.kafka_settings, f"g-{uuid.uuid4().hex}", [topics.telemetry, topics.maintenance])
    got: list[tuple[str, bytes | None, bytes | None]] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < readings_expected + 4 and time.monotonic() < deadline:
            got += [(m.topic(), m.key(), m.value()) for m in consumer.consume(500, 0.5)]
    finally:
        consumer.close()
    telemetry = [decoder.telemetry(v or b"") for t, _, v in got if t == topics.telemetry]
    events = [decoder.maintenance(v or b"") for t, _, v in got if t == topics.maintenance]
    assert len(telemetry) == readings_expected and all(isinstance(r, Telemetry) for r in telemetry)
    assert len(events) == 4 and all(isinstance(e, MaintenanceEvent) and e.event == "failure" for e in events), (
        result.output, events)
    assert all(k == (v and decoder.telemetry(v).machine_id.encode())  # type: ignore[union-attr]
               for t, k, v in got if t == topics.telemetry)




def test_replay_cli_publishes_a_history_file(stack: RunningStack, subscriber: Subscriber, tmp_path: Path) -> None:
    out = tmp_path / "h"
    result = CliRunner().invoke(cli, ["simulate", "history", "--machines", "3", "--asset-type", "pump",
                                      "--runs", "2", "--format", "csv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    env = {"FOREWARN_MQTT__PORT": str(stack.mqtt_port)}
    report = tmp_path / "replay.json"
    result = CliRunner().invoke(cli, ["simulate", "replay", str(out / "readings.csv"), "--rate", "0", "--delivery",
                                      "batch", "--report", str(report)], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["events"] == 3 * 3  # failure, repair, failure per machine, from events.csv next to the file
    assert subscriber.wait_for(lambda: subscriber.count() >= data["messages"], 30)
    readings, rejected, events = decode_all(subscriber.messages)
    rows = (out / "readings.csv").read_text().count("\n") - 1
    assert not rejected and len(readings) == rows == data["readings_sent"]
    assert sorted(e.event for e in events) == ["failure"] * 6 + ["repair"] * 3


def test_live_rides_out_a_broker_restart(stack: RunningStack, subscriber: Subscriber) -> None:
    config = FleetConfig(machines=20, sample_period_s=1.0, stagger=True, seed=3)
    client = MqttClient(stack.mqtt_settings, f"sim-{uuid.uuid4().hex[:8]}")
    client.connect()
    stop = threading.Event()
    result: list[object] = []

    def work() -> None:
        try:
            result.append(run_live(config, client, qos=1, speed=20, stop=stop))
        except BaseException as error:
            result.append(error)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        assert subscriber.wait_for(lambda: subscriber.count() > 200, 30)
        stack.restart_mosquitto()
        before = subscriber.count()
        assert subscriber.wait_for(lambda: subscriber.count() > before + 200, 60), "no traffic after the restart"
    finally:
        stop.set()
        worker.join(60)
        client.disconnect()
    summary = result[0]
    assert not isinstance(summary, BaseException), repr(summary)
    assert summary.unacked == 0  # type: ignore[attr-defined]
