from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bridge.dlq import ReplayResult, read_dead_letters, replay_records, stats
from bridge.settings import BridgeSettings
from forewarn.cli import cli
from forewarn.cli_options import env_var
from forewarn.contract import Alert, Prediction, Reason, Rejected, encode
from forewarn.deadletter import DeadLetter, Kind, Origin, Record
from forewarn.routing import Router
from forewarn.settings import TopicSettings, load_settings
from forewarn.testing import FakeProducer, InMemoryKafka
from forewarn.topics import (
    Topics,
    alert_topic,
    batch_topic,
    maintenance_topic,
    prediction_topic,
    telemetry_topic,
)
from tests.bridge.helpers import TS0, reading_bytes

TOPICS = Topics.from_settings(TopicSettings(prefix="u."))
RECEIVED = 1_764_300_000_000


def letter(value: bytes, reason: str, topic: str, kind: str, offset: int = 0) -> DeadLetter:
    return DeadLetter(value, reason, "", Kind(kind), topic, 1_764_300_000_000, Origin.BRIDGE, partition=0,
                      offset=offset)


def test_replay_resends_what_passes_now_and_counts_what_does_not() -> None:
    kafka = InMemoryKafka()
    letters = [
        letter(reading_bytes("s/m1", 1), "ts_out_of_range", telemetry_topic("s/m1"), "telemetry", 0),
        letter(b"{broken", "not_json", telemetry_topic("s/m2"), "telemetry", 1),
        letter(reading_bytes("s/m3", 3), "non_finite", batch_topic("s", "gw"), "reading", 2),
    ]
    result = replay_records(iter(letters), Router(TOPICS), FakeProducer(kafka))
    assert (result.scanned, result.matched, result.replayed_payloads, result.records_sent) == (3, 3, 2, 2)
    assert result.still_invalid == {"not_json": 1}
    sent = kafka.messages("u.telemetry")
    assert sorted(m.key() for m in sent) == [b"s/m1", b"s/m3"]
    assert {dict(m.headers() or [])["replayed_from"] for m in sent} == {b"0:0", b"0:2"}
    assert kafka.messages("u.telemetry.dlq") == []


def test_replay_filters_by_reason() -> None:
    kafka = InMemoryKafka()
    letters = [letter(reading_bytes("s/m1", 1), "ts_out_of_range", telemetry_topic("s/m1"), "telemetry"),
               letter(reading_bytes("s/m2", 1), "non_finite", telemetry_topic("s/m2"), "telemetry")]
    result = replay_records(iter(letters), Router(TOPICS), FakeProducer(kafka), reason="non_finite")
    assert (result.scanned, result.matched, result.records_sent) == (2, 1, 1)


# -- replay of every origin's dead letters, read back from the (fake) dead-letter topic ----------

def maintenance_bytes(machine_id: str) -> bytes:
    return json.dumps({"v": 1, "machine_id": machine_id, "ts": TS0, "event": "repair"}).encode()


def write(kafka: InMemoryKafka, *letters: DeadLetter) -> None:
    for letter in letters:
        record: Record = letter.record(TOPICS.dlq)
        kafka.append(record.topic, record.value, record.key.encode() if record.key else None, record.headers,
                     record.timestamp_ms or 0, None, None)


def replay_all(kafka: InMemoryKafka) -> tuple[ReplayResult, FakeProducer]:
    producer = FakeProducer(kafka)
    result = replay_records(read_dead_letters(kafka.consumer(), TOPICS.dlq), Router(TOPICS), producer)
    return result, producer


def refused(value: bytes, kafka_topic: str, mqtt_topic: str, kind: Kind, origin: Origin) -> DeadLetter:
    return DeadLetter.refused(value=value, kafka_topic=kafka_topic, error="MSG_SIZE_TOO_LARGE: too large",
                              mqtt_topic=mqtt_topic, kind=kind, received_at=RECEIVED, origin=origin)


def test_stats_count_the_letters_by_reason() -> None:
    kafka = InMemoryKafka()
    write(kafka, *[refused(reading_bytes("s/m1", i), TOPICS.telemetry, telemetry_topic("s/m1"), Kind.TELEMETRY,
                           Origin.EDGE) for i in range(3)],
          DeadLetter.rejected(Rejected(Reason.NOT_JSON, "", b"{"), mqtt_topic=telemetry_topic("s/m1"),
                              kind=Kind.TELEMETRY, received_at=RECEIVED, origin=Origin.BRIDGE))
    assert stats(kafka.consumer(), TOPICS) == {"kafka_refused": 3, "not_json": 1}


def test_replay_of_the_bridges_letters_rejected_and_refused() -> None:
    kafka = InMemoryKafka()
    write(kafka,
          DeadLetter.rejected(Rejected(Reason.TS_OUT_OF_RANGE, "too early", reading_bytes("s/m1", 1)),
                              mqtt_topic=telemetry_topic("s/m1"), kind=Kind.TELEMETRY, received_at=RECEIVED,
                              origin=Origin.BRIDGE),
          refused(reading_bytes("s/m2", 2), TOPICS.telemetry, batch_topic("s", "gw"), Kind.READING, Origin.BRIDGE),
          refused(maintenance_bytes("s/m3"), TOPICS.maintenance, maintenance_topic("s/m3"), Kind.MAINTENANCE,
                  Origin.BRIDGE))
    result, _producer = replay_all(kafka)
    assert (result.scanned, result.replayed_payloads, result.records_sent) == (3, 3, 3)
    telemetry = kafka.messages(TOPICS.telemetry)
    assert sorted(m.key() for m in telemetry) == [b"s/m1", b"s/m2"]
    assert {dict(m.headers() or [])["ingest_ts"] for m in telemetry} == {b"%d" % RECEIVED}
    assert [m.key() for m in kafka.messages(TOPICS.maintenance)] == [b"s/m3"]


def test_replay_of_the_edges_letters_inputs_and_outputs() -> None:
    kafka = InMemoryKafka()
    prediction = encode(Prediction(1, "s/m1", "pump", TS0, 7, "pump", "3", TS0 + 5, p_fail=0.4))
    alert = encode(Alert(1, "a-1", "s/m2", "open", "warning", "p_fail", TS0, TS0 + 1))
    write(kafka,
          refused(reading_bytes("s/m1", 1), TOPICS.telemetry, telemetry_topic("s/m1"), Kind.TELEMETRY, Origin.EDGE),
          refused(maintenance_bytes("s/m1"), TOPICS.maintenance, maintenance_topic("s/m1"), Kind.MAINTENANCE,
                  Origin.EDGE),
          refused(prediction, TOPICS.predictions, prediction_topic("s/m1"), Kind.PREDICTION, Origin.EDGE),
          refused(alert, TOPICS.alerts, alert_topic("s/m2"), Kind.ALERT, Origin.EDGE),
          refused(alert, TOPICS.alerts, alert_topic("s/other"), Kind.ALERT, Origin.EDGE),  # topic disagrees
          refused(b"{not json", TOPICS.predictions, prediction_topic("s/m1"), Kind.PREDICTION, Origin.EDGE))
    result, _producer = replay_all(kafka)
    assert (result.scanned, result.replayed_payloads) == (6, 4)
    assert result.still_invalid == {"topic_mismatch": 1, "not_json": 1}
    assert [m.key() for m in kafka.messages(TOPICS.telemetry)] == [b"s/m1"]
    assert [m.key() for m in kafka.messages(TOPICS.maintenance)] == [b"s/m1"]
    [replayed_prediction] = kafka.messages(TOPICS.predictions)
    assert replayed_prediction.value() == prediction and replayed_prediction.key() == b"s/m1"
    assert replayed_prediction.timestamp()[1] == TS0
    assert [(m.key(), m.value()) for m in kafka.messages(TOPICS.alerts)] == [(b"s/m2", alert)]


def test_replay_of_a_scoring_workers_letters() -> None:
    kafka = InMemoryKafka()

    def from_worker(raw: bytes, source: str, kind: Kind, key: bytes | None, reason: Reason) -> DeadLetter:
        return DeadLetter.from_kafka(Rejected(reason, "worker could not use it", raw), source_topic=source, kind=kind,
                                     key=key, received_at=RECEIVED, origin=Origin.SCORING)

    write(kafka,
          from_worker(reading_bytes("s/m1", 1), TOPICS.telemetry, Kind.TELEMETRY, b"s/m1", Reason.TS_OUT_OF_RANGE),
          from_worker(maintenance_bytes("s/m2"), TOPICS.maintenance, Kind.MAINTENANCE, b"s/m2", Reason.BAD_VALUE),
          from_worker(b"\x00garbage", TOPICS.telemetry, Kind.TELEMETRY, b"s/m3", Reason.NOT_JSON),
          from_worker(reading_bytes("s/m4", 1), TOPICS.telemetry, Kind.TELEMETRY, b"no-site", Reason.BAD_VALUE))
    letters = {letter.mqtt_topic: letter for letter in read_dead_letters(kafka.consumer(), TOPICS.dlq)}
    first = letters[telemetry_topic("s/m1")]
    assert (first.origin, first.kind, first.kafka_topic) == (Origin.SCORING, Kind.TELEMETRY, TOPICS.telemetry)
    assert letters[""].reason == "bad_value"  # the key named no machine: no MQTT topic
    result, _producer = replay_all(kafka)
    assert (result.scanned, result.replayed_payloads, result.records_sent) == (4, 2, 2)
    # still bad, and a key naming no machine (so no MQTT topic to route by): both stay where they are
    assert result.still_invalid == {"not_json": 1, "topic_mismatch": 1}
    [telemetry] = kafka.messages(TOPICS.telemetry)
    assert telemetry.key() == b"s/m1"
    assert dict(telemetry.headers() or [])["replayed_from"] == f"{first.partition}:{first.offset}".encode()
    assert [m.key() for m in kafka.messages(TOPICS.maintenance)] == [b"s/m2"]


def test_help_names_every_environment_variable() -> None:
    out = CliRunner().invoke(cli, ["bridge", "--help"]).output
    for path in ("bridge.client_id", "bridge.share_group", "bridge.receive_maximum", "bridge.max_in_flight",
                 "bridge.metrics_port", "bridge.session_expiry_s", "kafka.bootstrap_servers", "mqtt.port"):
        assert env_var(path) in out, path
    assert "--reason" in CliRunner().invoke(cli, ["dlq", "replay", "--help"]).output
    assert CliRunner().invoke(cli, ["dlq", "stats", "--help"]).exit_code == 0


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREWARN_BRIDGE__CLIENT_ID", "bridge-7")
    monkeypatch.setenv("FOREWARN_BRIDGE__RECEIVE_MAXIMUM", "500")
    settings = load_settings(BridgeSettings, {"bridge.share_group": "g2"})
    assert (settings.bridge.client_id, settings.bridge.receive_maximum, settings.bridge.share_group) == (
        "bridge-7", 500, "g2")


def test_a_bad_flag_is_refused_in_one_line() -> None:
    result = CliRunner().invoke(cli, ["bridge", "--receive-maximum", "0"])
    assert result.exit_code == 2 and "receive-maximum" in result.output
