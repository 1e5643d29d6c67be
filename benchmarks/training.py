"""Training benchmark: default training on 20,000 windows of simulator history, then Keras
vs ONNX (onnxruntime) inference throughput on the same windows.

    make bench NAME=training            # or: python benchmarks/training.py [--machines N]

Generates run-to-failure history with ``forewarn simulate history`` (pump, 250 machines by
default), trains the default model with ``--max-windows 20000`` and reports the training
time, training windows/s, held-out metrics beside the baselines, and inference throughput.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result

PUMP_SETTINGS = ("speed_setpoint_rpm", "valve_opening_pct")


def _history(folder: Path, machines: int, seed: int) -> None:
    subprocess.run([sys.executable, "-m", "forewarn.cli", "simulate", "history", "--asset-type", "pump",
                    "--machines", str(machines), "--runs", "1", "--seed", str(seed), "--out", str(folder)],
                   check=True, capture_output=True)


def _throughput(fn, windows, batch: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(windows), batch):
            fn(windows[i:i + batch])
        best = min(best, time.perf_counter() - start)
    return len(windows) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=250)
    parser.add_argument("--windows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import numpy as np

    from forewarn.bundle import read_bundle
    from forewarn.inference import OnnxModel
    from training.dataset import load_events, load_readings
    from training.pipeline import train
    from training.settings import TrainOptions

    with tempfile.TemporaryDirectory(prefix="forewarn-bench-") as tmp:
        data = Path(tmp) / "history"
        t0 = time.perf_counter()
        _history(data, args.machines, args.seed)
        history_s = time.perf_counter() - t0
        readings = load_readings(data, asset_type="pump")
        events = load_events(data, readings.time_kind)
        # The simulator's pump settings (the long format does not mark them).
        options = TrainOptions(max_windows=args.windows, settings=PUMP_SETTINGS, models_dir=Path(tmp) / "models")
        t1 = time.perf_counter()
        result = train(readings, events, options)
        train_s = time.perf_counter() - t1
        meta = result.meta
        n_train = meta.training["windows"]["train"]
        epochs = meta.training["epochs_run"]

        # Inference throughput on the same kind of windows, one process, this box's cores.
        bundle = read_bundle(result.bundle_path)
        onnx_model = OnnxModel(bundle)
        rng = np.random.default_rng(0)
        fill = np.asarray(meta.fill_values, np.float32)
        spread = np.asarray([s.std for s in meta.feature_stats], np.float32)
        windows = (fill + rng.normal(size=(20_000, meta.input.window, len(fill))).astype(np.float32) * spread)
        windows = windows.astype(np.float32)

        import tensorflow as tf

        from training.export import serving_function

        serve = serving_function(result.keras_model, meta.input.window, len(fill), list(meta.targets.heads),
                                 meta.targets.rul_cap)
        serve(tf.constant(windows[:8]))
        figures = {
            "history": {"machines": args.machines, "asset_type": "pump", "seconds": round(history_s, 2),
                        "settings": list(PUMP_SETTINGS)},
            "training": {
                "windows": n_train, "epochs_run": epochs, "total_seconds": round(train_s, 1),
                "fit_seconds": round(result.timings["fit_s"], 1),
                "export_seconds": round(result.timings["export_s"], 1),
                "windows_per_second": round(n_train * epochs / result.timings["fit_s"], 1),
                "parameters": meta.architecture["parameters"],
                "within_10_minutes": train_s <= 600,
            },
            "inference_windows_per_second": {
                "onnxruntime_batch_1024": round(_throughput(onnx_model.predict, windows, 1024), 0),
                "keras_tf_function_batch_1024": round(_throughput(lambda w: serve(tf.constant(w)), windows, 1024), 0),
                "onnxruntime_batch_1": round(_throughput(onnx_model.predict, windows[:1000], 1), 0),
                "keras_tf_function_batch_1": round(_throughput(lambda w: serve(tf.constant(w)), windows[:300], 1), 0),
            },
            "held_out_metrics": {
                "model": _summary(result.metrics["model"]),
                "baseline_age": _summary(result.metrics["baseline_age"]),
                "baseline_linear": _summary(result.metrics["baseline_linear"]),
            },
            "threads": os.cpu_count(),
        }
    write_result("training", figures)


def _summary(metrics: dict) -> dict:
    rul = metrics.get("rul", {})
    alerts = metrics.get("alerts", {})
    failure = metrics.get("failure", {})
    return {"rul_rmse": rul.get("rmse"), "rul_mae": rul.get("mae"), "rul_score_mean": rul.get("score_mean"),
            "pr_auc": failure.get("pr_auc"), "alert_precision": alerts.get("alert_precision"),
            "median_lead_time": alerts.get("median_lead_time"), "runs_warned": alerts.get("runs_warned"),
            "failed_runs": alerts.get("failed_runs")}


if __name__ == "__main__":
    main()
