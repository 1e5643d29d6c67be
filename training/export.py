"""Keras → ONNX with tf2onnx, and the Keras-vs-onnxruntime parity check.

tf2onnx 1.17 cannot convert a Keras 3 model object directly (``from_keras`` expects
``tf.keras``) and ``from_function`` turns the Keras 3 variables a ``tf.function`` captures
into extra graph inputs. So we wrap the model in a serving ``tf.function`` with a fixed input
signature, freeze its variables into constants (``convert_variables_to_constants_v2``) and
convert the frozen GraphDef (``tf2onnx.convert.from_graph_def``). The graph's input is
renamed ``window`` and its outputs ``rul`` (scaled back to the RUL unit and clipped to
``[0, cap]``) and ``p_fail``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from training.errors import ExportError

__all__ = ["INPUT_NAME", "OPSET", "check_parity", "serving_function", "to_onnx"]

log = logging.getLogger(__name__)

INPUT_NAME = "window"
OPSET = 17


def serving_function(model: Any, window: int, n_features: int, heads: list[str], rul_cap: float) -> Any:
    """The exported computation: raw windows in, a tuple of flat head outputs (in ``heads``
    order) out."""
    import tensorflow as tf

    spec = [tf.TensorSpec([None, window, n_features], tf.float32, name=INPUT_NAME)]

    @tf.function(input_signature=spec)  # type: ignore[untyped-decorator]
    def serve(windows: Any) -> Any:
        raw = model(windows, training=False)
        outputs = []
        for head in heads:
            value = tf.reshape(raw[head], [-1])
            if head == "rul":
                value = tf.clip_by_value(value * rul_cap, 0.0, rul_cap)
            outputs.append(tf.identity(value))
        return tuple(outputs)

    return serve


def to_onnx(serve: Any, heads: list[str]) -> bytes:
    import onnx
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    concrete = serve.get_concrete_function()
    # Both libraries log deprecation notes about their TF1-style internals at WARNING.
    quiet = [logging.getLogger(name) for name in ("tf2onnx", "tensorflow")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        frozen = convert_variables_to_constants_v2(concrete)
        graph_def = frozen.graph.as_graph_def()
        input_names = [t.name for t in frozen.inputs]
        output_names = [t.name for t in frozen.outputs]
        if len(input_names) != 1 or len(output_names) != len(heads):
            raise ExportError(f"unexpected frozen graph: inputs {input_names}, outputs {output_names}")
        proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=input_names,
                                                  output_names=output_names, opset=OPSET)
    except ExportError:
        raise
    except Exception as error:  # noqa: BLE001 - tf2onnx raises many error types
        raise ExportError(f"tf2onnx could not convert the model: {error}") from None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    renames = {input_names[0]: INPUT_NAME, **dict(zip(output_names, heads, strict=True))}
    graph = proto.graph
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in [*graph.input, *graph.output]:
        value.name = renames.get(value.name, value.name)
    proto.producer_name = "forewarn"
    onnx.checker.check_model(proto)
    data: bytes = proto.SerializeToString()
    return data


def check_parity(serve: Callable[..., Any], onnx_bytes: bytes, windows: npt.NDArray[np.float32],
                 heads: list[str], rul_cap: float, *, batch_size: int = 2048,
                 rtol: float = 1e-4) -> dict[str, float]:
    """Score ``windows`` with Keras and onnxruntime and fail if they differ by more than
    ``rtol`` of each head's range (``rul_cap`` for RUL, 1 for p_fail). Returns the largest
    absolute difference per head."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    diffs: dict[str, float] = dict.fromkeys(heads, 0.0)
    for start in range(0, len(windows), batch_size):
        chunk = np.ascontiguousarray(windows[start:start + batch_size], dtype=np.float32)
        keras_out = [np.asarray(v) for v in serve(chunk)]
        onnx_out = session.run(heads, {INPUT_NAME: chunk})
        for head, k_val, o_val in zip(heads, keras_out, onnx_out, strict=True):
            diff = float(np.max(np.abs(k_val - np.asarray(o_val)))) if len(chunk) else 0.0
            diffs[head] = max(diffs[head], diff)
    for head, diff in diffs.items():
        scale = rul_cap if head == "rul" else 1.0
        if not np.isfinite(diff) or diff > rtol * scale:
            raise ExportError(f"ONNX parity failed: {head} differs from Keras by {diff:.3g} "
                              f"(tolerance {rtol * scale:.3g}) on validation windows")
    log.info("ONNX parity: max abs differences %s", diffs)
    return diffs
