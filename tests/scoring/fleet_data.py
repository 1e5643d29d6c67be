"""Simulated telemetry and a fitted linear bundle for the scoring tests (no TensorFlow)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from forewarn.bundle import Bundle, Thresholds
from forewarn.contract import SCHEMA_VERSION, MaintenanceEvent, Telemetry, encode
from scoring.testing import linear_bundle
from simulators.fleet import Fleet, FleetConfig
from tests.scoring.bundle_factory import signed


@dataclass
class FleetData:
    readings: list[Telemetry]
    events: list[MaintenanceEvent]
    rul: np.ndarray  # true remaining useful life per reading
    sensor_names: tuple[str, ...]
    setting_names: tuple[str, ...]

    def payloads(self) -> list[tuple[str, bytes, int]]:
        return [(r.machine_id, encode(r), r.ts) for r in self.readings]


def simulate(machines: int = 12, ticks: int = 200, *, seed: int = 3, mtbf: float = 90.0,
             asset_type: str = "pump") -> FleetData:
    # Event times end about now: the telemetry topic's 7-day retention deletes older records.
    start_ms = int(time.time() * 1000) // 86_400_000 * 86_400_000 - 2 * 86_400_000
    fleet = Fleet(FleetConfig(asset_types=(asset_type,), machines=machines, sites=2, seed=seed, mtbf_cycles=mtbf,
                              min_run_cycles=30, downtime_cycles=3, stagger=True, start_ms=start_ms))
    readings: list[Telemetry] = []
    events: list[MaintenanceEvent] = []
    ruls: list[int] = []
    names: tuple[str, ...] = ()
    settings_names: tuple[str, ...] = ()
    for blocks, evs in fleet.run(ticks, truth=True):
        events.extend(evs)
        for block in blocks:
            names, settings_names = block.sensor_names, block.setting_names
            assert block.truth is not None
            for i in range(len(block)):
                mid = fleet.machine_ids[int(block.machine[i])]
                readings.append(Telemetry(
                    SCHEMA_VERSION, mid, block.asset_type, int(block.ts[i]), int(block.seq[i]),
                    {n: float(v) for n, v in zip(names, block.sensors[i], strict=True)},
                    {n: float(v) for n, v in zip(settings_names, block.settings[i], strict=True)}))
                ruls.append(int(block.truth.rul[i]))
    return FleetData(readings, events, np.asarray(ruls), names, settings_names)


def fitted_bundle(data: FleetData, *, window: int = 8, version: str = "v1", horizon: int = 25,
                  thresholds: Thresholds | None = None, shift: float = 0.0) -> Bundle:
    """A linear model whose p_fail rises before failures: least squares of 'fails within the
    horizon' on the normalised sensors (settings ignored), with ``shift`` added to the bias."""
    features = list(data.sensor_names)
    x = np.array([[r.sensors[n] for n in features] for r in data.readings], dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    y = np.where(data.rul <= horizon, 4.0, -4.0)
    a = np.hstack([z, np.ones((len(z), 1))])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return signed(linear_bundle(data.readings[0].asset_type, features, window=window, version=version, mean=mean,
                                std=std, weights=coef[:-1], bias=float(coef[-1]) + shift,
                                thresholds=thresholds or Thresholds(p_fail=0.6, consecutive=2)))
