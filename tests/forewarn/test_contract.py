from __future__ import annotations

import json
import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.contract import (
    SEQ_MAX,
    VALUE_MAX,
    Alert,
    DecodeLimits,
    Decoder,
    MaintenanceEvent,
    Prediction,
    Reason,
    Rejected,
    Telemetry,
    encode,
)

GOOD = {
    "v": 1, "machine_id": "site-a/pump-0042", "asset_type": "pump", "ts": 1764212345123, "seq": 1842,
    "sensors": {"bearing_temp_c": 71.2, "vib_rms_mm_s": 2.3}, "settings": {"load_pct": 80.0},
}
decoder = Decoder()


def raw(**changes: object) -> bytes:
    body = {**GOOD, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_valid_reading_decodes_to_frozen_struct() -> None:
    reading = decoder.telemetry(raw())
    assert isinstance(reading, Telemetry)
    assert reading.machine_id == "site-a/pump-0042" and reading.site == "site-a"
    assert reading.sensors["bearing_temp_c"] == 71.2
    with pytest.raises(AttributeError):
        reading.seq = 3  # type: ignore[misc]


@pytest.mark.parametrize(("payload", "reason"), [
    (b"not json", Reason.NOT_JSON),
    (b"\xff\xfe\x00", Reason.NOT_JSON),
    (b"[1, 2]", Reason.NOT_OBJECT),
    (raw(seq=...), Reason.MISSING_FIELD),
    (raw(machine_id=...), Reason.MISSING_FIELD),
    (raw(ts="yesterday"), Reason.WRONG_TYPE),
    (raw(sensors={"t": "hot"}), Reason.WRONG_TYPE),
    (raw(sensors=[1, 2]), Reason.WRONG_TYPE),
    (raw().replace(b"71.2", b"NaN"), Reason.NON_FINITE),
    (raw().replace(b"71.2", b"-Infinity"), Reason.NON_FINITE),
    (raw().replace(b"71.2", b"1e999"), Reason.NON_FINITE),
    (raw(ts=5), Reason.TS_OUT_OF_RANGE),
    (raw(ts=9_999_999_999_999), Reason.TS_OUT_OF_RANGE),
    (raw(v=2), Reason.UNKNOWN_VERSION),
    (json.dumps({"v": 7, "other": "shape"}).encode(), Reason.UNKNOWN_VERSION),
    (raw(seq=-1), Reason.BAD_VALUE),
    (raw(machine_id="no-site-part"), Reason.BAD_VALUE),
    (raw(machine_id="a/b/c"), Reason.BAD_VALUE),
    (raw(machine_id="x" * 300 + "/y"), Reason.TOO_LARGE),
    (raw(sensors={f"s{i}": 1.0 for i in range(300)}), Reason.TOO_LARGE),
    (b" " * 20_000, Reason.TOO_LARGE),
    (b'{"v":1,"deep":' + b"[" * 3000 + b"]" * 3000 + b"}", Reason.TOO_LARGE),
])
def test_every_rejection_has_its_reason(payload: bytes, reason: Reason) -> None:
    result = decoder.telemetry(payload)
    assert isinstance(result, Rejected), result
    assert result.reason == reason, result.detail
    assert result.raw == payload


def test_batch_keeps_good_readings_and_rejects_bad_ones_individually() -> None:
    bad = raw(sensors={"t": "hot"})
    batch = b'{"v":1,"gateway_id":"site-a/gw-1","readings":[' + raw() + b"," + bad + b"," + raw(seq=1843) + b"]}"
    gateway, good, rejected = decoder.batch(batch)
    assert gateway == "site-a/gw-1"
    assert [r.seq for r in good] == [1842, 1843]
    assert [r.reason for r in rejected] == [Reason.WRONG_TYPE]
    assert json.loads(rejected[0].raw) == json.loads(bad)


def test_batch_with_bad_envelope_is_one_rejection() -> None:
    gateway, good, rejected = decoder.batch(b'{"v":1,"readings":[]}')
    assert gateway is None and good == [] and rejected[0].reason == Reason.MISSING_FIELD


def test_limits_are_configurable() -> None:
    tight = Decoder(DecodeLimits(max_message_bytes=50))
    result = tight.telemetry(raw())
    assert isinstance(result, Rejected) and result.reason == Reason.TOO_LARGE


def test_maintenance_event() -> None:
    event = decoder.maintenance(
        b'{"v":1,"machine_id":"s/m","ts":1764212345123,"event":"failure","failure_mode":"bearing"}'
    )
    assert isinstance(event, MaintenanceEvent) and event.failure_mode == "bearing"
    wrong = decoder.maintenance(b'{"v":1,"machine_id":"s/m","ts":1764212345123,"event":"exploded"}')
    assert (isinstance(wrong, Rejected) and wrong.reason == Reason.BAD_VALUE) or wrong.reason == Reason.WRONG_TYPE


# -- properties -------------------------------------------------------------------------

finite = st.floats(-VALUE_MAX, VALUE_MAX, allow_nan=False, width=64)
key = st.text(min_size=1, max_size=30)
part = st.text(st.characters(blacklist_characters="/#+", blacklist_categories=("Zs", "Cc", "Cs", "Zl", "Zp")),
               min_size=1, max_size=20)
readings = st.builds(
    Telemetry,
    v=st.just(1),
    machine_id=st.builds(lambda a, b: f"{a}/{b}", part, part),
    asset_type=st.text(min_size=1, max_size=20),
    ts=st.integers(946_684_800_000, 4_102_444_800_000),
    seq=st.integers(0, SEQ_MAX),
    sensors=st.dictionaries(key, finite, max_size=30),
    settings=st.dictionaries(key, finite, max_size=3),
    boot=st.none() | st.integers(0, SEQ_MAX),
)


@given(readings)
def test_encode_decode_round_trip(reading: Telemetry) -> None:
    assert decoder.telemetry(encode(reading), arrived_ms=reading.ts) == reading


@pytest.mark.parametrize(("change", "reason"), [
    ({"seq": SEQ_MAX + 1}, Reason.BAD_VALUE),  # does not fit int64: refused, not a crash further on
    ({"boot": -1}, Reason.BAD_VALUE),
    ({"sensors": {"x": 1e16}}, Reason.BAD_VALUE),
    ({"settings": {"load": -1e300}}, Reason.BAD_VALUE),
    ({"sensors": {"": 1.0}}, Reason.BAD_VALUE),
    ({"sensors": {f"s{i}": 1.0 for i in range(257)}}, Reason.TOO_LARGE),
])
def test_values_no_consumer_could_hold_are_refused(change: dict[str, object], reason: Reason) -> None:
    result = Decoder(DecodeLimits(max_message_bytes=1 << 20)).telemetry(raw(**change), arrived_ms=GOOD["ts"])
    assert isinstance(result, Rejected) and result.reason == reason


def test_event_time_is_checked_against_arrival_time() -> None:
    ts = int(GOOD["ts"])  # type: ignore[call-overload]
    limits = DecodeLimits(max_future_ms=60_000, max_age_ms=86_400_000)
    strict = Decoder(limits)
    assert isinstance(strict.telemetry(raw(), arrived_ms=ts - 59_000), Telemetry)  # clock a little fast
    ahead = strict.telemetry(raw(), arrived_ms=ts - 61_000)
    assert isinstance(ahead, Rejected) and ahead.reason == Reason.TS_OUT_OF_RANGE
    stale = strict.telemetry(raw(), arrived_ms=ts + 86_400_001)
    assert isinstance(stale, Rejected) and stale.reason == Reason.TS_OUT_OF_RANGE
    # The default leaves the past open (backlogs, replays) and bounds the future by five minutes.
    assert isinstance(decoder.telemetry(raw(), arrived_ms=ts + 10 * 365 * 86_400_000), Telemetry)
    future = decoder.telemetry(raw(), arrived_ms=ts - 301_000)
    assert isinstance(future, Rejected) and future.reason == Reason.TS_OUT_OF_RANGE
    # Without an arrival time, the decoder's clock is now.
    clocked = Decoder(limits, clock=lambda: (ts - 120_000) / 1000)
    assert isinstance(clocked.telemetry(raw()), Rejected)
    event = b'{"v":1,"machine_id":"s/m","ts":%d,"event":"repair"}' % (ts + 3_600_000)
    assert isinstance(strict.maintenance(event, arrived_ms=ts), Rejected)


def test_maintenance_identity_is_its_id_or_machine_time_and_kind() -> None:
    bare = MaintenanceEvent(1, "s/m", 1764212345123, "repair")
    assert bare.identity == "s/m@1764212345123/repair"
    named = MaintenanceEvent(1, "s/m", 1764212345123, "repair", event_id="WO-1")
    assert named.identity == "WO-1"
    assert decoder.maintenance(encode(named), arrived_ms=named.ts) == named


def test_a_maintenance_event_may_run_ahead_of_its_arrival_by_clock_skew_only() -> None:
    ts = 1764212345123
    event = encode(MaintenanceEvent(1, "s/m", ts, "repair"))
    assert isinstance(decoder.maintenance(event, arrived_ms=ts - 60_000), MaintenanceEvent)
    ahead = decoder.maintenance(event, arrived_ms=ts - 61_000)  # a reading this far ahead is accepted
    assert isinstance(ahead, Rejected) and ahead.reason == Reason.TS_OUT_OF_RANGE
    assert isinstance(decoder.telemetry(b'{"v":1,"machine_id":"s/m","asset_type":"pump","ts":%d,"seq":1,'
                                        b'"sensors":{"a":1.0}}' % ts, arrived_ms=ts - 61_000), Telemetry)
    unbounded = Decoder(DecodeLimits(maintenance_max_future_ms=None))
    assert isinstance(unbounded.maintenance(event, arrived_ms=ts - 61_000), MaintenanceEvent)


@given(st.binary(max_size=2000))
@settings(max_examples=300)
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    for decode in (decoder.telemetry, decoder.maintenance):
        result = decode(data)
        assert isinstance(result, Rejected | Telemetry | MaintenanceEvent)
    gateway, good, bad = decoder.batch(data)
    assert bad or good or gateway is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@given(st.dictionaries(st.sampled_from([*list(GOOD), "extra"]), json_values, max_size=9))
def test_arbitrary_json_objects_are_decoded_or_rejected_with_a_reason(obj: dict[str, object]) -> None:
    data = json.dumps(obj).encode()
    result = decoder.telemetry(data)
    if isinstance(result, Rejected):
        assert result.reason in Reason
    else:
        assert all(math.isfinite(x) for x in result.sensors.values())


def test_outbound_messages_round_trip() -> None:
    p = Prediction(v=1, machine_id="s/m", asset_type="pump", ts=1, seq=2, model="pump", model_version="3",
                   scored_at=4, p_fail=0.5, rul=12.0, ingest_ts=3)
    a = Alert(v=1, alert_id="a1", machine_id="s/m", state="open", severity="warning", rule="p_fail", opened_at=1, ts=1,
              p_fail=0.9, model_version="3")
    assert msgspec.json.decode(encode(p), type=Prediction) == p
    assert msgspec.json.decode(encode(a), type=Alert) == a
