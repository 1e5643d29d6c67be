"""Records a real Kafka refuses for good (larger than the topic's ``max.message.bytes``): the
edge's forwarder sends them alone (so they sink no neighbour), dead-letters them (a dead letter
the DLQ refuses too is sent cut, and kept whole in the local table) and keeps forwarding what
comes after, in order."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from edge.buffer import Buffer, BufferRecord
from edge.forwarder import Forwarder, topic_limits
from edge.metrics import EdgeMetrics
from forewarn.deadletter import REFUSED_CUT_BYTES
from forewarn.kafka import KafkaProducer
from forewarn.settings import TopicSettings
from forewarn.topics import Topics
from tests.bridge.helpers import consume_records, dead_letter_headers, limit_record_size
from tests.stacks import RunningStack

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka (the session's stack)


def reading(machine: str, seq: int) -> BufferRecord:
    value = b'{"v":1,"machine_id":"%s","asset_type":"pump","ts":1764212345123,"seq":%d,"sensors":{"t":1.0}}' % (
        machine.encode(), seq)
    return BufferRecord("telemetry", value, machine.encode(), (("ingest_ts", b"1764212345999"),), 1764212345123)


def test_a_record_kafka_refuses_goes_to_the_dlq_and_a_refused_dead_letter_stays_local(
        stack: RunningStack, fresh_topics: Callable[..., tuple[TopicSettings, Topics]], tmp_path: Path) -> None:
    _settings, topics = fresh_topics(partitions=1)
    limit_record_size(stack.kafka_settings, {topics.telemetry: 20_000, topics.dlq: 100_000})
    too_big_for_telemetry = os.urandom(50_000)  # incompressible: lz4 cannot bring it under the limit
    too_big_for_the_dlq = os.urandom(150_000)
    rows = [reading("site-r/pump-1", seq) for seq in range(300)]
    rows.insert(100, BufferRecord("telemetry", too_big_for_telemetry, b"site-r/pump-1",
                                  (("ingest_ts", b"1764212345999"),), 1764212345123))
    letter_headers = (("reason", b"too_large"), ("detail", b"payload too large"), ("kind", b"telemetry"),
                      ("mqtt_topic", b"forewarn/site-r/pump-1/telemetry"), ("received_at", b"1764212345999"),
                      ("origin", b"edge"))
    rows.insert(200, BufferRecord("dlq", too_big_for_the_dlq, b"forewarn/site-r/pump-1/telemetry", letter_headers,
                                  1764212345123))
    metrics = EdgeMetrics()
    producer = KafkaProducer(stack.kafka_settings, **{"linger.ms": 20, "batch.size": 65_536})
    with Buffer(tmp_path / "outbox.db") as box:
        box.put_many(rows)
        forwarder = Forwarder(box, producer, topics, metrics, batch=500, max_in_flight=1000,
                              record_limits=partial(topic_limits, stack.kafka_settings, topics))
        forwarder.read_limits()  # the thread does this on start
        left = forwarder.drain(120)
        local = box.dead_letters()
    producer.close(5)
    assert left == 0
    telemetry = consume_records(stack.kafka_settings, topics.telemetry, 300)
    seqs = [int(m.value().split(b'"seq":')[1].split(b",")[0]) for m in telemetry]
    assert seqs == list(range(300)), "every reading before and after the refused ones, in order"
    dead, cut = consume_records(stack.kafka_settings, topics.dlq, 2, timeout_s=10)
    headers = dead_letter_headers(dead)
    assert dead.value() == too_big_for_telemetry
    assert headers["reason"] == b"kafka_refused" and headers["kind"] == b"telemetry"
    assert headers["kafka_topic"] == topics.telemetry.encode() and b"MSG_SIZE_TOO_LARGE" in headers["detail"]
    assert headers["mqtt_topic"] == b"forewarn/site-r/pump-1/telemetry" and headers["received_at"] == b"1764212345999"
    cut_headers = dead_letter_headers(cut)
    assert cut.value() == too_big_for_the_dlq[:REFUSED_CUT_BYTES] and cut.key() == b"forewarn/site-r/pump-1/telemetry"
    assert cut_headers["truncated_from"] == b"150000" and b"MSG_SIZE_TOO_LARGE" in cut_headers["kafka_refused"]
    assert cut_headers["reason"] == b"too_large" and cut_headers["mqtt_topic"] == b"forewarn/site-r/pump-1/telemetry"
    [(record, reason, detail)] = local
    assert record.topic == "dlq" and record.value == too_big_for_the_dlq and reason == "kafka_refused"
    assert detail.startswith(f"{topics.dlq}: MSG_SIZE_TOO_LARGE")
    assert forwarder.dead_lettered == 1 and forwarder.dead_lettered_locally == 1
    assert metrics.dead_letters.labels("dlq", "MSG_SIZE_TOO_LARGE")._value.get() == 1
    assert metrics.dead_letters.labels("dlq_cut", "MSG_SIZE_TOO_LARGE")._value.get() == 1
