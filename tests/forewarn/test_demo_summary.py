"""The demo's check reads what the pipeline committed up to now (through read_to_end) on the
in-memory Kafka: committed transactions count, aborted ones do not, an open one is not waited for;
with the offsets of the run's start, only what this run produced counts."""

from __future__ import annotations

from forewarn.contract import Alert, MaintenanceEvent, Prediction, encode
from forewarn.demo import _count, check_pipeline, end_offsets
from forewarn.settings import ServiceSettings
from forewarn.testing import InMemoryKafka
from forewarn.topics import Topics

SETTINGS = ServiceSettings()
TOPICS = Topics.from_settings(SETTINGS.topics)
T0 = 1_764_201_600_000


def _prediction(machine: str, seq: int) -> bytes:
    return encode(Prediction(v=1, machine_id=machine, asset_type="pump", ts=T0 + seq, seq=seq, model="pump",
                             model_version="v1", scored_at=T0 + seq, p_fail=0.9, rul=3.0))


def _opened(machine: str, at: int) -> bytes:
    return encode(Alert(v=1, alert_id=f"{machine}:{at}", machine_id=machine, state="open", severity="critical",
                        rule="p_fail_above", opened_at=at, ts=at, p_fail=0.9, model_version="v1", asset_type="pump"))


def _failure(machine: str, at: int) -> bytes:
    return encode(MaintenanceEvent(v=1, machine_id=machine, ts=at, event="failure", failure_mode="bearing_wear"))


def test_the_check_counts_what_was_committed_and_ends_at_the_present_end() -> None:
    kafka = InMemoryKafka(partitions=2)
    worker = kafka.producer(**{"transactional.id": "demo-worker-1"})
    worker.init_transactions()
    worker.begin_transaction()
    for seq in range(5):
        worker.produce(TOPICS.predictions, _prediction("s/a", seq), key="s/a")
    worker.produce(TOPICS.alerts, _opened("s/a", T0 + 10), key="s/a")
    worker.commit_transaction()  # markers follow: the read must not wait for records that never come
    worker.begin_transaction()
    worker.produce(TOPICS.alerts, _opened("s/b", T0 + 10), key="s/b")
    worker.produce(TOPICS.predictions, _prediction("s/b", 1), key="s/b")
    worker.abort_transaction()
    simulator = kafka.producer()
    simulator.produce(TOPICS.maintenance, _failure("s/a", T0 + 20), key="s/a")
    simulator.produce(TOPICS.maintenance, _failure("s/b", T0 + 20), key="s/b")
    simulator.produce(TOPICS.maintenance, b"{not json", key="s/c")
    simulator.flush()
    worker.begin_transaction()  # still open when the check reads: not counted, not waited for
    worker.produce(TOPICS.predictions, _prediction("s/a", 6), key="s/a")

    result = check_pipeline(SETTINGS, TOPICS, timeout_s=5, consumer=kafka.consumer())

    assert (result.predictions, result.alerts_opened, result.failures, result.warned_failures) == (5, 1, 2, 1)
    assert result.ok
    # The progress figure counts offsets: the five predictions, one aborted, and the markers.
    assert _count(kafka.consumer(), TOPICS.predictions) == 5 + 1 + 2
    assert _count(kafka.consumer(), "no-such-topic") == 0


def test_nothing_flowed_fails_the_check() -> None:
    kafka = InMemoryKafka(partitions=1)
    for topic in (TOPICS.predictions, TOPICS.alerts, TOPICS.maintenance):
        kafka.create_topic(topic)
    result = check_pipeline(SETTINGS, TOPICS, timeout_s=5, consumer=kafka.consumer())
    assert (result.predictions, result.failures) == (0, 0) and not result.ok


def test_the_check_counts_only_what_came_after_the_run_started() -> None:
    kafka = InMemoryKafka(partitions=2)
    previous = kafka.producer()  # a run before this one: predictions, an early alert and a warned failure
    for seq in range(7):
        previous.produce(TOPICS.predictions, _prediction("s/a", seq), key="s/a")
    previous.produce(TOPICS.alerts, _opened("s/a", T0 + 10), key="s/a")
    previous.produce(TOPICS.maintenance, _failure("s/a", T0 + 20), key="s/a")
    previous.flush()
    since = end_offsets(kafka.consumer(), [TOPICS.predictions, TOPICS.alerts, TOPICS.maintenance, "not-yet"])

    nothing = check_pipeline(SETTINGS, TOPICS, timeout_s=5, consumer=kafka.consumer(), since=since)
    assert (nothing.predictions, nothing.alerts_opened, nothing.failures) == (0, 0, 0) and not nothing.ok
    assert nothing.problem is not None and nothing.problem.startswith("no predictions since this run started")
    assert "\n" not in nothing.problem
    assert _count(kafka.consumer(), TOPICS.predictions, since) == 0 < _count(kafka.consumer(), TOPICS.predictions)

    this_run = kafka.producer()
    for seq in range(3):
        this_run.produce(TOPICS.predictions, _prediction("s/b", seq), key="s/b")
    this_run.flush()
    only_predictions = check_pipeline(SETTINGS, TOPICS, timeout_s=5, consumer=kafka.consumer(), since=since)
    assert only_predictions.predictions == 3 and only_predictions.problem is not None
    assert "no simulated failure" in only_predictions.problem

    this_run.produce(TOPICS.alerts, _opened("s/b", T0 + 30), key="s/b")
    failure = encode(MaintenanceEvent(v=1, machine_id="s/b", ts=T0 + 40, event="failure", event_id="s/b/r2/0"))
    this_run.produce(TOPICS.maintenance, failure, key="s/b")
    this_run.produce(TOPICS.maintenance, failure, key="s/b")  # redelivered: the same event
    this_run.flush()
    result = check_pipeline(SETTINGS, TOPICS, timeout_s=5, consumer=kafka.consumer(), since=since)
    assert (result.predictions, result.alerts_opened, result.failures, result.warned_failures) == (3, 1, 1, 1)
    assert result.ok and result.problem is None
