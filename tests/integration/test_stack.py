"""The local stack, for real: processes, persistence, and clients no one here wrote."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from forewarn.cli import cli
from forewarn.errors import KafkaError
from forewarn.kafka import KafkaAdmin, KafkaConsumer, KafkaProducer
from forewarn.mqtt import MqttClient
from forewarn.settings import KafkaSettings, TopicSettings
from forewarn.topics import topic_specs
from tests.stacks import JAR_CACHE, RunningStack, forewarn_cli, free_port

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka


def _consume_all(stack: RunningStack, topic: str, expect: int, timeout_s: float = 30) -> list[bytes]:
    consumer = KafkaConsumer(stack.kafka_settings, f"g-{uuid.uuid4().hex}", [topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expect and time.monotonic() < deadline:
            got.extend(m.value() for m in consumer.consume(500, 0.5))
    finally:
        consumer.close()
    return got


def test_topics_create_is_idempotent(stack: RunningStack) -> None:
    settings = TopicSettings(prefix=f"idem-{uuid.uuid4().hex[:6]}.", partitions=4)
    admin = KafkaAdmin(stack.kafka_settings)
    first = admin.ensure_topics(topic_specs(settings))
    second = admin.ensure_topics(topic_specs(settings))
    assert {c.action for c in first} == {"created"}
    assert {c.action for c in second} == {"exists"} and all(c.ok for c in second)
    wider = TopicSettings(prefix=settings.prefix, partitions=8)
    assert any(not c.ok and "partitions" in c.problems[0] for c in admin.ensure_topics(topic_specs(wider)))


def test_topics_create_reports_replication_that_cannot_hold(stack: RunningStack) -> None:
    settings = TopicSettings(prefix=f"isr-{uuid.uuid4().hex[:6]}.", partitions=2)
    admin = KafkaAdmin(stack.kafka_settings)
    assert all(c.spec.replication_factor == 1 and c.spec.min_insync == 1 for c in admin.ensure_topics(
        topic_specs(settings)))  # one broker: one replica, and writes are not refused
    telemetry = f"{settings.prefix}telemetry"
    admin.alter_topic_configs({telemetry: {"min.insync.replicas": "2"}})
    checks = {c.spec.name: c for c in admin.ensure_topics(topic_specs(settings))}
    assert checks[telemetry].problems == [
        "min.insync.replicas is 2 on 1 replica(s): every acks=all write is refused (NOT_ENOUGH_REPLICAS)"]
    assert all(c.ok for name, c in checks.items() if name != telemetry)
    result = CliRunner().invoke(cli, ["topics", "create"], env={
        "FOREWARN_KAFKA__BOOTSTRAP_SERVERS": stack.bootstrap, "FOREWARN_TOPICS__PREFIX": settings.prefix,
        "FOREWARN_TOPICS__PARTITIONS": "2"})
    assert result.exit_code == 1 and "NOT_ENOUGH_REPLICAS" in result.output
    three = TopicSettings(prefix=f"rf3-{uuid.uuid4().hex[:6]}.", replication_factor=3)
    with pytest.raises(KafkaError, match=r"wants 3 replicas but the cluster .* has 1 broker") as refused:
        admin.ensure_topics(topic_specs(three))
    assert refused.value.code == "INVALID_REPLICATION_FACTOR"


def test_cli_topics_create_against_the_stack(stack: RunningStack) -> None:
    env = {"FOREWARN_KAFKA__BOOTSTRAP_SERVERS": stack.bootstrap, "FOREWARN_TOPICS__PREFIX": "cli."}
    result = CliRunner().invoke(cli, ["topics", "create"], env=env)
    assert result.exit_code == 0, result.output
    assert "cli.models" in result.output and "compact" in result.output
    again = CliRunner().invoke(cli, ["topics", "create"], env=env)
    assert again.exit_code == 0 and "created" not in again.output


def test_qos1_message_for_offline_persistent_session_survives_mosquitto_restart(stack: RunningStack) -> None:
    topic = f"forewarn/s/{uuid.uuid4().hex[:8]}/telemetry"
    client_id = f"persist-{uuid.uuid4().hex[:8]}"
    received: list[bytes] = []
    got = threading.Event()

    def on_message(message: object) -> None:
        received.append(message.payload)  # type: ignore[attr-defined]
        got.set()

    sub = MqttClient(stack.mqtt_settings, client_id, clean_start=False, session_expiry_s=3600, on_message=on_message)
    sub.connect()
    sub.subscribe([topic], qos=1)
    time.sleep(0.3)
    sub.disconnect()  # offline; the session (and its subscription) stays on the broker

    with MqttClient(stack.mqtt_settings, f"pub-{uuid.uuid4().hex[:8]}") as pub:
        pub.publish(topic, b"while-you-were-away", qos=1).wait_for_publish(5)
    stack.restart_mosquitto()  # graceful restart writes the persistence file

    sub2 = MqttClient(stack.mqtt_settings, client_id, clean_start=False, session_expiry_s=3600, on_message=on_message)
    sub2.connect()
    try:
        assert got.wait(10), "queued QoS 1 message was lost across the broker restart"
        assert received == [b"while-you-were-away"]
    finally:
        sub2.disconnect()


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None or shutil.which("kcat") is None,
                    reason="needs mosquitto-clients and kcat (installed by .ci/run)")
def test_foreign_clients_interoperate(stack: RunningStack, fresh_topics: object) -> None:
    _settings, topics = fresh_topics()  # type: ignore[operator]
    # kcat → Kafka → our consumer
    payload = b'{"hello":"from kcat"}'
    subprocess.run(["kcat", "-b", stack.bootstrap, "-P", "-t", topics.telemetry, "-k", "site/m1"],
                   input=payload, check=True, timeout=30)
    assert payload in _consume_all(stack, topics.telemetry, 1)
    # our producer → Kafka → kcat
    with KafkaProducer(stack.kafka_settings) as producer:
        producer.produce(topics.alerts, b"to-kcat", key="site/m1")
    out = subprocess.run(["kcat", "-b", stack.bootstrap, "-C", "-t", topics.alerts, "-e", "-q", "-o", "beginning"],
                         capture_output=True, check=True, timeout=30)
    assert b"to-kcat" in out.stdout
    # mosquitto_pub → Mosquitto → our subscriber
    got = threading.Event()
    sub = MqttClient(stack.mqtt_settings, f"i-{uuid.uuid4().hex[:6]}", on_message=lambda m: got.set())
    sub.connect()
    sub.subscribe(["forewarn/x/y/telemetry"])
    time.sleep(0.3)
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(stack.mqtt_port), "-q", "1",
                    "-t", "forewarn/x/y/telemetry", "-m", "hi"], check=True, timeout=30)
    try:
        assert got.wait(10)
    finally:
        sub.disconnect()


def test_cli_stack_lifecycle_persists_data_and_leaves_no_process(tmp_path: Path) -> None:
    """A second stack, driven through the real CLI: up, status, produce, down, up, read, down."""
    env = {
        "FOREWARN_STACK__HOME": str(tmp_path / "home"),
        "FOREWARN_STACK__CACHE_DIR": str(JAR_CACHE),
        "FOREWARN_STACK__CONTROLLER_PORT": str(free_port()),
        "FOREWARN_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "FOREWARN_MQTT__PORT": str(free_port()),
    }
    up = forewarn_cli(["stack", "up"], env)
    assert up.returncode == 0, up.stderr
    try:
        assert forewarn_cli(["topics", "create"], env).returncode == 0
        status = forewarn_cli(["stack", "status"], env)
        assert status.returncode == 0 and status.stdout.count("healthy") == 2, status.stdout
        kafka = KafkaSettings(bootstrap_servers=env["FOREWARN_KAFKA__BOOTSTRAP_SERVERS"])
        with KafkaProducer(kafka) as producer:
            producer.produce("telemetry", b"survives-restart", key="s/m")
        down = forewarn_cli(["stack", "down"], env)
        assert down.returncode == 0 and "kafka" in down.stdout
        assert forewarn_cli(["stack", "status"], env).returncode == 1
        pids = subprocess.run(["pgrep", "-f", env["FOREWARN_STACK__HOME"]], capture_output=True, text=True)
        assert pids.stdout.strip() == "", "stack down left a process behind"
        assert forewarn_cli(["stack", "up"], env).returncode == 0
        consumer = KafkaConsumer(kafka, "persist", ["telemetry"])
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while not values and time.monotonic() < deadline:
            values = [m.value() for m in consumer.consume(10, 0.5)]
        consumer.close()
        assert values == [b"survives-restart"]
    finally:
        forewarn_cli(["stack", "down"], env)


def test_port_in_use_is_one_actionable_line(stack: RunningStack, tmp_path: Path) -> None:
    env = {
        "FOREWARN_STACK__HOME": str(tmp_path / "home"),
        "FOREWARN_MQTT__PORT": str(stack.mqtt_port),  # taken by the session's Mosquitto
        "FOREWARN_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
    }
    result = forewarn_cli(["stack", "up"], env, timeout=60)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"port {stack.mqtt_port} is in use" in errors[0]
    assert "Traceback" not in result.stderr


def test_missing_java_is_one_actionable_line(tmp_path: Path) -> None:
    env = {
        "FOREWARN_STACK__HOME": str(tmp_path / "home"),
        "FOREWARN_STACK__CACHE_DIR": str(tmp_path / "empty-cache"),
        "FOREWARN_MQTT__PORT": str(free_port()),
        "FOREWARN_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "PATH": str(Path(shutil.which("mosquitto") or "/usr/sbin/mosquitto").parent) + ":/nonexistent",
        "JAVA_HOME": "",
    }
    result = forewarn_cli(["stack", "up"], env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr and ("java" in result.stderr or "mvn" in result.stderr)
    assert "Traceback" not in result.stderr
    assert forewarn_cli(["stack", "down"], env).returncode == 0
