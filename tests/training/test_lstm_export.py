"""The lstm network trains, exports to ONNX without a loop, and passes the parity check."""

from __future__ import annotations

import onnx

from forewarn.bundle import read_bundle
from forewarn.inference import OnnxModel
from tests.training.synth import write_history
from training.dataset import load_events, load_readings
from training.pipeline import train
from training.settings import NetworkOptions, TrainOptions


def test_tiny_lstm_exports_with_parity(tmp_path):
    data = write_history(tmp_path / "data", n_machines=12, censored=2, life=(30, 50))
    readings = load_readings(data)
    options = TrainOptions(window=8, epochs=2, batch_size=64, rul_cap=40, horizon=10, patience=2, seed=7,
                           network=NetworkOptions(architecture="lstm", filters=4, dense=8),
                           models_dir=tmp_path / "models")
    result = train(readings, load_events(data, readings.time_kind), options)

    parity = result.metrics["parity_max_abs_diff"]
    assert parity["rul"] <= 1e-4 * 40 and parity["p_fail"] <= 1e-4
    bundle = read_bundle(result.bundle_path)
    assert bundle.meta.architecture["architecture"] == "lstm"
    ops = {node.op_type for node in onnx.load_from_string(bundle.onnx).graph.node}
    assert "MatMul" in ops and not ops & {"Loop", "Scan", "TensorListReserve"}
    scores = OnnxModel(bundle).smoke_test()
    assert len(scores) == 4
