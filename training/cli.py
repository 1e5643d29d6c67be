"""``forewarn train | evaluate | predict | export | model ...``.

Each command builds :class:`training.settings.TrainingSettings` once (forewarn.toml <
``FOREWARN_*`` variables < flags); each flag sets one field of its command's section
(``--window`` → ``train.window``, ``FOREWARN_TRAIN__WINDOW``) and ``--help`` names the
variable. Heavy imports (TensorFlow, pandas) happen inside the commands, so ``--help`` is fast.
Only ``train --from-kafka``, ``export`` and ``model publish`` connect to Kafka.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from forewarn.cli_options import Flag, env_var, flags, kafka_options, settings_from
from training.settings import TrainingSettings

if TYPE_CHECKING:
    from forewarn.trust import Action
    from training.pipeline import TrainResult

__all__ = ["evaluate", "export", "model", "predict", "train"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _needed(value: T | None, decl: str, path: str) -> T:
    """``value``, or a usage error naming the flag and variable that give it."""
    if value is None:
        raise click.UsageError(f"Missing option '{decl}' (or {env_var(path)})")
    return value


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
          features: tuple[str, ...] | None = None) -> tuple[Any, Any]:
    from training.dataset import find_file, load_events, load_readings, run_to_failure_events
    from training.errors import DataError

    readings = load_readings(data, asset_type=asset_type, features=list(features) if features else None)
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


TRAIN_FLAGS = (
    Flag("--data", "train.data"),
    Flag("--events", "train.events"),
    Flag("--run-to-failure", "train.run_to_failure"),
    Flag("--from-kafka", "train.from_kafka"),
    Flag("--asset-type", "train.asset_type"),
    Flag("--target", "train.target"),
    Flag("--window", "train.window"),
    Flag("--rul-cap", "train.rul_cap"),
    Flag("--horizon", "train.horizon"),
    Flag("--rul-unit", "train.rul_unit"),
    Flag("--features", "train.features"),
    Flag("--settings", "train.settings"),
    Flag("--architecture", "train.network.architecture"),
    Flag("--epochs", "train.epochs"),
    Flag("--batch-size", "train.batch_size"),
    Flag("--patience", "train.patience"),
    Flag("--seed", "train.seed"),
    Flag("--max-windows", "train.max_windows"),
    Flag("--test-fraction", "train.test_fraction"),
    Flag("--val-fraction", "train.val_fraction"),
    Flag("--alert-consecutive", "train.alert_consecutive"),
    Flag("--min-precision", "train.min_precision"),
    Flag("--folds", "train.folds"),
    Flag("--promote", "train.promote"),
    Flag("--key", "model.signing_key"),
    Flag("--out", "train.models_dir"),
    Flag("--quiet", "train.quiet"),
    Flag("--json", "train.json_output"),
)

EVALUATE_FLAGS = (
    Flag("--model", "evaluate.model"),
    Flag("--data", "evaluate.data"),
    Flag("--events", "evaluate.events"),
    Flag("--run-to-failure", "evaluate.run_to_failure"),
    Flag("--asset-type", "evaluate.asset_type"),
    Flag("--json", "evaluate.json_output"),
)

PREDICT_FLAGS = (
    Flag("--model", "predict.model"),
    Flag("--data", "predict.data"),
    Flag("--asset-type", "predict.asset_type"),
    Flag("--last", "predict.last"),
    Flag("--out", "predict.out"),
)

EXPORT_FLAGS = (
    Flag("--out", "export.out"),
    Flag("--since", "export.since"),
    Flag("--until", "export.until"),
    Flag("--timeout", "export.timeout_s"),
)

MODELS_FLAG = Flag("--models", "model.models_dir")
ASSET_TYPE_FLAG = Flag("--asset-type", "model.asset_type")


def _setting_columns(folder: Path, given: tuple[str, ...] | None, value_columns: list[str]) -> tuple[str, ...]:
    """The operating-setting columns: as given, else the Kafka export's ``settings.json``,
    else the columns whose names say so."""
    from training.dataset import guess_settings

    if given is not None:
        return given
    exported = folder / "settings.json"
    if exported.is_file():
        listed = json.loads(exported.read_text()).get("settings")
        if listed is not None:
            return tuple(listed)
    return tuple(guess_settings(value_columns))


def _report(result: TrainResult) -> None:
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


@click.command()
@flags(TrainingSettings, *TRAIN_FLAGS)
@kafka_options
def train() -> None:
    """Train a model on run-to-failure history and write a bundle.

    Reads the generic long format (readings + events, or --run-to-failure), or Kafka with
    --from-kafka; splits machines into train/validation/test; trains the windowed network;
    exports ONNX (checked against Keras); writes OUT/<asset_type>/<version>/ and prints the
    test metrics beside the naive baselines. With --key (model.signing_key) the new bundle is
    signed too, so it can be published as it is.
    """
    from training.errors import DataError
    from training.pipeline import train as run_train

    settings = settings_from(TrainingSettings)
    options = settings.train
    signing_key = _signing_key(settings.model.signing_key) if settings.model.signing_key is not None else None
    if options.from_kafka == (options.data is not None):
        raise click.UsageError("pass exactly one of --data or --from-kafka")
    verbose = 0 if options.quiet or options.json_output else (1 if sys.stderr.isatty() else 2)
    lineage: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        folders: list[tuple[Path, str | None]]
        if options.from_kafka:
            from training.kafka_io import export_dataset

            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="forewarn-export-"))
            exported = export_dataset(settings.kafka, settings.topics, tmp)
            lineage = exported.lineage
            types = [options.asset_type] if options.asset_type else sorted(exported.readings)
            if not types:
                raise DataError("Kafka telemetry topic holds no readings")
            folders = [(exported.folder / t, t) for t in types]
        else:
            assert options.data is not None
            folders = [(options.data, options.asset_type)]
        for folder, wanted in folders:
            readings, event_data = _load(folder, options.events, options.run_to_failure, wanted, options.features)
            kinds = [wanted] if wanted else (readings.asset_types or [None])
            resolved = options.model_copy(update={
                "settings": _setting_columns(folder, options.settings, readings.value_columns)})
            for kind in kinds:
                subset = readings if len(kinds) == 1 else _load(folder, options.events, options.run_to_failure,
                                                                 kind, options.features)[0]
                result = run_train(subset, event_data, resolved, asset_type=kind, lineage=lineage, verbose=verbose)
                if signing_key is not None:
                    _sign(result.bundle_path, signing_key, "publish", "trained", quiet=options.json_output)
                if options.json_output:
                    click.echo(json.dumps({"bundle": str(result.bundle_path), "metrics": result.metrics}))
                else:
                    _report(result)


@click.command()
@flags(TrainingSettings, *EVALUATE_FLAGS)
def evaluate() -> None:
    """Metrics of a bundle on other data, beside the age baseline from its training."""
    from forewarn.bundle import read_bundle, resolve_bundle
    from training.evaluation import evaluate_bundle

    options = settings_from(TrainingSettings).evaluate
    model_path = _needed(options.model, "--model", "evaluate.model")
    data = _needed(options.data, "--data", "evaluate.data")
    bundle_dir = resolve_bundle(model_path, options.asset_type)
    kind = options.asset_type or read_bundle(bundle_dir).meta.asset_type
    readings, event_data = _load(data, options.events, options.run_to_failure, None)
    if kind in readings.asset_types:
        readings, event_data = _load(data, options.events, options.run_to_failure, kind)
    result = evaluate_bundle(bundle_dir, readings, event_data)
    if options.json_output:
        click.echo(json.dumps(result))
        return
    click.echo(f"{result['model']} on {readings.path} ({result['windows']} windows):")
    click.echo(_table({"model": result["metrics"], "baseline_age": result["baseline_age"]},
                      ["model", "baseline_age"]))


@click.command()
@flags(TrainingSettings, *PREDICT_FLAGS)
def predict() -> None:
    """Batch-score a readings file through the scoring workers' windows and ONNX scorer."""
    from forewarn.bundle import read_bundle, resolve_bundle
    from training.dataset import load_readings
    from training.evaluation import predict_frame

    options = settings_from(TrainingSettings).predict
    model_path = _needed(options.model, "--model", "predict.model")
    data = _needed(options.data, "--data", "predict.data")
    out = _needed(options.out, "--out", "predict.out")
    bundle_dir = resolve_bundle(model_path, options.asset_type)
    kind = read_bundle(bundle_dir).meta.asset_type
    readings = load_readings(data)
    if kind in readings.asset_types:
        readings = load_readings(data, asset_type=kind)
    frame = predict_frame(bundle_dir, readings, last=options.last)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False, float_format="%.6g")
    click.echo(f"wrote {len(frame)} predictions for {frame['machine_id'].nunique()} machines to {out}")


@click.command()
@flags(TrainingSettings, *EXPORT_FLAGS)
@kafka_options
def export() -> None:
    """Export the telemetry and maintenance topics to a Parquet dataset with lineage."""
    from training.kafka_io import export_dataset

    settings = settings_from(TrainingSettings)
    options = settings.export
    out = _needed(options.out, "--out", "export.out")
    result = export_dataset(settings.kafka, settings.topics, out, since=options.since, until=options.until,
                            timeout_s=options.timeout_s)
    for kind, count in sorted(result.readings.items()):
        click.echo(f"{out / kind}: {count} readings")
    click.echo(f"{result.events} events, {result.rejected} rejected records; lineage in {out / 'lineage.json'}")


@click.group()
def model() -> None:
    """Browse the model registry, move `current`, sign, verify and publish a bundle to Kafka."""


def _bundle_path(which: str | None, models_dir: Path, asset_type: str | None) -> Path:
    """WHICH as a bundle folder, or as a version of the models folder's asset type (default: current)."""
    from forewarn.bundle import resolve_bundle

    if which and Path(which).is_dir():
        return resolve_bundle(which)
    path = resolve_bundle(models_dir, asset_type)
    return path.parent / which if which else path


@model.command("list")
@flags(TrainingSettings, MODELS_FLAG)
def model_list() -> None:
    """Every asset type and version; `*` marks current."""
    from forewarn.bundle import asset_types, current_version, list_versions, read_bundle

    models_dir = settings_from(TrainingSettings).model.models_dir
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
@flags(TrainingSettings, MODELS_FLAG, ASSET_TYPE_FLAG)
def model_show(which: str | None) -> None:
    """Print model.json of WHICH (a bundle folder or a version; default: current)."""
    from forewarn.bundle import encode_meta, read_bundle

    options = settings_from(TrainingSettings).model
    path = _bundle_path(which, options.models_dir, options.asset_type)
    click.echo(encode_meta(read_bundle(path).meta).decode(), nl=False)


@model.command("promote")
@click.argument("version")
@flags(TrainingSettings, MODELS_FLAG, ASSET_TYPE_FLAG)
def model_promote(version: str) -> None:
    """Point `current` at VERSION (verified first)."""
    from forewarn.bundle import resolve_bundle, set_current

    options = settings_from(TrainingSettings).model
    kind = options.asset_type or resolve_bundle(options.models_dir).parent.name
    set_current(options.models_dir, kind, version)
    click.echo(f"{kind}: current is {version}")


@model.command("publish")
@click.argument("which", required=False)
@flags(TrainingSettings, MODELS_FLAG, ASSET_TYPE_FLAG, Flag("--allow-unsigned", "model.allow_unsigned"))
@kafka_options
def model_publish(which: str | None) -> None:
    """Put a bundle (default: current) on the compacted `models` topic; it must be signed."""
    from forewarn.bundle import read_bundle
    from forewarn.errors import ConfigError
    from training.kafka_io import publish_bundle

    settings = settings_from(TrainingSettings)
    bundle = read_bundle(_bundle_path(which, settings.model.models_dir, settings.model.asset_type))
    if bundle.release is None and not settings.model.allow_unsigned:
        raise ConfigError(f"{bundle.label} is not signed, so every scorer that checks signatures would refuse it",
                          hint="sign it first (forewarn model sign --key ...), or pass --allow-unsigned")
    topic = publish_bundle(settings.kafka, settings.topics, bundle)
    click.echo(f"published {bundle.label} to {topic}")


SIGNING_KEY_FLAG = Flag("--key", "model.signing_key")


@model.command("keygen")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("keys"), show_default=True,
              help="folder for model.key (private, 0600) and model.pub (give model.pub to every scorer's "
                   "trust.keys)")
def model_keygen(out: Path) -> None:
    """Make an Ed25519 model signing key pair (never overwrites one)."""
    from forewarn.errors import ConfigError
    from forewarn.trust import generate_keypair

    private, public = out / "model.key", out / "model.pub"
    if private.exists() or public.exists():
        raise ConfigError(f"{private} or {public} exists already", hint="choose another --out; keys are never "
                          "overwritten")
    ident = generate_keypair(private, public)
    click.echo(f"key {ident}: private {private} (keep it secret), public {public} (add it to trust.keys)")


def _signing_key(path: Path) -> Any:
    from forewarn.trust import load_private_key

    return load_private_key(path)


def _sign(path: Path, key: Any, action: Action, reason: str, *, quiet: bool = False) -> None:
    from forewarn.bundle import read_bundle, write_release
    from forewarn.trust import sign_release

    bundle = read_bundle(path)
    record = sign_release(bundle, key, action=action, reason=reason)
    write_release(path, record)
    if not quiet:
        click.echo(f"signed {bundle.label} ({action}) with key {record.key_id} ({path / 'signature.json'})")


@model.command("sign")
@click.argument("which", required=False)
@click.option("--reason", default="published", show_default=True, help="why this bundle is released")
@click.option("--action", type=click.Choice(["publish", "promote", "rollback"]), default="publish",
              show_default=True,
              help="publish: scorers take it only if newer than the version they serve; promote or rollback: "
                   "they take it whatever its version, if this record is newer than the one in service (a "
                   "signed way back to an older version)")
@flags(TrainingSettings, MODELS_FLAG, ASSET_TYPE_FLAG, SIGNING_KEY_FLAG)
def model_sign(which: str | None, reason: str, action: Action) -> None:
    """Sign WHICH (a bundle folder or a version; default: current): writes its signature.json."""
    options = settings_from(TrainingSettings).model
    key_path = _needed(options.signing_key, "--key", "model.signing_key")
    _sign(_bundle_path(which, options.models_dir, options.asset_type), _signing_key(key_path), action, reason)


@model.command("verify")
@click.argument("which", required=False)
@flags(TrainingSettings, MODELS_FLAG, ASSET_TYPE_FLAG)
def model_verify(which: str | None) -> None:
    """Check WHICH (default: current) against the trusted keys (trust.keys): exit 1 with the
    reason (unsigned, unknown_key, bad_signature) unless a scorer would accept its signature."""
    from forewarn.bundle import BundleError, read_bundle
    from forewarn.trust import TrustList, verify_release

    settings = settings_from(TrainingSettings)
    path = _bundle_path(which, settings.model.models_dir, settings.model.asset_type)
    bundle = read_bundle(path)
    try:
        record = verify_release(bundle.release, bundle, TrustList.load(settings.trust))
    except BundleError as error:
        click.echo(f"refused ({error.reason}): {error.one_line()}", err=True)
        sys.exit(1)
    click.echo(f"{bundle.label}: signed by trusted key {record.key_id} ({record.action}, {record.reason!r})")
