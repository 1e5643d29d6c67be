from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from forewarn.contract import Reason
from forewarn.deadletter import INGEST_HEADER, Kind, ingest_ms
from forewarn.routing import Router, parse_topic
from forewarn.settings import TopicSettings
from forewarn.topics import Topics, batch_topic, maintenance_topic, telemetry_topic
from tests.bridge.helpers import TS0, batch_bytes, reading, reading_bytes

TOPICS = Topics.from_settings(TopicSettings(prefix="u."))
ROUTER = Router(TOPICS)
NOW = 1_764_300_000_000


def headers(record: object) -> dict[str, bytes]:
    return dict(record.headers)  # type: ignore[attr-defined]


def test_parse_topic() -> None:
    assert parse_topic("forewarn/s/m/telemetry") == (Kind.TELEMETRY, "s/m")
    assert parse_topic("forewarn/s/gateway/g/batch") == (Kind.BATCH, "s/g")
    assert parse_topic("forewarn/s/m/maintenance") == (Kind.MAINTENANCE, "s/m")
    assert parse_topic("forewarn/s//telemetry")[0] is Kind.UNKNOWN
    assert parse_topic("other/s/m/telemetry")[0] is Kind.UNKNOWN


def test_a_reading_goes_to_telemetry_keyed_with_event_time_and_ingest_header() -> None:
    raw = reading_bytes("site-a/pump-1", 7)
    routed = ROUTER.route(telemetry_topic("site-a/pump-1"), raw, NOW)
    assert routed.kind is Kind.TELEMETRY and routed.rejected == []
    [record] = routed.records
    assert record.topic == "u.telemetry" and record.key == "site-a/pump-1" and record.value == raw
    assert record.timestamp_ms == TS0 + 7000
    assert headers(record) == {INGEST_HEADER: str(NOW).encode()}
    assert ingest_ms(record.headers) == NOW  # what every consumer reads back


def test_an_ingest_header_that_is_not_ascii_digits_reads_as_absent() -> None:
    for value in (b"", b"-5", b" 12", "\u00b2".encode(), None):
        assert ingest_ms([("other", b"1"), (INGEST_HEADER, value)]) is None
    assert ingest_ms(None) is None and ingest_ms([]) is None


def test_a_reading_on_another_machines_topic_is_a_topic_mismatch() -> None:
    raw = reading_bytes("site-a/pump-1", 1)
    routed = ROUTER.route(telemetry_topic("site-a/pump-2"), raw, NOW)
    [record] = routed.records
    assert routed.rejected == ["topic_mismatch"] and record.topic == "u.telemetry.dlq" and record.value == raw
    h = headers(record)
    assert h["reason"] == b"topic_mismatch" and h["mqtt_topic"] == b"forewarn/site-a/pump-2/telemetry"
    assert h["received_at"] == str(NOW).encode() and h["kind"] == b"telemetry" and b"pump-1" in h["detail"]


def test_a_batch_is_expanded_and_one_bad_reading_does_not_sink_the_others() -> None:
    good = [reading(f"site-b/m{i}", i) for i in range(5)]
    nan = {**reading("site-b/m9", 9), "ts": 5}
    other_site = reading("site-x/m1", 1)
    raw = batch_bytes("site-b/gw-1", [*good, nan, other_site])
    routed = ROUTER.route(batch_topic("site-b", "gw-1"), raw, NOW)
    to_telemetry = [r for r in routed.records if r.topic == "u.telemetry"]
    to_dlq = [r for r in routed.records if r.topic == "u.telemetry.dlq"]
    assert [r.key for r in to_telemetry] == [f"site-b/m{i}" for i in range(5)]
    assert all(json.loads(r.value)["machine_id"] == r.key for r in to_telemetry)
    assert sorted(routed.rejected) == ["topic_mismatch", "ts_out_of_range"]
    assert {headers(r)["kind"] for r in to_dlq} == {b"reading"}


def test_a_batch_from_another_gateway_is_rejected_whole() -> None:
    raw = batch_bytes("site-b/gw-2", [reading("site-b/m1", 1)])
    routed = ROUTER.route(batch_topic("site-b", "gw-1"), raw, NOW)
    assert routed.rejected == ["topic_mismatch"] and routed.records[0].value == raw


def test_maintenance_goes_to_its_topic() -> None:
    raw = json.dumps({"v": 1, "machine_id": "s/m", "ts": TS0, "event": "repair"}).encode()
    [record] = ROUTER.route(maintenance_topic("s/m"), raw, NOW).records
    assert record.topic == "u.maintenance" and record.key == "s/m" and record.timestamp_ms == TS0
    [bad] = ROUTER.route(maintenance_topic("s/other"), raw, NOW).records
    assert bad.topic == "u.telemetry.dlq" and headers(bad)["reason"] == b"topic_mismatch"


def test_huge_payloads_are_truncated_in_the_dlq() -> None:
    router = Router(TOPICS, dlq_max_bytes=2048)
    raw = b"x" * 100_000
    [record] = router.route(telemetry_topic("s/m"), raw, NOW).records
    assert len(record.value) == 2048 and headers(record)["truncated_from"] == b"100000"
    assert headers(record)["reason"] == b"too_large"


def test_dead_letters_are_revalidated_on_replay() -> None:
    routed = ROUTER.route_dead_letter(batch_topic("site-b", "gw-1"), "reading", reading_bytes("site-b/m1", 3), NOW)
    assert [r.key for r in routed.records] == ["site-b/m1"] and routed.rejected == []
    still = ROUTER.route_dead_letter(telemetry_topic("s/m"), "telemetry", b"{", NOW)
    assert still.records == [] and still.rejected == ["not_json"]


# -- property tests: whatever arrives, exactly the right records come out -------------------

_REASONS = {r.value for r in Reason}
TOPIC = telemetry_topic("site-a/pump-1")


def _check_all_dead_lettered(raw: bytes, expected: set[str] | None = None) -> None:
    routed = ROUTER.route(TOPIC, raw, NOW)
    assert routed.records, "a payload is never dropped"
    [record] = routed.records
    reason = headers(record)["reason"].decode()
    assert record.topic == "u.telemetry.dlq" and reason in _REASONS
    assert record.value == raw[: ROUTER.dlq_max_bytes]
    if expected is not None:
        assert reason in expected, (reason, raw[:200])


@given(st.binary(max_size=2000))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes_never_crash_and_go_to_the_dlq(raw: bytes) -> None:
    _check_all_dead_lettered(raw)


_field = st.sampled_from(["v", "machine_id", "asset_type", "ts", "seq", "sensors"])
_wrong = st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=3), st.booleans(), st.none(),
                   st.dictionaries(st.text(max_size=3), st.text(max_size=3), min_size=1, max_size=2))


@given(_field, _wrong)
def test_wrong_types_are_wrong_type(name: str, value: object) -> None:
    assume(not (name == "asset_type" and isinstance(value, str) and value))  # any non-empty name is fine
    doc = reading("site-a/pump-1", 1)
    doc[name] = value
    expected = {"wrong_type", "bad_value", "unknown_version", "missing_field", "topic_mismatch"}
    _check_all_dead_lettered(json.dumps(doc).encode(), expected)


@given(st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_sensors_are_non_finite(value: float) -> None:
    doc = reading("site-a/pump-1", 1)
    doc["sensors"]["bearing_temp_c"] = value
    _check_all_dead_lettered(json.dumps(doc).encode(), {"non_finite"})


@given(st.integers(min_value=20_000, max_value=300_000))
@settings(max_examples=10)
def test_huge_payloads_are_too_large(size: int) -> None:
    doc = reading("site-a/pump-1", 1)
    doc["asset_type"] = "p" * size
    _check_all_dead_lettered(json.dumps(doc).encode(), {"too_large"})


@given(st.integers(min_value=50, max_value=5000))
@settings(max_examples=15)
def test_deep_nesting_never_crashes(depth: int) -> None:
    doc = reading("site-a/pump-1", 1)
    raw = json.dumps(doc).encode()[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"
    routed = ROUTER.route(TOPIC, raw, NOW)
    assert len(routed.records) == 1  # either accepted (unknown field ignored) or dead-lettered
    nested = b"[" * depth + b"]" * depth
    _check_all_dead_lettered(nested, {"not_object", "too_large", "wrong_type", "not_json"})
