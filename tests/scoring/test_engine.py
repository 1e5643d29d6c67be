"""The broker-free scoring engine: batch invariance, duplicates and reordering, state export and
restore, stride, alerts and model swaps."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections import defaultdict

import msgspec
import numpy as np
import pytest

from forewarn.bundle import Thresholds, pack
from forewarn.contract import PIPELINE_OUTCOMES, MaintenanceEvent, Prediction, Telemetry
from scoring.alerts import Scored
from scoring.engine import BatchResult, Incoming, ScoringEngine, rules_for
from scoring.metrics import ScoringMetrics
from scoring.registry import ModelRegistry
from scoring.settings import ScoringOptions
from scoring.state import Marker, PartitionState, decode_record, encode_record
from tests.scoring.bundle_factory import TEST_TRUST, tiny_bundle
from tests.scoring.fleet_data import FleetData, fitted_bundle, simulate

_decode = msgspec.json.Decoder(Prediction)


@pytest.fixture(scope="module")
def data() -> FleetData:
    return simulate(machines=8, ticks=160)


def make_engine(data: FleetData, **options: object) -> ScoringEngine:
    registry = ModelRegistry(threads=1, trust=TEST_TRUST)
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


def _restarted(readings: list[Telemetry], *, dt_ms: int = 0, boot: int | None = None) -> list[Telemetry]:
    return [msgspec.structs.replace(r, ts=r.ts + dt_ms, boot=boot) for r in readings]


@pytest.mark.parametrize("with_boot", [False, True])
def test_a_restarted_fleet_is_scored_again(data: FleetData, with_boot: bool) -> None:
    """The demo run twice: every machine starts at seq 0 again. Without a boot its event times
    are later; with one, the new boot alone says so (event times are not even looked at)."""
    engine = make_engine(data)
    first = engine.process([Incoming(r, 0) for r in _restarted(data.readings, boot=1 if with_boot else None)], [])
    span = 0 if with_boot else max(r.ts for r in data.readings) - min(r.ts for r in data.readings) + 1000
    again = _restarted(data.readings, dt_ms=span, boot=2 if with_boot else None)
    second: list[tuple[str, int, str, float | None, float | None]] = []
    resets = 0
    for a, b in itertools.pairwise([0, 5, 301, 302, 800, len(again)]):
        result = engine.process([Incoming(r, 0) for r in again[a:b]], [])
        second.extend(key(v) for _, v in result.predictions)
        resets += result.resets.get("restart", 0)
    machines = {r.machine_id for r in data.readings}
    assert resets == len(machines)
    assert sorted(second) == sorted(key(v) for _, v in first.predictions)  # the same windows, scored again
    # a copy of the first run, replayed now, changes nothing
    replay = engine.process([Incoming(r, 0) for r in data.readings[:200]], [])
    assert replay.predictions == [] and replay.resets == {}
    assert set(replay.not_scored) <= {"duplicate", "late"} and sum(replay.not_scored.values()) == 200


def test_every_reading_is_scored_counted_or_held(data: FleetData) -> None:
    rng = random.Random(11)
    faulty: list[Telemetry] = []
    delayed: list[tuple[int, Telemetry]] = []
    for r in data.readings:
        while delayed and delayed[0][0] <= len(faulty):
            faulty.append(delayed.pop(0)[1])  # overtaken by about ten of its machine's later readings
        roll = rng.random()
        if roll < 0.05:
            faulty.extend([r, r])
        elif roll < 0.08:
            delayed.append((len(faulty) + 80, r))
        elif roll < 0.09:
            sensors = dict(r.sensors)
            sensors.pop(data.sensor_names[0])
            faulty.append(msgspec.structs.replace(r, sensors=sensors))
        else:
            faulty.append(r)
    faulty.append(msgspec.structs.replace(faulty[0], asset_type="no-such-model"))
    engine = make_engine(data, stride=3, max_imputed=0)
    totals: dict[str, int] = defaultdict(int)
    scored = held = 0
    cuts = sorted(random.Random(3).sample(range(1, len(faulty)), 20))
    for a, b in itertools.pairwise([0, *cuts, len(faulty)]):
        result = engine.process([Incoming(r, 0) for r in faulty[a:b]], [])
        assert b - a == result.scored + sum(result.not_scored.values()) + result.held
        scored += result.scored
        held += result.held
        for reason, n in result.not_scored.items():
            totals[reason] += n
    assert held == sum(len(h) for h in engine.held.values())
    assert set(totals) == {"duplicate", "late", "warmup", "stride", "unscorable"}, totals
    assert scored > 0 and totals["stride"] > scored


def test_scores_that_are_not_finite_are_never_predictions_or_alerts() -> None:
    registry = ModelRegistry(threads=1, trust=TEST_TRUST)
    assert registry.offer_bundle(tiny_bundle(window=2, log_rul=True)).outcome == "accepted"
    engine = ScoringEngine(registry, ScoringOptions(), clock=lambda: 1_800_000_000.0)
    values = [1.0, 2.0, -1.0, -1.0, 0.0, 0.0, 1.5, 1.5, 1.0]
    readings = [Telemetry(1, "s/m", "pump", 1_700_000_000_000 + i, i, {"s0_c": v, "s1_c": v})
                for i, v in enumerate(values)]
    result = engine.process([Incoming(r, 0) for r in readings], [])
    seqs = [_decode.decode(v).seq for _, v in result.predictions]
    # windows of 2 ending at seq 1..8: the mean is <= 0 for those ending at 3..5 (log: NaN or -inf)
    assert seqs == [1, 2, 6, 7, 8]
    assert all(math.isfinite(p.rul or 0) for p in (_decode.decode(v) for _, v in result.predictions))
    assert result.not_scored == {"warmup": 1, "unscorable": 3}
    assert result.scored + sum(result.not_scored.values()) == len(readings)


def test_a_repair_applied_twice_counts_once(data: FleetData) -> None:
    engine = make_engine(data)
    machine = data.readings[0].machine_id
    rules = rules_for(engine.registry.serving["pump"], engine.options.alerts)
    hot = Scored([machine] * 3, np.array([1, 2, 3], np.int64), np.full(3, 0.99, np.float32), None, "m", "v", "pump")
    for repair in (MaintenanceEvent(1, machine, 10, "repair", asset_type="pump", event_id="wo-1"),
                   MaintenanceEvent(1, machine, 20, "repair", asset_type="pump")):
        engine.alerts.observe(dataclasses.replace(hot, ts=hot.ts + repair.ts - 5), rules)  # opened before it
        assert [a.state for a in engine.process([], [(repair, 0)]).alerts] == ["resolved"]
        state = engine.alerts.get(machine)
        assert state is not None and state.quiet > 0
        state.quiet = 1
        assert engine.process([], [(repair, 0)]).alerts == []  # redelivered: no-op
        assert state.quiet == 1


def test_metrics_count_every_reading_once_by_outcome(data: FleetData) -> None:
    engine = make_engine(data, stride=2)
    first = data.readings[:400]
    restarted = _restarted(data.readings[:100], dt_ms=10**9)
    readings = [*first, *first[:50], *restarted]
    result = engine.process([Incoming(r, 0) for r in readings], [])
    metrics = ScoringMetrics()
    metrics.observe_batch(result, result.alerts, len(readings), 3, 1_800_000_000_000)

    def sample(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    counted = {o: sample("forewarn_scoring_readings_total", outcome=o) for o in PIPELINE_OUTCOMES}
    assert sum(counted.values()) == len(readings) + 3 - result.held
    assert counted["scored"] == len(result.predictions) > 0 and counted["rejected"] == 3
    assert counted["duplicate"] == 50 and counted["stride"] > 0 and counted["warmup"] > 0
    assert sample("forewarn_scoring_window_resets_total", reason="restart") == len({r.machine_id for r in restarted})
    assert sample("forewarn_scoring_readings_total", outcome="dropped") == 50  # the old names still count


@pytest.mark.parametrize("with_boot", [False, True])
def test_readings_held_before_a_restart_go_first_and_nothing_is_lost(data: FleetData, with_boot: bool) -> None:
    machine = data.readings[0].machine_id
    mine = [r for r in data.readings if r.machine_id == machine][:40]
    boot = 1 if with_boot else None
    before = _restarted(mine[:30], boot=boot)
    after = _restarted(mine[:12], dt_ms=10**8, boot=2 if with_boot else None)
    stream = [*before[:20], before[21], before[22], *after]  # seq 20 lost, 21 and 22 held, then a restart
    for cut in (None, 21, 23):
        engine = make_engine(data, reorder_slack=2)
        results = [engine.process([Incoming(r, 0) for r in part], []) for part in
                   ([stream] if cut is None else [stream[:cut], stream[cut:]])]
        seqs = [_decode.decode(v).seq for res in results for _, v in res.predictions]
        assert seqs == [*range(7, 20), 21, 22, *range(7, 12)]  # window 8: a gap of one does not reset
        assert sum(res.resets.get("restart", 0) for res in results) == 1
        assert not engine.held
