"""Evaluation: RUL errors, the asymmetric score, failure-alert quality and lead time.

* RUL: RMSE and MAE against the capped true RUL, and the late-penalising score
  ``exp(-d/13) - 1`` for early (d < 0) and ``exp(d/10) - 1`` for late predictions,
  d = predicted - true, averaged per window (``score_mean``) and summed over the last window
  of every failed run (``score_last_sum``, the usual run-to-failure benchmark figure).
  Only windows of failed runs count (censored runs have no RUL).
* Failure: PR-AUC, precision and recall at the alert threshold over windows with a known
  label; then alerts as the scoring workers raise them — an alert opens after
  ``consecutive`` windows at or above the threshold and stays open while they stay there.
  An alert is *true* when its run fails within the horizon of the alert's opening (what
  p_fail promises); one opened earlier, or in a run that does not fail, is false.
  ``alert_precision`` = true alerts / alerts. The warning lead time of a failed run is the RUL
  at the opening of its earliest alert still open inside the horizon before the failure,
  capped at the horizon (0 when there is none): the median over failed runs is
  ``median_lead_time``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "alert_metrics",
    "asymmetric_score",
    "choose_alert_threshold",
    "choose_threshold",
    "failure_metrics",
    "pr_auc",
    "rul_metrics",
]

FloatArray = npt.NDArray[np.float64]


def asymmetric_score(pred: npt.ArrayLike, true: npt.ArrayLike) -> FloatArray:
    d = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
    return np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)


def rul_metrics(pred: npt.ArrayLike, true_raw: npt.ArrayLike, cap: float, run: npt.ArrayLike) -> dict[str, float]:
    p = np.asarray(pred, np.float64)
    t_raw = np.asarray(true_raw, np.float64)
    runs = np.asarray(run)
    known = np.isfinite(t_raw)
    if not known.any():
        return {"windows": 0}
    p, t, runs = p[known], np.minimum(t_raw[known], cap), runs[known]
    err = p - t
    # The last window of each run is the one with the smallest true RUL.
    order = np.lexsort((t_raw[known], runs))
    first_of_run = np.r_[True, runs[order][1:] != runs[order][:-1]]
    last = order[first_of_run]
    score = asymmetric_score(p, t)
    return {
        "windows": len(t),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "score_mean": float(np.mean(score)),
        "rmse_last": float(np.sqrt(np.mean(err[last] ** 2))),
        "score_last_sum": float(np.sum(score[last])),
    }


def pr_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Average precision (area under the precision-recall curve, step-wise)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, np.float64)
    positives = y.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    y = y[order]
    tp = np.cumsum(y)
    precision = tp / np.arange(1, len(y) + 1)
    return float(np.sum(precision * y) / positives)


def failure_metrics(p_fail: npt.ArrayLike, fail: npt.ArrayLike, threshold: float) -> dict[str, float]:
    p = np.asarray(p_fail, np.float64)
    y = np.asarray(fail, np.float64)
    known = np.isfinite(y)
    p, y = p[known], y[known]
    alert = p >= threshold
    tp = float(np.sum(alert & (y == 1)))
    fp = float(np.sum(alert & (y == 0)))
    fn = float(np.sum(~alert & (y == 1)))
    return {
        "windows": len(y),
        "positives": int(y.sum()),
        "pr_auc": pr_auc(p, y),
        "threshold": float(threshold),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
    }


def alert_metrics(p_fail: npt.ArrayLike, rul_raw: npt.ArrayLike, run: npt.ArrayLike, age: npt.ArrayLike,
                  run_failed: npt.NDArray[np.bool_], *, threshold: float, consecutive: int,
                  horizon: float) -> dict[str, Any]:
    """Alerts as a worker raises them, per run in time order; see the module docstring."""
    p = np.asarray(p_fail, np.float64)
    rul = np.asarray(rul_raw, np.float64)
    runs = np.asarray(run)
    order = np.lexsort((np.asarray(age), runs))
    p, rul, runs = p[order], rul[order], runs[order]
    starts = np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]])
    ends = np.r_[starts[1:], len(runs)]
    alerts = true_alerts = 0
    leads: list[float] = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        above = p[start:end] >= threshold
        failed = bool(run_failed[runs[start]])
        r = rul[start:end]
        lead = 0.0
        i, n = 0, len(above)
        while i < n:
            if not above[i]:
                i += 1
                continue
            j = i
            while j < n and above[j]:
                j += 1
            if j - i >= consecutive:
                opened = i + consecutive - 1
                alerts += 1
                if failed and r[opened] <= horizon:
                    true_alerts += 1
                if failed and r[j - 1] <= horizon:  # open inside the horizon before the failure
                    lead = max(lead, min(float(r[opened]), horizon))
            i = j
        if failed:
            leads.append(lead)
    return {
        "alerts": alerts,
        "alert_precision": true_alerts / alerts if alerts else float("nan"),
        "failed_runs": len(leads),
        "runs_warned": int(sum(lead > 0 for lead in leads)),
        "median_lead_time": float(np.median(leads)) if leads else float("nan"),
    }


def choose_threshold(p_fail: npt.ArrayLike, fail: npt.ArrayLike, *, min_precision: float = 0.9) -> float:
    """The threshold with the best F1 among those reaching ``min_precision`` on these
    windows (else the most precise one); 0.5 when there are no positives."""
    p = np.asarray(p_fail, np.float64)
    y = np.asarray(fail, np.float64)
    known = np.isfinite(y)
    p, y = p[known], y[known]
    if y.sum() == 0 or len(y) == 0:
        return 0.5
    candidates = np.unique(np.quantile(p, np.linspace(0.5, 0.995, 100)))
    best, best_f1, best_precision, fallback = 0.5, -1.0, -1.0, 0.5
    for thr in candidates.tolist():
        alert = p >= thr
        tp = float(np.sum(alert & (y == 1)))
        fp = float(np.sum(alert & (y == 0)))
        fn = float(np.sum(~alert & (y == 1)))
        if tp == 0:
            continue
        precision = tp / (tp + fp)
        f1 = 2 * tp / (2 * tp + fp + fn)
        if precision >= min_precision and f1 > best_f1:
            best, best_f1 = thr, f1
        if precision > best_precision:
            best_precision, fallback = precision, thr
    return float(best if best_f1 >= 0 else fallback)


def choose_alert_threshold(p_fail: npt.ArrayLike, fail: npt.ArrayLike, rul_raw: npt.ArrayLike, run: npt.ArrayLike,
                           age: npt.ArrayLike, run_failed: npt.NDArray[np.bool_], *, horizon: float,
                           consecutive: int, min_precision: float = 0.85) -> float:
    """The threshold whose alerts (as :func:`alert_metrics` counts them) reach
    ``min_precision`` with the longest median lead time (ties: the most precise). Falls back to
    :func:`choose_threshold` when no threshold is precise enough."""
    p = np.asarray(p_fail, np.float64)
    labelled = np.isfinite(np.asarray(fail, np.float64))
    if not labelled.any():
        return 0.5
    # Quantiles follow the scores; a fixed grid keeps steps small where few windows score high.
    candidates = np.unique(np.concatenate([np.quantile(p[labelled], np.linspace(0.3, 0.995, 80)),
                                           np.linspace(0.02, 0.99, 98)]))
    best: tuple[float, float, float] | None = None
    for thr in candidates.tolist():
        found = alert_metrics(p, rul_raw, run, age, run_failed, threshold=thr, consecutive=consecutive,
                              horizon=horizon)
        precision = found["alert_precision"]
        if not found["alerts"] or not precision >= min_precision:
            continue
        key = (found["median_lead_time"], precision, thr)
        if best is None or key > best:
            best = key
    if best is None:
        return choose_threshold(p, fail, min_precision=min_precision)
    return float(best[2])
