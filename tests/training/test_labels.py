"""Runs and targets on hand-made histories, censored runs included; metrics; baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.labels import label_runs, make_windows
from training.metrics import alert_metrics, asymmetric_score, choose_threshold, pr_auc, rul_metrics


def _frame(machine: str, n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"machine_id": machine, "time": np.arange(start, start + n), "s": np.arange(n, dtype=float)})


def test_failed_run_gets_rul_and_horizon_labels():
    frame = _frame("a/m1", 6)
    events = pd.DataFrame({"machine_id": ["a/m1"], "time": [5], "event": ["failure"]})
    labels = label_runs(frame, events, horizon=2)
    assert labels.rul.tolist() == [5, 4, 3, 2, 1, 0]
    assert labels.fail.tolist() == [0, 0, 0, 1, 1, 1]
    assert labels.age.tolist() == [0, 1, 2, 3, 4, 5]
    assert labels.run_failed.tolist() == [True]


def test_censored_run_has_no_fake_rul():
    frame = _frame("a/m1", 5)
    events = pd.DataFrame({"machine_id": [], "time": [], "event": []})
    labels = label_runs(frame, events, horizon=2)
    assert np.isnan(labels.rul).all()
    # Known negatives where at least `horizon` readings remain; unknown in the last stretch.
    assert labels.fail[:3].tolist() == [0, 0, 0]
    assert np.isnan(labels.fail[3:]).all()
    assert labels.run_failed.tolist() == [False]


def test_runs_split_at_failure_and_repair():
    frame = _frame("a/m1", 12)
    events = pd.DataFrame({"machine_id": ["a/m1"] * 3, "time": [3, 6, 9],
                           "event": ["failure", "repair", "failure"]})
    labels = label_runs(frame, events, horizon=1)
    assert labels.run.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert labels.run_failed.tolist() == [True, False, True, False]
    assert labels.rul[:4].tolist() == [3, 2, 1, 0]
    assert np.isnan(labels.rul[4:7]).all()  # ended by a repair: censored
    assert labels.rul[7:10].tolist() == [2, 1, 0]
    assert np.isnan(labels.rul[10:]).all()  # still running at the end of the data


def test_rul_in_time_units():
    frame = pd.DataFrame({"machine_id": "a/m1", "time": [0, 1000, 3000, 7000], "s": 0.0})
    events = pd.DataFrame({"machine_id": ["a/m1"], "time": [8000], "event": ["failure"]})
    labels = label_runs(frame, events, horizon=2, rul_unit="time", time_scale=0.001)
    assert labels.rul.tolist() == [8, 7, 5, 1]
    assert labels.fail.tolist() == [0, 0, 0, 1]


def test_windows_stay_inside_runs_and_short_machines_give_none():
    frame = pd.concat([_frame("a/m1", 8), _frame("a/m2", 2)], ignore_index=True)
    events = pd.DataFrame({"machine_id": ["a/m1", "a/m1"], "time": [3, 7], "event": ["failure", "failure"]})
    labels = label_runs(frame, events, horizon=1)
    windows = make_windows(frame, ["s"], labels, window=3)
    assert windows.x[:, :, 0].tolist() == [[0, 1, 2], [1, 2, 3], [4, 5, 6], [5, 6, 7]]
    assert windows.rul.tolist() == [1, 0, 1, 0]
    assert set(windows.machine.tolist()) == {"a/m1"}


def test_asymmetric_score_penalises_late_more():
    early, late = asymmetric_score([90, 110], [100, 100])
    assert late > early > 0
    assert asymmetric_score([5], [5])[0] == 0


def test_rul_metrics_and_pr_auc():
    m = rul_metrics([3, 2, 1, 9], [3, 2, 0, np.nan], cap=125, run=[0, 0, 0, 1])
    assert m["windows"] == 3 and m["rmse"] == pytest.approx(np.sqrt(1 / 3))
    assert m["rmse_last"] == pytest.approx(1.0)
    assert pr_auc([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(1.0)


def test_alert_metrics_lead_time_and_precision():
    # One failed run: a two-window alert opens at RUL 2 (true); a lone window does not open one.
    p = [0.1, 0.1, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9]
    rul = [7, 6, 5, 4, 3, 2, 1, 0]
    m = alert_metrics(p, rul, [0] * 8, list(range(8)), np.array([True]), threshold=0.5, consecutive=2, horizon=3)
    assert m["alerts"] == 1 and m["alert_precision"] == 1.0
    assert m["median_lead_time"] == 2  # opened at the second window above: RUL 2
    # Opened before the horizon and open until the failure: a false (premature) alert that
    # did warn, lead capped at the horizon; one closed before the horizon gives no lead.
    early = [0.9] * 8
    m1 = alert_metrics(early, rul, [0] * 8, list(range(8)), np.array([True]), threshold=0.5, consecutive=2,
                       horizon=3)
    assert m1["alerts"] == 1 and m1["alert_precision"] == 0.0 and m1["median_lead_time"] == 3
    closed = [0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1]
    m2 = alert_metrics(closed, rul, [0] * 8, list(range(8)), np.array([True]), threshold=0.5, consecutive=2,
                       horizon=3)
    assert m2["alert_precision"] == 0.0 and m2["median_lead_time"] == 0
    # An alert in a censored run is a false alert.
    m2 = alert_metrics([0.9, 0.9], [np.nan, np.nan], [0, 0], [0, 1], np.array([False]), threshold=0.5,
                       consecutive=2, horizon=3)
    assert m2["alerts"] == 1 and m2["alert_precision"] == 0.0


def test_choose_threshold_reaches_precision():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500).astype(float)
    p = np.clip(y * 0.6 + rng.normal(0.2, 0.2, 500), 0, 1)
    thr = choose_threshold(p, y, min_precision=0.9)
    alert = p >= thr
    assert (y[alert] == 1).mean() >= 0.9
