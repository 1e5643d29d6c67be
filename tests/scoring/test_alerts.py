"""The alert state machine: open after k hot predictions, update on severity, resolve with
hysteresis or on repair, never two open alerts per machine and rule."""

from __future__ import annotations

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.contract import Alert
from scoring.alerts import AlertEngine, AlertRules, MachineAlerts, Scored

RULES = AlertRules(p_fail=0.6, consecutive=3, rul_below=20.0, hysteresis=0.1, resolve_consecutive=2,
                   critical_p_fail=0.9, quiet_after_repair=2)


def feed(engine: AlertEngine, p: list[float], rul: list[float] | None = None, machine: str = "s/m1",
         start_ts: int = 1000) -> list[Alert]:
    n = len(p)
    scored = Scored([machine] * n, np.arange(start_ts, start_ts + n, dtype=np.int64), np.asarray(p, np.float32),
                    None if rul is None else np.asarray(rul, np.float32), "pump", "v7", "pump")
    events, _ = engine.observe(scored, RULES)
    return events


def test_opens_after_k_consecutive_and_resolves_with_hysteresis() -> None:
    engine = AlertEngine()
    events = feed(engine, [0.7, 0.7, 0.2, 0.7, 0.7])
    assert events == []  # the streak was broken
    events = feed(engine, [0.7], start_ts=2000)
    assert [(e.state, e.severity, e.rule, e.model_version) for e in events] == [("open", "warning", "p_fail", "v7")]
    assert events[0].p_fail is not None and abs(events[0].p_fail - 0.7) < 1e-6
    # 0.55 is below the threshold but inside the hysteresis band: still open
    assert feed(engine, [0.55, 0.55, 0.55], start_ts=3000) == []
    events = feed(engine, [0.95], start_ts=4000)
    assert [(e.state, e.severity) for e in events] == [("update", "critical")]
    events = feed(engine, [0.4, 0.4], start_ts=5000)
    assert [e.state for e in events] == ["resolved"]
    assert engine.get("s/m1") is None  # idle machines keep no state


def test_rul_rule_and_repair() -> None:
    engine = AlertEngine()
    events = feed(engine, [0.1, 0.1, 0.1], rul=[15.0, 12.0, 9.0])
    assert [(e.state, e.rule, e.severity) for e in events] == [("open", "rul", "critical")]
    resolved = engine.repair("s/m1", 1010, quiet=2)
    assert [(e.state, e.message) for e in resolved] == [("resolved", "repaired")]
    # late predictions from before the repair are ignored; the next two cannot open
    assert feed(engine, [0.99] * 3, start_ts=1003) == []
    assert feed(engine, [0.99] * 2, start_ts=1011) == []
    assert [e.state for e in feed(engine, [0.99] * 3, start_ts=1013)] == ["open"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=200), st.integers(1, 40))
def test_never_two_open_alerts_and_batching_does_not_matter(values: list[float], cut: int) -> None:
    whole = feed(AlertEngine(), values)
    engine = AlertEngine()
    split = feed(engine, values[:cut]) + feed(engine, values[cut:], start_ts=1000 + min(cut, len(values)))
    assert [(e.state, e.ts) for e in whole] == [(e.state, e.ts) for e in split]
    open_ids: set[str] = set()
    for e in whole:
        if e.state == "open":
            assert not open_ids
            open_ids.add(e.alert_id)
        elif e.state == "resolved":
            open_ids.discard(e.alert_id)


def test_a_repair_is_applied_once_per_identity_and_never_before_a_later_one() -> None:
    engine = AlertEngine()
    feed(engine, [0.99] * 3)
    assert [e.state for e in engine.repair("s/m1", 1010, quiet=2, identity="wo-7")] == ["resolved"]
    assert [e.state for e in feed(engine, [0.99] * 5, start_ts=1011)] == ["open"]
    assert engine.repair("s/m1", 1010, quiet=2, identity="wo-7") == []  # a replayed dead letter
    assert engine.repair("s/m1", 1005, quiet=2, identity="wo-6") == []  # older than the last repair
    assert [e.state for e in engine.repair("s/m1", 1020, quiet=0)] == ["resolved"]
    state = engine.get("s/m1")
    assert state is not None and state.repairs == ["wo-7", "s/m1@1020/repair"]
    assert "s/m1" not in engine.active  # idle, but it remembers its repairs


def test_a_future_dated_repair_is_refused_and_resolves_nothing() -> None:
    engine = AlertEngine()
    feed(engine, [0.99] * 3)
    assert engine.repair("s/m1", 10**12, quiet=0, identity="skewed", latest=2000) == []
    state = engine.get("s/m1")
    assert state is not None and state.repair_ts == -1 and state.repairs == []
    assert [e.state for e in engine.repair("s/m1", 1999, quiet=0, latest=2000)] == ["resolved"]  # within the bound
    # a state saved before repairs were bounded is cut to the bound when predictions come
    restored = AlertEngine()
    restored.put("s/m2", MachineAlerts(repair_ts=10**12))
    n = 3
    scored = Scored(["s/m2"] * n, np.arange(5000, 5000 + n, dtype=np.int64), np.full(n, 0.99, np.float32), None,
                    "pump", "v7", "pump")
    assert [e.state for e in restored.observe(scored, RULES, latest=4000)[0]] == ["open"]


def test_a_repair_resolves_only_the_alerts_opened_before_it() -> None:
    engine = AlertEngine()
    assert [e.rule for e in feed(engine, [0.1, 0.1, 0.1], rul=[9.0] * 3)] == ["rul"]  # opened at 1002
    assert [e.rule for e in feed(engine, [0.99] * 3, rul=[9.0] * 3, start_ts=1010)] == ["p_fail"]  # at 1012
    # a repair done at 1005 whose record arrives late: the p_fail alert came after it
    resolved = engine.repair("s/m1", 1005, quiet=0, identity="wo-late")
    assert [(e.rule, e.state) for e in resolved] == [("rul", "resolved")]
    state = engine.get("s/m1")
    assert state is not None and state.rules["p_fail"].alert_id is not None and "rul" not in state.rules


def test_old_alert_state_records_still_decode() -> None:
    old = msgspec.msgpack.encode([{"p_fail": [2, 0, None, 0, "warning"]}, 1234, 1])
    state = msgspec.msgpack.decode(old, type=MachineAlerts)
    assert state.repair_ts == 1234 and state.quiet == 1 and state.repairs == [] and state.rules["p_fail"].streak == 2


def test_scores_that_are_not_finite_change_nothing() -> None:
    engine = AlertEngine()
    events = feed(engine, [0.99, 0.99, float("nan"), float("inf"), 0.99])  # ignored: the streak goes on
    assert [(e.state, e.ts) for e in events] == [("open", 1004)]
    assert feed(engine, [0.1, 0.1], rul=[float("nan"), float("-inf")], start_ts=3000) == []  # no resolve either
