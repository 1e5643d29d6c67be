"""The router on contract-valid messages at the edges of the contract, and just past them.

Hypothesis pushes readings, batches and maintenance events with counters up to 2**63-1, event
times anywhere in the accepted bounds, magnitudes up to VALUE_MAX, 256 sensors and identifiers
made of astral-plane characters, right-to-left marks and combining characters through
:meth:`forewarn.routing.Router.route`: nothing raises, every valid message goes to its topic
unchanged, everything else to the dead-letter topic with its reason. The strategies are shared
with the scoring core's property tests (``tests/scoring/test_extreme_input.py``).
"""

from __future__ import annotations

import json

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forewarn.contract import (
    SCHEMA_VERSION,
    SEQ_MAX,
    TS_MAX_MS,
    TS_MIN_MS,
    VALUE_MAX,
    DecodeLimits,
    MaintenanceEvent,
    Reason,
    Telemetry,
    encode,
)
from forewarn.deadletter import Kind
from forewarn.routing import Router
from forewarn.settings import TopicSettings
from forewarn.topics import Topics, batch_topic, maintenance_topic, telemetry_topic

TOPICS = Topics.from_settings(TopicSettings(prefix="x."))
LIMITS = DecodeLimits()
ROUTER = Router(TOPICS)
ODD = ["\U0001F527", "\U00010348", "\u200f", "\u202e", "\u0301", "e\u0301", "\ufeff", "\u05d0\u05d1", "\u0645",
       "\u00e9", "\U0001D54F", "\u034f", "\\", "\"", "'", "%s", "{}", ".", "~"]


def _no_space(text: str) -> bool:
    return not any(c.isspace() for c in text)


_part_chars = st.one_of(st.sampled_from(ODD),
                        st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="/#+"))
id_parts = st.lists(_part_chars, min_size=1, max_size=30).map("".join).filter(_no_space)
machine_ids = st.builds(lambda site, name: f"{site}/{name}", id_parts, id_parts)
counters = st.one_of(st.integers(0, 5), st.integers(SEQ_MAX - 5, SEQ_MAX), st.integers(0, SEQ_MAX))
magnitudes = st.one_of(st.floats(-VALUE_MAX, VALUE_MAX, allow_nan=False, allow_infinity=False),
                       st.sampled_from([VALUE_MAX, -VALUE_MAX, 0.0, -0.0, 5e-324, 1e-300]))
names = st.one_of(st.sampled_from(["s0_c", "s1_c", "\u200fs", "\U0001F527"]), st.text(min_size=1, max_size=100)).filter(
    lambda s: not any("\ud800" <= c <= "\udfff" for c in s))


@st.composite
def received_and_ts(draw: st.DrawFn, maintenance: bool = False) -> tuple[int, int]:
    """An arrival time and an event time the contract accepts for it (for a maintenance event:
    ``maintenance``)."""
    received = draw(st.integers(TS_MIN_MS, TS_MAX_MS))
    lo, hi = (LIMITS.maintenance_ts_window if maintenance else LIMITS.ts_window)(received)
    return received, draw(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi])))


@st.composite
def sensor_maps(draw: st.DrawFn, required: tuple[str, ...] = ()) -> dict[str, float]:
    """A few odd sensors, or the most a reading may have (256, names up to 100 characters)."""
    values = {name: draw(magnitudes) for name in required}
    for name, value in draw(st.dictionaries(names, magnitudes, max_size=4)).items():
        values.setdefault(name, value)
    wide = draw(st.sampled_from([0, 0, 0, 1]))
    if wide:  # drawn cheaply: one odd prefix and one magnitude, scaled per sensor
        prefix, base = draw(names), draw(magnitudes)
        for i in range(256):
            if len(values) == 256:
                break
            values.setdefault(f"{prefix[:95]}{i}", base * ((i % 7) - 3) / 3)
    return values


@st.composite
def extreme_readings(draw: st.DrawFn, machine_id: str | None = None, ts: int | None = None,
                     asset_type: str | None = None, required: tuple[str, ...] = ()) -> Telemetry:
    """A contract-valid reading with extreme but accepted values (``required`` sensors always present)."""
    return Telemetry(SCHEMA_VERSION, machine_id or draw(machine_ids),
                     asset_type or draw(st.text(min_size=1, max_size=100).filter(_encodable)),
                     ts if ts is not None else draw(st.integers(TS_MIN_MS, TS_MAX_MS)), draw(counters),
                     draw(sensor_maps(required)), draw(st.dictionaries(names, magnitudes, max_size=3)),
                     draw(st.one_of(st.none(), counters)))


def _encodable(text: str) -> bool:
    return not any("\ud800" <= c <= "\udfff" for c in text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), received_and_ts())
def test_extreme_valid_readings_reach_telemetry_unchanged(data: st.DataObject, times: tuple[int, int]) -> None:
    received, ts = times
    reading = data.draw(extreme_readings(ts=ts))
    raw = encode(reading)
    routed = ROUTER.route(telemetry_topic(reading.machine_id), raw, received)
    [record] = routed.records
    if len(raw) > LIMITS.max_message_bytes:  # 256 long names can be more than a reading may be
        assert routed.rejected == [Reason.TOO_LARGE] and record.topic == TOPICS.dlq
        return
    assert routed.rejected == [] and record.topic == TOPICS.telemetry and record.key == reading.machine_id
    assert record.value == raw and record.timestamp_ms == reading.ts
    assert msgspec.json.decode(record.value, type=Telemetry) == reading


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), received_and_ts(), st.sampled_from(["seq", "boot", "ts_future", "ts_low", "value", "sensors",
                                                       "key"]))
def test_just_past_the_contract_goes_to_the_dlq_with_its_reason(data: st.DataObject, times: tuple[int, int],
                                                               broken: str) -> None:
    received, ts = times
    reading = data.draw(extreme_readings(ts=ts))
    body = json.loads(encode(reading))
    lo, hi = LIMITS.ts_window(received)
    expected = Reason.BAD_VALUE
    if broken == "seq":
        body["seq"] = SEQ_MAX + data.draw(st.integers(1, 2**64))
    elif broken == "boot":
        body["boot"] = data.draw(st.sampled_from([-1, SEQ_MAX + 1, 2**64 + 5]))
    elif broken == "ts_future":
        body["ts"], expected = hi + data.draw(st.integers(1, 10**12)), Reason.TS_OUT_OF_RANGE
    elif broken == "ts_low":
        body["ts"], expected = lo - data.draw(st.integers(1, 10**12)), Reason.TS_OUT_OF_RANGE
    elif broken == "value":
        body["sensors"]["s0_c"] = data.draw(st.sampled_from([VALUE_MAX * 1.0000001, -1e300, 1.7e308]))
    elif broken == "sensors":
        body["sensors"] = {f"s{i}": 1.0 for i in range(257)}
        expected = Reason.TOO_LARGE
    else:
        body["sensors"]["x" * 101] = 1.0
        expected = Reason.TOO_LARGE
    raw = json.dumps(body, ensure_ascii=data.draw(st.booleans())).encode()
    routed = ROUTER.route(telemetry_topic(reading.machine_id), raw, received)
    [record] = routed.records
    assert record.topic == TOPICS.dlq and record.value == raw
    if len(raw) <= LIMITS.max_message_bytes:
        assert routed.rejected == [expected], (broken, routed.rejected)
    else:
        assert routed.rejected == [Reason.TOO_LARGE]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), received_and_ts(), id_parts, id_parts, st.integers(0, 12))
def test_extreme_batches_are_split_into_readings_and_dead_letters(data: st.DataObject, times: tuple[int, int],
                                                                  site: str, gateway: str, n: int) -> None:
    received, ts = times
    readings = [data.draw(extreme_readings(machine_id=f"{site}/{data.draw(id_parts)}", ts=ts)) for _ in range(n)]
    if n and data.draw(st.booleans()):
        readings[0] = msgspec.structs.replace(readings[0], machine_id=f"{site}x/m")  # another site's
    payload = b'{"v":1,"gateway_id":%s,"readings":[%s]}' % (json.dumps(f"{site}/{gateway}").encode(),
                                                            b",".join(encode(r) for r in readings))
    routed = ROUTER.route(batch_topic(site, gateway), payload, received)
    assert routed.kind is Kind.BATCH
    if len(payload) > LIMITS.max_batch_bytes:
        assert routed.rejected == [Reason.TOO_LARGE]
        return
    assert len(routed.records) == n
    good = [r for r in routed.records if r.topic == TOPICS.telemetry]
    assert len(good) + len(routed.rejected) == n
    assert {Reason(r) for r in routed.rejected} <= {Reason.TOO_LARGE, Reason.TOPIC_MISMATCH}
    decoded = [msgspec.json.decode(record.value, type=Telemetry) for record in good]
    assert all(reading in readings for reading in decoded)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(received_and_ts(maintenance=True), machine_ids, st.sampled_from(["failure", "repair", "inspection"]),
       st.one_of(st.none(), st.text(min_size=1, max_size=200).filter(_encodable)),
       st.one_of(st.none(), st.text(max_size=50).filter(_encodable)))
def test_extreme_maintenance_events_reach_their_topic(times: tuple[int, int], machine_id: str, kind: str,
                                                      event_id: str | None, failure_mode: str | None) -> None:
    received, ts = times
    event = MaintenanceEvent(SCHEMA_VERSION, machine_id, ts, kind, failure_mode, None, event_id)  # type: ignore[arg-type]
    raw = encode(event)
    routed = ROUTER.route(maintenance_topic(machine_id), raw, received)
    [record] = routed.records
    assert routed.rejected == [] and record.topic == TOPICS.maintenance and record.value == raw
    assert msgspec.json.decode(record.value, type=MaintenanceEvent).identity == event.identity
