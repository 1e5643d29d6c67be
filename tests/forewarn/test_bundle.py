"""Bundle format: round trips, the current pointer, and tampered bundles refused."""

from __future__ import annotations

import json

import msgspec
import pytest

from forewarn.bundle import (
    BundleFormatError,
    BundleTamperedError,
    current_version,
    list_versions,
    pack,
    read_bundle,
    resolve_bundle,
    set_current,
    unpack,
    write_bundle,
)
from tests.scoring.bundle_factory import tiny_meta, tiny_onnx


@pytest.fixture
def models(tmp_path):
    onnx_bytes = tiny_onnx()
    path = write_bundle(tmp_path / "models", tiny_meta(onnx_bytes), onnx_bytes, make_current=True)
    return tmp_path / "models", path


def test_write_read_round_trip_and_current(models):
    root, path = models
    bundle = read_bundle(path)
    assert bundle.meta.asset_type == "pump"
    assert bundle.meta.fill_values == [1.0, 1.0]
    assert current_version(root, "pump") == "20260101T000000Z"
    assert (root / "pump" / "current").read_text().strip() == "20260101T000000Z"
    assert resolve_bundle(root) == path
    assert resolve_bundle(root / "pump") == path
    assert resolve_bundle(path) == path


def test_promote_moves_current_and_versions_are_immutable(models):
    root, _ = models
    onnx_bytes = tiny_onnx()
    write_bundle(root, tiny_meta(onnx_bytes, version="20260102T000000Z"), onnx_bytes)
    assert list_versions(root, "pump") == ["20260101T000000Z", "20260102T000000Z"]
    assert current_version(root, "pump") == "20260101T000000Z"
    set_current(root, "pump", "20260102T000000Z")
    assert resolve_bundle(root).name == "20260102T000000Z"
    with pytest.raises(BundleFormatError, match="already exists"):
        write_bundle(root, tiny_meta(onnx_bytes, version="20260102T000000Z"), onnx_bytes)


def test_changed_bytes_are_refused(models):
    _, path = models
    data = bytearray((path / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleTamperedError, match="sha256") as caught:
        read_bundle(path)
    assert caught.value.reason == "sha256_mismatch"


def test_wrong_sha_in_model_json_is_refused(models):
    _, path = models
    meta = json.loads((path / "model.json").read_text())
    meta["sha256"] = "0" * 64
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleTamperedError):
        read_bundle(path)


def test_tampered_bundle_cannot_become_current(models):
    root, path = models
    (path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleTamperedError):
        set_current(root, "pump", path.name)


def test_bad_model_json_is_a_format_error(models):
    _, path = models
    (path / "model.json").write_text("{")
    with pytest.raises(BundleFormatError, match=r"model\.json"):
        read_bundle(path)
    (path / "model.json").unlink()
    with pytest.raises(BundleFormatError, match="missing"):
        read_bundle(path)


def test_pack_unpack_and_tampered_message(models):
    _, path = models
    bundle = read_bundle(path)
    again = unpack(pack(bundle))
    assert again.meta == bundle.meta and again.onnx == bundle.onnx
    forged = msgspec.msgpack.encode({"format": "forewarn-bundle/1",
                                     "meta": msgspec.json.encode(bundle.meta), "onnx": bundle.onnx + b"x"})
    with pytest.raises(BundleTamperedError):
        unpack(forged)
    with pytest.raises(BundleFormatError):
        unpack(b"\x00garbage")
