"""Scoring labelled windows through the exported graph, the metrics beside the baselines, and
``forewarn evaluate`` / ``forewarn predict``.

Every figure is computed on the ONNX graph through :class:`forewarn.inference.OnnxModel`,
i.e. what the scoring workers serve, and ``predict`` windows readings with the workers'
:class:`forewarn.windows.WindowStore`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from forewarn.bundle import Bundle, Thresholds, read_bundle, resolve_bundle
from forewarn.inference import OnnxModel
from forewarn.windows import NO_BOOT, WindowStore
from training.baseline import AgeBaseline
from training.dataset import Events, Readings
from training.errors import DataError
from training.labels import LabelledWindows, label_runs, make_windows
from training.metrics import alert_metrics, failure_metrics, rul_metrics
from training.settings import RulUnit

__all__ = [
    "Scores",
    "baseline_metrics",
    "evaluate_bundle",
    "model_metrics",
    "predict_frame",
    "score_windows",
    "time_scale",
]

Scores = dict[str, npt.NDArray[np.float32]]
"""Per head (``rul``, ``p_fail``), one score per window."""


def time_scale(time_kind: str, unit: RulUnit) -> float:
    """Factor from the ``time`` column to the RUL unit: epoch ms → s for timestamps counted in time."""
    return 0.001 if (time_kind == "timestamp" and unit == "time") else 1.0


def score_windows(model: OnnxModel, data: LabelledWindows) -> Scores:
    """The graph's outputs on ``data``'s windows, keyed by head."""
    scores = model.predict(data.x)
    out = {}
    if scores.rul is not None:
        out["rul"] = scores.rul
    if scores.p_fail is not None:
        out["p_fail"] = scores.p_fail
    return out


def model_metrics(pred: Scores, data: LabelledWindows, *, cap: float, horizon: float,
                  thresholds: Thresholds) -> dict[str, Any]:
    """RUL, failure and alert figures of a model's scores, alerts opened as the workers open them."""
    result: dict[str, Any] = {}
    if "rul" in pred:
        result["rul"] = rul_metrics(pred["rul"], data.rul, cap, data.run)
    if "p_fail" in pred:
        result["failure"] = failure_metrics(pred["p_fail"], data.fail, thresholds.p_fail)
        result["alerts"] = alert_metrics(pred["p_fail"], data.rul, data.run, data.age, data.run_failed,
                                         threshold=thresholds.p_fail, consecutive=thresholds.consecutive,
                                         horizon=horizon)
    return result


def baseline_metrics(rul_pred: npt.NDArray[np.float64], data: LabelledWindows, *, cap: float,
                     horizon: float, consecutive: int) -> dict[str, Any]:
    """The same figures for a baseline's RUL; its failure alert fires when its RUL <= horizon."""
    alert = (rul_pred <= horizon).astype(np.float64)
    return {
        "rul": rul_metrics(rul_pred, data.rul, cap, data.run),
        "failure": failure_metrics(alert, data.fail, 0.5),
        "alerts": alert_metrics(alert, data.rul, data.run, data.age, data.run_failed, threshold=0.5,
                                consecutive=consecutive, horizon=horizon),
    }


def _missing_column(bundle: Bundle, readings: Readings) -> None:
    missing = [c for c in bundle.meta.input.feature_names if c not in readings.frame.columns]
    if missing:
        raise DataError(f"{readings.path}: missing column {missing[0]!r} that model {bundle.label} needs")


def _bundle_windows(bundle: Bundle, readings: Readings, events: Events | None) -> LabelledWindows:
    meta = bundle.meta
    _missing_column(bundle, readings)
    frame = readings.frame
    unit: RulUnit = "readings" if meta.targets.rul_unit == "readings" else "time"
    labels = label_runs(frame, events.frame if events is not None else frame.iloc[:0].assign(event=""),
                        horizon=meta.targets.horizon, rul_unit=unit, time_scale=time_scale(readings.time_kind, unit))
    return make_windows(frame, meta.input.feature_names, labels, window=meta.input.window,
                        fill_values=np.asarray(meta.fill_values, np.float32),
                        max_imputed=int(meta.training.get("max_imputed", 5)))


def evaluate_bundle(bundle_path: str | Path, readings: Readings, events: Events,
                    asset_type: str | None = None) -> dict[str, Any]:
    """The bundle's metrics on other data, beside the age baseline from its training."""
    bundle = read_bundle(resolve_bundle(bundle_path, asset_type))
    meta = bundle.meta
    scorer = OnnxModel(bundle)
    data = _bundle_windows(bundle, readings, events)
    if len(data) == 0:
        raise DataError(f"{readings.path}: no run has {meta.input.window} readings")
    common = {"cap": meta.targets.rul_cap, "horizon": meta.targets.horizon}
    life = float(meta.metrics.get("baseline_params", {}).get("age_mean_life", np.nan))
    return {
        "model": f"{meta.name}@{meta.version}",
        "windows": len(data),
        "metrics": model_metrics(score_windows(scorer, data), data, thresholds=meta.thresholds, **common),
        "baseline_age": baseline_metrics(AgeBaseline(mean_life=life, cap=meta.targets.rul_cap).predict(data),
                                         data, consecutive=meta.thresholds.consecutive, **common),
    }


def predict_frame(bundle_path: str | Path, readings: Readings, *, last: bool = False,
                  asset_type: str | None = None) -> pd.DataFrame:
    """Score a readings file with the workers' window store and ONNX scorer: one row per
    window (or per machine with ``last``): ``machine_id, time, rul, p_fail``."""
    bundle = read_bundle(resolve_bundle(bundle_path, asset_type))
    meta = bundle.meta
    names = meta.input.feature_names
    frame = readings.frame
    _missing_column(bundle, readings)
    store = WindowStore(meta.input.window, len(names), fill_values=np.asarray(meta.fill_values, np.float32),
                        max_imputed=int(meta.training.get("max_imputed", 5)))
    # The workers' identity policies: seq with the device's boot and event time, so a restart
    # (seq from 0 again) starts the machine's window afresh instead of dropping its readings.
    seq = frame["seq"].to_numpy(np.int64) if "seq" in frame.columns else None
    boot = frame["boot"].fillna(NO_BOOT).to_numpy(np.int64) if seq is not None and "boot" in frame.columns else None
    batch = store.update(frame["machine_id"].to_numpy().astype(str), frame[names].to_numpy(np.float32), seq,
                         boot=boot, ts=frame["time"].to_numpy(np.int64) if seq is not None else None)
    rows = batch.rows
    windows = batch.windows
    if last and len(rows):
        machines = frame["machine_id"].to_numpy().astype(str)[rows]
        is_last = np.r_[machines[1:] != machines[:-1], True]
        rows, windows = rows[is_last], windows[is_last]
    scores = OnnxModel(bundle).predict(windows)
    times = frame["time"].to_numpy(np.int64)[rows]
    time_out: Any = times
    if readings.time_kind == "timestamp":
        time_out = pd.to_datetime(times, unit="ms", utc=True).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out = pd.DataFrame({"machine_id": frame["machine_id"].to_numpy().astype(str)[rows], "time": time_out})
    out["rul"] = scores.rul if scores.rul is not None else np.nan
    out["p_fail"] = scores.p_fail if scores.p_fail is not None else np.nan
    return out
