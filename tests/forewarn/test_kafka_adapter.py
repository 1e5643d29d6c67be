"""The Kafka adapter's pure parts (error wrapping, the produce path with no broker), read_to_end
and the in-memory fakes it shares its API with. The same behaviour against a real broker is in
tests/integration/test_adapters.py."""

from __future__ import annotations

import socket
import time
from typing import Any

import confluent_kafka
import pytest

from forewarn.errors import KafkaError
from forewarn.kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
    kafka_error,
    raise_for_error,
    read_to_end,
    refused_for_good,
)
from forewarn.mqtt import MqttClient
from forewarn.settings import KafkaSettings, MqttSettings
from forewarn.testing import FakeConsumer, FakeMqtt, FakeProducer, InMemoryKafka, broker_error

E = confluent_kafka.KafkaError


def nowhere() -> KafkaSettings:
    """Settings of a Kafka that is not there: producing only queues locally."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")


def values(messages: Any) -> list[bytes]:
    return [m.value() for m in messages]


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "flags"), [
    (E.MSG_SIZE_TOO_LARGE, {}),
    (E._FENCED, {"fatal": True}),
    (E.ILLEGAL_GENERATION, {"txn_requires_abort": True}),
    (E._TIMED_OUT, {"retriable": True}),
])
def test_kafka_error_keeps_the_code_name_and_every_flag(code: int, flags: dict[str, bool]) -> None:
    error = kafka_error(broker_error(code, "because", **flags), "commit transaction", hint="do this")
    assert error.code == confluent_kafka.KafkaError(code).name()
    assert (error.fatal, error.retriable, error.txn_requires_abort) == (
        flags.get("fatal", False), flags.get("retriable", False), flags.get("txn_requires_abort", False))
    assert error.one_line() == "commit transaction: because (do this)"


def test_raise_for_error_raises_only_for_an_error() -> None:
    raise_for_error(None, "consume")
    with pytest.raises(KafkaError) as info:
        raise_for_error(broker_error(E.TOPIC_AUTHORIZATION_FAILED), "consume")
    assert info.value.code == "TOPIC_AUTHORIZATION_FAILED" and not info.value.retriable


# -- the real producer without a broker ---------------------------------------------------------

def test_produce_accepts_every_optional_field_unset_or_set() -> None:
    producer = KafkaProducer(nowhere(), log_level=0, **{"message.timeout.ms": 200})
    reports: list[tuple[str, bytes | None, bytes | None, int | None]] = []

    def report(err: Any, msg: Any) -> None:
        reports.append((err.name(), msg.key(), msg.value(), msg.partition()))

    producer.produce("t", b"v", on_delivery=report)
    producer.produce("t", None, "key", headers=(("h", "x"), ("b", b"y")), timestamp_ms=1_764_000_000_000,
                     on_delivery=report, partition=0)
    producer.produce("t", b"w", b"key", headers=[], timestamp_ms=0, on_delivery=report)
    assert producer.flush(10) == 0
    expected = [("_MSG_TIMED_OUT", None, b"v", None), ("_MSG_TIMED_OUT", b"key", None, 0),
                ("_MSG_TIMED_OUT", b"key", b"w", None)]  # None: the partitioner had no metadata yet
    assert sorted(reports, key=repr) == sorted(expected, key=repr)


def test_a_record_refused_at_once_is_a_kafka_error_refused_for_good() -> None:
    producer = KafkaProducer(nowhere(), log_level=0, **{"message.max.bytes": 1000})
    with pytest.raises(KafkaError) as info:
        producer.produce("t", b"x" * 5000)
    assert info.value.code == "MSG_SIZE_TOO_LARGE" and refused_for_good(info.value)
    assert "produce to t" in str(info.value)


def test_a_full_local_queue_is_waited_out_serving_delivery_reports() -> None:
    """With room for one record, the second produce waits until the first one's delivery
    report (a time-out here, no broker) frees the queue; nothing is dropped."""
    producer = KafkaProducer(nowhere(), log_level=0, **{"queue.buffering.max.messages": 1,
                                                        "message.timeout.ms": 300})
    reports: list[tuple[str, bytes]] = []

    def report(err: Any, msg: Any) -> None:
        reports.append((err.name(), msg.value()))

    producer.produce("t", b"first", on_delivery=report)
    producer.produce("t", b"second", on_delivery=report)
    assert reports == [("_MSG_TIMED_OUT", b"first")], "served while waiting for room"
    assert producer.flush(10) == 0
    assert reports == [("_MSG_TIMED_OUT", b"first"), ("_MSG_TIMED_OUT", b"second")]


def test_transactions_of_a_non_transactional_producer_are_kafka_errors() -> None:
    producer = KafkaProducer(nowhere(), log_level=0)
    with pytest.raises(KafkaError) as info:
        producer.init_transactions(1.0)
    assert info.value.code == "_NOT_CONFIGURED" and "init transactions" in str(info.value)
    with pytest.raises(KafkaError):
        producer.begin_transaction()


def test_mqtt_client_reports_an_empty_outgoing_queue_and_keeps_its_hook_before_connecting() -> None:
    client = MqttClient(MqttSettings(), "nobody")
    assert client.outgoing_packets == 0
    seen: list[int] = []
    client.on_published = seen.append
    assert client.on_published == seen.append
    client.on_published = None
    assert client.on_published is None


# -- fake transactions --------------------------------------------------------------------------

def test_a_transaction_is_visible_to_read_committed_readers_only_once_committed() -> None:
    kafka = InMemoryKafka(partitions=1)
    producer = FakeProducer(kafka, transactional_id="tx")
    producer.init_transactions()
    producer.begin_transaction()
    producer.produce("out", b"a", key="k")
    producer.produce("out", b"b", key="k")
    committed = FakeConsumer(kafka, ["out"])
    uncommitted = FakeConsumer(kafka, ["out"], isolation_level="read_uncommitted")
    assert committed.consume() == [] and values(uncommitted.consume()) == [b"a", b"b"]
    assert committed.watermarks("out", 0) == (0, 0), "the last stable offset stops at the open transaction"
    producer.commit_transaction()
    assert values(committed.consume()) == [b"a", b"b"]
    assert committed.watermarks("out", 0) == (0, 3), "the commit marker takes an offset"
    assert committed.position([TopicPartition("out", 0)])[0].offset == 3
    assert values(kafka.messages("out")) == [b"a", b"b"]


def test_an_aborted_transaction_is_never_seen_by_read_committed_readers() -> None:
    kafka = InMemoryKafka(partitions=1)
    producer = FakeProducer(kafka, transactional_id="tx")
    producer.init_transactions()
    reports: list[Any] = []
    producer.begin_transaction()
    producer.produce("out", b"gone", key="k", on_delivery=lambda err, _m: reports.append(err))
    producer.abort_transaction()
    producer.begin_transaction()
    producer.produce("out", b"kept", key="k")
    producer.commit_transaction()
    assert values(FakeConsumer(kafka, ["out"]).consume()) == [b"kept"]
    assert values(FakeConsumer(kafka, ["out"], isolation_level="read_uncommitted").consume()) == [b"gone", b"kept"]
    assert reports == [None], "the record reached the broker; the abort marker hides it"
    assert values(kafka.messages("out")) == [b"kept"]


def test_an_open_transaction_holds_read_committed_readers_at_its_first_offset() -> None:
    kafka = InMemoryKafka(partitions=1)
    producer = FakeProducer(kafka, transactional_id="tx")
    producer.init_transactions()
    producer.begin_transaction()
    producer.produce("out", b"pending", key="k")
    plain = FakeProducer(kafka)
    plain.produce("out", b"later", key="k")
    reader = FakeConsumer(kafka, ["out"])
    assert reader.consume() == []
    producer.commit_transaction()
    assert values(reader.consume()) == [b"pending", b"later"]


def test_producing_outside_a_transaction_or_before_init_is_a_state_error() -> None:
    producer = FakeProducer(InMemoryKafka(), transactional_id="tx")
    with pytest.raises(KafkaError) as info:
        producer.begin_transaction()
    assert info.value.code == "_STATE"
    producer.init_transactions()
    with pytest.raises(KafkaError) as info:
        producer.produce("out", b"x")
    assert info.value.code == "_STATE"
    with pytest.raises(KafkaError) as info:
        FakeProducer(InMemoryKafka()).init_transactions()
    assert info.value.code == "_NOT_CONFIGURED"


def test_a_newer_producer_with_the_same_id_fences_the_older_and_aborts_what_it_left_open() -> None:
    kafka = InMemoryKafka(partitions=1)
    old = FakeProducer(kafka, transactional_id="tx")
    old.init_transactions()
    old.begin_transaction()
    old.produce("out", b"zombie", key="k")
    new = FakeProducer(kafka, transactional_id="tx")
    new.init_transactions()
    reader = FakeConsumer(kafka, ["out"])
    assert reader.consume() == [] and reader.watermarks("out", 0) == (0, 2), "aborted: its marker is written"
    reports: list[Any] = []
    old.produce("out", b"refused", key="k", on_delivery=lambda err, _m: reports.append(err))
    old.poll()
    assert [(e.name(), e.fatal()) for e in reports] == [("_FENCED", True)]
    with pytest.raises(KafkaError) as info:
        old.commit_transaction()
    assert info.value.code == "_FENCED" and info.value.fatal and not info.value.txn_requires_abort
    new.begin_transaction()
    new.produce("out", b"new", key="k")
    new.commit_transaction()
    assert values(reader.consume()) == [b"new"]


def test_offsets_sent_to_a_transaction_are_committed_with_it_and_only_then() -> None:
    kafka = InMemoryKafka(partitions=2)
    FakeProducer(kafka).produce("in", b"x", partition=1)
    consumer = FakeConsumer(kafka, ["in"], group_id="workers")
    assert values(consumer.consume()) == [b"x"]
    producer = FakeProducer(kafka, transactional_id="tx")
    producer.init_transactions()
    producer.begin_transaction()
    producer.send_offsets_to_transaction([TopicPartition("in", 1, 1)], consumer.consumer_group_metadata())
    assert kafka.committed("workers") == {}
    producer.abort_transaction()
    assert kafka.committed("workers") == {}
    producer.begin_transaction()
    producer.send_offsets_to_transaction([TopicPartition("in", 1, 1)], consumer.consumer_group_metadata())
    producer.commit_transaction()
    assert kafka.committed("workers") == {("in", 1): 1}
    assert consumer.committed([TopicPartition("in", 1), TopicPartition("in", 0)])[0].offset == 1
    assert consumer.committed([TopicPartition("in", 0)])[0].offset == OFFSET_INVALID


def test_offsets_of_a_stale_generation_make_the_transaction_abortable() -> None:
    kafka = InMemoryKafka(partitions=2)
    first = FakeConsumer(kafka, ["in"], group_id="workers")
    first.consume()
    metadata = first.consumer_group_metadata()
    FakeConsumer(kafka, ["in"], group_id="workers").consume()  # a second member joins: a new generation
    producer = FakeProducer(kafka, transactional_id="tx")
    producer.init_transactions()
    producer.begin_transaction()
    producer.produce("out", b"x", key="k")
    with pytest.raises(KafkaError) as info:
        producer.send_offsets_to_transaction([TopicPartition("in", 0, 5)], metadata)
    assert info.value.code == "ILLEGAL_GENERATION" and info.value.txn_requires_abort and not info.value.fatal
    with pytest.raises(KafkaError) as info:
        producer.commit_transaction()
    assert info.value.txn_requires_abort
    producer.abort_transaction()
    assert kafka.messages("out") == [] and kafka.committed("workers") == {}


def test_a_failed_delivery_inside_a_transaction_makes_its_commit_abortable() -> None:
    producer = FakeProducer(InMemoryKafka(), transactional_id="tx")
    producer.init_transactions()
    producer.begin_transaction()
    producer.fail_next = 1
    producer.produce("out", b"x")
    with pytest.raises(KafkaError) as info:
        producer.commit_transaction()
    assert info.value.code == "_MSG_TIMED_OUT" and info.value.txn_requires_abort


def test_delivery_failures_are_real_kafka_errors() -> None:
    kafka = InMemoryKafka()
    producer = FakeProducer(kafka)
    producer.fail_next = 1
    reports: list[Any] = []
    producer.produce("t", b"x", key="k", on_delivery=lambda err, msg: reports.append((err, msg)))
    producer.produce("t", b"y", key="k", on_delivery=lambda err, msg: reports.append((err, msg)))
    assert reports == [], "delivery reports come from poll/flush, never from produce"
    producer.flush()
    (error, unsent), (ok, delivered) = reports
    assert isinstance(error, confluent_kafka.KafkaError) and error.name() == "_MSG_TIMED_OUT"
    assert unsent.value() == b"x" and unsent.error() is error
    assert ok is None and delivered.value() == b"y" and values(kafka.messages("t")) == [b"y"]


# -- fake consumer groups and partitions --------------------------------------------------------

def test_group_members_share_partitions_by_range_and_rebalance_on_join_and_leave() -> None:
    kafka = InMemoryKafka(partitions=3)
    kafka.create_topic("in")
    events: list[tuple[str, str, list[int]]] = []

    def member(name: str) -> FakeConsumer:
        return FakeConsumer(kafka, ["in"], group_id="g",
                            on_assign=lambda ps: events.append((name, "assign", [tp.partition for tp in ps])),
                            on_revoke=lambda ps: events.append((name, "revoke", [tp.partition for tp in ps])))

    a = member("a")
    a.consume()
    assert events == [("a", "assign", [0, 1, 2])]
    b = member("b")
    b.consume()
    a.consume()
    assert events[1:] == [("b", "assign", [2]), ("a", "revoke", [0, 1, 2]), ("a", "assign", [0, 1])]
    assert [tp.partition for tp in a.assignment()] == [0, 1]
    b.close()
    a.consume()
    assert events[4:] == [("b", "revoke", [2]), ("a", "revoke", [0, 1]), ("a", "assign", [0, 1, 2])]


def test_a_new_member_starts_at_the_groups_committed_offsets() -> None:
    kafka = InMemoryKafka(partitions=1)
    producer = FakeProducer(kafka)
    for v in (b"1", b"2", b"3"):
        producer.produce("in", v)
    first = FakeConsumer(kafka, ["in"], group_id="g")
    assert values(first.consume(2)) == [b"1", b"2"]
    first.commit()
    first.close()
    second = FakeConsumer(kafka, ["in"], group_id="g")
    assert values(second.consume()) == [b"3"]
    late = FakeConsumer(kafka, ["in"], group_id="other", auto_offset_reset="latest")
    producer.produce("in", b"4")
    assert values(late.consume()) == [], "latest: the end when it joined, which is after 4"
    producer.produce("in", b"5")
    assert values(late.consume()) == [b"5"]


def test_a_commit_after_the_group_moved_on_fails() -> None:
    kafka = InMemoryKafka(partitions=2)
    kafka.create_topic("in")
    a = FakeConsumer(kafka, ["in"], group_id="g")
    a.consume()
    FakeConsumer(kafka, ["in"], group_id="g").consume()
    with pytest.raises(KafkaError) as info:
        a.commit()
    assert info.value.code == "ILLEGAL_GENERATION"


def test_assigned_partitions_seek_position_commit_and_watermarks() -> None:
    kafka = InMemoryKafka(partitions=2)
    producer = FakeProducer(kafka)
    for i in range(5):
        producer.produce("t", str(i).encode(), partition=1, timestamp_ms=1000 + i)
    consumer = FakeConsumer(kafka, group_id="g")
    assert consumer.watermarks("t", 1, cached=True) == (OFFSET_INVALID, OFFSET_INVALID)
    consumer.assign([TopicPartition("t", 1, 2)])
    assert consumer.position([TopicPartition("t", 1)])[0].offset == OFFSET_INVALID, "not fetched yet"
    assert values(consumer.consume()) == [b"2", b"3", b"4"]
    assert consumer.position([TopicPartition("t", 1)])[0].offset == 5
    assert consumer.watermarks("t", 1) == consumer.watermarks("t", 1, cached=True) == (0, 5)
    consumer.seek(TopicPartition("t", 1, 1))
    assert values(consumer.consume(1)) == [b"1"]
    consumer.commit(offsets=[TopicPartition("t", 1, 4)])
    assert consumer.committed([TopicPartition("t", 1)])[0].offset == 4
    consumer.commit()
    assert kafka.committed("g") == {("t", 1): 2}
    found = consumer.offsets_for_times([TopicPartition("t", 1, 1003), TopicPartition("t", 1, 9999)])
    assert [tp.offset for tp in found] == [3, OFFSET_END]
    consumer.incremental_assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
    assert sorted(tp.partition for tp in consumer.assignment()) == [0, 1]
    consumer.unassign()
    assert consumer.assignment() == [] and consumer.consume() == []
    with pytest.raises(KafkaError) as info:
        consumer.seek(TopicPartition("t", 1, 0))
    assert info.value.code == "_UNKNOWN_PARTITION"
    consumer.close()
    with pytest.raises(RuntimeError):
        consumer.consume()


def test_topics_that_do_not_exist_are_kafka_errors() -> None:
    kafka = InMemoryKafka(partitions=2)
    kafka.create_topic("here")
    consumer = FakeConsumer(kafka)
    assert consumer.partitions("here") == [0, 1]
    assert consumer.topic_partitions(["here", "gone"]) == {"here": [0, 1]}
    with pytest.raises(KafkaError) as info:
        consumer.partitions("gone")
    assert info.value.code == "UNKNOWN_TOPIC_OR_PART" and info.value.hint
    with pytest.raises(KafkaError):
        consumer.watermarks("gone", 0)
    with pytest.raises(KafkaError) as info:
        FakeProducer(kafka).produce("here", b"x", partition=7)
    assert info.value.code == "_UNKNOWN_PARTITION"


# -- read_to_end --------------------------------------------------------------------------------

def committed_topic(kafka: InMemoryKafka, topic: str, batches: list[list[bytes]], *, abort_last: bool = False) -> None:
    producer = FakeProducer(kafka, transactional_id=f"writer-{topic}")
    producer.init_transactions()
    for i, batch in enumerate(batches):
        producer.begin_transaction()
        for value in batch:
            producer.produce(topic, value, key="k")
        if abort_last and i == len(batches) - 1:
            producer.abort_transaction()
        else:
            producer.commit_transaction()


def test_read_to_end_finishes_a_topic_that_ends_in_a_commit_marker() -> None:
    kafka = InMemoryKafka(partitions=1)
    committed_topic(kafka, "out", [[b"a", b"b"], [b"c"]])
    consumer = FakeConsumer(kafka)
    assert consumer.watermarks("out", 0) == (0, 5), "the last offset is a marker, never delivered"
    assert values(read_to_end(consumer, "out", idle_timeout_s=0.5)) == [b"a", b"b", b"c"]


def test_read_to_end_finishes_a_topic_that_ends_in_an_aborted_transaction() -> None:
    kafka = InMemoryKafka(partitions=1)
    committed_topic(kafka, "out", [[b"a"], [b"x", b"y"]], abort_last=True)
    assert values(read_to_end(FakeConsumer(kafka), "out", idle_timeout_s=0.5)) == [b"a"]


def test_read_to_end_of_empty_partitions_is_done_at_once_and_a_missing_topic_raises() -> None:
    kafka = InMemoryKafka(partitions=3)
    kafka.create_topic("empty")
    started = time.monotonic()
    assert list(read_to_end(FakeConsumer(kafka), ["empty"], idle_timeout_s=5)) == []
    assert time.monotonic() - started < 1
    with pytest.raises(KafkaError) as info:
        list(read_to_end(FakeConsumer(kafka), "missing"))
    assert info.value.code == "UNKNOWN_TOPIC_OR_PART"


def test_read_to_end_stops_at_the_end_it_started_with_and_leaves_the_consumer_there() -> None:
    """What is produced while reading is not read (a DLQ replay must not chase its own tail), and
    the caller's consumer then goes on with exactly those records (a model published meanwhile)."""
    kafka = InMemoryKafka(partitions=2)
    producer = FakeProducer(kafka)
    for i in range(4):
        producer.produce("models", f"m{i}".encode(), partition=i % 2)
    consumer = FakeConsumer(kafka, isolation_level="read_uncommitted")
    seen: list[bytes] = []
    for message in read_to_end(consumer, "models", max_messages=1):
        seen.append(message.value())
        producer.produce("models", b"later-" + message.value(), partition=message.partition())
    assert sorted(seen) == [b"m0", b"m1", b"m2", b"m3"]
    assert sorted(values(consumer.consume())) == [b"later-m0", b"later-m1", b"later-m2", b"later-m3"]


def test_read_to_end_from_given_offsets_up_to_given_ends() -> None:
    kafka = InMemoryKafka(partitions=2)
    producer = FakeProducer(kafka)
    for i in range(6):
        producer.produce("t", f"{i % 2}:{i // 2}".encode(), partition=i % 2)
    got = read_to_end(FakeConsumer(kafka), [TopicPartition("t", 0, 1), TopicPartition("t", 1)],
                      stop_at={("t", 1): 2})
    assert sorted(values(got)) == [b"0:1", b"0:2", b"1:0", b"1:1"]
    assert list(read_to_end(FakeConsumer(kafka), [TopicPartition("t", 0, OFFSET_END)])) == []


class Stuck(FakeConsumer):
    """A consumer whose fetches never return (a partition without a leader)."""

    def consume(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[Any]:
        return []


def test_read_to_end_without_progress_raises_a_retriable_error_naming_the_partitions() -> None:
    kafka = InMemoryKafka(partitions=1)
    FakeProducer(kafka).produce("t", b"x")
    with pytest.raises(KafkaError) as info:
        list(read_to_end(Stuck(kafka), "t", idle_timeout_s=0.2))
    assert info.value.retriable and "t[0]" in str(info.value) and info.value.hint


# -- the MQTT fake --------------------------------------------------------------------------------

def test_fake_mqtt_acknowledges_publishes_through_the_hook() -> None:
    mqtt = FakeMqtt()
    acked: list[int] = []
    mqtt.on_published = acked.append
    first = mqtt.publish("a", b"1")
    assert acked == [first.mid]
    mqtt.auto_puback = False
    second, third = mqtt.publish("a", b"2"), mqtt.publish("a", b"3")
    assert acked == [first.mid]
    mqtt.puback(third.mid)
    mqtt.puback()
    assert acked == [first.mid, third.mid, second.mid]


def test_the_fake_cluster_builds_clients_from_the_adapters_arguments() -> None:
    kafka = InMemoryKafka(partitions=1)
    producer = kafka.producer(**{"transactional.id": "w-1", "linger.ms": 2})
    producer.init_transactions()
    producer.begin_transaction()
    producer.produce("models", b"m", key="pump")
    reader = kafka.consumer("models-reader", ["models"], **{"isolation.level": "read_uncommitted"})
    assert values(reader.consume()) == [b"m"] and reader.group_id == "models-reader"
    late = kafka.consumer("g", ["models"], **{"auto.offset.reset": "latest"})
    producer.commit_transaction()
    assert late.consume() == [] and values(kafka.consumer("g2", ["models"]).consume()) == [b"m"]


class _Record:
    """What confluent-kafka's consume() hands back: a message, or an error event in its place."""

    def __init__(self, value: bytes | None = None, error: confluent_kafka.KafkaError | None = None) -> None:
        self._value, self._error = value, error

    def error(self) -> confluent_kafka.KafkaError | None:
        return self._error

    def value(self) -> bytes | None:
        return self._value


class _Fetches:
    """Stands in for the librdkafka consumer: each consume() returns the next list."""

    def __init__(self, *batches: list[_Record]) -> None:
        self.batches = list(batches)

    def consume(self, num_messages: int, timeout: float) -> list[_Record]:
        return self.batches.pop(0) if self.batches else []


def test_consume_returns_the_good_records_of_a_fetch_before_raising_its_error() -> None:
    consumer = KafkaConsumer(nowhere(), "g")
    denied = E(E.TOPIC_AUTHORIZATION_FAILED)
    consumer._consumer = _Fetches([_Record(b"a"), _Record(error=denied), _Record(b"b")],  # type: ignore[assignment]
                                  [_Record(b"c")])
    assert [m.value() for m in consumer.consume()] == [b"a", b"b"]  # their position has moved on
    with pytest.raises(KafkaError) as raised:
        consumer.consume()
    assert raised.value.code == "TOPIC_AUTHORIZATION_FAILED"
    assert [m.value() for m in consumer.consume()] == [b"c"]


def test_a_fatal_event_is_fatal_whatever_its_flags() -> None:
    error = kafka_error(E(E._FATAL), "consume")
    assert error.fatal and error.code == "_FATAL"
