"""An onnxruntime session around one verified bundle: batched windows in, ``rul`` and
``p_fail`` arrays out. No TensorFlow here."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from forewarn.bundle import Bundle, BundleSchemaError, ModelMeta

__all__ = ["OnnxModel", "Scores"]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Scores:
    """Outputs for a batch of windows; a head the model lacks is ``None``."""

    rul: FloatArray | None
    p_fail: FloatArray | None

    def __len__(self) -> int:
        present = self.rul if self.rul is not None else self.p_fail
        return 0 if present is None else len(present)


class OnnxModel:
    """Checks the graph against ``model.json`` on construction, then scores windows.

    ``threads`` sets onnxruntime's intra-op threads (0: onnxruntime's default, all cores).
    """

    def __init__(self, bundle: Bundle, *, threads: int = 1, batch_size: int = 64) -> None:
        self.bundle = bundle
        self.meta: ModelMeta = bundle.meta
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(bundle.onnx, sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise BundleSchemaError(f"{bundle.label}: onnxruntime cannot load model.onnx: {error}") from None
        self._check_schema()
        self.window = self.meta.input.window
        self.n_features = len(self.meta.input.features)
        self.heads = list(self.meta.targets.heads)

    def _check_schema(self) -> None:
        inputs = self.session.get_inputs()
        spec = self.meta.input
        where = self.bundle.label
        if len(inputs) != 1:
            raise BundleSchemaError(f"{where}: graph has {len(inputs)} inputs, expected 1 ({spec.name})")
        graph_input = inputs[0]
        if graph_input.name != spec.name:
            raise BundleSchemaError(f"{where}: graph input is {graph_input.name!r}, model.json says {spec.name!r}")
        if graph_input.type != "tensor(float)":
            raise BundleSchemaError(f"{where}: graph input type {graph_input.type}, expected tensor(float)")
        shape = list(graph_input.shape)
        expected = [spec.window, len(spec.features)]
        if len(shape) != 3 or shape[1:] != expected:
            raise BundleSchemaError(
                f"{where}: graph input shape {shape}, model.json says [batch, {expected[0]}, {expected[1]}]")
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [h for h in self.meta.targets.heads if h not in outputs]
        if missing:
            raise BundleSchemaError(f"{where}: graph lacks outputs {missing} (has {sorted(outputs)})")

    def predict(self, windows: npt.ArrayLike) -> Scores:
        """Score ``(n, window, n_features)`` raw readings in batches of ``batch_size``."""
        data = np.ascontiguousarray(windows, dtype=np.float32)
        if data.ndim != 3 or data.shape[1:] != (self.window, self.n_features):
            raise ValueError(f"windows must have shape (n, {self.window}, {self.n_features}), got {data.shape}")
        return self.predict_chunks(data[start:start + self.batch_size]
                                   for start in range(0, len(data), self.batch_size))

    def predict_chunks(self, chunks: Iterable[FloatArray]) -> Scores:
        """Score windows handed over a chunk of at most ``batch_size`` at a time (e.g.
        :meth:`WindowBatch.chunks`); the outputs are joined in order.

        Every onnxruntime call gets exactly ``batch_size`` rows (a short chunk is padded):
        onnxruntime's kernels differ with the batch size (one row takes a matrix-vector path),
        so a window's scores would otherwise depend, in the last bits, on how many windows
        happened to share its call — and a restarted worker, whose batches are cut elsewhere,
        would not predict exactly what an uninterrupted one did. At a fixed size the position
        in the batch does not matter (``tests/scoring/test_model.py``)."""
        outputs: dict[str, list[FloatArray]] = {h: [] for h in self.heads}
        name = self.meta.input.name
        size = self.batch_size
        pad: FloatArray | None = None
        for chunk in chunks:
            n = len(chunk)
            if n > size:
                raise ValueError(f"a chunk of {n} windows is larger than batch_size {size}")
            if n < size:
                if pad is None:
                    pad = np.zeros((size, self.window, self.n_features), dtype=np.float32)
                pad[:n] = chunk
                pad[n:] = 0.0
                chunk = pad
            results: list[Any] = self.session.run(self.heads, {name: chunk})
            for head, result in zip(self.heads, results, strict=True):
                outputs[head].append(np.asarray(result, dtype=np.float32).reshape(-1)[:n])

        def joined(head: str) -> FloatArray | None:
            if head not in outputs:
                return None
            parts = outputs[head]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

        return Scores(rul=joined("rul"), p_fail=joined("p_fail"))

    def smoke_test(self, n: int = 4) -> Scores:
        """Score ``n`` windows of the training medians (plus a little spread) and check every
        output is finite and in range; raises :class:`BundleSchemaError` otherwise."""
        fill = np.asarray(self.meta.fill_values, dtype=np.float32)
        fill = np.where(np.isfinite(fill), fill, 0.0).astype(np.float32)
        scale = np.asarray([max(abs(s.std), 1e-6) for s in self.meta.feature_stats] or [1.0], np.float32)
        if scale.shape != fill.shape:
            scale = np.ones_like(fill)
        offsets = np.linspace(-1.0, 1.0, n, dtype=np.float32)[:, None, None]
        windows = np.broadcast_to(fill + offsets * scale, (n, self.window, self.n_features))
        try:
            scores = self.predict(windows)
        except Exception as error:  # noqa: BLE001 - any failure to run means a bad bundle
            raise BundleSchemaError(f"{self.bundle.label}: smoke test failed: {error}") from None
        for head in self.heads:
            values = scores.rul if head == "rul" else scores.p_fail
            if values is None or len(values) != n or not np.isfinite(values).all():
                raise BundleSchemaError(f"{self.bundle.label}: smoke test: {head} is not {n} finite values")
        if scores.p_fail is not None and ((scores.p_fail < 0) | (scores.p_fail > 1)).any():
            raise BundleSchemaError(f"{self.bundle.label}: smoke test: p_fail outside [0, 1]")
        return scores
