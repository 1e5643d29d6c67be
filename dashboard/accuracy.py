"""How well the models do on live data: predictions joined with the failures that later
happened, and drift of the sensors against the training statistics in the bundle.

Labels follow the model's own targets: a prediction for a reading of a machine is *positive*
when that machine failed within ``horizon`` readings after it, *negative* when it did not and
at least ``horizon`` later readings were seen, and unknown (left out) otherwise. Readings are
counted by the machine's predictions in event-time order, not by ``seq``, which starts again
from 0 when a device restarts. A failure's reading is the last scored reading at or before
the failure's time.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
import pandas as pd

from dashboard.queries import (
    DEFAULT_HORIZON,
    DEFAULT_RUL_CAP,
    DEFAULT_THRESHOLD,
    ModelInfo,
    latest_models,
    model_infos,
)
from dashboard.store import Store

__all__ = ["PSI_MODERATE", "PSI_SIGNIFICANT", "drift", "live_accuracy", "psi"]

PSI_MODERATE: Final = 0.1
PSI_SIGNIFICANT: Final = 0.25
_EPS: Final = 1e-4

_ACCURACY_SQL: Final = """
WITH params AS (SELECT * FROM _params),
-- A prediction's place among its machine's predictions in event time: the horizon counts
-- readings scored, also across a device restart, where seq starts again from 0.
ranked AS (
    SELECT machine_id, ts, model_version, asset_type, p_fail, rul,
           row_number() OVER (PARTITION BY machine_id ORDER BY ts, seq) AS seq
    FROM predictions),
newest AS (SELECT machine_id, max(seq) AS seq FROM ranked GROUP BY machine_id),
failures AS (
    SELECT f.machine_id, f.ts AS f_ts, p.seq AS f_seq
    FROM (SELECT machine_id, ts FROM maintenance WHERE event = 'failure') f
    ASOF LEFT JOIN (SELECT machine_id, ts, seq FROM ranked) p
        ON f.machine_id = p.machine_id AND f.ts >= p.ts),
failed AS (SELECT DISTINCT machine_id FROM failures),
-- Only machines that failed need the as-of join; every other prediction is negative once
-- the horizon has passed (the machine's newest reading is far enough ahead).
joined AS (
    SELECT p.model_version, p.asset_type, p.p_fail, p.rul, p.seq, p.machine_id, f.f_seq
    FROM (SELECT * FROM ranked WHERE machine_id IN (SELECT machine_id FROM failed)) p
    ASOF LEFT JOIN failures f ON p.machine_id = f.machine_id AND p.ts <= f.f_ts
    UNION ALL
    SELECT model_version, asset_type, p_fail, rul, seq, machine_id, NULL AS f_seq
    FROM ranked WHERE machine_id NOT IN (SELECT machine_id FROM failed)),
labelled AS (
    SELECT j.model_version, j.asset_type, j.p_fail, j.rul, j.seq, j.f_seq,
           (j.p_fail >= coalesce(k.threshold, $threshold)) AS predicted,
           coalesce(k.rul_cap, $rul_cap) AS rul_cap,
           CASE WHEN j.f_seq IS NOT NULL AND j.f_seq - j.seq BETWEEN 0 AND coalesce(k.horizon, $horizon) THEN TRUE
                WHEN m.seq - j.seq >= coalesce(k.horizon, $horizon) THEN FALSE END AS actual
    FROM joined j
    LEFT JOIN newest m ON m.machine_id = j.machine_id
    LEFT JOIN params k ON k.model_version = j.model_version AND k.asset_type = j.asset_type
    WHERE j.p_fail IS NOT NULL OR j.rul IS NOT NULL)
SELECT asset_type, model_version, count(*) AS predictions,
       count(actual) AS labelled,
       count(*) FILTER (WHERE actual AND predicted) AS tp,
       count(*) FILTER (WHERE NOT actual AND predicted) AS fp,
       count(*) FILTER (WHERE actual AND NOT predicted) AS fn,
       avg(abs(rul - least(f_seq - seq, rul_cap))) FILTER (WHERE f_seq IS NOT NULL AND f_seq >= seq) AS rul_mae,
       sqrt(avg(pow(rul - least(f_seq - seq, rul_cap), 2)) FILTER (WHERE f_seq IS NOT NULL AND f_seq >= seq))
           AS rul_rmse,
       count(rul) FILTER (WHERE f_seq IS NOT NULL AND f_seq >= seq) AS rul_n
FROM labelled GROUP BY ALL ORDER BY asset_type, model_version
"""

# Warning lead time: for each failure, the first alert opened on that machine since its
# previous failure; attributed to the model version that opened the alert.
_LEAD_SQL: Final = """
WITH failures AS (
    SELECT f.machine_id, coalesce(f.asset_type, m.asset_type) AS asset_type, f.ts AS f_ts,
           lag(f.ts) OVER (PARTITION BY f.machine_id ORDER BY f.ts) AS prev_ts
    FROM maintenance f LEFT JOIN machines m USING (machine_id) WHERE f.event = 'failure'),
opens AS (
    SELECT alert_id, machine_id, min(opened_at) AS opened_at, arg_min(model_version, ts) AS model_version,
           arg_min(asset_type, ts) AS asset_type
    FROM alert_events GROUP BY alert_id, machine_id),
warned AS (
    SELECT f.machine_id, f.f_ts, arg_min(o.model_version, o.opened_at) AS model_version,
           min(o.opened_at) AS first_alert, coalesce(any_value(f.asset_type), any_value(o.asset_type)) AS asset_type
    FROM failures f JOIN opens o ON o.machine_id = f.machine_id
         AND o.opened_at <= f.f_ts AND o.opened_at > coalesce(f.prev_ts, -1)
    GROUP BY f.machine_id, f.f_ts)
SELECT asset_type, model_version, count(*) AS failures_warned,
       median(f_ts - first_alert) AS lead_ms_median, min(f_ts - first_alert) AS lead_ms_min
FROM warned GROUP BY ALL
"""


def _params_frame(infos: dict[tuple[str, str], ModelInfo]) -> pd.DataFrame:
    rows = [(a, v, i.threshold, i.horizon, i.rul_cap) for (a, v), i in infos.items()]
    return pd.DataFrame(rows, columns=["asset_type", "model_version", "threshold", "horizon", "rul_cap"]).astype(
        {"asset_type": "object", "model_version": "object", "threshold": "float64", "horizon": "float64",
         "rul_cap": "float64"})


def live_accuracy(store: Store) -> pd.DataFrame:
    """Per model version: precision and recall at its alert threshold, RUL error on runs that
    ended in a failure, failures warned and the warning lead time."""
    infos = model_infos(store)
    cursor_params = _params_frame(infos)
    sql = _ACCURACY_SQL.replace("$threshold", repr(DEFAULT_THRESHOLD)).replace(
        "$horizon", repr(DEFAULT_HORIZON)).replace("$rul_cap", repr(DEFAULT_RUL_CAP))
    frame = store.read_with(sql, {"_params": cursor_params})
    if frame.empty:
        return frame
    tp, fp, fn = (frame[c].astype("float64") for c in ("tp", "fp", "fn"))
    frame["precision"] = (tp / (tp + fp)).where(tp + fp > 0)
    frame["recall"] = (tp / (tp + fn)).where(tp + fn > 0)
    lead = store.read(_LEAD_SQL)
    frame = frame.merge(lead, on=["asset_type", "model_version"], how="left")
    failures = store.read("SELECT coalesce(f.asset_type, m.asset_type) AS asset_type, count(*) AS failures "
                          "FROM maintenance f LEFT JOIN machines m USING (machine_id) WHERE f.event = 'failure' "
                          "GROUP BY ALL")
    frame = frame.merge(failures, on="asset_type", how="left")
    frame["failures_warned"] = frame["failures_warned"].fillna(0).astype("int64")
    frame["failures"] = frame["failures"].fillna(0).astype("int64")
    return frame


def psi(expected: np.ndarray[Any, Any], actual: np.ndarray[Any, Any]) -> float:
    """Population stability index between two proportion vectors of the same bins."""
    e = np.clip(np.asarray(expected, dtype="float64"), _EPS, None)
    a = np.clip(np.asarray(actual, dtype="float64"), _EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def drift(store: Store, asset_type: str, window: int = 20_000) -> pd.DataFrame:
    """Per-sensor PSI of the most recent sampled readings against the training statistics of
    the newest model of ``asset_type``. Empty when there is no model or no telemetry."""
    model = latest_models(store).get(asset_type)
    columns = ["sensor", "psi", "n", "band", "train_mean", "live_mean"]
    if model is None:
        return pd.DataFrame(columns=columns)
    stats = {s["name"]: s for s in model.meta.get("feature_stats", [])}
    recent = store.read("""
        SELECT sensor, value FROM telemetry WHERE asset_type = ? AND list_contains(?, sensor)
        ORDER BY ts DESC LIMIT ?""", [asset_type, list(stats), window * max(1, len(stats))])
    rows: list[tuple[str, float, int, str, float, float]] = []
    for sensor, values in recent.groupby("sensor")["value"]:
        s = stats[str(sensor)]
        edges = np.asarray(s["bin_edges"], dtype="float64")
        expected = np.asarray(s["proportions"], dtype="float64")
        if len(expected) != len(edges) + 1 or len(values) == 0:
            continue
        counts = np.bincount(np.searchsorted(edges, values.to_numpy(), side="right"), minlength=len(expected))
        value = psi(expected, counts / counts.sum())
        band = "significant" if value >= PSI_SIGNIFICANT else "moderate" if value >= PSI_MODERATE else "stable"
        rows.append((str(sensor), value if math.isfinite(value) else float("nan"), len(values), band,
                     float(s["mean"]), float(values.mean())))
    return pd.DataFrame(rows, columns=columns).sort_values("psi", ascending=False).reset_index(drop=True)
