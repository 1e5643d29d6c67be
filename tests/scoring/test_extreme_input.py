"""The scoring core on contract-valid input at the edges of the contract.

Hypothesis pushes streams of readings with counters and boots up to 2**63-1 (duplicated,
reordered, restarted, with gaps), event times anywhere in the accepted bounds, magnitudes up to
VALUE_MAX, 256 sensors, missing sensors and odd unicode ids through
:meth:`scoring.engine.ScoringEngine.process` with a real (tiny) ONNX bundle, one whose output is
NaN or infinite for some windows included; and arbitrary sequences of predictions and repairs
through :class:`scoring.alerts.AlertEngine`. Nothing raises, every output is finite, every
reading is accounted for, and the state survives the changelog.
"""

from __future__ import annotations

import functools
import itertools
import math

import msgspec
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forewarn.contract import SEQ_MAX, TS_MAX_MS, TS_MIN_MS, MaintenanceEvent, Prediction, Telemetry
from scoring.alerts import AlertEngine, AlertRules, MachineAlerts, Scored
from scoring.engine import Incoming, ScoringEngine
from scoring.registry import ModelRegistry
from scoring.settings import ScoringOptions
from scoring.state import Marker, PartitionState, decode_record, encode_record
from tests.forewarn.test_routing_extremes import extreme_readings, id_parts, magnitudes
from tests.scoring.bundle_factory import TEST_TRUST, tiny_bundle

FEATURES = ("s0_c", "s1_c")
NOW_S = TS_MAX_MS / 1000  # the engine's clock: every accepted event time is at or before it
_prediction = msgspec.json.Decoder(Prediction)


@functools.cache
def registry(window: int, log_rul: bool) -> ModelRegistry:
    """One registry per bundle shape, shared by the examples (the engines only read it)."""
    reg = ModelRegistry(threads=1, trust=TEST_TRUST)
    assert reg.offer_bundle(tiny_bundle(window, len(FEATURES), log_rul=log_rul)).outcome == "accepted"
    return reg


@st.composite
def streams(draw: st.DrawFn) -> list[Telemetry]:
    """Readings of a few machines, each counter stepping mostly forward from anywhere in its
    range, with repeats, regressions, jumps and restarts (with or without a boot)."""
    machines = draw(st.lists(st.builds(lambda a, b: f"{a}/{b}", id_parts, id_parts), min_size=1, max_size=3,
                             unique=True))
    state = {m: [draw(st.sampled_from([0, SEQ_MAX - 40, draw(st.integers(0, SEQ_MAX))])),  # seq
                 draw(st.sampled_from([None, 0, SEQ_MAX - 3])),  # boot
                 draw(st.integers(TS_MIN_MS, TS_MAX_MS))] for m in machines}  # ts
    out: list[Telemetry] = []
    for _ in range(draw(st.integers(1, 60))):
        m = draw(st.sampled_from(machines))
        seq, boot, ts = state[m]
        step = draw(st.sampled_from([1, 1, 1, 1, 0, -1, 2, 50, "restart"]))
        if step == "restart":
            seq, boot = 0, None if boot is None else min(boot + 1, SEQ_MAX)
        else:
            seq = min(max(seq + step, 0), SEQ_MAX)
        ts = min(max(ts + draw(st.sampled_from([1000, 1000, 0, -5000, 10**11])), TS_MIN_MS), TS_MAX_MS)
        state[m] = [seq, boot, ts]
        base = draw(extreme_readings(machine_id=m, ts=ts, asset_type=draw(st.sampled_from(["pump"] * 5 + ["other"])),
                                     required=FEATURES if draw(st.integers(0, 9)) else ()))
        out.append(msgspec.structs.replace(base, seq=seq, boot=boot))
    return out


@st.composite
def repairs(draw: st.DrawFn, machines: list[str]) -> list[MaintenanceEvent]:
    return [MaintenanceEvent(1, draw(st.sampled_from(machines)), draw(st.integers(TS_MIN_MS, TS_MAX_MS)), "repair",
                             event_id=draw(st.one_of(st.none(), st.sampled_from(["wo-\u200f1", "\U0001F527"]))))
            for _ in range(draw(st.integers(0, 3)))]


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), st.sampled_from([1, 2, 4]), st.booleans(), st.sampled_from([1, 3]), st.sampled_from([0, 2]),
       st.sampled_from([None, 10]))
def test_the_engine_takes_any_contract_valid_stream(data: st.DataObject, window: int, log_rul: bool, stride: int,
                                                    slack: int, max_gap: int | None) -> None:
    readings = data.draw(streams())
    events = data.draw(repairs(sorted({r.machine_id for r in readings})))
    options = ScoringOptions(stride=stride, reorder_slack=slack, max_gap=max_gap, max_imputed=1)
    engine = ScoringEngine(registry(window, log_rul), options, clock=lambda: NOW_S)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(readings)), max_size=4)))
    sent = {(r.machine_id, r.seq, r.ts) for r in readings}
    dirty: set[str] = set()
    for a, b in itertools.pairwise([0, *cuts, len(readings)]):
        batch = readings[a:b]
        result = engine.process([Incoming(r, 0, r.ts) for r in batch], [(e, 0) for e in events] if b == len(readings)
                                else [])
        assert len(batch) == result.scored + sum(result.not_scored.values()) + result.held
        assert all(n > 0 for n in (*result.not_scored.values(), *result.resets.values()))
        for _machine, raw in result.predictions:
            p = _prediction.decode(raw)
            assert _finite(p.p_fail) and _finite(p.rul)
            assert (p.machine_id, p.seq, p.ts) in sent  # int64 all the way: no precision lost
        for alert in result.alerts:
            assert _finite(alert.p_fail) and _finite(alert.rul)
        for machines in result.dirty.values():
            dirty |= machines
    # the state goes through the changelog and back
    records = {m: decode_record(encode_record(rec)) for m, rec in engine.export(dirty)}
    again = ScoringEngine(registry(window, log_rul), options, clock=lambda: NOW_S)
    again.restore(PartitionState(0, Marker(1, 1), records, done=True))
    assert again.held.keys() == engine.held.keys()
    for asset, store in engine.stores.items():
        for m in store.keys:
            if m in again.stores.get(asset, ()):
                assert again.stores[asset].last_seq(m) == store.last_seq(m)
                assert again.stores[asset].boot(m) == store.boot(m)


RULES = AlertRules(p_fail=0.6, consecutive=2, rul_below=20.0, resolve_consecutive=2, quiet_after_repair=1)
scores = st.one_of(st.floats(0, 1), st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.6, 0.5]))
ruls = st.one_of(st.floats(-1e30, 1e30), st.sampled_from([float("nan"), float("inf"), 19.9, 24.0]))
event_times = st.one_of(st.integers(TS_MIN_MS, TS_MAX_MS), st.integers(1000, 1100))


@st.composite
def alert_ops(draw: st.DrawFn) -> list[tuple[str, object]]:
    machines = ["s/\u200fm", "s/\U0001F527", "s/e\u0301"]
    ops: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["predict", "predict", "predict", "repair", "save"]))
        if kind == "predict":
            n = draw(st.integers(1, 6))
            ids = [draw(st.sampled_from(machines)) for _ in range(n)]
            ts = np.asarray([draw(event_times) for _ in range(n)], dtype=np.int64)
            p = np.asarray([draw(scores) for _ in range(n)], dtype=np.float32)
            r = np.asarray([draw(ruls) for _ in range(n)], dtype=np.float32) if draw(st.booleans()) else None
            ops.append((kind, (Scored(ids, ts, p, r, "pump", "v1", "pump"), draw(st.one_of(st.none(), event_times)))))
        elif kind == "repair":
            ops.append((kind, (draw(st.sampled_from(machines)), draw(event_times), draw(st.integers(0, 3)),
                               draw(st.sampled_from([None, "wo-1", "wo-2"])), draw(st.one_of(st.none(), event_times)))))
        else:
            ops.append((kind, None))
    return ops


@settings(max_examples=100, deadline=None)
@given(alert_ops())
def test_the_alert_engine_takes_any_sequence_of_predictions_and_repairs(ops: list[tuple[str, object]]) -> None:
    engine = AlertEngine()
    open_now: set[tuple[str, str]] = set()
    for kind, arg in ops:
        if kind == "predict":
            scored, latest = arg  # type: ignore[misc]
            events, _ = engine.observe(scored, RULES, latest)
        elif kind == "repair":
            machine, ts, quiet, identity, latest = arg  # type: ignore[misc]
            events = engine.repair(machine, ts, quiet, identity, latest)
            state = engine.get(machine)
            if latest is not None and ts > latest:
                assert events == []  # dated ahead of what the caller accepts: refused
            else:
                assert state is not None
            assert state is None or latest is None or state.repair_ts <= latest
            assert engine.repair(machine, ts, quiet, identity, latest) == []  # the same repair again: a no-op
        else:  # a restart of the worker: every machine's state through the changelog
            saved = {m: msgspec.msgpack.encode(s) for m, s in engine.machines.items()}
            engine = AlertEngine()
            for m, raw in saved.items():
                engine.put(m, msgspec.msgpack.decode(raw, type=MachineAlerts))
            events = []
        for e in events:
            assert _finite(e.p_fail) and _finite(e.rul)
            k = (e.machine_id, e.rule)
            if e.state == "open":
                assert k not in open_now
                open_now.add(k)
            elif e.state == "resolved":
                assert k in open_now
                open_now.discard(k)
    assert engine.active <= set(engine.machines)
    assert all(not s.idle() for m, s in engine.machines.items() if m in engine.active)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(magnitudes, min_size=8, max_size=8), st.booleans())
def test_magnitudes_up_to_the_bound_give_finite_predictions_or_none(values: list[float], log_rul: bool) -> None:
    engine = ScoringEngine(registry(4, log_rul), ScoringOptions(), clock=lambda: NOW_S)
    readings = [Telemetry(1, "s/m", "pump", TS_MIN_MS + i, SEQ_MAX - 8 + i, {"s0_c": v, "s1_c": -v}, boot=SEQ_MAX)
                for i, v in enumerate(values)]
    result = engine.process([Incoming(r, 0) for r in readings], [])
    assert result.scored + result.not_scored.get("unscorable", 0) == 5 and result.not_scored["warmup"] == 3
    assert all(_finite(p.p_fail) and _finite(p.rul) for p in (_prediction.decode(v) for _, v in result.predictions))
