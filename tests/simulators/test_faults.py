from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.contract import VALUE_MAX, Decoder, MaintenanceEvent, Rejected, Telemetry
from simulators.errors import SimulatorError
from simulators.faults import MALFORMED_KINDS, FaultConfig, FaultReport
from simulators.fleet import Block, Fleet, FleetConfig
from simulators.messages import Delivery, ListSink, MessageBuilder, encode_readings

decoder = Decoder()


@dataclass
class Run:
    """Everything a message builder sent, decoded, with the tick each message was sent in."""

    report: FaultReport
    readings: list[tuple[int, Telemetry]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    events: list[MaintenanceEvent] = field(default_factory=list)
    messages: int = 0
    batch_sizes: list[int] = field(default_factory=list)


def run(faults: FaultConfig | None = None, *, delivery: Delivery = "single", ticks: int = 60, machines: int = 100,
        batch_size: int = 100, seed: int = 3) -> Run:
    fleet = Fleet(FleetConfig(machines=machines, sites=2, seed=seed, stagger=True))
    sink = ListSink()
    builder = MessageBuilder(sink, fleet.machine_ids, faults=faults, seed=seed, delivery=delivery,
                             batch_size=batch_size)
    tick_of: list[int] = []
    for tick in range(ticks):
        builder.publish(*fleet.step())
        tick_of += [tick] * (len(sink.messages) - len(tick_of))
    builder.close()
    tick_of += [ticks] * (len(sink.messages) - len(tick_of))
    result = Run(builder.report, messages=len(sink.messages))
    for tick, message in zip(tick_of, sink.messages, strict=True):
        if message.kind == "maintenance":
            event = decoder.maintenance(message.payload)
            assert isinstance(event, MaintenanceEvent)
            result.events.append(event)
        elif message.kind == "telemetry":
            reading = decoder.telemetry(message.payload)
            if isinstance(reading, Rejected):
                result.rejected.append(reading)
            else:
                result.readings.append((tick, reading))
                assert reading.machine_id == message.source
        else:
            gateway, good, bad = decoder.batch(message.payload)
            assert gateway in (None, message.source)
            result.readings += [(tick, r) for r in good]
            result.rejected += bad
            result.batch_sizes.append(message.readings)
            assert all(r.site == message.site for r in good)
    return result


@pytest.mark.parametrize("delivery", ["single", "batch"])
def test_every_clean_message_decodes(delivery: Delivery) -> None:
    result = run(delivery=delivery)
    assert result.rejected == []
    assert len(result.readings) == result.report.readings == result.report.readings_sent > 0
    assert {e.event for e in result.events} == {"failure", "repair"}
    keys = [(r.machine_id, r.seq) for _, r in result.readings]
    assert len(set(keys)) == len(keys)
    if delivery == "batch":
        assert max(result.batch_sizes) == 100 and result.messages < result.report.readings / 10


ALL_FAULTS = FaultConfig(missing=0.02, stuck=0.005, spike=0.01, non_finite=0.01, duplicate=0.02, out_of_order=0.02,
                         clock_skew=0.1, burst=0.002, burst_len=5, malformed=0.02)


@pytest.mark.parametrize("delivery", ["single", "batch"])
def test_injected_faults_match_what_the_decoder_sees(delivery: Delivery) -> None:
    faulty = run(ALL_FAULTS, delivery=delivery, ticks=120)
    clean = run(None, delivery=delivery, ticks=120)
    report = faulty.report
    injected = report.injected
    # Rejections: one per malformed or non-finite reading, with the expected reason.
    observed = Counter(r.reason.value for r in faulty.rejected)
    assert observed == Counter(report.expected_rejections)
    assert observed["non_finite"] == injected["non_finite"]
    for kind in MALFORMED_KINDS:
        assert observed[kind] == injected[f"malformed_{kind}"] > 0
    assert len(faulty.readings) == report.to_dict()["expected_valid_readings"]
    # Duplicates and out-of-order deliveries, observed per machine.
    keys = Counter((r.machine_id, r.seq) for _, r in faulty.readings)
    assert sum(n - 1 for n in keys.values()) == injected["duplicate"] > 0
    highest: dict[str, int] = {}
    late = 0
    for _, r in faulty.readings:
        if r.seq < highest.get(r.machine_id, -1):
            late += 1
        highest[r.machine_id] = max(highest.get(r.machine_id, -1), r.seq)
    assert late == injected["out_of_order"] > 0
    # Against the same fleet without faults: skewed clocks, missing fields, changed values.
    truth = {(r.machine_id, r.seq): r for _, r in clean.readings}
    unique = {(r.machine_id, r.seq): r for _, r in reversed(faulty.readings)}
    skewed = missing = changed = 0
    for key, r in unique.items():
        expected = truth[key]
        skewed += r.ts != expected.ts
        missing += len(expected.sensors) - len(r.sensors)
        changed += any(r.sensors[k] != v for k, v in expected.sensors.items() if k in r.sensors)
    # Malformed and non-finite readings hide their other faults from the decoder.
    assert 0.9 * injected["clock_skew"] <= skewed <= injected["clock_skew"]
    assert 0.9 * injected["missing_fields"] <= missing <= injected["missing_fields"]
    assert changed > 0 and injected["stuck"] > 0 and injected["spike"] > 0
    assert injected["burst_episodes"] > 0 and injected["burst"] >= injected["burst_episodes"]


def test_bursts_hold_a_machines_readings_back_then_send_them_together() -> None:
    result = run(FaultConfig(burst=0.01, burst_len=6), ticks=80)
    per_tick = Counter((tick, r.machine_id) for tick, r in result.readings)
    assert max(per_tick.values()) == 6
    complete = sum(1 for (tick, _), n in per_tick.items() if n == 6 and tick < 80)
    open_at_close = sum(1 for (tick, _) in per_tick if tick == 80)  # released by close()
    assert complete + open_at_close == result.report.injected["burst_episodes"] > 0


def test_fault_rates_are_within_tolerance() -> None:
    rates = FaultConfig(missing=0.03, spike=0.02, non_finite=0.02, duplicate=0.03, out_of_order=0.02, malformed=0.04,
                        clock_skew=0.2)
    result = run(rates, ticks=150, machines=150)
    n = result.report.readings
    injected = result.report.injected
    assert n > 40_000
    for key, rate in [("missing_sensor", rates.missing * (1 - rates.non_finite)), ("spike", rates.spike),
                      ("non_finite", rates.non_finite), ("duplicate", rates.duplicate),
                      ("out_of_order", rates.out_of_order)]:
        expected = rate * n
        assert abs(injected[key] - expected) < 4 * np.sqrt(expected) + 0.05 * expected, key
    malformed = sum(injected[f"malformed_{k}"] for k in MALFORMED_KINDS)
    assert abs(malformed - rates.malformed * n) < 4 * np.sqrt(rates.malformed * n)
    assert 0.1 < injected["clock_skew_machines"] / 300 < 0.3


def test_faults_do_not_change_the_underlying_readings() -> None:
    a = run(FaultConfig(duplicate=0.05, malformed=0.05), ticks=20)
    b = run(None, ticks=20)
    good_a = {(r.machine_id, r.seq): r for _, r in a.readings}
    assert all(good_a.get((r.machine_id, r.seq), r) == r for _, r in b.readings)


@pytest.mark.parametrize("delivery", ["single", "batch"])
def test_same_seed_same_messages_byte_for_byte(delivery: Delivery) -> None:
    def messages(seed: int) -> list[bytes]:
        fleet = Fleet(FleetConfig(machines=30, seed=seed, stagger=True))
        sink = ListSink()
        builder = MessageBuilder(sink, fleet.machine_ids, faults=ALL_FAULTS, seed=seed, delivery=delivery)
        for _ in range(40):
            builder.publish(*fleet.step())
        builder.close()
        return [m.payload for m in sink.messages]

    assert messages(8) == messages(8)
    assert messages(8) != messages(9)


def test_fault_config_is_validated() -> None:
    with pytest.raises(SimulatorError):
        FaultConfig(duplicate=1.5)
    with pytest.raises(SimulatorError):
        FaultConfig(duplicate=0.6, malformed=0.6)
    with pytest.raises(SimulatorError):
        FaultConfig(malformed_kinds=())  # type: ignore[arg-type]


def test_report_json_has_every_counter() -> None:
    report = run(FaultConfig(duplicate=0.1), ticks=5).report
    data = report.to_dict()
    assert set(data) >= {"readings", "readings_sent", "messages", "events", "injected", "expected_rejections",
                         "expected_valid_readings", "config"}
    assert data["config"]["duplicate"] == 0.1
    assert '"duplicate"' in report.to_json()


finite = st.floats(-VALUE_MAX, VALUE_MAX, allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.lists(finite, min_size=3, max_size=3), min_size=1, max_size=5),
       special=st.sampled_from([np.nan, np.inf, -np.inf, None]))
def test_encoding_round_trips_through_the_contract(values: list[list[float]], special: float | None) -> None:
    n = len(values)
    sensors = np.array(values, dtype=np.float64)
    if special is not None:
        sensors[0, 1] = special
    block = Block("pump", ("a_c", "b_c", "c_c"), ("load_pct",), np.arange(n, dtype=np.int64),
                  np.full(n, 1_767_225_600_000, dtype=np.int64), np.arange(n, dtype=np.int64), sensors,
                  np.full((n, 1), 50.0))
    block.missing = np.zeros((n, 3), dtype=np.bool_)
    block.missing[n - 1, 2] = True
    payloads = encode_readings(block, [f"site/m{i}" for i in range(n)])
    for i, payload in enumerate(payloads):
        decoded = decoder.telemetry(payload)
        if i == 0 and special is not None:
            assert isinstance(decoded, Rejected) and decoded.reason.value == "non_finite"
            assert (b"NaN" in payload) or (b"Infinity" in payload)
            continue
        assert isinstance(decoded, Telemetry)
        expected = {k: v for j, (k, v) in enumerate(zip(block.sensor_names, values[i], strict=True))
                    if not block.missing[i, j]}
        assert decoded.sensors == expected and decoded.settings == {"load_pct": 50.0}
