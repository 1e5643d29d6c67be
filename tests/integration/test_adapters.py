"""The Kafka and MQTT adapters against the real brokers."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from forewarn.errors import KafkaError, MqttError
from forewarn.kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    KafkaAdmin,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
    read_to_end,
)
from forewarn.mqtt import MqttClient
from forewarn.settings import KafkaSettings, MqttSettings
from tests.stacks import RunningStack, free_port

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka


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


# -- the adapter's complete API against the real broker -------------------------------------------

def _transactional(stack: RunningStack, name: str = "tx") -> KafkaProducer:
    producer = KafkaProducer(stack.kafka_settings, **{"transactional.id": f"{name}-{uuid.uuid4().hex}"})
    producer.init_transactions()
    return producer


def _in_transactions(stack: RunningStack, topic: str, batches: list[list[bytes]], *, abort_last: bool = False) -> None:
    producer = _transactional(stack)
    for i, batch in enumerate(batches):
        producer.begin_transaction()
        for value in batch:
            producer.produce(topic, value, key="s/m")
        if abort_last and i == len(batches) - 1:
            producer.abort_transaction()
        else:
            producer.commit_transaction()
    producer.close()


def test_read_to_end_finishes_a_transactional_topic_ending_in_a_commit_marker(stack: RunningStack,
                                                                              fresh_topics: Any) -> None:
    _settings, topics = fresh_topics(partitions=2)
    _in_transactions(stack, topics.predictions, [[b"a", b"b"], [b"c"]])
    probe = KafkaConsumer(stack.kafka_settings, f"g-{uuid.uuid4().hex}")
    ends = {p: probe.watermarks(topics.predictions, p)[1] for p in probe.partitions(topics.predictions)}
    probe.close()
    assert sum(ends.values()) == 5, "three records and two commit markers"
    started = time.monotonic()
    got = [m.value() for m in read_to_end(stack.kafka_settings, topics.predictions, idle_timeout_s=20)]
    assert got == [b"a", b"b", b"c"]
    assert time.monotonic() - started < 10, "the end is found by the position, not by waiting"


def test_read_to_end_finishes_a_topic_ending_in_an_aborted_transaction(stack: RunningStack,
                                                                       fresh_topics: Any) -> None:
    _settings, topics = fresh_topics(partitions=1)
    _in_transactions(stack, topics.alerts, [[b"kept"], [b"gone-1", b"gone-2"]], abort_last=True)
    got = [m.value() for m in read_to_end(stack.kafka_settings, [topics.alerts], idle_timeout_s=20)]
    assert got == [b"kept"]


def test_read_to_end_does_not_wait_for_a_transaction_still_open(stack: RunningStack, fresh_topics: Any) -> None:
    _settings, topics = fresh_topics(partitions=1)
    _in_transactions(stack, topics.predictions, [[b"done"]])
    open_one = _transactional(stack)
    open_one.begin_transaction()
    open_one.produce(topics.predictions, b"open", key="s/m")
    assert open_one.flush(30) == 0
    try:
        got = [m.value() for m in read_to_end(stack.kafka_settings, topics.predictions, idle_timeout_s=20)]
        assert got == [b"done"], "a read_committed reader's end is the last stable offset"
    finally:
        open_one.abort_transaction()
        open_one.close()


def test_read_to_end_of_an_empty_topic_is_done_at_once_and_a_missing_one_raises(stack: RunningStack,
                                                                                fresh_topics: Any) -> None:
    _settings, topics = fresh_topics(partitions=3)
    started = time.monotonic()
    assert list(read_to_end(stack.kafka_settings, [topics.dlq, topics.alerts], idle_timeout_s=20)) == []
    assert time.monotonic() - started < 10
    with pytest.raises(KafkaError) as info:
        list(read_to_end(stack.kafka_settings, f"missing-{uuid.uuid4().hex}"))
    assert info.value.code == "UNKNOWN_TOPIC_OR_PART" and "forewarn topics create" in info.value.one_line()


def test_read_to_end_leaves_the_callers_consumer_ready_for_what_comes_next(stack: RunningStack,
                                                                           fresh_topics: Any) -> None:
    """The scoring worker loads the models topic to its end, then follows it with the same consumer."""
    _settings, topics = fresh_topics(partitions=1)
    producer = KafkaProducer(stack.kafka_settings)
    producer.produce(topics.models, b"v1", key="pump")
    assert producer.flush(30) == 0
    consumer = KafkaConsumer(stack.kafka_settings, f"g-{uuid.uuid4().hex}", **{"isolation.level": "read_uncommitted"})
    try:
        assert [m.value() for m in read_to_end(consumer, topics.models, idle_timeout_s=20)] == [b"v1"]
        producer.produce(topics.models, b"v2", key="pump")
        assert producer.flush(30) == 0
        later: list[bytes] = []
        deadline = time.monotonic() + 30
        while not later and time.monotonic() < deadline:
            later.extend(m.value() for m in consumer.consume(10, 0.5))
        assert later == [b"v2"]
    finally:
        consumer.close()
        producer.close()


def test_read_to_end_from_given_offsets_to_given_ends(stack: RunningStack, fresh_topics: Any) -> None:
    _settings, topics = fresh_topics(partitions=1)
    with KafkaProducer(stack.kafka_settings) as producer:
        for i in range(6):
            producer.produce(topics.telemetry, str(i).encode(), key="s/m", partition=0)
    got = read_to_end(stack.kafka_settings, [TopicPartition(topics.telemetry, 0, 2)],
                      stop_at={(topics.telemetry, 0): 5}, idle_timeout_s=20)
    assert [m.value() for m in got] == [b"2", b"3", b"4"]


def test_watermarks_live_and_cached_and_partitions(stack: RunningStack, fresh_topics: Any) -> None:
    _settings, topics = fresh_topics(partitions=2)
    with KafkaProducer(stack.kafka_settings) as producer:
        for i in range(3):
            producer.produce(topics.telemetry, b"x", key="s/m", partition=1, timestamp_ms=1_764_000_000_000 + i)
    consumer = KafkaConsumer(stack.kafka_settings, f"g-{uuid.uuid4().hex}")
    try:
        assert consumer.partitions(topics.telemetry) == [0, 1]
        assert set(consumer.topic_partitions([topics.telemetry, "no-such-topic"])) == {topics.telemetry}
        assert consumer.watermarks(topics.telemetry, 1) == (0, 3)
        assert consumer.watermarks(topics.telemetry, 0) == (0, 0)
        assert consumer.watermarks(topics.telemetry, 1, cached=True) == (OFFSET_INVALID, OFFSET_INVALID)
        consumer.assign([TopicPartition(topics.telemetry, 1, OFFSET_BEGINNING)])
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            got.extend(consumer.consume(10, 0.5))
        assert consumer.watermarks(topics.telemetry, 1, cached=True)[1] == 3
        assert consumer.position([TopicPartition(topics.telemetry, 1)])[0].offset == 3
        found = consumer.offsets_for_times([TopicPartition(topics.telemetry, 1, 1_764_000_000_001)])
        assert found[0].offset == 1
    finally:
        consumer.close()


def test_explicit_commits_committed_offsets_and_seek(stack: RunningStack, fresh_topics: Any) -> None:
    _settings, topics = fresh_topics(partitions=1)
    with KafkaProducer(stack.kafka_settings) as producer:
        for i in range(5):
            producer.produce(topics.telemetry, str(i).encode(), key="s/m")
    group = f"g-{uuid.uuid4().hex}"
    tp = TopicPartition(topics.telemetry, 0)
    consumer = KafkaConsumer(stack.kafka_settings, group)
    try:
        assert consumer.committed([tp])[0].offset == OFFSET_INVALID
        consumer.assign([TopicPartition(topics.telemetry, 0, OFFSET_BEGINNING)])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            got.extend(m.value() for m in consumer.consume(10, 0.5))
        assert got == [b"0", b"1", b"2", b"3", b"4"]
        consumer.commit(offsets=[TopicPartition(topics.telemetry, 0, 3)])
        assert consumer.committed([tp])[0].offset == 3
        consumer.seek(TopicPartition(topics.telemetry, 0, 1))
        again: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(again) < 4 and time.monotonic() < deadline:
            again.extend(m.value() for m in consumer.consume(10, 0.5))
        assert again == [b"1", b"2", b"3", b"4"]
        assert [t.partition for t in consumer.assignment()] == [0]
        consumer.unassign()
        assert consumer.assignment() == []
    finally:
        consumer.close()
    other = KafkaConsumer(stack.kafka_settings, group)
    try:
        assert other.committed([tp])[0].offset == 3, "committed offsets belong to the group"
    finally:
        other.close()


def test_a_group_member_commits_its_offsets_inside_a_transaction(stack: RunningStack, fresh_topics: Any) -> None:
    _settings, topics = fresh_topics(partitions=1)
    with KafkaProducer(stack.kafka_settings) as producer:
        producer.produce(topics.telemetry, b"in", key="s/m")
    group = f"g-{uuid.uuid4().hex}"
    assigned: list[list[int]] = []
    consumer = KafkaConsumer(stack.kafka_settings, group)
    consumer.subscribe([topics.telemetry], on_assign=lambda ps: assigned.append([tp.partition for tp in ps]))
    producer = _transactional(stack)
    try:
        got: list[Any] = []
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            got.extend(consumer.consume(10, 0.5))
        assert assigned == [[0]] and [m.value() for m in got] == [b"in"]
        producer.begin_transaction()
        producer.produce(topics.predictions, b"out", key="s/m")
        producer.send_offsets_to_transaction([TopicPartition(topics.telemetry, 0, 1)],
                                             consumer.consumer_group_metadata())
        producer.commit_transaction()
        assert consumer.committed([TopicPartition(topics.telemetry, 0)])[0].offset == 1
    finally:
        producer.close()
        consumer.close()
    assert [m.value() for m in read_to_end(stack.kafka_settings, topics.predictions, idle_timeout_s=20)] == [b"out"]


def test_a_fenced_producer_raises_a_fatal_kafka_error(stack: RunningStack, fresh_topics: Any) -> None:
    _settings, topics = fresh_topics(partitions=1)
    tid = f"fenced-{uuid.uuid4().hex}"
    old = KafkaProducer(stack.kafka_settings, **{"transactional.id": tid})
    old.init_transactions()
    old.begin_transaction()
    old.produce(topics.predictions, b"zombie", key="s/m")
    new = KafkaProducer(stack.kafka_settings, **{"transactional.id": tid})
    new.init_transactions()
    with pytest.raises(KafkaError) as info:
        old.produce(topics.predictions, b"more", key="s/m")
        old.commit_transaction()
    assert info.value.code == "_FENCED" and info.value.fatal and not info.value.retriable
    new.begin_transaction()
    new.produce(topics.predictions, b"new", key="s/m")
    new.commit_transaction()
    new.close()
    assert [m.value() for m in read_to_end(stack.kafka_settings, topics.predictions, idle_timeout_s=20)] == [b"new"]


def test_alter_topic_configs_and_group_lag(stack: RunningStack, fresh_topics: Any) -> None:
    _settings, topics = fresh_topics(partitions=1)
    admin = KafkaAdmin(stack.kafka_settings)
    admin.alter_topic_configs({topics.telemetry: {"max.message.bytes": "12345"}}, timeout_s=30)
    assert admin.topic_configs([topics.telemetry])[topics.telemetry]["max.message.bytes"] == "12345"
    with KafkaProducer(stack.kafka_settings) as producer:
        for _ in range(4):
            producer.produce(topics.telemetry, b"x", key="s/m")
    group = f"g-{uuid.uuid4().hex}"
    consumer = KafkaConsumer(stack.kafka_settings, group)
    consumer.commit(offsets=[TopicPartition(topics.telemetry, 0, 1)])
    consumer.close()
    rows = [row for row in admin.group_lag([topics.telemetry]) if row.group == group]
    assert [(r.topic, r.partition, r.committed, r.end, r.lag) for r in rows] == [(topics.telemetry, 0, 1, 4, 3)]
    assert admin.end_offsets([(topics.telemetry, 0)]) == {(topics.telemetry, 0): 4}


def test_mqtt_publish_acknowledged_hook_and_outgoing_queue(stack: RunningStack) -> None:
    acked: set[int] = set()
    done = threading.Condition()

    def on_published(mid: int) -> None:
        with done:
            acked.add(mid)
            done.notify_all()

    client = MqttClient(stack.mqtt_settings, f"pub-{uuid.uuid4().hex[:8]}")
    client.on_published = on_published
    with client:
        mids = {client.publish(f"forewarn/s/{uuid.uuid4().hex[:8]}/telemetry", b"x", qos=1).mid for _ in range(50)}
        with done:
            assert done.wait_for(lambda: mids <= acked, 10), "every QoS 1 publish is acknowledged"
        assert client.outgoing_packets == 0
    assert client.outgoing_packets == 0
