"""Tiny bundles without TensorFlow: an ONNX graph made with onnx.helper, signed with a fixed
test key (:data:`TEST_KEY`) that :data:`TEST_TRUST` and :func:`trust_settings` trust."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import msgspec
import numpy as np
import onnx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper

from forewarn.bundle import Bundle, FeatureSpec, FeatureStats, InputSpec, ModelMeta, Targets, Thresholds, sha256_hex
from forewarn.settings import TrustSettings
from forewarn.trust import Action, TrustList, key_id, sign_release

TEST_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
TEST_TRUST = TrustList.of([TEST_KEY.public_key()])


def signed(bundle: Bundle, *, action: Action = "publish", reason: str = "test", issued_at: int | None = None,
           key: Ed25519PrivateKey = TEST_KEY) -> Bundle:
    """``bundle`` with a release record signed by ``key`` (the test key)."""
    release = sign_release(bundle, key, action=action, reason=reason, issued_at=issued_at)
    return dataclasses.replace(bundle, release=release)


def trusted_key_file() -> Path:
    """The test key's public PEM, in the temporary folder (a public key: not a secret)."""
    path = Path(tempfile.gettempdir()) / f"forewarn-test-{key_id(TEST_KEY.public_key())}.pub"
    if not path.is_file():
        pem = TEST_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pem)
        tmp.replace(path)
    return path


def trust_env() -> dict[str, str]:
    """The environment that makes a child ``forewarn score``/``edge`` trust the test key."""
    return {"FOREWARN_TRUST__KEYS": json.dumps([str(trusted_key_file())])}


def trust_settings() -> TrustSettings:
    """Settings that trust the test key (for workers and edges built from settings)."""
    return TrustSettings(keys=[trusted_key_file()])


def tiny_onnx(window: int = 4, n_features: int = 2, *, input_name: str = "window",
              heads: tuple[str, ...] = ("rul", "p_fail"), log_rul: bool = False) -> bytes:
    """rul = 10 * mean(window) (``log_rul``: 10 * log(mean), NaN for a negative mean, -inf at 0,
    yet finite on the training medians the smoke test uses); p_fail = sigmoid(mean(window))."""
    nodes = [helper.make_node("ReduceMean", [input_name], ["m"], axes=[1, 2], keepdims=0)]
    outputs = []
    if "rul" in heads:
        if log_rul:
            nodes.append(helper.make_node("Log", ["m"], ["log_m"]))
        nodes.append(helper.make_node("Mul", ["log_m" if log_rul else "m", "ten"], ["rul"]))
        outputs.append(helper.make_tensor_value_info("rul", TensorProto.FLOAT, ["batch"]))
    if "p_fail" in heads:
        nodes.append(helper.make_node("Sigmoid", ["m"], ["p_fail"]))
        outputs.append(helper.make_tensor_value_info("p_fail", TensorProto.FLOAT, ["batch"]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", window, n_features])],
        outputs, initializer=[helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_meta(onnx_bytes: bytes, window: int = 4, n_features: int = 2, *, version: str = "20260101T000000Z",
              heads: tuple[str, ...] = ("rul", "p_fail")) -> ModelMeta:
    names = [f"s{i}_c" for i in range(n_features)]
    stats = [FeatureStats(name=n, mean=1.0, std=0.5, min=0.0, max=2.0, median=1.0, missing_fraction=0.0,
                          bin_edges=[0.5, 1.0, 1.5], proportions=[0.25, 0.25, 0.25, 0.25]) for n in names]
    return ModelMeta(
        name="pump", asset_type="pump", version=version, created_at="2026-01-01T00:00:00+00:00",
        input=InputSpec(name="window", window=window, features=[FeatureSpec(n, unit="degC") for n in names]),
        targets=Targets(heads=list(heads), rul_cap=125.0, horizon=30.0),  # type: ignore[arg-type]
        thresholds=Thresholds(p_fail=0.7, consecutive=2), feature_stats=stats, sha256=sha256_hex(onnx_bytes))


def windows(n: int = 5, window: int = 4, n_features: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(1.0, 0.5, size=(n, window, n_features)).astype(np.float32)


def tiny_bundle(window: int = 4, n_features: int = 2, *, log_rul: bool = False, version: str = "20260101T000000Z",
                asset_type: str = "pump") -> Bundle:
    """A tiny bundle (see :func:`tiny_onnx`) for asset type ``asset_type``, signed with the test key."""
    onnx_bytes = tiny_onnx(window, n_features, log_rul=log_rul)
    meta = tiny_meta(onnx_bytes, window, n_features, version=version)
    if asset_type != meta.asset_type:
        meta = msgspec.structs.replace(meta, name=asset_type, asset_type=asset_type)
    return signed(Bundle(meta, onnx_bytes))
