"""Runs, targets and labelled windows.

Each machine's readings are split into runs at its failure and repair events (a reading at
an event's time belongs to the run that event ends). A run that ends in a failure gets a
remaining useful life for every reading (0 at the last reading before or at the failure);
a run that ends in a repair, or is still going at the end of the data, is censored and gets
no RUL labels at all. The failure-within-horizon label is 1 when RUL <= horizon; in a
censored run it is 0 where at least ``horizon`` of observed life remains and unknown
(NaN, masked in training) in its last stretch.

RUL is counted in readings (cycles) by default (``rul_unit="readings"``) or in the data's
time unit (``"time"``: cycles for a cycle index, seconds for timestamps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from forewarn.windows import WindowStore
from training.settings import RulUnit

__all__ = ["LabelledWindows", "RunLabels", "label_runs", "make_windows"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RunLabels:
    """Per reading (aligned with the readings frame): its run, targets and age in the run."""

    run: npt.NDArray[np.int64]
    rul: FloatArray  # NaN in censored runs
    fail: FloatArray  # 1, 0, or NaN where unknown
    age: FloatArray  # readings since the run started
    run_failed: npt.NDArray[np.bool_]  # per run id


def label_runs(frame: pd.DataFrame, events: pd.DataFrame, *, horizon: float,
               rul_unit: RulUnit = "readings", time_scale: float = 1.0) -> RunLabels:
    """Label readings sorted by machine then time. ``time_scale`` converts the ``time``
    column into the RUL unit when ``rul_unit="time"`` (e.g. 1/1000 for epoch ms → s)."""
    n = len(frame)
    run = np.zeros(n, dtype=np.int64)
    rul = np.full(n, np.nan)
    fail = np.full(n, np.nan)
    age = np.zeros(n)
    failed_runs: list[bool] = []
    splitting = events[events["event"].isin(("failure", "repair"))]
    by_machine = {m: (g["time"].to_numpy(np.int64), g["event"].to_numpy())
                  for m, g in splitting.groupby("machine_id", sort=False)}
    machines = frame["machine_id"].to_numpy()
    times = frame["time"].to_numpy(np.int64)
    starts = np.flatnonzero(np.r_[True, machines[1:] != machines[:-1]])
    ends = np.r_[starts[1:], n]
    next_run = 0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        t = times[start:end]
        ev_times, ev_kinds = by_machine.get(machines[start], (np.zeros(0, np.int64), np.zeros(0, object)))
        # Run r holds the readings after event r-1 up to and including event r.
        local = np.searchsorted(ev_times, t, side="left")
        for r in np.unique(local).tolist():
            idx = np.flatnonzero(local == r) + start
            count = len(idx)
            position = np.arange(count, dtype=np.float64)
            is_failure = r < len(ev_kinds) and ev_kinds[r] == "failure"
            run[idx] = next_run
            age[idx] = position
            if rul_unit == "readings":
                remaining = count - 1 - position
            else:
                end_time = ev_times[r] if is_failure else times[idx[-1]]
                remaining = (end_time - times[idx]).astype(np.float64) * time_scale
            if is_failure:
                rul[idx] = remaining
                fail[idx] = (remaining <= horizon).astype(np.float64)
            else:
                fail[idx] = np.where(remaining >= horizon, 0.0, np.nan)
            failed_runs.append(bool(is_failure))
            next_run += 1
    return RunLabels(run=run, rul=rul, fail=fail, age=age, run_failed=np.array(failed_runs, dtype=np.bool_))


@dataclass(frozen=True)
class LabelledWindows:
    """Windows with their labels; ``rul`` is uncapped (NaN when censored)."""

    x: npt.NDArray[np.float32]
    rul: FloatArray
    fail: FloatArray
    age: FloatArray
    run: npt.NDArray[np.int64]
    machine: npt.NDArray[np.str_]
    time: npt.NDArray[np.int64]
    run_failed: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.x)

    def take(self, mask: npt.NDArray[np.bool_] | npt.NDArray[np.int64]) -> LabelledWindows:
        return LabelledWindows(x=self.x[mask], rul=self.rul[mask], fail=self.fail[mask], age=self.age[mask],
                               run=self.run[mask], machine=self.machine[mask], time=self.time[mask],
                               run_failed=self.run_failed)


def make_windows(frame: pd.DataFrame, columns: list[str], labels: RunLabels, *, window: int,
                 fill_values: npt.ArrayLike | None = None, max_imputed: int = 5) -> LabelledWindows:
    """Windows of ``window`` readings within each run, made by the scoring workers' store."""
    store = WindowStore(window, len(columns), max_imputed=max_imputed, fill_values=fill_values,
                        capacity=int(labels.run.max()) + 1 if len(labels.run) else 1)
    values = frame[columns].to_numpy(dtype=np.float32)
    batch = store.update(labels.run.astype(str), values)
    rows = batch.rows
    return LabelledWindows(
        x=batch.windows, rul=labels.rul[rows], fail=labels.fail[rows], age=labels.age[rows],
        run=labels.run[rows], machine=frame["machine_id"].to_numpy().astype(str)[rows],
        time=frame["time"].to_numpy(np.int64)[rows], run_failed=labels.run_failed,
    )
