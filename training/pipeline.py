"""Train → validate → export → bundle, and evaluation/prediction through the scoring core.

Machines are split (never rows) into train, validation (early stopping, threshold choice)
and test (the metrics in ``model.json``). Test metrics are computed on the exported ONNX
graph through :class:`forewarn.inference.OnnxModel`, i.e. what the workers will serve.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd

from forewarn.bundle import (
    Bundle,
    FeatureSpec,
    FeatureStats,
    InputSpec,
    ModelMeta,
    Targets,
    Thresholds,
    list_versions,
    new_version,
    read_bundle,
    resolve_bundle,
    write_bundle,
)
from forewarn.inference import OnnxModel
from forewarn.windows import WindowStore
from training.baseline import AgeBaseline, LinearBaseline
from training.dataset import Events, Readings, unit_from_name
from training.errors import DataError, TrainingError
from training.labels import LabelledWindows, RulUnit, label_runs, make_windows
from training.metrics import alert_metrics, choose_alert_threshold, failure_metrics, pr_auc, rul_metrics

__all__ = ["TrainConfig", "TrainResult", "evaluate_bundle", "feature_stats", "predict_frame", "train"]

log = logging.getLogger(__name__)

Target = Literal["rul", "failure", "both"]


@dataclass(frozen=True)
class TrainConfig:
    target: Target = "both"
    window: int = 50
    rul_cap: float = 125.0
    horizon: float = 30.0
    rul_unit: RulUnit = "readings"
    architecture: Literal["conv", "lstm"] = "conv"
    epochs: int = 40
    batch_size: int = 256
    patience: int = 6
    seed: int = 42
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    max_windows: int | None = None
    max_imputed: int = 5
    min_precision: float = 0.85
    consecutive: int = 2
    settings: tuple[str, ...] = ()
    verbose: int = 0
    promote: bool = False
    model_options: tuple[tuple[str, Any], ...] = ()
    folds: int = 0

    @property
    def heads(self) -> list[Literal["rul", "p_fail"]]:
        return {"rul": ["rul"], "failure": ["p_fail"], "both": ["rul", "p_fail"]}[self.target]  # type: ignore[return-value]


@dataclass
class TrainResult:
    bundle_path: Path
    meta: ModelMeta
    metrics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    keras_model: Any = None  # the trained Keras model, for in-process use (benchmarks)


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("forewarn", "numpy", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "pandas"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def feature_stats(values: npt.NDArray[np.float64], names: list[str], bins: int = 10) -> list[FeatureStats]:
    """Per-column training statistics; PSI bins are the training deciles."""
    stats = []
    for i, name in enumerate(names):
        column = values[:, i]
        finite = column[np.isfinite(column)]
        if len(finite) == 0:
            finite = np.zeros(1)
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1)
        stats.append(FeatureStats(
            name=name, mean=float(finite.mean()), std=float(finite.std()), min=float(finite.min()),
            max=float(finite.max()), median=float(np.median(finite)),
            missing_fraction=float(1 - np.isfinite(column).mean()) if len(column) else 0.0,
            bin_edges=[float(e) for e in edges], proportions=[float(c) for c in counts / counts.sum()]))
    return stats


def _split_machines(machines: npt.NDArray[np.str_], config: TrainConfig) -> tuple[set[str], set[str], set[str]]:
    unique = np.unique(machines)
    if len(unique) < 3:
        raise DataError(f"need readings of at least 3 machines to split train/validation/test, got {len(unique)}")
    order = np.random.default_rng(config.seed).permutation(unique)
    n_test = max(1, round(len(order) * config.test_fraction)) if config.test_fraction > 0 else 0
    n_val = max(1, round((len(order) - n_test) * config.val_fraction))
    if len(order) - n_test - n_val < 1:
        raise DataError(f"{len(unique)} machines are too few for the validation and test fractions")
    test = set(order[:n_test].tolist())
    val = set(order[n_test:n_test + n_val].tolist())
    return set(order[n_test + n_val:].tolist()), val, test


def _targets(data: LabelledWindows, config: TrainConfig) -> dict[str, npt.NDArray[np.float32]]:
    y: dict[str, npt.NDArray[np.float32]] = {}
    if "rul" in config.heads:
        y["rul"] = np.where(np.isfinite(data.rul), np.minimum(data.rul, config.rul_cap) / config.rul_cap,
                            -1.0).astype(np.float32)
    if "p_fail" in config.heads:
        y["p_fail"] = np.where(np.isfinite(data.fail), data.fail, -1.0).astype(np.float32)
    return y


def _time_scale(kind: str, unit: RulUnit) -> float:
    return 0.001 if (kind == "timestamp" and unit == "time") else 1.0


def score_windows(model: OnnxModel, data: LabelledWindows) -> dict[str, npt.NDArray[np.float32]]:
    scores = model.predict(data.x)
    out = {}
    if scores.rul is not None:
        out["rul"] = scores.rul
    if scores.p_fail is not None:
        out["p_fail"] = scores.p_fail
    return out


def _metrics(pred: dict[str, npt.NDArray[Any]], data: LabelledWindows, *, cap: float, horizon: float,
             thresholds: Thresholds) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if "rul" in pred:
        result["rul"] = rul_metrics(pred["rul"], data.rul, cap, data.run)
    if "p_fail" in pred:
        result["failure"] = failure_metrics(pred["p_fail"], data.fail, thresholds.p_fail)
        result["alerts"] = alert_metrics(pred["p_fail"], data.rul, data.run, data.age, data.run_failed,
                                         threshold=thresholds.p_fail, consecutive=thresholds.consecutive,
                                         horizon=horizon)
    return result


def _baseline_metrics(rul_pred: npt.NDArray[np.float64], data: LabelledWindows, *, cap: float,
                      horizon: float, consecutive: int) -> dict[str, Any]:
    alert = (rul_pred <= horizon).astype(np.float64)
    return {
        "rul": rul_metrics(rul_pred, data.rul, cap, data.run),
        "failure": failure_metrics(alert, data.fail, 0.5),
        "alerts": alert_metrics(alert, data.rul, data.run, data.age, data.run_failed, threshold=0.5,
                                consecutive=consecutive, horizon=horizon),
    }


def _asset_type(readings: Readings, asset_type: str | None) -> str:
    if asset_type:
        return asset_type
    if len(readings.asset_types) == 1:
        return readings.asset_types[0]
    if len(readings.asset_types) > 1:
        raise DataError(f"{readings.path}: holds asset types {', '.join(readings.asset_types)}",
                        hint="pass --asset-type to train one of them")
    return "default"


def _fit(train_w: LabelledWindows, val_w: LabelledWindows, normaliser: Any, model_config: Any,
         config: TrainConfig) -> tuple[Any, Any]:
    """Build and fit one network with early stopping on ``val_w``; seeds fixed first."""
    import keras

    from training.models import build_model, seed_everything

    seed_everything(config.seed)
    model = build_model(config.window, normaliser, config.heads, model_config)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2)),
    ]
    history = model.fit(train_w.x, _targets(train_w, config), validation_data=(val_w.x, _targets(val_w, config)),
                        epochs=config.epochs, batch_size=config.batch_size, shuffle=True, callbacks=callbacks,
                        verbose=config.verbose)
    return model, history


def _cross_validate(train_w: LabelledWindows, val_w: LabelledWindows, normaliser: Any, model_config: Any,
                    config: TrainConfig) -> dict[str, Any]:
    """Grouped k-fold over the training and validation machines (each fold's machines are
    held out together; early stopping on the held-out fold, so the figures are slightly
    optimistic). Returns per-fold RUL RMSE/MAE and PR-AUC with their mean and std."""
    machines = np.unique(np.concatenate([train_w.machine, val_w.machine]))
    order = np.random.default_rng(config.seed + 1).permutation(machines)
    folds = np.array_split(order, config.folds)
    both = _concat(train_w, val_w)
    per_fold: list[dict[str, float]] = []
    for i, held in enumerate(folds):
        mask = np.isin(both.machine, held)
        model, _ = _fit(both.take(~mask), both.take(mask), normaliser, model_config, config)
        outputs = model.predict(both.x[mask], batch_size=2048, verbose=0)
        fold = both.take(mask)
        figures: dict[str, float] = {"fold": i, "machines": len(held)}
        if "rul" in outputs:
            rul = np.clip(np.asarray(outputs["rul"]).reshape(-1) * config.rul_cap, 0, config.rul_cap)
            found = rul_metrics(rul, fold.rul, config.rul_cap, fold.run)
            figures.update(rul_rmse=found.get("rmse", np.nan), rul_mae=found.get("mae", np.nan))
        if "p_fail" in outputs:
            known = np.isfinite(fold.fail)
            figures["pr_auc"] = pr_auc(np.asarray(outputs["p_fail"]).reshape(-1)[known], fold.fail[known])
        per_fold.append(figures)
        log.info("fold %d/%d: %s", i + 1, config.folds, figures)
    summary: dict[str, Any] = {"folds": per_fold}
    for key in ("rul_rmse", "rul_mae", "pr_auc"):
        values = [f[key] for f in per_fold if key in f]
        if values:
            summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return summary


def _concat(a: LabelledWindows, b: LabelledWindows) -> LabelledWindows:
    return LabelledWindows(x=np.concatenate([a.x, b.x]), rul=np.concatenate([a.rul, b.rul]),
                           fail=np.concatenate([a.fail, b.fail]), age=np.concatenate([a.age, b.age]),
                           run=np.concatenate([a.run, b.run]), machine=np.concatenate([a.machine, b.machine]),
                           time=np.concatenate([a.time, b.time]), run_failed=a.run_failed)


def train(readings: Readings, events: Events, config: TrainConfig, models_dir: str | Path, *,
          asset_type: str | None = None, lineage: dict[str, Any] | None = None) -> TrainResult:
    """Train one asset type's model and write its bundle under ``models_dir``."""
    from training.export import check_parity, serving_function, to_onnx
    from training.models import ModelConfig, Normaliser

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    asset = _asset_type(readings, asset_type)
    frame = readings.frame
    labels = label_runs(frame, events.frame, horizon=config.horizon, rul_unit=config.rul_unit,
                        time_scale=_time_scale(readings.time_kind, config.rul_unit))
    if not labels.run_failed.any():
        raise DataError(f"{readings.path}: no run ends in a failure",
                        hint="pass --events with failure events, or --run-to-failure")
    train_m, val_m, test_m = _split_machines(frame["machine_id"].to_numpy().astype(str), config)
    machine_col = frame["machine_id"].to_numpy().astype(str)
    train_rows = np.isin(machine_col, list(train_m))
    train_values = frame.loc[train_rows, readings.value_columns].to_numpy(np.float64)
    std = np.nanstd(train_values, axis=0) if len(train_values) else np.zeros(len(readings.value_columns))
    keep = np.isfinite(std) & (std > 0)
    dropped = [c for c, k in zip(readings.value_columns, keep, strict=True) if not k]
    if dropped:
        log.warning("dropping constant or empty columns: %s", ", ".join(dropped))
    columns = [c for c, k in zip(readings.value_columns, keep, strict=True) if k]
    if not columns:
        raise DataError(f"{readings.path}: every sensor column is constant on the training machines")
    stats = feature_stats(train_values[:, keep], columns)
    fill = np.array([s.median for s in stats], dtype=np.float32)
    windows = make_windows(frame, columns, labels, window=config.window, fill_values=fill,
                           max_imputed=config.max_imputed)
    if len(windows) == 0:
        raise DataError(f"{readings.path}: no machine has {config.window} readings in a run",
                        hint="lower --window")
    train_w = windows.take(np.isin(windows.machine, list(train_m)))
    val_w = windows.take(np.isin(windows.machine, list(val_m)))
    test_w = windows.take(np.isin(windows.machine, list(test_m)))
    if config.max_windows is not None and len(train_w) > config.max_windows:
        pick = np.sort(np.random.default_rng(config.seed).choice(len(train_w), config.max_windows, replace=False))
        train_w = train_w.take(pick)
    if len(train_w) == 0 or len(val_w) == 0:
        raise DataError("too few windows on the training or validation machines", hint="lower --window")
    timings["prepare_s"] = time.perf_counter() - t0
    log.info("%s: %d train / %d validation / %d test windows of %d readings x %d features",
             asset, len(train_w), len(val_w), len(test_w), config.window, len(columns))


    setting_idx = [i for i, c in enumerate(columns) if c in config.settings]
    normaliser = Normaliser.fit(train_values[:, keep], setting_idx)
    model_config = ModelConfig(architecture=config.architecture, **dict(config.model_options))
    if config.folds > 1:
        cv = _cross_validate(train_w, val_w, normaliser, model_config, config)
    t1 = time.perf_counter()
    model, history = _fit(train_w, val_w, normaliser, model_config, config)
    timings["fit_s"] = time.perf_counter() - t1
    epochs_run = len(history.history.get("loss", []))

    t2 = time.perf_counter()
    serve = serving_function(model, config.window, len(columns), list(config.heads), config.rul_cap)
    onnx_bytes = to_onnx(serve, list(config.heads))
    parity = check_parity(serve, onnx_bytes, val_w.x[:4096], list(config.heads), config.rul_cap)
    timings["export_s"] = time.perf_counter() - t2

    features = [FeatureSpec(name=c, kind="setting" if c in config.settings else "sensor", unit=unit_from_name(c))
                for c in columns]
    targets = Targets(heads=list(config.heads), rul_unit=config.rul_unit if config.rul_unit == "readings"
                      else ("s" if readings.time_kind == "timestamp" else "cycles"),
                      rul_cap=config.rul_cap, horizon=config.horizon)
    draft = ModelMeta(name=asset, asset_type=asset, version="draft", created_at=datetime.now(UTC).isoformat(),
                      input=InputSpec(name="window", window=config.window, features=features), targets=targets,
                      thresholds=Thresholds(consecutive=config.consecutive), feature_stats=stats, sha256="")
    from forewarn.bundle import sha256_hex

    scorer = OnnxModel(Bundle(meta=msgspec.structs.replace(draft, sha256=sha256_hex(onnx_bytes)), onnx=onnx_bytes))
    val_pred = score_windows(scorer, val_w)
    thresholds = Thresholds(consecutive=config.consecutive)
    if "p_fail" in val_pred:
        thr = choose_alert_threshold(val_pred["p_fail"], val_w.fail, val_w.rul, val_w.run, val_w.age,
                                     val_w.run_failed, horizon=config.horizon, consecutive=config.consecutive,
                                     min_precision=config.min_precision)
        thresholds = Thresholds(p_fail=thr, consecutive=config.consecutive, rul_below=config.horizon / 2)
    elif "rul" in val_pred:
        thresholds = Thresholds(p_fail=0.5, consecutive=config.consecutive, rul_below=config.horizon / 2)

    evaluated = test_w if len(test_w) else val_w
    age_base = AgeBaseline.fit(train_w, config.rul_cap)
    linear_base = LinearBaseline.fit(train_w, config.rul_cap)
    common = {"cap": config.rul_cap, "horizon": config.horizon}
    metrics: dict[str, Any] = {
        "evaluated_on": "test" if len(test_w) else "validation",
        "model": _metrics(score_windows(scorer, evaluated), evaluated, thresholds=thresholds, **common),
        "baseline_age": _baseline_metrics(age_base.predict(evaluated), evaluated,
                                          consecutive=config.consecutive, **common),
        "baseline_linear": _baseline_metrics(linear_base.predict(evaluated), evaluated,
                                             consecutive=config.consecutive, **common),
        "validation": _metrics(val_pred, val_w, thresholds=thresholds, **common),
        "parity_max_abs_diff": parity,
        **({"cross_validation": cv} if config.folds > 1 else {}),
        "baseline_params": {"age_mean_life": age_base.mean_life},
    }
    timings["total_s"] = time.perf_counter() - t0
    arch = {"architecture": config.architecture, "filters": model_config.filters,
            "kernel_size": model_config.kernel_size, "dilations": list(model_config.dilations),
            "dense": model_config.dense, "dropout": model_config.dropout, "parameters": int(model.count_params())}
    training_info = {
        "seed": config.seed, "epochs": config.epochs, "epochs_run": epochs_run, "batch_size": config.batch_size,
        "patience": config.patience, "windows": {"train": len(train_w), "validation": len(val_w),
                                                 "test": len(test_w)},
        "machines": {"train": len(train_m), "validation": len(val_m), "test": len(test_m)},
        "test_machines": sorted(test_m), "max_imputed": config.max_imputed, "timings": timings,
        "dropped_columns": dropped,
        "best_val_loss": float(min(history.history.get("val_loss", [float("nan")]))),
    }
    source = {"readings": {"path": str(readings.path), "sha256": readings.sha256},
              "events": ({"path": str(events.path), "sha256": events.sha256} if events.path
                         else {"run_to_failure": True})}
    version = new_version()
    existing = set(list_versions(models_dir, asset))
    base, n = version, 1
    while version in existing:
        version, n = f"{base}-{n}", n + 1
    meta = msgspec.structs.replace(
        draft, version=version, thresholds=thresholds, architecture=arch, training=training_info,
        lineage={**source, **(lineage or {})}, metrics=metrics, libraries=_library_versions())
    from forewarn.bundle import current_version

    make_current = config.promote or current_version(models_dir, asset) is None
    path = write_bundle(models_dir, meta, onnx_bytes, make_current=make_current)
    return TrainResult(bundle_path=path, meta=read_bundle(path).meta, metrics=metrics, timings=timings,
                       keras_model=model)


def _bundle_windows(bundle: Bundle, readings: Readings, events: Events | None) -> LabelledWindows:
    meta = bundle.meta
    names = meta.input.feature_names
    missing = [c for c in names if c not in readings.frame.columns]
    if missing:
        raise DataError(f"{readings.path}: missing column {missing[0]!r} that model {bundle.label} needs")
    frame = readings.frame
    labels = label_runs(frame, events.frame if events is not None else frame.iloc[:0].assign(event=""),
                        horizon=meta.targets.horizon, rul_unit="readings" if meta.targets.rul_unit == "readings"
                        else "time", time_scale=_time_scale(readings.time_kind,
                                                            "readings" if meta.targets.rul_unit == "readings"
                                                            else "time"))
    return make_windows(frame, names, labels, window=meta.input.window,
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
        "metrics": _metrics(score_windows(scorer, data), data, thresholds=meta.thresholds, **common),
        "baseline_age": _baseline_metrics(AgeBaseline(mean_life=life, cap=meta.targets.rul_cap).predict(data),
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
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise DataError(f"{readings.path}: missing column {missing[0]!r} that model {bundle.label} needs")
    store = WindowStore(meta.input.window, len(names), fill_values=np.asarray(meta.fill_values, np.float32),
                        max_imputed=int(meta.training.get("max_imputed", 5)))
    seq = frame["seq"].to_numpy(np.int64) if "seq" in frame.columns else None
    batch = store.update(frame["machine_id"].to_numpy().astype(str), frame[names].to_numpy(np.float32), seq)
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


def check_trained(result: TrainResult) -> None:
    """Refuse a result without usable metrics (e.g. every test window censored)."""
    if not result.metrics.get("model"):
        raise TrainingError(f"{result.bundle_path}: no metrics could be computed")
