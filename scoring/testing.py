"""Small, real model bundles built with the ``onnx`` helper API, for tests and benchmarks.

:func:`linear_bundle` makes a graph taking raw readings ``[batch, window, features]``:
normalise with the given mean/std, average over the window, then ``p_fail = sigmoid(z)`` and
``rul = rul_cap * sigmoid(-z)`` where ``z = mean_window @ weights + bias``.
:func:`conv_bundle` makes a heavier graph shaped like the training default (a causal dilated
convolution stack, pooled, two dense heads), for throughput measurements.
Both go through :func:`forewarn.bundle.write_bundle`-compatible metadata, so they are verified
like any trained bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from forewarn.bundle import (
    Bundle,
    FeatureSpec,
    FeatureStats,
    InputSpec,
    ModelMeta,
    Targets,
    Thresholds,
    sha256_hex,
)

__all__ = ["bundle_from_graph", "conv_bundle", "linear_bundle"]

_OPSET = 17


def _meta(asset_type: str, version: str, features: Sequence[str], window: int, mean: npt.NDArray[np.float32],
          std: npt.NDArray[np.float32], thresholds: Thresholds, onnx_bytes: bytes, architecture: str,
          settings: Sequence[str] = ()) -> ModelMeta:
    stats = [FeatureStats(name=n, mean=float(m), std=float(s), min=float(m - 3 * s), max=float(m + 3 * s),
                          median=float(m), missing_fraction=0.0, bin_edges=[float(m)], proportions=[0.5, 0.5])
             for n, m, s in zip(features, mean, std, strict=True)]
    return ModelMeta(
        name=asset_type, asset_type=asset_type, version=version,
        created_at=datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        input=InputSpec(name="window", window=window,
                        features=[FeatureSpec(n, "setting" if n in settings else "sensor") for n in features]),
        targets=Targets(heads=["rul", "p_fail"]), thresholds=thresholds, feature_stats=stats,
        sha256=sha256_hex(onnx_bytes), architecture={"kind": architecture}, libraries={"onnx": onnx.__version__},
    )


def bundle_from_graph(graph: onnx.GraphProto, asset_type: str, version: str, features: Sequence[str], window: int,
                      mean: npt.NDArray[np.float32], std: npt.NDArray[np.float32], thresholds: Thresholds,
                      architecture: str, settings: Sequence[str] = ()) -> Bundle:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="forewarn-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    return Bundle(_meta(asset_type, version, features, window, mean, std, thresholds, data, architecture, settings),
                  data)


def _input(window: int, n: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", window, n])


def _outputs() -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info("rul", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("p_fail", TensorProto.FLOAT, ["batch", 1])]


def linear_bundle(asset_type: str, features: Sequence[str], *, window: int = 10, version: str = "v1",
                  mean: npt.ArrayLike | None = None, std: npt.ArrayLike | None = None,
                  weights: npt.ArrayLike | None = None, bias: float = 0.0, rul_cap: float = 125.0,
                  thresholds: Thresholds | None = None, settings: Sequence[str] = ()) -> Bundle:
    n = len(features)
    mu = np.asarray(mean if mean is not None else np.zeros(n), dtype=np.float32).reshape(n)
    sd = np.asarray(std if std is not None else np.ones(n), dtype=np.float32).reshape(n)
    w = np.asarray(weights if weights is not None else np.full(n, 1.0 / n), dtype=np.float32).reshape(n, 1)
    inits = [numpy_helper.from_array(mu, "mu"), numpy_helper.from_array(1.0 / sd, "inv_sd"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([bias], np.float32), "b"),
             numpy_helper.from_array(np.array([rul_cap], np.float32), "cap"),
             numpy_helper.from_array(np.array([-1.0], np.float32), "neg")]
    nodes = [
        helper.make_node("Sub", ["window", "mu"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv_sd"], ["scaled"]),
        helper.make_node("ReduceMean", ["scaled"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["zw"]),
        helper.make_node("Add", ["zw", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p_fail"]),
        helper.make_node("Mul", ["z", "neg"], ["minus_z"]),
        helper.make_node("Sigmoid", ["minus_z"], ["health"]),
        helper.make_node("Mul", ["health", "cap"], ["rul"]),
    ]
    graph = helper.make_graph(nodes, f"linear_{asset_type}", [_input(window, n)], _outputs(), inits)
    return bundle_from_graph(graph, asset_type, version, features, window, mu, sd, thresholds or Thresholds(),
                             "linear", settings)


def conv_bundle(asset_type: str, features: Sequence[str], *, window: int = 30, version: str = "conv1",
                filters: int = 32, dilations: Sequence[int] = (1, 2, 4, 8), dense: int = 64, seed: int = 0,
                mean: npt.ArrayLike | None = None, std: npt.ArrayLike | None = None,
                thresholds: Thresholds | None = None, settings: Sequence[str] = ()) -> Bundle:
    """Random weights, the training default's shape and cost: project, 2 causal dilated convs
    per dilation with residuals, last step + average pooled, dense, two heads."""
    rng = np.random.default_rng(seed)
    n = len(features)
    mu = np.asarray(mean if mean is not None else np.zeros(n), dtype=np.float32).reshape(n)
    sd = np.asarray(std if std is not None else np.ones(n), dtype=np.float32).reshape(n)
    inits: list[onnx.TensorProto] = [numpy_helper.from_array(mu, "mu"), numpy_helper.from_array(1.0 / sd, "inv_sd")]

    def weight(name: str, shape: tuple[int, ...], scale: float) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    nodes = [helper.make_node("Sub", ["window", "mu"], ["centred"]),
             helper.make_node("Mul", ["centred", "inv_sd"], ["scaled"]),
             helper.make_node("Transpose", ["scaled"], ["x0"], perm=[0, 2, 1]),  # [b, f, t]
             helper.make_node("Conv", ["x0", weight("proj_w", (filters, n, 1), 0.3), weight("proj_b", (filters,), 0.0)],
                              ["h0"])]
    current = "h0"
    k = 3
    for i, d in enumerate(dilations):
        pad = (k - 1) * d
        a = f"c{i}a"
        nodes.append(helper.make_node("Conv", [current, weight(f"{a}_w", (filters, filters, k), 0.1),
                                               weight(f"{a}_b", (filters,), 0.01)], [a + "_o"],
                                      dilations=[d], pads=[pad, 0]))
        nodes.append(helper.make_node("Relu", [a + "_o"], [a + "_r"]))
        b = f"c{i}b"
        nodes.append(helper.make_node("Conv", [a + "_r", weight(f"{b}_w", (filters, filters, k), 0.1),
                                               weight(f"{b}_b", (filters,), 0.01)], [b + "_o"],
                                      dilations=[d], pads=[pad, 0]))
        nodes.append(helper.make_node("Relu", [b + "_o"], [b + "_r"]))
        nodes.append(helper.make_node("Add", [current, b + "_r"], [f"h{i + 1}"]))
        current = f"h{i + 1}"
    inits.append(numpy_helper.from_array(np.array([window - 1], np.int64), "last_start"))
    inits.append(numpy_helper.from_array(np.array([window], np.int64), "last_end"))
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "time_axis"))
    nodes += [
        helper.make_node("Slice", [current, "last_start", "last_end", "time_axis"], ["last3"]),
        helper.make_node("Flatten", ["last3"], ["last"], axis=1),
        helper.make_node("ReduceMean", [current], ["pooled"], axes=[2], keepdims=0),
        helper.make_node("Concat", ["last", "pooled"], ["summary"], axis=1),
        helper.make_node("Gemm", ["summary", weight("d_w", (2 * filters, dense), 0.1), weight("d_b", (dense,), 0.0)],
                         ["d"]),
        helper.make_node("Relu", ["d"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", weight("rul_w", (dense, 1), 0.1), weight("rul_b", (1,), 0.0)], ["rul"]),
        helper.make_node("Gemm", ["hidden", weight("p_w", (dense, 1), 0.1), weight("p_b", (1,), 0.0)], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p_fail"]),
    ]
    graph = helper.make_graph(nodes, f"conv_{asset_type}", [_input(window, n)], _outputs(), inits)
    return bundle_from_graph(graph, asset_type, version, features, window, mu, sd, thresholds or Thresholds(),
                             "conv", settings)
