"""End to end on tiny synthetic history: train → bundle → predict/evaluate through the CLI,
ONNX parity, same seed → same metrics, tampered bundles refused, garbage in → one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from forewarn.bundle import current_version, read_bundle
from forewarn.cli import cli
from forewarn.inference import OnnxModel
from tests.training.synth import write_history
from training.dataset import load_events, load_readings
from training.pipeline import train
from training.settings import NetworkOptions, TrainOptions

TINY = TrainOptions(window=8, epochs=3, batch_size=64, rul_cap=40, horizon=10, patience=2, seed=7,
                    network=NetworkOptions(filters=8, dilations=(1, 2), dense=16))


def tiny(models_dir, **changes) -> TrainOptions:
    return TINY.model_copy(update={"models_dir": models_dir, **changes})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_history(tmp_path_factory.mktemp("history") / "data", n_machines=12, censored=2,
                         life=(30, 50))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    readings = load_readings(data)
    result = train(readings, load_events(data, readings.time_kind), tiny(models))
    return models, result


def test_bundle_is_complete_and_current(trained):
    models, result = trained
    meta = read_bundle(result.bundle_path).meta
    assert current_version(models, "pump") == meta.version
    assert meta.input.window == 8
    assert "constant" not in meta.input.feature_names  # constant column dropped
    assert meta.input.features[0].name == "s0"
    assert meta.targets.heads == ["rul", "p_fail"] and meta.targets.rul_cap == 40
    assert len(meta.feature_stats) == len(meta.input.features)
    assert abs(sum(meta.feature_stats[0].proportions) - 1) < 1e-9
    assert meta.lineage["readings"]["sha256"] and meta.libraries["tensorflow"]
    assert "rmse" in meta.metrics["model"]["rul"] and "rmse" in meta.metrics["baseline_age"]["rul"]
    assert 0 <= meta.thresholds.p_fail <= 1
    OnnxModel(read_bundle(result.bundle_path)).smoke_test()


def test_onnx_parity_was_checked(trained):
    _, result = trained
    parity = result.metrics["parity_max_abs_diff"]
    assert parity["rul"] <= 1e-4 * 40 and parity["p_fail"] <= 1e-4


def test_keras_and_onnx_agree_on_fresh_windows(data):
    import keras

    from training.export import check_parity, serving_function, to_onnx
    from training.models import Normaliser, build_model

    keras.utils.set_random_seed(0)
    values = np.random.default_rng(0).normal(5, 2, size=(200, 3))
    model = build_model(6, Normaliser.fit(values, [2]), ["rul", "p_fail"], NetworkOptions(filters=4, dilations=(1,)))
    serve = serving_function(model, 6, 3, ["rul", "p_fail"], 50.0)
    onnx_bytes = to_onnx(serve, ["rul", "p_fail"])
    windows = np.random.default_rng(1).normal(5, 2, size=(64, 6, 3)).astype(np.float32)
    diffs = check_parity(serve, onnx_bytes, windows, ["rul", "p_fail"], 50.0)
    assert diffs["rul"] < 5e-3 and diffs["p_fail"] < 1e-4


def test_same_seed_same_metrics(data, trained, tmp_path):
    _, first = trained
    readings = load_readings(data)
    again = train(readings, load_events(data, readings.time_kind), tiny(tmp_path))
    assert json.dumps(again.metrics["model"], sort_keys=True) == json.dumps(first.metrics["model"], sort_keys=True)


def test_predict_cli_uses_the_bundle(trained, data, tmp_path):
    models, _ = trained
    runner = CliRunner()
    out = tmp_path / "preds.csv"
    result = runner.invoke(cli, ["predict", "--model", str(models), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(out)
    assert list(preds.columns) == ["machine_id", "time", "rul", "p_fail"]
    readings = pd.read_csv(data / "readings.csv")
    expected = (readings.groupby("machine_id").size() - 7).clip(lower=0).sum()
    assert len(preds) == expected
    assert preds["rul"].between(0, 40).all() and preds["p_fail"].between(0, 1).all()
    last = tmp_path / "last.csv"
    result = runner.invoke(cli, ["predict", "--model", str(models), "--data", str(data), "--last", "--out", str(last)])
    assert result.exit_code == 0, result.output
    per_machine = pd.read_csv(last)
    assert per_machine["machine_id"].is_unique and len(per_machine) == 12
    merged = per_machine.merge(preds, on=["machine_id", "time"], suffixes=("", "_all"))
    np.testing.assert_allclose(merged["rul"], merged["rul_all"], rtol=1e-5)


def test_evaluate_and_model_commands(trained, data):
    models, result = trained
    runner = CliRunner()
    evaluated = runner.invoke(cli, ["evaluate", "--model", str(models), "--data", str(data), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads(evaluated.output)
    assert figures["metrics"]["rul"]["windows"] > 0 and "rul" in figures["baseline_age"]
    listed = runner.invoke(cli, ["model", "list", "--models", str(models)])
    assert listed.exit_code == 0 and f"* pump/{result.meta.version}" in listed.output
    shown = runner.invoke(cli, ["model", "show", "--models", str(models)])
    assert json.loads(shown.output)["version"] == result.meta.version


def test_tampered_bundle_is_refused_by_predict(trained, data, tmp_path):
    import shutil

    _, result = trained
    copy = tmp_path / "pump" / result.meta.version
    shutil.copytree(result.bundle_path, copy)
    onnx_path = copy / "model.onnx"
    data_bytes = bytearray(onnx_path.read_bytes())
    data_bytes[-5] ^= 0x01
    onnx_path.write_bytes(bytes(data_bytes))
    outcome = CliRunner().invoke(cli, ["predict", "--model", str(copy), "--data", str(data),
                                       "--out", str(tmp_path / "p.csv")])
    assert outcome.exit_code == 2
    assert "sha256" in outcome.output and outcome.output.count("\n") == 1


@pytest.mark.parametrize(("content", "expected"), [
    ("", "the file is empty"),
    ("machine,time,s1\na,0,1\n", "missing required column 'machine_id'"),
    ("machine_id,time,s1\na,0,1\na,1,abc\n", "line 3, column 's1': 'abc' is not a number"),
])
def test_garbage_in_is_one_line(tmp_path, content, expected):
    path = tmp_path / "readings.csv"
    path.write_text(content)
    outcome = CliRunner().invoke(cli, ["train", "--data", str(path), "--run-to-failure", "--out", str(tmp_path)])
    assert outcome.exit_code == 2
    assert expected in outcome.output and str(path) in outcome.output
    assert outcome.output.count("\n") == 1


def test_grouped_cross_validation(data, tmp_path):
    readings = load_readings(data)
    result = train(readings, load_events(data, readings.time_kind), tiny(tmp_path, folds=2, epochs=1))
    cv = result.metrics["cross_validation"]
    assert len(cv["folds"]) == 2 and sum(f["machines"] for f in cv["folds"]) == 10  # 12 minus 2 test machines
    assert np.isfinite(cv["rul_rmse"]["mean"])
