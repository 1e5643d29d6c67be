"""A reading a real Kafka refuses for good (larger than the topic's ``max.message.bytes``):
the bridge, on a real Mosquitto, sends its dead letter instead, acknowledges it and keeps
forwarding what comes after."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest

from bridge.service import Bridge
from bridge.settings import BridgeOptions, BridgeSettings
from forewarn.contract import DecodeLimits, Decoder
from forewarn.settings import TopicSettings
from forewarn.topics import Topics, telemetry_topic
from tests.bridge.helpers import (
    consume_records,
    dead_letter_headers,
    huge_reading,
    limit_record_size,
    publish_all,
    reading_bytes,
    wait_until,
)
from tests.stacks import RunningStack

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka (the session's stack)


def test_a_reading_kafka_refuses_is_dead_lettered_and_the_readings_after_it_flow(
        stack: RunningStack, fresh_topics: Callable[..., tuple[TopicSettings, Topics]]) -> None:
    settings, topics = fresh_topics(partitions=1)
    limit_record_size(stack.kafka_settings, {topics.telemetry: 10_000})
    big = json.dumps(huge_reading("site-k/big", 1)).encode()  # valid, but lz4 cannot bring it under the limit
    messages = [(telemetry_topic("site-k/m1"), reading_bytes("site-k/m1", seq)) for seq in range(100)]
    messages.insert(50, (telemetry_topic("site-k/big"), big))
    service = Bridge(BridgeSettings(kafka=stack.kafka_settings, mqtt=stack.mqtt_settings, topics=settings,
                                    bridge=BridgeOptions(client_id="bridge-refusals", share_group="",
                                                         session_expiry_s=60, retry_backoff_s=0.1)),
                     decoder=Decoder(DecodeLimits(max_message_bytes=1_000_000)))
    service.start()
    loop = threading.Thread(target=service.run, daemon=True)
    loop.start()
    try:
        publish_all(stack.mqtt_settings, messages)
        assert wait_until(lambda: service.metrics.acked._value.get() == len(messages), 60), service.in_flight
    finally:
        service.stop()
        loop.join(30)
    telemetry = consume_records(stack.kafka_settings, topics.telemetry, 100)
    # Every reading, none lost (neighbours of the refused one, sent again alone, may come later).
    assert sorted(json.loads(m.value())["seq"] for m in telemetry) == list(range(100))
    [dead] = consume_records(stack.kafka_settings, topics.dlq, 1, timeout_s=10)
    headers = dead_letter_headers(dead)
    assert dead.value() == big and headers["reason"] == b"kafka_refused" and headers["kind"] == b"telemetry"
    assert headers["kafka_topic"] == topics.telemetry.encode() and b"MSG_SIZE_TOO_LARGE" in headers["detail"]
    assert headers["mqtt_topic"] == b"forewarn/site-k/big/telemetry"
    assert service.metrics.dead_letters.labels("dlq", "MSG_SIZE_TOO_LARGE")._value.get() == 1
