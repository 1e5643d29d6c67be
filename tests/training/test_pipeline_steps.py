"""The training pipeline's steps one at a time, on tiny synthetic history and without
TensorFlow: split, columns, labels, windows, thresholds, evaluation, writing."""

from __future__ import annotations

import dataclasses

import msgspec
import numpy as np
import pytest

from forewarn.bundle import Bundle, current_version, read_bundle, sha256_hex
from forewarn.inference import OnnxModel
from tests.scoring.bundle_factory import tiny_meta, tiny_onnx
from tests.training.synth import write_history
from training.dataset import Events, load_events, load_readings
from training.errors import DataError
from training.evaluation import model_metrics, score_windows
from training.pipeline import (
    choose_thresholds,
    draft_meta,
    evaluate,
    label,
    prepare,
    select_columns,
    split_machines,
    write,
)
from training.settings import TrainOptions

OPTIONS = TrainOptions(window=8, rul_cap=40, horizon=10, seed=7)
SENSORS = ["s0", "s1", "s2", "s3"]


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    folder = write_history(tmp_path_factory.mktemp("history") / "data", n_machines=12, censored=2, life=(30, 50))
    readings = load_readings(folder)
    return readings, load_events(folder, readings.time_kind)


@pytest.fixture(scope="module")
def prepared(history):
    readings, events = history
    return prepare(readings, events, OPTIONS)


def _machines(n: int) -> np.ndarray:
    return np.repeat([f"m{i:02d}" for i in range(n)], 3)


def test_split_is_disjoint_complete_sized_and_seeded():
    machines = _machines(20)
    split = split_machines(machines, OPTIONS)
    assert not (split.train & split.validation or split.train & split.test or split.validation & split.test)
    assert split.train | split.validation | split.test == set(machines)
    assert (len(split.test), len(split.validation), len(split.train)) == (4, 2, 14)  # 20 * 0.2, 16 * 0.15
    assert split_machines(machines, OPTIONS) == split
    assert split_machines(machines, OPTIONS.model_copy(update={"seed": 8})) != split


def test_split_without_test_machines():
    split = split_machines(_machines(10), OPTIONS.model_copy(update={"test_fraction": 0.0}))
    assert split.test == frozenset() and len(split.validation) == 2 and len(split.train) == 8


@pytest.mark.parametrize(("machines", "changes", "message"), [
    (2, {}, "at least 3 machines"),
    (3, {"test_fraction": 0.9, "val_fraction": 0.9}, "too few for the validation and test fractions"),
])
def test_split_refuses_too_few_machines(machines, changes, message):
    with pytest.raises(DataError, match=message):
        split_machines(_machines(machines), OPTIONS.model_copy(update=changes))


def test_columns_drop_constant_and_empty_ones(history):
    readings, _ = history
    with_empty = dataclasses.replace(readings, frame=readings.frame.assign(empty=np.nan),
                                     value_columns=[*readings.value_columns, "empty"])
    train = frozenset(readings.frame["machine_id"].unique()[:6].tolist())
    columns = select_columns(with_empty, train)
    assert columns.names == SENSORS and columns.dropped == ["constant", "empty"]
    rows = readings.frame["machine_id"].isin(train).to_numpy()
    expected = readings.frame.loc[rows, SENSORS].to_numpy(np.float64)
    np.testing.assert_array_equal(columns.train_values, expected)
    assert [s.name for s in columns.stats] == SENSORS
    np.testing.assert_allclose(columns.fill_values, np.median(expected, axis=0), rtol=1e-6)
    assert columns.fill_values.dtype == np.float32


def test_columns_refuse_data_without_a_varying_column(history):
    readings, _ = history
    only_constant = dataclasses.replace(readings, value_columns=["constant"])
    with pytest.raises(DataError, match="every sensor column is constant"):
        select_columns(only_constant, frozenset(readings.frame["machine_id"].unique().tolist()))


def test_labels_need_a_failure(history):
    readings, events = history
    repairs = Events(frame=events.frame.assign(event="repair"), path=None, sha256=None)
    with pytest.raises(DataError, match="no run ends in a failure"):
        label(readings, repairs, OPTIONS)
    labels = label(readings, events, OPTIONS)
    assert labels.run_failed.sum() == 10  # 12 machines, 2 censored


def test_prepare_windows_every_split_from_its_own_machines(history, prepared):
    readings, _ = history
    for windows, machines in ((prepared.train, prepared.split.train), (prepared.validation, prepared.split.validation),
                              (prepared.test, prepared.split.test)):
        assert len(windows) and set(windows.machine.tolist()) <= machines
        assert windows.x.shape[1:] == (8, len(SENSORS))
    total = (readings.frame.groupby("machine_id").size() - 7).clip(lower=0).sum()
    assert len(prepared.train) + len(prepared.validation) + len(prepared.test) == total
    assert prepared.asset_type == "pump" and prepared.evaluated_on == "test" and prepared.evaluated is prepared.test


def test_prepare_samples_training_windows_with_the_seed(history, prepared):
    readings, events = history
    options = OPTIONS.model_copy(update={"max_windows": 50})
    first, again = prepare(readings, events, options), prepare(readings, events, options)
    assert len(first.train) == 50
    np.testing.assert_array_equal(first.train.x, again.train.x)
    pairs = set(zip(prepared.train.machine.tolist(), prepared.train.time.tolist(), strict=True))
    assert set(zip(first.train.machine.tolist(), first.train.time.tolist(), strict=True)) <= pairs
    assert len(first.validation) == len(prepared.validation)  # only training windows are sampled


def test_prepare_refuses_a_window_longer_than_every_run(history):
    readings, events = history
    with pytest.raises(DataError, match="no machine has 60 readings"):
        prepare(readings, events, OPTIONS.model_copy(update={"window": 60}))


def test_thresholds_from_perfect_validation_scores(prepared):
    validation = prepared.validation
    perfect = np.where(validation.fail == 1, 1.0, 0.0).astype(np.float32)
    thresholds = choose_thresholds({"p_fail": perfect}, validation, OPTIONS)
    assert 0 < thresholds.p_fail <= 1
    assert thresholds.consecutive == OPTIONS.alert_consecutive and thresholds.rul_below == OPTIONS.horizon / 2
    found = model_metrics({"p_fail": perfect}, validation, cap=OPTIONS.rul_cap, horizon=OPTIONS.horizon,
                          thresholds=thresholds)
    assert found["alerts"]["alert_precision"] == 1.0 and found["alerts"]["runs_warned"] > 0


def test_thresholds_of_a_rul_only_model(prepared):
    thresholds = choose_thresholds({"rul": np.zeros(len(prepared.validation), np.float32)}, prepared.validation,
                                   OPTIONS.model_copy(update={"target": "rul"}))
    assert (thresholds.p_fail, thresholds.rul_below) == (0.5, OPTIONS.horizon / 2)


def _scorer(prepared, readings) -> OnnxModel:
    draft = draft_meta(prepared, OPTIONS, readings.time_kind)
    onnx = tiny_onnx(window=8, n_features=len(SENSORS))
    return OnnxModel(Bundle(meta=msgspec.structs.replace(draft, sha256=sha256_hex(onnx)), onnx=onnx))


def test_draft_describes_the_graph_input(history, prepared):
    readings, _ = history
    draft = draft_meta(prepared, OPTIONS.model_copy(update={"settings": ("s3",)}), readings.time_kind)
    assert draft.input.window == 8 and draft.input.feature_names == SENSORS
    assert [f.kind for f in draft.input.features] == ["sensor", "sensor", "sensor", "setting"]
    assert draft.targets.heads == ["rul", "p_fail"] and draft.targets.rul_unit == "readings"
    assert draft.fill_values == [s.median for s in prepared.columns.stats]


def test_evaluate_scores_the_test_machines_beside_the_baselines(history, prepared):
    readings, _ = history
    scorer = _scorer(prepared, readings)
    val_pred = score_windows(scorer, prepared.validation)
    thresholds = choose_thresholds(val_pred, prepared.validation, OPTIONS)
    metrics = evaluate(scorer, prepared, thresholds, OPTIONS, val_pred)
    assert metrics["evaluated_on"] == "test"
    known_test = int(np.isfinite(prepared.test.rul).sum())
    for name in ("model", "baseline_age", "baseline_linear"):
        assert metrics[name]["rul"]["windows"] == known_test
        assert {"failure", "alerts"} <= set(metrics[name])
    assert metrics["validation"]["rul"]["windows"] == int(np.isfinite(prepared.validation.rul).sum())
    # The age baseline's mean life: last age of each failed training run (its RUL is 0 there).
    train = prepared.train
    failed = np.isfinite(train.rul)
    lives = {run: age + rul for run, age, rul in zip(train.run[failed], train.age[failed], train.rul[failed],
                                                     strict=True)}
    assert metrics["baseline_params"]["age_mean_life"] == pytest.approx(np.mean(list(lives.values())))


def test_write_adds_a_version_and_moves_current_only_when_asked(tmp_path):
    onnx = tiny_onnx()
    meta = tiny_meta(onnx, version="draft")
    first = write(tmp_path, meta, onnx, promote=False)
    second = write(tmp_path, meta, onnx, promote=False)
    assert first != second and read_bundle(second).meta.version == second.name
    assert current_version(tmp_path, "pump") == first.name  # the first one became current: there was none
    third = write(tmp_path, meta, onnx, promote=True)
    assert current_version(tmp_path, "pump") == third.name
