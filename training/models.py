"""Keras windowed networks. Importing this module imports TensorFlow/Keras.

Every network takes raw readings ``[batch, window, features]``: the first layer normalises
them with the training statistics (operating-condition normalisation when setting columns
are known: see :class:`RegimeNormalisation`), so the exported graph needs no preprocessing. Heads:
``rul`` predicts RUL / cap (linear; the serving function scales and clips it) and ``p_fail``
the probability of a failure within the horizon (sigmoid).

Architectures:

* ``conv`` (default): a small temporal convolutional network — causal Conv1D blocks with
  dilations 1, 2, 4, 8 and residual connections, then the last time step's features
  concatenated with a global average — followed by one dense layer per head. Fast on CPU.
* ``lstm``: two LSTM layers, unrolled over the window: tf2onnx cannot convert the loop Keras 3
  builds for a recurrent layer (it leaves ``TensorListReserve`` nodes in the graph), while the
  unrolled steps are plain matrix products. The window is therefore bounded
  (:data:`training.settings.LSTM_MAX_WINDOW`).

Sizes and loss weights come from :class:`training.settings.NetworkOptions`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

# TensorFlow's C++ start-up chatter (no GPU found, oneDNN notes, ...) is noise on CPU boxes;
# set TF_CPP_MIN_LOG_LEVEL=0 to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with the process's stderr pointed at /dev/null: its first lines are
    written by C++ before its log level applies. Python errors still surface afterwards."""
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("0", "1"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()

import keras  # noqa: E402 - after the quiet TensorFlow import above
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from keras import layers, ops  # noqa: E402

from training.settings import Head, NetworkOptions  # noqa: E402

__all__ = [
    "Normaliser",
    "RegimeNormalisation",
    "build_model",
    "masked_bce",
    "masked_mse",
    "seed_everything",
]

def seed_everything(seed: int) -> None:
    """Same seed, same weights and batches: Python, numpy and TensorFlow seeds plus
    deterministic TensorFlow ops."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def masked_mse(y_true: Any, y_pred: Any) -> Any:
    """Mean squared error over labels >= 0 (negative = no label: censored)."""
    y_true = ops.reshape(y_true, (-1,))
    y_pred = ops.reshape(y_pred, (-1,))
    mask = ops.cast(ops.greater_equal(y_true, 0.0), "float32")
    return ops.sum(mask * ops.square(y_true - y_pred)) / ops.maximum(ops.sum(mask), 1.0)


def masked_bce(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy over labels >= 0 (negative = unknown)."""
    y_true = ops.reshape(y_true, (-1, 1))
    y_pred = ops.reshape(y_pred, (-1, 1))
    mask = ops.cast(ops.greater_equal(y_true, 0.0), "float32")
    losses = keras.losses.binary_crossentropy(ops.clip(y_true, 0.0, 1.0), y_pred)
    return ops.sum(ops.reshape(mask, (-1,)) * losses) / ops.maximum(ops.sum(mask), 1.0)


def poly_terms(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Degree-2 terms of standardised settings: z_i and z_i * z_j (i <= j)."""
    n = z.shape[-1]
    pairs = [z[..., i] * z[..., j] for i in range(n) for j in range(i, n)]
    return np.concatenate([z, np.stack(pairs, axis=-1)], axis=-1) if n else z


@keras.saving.register_keras_serializable(package="forewarn")
class RegimeNormalisation(layers.Layer):  # type: ignore[misc]
    """Operating-condition normalisation inside the graph.

    Each sensor's expected value under the current settings (a degree-2 polynomial of the
    standardised settings, fitted by least squares on the training readings) is subtracted
    and the residual divided by its training spread; the standardised settings are passed on
    too. Without setting columns this is plain standardisation."""

    def __init__(self, sensor_idx: list[int], setting_idx: list[int], sensor_mean: Any, sensor_std: Any,
                 setting_mean: Any, setting_std: Any, coef: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sensor_idx = list(sensor_idx)
        self.setting_idx = list(setting_idx)
        self._init = {"sensor_mean": np.asarray(sensor_mean, np.float32),
                      "sensor_std": np.asarray(sensor_std, np.float32),
                      "setting_mean": np.asarray(setting_mean, np.float32),
                      "setting_std": np.asarray(setting_std, np.float32), "coef": np.asarray(coef, np.float32)}
        for name, value in self._init.items():
            setattr(self, name, self.add_weight(name=name, shape=value.shape, trainable=False,
                                                initializer=keras.initializers.Constant(value)))

    def call(self, x: Any) -> Any:
        sensors = ops.take(x, self.sensor_idx, axis=-1)
        if not self.setting_idx:
            return (sensors - self.sensor_mean) / self.sensor_std
        z = (ops.take(x, self.setting_idx, axis=-1) - self.setting_mean) / self.setting_std
        n = len(self.setting_idx)
        pairs = [z[..., i:i + 1] * z[..., j:j + 1] for i in range(n) for j in range(i, n)]
        terms = ops.concatenate([z, *pairs], axis=-1)
        expected = ops.matmul(terms, self.coef) + self.sensor_mean
        return ops.concatenate([(sensors - expected) / self.sensor_std, z], axis=-1)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"sensor_idx": self.sensor_idx, "setting_idx": self.setting_idx,
                       **{k: v.tolist() for k, v in self._init.items()}})
        return config


@dataclass(frozen=True)
class Normaliser:
    """Statistics for :class:`RegimeNormalisation`, fitted with numpy on training readings."""

    sensor_idx: list[int]
    setting_idx: list[int]
    sensor_mean: npt.NDArray[np.float64]
    sensor_std: npt.NDArray[np.float64]
    setting_mean: npt.NDArray[np.float64]
    setting_std: npt.NDArray[np.float64]
    coef: npt.NDArray[np.float64]

    @classmethod
    def fit(cls, values: npt.NDArray[np.float64], setting_idx: list[int]) -> Normaliser:
        """``values``: training readings ``(n, features)`` (NaN allowed)."""
        n_features = values.shape[1]
        sensor_idx = [i for i in range(n_features) if i not in setting_idx]
        sensors = values[:, sensor_idx]
        settings = values[:, setting_idx]
        rows = np.isfinite(sensors).all(axis=1) & np.isfinite(settings).all(axis=1)

        def spread(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            std = np.nanstd(a, axis=0) if len(a) else np.ones(a.shape[1])
            floor = 1e-6 * np.maximum(1.0, np.abs(np.nan_to_num(np.nanmean(a, axis=0)))) if len(a) else 1e-6
            return np.where(np.isfinite(std) & (std > floor), std, 1.0)

        sensor_mean = np.nan_to_num(np.nanmean(sensors, axis=0)) if len(sensors) else np.zeros(len(sensor_idx))
        if not setting_idx or rows.sum() < 10:
            return cls(sensor_idx, [], sensor_mean, spread(sensors), np.zeros(0), np.ones(0),
                       np.zeros((0, len(sensor_idx))))
        setting_mean = np.nanmean(settings, axis=0)
        setting_std = spread(settings)
        z = (settings[rows] - setting_mean) / setting_std
        terms = poly_terms(z)
        design = np.column_stack([terms, np.ones(len(terms))])
        solution = np.linalg.lstsq(design, sensors[rows], rcond=None)[0].astype(np.float64)
        coef, intercept = solution[:-1], solution[-1]
        residual = sensors[rows] - design @ solution
        return cls(sensor_idx, list(setting_idx), intercept, spread(residual), setting_mean, setting_std, coef)

    def layer(self) -> RegimeNormalisation:
        return RegimeNormalisation(self.sensor_idx, self.setting_idx, self.sensor_mean, self.sensor_std,
                                   self.setting_mean, self.setting_std, self.coef, name="normalise")


def _conv_trunk(x: Any, config: NetworkOptions) -> Any:
    x = layers.Conv1D(config.filters, 1, name="project")(x)
    for i, dilation in enumerate(config.dilations):
        regulariser = keras.regularizers.L2(config.l2) if config.l2 > 0 else None
        y = layers.Conv1D(config.filters, config.kernel_size, padding="causal", dilation_rate=dilation,
                          activation="relu", kernel_regularizer=regulariser, name=f"tcn{i}_a")(x)
        y = layers.Conv1D(config.filters, config.kernel_size, padding="causal", dilation_rate=dilation,
                          activation="relu", kernel_regularizer=regulariser, name=f"tcn{i}_b")(y)
        x = layers.Add(name=f"tcn{i}_res")([x, y])
    return x


def build_model(window: int, normaliser: Normaliser, heads: list[Head],
                config: NetworkOptions | None = None) -> keras.Model:
    """A compiled network taking raw windows ``[batch, window, features]``, one output per head."""
    config = config or NetworkOptions()
    n_features = len(normaliser.sensor_idx) + len(normaliser.setting_idx)
    inputs = keras.Input((window, n_features), name="window")
    x = normaliser.layer()(inputs)
    if config.input_noise > 0:
        x = layers.GaussianNoise(config.input_noise, name="noise")(x)
    if config.deltas:
        # Offset-free channels: each reading minus the window's mean (machine-to-machine offsets cancel).
        centred = layers.Lambda(lambda t: t - ops.mean(t, axis=1, keepdims=True), name="centre")(x)
        x = layers.Concatenate(name="with_deltas")([x, centred])
    if config.architecture == "conv":
        trunk = _conv_trunk(x, config)
        last = layers.Flatten(name="last_step")(layers.Cropping1D((window - 1, 0), name="crop")(trunk))
        pooled = layers.GlobalAveragePooling1D(name="pool")(trunk)
        features = layers.Concatenate(name="summary")([last, pooled])
    elif config.architecture == "lstm":
        y = layers.LSTM(config.filters * 2, return_sequences=True, unroll=True, name="lstm0")(x)
        features = layers.LSTM(config.filters, unroll=True, name="lstm1")(y)
    else:
        raise ValueError(f"unknown architecture {config.architecture!r}")
    regulariser = keras.regularizers.L2(config.l2) if config.l2 > 0 else None
    hidden = layers.Dense(config.dense, activation="relu", kernel_regularizer=regulariser, name="dense")(features)
    hidden = layers.Dropout(config.dropout, name="dropout")(hidden)
    outputs: dict[str, Any] = {}
    if "rul" in heads:
        outputs["rul"] = layers.Dense(1, name="rul")(hidden)
    if "p_fail" in heads:
        outputs["p_fail"] = layers.Dense(1, activation="sigmoid", name="p_fail")(hidden)
    model = keras.Model(inputs, outputs, name=f"forewarn_{config.architecture}")
    losses = {h: (masked_mse if h == "rul" else masked_bce) for h in outputs}
    weights = {h: (config.rul_loss_weight if h == "rul" else config.fail_loss_weight) for h in outputs}
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=losses, loss_weights=weights)
    return model
