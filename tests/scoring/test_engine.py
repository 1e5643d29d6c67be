"""The broker-free scoring engine: batch invariance, duplicates and reordering, state export and
restore, stride, alerts and model swaps."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

import msgspec
import pytest

from forewarn.bundle import Thresholds, pack
from forewarn.contract import MaintenanceEvent, Prediction, Telemetry
from scoring.engine import BatchResult, Incoming, ScoringEngine
from scoring.registry import ModelRegistry
from scoring.settings import ScoringOptions
from scoring.state import Marker, PartitionState, decode_record, encode_record
from tests.scoring.fleet_data import FleetData, fitted_bundle, simulate

_decode = msgspec.json.Decoder(Prediction)


@pytest.fixture(scope="module")
def data() -> FleetData:
    return simulate(machines=8, ticks=160)


def make_engine(data: FleetData, **options: object) -> ScoringEngine:
    registry = ModelRegistry(threads=1)
    offer = registry.offer_bundle(fitted_bundle(data))
    assert offer.outcome == "accepted"
    return ScoringEngine(registry, ScoringOptions(**options), clock=lambda: 1_800_000_000.0)  # type: ignore[arg-type]


def key(raw: bytes) -> tuple[str, int, str, float | None, float | None]:
    p = _decode.decode(raw)
    return (p.machine_id, p.seq, p.model_version, p.p_fail, p.rul)


def run(engine: ScoringEngine, readings: list[Telemetry], batches: list[int] | None = None,
        events: list[MaintenanceEvent] | None = None) -> list[tuple[str, int, str, float | None, float | None]]:
    items = [Incoming(r, 0) for r in readings]
    cuts = [0, *(batches or []), len(items)]
    out = []
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        evs = [(e, 0) for e in (events or [])] if i == len(cuts) - 2 else []
        out.extend(key(v) for _, v in engine.process(items[a:b], evs).predictions)
    return sorted(out)


def test_batching_does_not_change_predictions(data: FleetData) -> None:
    whole = run(make_engine(data), data.readings)
    assert len(whole) > 500
    rng = random.Random(1)
    cuts = sorted(rng.sample(range(1, len(data.readings)), 25))
    assert run(make_engine(data), data.readings, cuts) == whole


def test_slices_scored_on_the_inference_thread_change_nothing(data: FleetData) -> None:
    """A batch larger than score_slice is windowed, scored (on the onnxruntime thread) and
    alerted slice by slice: same predictions in the same per-machine order, same alerts."""
    items = [Incoming(r, 0) for r in data.readings]
    whole = make_engine(data).process(items, [])
    sliced_engine = make_engine(data, score_slice=37)
    sliced = sliced_engine.process(items, [])
    assert sliced_engine._pool is not None  # the thread really ran
    sliced_engine.close()

    def per_machine(result: BatchResult) -> dict[str, list[tuple[str, int, str, float | None, float | None]]]:
        out: dict[str, list[tuple[str, int, str, float | None, float | None]]] = {}
        for machine, raw in result.predictions:
            out.setdefault(machine, []).append(key(raw))
        return out

    assert len(whole.predictions) > 500
    assert per_machine(sliced) == per_machine(whole)
    assert sorted(map(repr, sliced.alerts)) == sorted(map(repr, whole.alerts))
    assert sum(sliced.per_asset.values()) == len(whole.predictions)


def test_duplicates_and_adjacent_swaps_do_not_change_predictions(data: FleetData) -> None:
    clean = run(make_engine(data), data.readings)
    rng = random.Random(7)
    faulty: list[Telemetry] = []
    held: dict[str, Telemetry] = {}
    for r in data.readings:
        if r.machine_id in held and rng.random() < 0.5:
            faulty.extend([r, held.pop(r.machine_id)])  # the later reading overtakes the earlier one
            continue
        if r.machine_id in held:
            faulty.append(held.pop(r.machine_id))
        roll = rng.random()
        if roll < 0.05:
            faulty.extend([r, r])  # sent twice
        elif roll < 0.10:
            held[r.machine_id] = r
        else:
            faulty.append(r)
        if roll > 0.97 and faulty:
            faulty.append(rng.choice(faulty[-50:]))  # an old duplicate, much later
    faulty.extend(held.values())
    assert run(make_engine(data), faulty, sorted(random.Random(2).sample(range(1, len(faulty)), 10))) == clean


def test_a_missing_reading_holds_back_at_most_the_slack(data: FleetData) -> None:
    machine = data.readings[0].machine_id
    mine = [r for r in data.readings if r.machine_id == machine][:20]
    engine = make_engine(data, reorder_slack=2, max_gap=10)
    first = engine.process([Incoming(r, 0) for r in mine[:10]], [])
    assert len(first.predictions) == 3  # window 8: readings 8..10
    held = engine.process([Incoming(mine[11], 0), Incoming(mine[12], 0)], [])  # seq 10 lost
    assert held.predictions == []
    released = engine.process([Incoming(mine[13], 0)], [])
    assert [_decode.decode(v).seq for _, v in released.predictions] == [r.seq for r in mine[11:14]]


def test_state_export_and_restore_equals_an_uninterrupted_run(data: FleetData) -> None:
    reference = run(make_engine(data), data.readings)
    half = len(data.readings) // 2
    first = make_engine(data)
    dirty: set[str] = set()
    out: list[tuple[str, int, str, float | None, float | None]] = []
    # Deliver some readings out of order around the cut so held readings cross it.
    readings = list(data.readings)
    readings[half - 1], readings[half + 11] = readings[half + 11], readings[half - 1]
    for a in range(0, half, 97):
        result = first.process([Incoming(r, 0) for r in readings[a:min(a + 97, half)]], [])
        out.extend(key(v) for _, v in result.predictions)
        for machines in result.dirty.values():
            dirty |= machines
    records = {m: decode_record(encode_record(rec)) for m, rec in first.export(dirty)}
    second = make_engine(data)
    second.restore(PartitionState(0, Marker(1, 1), records, done=True))
    out.extend(run(second, readings[half:], [50, 300]))
    assert sorted(out) == reference


def test_stride_scores_every_kth_seq(data: FleetData) -> None:
    every = run(make_engine(data), data.readings)
    third = run(make_engine(data, stride=3), data.readings)
    assert third == [p for p in every if p[1] % 3 == 0]


def test_alert_opens_before_failure_and_repair_resolves(data: FleetData) -> None:
    engine = make_engine(data)
    events_by_time = sorted(data.events, key=lambda e: e.ts)
    timeline: list[tuple[int, int, object]] = [(r.ts, 1, r) for r in data.readings]
    timeline += [(e.ts, 0, e) for e in events_by_time]
    timeline.sort(key=lambda t: (t[0], t[1]))
    alerts = []
    for i in range(0, len(timeline), 40):
        chunk = timeline[i:i + 40]
        readings = [Incoming(x, 0) for _, kind, x in chunk if kind == 1]  # type: ignore[arg-type]
        maint = [(x, 0) for _, kind, x in chunk if kind == 0]
        alerts.extend(engine.process(readings, maint).alerts)  # type: ignore[arg-type]
    failures = [e for e in data.events if e.event == "failure"]
    opened = {a.machine_id: a for a in alerts if a.state == "open"}
    assert opened, "no alert opened"
    warned = [f for f in failures
              if any(a.state == "open" and a.machine_id == f.machine_id and a.ts <= f.ts for a in alerts)]
    assert len(warned) >= len(failures) // 2
    by_alert: dict[str, list[str]] = defaultdict(list)
    for a in alerts:
        by_alert[a.alert_id].append(a.state)
    for states in by_alert.values():
        assert states[0] == "open" and states.count("open") == 1
        assert states.count("resolved") <= 1
    resolved_by_repair = [a for a in alerts if a.state == "resolved" and a.message == "repaired"]
    assert resolved_by_repair
    # one open alert per machine and rule at any time
    open_now: set[tuple[str, str]] = set()
    for a in alerts:
        k = (a.machine_id, a.rule)
        if a.state == "open":
            assert k not in open_now
            open_now.add(k)
        elif a.state == "resolved":
            open_now.discard(k)
    assert all(a.model_version == "v1" for a in alerts if a.state != "resolved" or a.message != "repaired")


def test_hot_swap_keeps_windows_and_refuses_bad_bundles(data: FleetData) -> None:
    engine = make_engine(data)
    half = len(data.readings) // 2
    before = engine.process([Incoming(r, 0) for r in data.readings[:half]], [])
    good = fitted_bundle(data, version="v2", shift=0.5)
    broken = pack(fitted_bundle(data, version="v3")).replace(b"Sigmoid", b"Sigmoix")
    assert engine.registry.offer("pump", broken).outcome == "refused"
    wrong_window = fitted_bundle(data, version="v4", window=5)
    assert engine.registry.offer("motor", pack(wrong_window)).outcome == "refused"  # published under the wrong key
    assert engine.registry.offer("pump", pack(good)).outcome == "accepted"
    after = engine.process([Incoming(r, 0) for r in data.readings[half:]], [])
    versions = {_decode.decode(v).model_version for _, v in after.predictions}
    assert versions == {"v2"}
    assert {_decode.decode(v).model_version for _, v in before.predictions} == {"v1"}
    # no gap: every machine that had a full window before the swap is scored right after it
    last_before = {m for m, _ in before.predictions}
    first_after = {}
    for m, v in after.predictions:
        first_after.setdefault(m, _decode.decode(v).seq)
    mine = {r.machine_id: r.seq for r in data.readings[half:][::-1]}
    assert last_before <= set(first_after)
    assert all(first_after[m] == mine[m] for m in last_before)


def test_shadow_candidate_reports_agreement(data: FleetData) -> None:
    engine = make_engine(data)
    candidate = fitted_bundle(data, version="cand", shift=0.2, thresholds=Thresholds(p_fail=0.6, consecutive=2))
    assert engine.registry.offer("pump.candidate", pack(candidate)).outcome == "accepted"
    result = engine.process([Incoming(r, 0) for r in data.readings], [])
    assert result.shadow and result.shadow[0].n == len(result.predictions)
    assert 0.5 < result.shadow[0].agreement <= 1.0
    assert {_decode.decode(v).model_version for _, v in result.predictions} == {"v1"}


def test_a_missing_sensor_is_imputed_with_its_last_value(data: FleetData) -> None:
    machine = data.readings[0].machine_id
    mine = [r for r in data.readings if r.machine_id == machine][:30]
    name = data.sensor_names[3]
    holed = [msgspec.structs.replace(r, sensors={k: v for k, v in r.sensors.items() if k != name})
             if i in (12, 13) else r for i, r in enumerate(mine)]
    filled = [msgspec.structs.replace(r, sensors={**r.sensors, name: mine[11].sensors[name]})
              if i in (12, 13) else r for i, r in enumerate(mine)]
    assert run(make_engine(data), holed, [5, 13]) == run(make_engine(data), filled)
    # a setting the bundle calls a sensor is still found
    assert len(run(make_engine(data), holed)) == len(mine) - 7
