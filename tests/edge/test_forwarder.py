"""The forwarder alone: order, delete-on-delivery, resend after a failed delivery report, dead
letters for records Kafka refuses for good."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

from edge.buffer import Buffer, BufferRecord
from edge.forwarder import Forwarder
from edge.metrics import EdgeMetrics
from forewarn.deadletter import REFUSED_CUT_BYTES
from forewarn.settings import TopicSettings
from forewarn.testing import FakeProducer, InMemoryKafka, broker_error
from forewarn.topics import Topics
from tests.bridge.helpers import SizeLimitedKafka


def records(n: int) -> list[BufferRecord]:
    return [BufferRecord("telemetry", b"%d" % i, b"m%d" % (i % 3), (("ingest_ts", b"1"),), 1_700_000_000_000 + i)
            for i in range(n)]


def test_forwards_in_order_and_removes_only_delivered_rows(tmp_path: Path) -> None:
    kafka = InMemoryKafka()
    with Buffer(tmp_path / "o.db") as box:
        box.put_many(records(100))
        fwd = Forwarder(box, FakeProducer(kafka), Topics.from_settings(TopicSettings(prefix="p.")), EdgeMetrics(),
                        batch=7, max_in_flight=20)
        assert fwd.drain(10) == 0
        assert len(box) == 0 and fwd.forwarded == 100
    for part in kafka.topic("p.telemetry"):
        values = [int(m.value() or b"") for m in part]
        assert values == sorted(values)
    assert sorted(int(m.value() or b"") for m in kafka.messages("p.telemetry")) == list(range(100))
    assert kafka.messages("p.telemetry")[0].headers() == [("ingest_ts", b"1")]


def test_a_failed_delivery_is_resent_and_nothing_is_lost(tmp_path: Path) -> None:
    kafka = InMemoryKafka()
    producer = FakeProducer(kafka)
    producer.fail_next = 1
    metrics = EdgeMetrics()
    with Buffer(tmp_path / "o.db") as box:
        box.put_many(records(50))
        fwd = Forwarder(box, producer, Topics.from_settings(TopicSettings()), metrics, batch=10, max_in_flight=10)
        fwd._backoff = 0.0
        assert fwd.drain(10) == 0
    values = [int(m.value() or b"") for m in kafka.messages("telemetry")]
    assert set(values) == set(range(50))
    assert metrics.kafka_errors._value.get() == 1


def test_a_record_kafka_refuses_for_good_goes_to_the_dlq_and_the_rest_flows(tmp_path: Path) -> None:
    kafka = InMemoryKafka(partitions=1)
    producer = SizeLimitedKafka(kafka, {"telemetry": 1000})
    metrics = EdgeMetrics()
    rows = records(30)
    rows[10] = BufferRecord("telemetry", b"x" * 5000, b"site-e/pump-1", (("ingest_ts", b"1700000000123"),), 17)
    with Buffer(tmp_path / "o.db") as box:
        box.put_many(rows)
        fwd = Forwarder(box, producer, Topics.from_settings(TopicSettings()), metrics, batch=8, max_in_flight=8,
                        dead_letter_after=3)
        assert fwd.drain(10) == 0
        assert box.dead_letters() == []
    values = [m.value() for m in kafka.messages("telemetry")]
    assert values == [b"%d" % i for i in range(30) if i != 10], "innocent neighbours delivered, in order"
    [dead] = kafka.messages("telemetry.dlq")
    headers = dict(dead.headers() or [])
    assert dead.value() == b"x" * 5000
    assert headers["reason"] == b"kafka_refused" and headers["kind"] == b"telemetry"
    assert headers["kafka_topic"] == b"telemetry" and b"MSG_SIZE_TOO_LARGE" in headers["detail"]
    assert headers["mqtt_topic"] == b"forewarn/site-e/pump-1/telemetry" and headers["received_at"] == b"1700000000123"
    assert fwd.dead_lettered == 1 and metrics.dead_letters.labels("dlq", "MSG_SIZE_TOO_LARGE")._value.get() == 1
    alone = [r for r in producer.requests if r == [("telemetry", b"x" * 5000)]]
    assert len(alone) == 2, "refused 3 times, the last two alone"


def test_a_dead_letter_the_dlq_refuses_is_sent_cut_and_kept_whole_in_the_local_table(tmp_path: Path) -> None:
    kafka = InMemoryKafka(partitions=1)
    producer = SizeLimitedKafka(kafka, {"predictions": 1000, "telemetry.dlq": 2000})
    metrics = EdgeMetrics()
    rows = records(5)
    rows[2] = BufferRecord("predictions", b"p" * 5000, b"site-e/pump-1")
    with Buffer(tmp_path / "o.db") as box:
        box.put_many(rows)
        fwd = Forwarder(box, producer, Topics.from_settings(TopicSettings()), metrics, batch=8, max_in_flight=8,
                        dead_letter_after=1)
        assert fwd.drain(10) == 0
        [(record, reason, detail)] = box.dead_letters()
    assert [m.value() for m in kafka.messages("telemetry")] == [b"0", b"1", b"3", b"4"]
    assert kafka.messages("predictions") == []
    [cut] = kafka.messages("telemetry.dlq")
    headers = dict(cut.headers() or [])
    assert cut.value() == b"p" * REFUSED_CUT_BYTES and headers["truncated_from"] == b"5000"
    assert headers["kind"] == b"prediction" and headers["kafka_topic"] == b"predictions"
    assert headers["reason"] == b"kafka_refused" and b"MSG_SIZE_TOO_LARGE" in headers["kafka_refused"]
    assert record.topic == "dlq" and record.value == b"p" * 5000 and reason == "kafka_refused", "kept whole"
    assert "telemetry.dlq: MSG_SIZE_TOO_LARGE" in detail
    assert fwd.dead_lettered == 1 and fwd.dead_lettered_locally == 1
    assert metrics.dead_letters.labels("dlq_cut", "MSG_SIZE_TOO_LARGE")._value.get() == 1


def test_a_cut_dead_letter_the_dlq_refuses_too_is_kept_in_the_local_table(tmp_path: Path) -> None:
    kafka = InMemoryKafka(partitions=1)
    producer = SizeLimitedKafka(kafka, {"predictions": 1000, "telemetry.dlq": 1000})
    metrics = EdgeMetrics()
    rows = records(5)
    rows[2] = BufferRecord("predictions", b"p" * 5000, b"site-e/pump-1")
    with Buffer(tmp_path / "o.db") as box:
        box.put_many(rows)
        fwd = Forwarder(box, producer, Topics.from_settings(TopicSettings()), metrics, batch=8, max_in_flight=8,
                        dead_letter_after=1)
        assert fwd.drain(10) == 0
        [(whole, reason, detail), (cut, cut_reason, _)] = box.dead_letters()
    assert [m.value() for m in kafka.messages("telemetry")] == [b"0", b"1", b"3", b"4"]
    assert kafka.messages("predictions") == [] and kafka.messages("telemetry.dlq") == []
    assert whole.topic == "dlq" and whole.value == b"p" * 5000 and reason == cut_reason == "kafka_refused"
    assert dict(whole.headers)["kind"] == b"prediction" and dict(whole.headers)["kafka_topic"] == b"predictions"
    assert "telemetry.dlq: MSG_SIZE_TOO_LARGE" in detail
    assert cut.value == b"p" * REFUSED_CUT_BYTES and dict(cut.headers)["truncated_from"] == b"5000"
    assert fwd.dead_lettered == 1 and fwd.dead_lettered_locally == 2
    assert metrics.dead_letters.labels("dlq_cut", "MSG_SIZE_TOO_LARGE")._value.get() == 1
    assert metrics.dead_letters.labels("local", "MSG_SIZE_TOO_LARGE")._value.get() == 1


def test_a_row_that_failed_is_sent_alone_until_delivered_then_forgotten(tmp_path: Path) -> None:
    kafka = InMemoryKafka(partitions=1)
    producer = FakeProducer(kafka)
    producer.fail_next = 1  # a retriable error: counted by no refusal policy, but the row goes alone
    with Buffer(tmp_path / "o.db") as box:
        box.put_many(records(6))
        fwd = Forwarder(box, producer, Topics.from_settings(TopicSettings()), EdgeMetrics(), batch=6,
                        max_in_flight=6)
        fwd._backoff = 0.0
        assert fwd.drain(10) == 0
        assert fwd._failed_rows == set() and fwd._alone is None
    assert sorted(int(m.value() or b"") for m in kafka.messages("telemetry")) == list(range(6))


# -- Kafka errors by their real codes ------------------------------------------------------------

def test_timeouts_and_a_revoked_acl_keep_the_rows_in_the_buffer_until_kafka_takes_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Delivery errors as librdkafka reports them (no flags): an expired message.timeout.ms and
    TOPIC_AUTHORIZATION_FAILED are retried; nothing reaches the dead-letter topic."""
    kafka = InMemoryKafka(partitions=1)
    producer = FakeProducer(kafka)
    with Buffer(tmp_path / "o.db") as box:
        box.put_many(records(20))
        fwd = Forwarder(box, producer, Topics.from_settings(TopicSettings()), EdgeMetrics(), batch=5, max_in_flight=5)
        producer.delivery_error = broker_error(confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED)
        producer.fail_next = 1_000
        with caplog.at_level("ERROR", logger="edge.forwarder"):
            for _ in range(5):
                fwd._retry_at = 0.0
                fwd.pump()
        assert len(box) == 20 and kafka.messages("telemetry") == [] and kafka.messages("telemetry.dlq") == []
        assert "TOPIC_AUTHORIZATION_FAILED" in caplog.text
        assert fwd.metrics.uplink_up._value.get() == 0, "the uplink reports down at once"
        producer.delivery_error = broker_error(confluent_kafka.KafkaError._MSG_TIMED_OUT)
        producer.fail_next = 3
        fwd._backoff = fwd._retry_at = 0.0
        assert fwd.drain(10) == 0
    assert sorted(int(m.value() or b"") for m in kafka.messages("telemetry")) == list(range(20))
    assert kafka.messages("telemetry.dlq") == [] and fwd.dead_lettered == 0


def test_a_fatal_producer_error_rebuilds_the_producer_and_resends_every_row_not_confirmed(tmp_path: Path) -> None:
    kafka = InMemoryKafka(partitions=1)
    producer = FakeProducer(kafka)
    with Buffer(tmp_path / "o.db") as box:
        box.put_many(records(30))
        fwd = Forwarder(box, producer, Topics.from_settings(TopicSettings()), EdgeMetrics(), batch=10,
                        max_in_flight=10)
        fwd.pump()  # rows 0..9 delivered
        producer.fatal_next = broker_error(confluent_kafka.KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER)
        fwd.pump()  # row 10 meets it: poll raises the fatal error, produce raises _FATAL after it
        assert fwd._fatal is not None and len(box) == 20
        fwd._backoff = 0.0
        assert fwd.drain(10) == 0
        assert fwd.producer_rebuilds == 1 == producer.rebuilds and fwd.in_flight == 0
    values = [int(m.value() or b"") for m in kafka.messages("telemetry")]
    assert sorted(set(values)) == list(range(30)) and values == sorted(values), "every row, in buffer order"
    assert kafka.messages("telemetry.dlq") == []


class ReportsOnTheNextPoll(FakeProducer):
    """Serves each delivery report one poll late, as librdkafka does: the poll right after a
    produce rarely has its report yet."""

    def __init__(self, kafka: InMemoryKafka) -> None:
        super().__init__(kafka)
        self._next: list[Any] = []

    def poll(self, timeout_s: float = 0.0) -> int:
        self._next, self._pending = self._pending, self._next
        return super().poll(timeout_s)


def test_an_edge_idle_for_a_minute_is_not_down_when_its_next_record_goes_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kafka = InMemoryKafka()
    producer = ReportsOnTheNextPoll(kafka)
    with Buffer(tmp_path / "o.db") as box, caplog.at_level("WARNING", logger="edge.forwarder"):
        fwd = Forwarder(box, producer, Topics.from_settings(TopicSettings()), EdgeMetrics())
        fwd.last_delivery -= 60  # the last record went out a minute ago
        box.put_many(records(1))
        fwd.pump()
        assert fwd.in_flight == 1  # sent, its report not served yet
        fwd.pump()
        assert fwd.in_flight == 0 and len(box) == 0
        # A record that has waited 6 s, with nothing confirmed meanwhile, is an uplink that is down.
        box.put_many(records(1))
        fwd.pump()
        fwd._waiting_since -= 6
        fwd.last_delivery -= 6
        fwd._watch(time.monotonic())
    assert caplog.text.count("uplink down") == 1 and "uplink back" not in caplog.text, caplog.text
    assert fwd.metrics.uplink_up._value.get() == 0
