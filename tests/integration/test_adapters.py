"""The Kafka and MQTT adapters against the real brokers."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from forewarn.errors import KafkaError, MqttError
from forewarn.kafka import KafkaAdmin, KafkaConsumer, KafkaProducer
from forewarn.mqtt import MqttClient
from forewarn.settings import KafkaSettings, MqttSettings
from tests.conftest import RunningStack, free_port


def test_producer_keeps_key_headers_and_event_time(stack: RunningStack, fresh_topics: Any) -> None:
    _settings, topics = fresh_topics(partitions=3)
    delivered: list[Any] = []
    with KafkaProducer(stack.kafka_settings) as producer:
        for i in range(20):
            producer.produce(topics.telemetry, f"v{i}".encode(), key=f"site/m{i % 4}",
                             headers=[("ingest_ts", b"123")], timestamp_ms=1_764_000_000_000 + i,
                             on_delivery=lambda err, msg: delivered.append((err, msg.partition())))
    assert len(delivered) == 20 and all(err is None for err, _ in delivered)
    consumer = KafkaConsumer(stack.kafka_settings, f"g-{uuid.uuid4().hex}", [topics.telemetry])
    got: list[Any] = []
    deadline = time.monotonic() + 30
    while len(got) < 20 and time.monotonic() < deadline:
        got.extend(consumer.consume(100, 0.5))
    consumer.commit()
    consumer.close()
    assert len(got) == 20
    by_key: dict[bytes, set[int]] = {}
    for m in got:
        by_key.setdefault(m.key(), set()).add(m.partition())
        assert m.headers() == [("ingest_ts", b"123")]
        assert m.timestamp()[1] >= 1_764_000_000_000
    assert all(len(parts) == 1 for parts in by_key.values()), "one machine's records must share a partition"


def test_read_committed_hides_aborted_transactions(stack: RunningStack, fresh_topics: Any) -> None:
    _settings, topics = fresh_topics(partitions=1)
    producer = KafkaProducer(stack.kafka_settings, **{"transactional.id": f"tx-{uuid.uuid4().hex}"})
    producer.init_transactions()
    producer.begin_transaction()
    producer.produce(topics.predictions, b"aborted", key="s/m")
    producer.abort_transaction()
    producer.begin_transaction()
    producer.produce(topics.predictions, b"committed", key="s/m")
    producer.commit_transaction()
    producer.close()
    consumer = KafkaConsumer(stack.kafka_settings, f"g-{uuid.uuid4().hex}", [topics.predictions])
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    while not values and time.monotonic() < deadline:
        values.extend(m.value() for m in consumer.consume(10, 0.5))
    consumer.close()
    assert values == [b"committed"]


def test_unreachable_kafka_is_a_typed_retriable_error() -> None:
    admin = KafkaAdmin(KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}"), log_level=2)
    with pytest.raises(KafkaError) as info:
        admin.ping(timeout_s=1)
    assert info.value.retriable and "forewarn stack up" in info.value.one_line()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_unacked_message_is_redelivered_to_a_persistent_session(stack: RunningStack, protocol: str) -> None:
    settings = stack.mqtt_settings.model_copy(update={"protocol": protocol})
    topic = f"forewarn/s/{uuid.uuid4().hex[:8]}/telemetry"
    client_id = f"manual-{uuid.uuid4().hex[:8]}"
    seen: list[tuple[int, bytes]] = []
    arrived = threading.Event()

    def remember(message: Any) -> None:
        seen.append((message.mid, message.payload))
        arrived.set()

    first = MqttClient(settings, client_id, clean_start=False, session_expiry_s=600, manual_ack=True,
                       on_message=remember)
    first.connect()
    assert first.protocol == protocol
    first.subscribe([topic], qos=1)
    time.sleep(0.3)
    with MqttClient(stack.mqtt_settings, f"p-{uuid.uuid4().hex[:8]}") as pub:
        pub.publish(topic, b"ack-me", qos=1).wait_for_publish(5)
    assert arrived.wait(10)
    first.disconnect()  # never acknowledged

    arrived.clear()
    second = MqttClient(settings, client_id, clean_start=False, session_expiry_s=600, manual_ack=True,
                        on_message=remember)
    second.connect()
    try:
        assert arrived.wait(10), "an unacknowledged QoS 1 message must come back"
        mid, payload = seen[-1]
        assert payload == b"ack-me"
        second.ack(mid, 1)
    finally:
        second.disconnect()
    arrived.clear()
    third = MqttClient(settings, client_id, clean_start=False, session_expiry_s=600, manual_ack=True,
                       on_message=remember)
    third.connect()
    try:
        assert not arrived.wait(1.5), "an acknowledged message must not come back"
    finally:
        third.disconnect()


def test_mqtt_connection_refused_is_one_line() -> None:
    client = MqttClient(MqttSettings(port=free_port()), "nobody")
    with pytest.raises(MqttError) as info:
        client.connect(timeout_s=2)
    assert "forewarn stack up" in info.value.one_line()


def test_event_time_far_from_now_is_accepted(stack: RunningStack, fresh_topics: Any) -> None:
    """A simulator running faster than real time writes timestamps hours ahead; Kafka 4 would
    refuse them by default (INVALID_RECORD) without the registry's topic configs."""
    _settings, topics = fresh_topics(partitions=1)
    now_ms = int(time.time() * 1000)
    errors: list[Any] = []
    with KafkaProducer(stack.kafka_settings) as producer:
        for ts in (now_ms + 3 * 24 * 3600 * 1000, 946_684_800_000):
            producer.produce(topics.telemetry, b"x", key="s/m", timestamp_ms=ts,
                             on_delivery=lambda err, _msg: errors.append(err))
    assert errors == [None, None]
