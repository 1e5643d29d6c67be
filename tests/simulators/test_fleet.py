from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest

from forewarn.contract import MaintenanceEvent
from simulators.assets import ASSET_TYPES
from simulators.errors import SimulatorError
from simulators.fleet import Block, Fleet, FleetConfig, machine_name


def collect(config: FleetConfig, ticks: int | None = None, truth: bool = False) -> tuple[
        list[Block], list[MaintenanceEvent], Fleet]:
    fleet = Fleet(config)
    blocks: list[Block] = []
    events: list[MaintenanceEvent] = []
    for step_blocks, step_events in fleet.run(ticks, truth=truth):
        blocks += [b for b in step_blocks if len(b)]
        events += step_events
    return blocks, events, fleet


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    config = FleetConfig(machines=20, seed=5)
    a, ea, _ = collect(config, ticks=200)
    b, eb, _ = collect(config, ticks=200)
    c, _, _ = collect(FleetConfig(machines=20, seed=6), ticks=200)
    assert ea == eb
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.sensors, y.sensors) and np.array_equal(x.ts, y.ts) and np.array_equal(x.seq, y.seq)
        assert np.array_equal(x.settings, y.settings)
    assert not np.array_equal(a[0].sensors, c[0].sensors)


def test_machine_ids_are_contract_valid_and_spread_over_sites() -> None:
    fleet = Fleet(FleetConfig(machines=10, sites=3))
    assert fleet.machine_ids[0] == machine_name("pump", 0, 3) == "site-01/pump-00000"
    assert {fleet.site_of(i) for i in range(fleet.size)} == {"site-01", "site-02", "site-03"}
    assert len(set(fleet.machine_ids)) == fleet.size == 20


def test_readings_are_rounded_to_the_instrument_resolution() -> None:
    blocks, _, _ = collect(FleetConfig(machines=10, asset_types=("pump",)), ticks=3)
    spec = ASSET_TYPES["pump"]
    for j, sensor in enumerate(spec.sensors):
        decimals = round(-np.log10(sensor.resolution))
        values = blocks[0].sensors[:, j]
        assert np.array_equal(values, np.round(values, decimals))
        assert all(len(repr(v).partition(".")[2]) <= max(decimals, 1) for v in values.tolist())


@pytest.mark.parametrize("mtbf", [120.0, 300.0])
def test_failure_rate_matches_mtbf(mtbf: float) -> None:
    config = FleetConfig(machines=200, asset_types=("pump",), mtbf_cycles=mtbf, seed=1)
    fleet = Fleet(config)
    since = np.zeros(fleet.size, dtype=np.int64)
    lengths: list[int] = []
    index = {mid: i for i, mid in enumerate(fleet.machine_ids)}
    for _ in range(int(mtbf * 12)):
        blocks, events = fleet.step()
        np.add.at(since, blocks[0].machine, 1)
        for event in events:
            if event.event == "failure":
                i = index[event.machine_id]
                lengths.append(int(since[i]))
                since[i] = 0
    assert len(lengths) > 1500
    assert abs(np.mean(lengths) / mtbf - 1) < 0.05
    assert min(lengths) >= config.min_run_cycles


def test_failure_then_repair_then_a_new_run_with_contiguous_seq() -> None:
    config = FleetConfig(machines=6, asset_types=("motor",), max_runs=2, downtime_cycles=7, seed=2)
    blocks, events, fleet = collect(config, truth=True)
    by_machine: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for event in events:
        assert event.asset_type == "motor" and event.failure_mode in ASSET_TYPES["motor"].mode_names
        by_machine[event.machine_id].append((event.ts, event.event))
    ts = np.concatenate([b.ts for b in blocks])
    seq = np.concatenate([b.seq for b in blocks])
    machine = np.concatenate([b.machine for b in blocks])
    rul = np.concatenate([b.truth.rul for b in blocks if b.truth is not None])
    for m, mid in enumerate(fleet.machine_ids):
        kinds = [k for _, k in sorted(by_machine[mid])]
        assert kinds == ["failure", "repair", "failure"]
        (f1, _), (r1, _), (f2, _) = sorted(by_machine[mid])
        assert r1 - f1 == config.downtime_cycles * config.period_ms
        mine = np.flatnonzero(machine == m)
        assert np.array_equal(seq[mine], np.arange(mine.size))  # +1 per reading, across runs
        times = ts[mine]
        assert times[-1] == f2 and f1 in times and r1 not in times
        assert times[np.searchsorted(times, r1)] == r1 + config.period_ms  # first reading after repair
        assert rul[mine][times == f1][0] == 0 and rul[mine][-1] == 0


def test_stagger_spreads_failures_over_time() -> None:
    _, events, _ = collect(FleetConfig(machines=100, asset_types=("pump",), stagger=True), ticks=150)
    early = [e for e in events if e.event == "failure"]
    assert len(early) > 30  # without stagger nobody fails before min(run length)


def test_each_failure_mode_moves_its_own_sensors() -> None:
    for name, spec in ASSET_TYPES.items():
        config = FleetConfig(machines=300, asset_types=(name,), max_runs=1, regime_switch_prob=0.0, seed=4)
        blocks, _, fleet = collect(config, truth=True)
        machine = np.concatenate([b.machine for b in blocks])
        values = np.concatenate([b.sensors for b in blocks])
        modes = np.concatenate([b.truth.failure_mode for b in blocks if b.truth is not None])
        noise = spec.table("noise")
        shifts: dict[int, list[np.ndarray]] = defaultdict(list)
        spread: dict[int, list[np.ndarray]] = defaultdict(list)
        for m in range(fleet.size):
            mine = np.flatnonzero(machine == m)
            early, late = values[mine[:30]], values[mine[-8:]]
            shifts[int(modes[mine[0]])].append((late.mean(axis=0) - early.mean(axis=0)) / noise)
            spread[int(modes[mine[0]])].append(late.std(axis=0) / early.std(axis=0).clip(1e-9))
        for k, mode in enumerate(spec.failure_modes):
            shift = np.mean(shifts[k], axis=0)
            growth = np.median(spread[k], axis=0)
            for j, sensor in enumerate(spec.sensor_names):
                effect = next((e for e in mode.effects if e.sensor == sensor), None)
                if effect is None:
                    assert abs(shift[j]) < 1.0, (name, mode.name, sensor, shift[j])
                    assert growth[j] < 1.6, (name, mode.name, sensor, growth[j])
                elif effect.linear or effect.late:
                    assert abs(shift[j]) > 3.0, (name, mode.name, sensor, shift[j])
                else:
                    assert growth[j] > 2.0, (name, mode.name, sensor, growth[j])


def test_config_is_validated() -> None:
    with pytest.raises(SimulatorError):
        FleetConfig(asset_types=("turbine",))
    with pytest.raises(SimulatorError):
        FleetConfig(mtbf_cycles=10)
    with pytest.raises(SimulatorError):
        list(Fleet(FleetConfig(machines=1)).run())


def test_event_ids_name_the_configuration_so_only_the_same_history_repeats_them() -> None:
    def ids(config: FleetConfig) -> list[str | None]:
        return [e.event_id for _, events in Fleet(config).run() for e in events]

    config = FleetConfig(machines=4, seed=3, max_runs=2)
    first = ids(config)
    assert first and len(set(first)) == len(first) and all(i is not None for i in first)
    assert ids(config) == first  # the same history again: the same events
    assert not set(ids(replace(config, start_ms=config.start_ms + 60_000))) & set(first)
    assert not set(ids(replace(config, seed=4))) & set(first)
