"""A tiny run-to-failure generator for tests: sensors drift with a hidden wear that grows
towards each machine's random end of life."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def make_history(n_machines: int = 12, *, seed: int = 0, life: tuple[int, int] = (60, 110),
                 n_sensors: int = 4, censored: int = 0, asset_type: str = "pump") -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frames, events = [], []
    gains = rng.uniform(1.0, 3.0, n_sensors)
    for m in range(n_machines):
        length = int(rng.integers(*life))
        t = np.arange(length)
        wear = (t / length) ** 2
        cols = {f"s{j}": 10 * j + gains[j] * wear + rng.normal(0, 0.05, length) for j in range(n_sensors)}
        mid = f"site-a/{asset_type}-{m:03d}"
        is_censored = m < censored
        if is_censored:  # observed only for part of its life, no failure
            keep = int(length * 0.6)
            t, cols = t[:keep], {k: v[:keep] for k, v in cols.items()}
        frames.append(pd.DataFrame({"machine_id": mid, "asset_type": asset_type, "time": t, "seq": t,
                                    "constant": 1.0, **cols}))
        if not is_censored:
            events.append({"machine_id": mid, "time": int(t[-1]), "event": "failure"})
    readings = pd.concat(frames, ignore_index=True)
    return readings, pd.DataFrame(events)


def write_history(folder: Path, fmt: str = "csv", **kwargs) -> Path:
    readings, events = make_history(**kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        readings.to_csv(folder / "readings.csv", index=False)
        events.to_csv(folder / "events.csv", index=False)
    else:
        readings.to_parquet(folder / "readings.parquet", index=False)
        events.to_parquet(folder / "events.parquet", index=False)
    return folder
