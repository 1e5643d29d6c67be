from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import generate_latest

from bridge.service import Bridge, subscriptions
from bridge.settings import BridgeOptions, BridgeSettings
from forewarn.settings import TopicSettings
from forewarn.testing import FakeMqtt, FakeProducer, InMemoryKafka
from forewarn.topics import batch_topic, telemetry_topic
from tests.bridge.helpers import SizeLimitedKafka, batch_bytes, reading, reading_bytes


class HeldProducer(FakeProducer):
    """A fake producer whose deliveries wait until ``release()``: Kafka being slow or away."""

    def __init__(self, kafka: InMemoryKafka) -> None:
        super().__init__(kafka)
        self.held = True

    def poll(self, timeout_s: float = 0.0) -> int:
        return 0 if self.held else super().poll(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> int:
        return len(self._pending) if self.held else super().flush(timeout_s)

    def release(self) -> None:
        self.held = False


def make(producer_cls: Callable[[InMemoryKafka], FakeProducer] = FakeProducer,
         **options: Any) -> tuple[Bridge, FakeMqtt, Any, InMemoryKafka]:
    kafka = InMemoryKafka()
    producer = producer_cls(kafka)
    mqtt = FakeMqtt()
    settings = BridgeSettings(topics=TopicSettings(prefix="u."),
                              bridge=BridgeOptions(client_id="b1", shutdown_timeout_s=0.2, **options))
    bridge = Bridge(settings, producer=producer, mqtt=mqtt)
    bridge.start()
    return bridge, mqtt, producer, kafka


def test_subscribes_through_a_shared_subscription() -> None:
    _bridge, mqtt, _p, _k = make()
    assert mqtt.subscriptions == subscriptions("forewarn-bridge")
    assert all(s.startswith("$share/forewarn-bridge/forewarn/") for s in mqtt.subscriptions)
    assert subscriptions("") == ["forewarn/+/+/telemetry", "forewarn/+/gateway/+/batch", "forewarn/+/+/maintenance"]


def test_ack_only_after_kafka_confirmed() -> None:
    bridge, mqtt, producer, kafka = make(HeldProducer)
    message = mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    for _ in range(3):
        bridge.step(0)
    assert mqtt.acks == [] and len(kafka.messages("u.telemetry")) == 1 and bridge.in_flight == 1
    producer.release()
    bridge.step(0)
    assert mqtt.acks == [message.mid] and bridge.in_flight == 0


def test_a_batch_is_acknowledged_once_all_its_records_are_confirmed() -> None:
    bridge, mqtt, producer, kafka = make(HeldProducer)
    readings = [reading(f"s/m{i}", 1) for i in range(100)]
    message = mqtt.deliver(batch_topic("s", "gw"), batch_bytes("s/gw", readings))
    bridge.step(0)
    assert bridge.in_flight == 100 and mqtt.acks == []
    producer.release()
    bridge.step(0)
    assert mqtt.acks == [message.mid]
    assert sorted(json.loads(m.value())["machine_id"] for m in kafka.messages("u.telemetry")) == sorted(
        r["machine_id"] for r in readings)


def test_failed_delivery_is_resent_and_acked_only_after_success() -> None:
    bridge, mqtt, producer, kafka = make(retry_backoff_s=0.01)
    producer.fail_next = 1
    message = mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    bridge.step(0)
    assert mqtt.acks == [] and kafka.messages("u.telemetry") == []
    for _ in range(50):
        time.sleep(0.005)
        bridge.step(0)
        if mqtt.acks:
            break
    assert mqtt.acks == [message.mid] and len(kafka.messages("u.telemetry")) == 1
    bridge._flush_metrics()
    assert b"forewarn_bridge_kafka_errors_total 1.0" in generate_latest(bridge.metrics.registry)


def test_acks_go_out_in_arrival_order() -> None:
    bridge, mqtt, _producer, _kafka = make()
    mids = [mqtt.deliver(telemetry_topic(f"s/m{i}"), reading_bytes(f"s/m{i}", i)).mid for i in range(20)]
    mqtt.deliver(telemetry_topic("s/bad"), b"not json")
    bridge.step(0)
    assert mqtt.acks[:20] == mids and len(mqtt.acks) == 21


def test_invalid_payload_goes_to_the_dlq_and_is_acknowledged() -> None:
    bridge, mqtt, _producer, kafka = make()
    message = mqtt.deliver(telemetry_topic("s/m1"), b"\xff\x00garbage")
    bridge.step(0)
    [dead] = kafka.messages("u.telemetry.dlq")
    assert dead.value() == b"\xff\x00garbage" and dict(dead.headers() or [])["reason"] == b"not_json"
    assert mqtt.acks == [message.mid]
    bridge._flush_metrics()
    text = generate_latest(bridge.metrics.registry).decode()
    assert 'forewarn_bridge_rejected_total{reason="not_json"} 1.0' in text
    assert 'forewarn_bridge_forwarded_total{topic="dlq"} 1.0' in text


def test_intake_pauses_at_the_in_flight_bound() -> None:
    bridge, mqtt, producer, kafka = make(HeldProducer, max_in_flight=5)
    for i in range(12):
        mqtt.deliver(telemetry_topic(f"s/m{i}"), reading_bytes(f"s/m{i}", i))
    bridge.step(0)
    assert bridge.in_flight == 5 and len(kafka.messages("u.telemetry")) == 5 and len(bridge._inbox) == 7
    producer.release()
    for _ in range(5):
        bridge.step(0)
    assert len(mqtt.acks) == 12 and bridge.in_flight == 0


def test_a_message_redelivered_on_a_new_connection_is_acknowledged_once() -> None:
    bridge, mqtt, producer, _kafka = make(HeldProducer)
    payload = reading_bytes("s/m1", 1)
    old = mqtt.deliver(telemetry_topic("s/m1"), payload)
    bridge.step(0)
    bridge._on_connected(True)  # reconnect: the broker sends the unacknowledged message again, same id
    bridge._on_message(type(old)(old.topic, old.payload, 1, old.mid))
    bridge.step(0)
    producer.release()
    bridge.step(0)
    assert mqtt.acks == [old.mid]


def test_kafka_away_logs_a_clear_line_and_nothing_is_acked(caplog: pytest.LogCaptureFixture) -> None:
    bridge, mqtt, producer, _kafka = make(HeldProducer, kafka_wait_log_s=0.05)
    mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    bridge.step(0)
    bridge._last_progress -= 1
    bridge._next_housekeeping = 0
    with caplog.at_level("WARNING", logger="bridge.service"):
        bridge.step(0)
    assert "waiting for Kafka" in caplog.text and mqtt.acks == []
    producer.release()
    bridge.step(0)
    assert len(mqtt.acks) == 1


def test_close_acks_what_was_delivered_and_leaves_the_rest() -> None:
    bridge, mqtt, producer, _kafka = make(HeldProducer)
    mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    bridge.step(0)
    mqtt.deliver(telemetry_topic("s/m2"), reading_bytes("s/m2", 1))  # arrives, never handled
    producer.release()
    bridge.close()
    assert len(mqtt.acks) == 1 and not mqtt.connected


def test_run_stops_on_stop() -> None:
    bridge, mqtt, _producer, _kafka = make()
    mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    bridge.stop()
    bridge.run()
    assert not mqtt.connected


def test_producer_defaults_favour_throughput_but_kafka_extra_wins() -> None:
    from forewarn.settings import KafkaSettings

    default = Bridge._producer_overrides(BridgeSettings())
    assert default["linger.ms"] == 20 and default["queue.buffering.max.messages"] >= 100_000
    own = Bridge._producer_overrides(BridgeSettings(kafka=KafkaSettings(extra={"linger.ms": "2"})))
    assert "linger.ms" not in own


def test_a_record_kafka_refuses_for_good_is_dead_lettered_and_the_rest_is_acknowledged() -> None:
    bridge, mqtt, producer, kafka = make(lambda k: SizeLimitedKafka(k, {"u.telemetry": 400}), retry_backoff_s=0.01)
    big = json.dumps(reading("s/big", 7, settings={f"setting_{i:03d}": 1.0 for i in range(30)})).encode()
    mids = [mqtt.deliver(telemetry_topic(f"s/m{i}"), reading_bytes(f"s/m{i}", i)).mid for i in range(3)]
    mids.append(mqtt.deliver(telemetry_topic("s/big"), big).mid)
    mids += [mqtt.deliver(telemetry_topic(f"s/m{i}"), reading_bytes(f"s/m{i}", i)).mid for i in range(3, 6)]
    for _ in range(20):
        bridge.step(0)
    assert mqtt.acks == mids, "acknowledged in order, none held back"
    assert sorted(json.loads(m.value())["machine_id"] for m in kafka.messages("u.telemetry")) == [
        f"s/m{i}" for i in range(6)]
    [dead] = kafka.messages("u.telemetry.dlq")
    headers = dict(dead.headers() or [])
    assert dead.value() == big and headers["reason"] == b"kafka_refused" and headers["kind"] == b"telemetry"
    assert headers["kafka_topic"] == b"u.telemetry" and headers["mqtt_topic"] == b"forewarn/s/big/telemetry"
    assert b"MSG_SIZE_TOO_LARGE" in headers["detail"]
    assert [r for r in producer.requests if r == [("u.telemetry", big)]] == [[("u.telemetry", big)]] * 2
    assert bridge.metrics.dead_letters.labels("dlq", "MSG_SIZE_TOO_LARGE")._value.get() == 1


@pytest.mark.parametrize(("limit", "outcome"), [(1500, "dlq_cut"), (500, "dropped")])
def test_a_dead_letter_the_dlq_refuses_is_cut_short_or_dropped_loudly(limit: int, outcome: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    bridge, mqtt, _producer, kafka = make(lambda k: SizeLimitedKafka(k, {"u.telemetry.dlq": limit}),
                                          dead_letter_after=1)
    garbage = b"\xff" + b"g" * 3000
    mids = [mqtt.deliver(telemetry_topic("s/m1"), garbage).mid, mqtt.deliver(telemetry_topic("s/m2"),
                                                                              reading_bytes("s/m2", 1)).mid]
    with caplog.at_level("ERROR", logger="bridge.service"):
        for _ in range(20):
            bridge.step(0)
    assert mqtt.acks == mids and len(kafka.messages("u.telemetry")) == 1
    assert bridge.metrics.dead_letters.labels(outcome, "MSG_SIZE_TOO_LARGE")._value.get() == 1
    if outcome == "dlq_cut":
        [dead] = kafka.messages("u.telemetry.dlq")
        headers = dict(dead.headers() or [])
        assert dead.value() == garbage[:1024] and headers["reason"] == b"not_json"
        assert headers["truncated_from"] == b"3001" and b"MSG_SIZE_TOO_LARGE" in headers["kafka_refused"]
    else:
        assert kafka.messages("u.telemetry.dlq") == [] and "DROPPED" in caplog.text
    assert bridge.in_flight == 0
