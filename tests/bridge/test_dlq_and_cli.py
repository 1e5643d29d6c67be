from __future__ import annotations

import pytest
from click.testing import CliRunner

from bridge.dlq import replay_records
from bridge.settings import BridgeSettings
from forewarn.cli import cli
from forewarn.cli_options import env_var
from forewarn.deadletter import DeadLetter, Kind, Origin
from forewarn.routing import Router
from forewarn.settings import TopicSettings, load_settings
from forewarn.testing import FakeProducer, InMemoryKafka
from forewarn.topics import Topics, batch_topic, telemetry_topic
from tests.bridge.helpers import reading_bytes

TOPICS = Topics.from_settings(TopicSettings(prefix="u."))


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
