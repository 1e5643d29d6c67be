"""OnnxModel: batched scoring, schema checks, smoke test; and no TensorFlow in scoring."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import numpy as np
import pytest

from forewarn.bundle import Bundle, BundleSchemaError, InputSpec
from forewarn.inference import OnnxModel
from tests.scoring.bundle_factory import tiny_meta, tiny_onnx, windows


def _model(**kwargs) -> OnnxModel:
    onnx_bytes = tiny_onnx(**kwargs)
    return OnnxModel(Bundle(meta=tiny_meta(onnx_bytes), onnx=onnx_bytes), batch_size=2)


def test_batched_predictions_match_the_formula():
    model = _model()
    x = windows(7)
    scores = model.predict(x)
    mean = x.mean(axis=(1, 2))
    np.testing.assert_allclose(scores.rul, 10 * mean, rtol=1e-5)
    np.testing.assert_allclose(scores.p_fail, 1 / (1 + np.exp(-mean)), rtol=1e-5)
    assert len(scores) == 7
    assert len(model.predict(np.zeros((0, 4, 2), np.float32))) == 0


def test_smoke_test_passes():
    scores = _model().smoke_test()
    assert len(scores) == 4


def test_missing_head_is_none():
    onnx_bytes = tiny_onnx(heads=("p_fail",))
    meta = tiny_meta(onnx_bytes, heads=("p_fail",))
    scores = OnnxModel(Bundle(meta=meta, onnx=onnx_bytes)).predict(windows(3))
    assert scores.rul is None and scores.p_fail is not None


@pytest.mark.parametrize("change", ["window", "features", "input_name", "head"])
def test_schema_mismatch_is_refused(change):
    onnx_bytes = tiny_onnx()
    meta = tiny_meta(onnx_bytes)
    if change == "window":
        meta = msgspec.structs.replace(meta, input=InputSpec("window", 5, meta.input.features))
    elif change == "features":
        meta = msgspec.structs.replace(meta, input=InputSpec("window", 4, meta.input.features[:1]))
    elif change == "input_name":
        onnx_bytes = tiny_onnx(input_name="x")
        meta = tiny_meta(onnx_bytes)
    else:
        onnx_bytes = tiny_onnx(heads=("rul",))
        meta = tiny_meta(onnx_bytes)
    with pytest.raises(BundleSchemaError):
        OnnxModel(Bundle(meta=meta, onnx=onnx_bytes))


def test_garbage_onnx_is_refused():
    with pytest.raises(BundleSchemaError, match="cannot load"):
        OnnxModel(Bundle(meta=tiny_meta(b"junk"), onnx=b"junk"))


def test_wrong_window_shape_is_a_value_error():
    with pytest.raises(ValueError, match="shape"):
        _model().predict(np.zeros((2, 3, 2), np.float32))


def test_scoring_core_does_not_import_tensorflow():
    code = ("import sys, forewarn.windows, forewarn.bundle, forewarn.inference; "
            "bad = [m for m in ('tensorflow', 'keras', 'streamlit') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_windows_scores_do_not_depend_on_what_shared_its_call():
    """A restarted worker cuts its batches elsewhere; its predictions must still be bit for bit
    those of an uninterrupted one. onnxruntime alone is not: one row takes a matrix-vector path
    (on this linear model hundreds of scores differed in the last bits)."""
    from tests.scoring.fleet_data import fitted_bundle, simulate

    data = simulate(machines=6, ticks=60, seed=5)
    model = OnnxModel(fitted_bundle(data), threads=1, batch_size=64)
    x = (np.random.default_rng(3).normal(size=(300, model.window, model.n_features)) * 3).astype(np.float32)
    whole = model.predict(x)
    for size in (1, 2, 3, 7, 64):
        parts = model.predict_chunks(x[i:i + size] for i in range(0, len(x), size))
        assert parts.p_fail is not None and whole.p_fail is not None
        assert np.array_equal(parts.p_fail, whole.p_fail), size
    with pytest.raises(ValueError, match="larger than batch_size"):
        model.predict_chunks([x[:65]])
