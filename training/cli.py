"""``forewarn train | evaluate | predict | export | model ...``.

Heavy imports (TensorFlow, pandas) happen inside the commands, so ``--help`` is fast.
Every flag also reads a ``FOREWARN_*`` environment variable (shown by ``--help``).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from forewarn.cli_options import kafka_options, settings_from
from forewarn.settings import ServiceSettings

__all__ = ["evaluate", "export", "model", "predict", "train"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
_PATH = click.Path(path_type=Path)


def _opt(*decls: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*decls, envvar=f"FOREWARN_{env}", show_envvar=True, **kwargs)


def _models_dir_option(func: F) -> F:
    return _opt("--models", "models_dir", env="MODELS_DIR", type=_PATH, default=Path("models"), show_default=True,
                help="The models folder (MODELS_DIR/<asset_type>/<version>/).")(func)


def _csv_list(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.3f}"
    return "—" if value is None else str(value)


def _table(metrics: dict[str, Any], columns: list[str]) -> str:
    """Model beside baselines: one row per figure."""
    rows = [("RUL RMSE", "rul", "rmse"), ("RUL MAE", "rul", "mae"), ("RUL score (mean)", "rul", "score_mean"),
            ("RUL RMSE (last window)", "rul", "rmse_last"), ("failure PR-AUC", "failure", "pr_auc"),
            ("precision @ threshold", "failure", "precision"), ("recall @ threshold", "failure", "recall"),
            ("alert precision", "alerts", "alert_precision"), ("runs warned", "alerts", "runs_warned"),
            ("median lead time", "alerts", "median_lead_time")]
    present = [c for c in columns if c in metrics]
    lines = [f"{'':26}" + "".join(f"{c:>18}" for c in present)]
    for label, group, key in rows:
        values = [metrics[c].get(group, {}).get(key) for c in present]
        if all(v is None for v in values):
            continue
        lines.append(f"{label:26}" + "".join(f"{_fmt(v):>18}" for v in values))
    return "\n".join(lines)


def _load(data: Path, events: Path | None, run_to_failure: bool, asset_type: str | None,
          features: list[str] | None = None) -> tuple[Any, Any]:
    from training.dataset import find_file, load_events, load_readings, run_to_failure_events
    from training.errors import DataError

    readings = load_readings(data, asset_type=asset_type, features=features)
    if run_to_failure:
        return readings, run_to_failure_events(readings)
    if events is None:
        if data.is_dir():
            try:
                events = find_file(data, "events")
            except DataError:
                events = None
        if events is None:
            raise DataError(f"{data}: no events file", hint="pass --events FILE or --run-to-failure")
    return readings, load_events(events, readings.time_kind)


def _train_options(func: F) -> F:
    decorators = [
        _opt("--data", type=_PATH, env="TRAIN_DATA",
             help="Readings file (.parquet/.csv) or a folder holding readings.* and events.*."),
        _opt("--events", type=_PATH, env="TRAIN_EVENTS", help="Events file (failure/repair)."),
        _opt("--run-to-failure", is_flag=True, env="TRAIN_RUN_TO_FAILURE",
             help="Each machine's last reading is its failure (no events file)."),
        _opt("--from-kafka", is_flag=True, env="TRAIN_FROM_KAFKA",
             help="Read telemetry and maintenance from Kafka instead of --data."),
        _opt("--asset-type", env="ASSET_TYPE", help="Train this asset type (default: each type in the data)."),
        _opt("--target", type=click.Choice(["rul", "failure", "both"]), default="both", show_default=True,
             env="TRAIN_TARGET", help="Heads: RUL regression, failure-within-horizon, or both."),
        _opt("--window", type=click.IntRange(2, 1000), default=50, show_default=True, env="TRAIN_WINDOW",
             help="Readings per window (30 suits short C-MAPSS-style test trajectories)."),
        _opt("--rul-cap", type=click.FloatRange(1, None), default=125.0, show_default=True, env="TRAIN_RUL_CAP",
             help="Piecewise-linear RUL cap."),
        _opt("--horizon", type=click.FloatRange(1, None), default=30.0, show_default=True, env="TRAIN_HORIZON",
             help="Failure horizon for p_fail (RUL unit)."),
        _opt("--rul-unit", type=click.Choice(["readings", "time"]), default="readings", show_default=True,
             env="TRAIN_RUL_UNIT", help="Count RUL in readings (cycles) or in the data's time unit."),
        _opt("--features", env="TRAIN_FEATURES", help="Comma-separated columns to use (default: all)."),
        _opt("--settings", "setting_names", env="TRAIN_SETTINGS",
             help="Comma-separated operating-setting columns: the model normalises sensors per operating "
             "condition (default: names with setting/setpoint, or the Kafka export's settings)."),
        _opt("--architecture", type=click.Choice(["conv", "lstm"]), default="conv", show_default=True,
             env="TRAIN_ARCHITECTURE", help="Network family."),
        _opt("--epochs", type=click.IntRange(1, 10000), default=40, show_default=True, env="TRAIN_EPOCHS",
             help="Most epochs (early stopping usually ends sooner)."),
        _opt("--batch-size", type=click.IntRange(1, 100000), default=256, show_default=True,
             env="TRAIN_BATCH_SIZE", help="Mini-batch size."),
        _opt("--patience", type=click.IntRange(1, 1000), default=6, show_default=True, env="TRAIN_PATIENCE",
             help="Early-stopping patience (epochs)."),
        _opt("--seed", type=int, default=42, show_default=True, env="TRAIN_SEED", help="Random seed."),
        _opt("--max-windows", type=click.IntRange(1, None), default=None, env="TRAIN_MAX_WINDOWS",
             help="Sample at most this many training windows."),
        _opt("--test-fraction", type=click.FloatRange(0, 0.9), default=0.2, show_default=True,
             env="TRAIN_TEST_FRACTION", help="Machines held out for the test metrics."),
        _opt("--val-fraction", type=click.FloatRange(0.01, 0.9), default=0.15, show_default=True,
             env="TRAIN_VAL_FRACTION", help="Of the rest, machines for early stopping and thresholds."),
        _opt("--alert-consecutive", "consecutive", type=click.IntRange(1, 100), default=2, show_default=True,
             env="TRAIN_ALERT_CONSECUTIVE",
             help="Windows in a row at or above the threshold that open an alert (recorded in model.json)."),
        _opt("--min-precision", type=click.FloatRange(0.01, 1.0), default=0.85, show_default=True,
             env="TRAIN_MIN_PRECISION",
             help="Alert precision the p_fail threshold must reach on validation machines."),
        _opt("--folds", type=click.IntRange(0, 20), default=0, show_default=True, env="TRAIN_FOLDS",
             help="Also run grouped k-fold cross-validation by machine (K > 1) and report it."),
        _opt("--promote", is_flag=True, env="TRAIN_PROMOTE",
             help="Point `current` at the new version (always done when there is none)."),
        _opt("--out", "models_dir", type=_PATH, default=Path("models"), show_default=True, env="MODELS_DIR",
             help="Models folder; the bundle goes to OUT/<asset_type>/<version>/."),
        _opt("--quiet", is_flag=True, env="TRAIN_QUIET", help="No progress bar."),
        click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@click.command()
@_train_options
@kafka_options
def train(data: Path | None, events: Path | None, run_to_failure: bool, from_kafka: bool, asset_type: str | None,
          target: str, window: int, rul_cap: float, horizon: float, rul_unit: str, features: str | None,
          setting_names: str | None, architecture: str, epochs: int, batch_size: int, patience: int, seed: int,
          max_windows: int | None, test_fraction: float, val_fraction: float, consecutive: int,
          min_precision: float, folds: int, promote: bool,
          models_dir: Path, quiet: bool, as_json: bool) -> None:
    """Train a model on run-to-failure history and write a bundle.

    Reads the generic long format (readings + events, or --run-to-failure), or Kafka with
    --from-kafka; splits machines into train/validation/test; trains the windowed network;
    exports ONNX (checked against Keras); writes OUT/<asset_type>/<version>/ and prints the
    test metrics beside the naive baselines.
    """
    from training.dataset import guess_settings
    from training.errors import DataError
    from training.pipeline import TrainConfig
    from training.pipeline import train as run_train

    if from_kafka == (data is not None):
        raise click.UsageError("pass exactly one of --data or --from-kafka")
    lineage: dict[str, Any] = {}
    tmp: tempfile.TemporaryDirectory[str] | None = None
    folders: list[tuple[Path, str | None]] = []
    if from_kafka:
        from training.kafka_io import export_dataset

        settings = settings_from(ServiceSettings)
        tmp = tempfile.TemporaryDirectory(prefix="forewarn-export-")
        exported = export_dataset(settings.kafka, settings.topics, tmp.name)
        lineage = exported.lineage
        types = [asset_type] if asset_type else sorted(exported.readings)
        if not types:
            raise DataError("Kafka telemetry topic holds no readings")
        folders = [(exported.folder / t, t) for t in types]
    else:
        assert data is not None
        folders = [(data, asset_type)]
    try:
        for folder, wanted in folders:
            readings, event_data = _load(folder, events, run_to_failure, wanted, _csv_list(features))
            types = [wanted] if wanted else (readings.asset_types or [None])
            settings_cols = _csv_list(setting_names)
            if settings_cols is None and (folder / "settings.json").is_file():
                settings_cols = json.loads((folder / "settings.json").read_text()).get("settings")
            if settings_cols is None:
                settings_cols = guess_settings(readings.value_columns)
            for kind in types:
                subset = readings if len(types) == 1 else _load(folder, events, run_to_failure, kind,
                                                                  _csv_list(features))[0]
                config = TrainConfig(
                    target=target, window=window, rul_cap=rul_cap, horizon=horizon, rul_unit=rul_unit,  # type: ignore[arg-type]
                    architecture=architecture, epochs=epochs, batch_size=batch_size,  # type: ignore[arg-type]
                    patience=patience, seed=seed, max_windows=max_windows, test_fraction=test_fraction,
                    val_fraction=val_fraction, settings=tuple(settings_cols or ()), promote=promote, folds=folds,
                    consecutive=consecutive, min_precision=min_precision,
                    verbose=0 if quiet or as_json else (1 if sys.stderr.isatty() else 2))
                result = run_train(subset, event_data, config, models_dir, asset_type=kind, lineage=lineage)
                if as_json:
                    click.echo(json.dumps({"bundle": str(result.bundle_path), "metrics": result.metrics}))
                    continue
                meta = result.meta
                click.echo(f"bundle {result.bundle_path}  ({meta.training['windows']['train']} training windows, "
                           f"{meta.training['epochs_run']} epochs, {result.timings['total_s']:.0f}s)")
                click.echo(f"metrics on {result.metrics['evaluated_on']} machines "
                           f"(RUL in {meta.targets.rul_unit}, cap {meta.targets.rul_cap:g}, "
                           f"horizon {meta.targets.horizon:g}, p_fail threshold {meta.thresholds.p_fail:.3f}):")
                click.echo(_table(result.metrics, ["model", "baseline_age", "baseline_linear"]))
                cv = result.metrics.get("cross_validation")
                if cv:
                    parts = [f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in cv.items() if isinstance(v, dict)]
                    click.echo(f"{len(cv['folds'])}-fold cross-validation by machine: " + ", ".join(parts))
    finally:
        if tmp is not None:
            tmp.cleanup()


@click.command()
@_opt("--model", "model_path", type=_PATH, required=True, env="MODEL",
      help="A bundle folder, an asset folder (its current version) or a models folder.")
@_opt("--data", type=_PATH, required=True, env="EVALUATE_DATA", help="Readings file or folder.")
@_opt("--events", type=_PATH, env="EVALUATE_EVENTS", help="Events file (default: events.* beside the readings).")
@_opt("--run-to-failure", is_flag=True, env="EVALUATE_RUN_TO_FAILURE",
      help="Each machine's last reading is its failure.")
@_opt("--asset-type", env="ASSET_TYPE", help="Asset type (when the data or models folder holds several).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(model_path: Path, data: Path, events: Path | None, run_to_failure: bool, asset_type: str | None,
             as_json: bool) -> None:
    """Metrics of a bundle on other data, beside the age baseline from its training."""
    from forewarn.bundle import read_bundle, resolve_bundle
    from training.pipeline import evaluate_bundle

    bundle_dir = resolve_bundle(model_path, asset_type)
    kind = asset_type or read_bundle(bundle_dir).meta.asset_type
    readings, event_data = _load(data, events, run_to_failure, None)
    if kind in readings.asset_types:
        readings, event_data = _load(data, events, run_to_failure, kind)
    result = evaluate_bundle(bundle_dir, readings, event_data)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{result['model']} on {readings.path} ({result['windows']} windows):")
    click.echo(_table({"model": result["metrics"], "baseline_age": result["baseline_age"]},
                      ["model", "baseline_age"]))


@click.command()
@_opt("--model", "model_path", type=_PATH, required=True, env="MODEL",
      help="A bundle folder, an asset folder (its current version) or a models folder.")
@_opt("--data", type=_PATH, required=True, env="PREDICT_DATA", help="Readings file or folder.")
@_opt("--asset-type", env="ASSET_TYPE", help="Asset type (when the data or models folder holds several).")
@_opt("--last", is_flag=True, env="PREDICT_LAST", help="One row per machine: its last complete window.")
@_opt("--out", type=_PATH, required=True, env="PREDICT_OUT", help="Output CSV (machine_id,time,rul,p_fail).")
def predict(model_path: Path, data: Path, asset_type: str | None, last: bool, out: Path) -> None:
    """Batch-score a readings file through the scoring workers' windows and ONNX scorer."""
    from forewarn.bundle import read_bundle, resolve_bundle
    from training.dataset import load_readings
    from training.pipeline import predict_frame

    bundle_dir = resolve_bundle(model_path, asset_type)
    kind = read_bundle(bundle_dir).meta.asset_type
    readings = load_readings(data)
    if kind in readings.asset_types:
        readings = load_readings(data, asset_type=kind)
    frame = predict_frame(bundle_dir, readings, last=last)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False, float_format="%.6g")
    click.echo(f"wrote {len(frame)} predictions for {frame['machine_id'].nunique()} machines to {out}")


def _datetime(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.command()
@_opt("--out", type=_PATH, required=True, env="EXPORT_OUT", help="Dataset folder (OUT/<asset_type>/...).")
@_opt("--since", env="EXPORT_SINCE", help="Only readings at or after this ISO-8601 time (UTC if no zone).")
@_opt("--until", env="EXPORT_UNTIL", help="Only records before this ISO-8601 time.")
@_opt("--timeout", type=click.FloatRange(1, None), default=30.0, show_default=True, env="EXPORT_TIMEOUT",
      help="Give up when Kafka sends nothing for this many seconds.")
@kafka_options
def export(out: Path, since: str | None, until: str | None, timeout: float) -> None:
    """Export the telemetry and maintenance topics to a Parquet dataset with lineage."""
    from training.kafka_io import export_dataset

    settings = settings_from(ServiceSettings)
    result = export_dataset(settings.kafka, settings.topics, out, since=_datetime(since), until=_datetime(until),
                            timeout_s=timeout)
    for kind, count in sorted(result.readings.items()):
        click.echo(f"{out / kind}: {count} readings")
    click.echo(f"{result.events} events, {result.rejected} rejected records; lineage in {out / 'lineage.json'}")


@click.group()
def model() -> None:
    """Browse the model registry, move `current`, publish a bundle to Kafka."""


@model.command("list")
@_models_dir_option
def model_list(models_dir: Path) -> None:
    """Every asset type and version; `*` marks current."""
    from forewarn.bundle import asset_types, current_version, list_versions, read_bundle

    kinds = asset_types(models_dir)
    if not kinds:
        click.echo(f"no models in {models_dir}")
        return
    for kind in kinds:
        current = current_version(models_dir, kind)
        for version in list_versions(models_dir, kind):
            meta = read_bundle(models_dir / kind / version).meta
            rmse = meta.metrics.get("model", {}).get("rul", {}).get("rmse")
            mark = "*" if version == current else " "
            click.echo(f"{mark} {kind}/{version}  heads={','.join(meta.targets.heads)} window={meta.input.window} "
                       f"rmse={_fmt(rmse)}")


@model.command("show")
@click.argument("which", required=False)
@_models_dir_option
@_opt("--asset-type", env="ASSET_TYPE", help="Asset type (when the models folder holds several).")
def model_show(which: str | None, models_dir: Path, asset_type: str | None) -> None:
    """Print model.json of WHICH (a bundle folder or a version; default: current)."""
    from forewarn.bundle import encode_meta, read_bundle, resolve_bundle

    if which and Path(which).is_dir():
        path = resolve_bundle(which)
    else:
        path = resolve_bundle(models_dir, asset_type)
        if which:
            path = path.parent / which
    click.echo(encode_meta(read_bundle(path).meta).decode(), nl=False)


@model.command("promote")
@click.argument("version")
@_models_dir_option
@_opt("--asset-type", env="ASSET_TYPE", help="Asset type (when the models folder holds several).")
def model_promote(version: str, models_dir: Path, asset_type: str | None) -> None:
    """Point `current` at VERSION (verified first)."""
    from forewarn.bundle import resolve_bundle, set_current

    kind = asset_type or resolve_bundle(models_dir).parent.name
    set_current(models_dir, kind, version)
    click.echo(f"{kind}: current is {version}")


@model.command("publish")
@click.argument("which", required=False)
@_models_dir_option
@_opt("--asset-type", env="ASSET_TYPE", help="Asset type (when the models folder holds several).")
@kafka_options
def model_publish(which: str | None, models_dir: Path, asset_type: str | None) -> None:
    """Put a bundle (default: current) on the compacted `models` topic."""
    from forewarn.bundle import read_bundle, resolve_bundle
    from training.kafka_io import publish_bundle

    if which and Path(which).is_dir():
        path = resolve_bundle(which)
    else:
        path = resolve_bundle(models_dir, asset_type)
        if which:
            path = path.parent / which
    bundle = read_bundle(path)
    settings = settings_from(ServiceSettings)
    topic = publish_bundle(settings.kafka, settings.topics, bundle)
    click.echo(f"published {bundle.label} to {topic}")
