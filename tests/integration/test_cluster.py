"""The local stack as a three-node KRaft cluster, through the real CLI: up, replicated topics,
the leader of a partition killed with kill -9 under acknowledged writes and started again,
down, up again with the data kept, and a home that refuses another cluster size."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import confluent_kafka
import pytest

from forewarn.kafka import KafkaAdmin, KafkaConsumer, KafkaProducer
from forewarn.settings import KafkaSettings, MqttSettings, StackSettings, TopicSettings
from forewarn.stack import LocalStack
from forewarn.topics import topic_specs
from tests.stacks import JAR_CACHE, forewarn_cli, free_port, free_ports

pytestmark = pytest.mark.integration  # three real Kafka nodes and Mosquitto

NODES = 3
TOPIC = "c.telemetry"


def _produce(settings: KafkaSettings, start: int, count: int) -> list[int]:
    """Produce ``count`` numbered records (acks=all); the numbers Kafka acknowledged."""
    acked: list[int] = []

    def on_delivery(error: confluent_kafka.KafkaError | None, message: confluent_kafka.Message) -> None:
        if error is None:
            acked.append(int(message.value() or b"-1"))

    with KafkaProducer(settings) as producer:
        for n in range(start, start + count):
            producer.produce(TOPIC, str(n).encode(), key=f"site/m{n % 17}", on_delivery=on_delivery)
        assert producer.flush(60) == 0
    return acked


def _read_all(settings: KafkaSettings, expect: int, timeout_s: float = 60) -> list[int]:
    consumer = KafkaConsumer(settings, f"g-{uuid.uuid4().hex}", [TOPIC])
    got: list[int] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expect and time.monotonic() < deadline:
            got.extend(int(m.value()) for m in consumer.consume(500, 0.5))
    finally:
        consumer.close()
    return got


def test_three_node_cluster_keeps_acknowledged_writes_through_kill_9(tmp_path: Path) -> None:
    base, mqtt_port = free_ports(2 * NODES), free_port()  # node i: base + 2(i-1), controller + 1
    home = tmp_path / "home"
    env = {"FOREWARN_STACK__HOME": str(home), "FOREWARN_STACK__CACHE_DIR": str(JAR_CACHE),
           "FOREWARN_STACK__KAFKA_HEAP": "512m", "FOREWARN_STACK__CONTROLLER_PORT": str(base + 1),
           "FOREWARN_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{base}", "FOREWARN_MQTT__PORT": str(mqtt_port),
           "FOREWARN_TOPICS__PREFIX": "c.", "FOREWARN_TOPICS__PARTITIONS": "3"}
    bootstrap = ",".join(f"127.0.0.1:{base + 2 * i}" for i in range(NODES))
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    up = forewarn_cli(["stack", "up", "--brokers", str(NODES)], env, timeout=300)
    local = LocalStack(StackSettings(home=home, cache_dir=JAR_CACHE, controller_port=base + 1),
                       KafkaSettings(bootstrap_servers=f"127.0.0.1:{base}"), MqttSettings(port=mqtt_port))
    try:
        assert up.returncode == 0, up.stderr
        assert [node.name for node in local.kafka_nodes] == ["kafka-1", "kafka-2", "kafka-3"]  # the home's
        assert f"--bootstrap-servers {bootstrap}" in up.stdout
        status = forewarn_cli(["stack", "status"], env)  # sees the three nodes without being told
        assert status.returncode == 0, status.stdout
        assert all(f"kafka-{i}" in status.stdout for i in range(1, NODES + 1)) and "node 3 of 3" in status.stdout

        created = forewarn_cli(["topics", "create"], env)
        assert created.returncode == 0, created.stdout + created.stderr
        assert "3 replica(s), min.insync 2" in created.stdout
        admin = KafkaAdmin(settings)
        partitions = admin.ping().topics[TOPIC].partitions
        assert all(len(p.replicas) == NODES for p in partitions.values())
        assert admin.topic_configs([TOPIC])[TOPIC]["min.insync.replicas"] == "2"

        first = _produce(settings, 0, 2_000)
        victim = local.kafka_nodes[partitions[0].leader - 1]
        victim.process.kill()  # kill -9 the leader of partition 0
        down = forewarn_cli(["stack", "status"], env)
        assert down.returncode == 1 and f"{victim.name:10} DOWN" in down.stdout
        second = _produce(settings, 2_000, 2_000)  # two of three in sync: writes are still acknowledged
        assert sorted(first + second) == list(range(4_000))
        specs = [s for s in topic_specs(TopicSettings(prefix="c.", partitions=3)) if s.name == TOPIC]
        assert all(c.ok for c in admin.ensure_topics(specs)), "one node down leaves min.insync.replicas met"

        again = forewarn_cli(["stack", "up"], env, timeout=300)  # starts only the killed node
        assert again.returncode == 0, again.stderr
        assert again.stderr.count("starting kafka-") == 1 and f"starting {victim.name}" in again.stderr
        assert sorted(_read_all(settings, 4_000)) == list(range(4_000))  # every acknowledged write, once

        assert forewarn_cli(["stack", "down"], env).returncode == 0
        assert not any(node.process.pid() for node in local.kafka_nodes)
        other = forewarn_cli(["stack", "up", "--brokers", "2"], env, timeout=120)
        errors = [line for line in other.stderr.splitlines() if line.startswith("error:")]
        assert other.returncode == 2 and len(errors) == 1 and "was made with 3 node(s), not 2" in errors[0]
        assert "Traceback" not in other.stderr and not local.mosquitto.process.pid()  # what it started, it stopped
        back = forewarn_cli(["stack", "up"], env, timeout=300)  # the home's three nodes, data kept
        assert back.returncode == 0, back.stderr
        assert sorted(_read_all(settings, 4_000)) == list(range(4_000))
    finally:
        forewarn_cli(["stack", "down"], env)
    assert not any(node.process.pid() for node in local.kafka_nodes)
