"""Train → validate → export → bundle, in named steps that can each be run alone.

:func:`train` runs them in order:

1. :func:`prepare`: labels (:func:`label`), the machine split (:func:`split_machines`), the
   columns kept and their training statistics (:func:`select_columns`), and the windows of
   each split.
2. :func:`cross_validate` (only with ``folds > 1``) and :func:`fit`: the Keras network.
3. :func:`export`: the ONNX graph, checked against Keras on validation windows.
4. :func:`draft_meta` (the input and targets the graph is scored with), :func:`choose_thresholds`
   on the validation machines, then :func:`evaluate`: metrics on the test machines beside the
   naive baselines.
5. :func:`describe` (``model.json``) and :func:`write` (a new version under the models folder).

Machines are split (never rows) into train, validation (early stopping, threshold choice)
and test (the metrics in ``model.json``). Thresholds and metrics are computed on the exported
ONNX graph through :class:`forewarn.inference.OnnxModel`, i.e. what the workers will serve.
The same options and seed give the same model and metrics.
"""

from __future__ import annotations

import logging
import platform
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import numpy.typing as npt

from forewarn.bundle import (
    Bundle,
    FeatureSpec,
    FeatureStats,
    InputSpec,
    ModelMeta,
    Targets,
    Thresholds,
    current_version,
    list_versions,
    new_version,
    read_bundle,
    sha256_hex,
    write_bundle,
)
from forewarn.inference import OnnxModel
from training.baseline import AgeBaseline, LinearBaseline
from training.dataset import Events, Readings, unit_from_name
from training.errors import DataError
from training.evaluation import Scores, baseline_metrics, model_metrics, score_windows, time_scale
from training.labels import LabelledWindows, RunLabels, label_runs, make_windows
from training.metrics import choose_alert_threshold, pr_auc, rul_metrics
from training.settings import TrainOptions

if TYPE_CHECKING:
    from training.models import Normaliser

__all__ = [
    "Columns",
    "Exported",
    "Fitted",
    "Prepared",
    "Split",
    "TrainResult",
    "choose_thresholds",
    "cross_validate",
    "describe",
    "draft_meta",
    "evaluate",
    "export",
    "feature_stats",
    "fit",
    "fit_normaliser",
    "label",
    "prepare",
    "select_columns",
    "split_machines",
    "train",
    "write",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Split:
    """Machine ids of each split; disjoint."""

    train: frozenset[str]
    validation: frozenset[str]
    test: frozenset[str]


@dataclass(frozen=True)
class Columns:
    """The value columns a model uses — those neither empty nor constant on the training
    machines, in graph order — with the training machines' readings of them."""

    names: list[str]
    dropped: list[str]
    train_values: FloatArray
    stats: list[FeatureStats]

    @property
    def fill_values(self) -> npt.NDArray[np.float32]:
        """The training medians: what a missing value is imputed with before a machine has any."""
        return np.array([s.median for s in self.stats], dtype=np.float32)


@dataclass(frozen=True)
class Prepared:
    """Everything :func:`prepare` derives from the data before any network is built."""

    asset_type: str
    split: Split
    columns: Columns
    train: LabelledWindows
    validation: LabelledWindows
    test: LabelledWindows

    @property
    def evaluated_on(self) -> str:
        """``test``, or ``validation`` when no machine was held out for testing."""
        return "test" if len(self.test) else "validation"

    @property
    def evaluated(self) -> LabelledWindows:
        return self.test if len(self.test) else self.validation


@dataclass(frozen=True)
class Fitted:
    """A trained Keras model and what its training recorded."""

    model: Any
    epochs_run: int
    best_val_loss: float


@dataclass(frozen=True)
class Exported:
    """The ONNX graph and the largest Keras-vs-onnxruntime difference per head."""

    onnx: bytes
    parity: dict[str, float]


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


def feature_stats(values: FloatArray, names: list[str], bins: int = 10) -> list[FeatureStats]:
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


def _asset_type(readings: Readings, asset_type: str | None) -> str:
    if asset_type:
        return asset_type
    if len(readings.asset_types) == 1:
        return readings.asset_types[0]
    if len(readings.asset_types) > 1:
        raise DataError(f"{readings.path}: holds asset types {', '.join(readings.asset_types)}",
                        hint="pass --asset-type to train one of them")
    return "default"


def label(readings: Readings, events: Events, options: TrainOptions) -> RunLabels:
    """Runs and targets of every reading; refuses data in which no run ends in a failure."""
    labels = label_runs(readings.frame, events.frame, horizon=options.horizon, rul_unit=options.rul_unit,
                        time_scale=time_scale(readings.time_kind, options.rul_unit))
    if not labels.run_failed.any():
        raise DataError(f"{readings.path}: no run ends in a failure",
                        hint="pass --events with failure events, or --run-to-failure")
    return labels


def split_machines(machines: npt.NDArray[np.str_], options: TrainOptions) -> Split:
    """A seeded random split of the distinct ``machines``: ``test_fraction`` of them for
    testing (at least one unless 0), ``val_fraction`` of the rest (at least one) for
    validation, the others (at least one) for training."""
    unique = np.unique(machines)
    if len(unique) < 3:
        raise DataError(f"need readings of at least 3 machines to split train/validation/test, got {len(unique)}")
    order = np.random.default_rng(options.seed).permutation(unique)
    n_test = max(1, round(len(order) * options.test_fraction)) if options.test_fraction > 0 else 0
    n_val = max(1, round((len(order) - n_test) * options.val_fraction))
    if len(order) - n_test - n_val < 1:
        raise DataError(f"{len(unique)} machines are too few for the validation and test fractions")
    return Split(train=frozenset(order[n_test + n_val:].tolist()),
                 validation=frozenset(order[n_test:n_test + n_val].tolist()),
                 test=frozenset(order[:n_test].tolist()))


def select_columns(readings: Readings, train_machines: frozenset[str]) -> Columns:
    """Drop the columns that are empty or constant on the training machines (a warning names
    them; none left is a :class:`DataError`) and compute the others' training statistics."""
    frame = readings.frame
    rows = np.isin(frame["machine_id"].to_numpy().astype(str), list(train_machines))
    values = frame.loc[rows, readings.value_columns].to_numpy(np.float64)
    with warnings.catch_warnings():  # an all-NaN column warns; it is dropped and named below
        warnings.simplefilter("ignore", RuntimeWarning)
        std = np.nanstd(values, axis=0) if len(values) else np.zeros(len(readings.value_columns))
    keep = np.isfinite(std) & (std > 0)
    dropped = [c for c, k in zip(readings.value_columns, keep, strict=True) if not k]
    if dropped:
        log.warning("dropping constant or empty columns: %s", ", ".join(dropped))
    names = [c for c, k in zip(readings.value_columns, keep, strict=True) if k]
    if not names:
        raise DataError(f"{readings.path}: every sensor column is constant on the training machines")
    kept = values[:, keep]
    return Columns(names=names, dropped=dropped, train_values=kept, stats=feature_stats(kept, names))


def prepare(readings: Readings, events: Events, options: TrainOptions, asset_type: str | None = None) -> Prepared:
    """Labels, split, columns and the labelled windows of each split (training windows
    sampled down to ``max_windows``, seeded)."""
    asset = _asset_type(readings, asset_type)
    frame = readings.frame
    labels = label(readings, events, options)
    split = split_machines(frame["machine_id"].to_numpy().astype(str), options)
    columns = select_columns(readings, split.train)
    windows = make_windows(frame, columns.names, labels, window=options.window, fill_values=columns.fill_values,
                           max_imputed=options.max_imputed)
    if len(windows) == 0:
        raise DataError(f"{readings.path}: no machine has {options.window} readings in a run",
                        hint="lower --window")
    train_w = windows.take(np.isin(windows.machine, list(split.train)))
    val_w = windows.take(np.isin(windows.machine, list(split.validation)))
    test_w = windows.take(np.isin(windows.machine, list(split.test)))
    if options.max_windows is not None and len(train_w) > options.max_windows:
        pick = np.sort(np.random.default_rng(options.seed).choice(len(train_w), options.max_windows, replace=False))
        train_w = train_w.take(pick)
    if len(train_w) == 0 or len(val_w) == 0:
        raise DataError("too few windows on the training or validation machines", hint="lower --window")
    log.info("%s: %d train / %d validation / %d test windows of %d readings x %d features",
             asset, len(train_w), len(val_w), len(test_w), options.window, len(columns.names))
    return Prepared(asset_type=asset, split=split, columns=columns, train=train_w, validation=val_w, test=test_w)


def fit_normaliser(columns: Columns, options: TrainOptions) -> Normaliser:
    """The in-graph normalisation's statistics, from the training readings; the columns named
    in ``options.settings`` are the operating settings."""
    from training.models import Normaliser

    settings = options.settings or ()
    setting_idx = [i for i, c in enumerate(columns.names) if c in settings]
    return Normaliser.fit(columns.train_values, setting_idx)


def _targets(data: LabelledWindows, options: TrainOptions) -> dict[str, npt.NDArray[np.float32]]:
    y: dict[str, npt.NDArray[np.float32]] = {}
    if "rul" in options.heads:
        y["rul"] = np.where(np.isfinite(data.rul), np.minimum(data.rul, options.rul_cap) / options.rul_cap,
                            -1.0).astype(np.float32)
    if "p_fail" in options.heads:
        y["p_fail"] = np.where(np.isfinite(data.fail), data.fail, -1.0).astype(np.float32)
    return y


def fit(train_w: LabelledWindows, val_w: LabelledWindows, normaliser: Normaliser, options: TrainOptions,
        verbose: int = 0) -> Fitted:
    """Build and fit one network with early stopping on ``val_w`` (best weights restored);
    every seed is fixed first, so the same inputs give the same weights."""
    import keras

    from training.models import build_model, seed_everything

    seed_everything(options.seed)
    model = build_model(options.window, normaliser, options.heads, options.network)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=options.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, options.patience // 2)),
    ]
    history = model.fit(train_w.x, _targets(train_w, options), validation_data=(val_w.x, _targets(val_w, options)),
                        epochs=options.epochs, batch_size=options.batch_size, shuffle=True, callbacks=callbacks,
                        verbose=verbose)
    return Fitted(model=model, epochs_run=len(history.history.get("loss", [])),
                  best_val_loss=float(min(history.history.get("val_loss", [float("nan")]))))


def _concat(a: LabelledWindows, b: LabelledWindows) -> LabelledWindows:
    return LabelledWindows(x=np.concatenate([a.x, b.x]), rul=np.concatenate([a.rul, b.rul]),
                           fail=np.concatenate([a.fail, b.fail]), age=np.concatenate([a.age, b.age]),
                           run=np.concatenate([a.run, b.run]), machine=np.concatenate([a.machine, b.machine]),
                           time=np.concatenate([a.time, b.time]), run_failed=a.run_failed)


def cross_validate(train_w: LabelledWindows, val_w: LabelledWindows, normaliser: Normaliser,
                   options: TrainOptions, verbose: int = 0) -> dict[str, Any]:
    """Grouped k-fold over the training and validation machines (each fold's machines are
    held out together; early stopping on the held-out fold, so the figures are slightly
    optimistic). Returns per-fold RUL RMSE/MAE and PR-AUC with their mean and std."""
    machines = np.unique(np.concatenate([train_w.machine, val_w.machine]))
    order = np.random.default_rng(options.seed + 1).permutation(machines)
    folds = np.array_split(order, options.folds)
    both = _concat(train_w, val_w)
    per_fold: list[dict[str, float]] = []
    for i, held in enumerate(folds):
        mask = np.isin(both.machine, held)
        fitted = fit(both.take(~mask), both.take(mask), normaliser, options, verbose)
        outputs = fitted.model.predict(both.x[mask], batch_size=2048, verbose=0)
        fold = both.take(mask)
        figures: dict[str, float] = {"fold": i, "machines": len(held)}
        if "rul" in outputs:
            rul = np.clip(np.asarray(outputs["rul"]).reshape(-1) * options.rul_cap, 0, options.rul_cap)
            found = rul_metrics(rul, fold.rul, options.rul_cap, fold.run)
            figures.update(rul_rmse=found.get("rmse", np.nan), rul_mae=found.get("mae", np.nan))
        if "p_fail" in outputs:
            known = np.isfinite(fold.fail)
            figures["pr_auc"] = pr_auc(np.asarray(outputs["p_fail"]).reshape(-1)[known], fold.fail[known])
        per_fold.append(figures)
        log.info("fold %d/%d: %s", i + 1, options.folds, figures)
    summary: dict[str, Any] = {"folds": per_fold}
    for key in ("rul_rmse", "rul_mae", "pr_auc"):
        values = [f[key] for f in per_fold if key in f]
        if values:
            summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return summary


def export(model: Any, validation: LabelledWindows, options: TrainOptions) -> Exported:
    """The model's ONNX graph; raises :class:`~training.errors.ExportError` unless Keras and
    onnxruntime agree on (up to 4,096) validation windows."""
    from training.export import check_parity, serving_function, to_onnx

    n_features = validation.x.shape[2]
    serve = serving_function(model, options.window, n_features, list(options.heads), options.rul_cap)
    onnx_bytes = to_onnx(serve, list(options.heads))
    parity = check_parity(serve, onnx_bytes, validation.x[:4096], list(options.heads), options.rul_cap)
    return Exported(onnx=onnx_bytes, parity=parity)


def draft_meta(data: Prepared, options: TrainOptions, time_kind: str) -> ModelMeta:
    """``model.json`` as far as the data and options define it (input, targets, feature
    statistics): enough to score the exported graph with the workers' runner."""
    settings = options.settings or ()
    features = [FeatureSpec(name=c, kind="setting" if c in settings else "sensor", unit=unit_from_name(c))
                for c in data.columns.names]
    rul_unit = options.rul_unit if options.rul_unit == "readings" else ("s" if time_kind == "timestamp"
                                                                         else "cycles")
    targets = Targets(heads=list(options.heads), rul_unit=rul_unit, rul_cap=options.rul_cap, horizon=options.horizon)
    return ModelMeta(name=data.asset_type, asset_type=data.asset_type, version="draft",
                     created_at=datetime.now(UTC).isoformat(),
                     input=InputSpec(name="window", window=options.window, features=features), targets=targets,
                     thresholds=Thresholds(consecutive=options.alert_consecutive), feature_stats=data.columns.stats,
                     sha256="")


def _scorer(draft: ModelMeta, onnx: bytes) -> OnnxModel:
    return OnnxModel(Bundle(meta=msgspec.structs.replace(draft, sha256=sha256_hex(onnx)), onnx=onnx))


def choose_thresholds(val_pred: Scores, validation: LabelledWindows, options: TrainOptions) -> Thresholds:
    """Alert thresholds from the validation machines' scores: the p_fail threshold with the
    longest median lead time at ``min_precision`` (0.5 for a RUL-only model) and
    ``rul_below`` half the horizon."""
    if "p_fail" in val_pred:
        threshold = choose_alert_threshold(val_pred["p_fail"], validation.fail, validation.rul, validation.run,
                                           validation.age, validation.run_failed, horizon=options.horizon,
                                           consecutive=options.alert_consecutive,
                                           min_precision=options.min_precision)
        return Thresholds(p_fail=threshold, consecutive=options.alert_consecutive, rul_below=options.horizon / 2)
    if "rul" in val_pred:
        return Thresholds(p_fail=0.5, consecutive=options.alert_consecutive, rul_below=options.horizon / 2)
    return Thresholds(consecutive=options.alert_consecutive)


def evaluate(scorer: OnnxModel, data: Prepared, thresholds: Thresholds, options: TrainOptions,
             val_pred: Scores) -> dict[str, Any]:
    """The model's figures on the evaluated machines beside the age and linear baselines
    (fitted on the training windows), and its figures on the validation machines."""
    evaluated = data.evaluated
    age_base = AgeBaseline.fit(data.train, options.rul_cap)
    linear_base = LinearBaseline.fit(data.train, options.rul_cap)
    common = {"cap": options.rul_cap, "horizon": options.horizon}
    consecutive = options.alert_consecutive
    return {
        "evaluated_on": data.evaluated_on,
        "model": model_metrics(score_windows(scorer, evaluated), evaluated, thresholds=thresholds, **common),
        "baseline_age": baseline_metrics(age_base.predict(evaluated), evaluated, consecutive=consecutive, **common),
        "baseline_linear": baseline_metrics(linear_base.predict(evaluated), evaluated, consecutive=consecutive,
                                            **common),
        "validation": model_metrics(val_pred, data.validation, thresholds=thresholds, **common),
        "baseline_params": {"age_mean_life": age_base.mean_life},
    }


def describe(draft: ModelMeta, *, data: Prepared, options: TrainOptions, fitted: Fitted, thresholds: Thresholds,
             metrics: dict[str, Any], timings: dict[str, float], lineage: dict[str, Any]) -> ModelMeta:
    """The complete ``model.json`` (still version ``draft``: :func:`write` names the version)."""
    network = options.network
    architecture = {"architecture": network.architecture, "filters": network.filters,
                    "kernel_size": network.kernel_size, "dilations": list(network.dilations),
                    "dense": network.dense, "dropout": network.dropout,
                    "parameters": int(fitted.model.count_params())}
    training_info = {
        "seed": options.seed, "epochs": options.epochs, "epochs_run": fitted.epochs_run,
        "batch_size": options.batch_size, "patience": options.patience,
        "windows": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
        "machines": {"train": len(data.split.train), "validation": len(data.split.validation),
                     "test": len(data.split.test)},
        "test_machines": sorted(data.split.test), "max_imputed": options.max_imputed, "timings": timings,
        "dropped_columns": data.columns.dropped, "best_val_loss": fitted.best_val_loss,
    }
    return msgspec.structs.replace(draft, thresholds=thresholds, architecture=architecture, training=training_info,
                                   lineage=lineage, metrics=metrics, libraries=_library_versions())


def _source_lineage(readings: Readings, events: Events) -> dict[str, Any]:
    return {"readings": {"path": str(readings.path), "sha256": readings.sha256},
            "events": ({"path": str(events.path), "sha256": events.sha256} if events.path
                       else {"run_to_failure": True})}


def write(models_dir: str | Path, meta: ModelMeta, onnx: bytes, *, promote: bool) -> Path:
    """Write the bundle as a new version (its UTC creation time, suffixed when taken) and
    point ``current`` at it when ``promote`` or when there is no current version."""
    asset = meta.asset_type
    version = new_version()
    existing = set(list_versions(models_dir, asset))
    base, n = version, 1
    while version in existing:
        version, n = f"{base}-{n}", n + 1
    make_current = promote or current_version(models_dir, asset) is None
    return write_bundle(models_dir, msgspec.structs.replace(meta, version=version), onnx, make_current=make_current)


def train(readings: Readings, events: Events, options: TrainOptions, *, asset_type: str | None = None,
          lineage: dict[str, Any] | None = None, verbose: int = 0) -> TrainResult:
    """Train one asset type's model and write its bundle under ``options.models_dir``.

    ``options.settings`` names the operating-setting columns (none when unset); ``lineage``
    is added to the bundle's (e.g. the Kafka offsets read); ``verbose`` is Keras' (0 silent,
    1 progress bar, 2 one line per epoch)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = prepare(readings, events, options, asset_type)
    timings["prepare_s"] = time.perf_counter() - t0

    normaliser = fit_normaliser(data.columns, options)
    cv = cross_validate(data.train, data.validation, normaliser, options, verbose) if options.folds > 1 else None
    t1 = time.perf_counter()
    fitted = fit(data.train, data.validation, normaliser, options, verbose)
    timings["fit_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    exported = export(fitted.model, data.validation, options)
    timings["export_s"] = time.perf_counter() - t2

    draft = draft_meta(data, options, readings.time_kind)
    scorer = _scorer(draft, exported.onnx)
    val_pred = score_windows(scorer, data.validation)
    thresholds = choose_thresholds(val_pred, data.validation, options)
    figures = evaluate(scorer, data, thresholds, options, val_pred)
    params = figures.pop("baseline_params")  # stays last in model.json, after parity and cross-validation
    metrics: dict[str, Any] = {**figures, "parity_max_abs_diff": exported.parity,
                               **({"cross_validation": cv} if cv is not None else {}), "baseline_params": params}
    timings["total_s"] = time.perf_counter() - t0

    meta = describe(draft, data=data, options=options, fitted=fitted, thresholds=thresholds, metrics=metrics,
                    timings=timings, lineage={**_source_lineage(readings, events), **(lineage or {})})
    path = write(options.models_dir, meta, exported.onnx, promote=options.promote)
    return TrainResult(bundle_path=path, meta=read_bundle(path).meta, metrics=metrics, timings=timings,
                       keras_model=fitted.model)
