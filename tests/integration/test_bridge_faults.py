"""The bridge's guarantees with real processes: kill -9 (on Mosquitto, aedes and HiveMQ), Kafka
away, two bridges sharing the load.

Sizes: ``FOREWARN_BRIDGE_TEST_MESSAGES`` messages per test (default 10,000 to keep the suite
short on a small machine; the issue's 50,000 with ``FOREWARN_BRIDGE_TEST_MESSAGES=50000``).
"""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from forewarn.kafka import KafkaAdmin
from forewarn.settings import TopicSettings
from forewarn.topics import Topics, topic_specs
from tests.bridge.helpers import (
    BridgeProcess,
    count_telemetry,
    publish_all,
    single_load,
    topic_size,
    wait_until,
)
from tests.brokers import MqttBrokerUnderTest, until_routed
from tests.stacks import RunningStack, free_port

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka

N = int(os.environ.get("FOREWARN_BRIDGE_TEST_MESSAGES", "10000"))


def _ids(load: list[tuple[str, bytes, tuple[str, int]]]) -> set[tuple[str, int]]:
    return {ident for _t, _p, ident in load}


def _publish_in_background(mqtt: object, load: list[tuple[str, bytes, tuple[str, int]]]) -> threading.Thread:
    thread = threading.Thread(target=publish_all, args=(mqtt, [(t, p) for t, p, _i in load]), daemon=True)
    thread.start()
    return thread


def _report(seen: dict[tuple[str, int], int], expected: set[tuple[str, int]]) -> tuple[int, int]:
    missing = expected - seen.keys()
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    print(f"expected {len(expected)}, distinct seen {len(seen)}, lost {len(missing)}, duplicates {duplicates}"
          + (f"; lost for example {sorted(missing)[:10]}" if missing else ""))
    return len(missing), duplicates


# Not on Moquette: Moquette 0.17 itself loses a QoS 1 message now and then around a reconnect (packet
# ids reused across connections, no re-send at reconnect; see bridge/README.md, MQTT brokers).
@pytest.mark.parametrize("mqtt_broker", ["mosquitto", "aedes", "hivemq"], indirect=True)
def test_kill_9_while_messages_are_in_flight_loses_nothing(
        stack: RunningStack, mqtt_broker: MqttBrokerUnderTest,
        fresh_topics: Callable[..., tuple[TopicSettings, Topics]], tmp_path: Path) -> None:
    """On every broker, with the bridge's default protocol "auto" (3.1.1 where the broker speaks
    nothing else) and its shared subscription (a plain one where the broker has none)."""
    settings, topics = fresh_topics()
    mqtt = mqtt_broker.mqtt_settings
    group, client_id = f"g{uuid.uuid4().hex[:6]}", f"kill9-{uuid.uuid4().hex[:6]}"
    load = single_load(machines=50, per_machine=N // 50)
    expected = _ids(load)
    args = (tmp_path / "bridge.log", stack.kafka_settings, mqtt, settings.prefix, client_id, group)
    first = BridgeProcess(*args).wait_ready()
    until_routed(stack.kafka_settings, mqtt, topics.maintenance)
    publisher = _publish_in_background(mqtt, load)
    try:
        third = wait_until(lambda: topic_size(stack.kafka_settings, topics.telemetry) >= len(load) // 3, 60, 0.05)
    finally:
        first.kill9()  # mid-stream: records produced but not acknowledged, messages arriving
    assert third, f"{mqtt_broker.name}: a third of the load not in Kafka after 60 s\n{first.log()}\n{mqtt_broker.log()}"
    killed_at = topic_size(stack.kafka_settings, topics.telemetry)
    publisher.join(120)
    second = BridgeProcess(*args).wait_ready()
    try:
        seen = count_telemetry(stack.kafka_settings, topics.telemetry, expected, timeout_s=120)
    finally:
        assert second.stop() == 0, second.log()
    print(f"{mqtt_broker.name}: killed after {killed_at} records in Kafka")
    lost, _dups = _report(seen, expected)
    # Where the broker speaks MQTT 5 and shares subscriptions (Mosquitto, HiveMQ), "auto" used both.
    logs = second.log()  # both bridges write to the same file
    assert "5" not in mqtt_broker.protocols or "refused MQTT 5" not in logs, logs
    assert not mqtt_broker.shared_subscriptions or "lacks shared subscriptions" not in logs, logs
    assert killed_at < len(load), "the kill came too late to test anything"
    assert lost == 0


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.MULTILINE)
    return sum(float(v) for v in found)


def test_two_bridges_split_a_shared_subscription_and_lose_nothing_when_one_is_killed(
        stack: RunningStack, fresh_topics: Callable[..., tuple[TopicSettings, Topics]], tmp_path: Path) -> None:
    settings, topics = fresh_topics()
    group = f"g{uuid.uuid4().hex[:6]}"
    ports = [free_port(), free_port()]
    common = (stack.kafka_settings, stack.mqtt_settings, settings.prefix)
    a_args = (tmp_path / "a.log", *common, f"a-{group}", group, "--metrics-port", str(ports[0]))
    b_args = (tmp_path / "b.log", *common, f"b-{group}", group, "--metrics-port", str(ports[1]))
    a, b = BridgeProcess(*a_args).wait_ready(), BridgeProcess(*b_args).wait_ready()
    load = single_load(machines=40, per_machine=N // 40, site="site-c")
    expected = _ids(load)
    publisher = _publish_in_background(stack.mqtt_settings, load)
    assert wait_until(lambda: topic_size(stack.kafka_settings, topics.telemetry) >= len(load) // 3, 60, 0.05)
    # The bridges publish their counters once per round: wait until b's show it took a share.
    assert wait_until(lambda: _metric(ports[1], "forewarn_bridge_received_total") > 0, 15, 0.05), b.log()
    received_by_b = _metric(ports[1], "forewarn_bridge_received_total")
    b.kill9()
    publisher.join(120)
    # While b is away its session keeps what the broker gave it; b comes back with the same id.
    time.sleep(1)
    b = BridgeProcess(*b_args).wait_ready()
    try:
        seen = count_telemetry(stack.kafka_settings, topics.telemetry, expected, timeout_s=120)
        received_by_a = _metric(ports[0], "forewarn_bridge_received_total")
    finally:
        assert a.stop() == 0, a.log()
        assert b.stop() == 0, b.log()
    print(f"a received {received_by_a:.0f}, b received {received_by_b:.0f} before it was killed")
    assert 0 < received_by_a < len(load) and received_by_b > 0, "both bridges take a share"
    lost, _dups = _report(seen, expected)
    assert lost == 0


def test_kafka_stopped_for_30s_while_publishing_continues_loses_nothing(own_stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    local = own_stack
    settings = TopicSettings(prefix="k.", partitions=3)
    KafkaAdmin(local.kafka_settings).ensure_topics(topic_specs(settings))
    topics = Topics.from_settings(settings)
    bridge = BridgeProcess(tmp_path / "bridge.log", local.kafka_settings, local.mqtt_settings, settings.prefix,
                           "kafka-away", "gk").wait_ready()
    outage_s = float(os.environ.get("FOREWARN_BRIDGE_TEST_OUTAGE_S", "30"))
    load = single_load(machines=20, per_machine=max(1, N // 40), site="site-k")
    expected = _ids(load)
    rate_per_s = len(load) / (outage_s + 10)

    def paced() -> None:  # a steady stream from before the outage to after it
        start = time.monotonic()
        chunk = max(1, int(rate_per_s / 5))
        for i in range(0, len(load), chunk):
            time.sleep(max(0.0, start + i / rate_per_s - time.monotonic()))
            publish_all(local.mqtt_settings, [(t, p) for t, p, _i in load[i:i + chunk]])

    publisher = threading.Thread(target=paced, daemon=True)
    publisher.start()
    try:
        time.sleep(3)
        local.kafka.stop()
        stopped = time.monotonic()
        time.sleep(outage_s)
        local.kafka.start()
        local.kafka.wait_ready(90)
        print(f"Kafka was away {time.monotonic() - stopped:.0f}s")
        publisher.join(180)
        seen = count_telemetry(local.kafka_settings, topics.telemetry, expected, timeout_s=120)
    finally:
        code = bridge.stop()
    log = bridge.log()
    assert code == 0, log
    assert "waiting for Kafka" in log, log
    lost, _dups = _report(seen, expected)
    assert lost == 0
