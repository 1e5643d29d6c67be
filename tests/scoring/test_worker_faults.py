"""The scoring worker on the in-memory Kafka fakes when Kafka fails the way librdkafka reports it
(real error codes and flags): retried commits, aborts, fatal producers, failed fetches, and a
record the engine cannot process. Every case ends with exactly the reference predictions."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import confluent_kafka
import msgspec
import pytest

from forewarn.bundle import Bundle
from forewarn.contract import Decoder, MaintenanceEvent, PipelineStats, Reason, Rejected, encode
from forewarn.deadletter import DeadLetter, Kind
from forewarn.errors import KafkaError
from forewarn.kafka import kafka_error
from forewarn.testing import FakeConsumer, FakeMessage, FakeProducer, InMemoryKafka, broker_error
from scoring import worker as worker_module
from scoring.errors import ScoringError
from scoring.settings import ScoringOptions, ScoringSettings
from scoring.worker import ScoringWorker
from tests.scoring import test_worker
from tests.scoring.bundle_factory import trust_settings
from tests.scoring.faulty import POISON, BrittleEngine
from tests.scoring.fleet_data import FleetData
from tests.scoring.test_worker import (
    GROUP,
    SETTINGS,
    TOPICS,
    cluster,
    committed_predictions,
    counted,
    drain,
    feed,
    offline,
)

data = test_worker.data  # the fixtures of the worker's other unit tests: the same fleet and bundle
bundle = test_worker.bundle
_E = confluent_kafka.KafkaError
Faults = dict[str, list[KafkaError]]


class Sticky(list[KafkaError]):
    """A queue of faults that repeats its first one until it is cleared."""

    def pop(self, index: Any = -1) -> KafkaError:
        return self[0]


def error(call: str, code: int, *, fatal: bool = False, retriable: bool = False,
          txn_requires_abort: bool = False) -> KafkaError:
    """What the adapter raises for librdkafka's ``code`` with these flags."""
    return kafka_error(broker_error(code, fatal=fatal, retriable=retriable, txn_requires_abort=txn_requires_abort),
                       call)


class FaultyProducer(FakeProducer):
    """The fake transactional producer, except that the calls named in ``faults`` raise the
    errors queued for them first. A fatal one leaves the producer unusable, as in librdkafka."""

    def __init__(self, kafka: InMemoryKafka, faults: Faults, **overrides: Any) -> None:
        super().__init__(kafka, transactional_id=overrides.get("transactional.id"))
        self.faults = faults
        self.hangs: list[threading.Event] = []

    def _fault(self, call: str) -> None:
        queued = self.faults.get(call)
        if queued:
            failure = queued.pop(0)
            if failure.fatal:
                self._fatal = broker_error(_E._FENCED if failure.code == "_FENCED" else _E._FATAL, str(failure),
                                           fatal=True)
            raise failure

    def commit_transaction(self, timeout_s: float = 60.0) -> None:
        self._fault("commit")
        super().commit_transaction(timeout_s)
        self._fault("commit_answer")  # committed, but the caller hears of a failure

    def abort_transaction(self, timeout_s: float = 60.0) -> None:
        self._fault("abort")
        super().abort_transaction(timeout_s)

    def send_offsets_to_transaction(self, offsets: Any, group_metadata: object, timeout_s: float = 30.0) -> None:
        if self.hangs:  # librdkafka#5456: blocks past its timeout while the group coordinator is down
            self.hangs.pop(0).wait(30)
        super().send_offsets_to_transaction(offsets, group_metadata, timeout_s)


class FaultyConsumer(FakeConsumer):
    """A fake group member whose ``consume`` fetches and then raises the next queued error: the
    records of that fetch are lost to the caller, as when librdkafka returns an error event
    among them and the adapter raises it."""

    def __init__(self, kafka: InMemoryKafka, faults: list[KafkaError], topics: Iterable[str] = (),
                 **kwargs: Any) -> None:
        super().__init__(kafka, topics, **kwargs)
        self.faults = faults
        self.committed_faults: list[KafkaError] = []

    def consume(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[FakeMessage]:
        out = super().consume(max_messages, timeout_s)
        if out and self.faults:
            raise self.faults.pop(0)
        return out

    def committed(self, partitions: Sequence[Any], timeout_s: float = 10.0) -> list[Any]:
        if self.committed_faults:
            raise self.committed_faults.pop(0)
        return super().committed(partitions, timeout_s)


class Rig:
    """A worker on ``kafka`` whose clients are built with the queued faults."""

    def __init__(self, kafka: InMemoryKafka, faults: Faults | None = None,
                 consume_faults: list[KafkaError] | None = None, **options: Any) -> None:
        self.kafka = kafka
        self.faults = faults or {}
        self.consume_faults = consume_faults or []
        self.producers: list[FaultyProducer] = []
        settings = ScoringSettings(topics=SETTINGS, trust=trust_settings(),
                               scoring=ScoringOptions(**{
            "group_id": GROUP, "worker_id": "w", "threads": 1, "max_batch": 40, "retry_backoff_max_s": 0.0,
            "transaction_timeout_ms": 1000, **options}))
        self.worker = ScoringWorker(settings, producer_factory=self.producer, consumer_factory=self.consumer)

    def producer(self, **overrides: Any) -> FaultyProducer:
        self.producers.append(FaultyProducer(self.kafka, self.faults, **overrides))
        return self.producers[-1]

    def consumer(self, group_id: str, topics: Iterable[str] = (), **overrides: Any) -> FakeConsumer:
        if group_id != GROUP:
            return self.kafka.consumer(group_id, topics, **overrides)
        return FaultyConsumer(self.kafka, self.consume_faults, topics, group_id=group_id)


def run_with(kafka: InMemoryKafka, data: FleetData, rig: Rig, arm: Any) -> None:
    """Score the first half, ``arm()`` the faults, then score the rest."""
    w = rig.worker
    w.start()
    half = len(data.readings) // 2
    feed(kafka, data.readings[:half])
    drain(w)
    arm()
    feed(kafka, data.readings[half:])
    drain(w)


def test_a_commit_that_times_out_is_retried_on_the_same_producer(data: FleetData, bundle: Bundle) -> None:
    kafka = cluster(bundle)
    rig = Rig(kafka)
    run_with(kafka, data, rig, lambda: rig.faults.setdefault("commit", []).append(
        error("commit transaction", _E._TIMED_OUT, retriable=True)))
    assert not rig.faults["commit"] and len(rig.producers) == 1
    assert committed_predictions(kafka) == offline(data, bundle)
    assert counted(rig.worker, "accepted") == len(data.readings)
    rig.worker.close()


def test_a_commit_that_keeps_timing_out_is_aborted_and_the_batch_done_again(data: FleetData,
                                                                            bundle: Bundle) -> None:
    kafka = cluster(bundle)
    rig = Rig(kafka)
    timeouts = Sticky([error("commit transaction", _E._TIMED_OUT, retriable=True)])

    def arm() -> None:
        rig.faults["commit"] = timeouts
        # As in librdkafka: the timed-out commit goes on in the background, an abort conflicts.
        rig.faults["abort"] = [error("abort transaction", _E._CONFLICT, retriable=True)]
        before = kafka.committed(GROUP)
        feed(kafka, data.readings[:1])  # a duplicate: its batch times out until the transaction timeout
        assert rig.worker.step() == 1
        assert kafka.committed(GROUP) == before
        timeouts.clear()

    run_with(kafka, data, rig, arm)
    assert not rig.faults["abort"] and len(rig.producers) == 2  # a new producer ended the transaction
    assert committed_predictions(kafka) == offline(data, bundle)
    assert counted(rig.worker, "accepted") == len(data.readings)
    rig.worker.close()


def test_a_fenced_producer_is_replaced_and_nothing_is_lost_or_doubled(data: FleetData, bundle: Bundle) -> None:
    """The coordinator bumps the epoch of a transaction it timed out (here: another producer
    registers the same transactional id): the worker's producer fails for good, a new one
    takes over and the batch is done again."""
    kafka = cluster(bundle)
    rig = Rig(kafka)
    run_with(kafka, data, rig, lambda: kafka.producer(**{"transactional.id": f"{GROUP}.w"}).init_transactions())
    assert len(rig.producers) == 2
    assert committed_predictions(kafka) == offline(data, bundle)
    assert counted(rig.worker, "accepted") == len(data.readings)
    rig.worker.close()


def test_an_abort_that_fails_for_good_is_done_by_a_new_producer(data: FleetData, bundle: Bundle) -> None:
    kafka = cluster(bundle)
    rig = Rig(kafka)

    def arm() -> None:
        rig.faults["commit"] = [error("commit transaction", _E._MSG_TIMED_OUT, txn_requires_abort=True)]
        rig.faults["abort"] = [error("abort transaction", _E.INVALID_TXN_STATE, fatal=True)]

    run_with(kafka, data, rig, arm)
    assert not rig.faults["abort"] and len(rig.producers) == 2
    assert committed_predictions(kafka) == offline(data, bundle)
    rig.worker.close()


def test_a_call_stuck_past_its_timeout_abandons_the_producer(data: FleetData, bundle: Bundle,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "_HANG_GRACE_S", 0.05)
    kafka = cluster(bundle)
    rig = Rig(kafka)
    release = threading.Event()
    try:
        run_with(kafka, data, rig, lambda: rig.producers[0].hangs.append(release))
    finally:
        release.set()
    assert len(rig.producers) == 2 and not rig.producers[0].hangs
    assert committed_predictions(kafka) == offline(data, bundle)
    rig.worker.close()


def test_an_assignment_whose_state_cannot_be_read_is_rewound_before_scoring(data: FleetData,
                                                                             bundle: Bundle) -> None:
    """Kafka does not answer while partitions are assigned: the records the same consume
    returned are not scored with empty state; the worker rewinds first."""
    kafka = cluster(bundle)
    rig = Rig(kafka)
    feed(kafka, data.readings)
    rig.worker.start()
    assert isinstance(rig.worker._consumer, FaultyConsumer)
    rig.worker._consumer.committed_faults.append(error("read committed offsets", _E._TIMED_OUT, retriable=True))
    assert rig.worker.step() == 0  # assigned, but its state is not restored: nothing is scored
    drain(rig.worker)
    assert committed_predictions(kafka) == offline(data, bundle)
    rig.worker.close()


class LeaderlessReader(FakeConsumer):
    """The restore reader while a state partition has no leader (its only replica's broker is
    down): reading its watermarks fails as librdkafka's does, ``fails`` times."""

    fails = 0

    def watermarks(self, topic: str, partition: int, *, cached: bool = False,
                   timeout_s: float = 10.0) -> tuple[int, int]:
        if LeaderlessReader.fails:
            LeaderlessReader.fails -= 1
            raise error("read the watermarks", _E._UNKNOWN_PARTITION)
        return super().watermarks(topic, partition, cached=cached, timeout_s=timeout_s)


class LeaderlessRig(Rig):
    """A rig whose state-restoring readers are :class:`LeaderlessReader`."""

    def consumer(self, group_id: str, topics: Iterable[str] = (), **overrides: Any) -> FakeConsumer:
        if group_id != GROUP:
            return LeaderlessReader(self.kafka, topics, group_id=group_id)
        return super().consumer(group_id, topics, **overrides)


def test_a_state_partition_without_a_leader_is_waited_for_not_fatal(data: FleetData, bundle: Bundle) -> None:
    """The worker rewinds (a failed fetch) while the state changelog cannot be read (Unknown
    partition: no leader): it keeps trying (it used to stop with a RecoveryError), then
    predicts exactly the reference."""
    kafka = cluster(bundle)
    rig = LeaderlessRig(kafka)

    def arm() -> None:
        LeaderlessReader.fails = 3
        rig.consume_faults.append(error("consume", _E.TOPIC_AUTHORIZATION_FAILED))

    run_with(kafka, data, rig, arm)
    for _ in range(5):  # each recovery step that meets the leaderless partition consumes nothing
        rig.worker.step()
        drain(rig.worker)
    assert LeaderlessReader.fails == 0, "the worker read the changelog again after each failure"
    assert committed_predictions(kafka) == offline(data, bundle)
    rig.worker.close()


def test_a_failed_fetch_rewinds_so_its_records_are_read_again(data: FleetData, bundle: Bundle) -> None:
    kafka = cluster(bundle)
    rig = Rig(kafka)
    run_with(kafka, data, rig, lambda: rig.consume_faults.append(
        error("consume", _E.TOPIC_AUTHORIZATION_FAILED)))
    assert not rig.consume_faults
    drain(rig.worker)  # the step that failed consumed nothing; the worker was rewound
    assert committed_predictions(kafka) == offline(data, bundle)
    rig.worker.close()


def fenced() -> KafkaError:
    """What a consume returns when the group fenced a static member: librdkafka's ``_FATAL``
    event (its ``fatal()`` is false; the underlying error is in the text)."""
    return error("consume", _E._FATAL)


def test_a_fenced_consumer_is_replaced_and_nothing_is_lost(data: FleetData, bundle: Bundle) -> None:
    """A lone worker's static member is fenced when the coordinator comes back after a crash:
    a new member joins and restores what it is assigned."""
    kafka = cluster(bundle)
    rig = Rig(kafka)
    run_with(kafka, data, rig, lambda: rig.consume_faults.append(fenced()))
    drain(rig.worker)  # the step that failed consumed nothing; the new member has joined
    assert not rig.consume_faults
    assert committed_predictions(kafka) == offline(data, bundle)
    rig.worker.close()


def test_a_consumer_fenced_again_and_again_stops_the_worker_with_one_line(data: FleetData,
                                                                           bundle: Bundle) -> None:
    kafka = cluster(bundle)
    rig = Rig(kafka, consume_faults=[fenced(), fenced(), fenced()])
    feed(kafka, data.readings)
    rig.worker.start()
    assert rig.worker.step() == 0 and rig.worker.step() == 0
    with pytest.raises(ScoringError) as raised:
        rig.worker.step()
    assert "same worker id" in raised.value.one_line() and "\n" not in raised.value.one_line()
    rig.worker.close()


def test_a_record_the_engine_cannot_process_is_dead_lettered_and_the_rest_scored(data: FleetData,
                                                                                 bundle: Bundle) -> None:
    kafka = cluster(bundle)
    rig = Rig(kafka)
    w = rig.worker
    w.engine = BrittleEngine(w.registry, w.options)
    third = len(data.readings) // 3
    poisons = [msgspec.structs.replace(data.readings[i], machine_id=POISON) for i in (third, third + 1, 2 * third)]
    feed(kafka, [*data.readings[:third], *poisons[:2], *data.readings[third:2 * third], poisons[2],
                 *data.readings[2 * third:]])
    event = msgspec.structs.replace(data.events[0], machine_id=POISON)
    kafka.producer().produce(TOPICS.maintenance, encode(event), POISON)
    w.start()
    drain(w)
    assert committed_predictions(kafka) == offline(data, bundle)
    letters = [DeadLetter.from_message(m) for m in kafka.messages(TOPICS.dlq)]
    assert len(letters) == 4 and {letter.reason for letter in letters} == {Reason.UNPROCESSABLE}
    assert all("OverflowError" in letter.detail and "poison-1" in letter.mqtt_topic for letter in letters)
    assert sorted(letter.kind for letter in letters) == [Kind.MAINTENANCE, *[Kind.TELEMETRY] * 3]
    assert counted(w, "rejected") == 4 and counted(w, "accepted") == len(data.readings)
    w.close()


class BrittleDecoder(Decoder):
    """The contract decoder, except that it raises on a maintenance payload naming ``POISON``."""

    def maintenance(self, raw: bytes, arrived_ms: int | None = None) -> MaintenanceEvent | Rejected:
        if POISON.encode() in raw:
            raise RecursionError("maximum recursion depth exceeded")
        return super().maintenance(raw, arrived_ms)


def test_a_record_the_decoder_cannot_handle_is_dead_lettered(data: FleetData, bundle: Bundle) -> None:
    kafka = cluster(bundle)
    settings = ScoringSettings(topics=SETTINGS, trust=trust_settings(),
                               scoring=ScoringOptions(group_id=GROUP, worker_id="w", threads=1))
    w = ScoringWorker(settings, decoder=BrittleDecoder(), producer_factory=kafka.producer,
                      consumer_factory=kafka.consumer)
    feed(kafka, data.readings)
    kafka.producer().produce(TOPICS.maintenance, encode(msgspec.structs.replace(data.events[0], machine_id=POISON)),
                             POISON)
    w.start()
    drain(w)
    (letter,) = [DeadLetter.from_message(m) for m in kafka.messages(TOPICS.dlq)]
    assert letter.reason == Reason.UNPROCESSABLE and "decoding raised RecursionError" in letter.detail
    assert committed_predictions(kafka) == offline(data, bundle)
    w.close()


_stats = msgspec.json.Decoder(PipelineStats)


def pipeline_stats(kafka: InMemoryKafka) -> list[PipelineStats]:
    return [_stats.decode(m.value() or b"") for m in kafka.messages(TOPICS.pipeline)]


def test_pipeline_stats_count_committed_batches_once(data: FleetData, bundle: Bundle) -> None:
    kafka = cluster(bundle)
    rig = Rig(kafka, stats_interval_s=1e-6)  # due at every transaction that counted something
    kafka.producer().produce(TOPICS.telemetry, b"{not json", data.readings[0].machine_id)

    def arm() -> None:
        rig.producers[0].fail_next = 1  # the next transaction aborts: its stats must not count

    run_with(kafka, data, rig, arm)
    records = pipeline_stats(kafka)
    assert records and all(r.source == "w" and r.role == "scoring" for r in records)
    assert all(m.key() == b"w" for m in kafka.messages(TOPICS.pipeline))
    assert all(b.since == a.until for a, b in itertools.pairwise(records))
    scored = sum(r.counts.get("scored", 0) for r in records)
    assert scored == len(kafka.messages(TOPICS.predictions))
    assert sum(r.counts.get("rejected", 0) for r in records) == 1
    rig.worker.close()


def test_pipeline_stats_wait_for_their_interval_and_then_go_out_alone(data: FleetData, bundle: Bundle) -> None:
    kafka = cluster(bundle)
    now = [1_800_000_000.0]
    settings = ScoringSettings(topics=SETTINGS, trust=trust_settings(),
                               scoring=ScoringOptions(group_id=GROUP, worker_id="w", threads=1,
                                                                       stats_interval_s=10.0))
    w = ScoringWorker(settings, clock=lambda: now[0], producer_factory=kafka.producer,
                      consumer_factory=kafka.consumer)
    w.start()
    feed(kafka, data.readings)
    drain(w)
    assert pipeline_stats(kafka) == []
    now[0] += 11
    assert w.step() == 0  # nothing consumed, but the stats were due: a transaction of their own
    w.step()
    (record,) = pipeline_stats(kafka)
    assert record.since == 1_800_000_000_000 and record.until == 1_800_000_011_000
    assert record.counts["scored"] == len(kafka.messages(TOPICS.predictions))
    kafka.producer().produce(TOPICS.telemetry, b"{not json", data.readings[0].machine_id)
    drain(w)
    now[0] += 1
    w.close()  # what was counted since goes out before the worker leaves, due or not
    last = pipeline_stats(kafka)[1:]
    assert [(r.since, r.until, r.counts) for r in last] == [(1_800_000_011_000, 1_800_000_012_000, {"rejected": 1})]


def test_a_commit_whose_answer_is_lost_is_counted_once(data: FleetData, bundle: Bundle,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Kafka wrote the commit and died before answering: the worker cannot commit again or
    abort, starts a new producer, and finds from the committed offsets that the batch is done."""
    caplog.set_level(logging.INFO, "scoring.worker")
    kafka = cluster(bundle)
    rig = Rig(kafka, stats_interval_s=1e-6)
    run_with(kafka, data, rig, lambda: rig.faults.setdefault("commit_answer", []).append(
        error("commit transaction", _E._TIMED_OUT, retriable=True)))
    assert not rig.faults["commit_answer"] and len(rig.producers) == 2
    assert "committed after all" in caplog.text
    assert committed_predictions(kafka) == offline(data, bundle)
    assert sum(r.counts.get("scored", 0) for r in pipeline_stats(kafka)) == len(kafka.messages(TOPICS.predictions))
    assert counted(rig.worker, "accepted") == len(data.readings)
    rig.worker.close()
