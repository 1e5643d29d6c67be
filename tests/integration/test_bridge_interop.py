"""The bridge against clients and brokers no one here wrote (mosquitto_pub, kcat, Mosquitto's $SYS
counters, aedes, Moquette, HiveMQ), and hostile payloads through the real broker."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.broker_watch import DROPPED, STORED_MESSAGES, BrokerWatch, QueueCaps
from bridge.metrics import BridgeMetrics
from forewarn.contract import Reason
from forewarn.mqtt import MqttClient
from forewarn.settings import MqttSettings, StackSettings, TopicSettings
from forewarn.stack import Mosquitto
from forewarn.topics import Topics, telemetry_topic
from tests.bridge.helpers import BridgeProcess, consume_records, publish_all, reading, reading_bytes, wait_until
from tests.brokers import MqttBrokerUnderTest, until_routed
from tests.stacks import RunningStack, free_port

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka


@contextlib.contextmanager
def _bridge_on(stack: RunningStack, mqtt: MqttSettings, fresh_topics: Callable[..., tuple[TopicSettings, Topics]],
               tmp_path: Path) -> Iterator[tuple[BridgeProcess, Topics]]:
    """A bridge process from ``mqtt`` to fresh topics on the session's Kafka, stopped cleanly after."""
    settings, topics = fresh_topics()
    group = f"g{uuid.uuid4().hex[:6]}"
    bridge = BridgeProcess(tmp_path / "bridge.log", stack.kafka_settings, mqtt, settings.prefix,
                           f"interop-{group}", group).wait_ready()
    try:
        yield bridge, topics
    finally:
        assert bridge.stop() == 0, bridge.log()


@pytest.fixture
def running_bridge(stack: RunningStack, fresh_topics: Callable[..., tuple[TopicSettings, Topics]],
                   tmp_path: Path) -> Iterator[tuple[BridgeProcess, Topics]]:
    with _bridge_on(stack, stack.mqtt_settings, fresh_topics, tmp_path) as running:
        yield running


def _hostile_payloads() -> list[tuple[bytes, set[str]]]:
    """(payload, acceptable reasons), drawn by Hypothesis: random bytes, wrong types, NaN, huge, deep."""
    drawn: list[tuple[bytes, set[str]]] = []
    base = reading("site-h/m1", 1)

    @given(st.binary(min_size=1, max_size=300).filter(lambda b: not b.lstrip().startswith(b"{")))
    @settings(max_examples=40, database=None, suppress_health_check=list(HealthCheck))
    def random_bytes(raw: bytes) -> None:
        drawn.append((raw, {"not_json", "not_object", "wrong_type", "non_finite"}))

    @given(st.sampled_from(["ts", "seq", "sensors", "v"]), st.one_of(st.text(max_size=4), st.booleans(),
                                                                      st.lists(st.integers(), max_size=2)))
    @settings(max_examples=30, database=None, suppress_health_check=list(HealthCheck))
    def wrong_types(name: str, value: object) -> None:
        drawn.append((json.dumps({**base, name: value}).encode(), {"wrong_type", "unknown_version"}))

    @given(st.sampled_from([math.nan, math.inf, -math.inf]), st.sampled_from(["sensors", "settings"]))
    @settings(max_examples=10, database=None, suppress_health_check=list(HealthCheck))
    def non_finite(value: float, where: str) -> None:
        drawn.append((json.dumps({**base, where: {"x": value}}).encode(), {"non_finite"}))

    @given(st.integers(min_value=17_000, max_value=400_000))
    @settings(max_examples=5, database=None, suppress_health_check=list(HealthCheck))
    def huge(size: int) -> None:
        drawn.append((json.dumps({**base, "asset_type": "x" * size}).encode(), {"too_large"}))

    @given(st.integers(min_value=100, max_value=3000))
    @settings(max_examples=5, database=None, suppress_health_check=list(HealthCheck))
    def deep(depth: int) -> None:
        drawn.append((b"[" * depth + b"]" * depth, {"not_object", "too_large", "wrong_type"}))

    for draw in (random_bytes, wrong_types, non_finite, huge, deep):
        draw()
    return drawn


def test_hostile_payloads_through_the_broker_all_reach_the_dlq_with_their_reason(
        stack: RunningStack, running_bridge: tuple[BridgeProcess, Topics]) -> None:
    bridge, topics = running_bridge
    payloads = _hostile_payloads()
    topic = telemetry_topic("site-h/m1")
    publish_all(stack.mqtt_settings, [(topic, raw) for raw, _r in payloads])
    publish_all(stack.mqtt_settings, [(topic, reading_bytes("site-h/m1", 1))])  # and a good one after them
    records = consume_records(stack.kafka_settings, topics.dlq, len(payloads), timeout_s=60)
    assert bridge.process.poll() is None, "the bridge is still running"
    found: dict[bytes, list[str]] = {}
    for record in records:
        found.setdefault(record.value(), []).append(dict(record.headers())["reason"].decode())
    for raw, reasons in payloads:
        assert raw in found, f"missing from the DLQ: {raw[:80]!r}"
        assert all(r in reasons and r in {x.value for x in Reason} for r in found[raw]), (raw[:80], found[raw])
    assert len(consume_records(stack.kafka_settings, topics.telemetry, 1)) == 1


@pytest.mark.skipif(not (shutil.which("mosquitto_pub") and shutil.which("kcat")),
                    reason="needs mosquitto_pub (mosquitto-clients) and kcat on PATH")
# Not on Moquette: as in test_bridge_faults.
@pytest.mark.parametrize("mqtt_broker", ["mosquitto", "aedes", "hivemq"], indirect=True)
def test_mosquitto_pub_reading_arrives_in_telemetry_as_read_by_kcat(
        stack: RunningStack, mqtt_broker: MqttBrokerUnderTest,
        fresh_topics: Callable[..., tuple[TopicSettings, Topics]], tmp_path: Path) -> None:
    """On every broker: mosquitto_pub (MQTT 3.1.1, a client id of its own: Moquette refuses an
    empty one) publishes, the bridge (protocol auto) forwards, kcat reads."""
    mqtt = mqtt_broker.mqtt_settings
    with _bridge_on(stack, mqtt, fresh_topics, tmp_path) as (_bridge, topics):
        until_routed(stack.kafka_settings, mqtt, topics.maintenance)
        _mosquitto_pub_and_kcat(stack, mqtt, topics)


def _mosquitto_pub_and_kcat(stack: RunningStack, mqtt: MqttSettings, topics: Topics) -> None:
    good = reading_bytes("site-q/m7", 42)
    pub = ["mosquitto_pub", "-h", mqtt.host, "-p", str(mqtt.port), "-V", "mqttv311", "-i",
           f"pub-{uuid.uuid4().hex[:8]}", "-q", "1", "-t"]
    subprocess.run([*pub, telemetry_topic("site-q/m7"), "-m", good.decode()], check=True, timeout=10)
    subprocess.run([*pub, telemetry_topic("site-q/m7"), "-m", "{not json"], check=True, timeout=10)

    def kcat(topic: str) -> str:
        deadline = time.monotonic() + 30
        while True:  # -e stops at the end of the topic: ask again until the bridge's record is there
            out = subprocess.run(["kcat", "-C", "-b", stack.bootstrap, "-t", topic, "-o", "beginning", "-c", "1",
                                  "-e", "-q", "-f", "%k|%T|%h|%s\n"], capture_output=True, text=True, check=True,
                                 timeout=60).stdout
            if out.strip() or time.monotonic() > deadline:
                return out
            time.sleep(0.3)

    key, ts, headers, value = kcat(topics.telemetry).strip().split("|", 3)
    assert (key, int(ts), json.loads(value)) == ("site-q/m7", json.loads(good)["ts"], json.loads(good))
    assert "ingest_ts=" in headers
    key, _ts, headers, value = kcat(topics.dlq).strip().split("|", 3)
    assert value == "{not json" and "reason=not_json" in headers
    assert "mqtt_topic=forewarn/site-q/m7/telemetry" in headers


@pytest.fixture
def small_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of its own, generated by forewarn.stack with a queue cap of 500 messages per
    client and $SYS counters every second."""
    broker = Mosquitto(StackSettings(home=tmp_path / "mq", max_queued_messages=500, sys_interval_s=1), free_port())
    broker.start()
    try:
        broker.wait_ready(30)
        yield broker
    finally:
        broker.stop()


def watch_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bridge.broker_watch"]


def test_queue_watch_warns_near_mosquittos_cap_and_reports_what_it_drops(
        small_mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    mqtt = small_mosquitto.mqtt_settings()
    metrics = BridgeMetrics()
    watch = BrokerWatch(mqtt, f"watch-{uuid.uuid4().hex[:6]}", QueueCaps(500, 1 << 30, 0.8), metrics)
    # A persistent session that is away: Mosquitto queues for it, up to the cap, then drops.
    away = MqttClient(mqtt, f"away-{uuid.uuid4().hex[:6]}", clean_start=False, session_expiry_s=600)
    away.connect()
    away.subscribe(["cap-test/#"], qos=1)
    away.disconnect()

    def sample(name: str) -> float:
        return metrics.registry.get_sample_value(name) or 0.0

    with caplog.at_level(logging.WARNING, logger="bridge.broker_watch"):
        watch.start()
        try:
            assert watch.connected.wait(15)
            assert wait_until(lambda: {STORED_MESSAGES, DROPPED} <= watch.levels.seen, 15, 0.1)
            # (only the watch's own: the away client's paho thread may log its disconnect)
            assert watch_records(caplog) == [], "nothing queued yet: no warning"
            publish_all(mqtt, [(f"cap-test/{i % 5}", b"%d" % i) for i in range(1000)])
            assert wait_until(lambda: sample("forewarn_bridge_mqtt_broker_dropped_messages") > 0, 15, 0.1)
            assert wait_until(lambda: sample("forewarn_bridge_mqtt_broker_queue_near_cap") == 1, 15, 0.1)
        finally:
            watch.stop()
    assert sample("forewarn_bridge_mqtt_broker_stored_messages") >= 400
    levels = {r.levelno for r in watch_records(caplog)}
    assert levels == {logging.WARNING, logging.ERROR}, caplog.text
    assert "per-client cap of 500 (max_queued_messages)" in caplog.text
    assert "what it dropped for the bridge is lost" in caplog.text
