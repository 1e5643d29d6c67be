"""Keras windowed networks. Importing this module imports TensorFlow/Keras.

Every network takes raw readings ``[batch, window, features]``: the first layer normalises
them with the training statistics, so the exported graph needs no preprocessing. Heads:
``rul`` predicts RUL / cap (linear; the serving function scales and clips it) and ``p_fail``
the probability of a failure within the horizon (sigmoid).

Architectures:

* ``conv`` (default): a small temporal convolutional network — causal Conv1D blocks with
  dilations 1, 2, 4, 8 and residual connections, then the last time step's features
  concatenated with a global average — followed by one dense layer per head. Fast on CPU.
* ``lstm``: two LSTM layers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import numpy.typing as npt
from keras import layers, ops

__all__ = ["Architecture", "ModelConfig", "build_model", "masked_bce", "masked_mse", "seed_everything"]

Architecture = Literal["conv", "lstm"]
Head = Literal["rul", "p_fail"]


@dataclass(frozen=True)
class ModelConfig:
    architecture: Architecture = "conv"
    filters: int = 32
    kernel_size: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    dense: int = 64
    dropout: float = 0.1
    learning_rate: float = 2e-3
    rul_loss_weight: float = 1.0
    fail_loss_weight: float = 0.3


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


def _conv_trunk(x: Any, config: ModelConfig) -> Any:
    x = layers.Conv1D(config.filters, 1, name="project")(x)
    for i, dilation in enumerate(config.dilations):
        y = layers.Conv1D(config.filters, config.kernel_size, padding="causal", dilation_rate=dilation,
                          activation="relu", name=f"tcn{i}_a")(x)
        y = layers.Conv1D(config.filters, config.kernel_size, padding="causal", dilation_rate=dilation,
                          activation="relu", name=f"tcn{i}_b")(y)
        x = layers.Add(name=f"tcn{i}_res")([x, y])
    return x


def build_model(window: int, mean: npt.ArrayLike, std: npt.ArrayLike, heads: list[Head],
                config: ModelConfig | None = None) -> keras.Model:
    config = config or ModelConfig()
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    n_features = len(mean_arr)
    inputs = keras.Input((window, n_features), name="window")
    x = layers.Normalization(mean=mean_arr, variance=np.square(std_arr), name="normalise")(inputs)
    if config.architecture == "conv":
        trunk = _conv_trunk(x, config)
        last = layers.Flatten(name="last_step")(layers.Cropping1D((window - 1, 0), name="crop")(trunk))
        pooled = layers.GlobalAveragePooling1D(name="pool")(trunk)
        features = layers.Concatenate(name="summary")([last, pooled])
    elif config.architecture == "lstm":
        y = layers.LSTM(config.filters * 2, return_sequences=True, name="lstm0")(x)
        features = layers.LSTM(config.filters, name="lstm1")(y)
    else:
        raise ValueError(f"unknown architecture {config.architecture!r}")
    hidden = layers.Dense(config.dense, activation="relu", name="dense")(features)
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
