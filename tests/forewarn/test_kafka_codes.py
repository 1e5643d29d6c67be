"""The table of librdkafka's error codes (forewarn.kafka.classify), tested with errors built from
the real codes, and the facts it rests on: confluent-kafka's delivery-report errors carry no
retriable/fatal flags whatever the code, and a fatal client error comes out of poll/flush as a
KafkaError with ``fatal`` set. The in-memory fake producer reports exactly so."""

from __future__ import annotations

from typing import Any

import confluent_kafka
import pytest

from forewarn.errors import KafkaError
from forewarn.kafka import ERROR_CLASSES, ErrorClass, KafkaProducer, classify, kafka_error, refused_for_good
from forewarn.testing import FakeProducer, InMemoryKafka, broker_error
from tests.forewarn.test_kafka_adapter import nowhere

E = confluent_kafka.KafkaError


def test_every_name_in_the_table_is_a_librdkafka_code_and_has_one_class() -> None:
    for name in ERROR_CLASSES:
        code = getattr(E, name)
        assert E(code).name() == name
    assert len(ERROR_CLASSES) == len(set(ERROR_CLASSES))


@pytest.mark.parametrize(("code", "expected"), [
    (E.MSG_SIZE_TOO_LARGE, ErrorClass.NEVER_STORABLE),
    (E.INVALID_MSG, ErrorClass.NEVER_STORABLE),  # the broker's CORRUPT_MESSAGE
    (E.INVALID_MSG_SIZE, ErrorClass.NEVER_STORABLE),
    (E.RECORD_LIST_TOO_LARGE, ErrorClass.NEVER_STORABLE),
    (E.INVALID_RECORD, ErrorClass.NEVER_STORABLE),
    (E.INVALID_TIMESTAMP, ErrorClass.NEVER_STORABLE),
    (E._MSG_TIMED_OUT, ErrorClass.RETRIABLE),
    (E._TIMED_OUT, ErrorClass.RETRIABLE),
    (E._TRANSPORT, ErrorClass.RETRIABLE),
    (E._ALL_BROKERS_DOWN, ErrorClass.RETRIABLE),
    (E._PURGE_QUEUE, ErrorClass.RETRIABLE),
    (E.REQUEST_TIMED_OUT, ErrorClass.RETRIABLE),
    (E.NOT_ENOUGH_REPLICAS, ErrorClass.RETRIABLE),
    (E.NOT_ENOUGH_REPLICAS_AFTER_APPEND, ErrorClass.RETRIABLE),
    (E.LEADER_NOT_AVAILABLE, ErrorClass.RETRIABLE),
    (E.NOT_LEADER_FOR_PARTITION, ErrorClass.RETRIABLE),
    (E.UNKNOWN_TOPIC_OR_PART, ErrorClass.RETRIABLE),
    (E.TOPIC_AUTHORIZATION_FAILED, ErrorClass.AUTHORIZATION),
    (E.CLUSTER_AUTHORIZATION_FAILED, ErrorClass.AUTHORIZATION),
    (E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, ErrorClass.AUTHORIZATION),
    (E.SASL_AUTHENTICATION_FAILED, ErrorClass.AUTHORIZATION),
    (E._FATAL, ErrorClass.FATAL),
    (E._FENCED, ErrorClass.FATAL),
    (E.OUT_OF_ORDER_SEQUENCE_NUMBER, ErrorClass.FATAL),
    (E.PRODUCER_FENCED, ErrorClass.FATAL),
    (E.INVALID_PRODUCER_EPOCH, ErrorClass.FATAL),
    (E.UNKNOWN_PRODUCER_ID, ErrorClass.FATAL),
])
def test_an_error_is_classified_by_its_code_not_its_flags(code: int, expected: ErrorClass) -> None:
    report = E(code)  # as confluent-kafka builds a delivery report's error: no flags
    assert not report.retriable() and not report.fatal()
    assert classify(report) is expected
    assert classify(broker_error(code, retriable=True)) is expected, "the flag does not decide"
    assert classify(kafka_error(report, "produce to t")) is expected, "nor does the adapter's wrapping"
    assert refused_for_good(report) is (expected is ErrorClass.NEVER_STORABLE)


def test_an_error_flagged_fatal_is_fatal_whatever_its_code() -> None:
    """confluent-kafka raises a fatal error from poll/flush with the underlying code and the flag."""
    assert classify(broker_error(E.MSG_SIZE_TOO_LARGE, fatal=True)) is ErrorClass.FATAL
    assert classify(KafkaError("serve delivery reports", code="OUT_OF_ORDER_SEQUENCE_NUMBER", fatal=True)) \
        is ErrorClass.FATAL


def test_an_unknown_code_or_no_code_is_retried_never_dead_lettered() -> None:
    assert classify(E(E.UNKNOWN)) is ErrorClass.RETRIABLE
    assert classify(KafkaError("something broke")) is ErrorClass.RETRIABLE
    assert classify(KafkaError("produce", code="A_CODE_OF_A_LATER_LIBRDKAFKA")) is ErrorClass.RETRIABLE
    assert not refused_for_good(E(E.UNKNOWN))


def test_the_real_client_reports_an_expired_message_timeout_without_flags_and_it_is_retriable() -> None:
    """The fact the table exists for: librdkafka's own report of a message.timeout.ms expiry
    says neither retriable nor fatal, which a flag-based rule took for "refused for good"."""
    producer = KafkaProducer(nowhere(), log_level=0, **{"message.timeout.ms": 100})
    reports: list[Any] = []
    producer.produce("t", b"v", on_delivery=lambda err, _msg: reports.append(err))
    assert producer.flush(10) == 0
    [error] = reports
    assert error.name() == "_MSG_TIMED_OUT" and not error.retriable() and not error.fatal()
    assert classify(error) is ErrorClass.RETRIABLE and not refused_for_good(error)


def test_the_real_client_refuses_a_record_above_message_max_bytes_at_once_as_never_storable() -> None:
    producer = KafkaProducer(nowhere(), log_level=0, **{"message.max.bytes": 1000})
    with pytest.raises(KafkaError) as info:
        producer.produce("t", b"x" * 5000)
    assert classify(info.value) is ErrorClass.NEVER_STORABLE


def test_rebuild_abandons_the_client_without_serving_its_reports_and_builds_a_new_one() -> None:
    producer = KafkaProducer(nowhere(), log_level=0, **{"message.timeout.ms": 100})
    old: list[Any] = []
    producer.produce("t", b"old", on_delivery=lambda err, _msg: old.append(err))
    producer.rebuild()
    assert len(producer) == 0
    new: list[Any] = []
    producer.produce("t", b"new", on_delivery=lambda err, _msg: new.append(err))
    assert producer.flush(10) == 0
    assert old == [] and [e.name() for e in new] == ["_MSG_TIMED_OUT"]


# -- the fake reports as the real client does ----------------------------------------------------

def test_the_fakes_delivery_errors_carry_no_flags_like_the_real_clients() -> None:
    producer = FakeProducer(InMemoryKafka())
    producer.fail_next = 1
    reports: list[Any] = []
    producer.produce("t", b"x", on_delivery=lambda err, _msg: reports.append(err))
    producer.flush()
    [error] = reports
    assert error.name() == "_MSG_TIMED_OUT" and not error.retriable() and not error.fatal()


def test_the_fakes_fatal_error_comes_from_poll_once_then_produce_raises_fatal_until_rebuilt() -> None:
    kafka = InMemoryKafka()
    producer = FakeProducer(kafka)
    reports: list[tuple[Any, bytes | None]] = []

    def report(err: Any, msg: Any) -> None:
        reports.append((err, msg.value()))

    producer.produce("t", b"before", key="k", on_delivery=report)
    producer.fatal_next = broker_error(E.OUT_OF_ORDER_SEQUENCE_NUMBER)
    producer.produce("t", b"met it", key="k", on_delivery=report)
    with pytest.raises(KafkaError) as raised:
        producer.poll()
    assert raised.value.fatal and raised.value.code == "OUT_OF_ORDER_SEQUENCE_NUMBER"
    assert classify(raised.value) is ErrorClass.FATAL
    (ok, first), (failed, second) = reports
    assert ok is None and first == b"before"
    assert failed.name() == "OUT_OF_ORDER_SEQUENCE_NUMBER" and not failed.fatal() and second == b"met it"
    assert classify(failed) is ErrorClass.FATAL, "the report's code alone says fatal"
    producer.poll()  # raised once
    with pytest.raises(KafkaError) as after:
        producer.produce("t", b"after", key="k")
    assert after.value.code == "_FATAL" and classify(after.value) is ErrorClass.FATAL
    producer.rebuild()
    producer.produce("t", b"again", key="k")
    producer.flush()
    assert [m.value() for m in kafka.messages("t")] == [b"before", b"again"] and producer.rebuilds == 1
