"""The bridge on in-memory doubles that take its production path: the subscriber's read
interface (tests/bridge/fakes.py) and the fake Kafka producer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import confluent_kafka
import pytest
from prometheus_client import generate_latest

from bridge._mqtt_packets import Oversized
from bridge._subscriber import Subscriber
from bridge.service import Bridge, subscriptions
from bridge.settings import BridgeOptions, BridgeSettings
from forewarn.errors import KafkaError
from forewarn.kafka import KafkaProducer, kafka_error
from forewarn.settings import TopicSettings
from forewarn.testing import FakeProducer, InMemoryKafka, broker_error
from forewarn.topics import batch_topic, maintenance_topic, telemetry_topic
from tests.bridge.fakes import FakeSubscriber
from tests.bridge.helpers import TS0, SizeLimitedKafka, batch_bytes, reading, reading_bytes


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


def make(producer_cls: Callable[[InMemoryKafka], FakeProducer] = FakeProducer, *,
         subscriber: FakeSubscriber | None = None,
         **options: Any) -> tuple[Bridge, FakeSubscriber, Any, InMemoryKafka]:
    kafka = InMemoryKafka()
    producer = producer_cls(kafka)
    mqtt = subscriber if subscriber is not None else FakeSubscriber()
    settings = BridgeSettings(topics=TopicSettings(prefix="u."),
                              bridge=BridgeOptions(client_id="b1", shutdown_timeout_s=0.2, **options))
    bridge = Bridge(settings, producer=producer, subscriber=mqtt)
    bridge.start()
    return bridge, mqtt, producer, kafka


def metric_text(bridge: Bridge) -> str:
    bridge._flush_metrics()
    return generate_latest(bridge.metrics.registry).decode()


def test_by_default_the_bridge_reads_its_own_subscriber_and_produces_through_the_adapter() -> None:
    bridge = Bridge(BridgeSettings(bridge=BridgeOptions(client_id="b0")))  # nothing touches the network yet
    assert isinstance(bridge.subscriber, Subscriber) and isinstance(bridge.producer, KafkaProducer)
    assert bridge.subscriber.on_connected == bridge._on_connected


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


def test_records_carry_key_event_time_and_ingest_header() -> None:
    bridge, mqtt, _producer, kafka = make()
    mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 4))
    mqtt.deliver(maintenance_topic("s/m1"), json.dumps(
        {"v": 1, "machine_id": "s/m1", "ts": TS0, "event": "repair", "component": "bearing"}).encode())
    before = int(time.time() * 1000)
    bridge.step(0)
    [record] = kafka.messages("u.telemetry")
    assert record.key() == b"s/m1" and record.timestamp()[1] == TS0 + 4000
    assert record.value() == reading_bytes("s/m1", 4)
    ingest = int(dict(record.headers() or [])["ingest_ts"])
    assert before - 1000 <= ingest <= int(time.time() * 1000)
    assert [m.key() for m in kafka.messages("u.maintenance")] == [b"s/m1"] and len(mqtt.acks) == 2


def test_a_batch_is_acknowledged_once_all_its_records_are_confirmed() -> None:
    bridge, mqtt, producer, kafka = make(HeldProducer)
    readings = [reading(f"s/m{i}", 1) for i in range(100)]
    message = mqtt.deliver(batch_topic("s", "gw"), batch_bytes("s/gw", readings))
    bridge.step(0)
    assert bridge.in_flight == 100 and mqtt.acks == []
    producer.release()
    bridge.step(0)
    assert mqtt.acks == [message.mid]
    assert sorted(json.loads(m.value() or b"")["machine_id"] for m in kafka.messages("u.telemetry")) == sorted(
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
    assert "forewarn_bridge_kafka_errors_total 1.0" in metric_text(bridge)


class LocallyRefusing(FakeProducer):
    """librdkafka refusing the first produce call at once (raised by the adapter as KafkaError)."""

    refuse = 1

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None, **kw: Any) -> None:
        if self.refuse:
            self.refuse -= 1
            raise KafkaError(f"produce to {topic}: Local: Message size too large", code="MSG_SIZE_TOO_LARGE")
        super().produce(topic, value, key, **kw)


def test_a_record_refused_by_the_local_queue_is_sent_again() -> None:
    bridge, mqtt, _producer, kafka = make(LocallyRefusing, retry_backoff_s=0.01)
    message = mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    for _ in range(50):
        bridge.step(0)
        if mqtt.acks:
            break
    assert mqtt.acks == [message.mid] and len(kafka.messages("u.telemetry")) == 1


def test_acks_go_out_in_arrival_order() -> None:
    bridge, mqtt, _producer, _kafka = make()
    mids = [mqtt.deliver(telemetry_topic(f"s/m{i}"), reading_bytes(f"s/m{i}", i)).mid for i in range(20)]
    mids.append(mqtt.deliver(telemetry_topic("s/bad"), b"not json").mid)
    bridge.step(0)
    assert mqtt.acks == mids  # the fake refuses a PUBACK out of order


def test_packet_ids_wrap_and_qos0_messages_are_forwarded_without_an_ack() -> None:
    bridge, mqtt, _producer, kafka = make(subscriber=FakeSubscriber(first_mid=65534))
    sent = [mqtt.deliver(telemetry_topic(f"s/m{i}"), reading_bytes(f"s/m{i}", i), qos=i % 2) for i in range(8)]
    bridge.step(0)
    assert [m.mid for m in sent if m.qos] == [65534, 65535, 1, 2] == mqtt.acks
    assert len(kafka.messages("u.telemetry")) == 8


def test_invalid_payload_goes_to_the_dlq_and_is_acknowledged() -> None:
    bridge, mqtt, _producer, kafka = make()
    message = mqtt.deliver(telemetry_topic("s/m1"), b"\xff\x00garbage")
    bridge.step(0)
    [dead] = kafka.messages("u.telemetry.dlq")
    assert dead.value() == b"\xff\x00garbage" and dict(dead.headers() or [])["reason"] == b"not_json"
    assert mqtt.acks == [message.mid]
    text = metric_text(bridge)
    assert 'forewarn_bridge_rejected_total{reason="not_json"} 1.0' in text
    assert 'forewarn_bridge_forwarded_total{topic="dlq"} 1.0' in text
    assert 'forewarn_bridge_received_total{kind="telemetry"} 1.0' in text
    assert "forewarn_bridge_acked_total 1.0" in text


def test_metrics_count_each_kind_topic_and_reason() -> None:
    bridge, mqtt, _producer, _kafka = make()
    readings = [reading("s/m1", 1), reading("s/m2", 2), {**reading("s/m3", 3), "ts": "later"}]
    mqtt.deliver(batch_topic("s", "gw"), batch_bytes("s/gw", readings))
    mqtt.deliver(telemetry_topic("s/m9"), reading_bytes("s/other", 1))
    mqtt.deliver("forewarn/elsewhere", b"{}")
    bridge.step(0)
    text = metric_text(bridge)
    for line in ('forewarn_bridge_received_total{kind="batch"} 1.0',
                 'forewarn_bridge_received_total{kind="telemetry"} 1.0',
                 'forewarn_bridge_received_total{kind="unknown"} 1.0',
                 'forewarn_bridge_forwarded_total{topic="telemetry"} 2.0',
                 'forewarn_bridge_forwarded_total{topic="dlq"} 3.0',
                 'forewarn_bridge_rejected_total{reason="wrong_type"} 1.0',
                 'forewarn_bridge_rejected_total{reason="topic_mismatch"} 2.0',
                 "forewarn_bridge_acked_total 3.0", "forewarn_bridge_in_flight_records 0.0"):
        assert line in text, line


def test_a_routing_bug_dead_letters_the_message_and_the_stream_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    bridge, mqtt, _producer, kafka = make()
    route = bridge.router.route

    def broken(topic: str, payload: bytes, received_ms: int) -> Any:
        if b"boom" in payload:
            raise RuntimeError("a bug")
        return route(topic, payload, received_ms)

    monkeypatch.setattr(bridge.router, "route", broken)
    mids = [mqtt.deliver(telemetry_topic("s/m1"), b'{"boom": 1}').mid,
            mqtt.deliver(telemetry_topic("s/m2"), reading_bytes("s/m2", 1)).mid]
    with caplog.at_level("ERROR"):
        bridge.step(0)
    assert mqtt.acks == mids and len(kafka.messages("u.telemetry")) == 1
    [dead] = kafka.messages("u.telemetry.dlq")
    assert dict(dead.headers() or [])["reason"] == b"bad_value" and "routing failed" in caplog.text


def test_a_message_too_long_to_read_whole_becomes_a_too_large_dead_letter_then_is_acknowledged() -> None:
    bridge, mqtt, _producer, kafka = make()
    head = reading_bytes("s/m1", 1)[:40]
    mids = [mqtt.deliver(telemetry_topic("s/m1"), Oversized(head, size=300_000_000)).mid,
            mqtt.deliver(telemetry_topic("s/m2"), reading_bytes("s/m2", 1)).mid]
    bridge.step(0)
    assert mqtt.acks == mids and len(kafka.messages("u.telemetry")) == 1
    [dead] = kafka.messages("u.telemetry.dlq")
    headers = dict(dead.headers() or [])
    assert headers["reason"] == b"too_large" and b"300000000 bytes" in headers["detail"]
    assert dead.value() == head


def test_intake_pauses_at_the_in_flight_bound() -> None:
    bridge, mqtt, producer, kafka = make(HeldProducer, max_in_flight=5)
    for i in range(12):
        mqtt.deliver(telemetry_topic(f"s/m{i}"), reading_bytes(f"s/m{i}", i))
    bridge.step(0)
    bridge.step(0)
    assert bridge.in_flight == 5 and len(kafka.messages("u.telemetry")) == 5 and len(mqtt.queued) == 7
    producer.release()
    for _ in range(5):
        bridge.step(0)
    assert len(mqtt.acks) == 12 and bridge.in_flight == 0


def test_the_broker_sends_no_more_than_receive_maximum_unacknowledged() -> None:
    bridge, mqtt, producer, _kafka = make(HeldProducer, subscriber=FakeSubscriber(receive_maximum=3))
    for i in range(5):
        mqtt.deliver(telemetry_topic(f"s/m{i}"), reading_bytes(f"s/m{i}", i))
    bridge.step(0)
    assert bridge.in_flight == 3 and len(mqtt.queued) == 2
    producer.release()
    for _ in range(3):
        bridge.step(0)
    assert len(mqtt.acks) == 5


def test_a_message_redelivered_on_a_new_connection_is_acknowledged_once() -> None:
    bridge, mqtt, producer, kafka = make(HeldProducer)
    old = mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    bridge.step(0)
    mqtt.drop(session_present=True)  # the broker sends the unacknowledged message again, same id
    bridge.step(0)
    bridge.step(0)
    assert [m.dup for m in mqtt.sent] == [False, True] and mqtt.connects == 2
    producer.release()
    bridge.step(0)
    assert mqtt.acks == [old.mid] and bridge.in_flight == 0 and len(kafka.messages("u.telemetry")) == 2


def test_ids_of_a_lost_session_are_never_acknowledged_on_the_new_one() -> None:
    bridge, mqtt, producer, _kafka = make(HeldProducer)
    mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    bridge.step(0)
    mqtt.drop(session_present=False)
    bridge._next_housekeeping = 0
    bridge.step(0)  # housekeeping reconnects
    new = mqtt.deliver(telemetry_topic("s/m2"), reading_bytes("s/m2", 1))
    bridge.step(0)
    producer.release()
    bridge.step(0)
    assert mqtt.acks == [new.mid] and bridge.in_flight == 0  # an ack of the old id would be a ProtocolViolation


def test_acks_written_while_disconnected_are_lost_and_the_message_comes_again() -> None:
    bridge, mqtt, producer, kafka = make(HeldProducer)
    message = mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    bridge.step(0)
    mqtt.drop()
    producer.release()
    bridge.step(0)  # confirmed while the connection is down: the PUBACK goes nowhere
    for _ in range(3):
        bridge.step(0)  # reconnect, redelivery, ack of the copy
    assert mqtt.acks == [message.mid] and len(kafka.messages("u.telemetry")) == 2


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
    mqtt.deliver(telemetry_topic("s/m2"), reading_bytes("s/m2", 1))  # arrives, never read
    producer.release()
    bridge.close()
    assert len(mqtt.acks) == 1 and not mqtt.connected and len(mqtt.queued) == 1


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
    assert sorted(json.loads(m.value() or b"")["machine_id"] for m in kafka.messages("u.telemetry")) == [
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


# -- Kafka errors by their real codes ------------------------------------------------------------

def step_until(bridge: Bridge, done: Callable[[], bool], rounds: int = 200) -> bool:
    for _ in range(rounds):
        bridge.step(0)
        if done():
            return True
        time.sleep(0.002)
    return done()


def test_an_expired_message_timeout_is_resent_never_dead_lettered() -> None:
    """librdkafka reports a message.timeout.ms expiry with no flags: it is retried, not refused."""
    bridge, mqtt, producer, kafka = make(retry_backoff_s=0.01)
    producer.fail_next = 3  # _MSG_TIMED_OUT, as the real client reports it
    assert not producer.delivery_error.retriable() and not producer.delivery_error.fatal()
    message = mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    assert step_until(bridge, lambda: bool(mqtt.acks))
    assert mqtt.acks == [message.mid] and len(kafka.messages("u.telemetry")) == 1
    assert kafka.messages("u.telemetry.dlq") == []


def test_a_revoked_acl_keeps_the_message_unacknowledged_loudly_until_kafka_takes_it(
        caplog: pytest.LogCaptureFixture) -> None:
    bridge, mqtt, producer, kafka = make(retry_backoff_s=0.01)
    producer.delivery_error = broker_error(confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED)
    producer.fail_next = 1_000_000
    message = mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    with caplog.at_level("ERROR", logger="bridge.service"):
        for _ in range(30):
            bridge.step(0)
            time.sleep(0.002)
    assert mqtt.acks == [] and kafka.messages("u.telemetry.dlq") == [] and bridge.in_flight == 1
    assert "TOPIC_AUTHORIZATION_FAILED" in caplog.text and "Write on u.telemetry" in caplog.text
    assert bridge.metrics.kafka_waiting._value.get() == 1, "the health signal fails at once"
    producer.fail_next = 0  # the grant is back
    assert step_until(bridge, lambda: bool(mqtt.acks))
    assert mqtt.acks == [message.mid] and len(kafka.messages("u.telemetry")) == 1


def test_a_fatal_producer_error_rebuilds_the_producer_and_resends_every_unconfirmed_record() -> None:
    """An idempotent producer's fatal error (raised from poll, as confluent-kafka does): the
    records whose reports never came are sent again through a new producer, in order, and every
    message is acknowledged only once Kafka has it."""
    bridge, mqtt, producer, kafka = make(HeldProducer, retry_backoff_s=0.01)
    first = [mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", seq)).mid for seq in range(5)]
    bridge.step(0)  # produced; reports held back (in flight)
    producer.fatal_next = broker_error(confluent_kafka.KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER)
    later = [mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", seq)).mid for seq in range(5, 8)]
    bridge.step(0)  # the first of these meets the fatal error; the others raise _FATAL
    producer.release()
    assert step_until(bridge, lambda: len(mqtt.acks) == 8)
    assert mqtt.acks == first + later and producer.rebuilds == 1 and bridge.producer_rebuilds == 1
    assert "forewarn_bridge_producer_rebuilds_total 1.0" in metric_text(bridge)
    seqs = [json.loads(m.value() or b"")["seq"] for m in kafka.messages("u.telemetry")]
    assert sorted(set(seqs)) == list(range(8)), "every reading, none lost"
    assert seqs[-3:] == [5, 6, 7] and kafka.messages("u.telemetry.dlq") == []


def test_a_fatal_error_raised_by_produce_rebuilds_before_anything_new_is_read() -> None:
    class FatalOnProduce(FakeProducer):
        broken = True

        def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None, **kw: Any) -> None:
            if self.broken:
                raise kafka_error(broker_error(confluent_kafka.KafkaError._FATAL), f"produce to {topic}")
            super().produce(topic, value, key, **kw)

        def rebuild(self) -> None:
            super().rebuild()
            self.broken = False

    bridge, mqtt, producer, kafka = make(FatalOnProduce, retry_backoff_s=0.01)
    message = mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    assert step_until(bridge, lambda: bool(mqtt.acks))
    assert mqtt.acks == [message.mid] and producer.rebuilds == 1 and len(kafka.messages("u.telemetry")) == 1


def test_after_an_outage_every_failed_message_is_resent_in_one_round_in_order() -> None:
    bridge, mqtt, producer, kafka = make(retry_backoff_s=0.01)
    producer.fail_next = 50  # every record of the 50 messages times out (Kafka was away)
    mids = [mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", seq)).mid for seq in range(50)]
    bridge.step(0)
    assert len(bridge._retry) == 50, "scheduled together, not one backoff after the other"
    assert step_until(bridge, lambda: len(mqtt.acks) == 50)
    assert mqtt.acks == mids
    assert [json.loads(m.value() or b"")["seq"] for m in kafka.messages("u.telemetry")] == list(range(50))


def test_a_fatal_error_raised_from_poll_rebuilds_and_the_message_is_acknowledged_once_kafka_has_it() -> None:
    bridge, mqtt, producer, kafka = make(retry_backoff_s=0.01)
    producer.fatal_next = broker_error(confluent_kafka.KafkaError.UNKNOWN_PRODUCER_ID)
    message = mqtt.deliver(telemetry_topic("s/m1"), reading_bytes("s/m1", 1))
    bridge.step(0)  # its report says UNKNOWN_PRODUCER_ID (no flags); poll raises the fatal error
    assert producer.rebuilds == 1 and mqtt.acks == []
    assert step_until(bridge, lambda: bool(mqtt.acks))
    assert mqtt.acks == [message.mid] and len(kafka.messages("u.telemetry")) == 1 and producer.rebuilds == 1
