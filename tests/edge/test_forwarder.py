"""The forwarder alone: order, delete-on-delivery, resend after a failed delivery report."""

from __future__ import annotations

from pathlib import Path

from edge.buffer import Outbox, OutboxRecord
from edge.forwarder import Forwarder
from edge.metrics import EdgeMetrics
from forewarn.settings import TopicSettings
from forewarn.testing import FakeProducer, InMemoryKafka
from forewarn.topics import Topics


def records(n: int) -> list[OutboxRecord]:
    return [OutboxRecord("telemetry", b"%d" % i, b"m%d" % (i % 3), (("ingest_ts", b"1"),), 1_700_000_000_000 + i)
            for i in range(n)]


def test_forwards_in_order_and_removes_only_delivered_rows(tmp_path: Path) -> None:
    kafka = InMemoryKafka()
    with Outbox(tmp_path / "o.db") as box:
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
    with Outbox(tmp_path / "o.db") as box:
        box.put_many(records(50))
        fwd = Forwarder(box, producer, Topics.from_settings(TopicSettings()), metrics, batch=10, max_in_flight=10)
        fwd._backoff = 0.0
        assert fwd.drain(10) == 0
    values = [int(m.value() or b"") for m in kafka.messages("telemetry")]
    assert set(values) == set(range(50))
    assert metrics.kafka_errors._value.get() == 1
