"""Real Kafka errors from a real broker, counted end to end through the bridge on a real
Mosquitto: zero readings the bridge acknowledged are lost.

- A topic whose ``max.message.bytes`` is small refuses some readings for good
  (``MSG_SIZE_TOO_LARGE``): those, and only those, go to the dead-letter topic; every other
  reading, of a single message or of a gateway batch holding a refused one, arrives.
- A broker frozen (SIGSTOP) past the producer's ``message.timeout.ms`` makes librdkafka report
  ``_MSG_TIMED_OUT`` — with no retriable flag — for what was in flight: the bridge re-sends it
  and acknowledges nothing meanwhile, the edge's forwarder keeps its rows in the buffer; after
  SIGCONT every reading arrives, none in the DLQ. The broker is a private one (the session's is
  shared and must not be frozen).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bridge.service import Bridge
from bridge.settings import BridgeOptions, BridgeSettings
from edge.buffer import Buffer, BufferRecord
from edge.forwarder import Forwarder
from edge.metrics import EdgeMetrics
from forewarn.contract import DecodeLimits, Decoder
from forewarn.kafka import KafkaAdmin, KafkaProducer
from forewarn.settings import KafkaSettings, MqttSettings, TopicSettings
from forewarn.stack import LocalStack
from forewarn.topics import Topics, batch_topic, telemetry_topic, topic_specs
from tests.bridge.helpers import (
    batch_bytes,
    consume_records,
    count_telemetry,
    dead_letter_headers,
    huge_reading,
    limit_record_size,
    publish_all,
    reading,
    reading_bytes,
    topic_size,
    wait_until,
)
from tests.stacks import RunningStack

pytestmark = pytest.mark.integration


def acked(bridge: Bridge) -> int:
    return int(bridge.metrics.acked._value.get())


def kafka_errors(bridge: Bridge) -> int:
    return int(bridge.metrics.kafka_errors._value.get())


@contextmanager
def running_bridge(kafka: KafkaSettings, mqtt: MqttSettings, topics: TopicSettings, client_id: str,
                   decoder: Decoder | None = None) -> Iterator[Bridge]:
    service = Bridge(BridgeSettings(kafka=kafka, mqtt=mqtt, topics=topics,
                                    bridge=BridgeOptions(client_id=client_id, share_group="", session_expiry_s=300,
                                                         retry_backoff_s=0.2, kafka_wait_log_s=2)),
                     decoder=decoder)
    service.start()
    loop = threading.Thread(target=service.run, daemon=True)
    loop.start()
    try:
        yield service
    finally:
        service.stop()
        loop.join(60)


def test_readings_a_small_max_message_bytes_refuses_are_dead_lettered_and_every_other_one_arrives(
        stack: RunningStack, fresh_topics: Callable[..., tuple[TopicSettings, Topics]]) -> None:
    settings, topics = fresh_topics(partitions=2)
    limit_record_size(stack.kafka_settings, {topics.telemetry: 10_000})
    messages: list[tuple[str, bytes]] = []
    normal: set[tuple[str, int]] = set()
    refused: set[tuple[str, int]] = set()
    for seq in range(200):
        machine = f"site-x/m{seq % 4}"
        if seq % 50 == 25:
            messages.append((telemetry_topic("site-x/big"), json.dumps(huge_reading("site-x/big", seq)).encode()))
            refused.add(("site-x/big", seq))
        else:
            messages.append((telemetry_topic(machine), reading_bytes(machine, seq)))
            normal.add((machine, seq))
    batch = [reading(f"site-x/g{i}", 1000) for i in range(5)]
    batch.insert(2, huge_reading("site-x/gbig", 1000))
    messages.append((batch_topic("site-x", "site-x/gw-1"), batch_bytes("site-x/gw-1", batch)))
    normal |= {(r["machine_id"], 1000) for r in batch if r["machine_id"] != "site-x/gbig"}
    refused.add(("site-x/gbig", 1000))

    with running_bridge(stack.kafka_settings, stack.mqtt_settings, settings, "bridge-kafka-errors-size",
                        Decoder(DecodeLimits(max_message_bytes=2_000_000))) as bridge:
        publish_all(stack.mqtt_settings, messages)
        assert wait_until(lambda: acked(bridge) == len(messages), 120), (acked(bridge), bridge.in_flight)

    arrived = count_telemetry(stack.kafka_settings, topics.telemetry, expect=normal, timeout_s=60)
    assert normal <= arrived.keys(), f"lost: {sorted(normal - arrived.keys())[:5]}"
    assert not refused & arrived.keys()
    letters = consume_records(stack.kafka_settings, topics.dlq, len(refused), timeout_s=30)
    dead = {(json.loads(m.value())["machine_id"], json.loads(m.value())["seq"]) for m in letters}
    assert dead == refused and len(letters) == len(refused), "each refused reading once, nothing else"
    for letter in letters:
        headers = dead_letter_headers(letter)
        assert headers["reason"] == b"kafka_refused" and b"MSG_SIZE_TOO_LARGE" in headers["detail"]
    kinds = sorted(dead_letter_headers(m)["kind"] for m in letters)
    assert kinds == [b"reading"] + [b"telemetry"] * (len(refused) - 1)


def _own_topics(local: LocalStack) -> tuple[TopicSettings, Topics]:
    settings = TopicSettings(prefix=f"frozen-{os.getpid()}.", partitions=2)
    KafkaAdmin(local.kafka_settings).ensure_topics(topic_specs(settings))
    return settings, Topics.from_settings(settings)


def edge_row(seq: int) -> BufferRecord:
    machine = f"site-e/m{seq % 3}"
    value = reading_bytes(machine, seq)
    return BufferRecord("telemetry", value, machine.encode(), (("ingest_ts", b"1764212345999"),), 1764212345123 + seq)


@contextmanager
def running_forwarder(kafka: KafkaSettings, topics: Topics, path: Path) -> Iterator[tuple[Forwarder, Buffer]]:
    producer = KafkaProducer(kafka)
    with Buffer(path) as box:
        forwarder = Forwarder(box, producer, topics, EdgeMetrics(), batch=10, max_in_flight=10)
        forwarder.start()
        try:
            yield forwarder, box
        finally:
            forwarder.stop()
            producer.close(5)


def test_a_broker_frozen_past_the_message_timeout_loses_no_acknowledged_reading(
        own_stack: LocalStack, tmp_path: Path) -> None:
    """Both forwarders of the system on one frozen broker: the bridge (what it PUBACKed) and the
    edge's (what its buffer holds)."""
    settings, topics = _own_topics(own_stack)
    kafka = own_stack.kafka_settings.model_copy(update={"extra": {
        "message.timeout.ms": "2000", "request.timeout.ms": "1500", "linger.ms": "5"}})
    mqtt = own_stack.mqtt_settings
    edge_expected = {(f"site-e/m{seq % 3}", seq) for seq in range(100)}
    before = [(telemetry_topic(f"site-f/m{seq % 5}"), reading_bytes(f"site-f/m{seq % 5}", seq)) for seq in range(200)]
    during = [(telemetry_topic(f"site-f/m{seq % 5}"), reading_bytes(f"site-f/m{seq % 5}", seq))
              for seq in range(200, 600)]
    expected = {(f"site-f/m{seq % 5}", seq) for seq in range(600)}
    pid = own_stack.kafka.process.pid()
    assert pid is not None
    with running_bridge(kafka, mqtt, settings, "bridge-kafka-errors-frozen") as bridge, \
            running_forwarder(kafka, topics, tmp_path / "outbox.db") as (forwarder, box):
        publish_all(mqtt, before)
        box.put_many([edge_row(seq) for seq in range(50)])
        assert wait_until(lambda: acked(bridge) == len(before) and len(box) == 0, 60)
        os.kill(pid, signal.SIGSTOP)
        try:
            publish_all(mqtt, during)  # Mosquitto takes them; the bridge cannot confirm them
            box.put_many([edge_row(seq) for seq in range(50, 100)])
            # Frozen for more failed rounds than dead_letter_after: a rule that took a time-out for
            # "refused for good" would have dead-lettered (or dropped) and acknowledged by then.
            rounds = 2 * BridgeOptions().dead_letter_after
            assert wait_until(lambda: kafka_errors(bridge) >= rounds or acked(bridge) > len(before), 120), \
                "librdkafka reported the time-outs"
            edge_errors = forwarder.metrics.kafka_errors
            # the 10 rows in flight failed, then one alone more than a flag rule needs to dead-letter it
            edge_rounds = 10 + forwarder.dead_letter_after
            assert wait_until(lambda: edge_errors._value.get() >= edge_rounds or forwarder.dead_lettered > 0, 120)
            assert acked(bridge) == len(before), "nothing acknowledged while Kafka is frozen"
            assert forwarder.dead_lettered == 0 and len(box) == 50, "every row not confirmed stays in the buffer"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert wait_until(lambda: acked(bridge) == len(before) + len(during), 120), (acked(bridge), bridge.in_flight)
        assert wait_until(lambda: len(box) == 0, 120), len(box)
    edge_arrived = count_telemetry(own_stack.kafka_settings, topics.telemetry, expect=edge_expected, timeout_s=60)
    assert edge_expected <= edge_arrived.keys(), f"lost at the edge: {sorted(edge_expected - edge_arrived.keys())[:5]}"
    arrived = count_telemetry(own_stack.kafka_settings, topics.telemetry, expect=expected, timeout_s=60)
    assert expected <= arrived.keys(), f"lost: {sorted(expected - arrived.keys())[:5]}"  # duplicates allowed
    assert topic_size(own_stack.kafka_settings, topics.dlq) == 0, "a time-out is never a dead letter"
