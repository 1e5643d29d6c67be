"""Signing and verifying release records: keys, the trust list, every refusal reason, and a
digest that covers the whole bundle."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.bundle import (
    Bundle,
    BundleError,
    Thresholds,
    encode_meta,
    pack,
    read_bundle,
    sha256_hex,
    unpack,
    write_bundle,
    write_release,
)
from forewarn.errors import ConfigError
from forewarn.settings import TrustSettings
from forewarn.trust import (
    PASSPHRASE_ENV,
    BadSignatureError,
    RollbackError,
    TrustList,
    UnknownKeyError,
    UnsignedError,
    check_order,
    generate_keypair,
    key_id,
    load_private_key,
    sign_release,
    verify_release,
)
from tests.scoring.bundle_factory import TEST_KEY, TEST_TRUST, signed, tiny_bundle

BUNDLE = tiny_bundle()


def test_a_signed_bundle_verifies_and_survives_disk_and_topic(tmp_path: Path) -> None:
    assert BUNDLE.release is not None and BUNDLE.release.key_id == key_id(TEST_KEY.public_key())
    assert verify_release(BUNDLE.release, BUNDLE, TEST_TRUST) == BUNDLE.release
    folder = write_bundle(tmp_path, BUNDLE.meta, BUNDLE.onnx, release=BUNDLE.release)
    from_disk = read_bundle(folder)
    assert from_disk.release == BUNDLE.release and from_disk.digest == BUNDLE.digest
    from_topic = unpack(pack(from_disk))
    verify_release(from_topic.release, from_topic, TEST_TRUST)


def test_each_refusal_has_its_reason() -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(UnsignedError) as unsigned:
        verify_release(None, BUNDLE, TEST_TRUST)
    with pytest.raises(UnknownKeyError) as unknown:
        verify_release(signed(BUNDLE, key=other).release, BUNDLE, TEST_TRUST)
    assert BUNDLE.release is not None
    forged = msgspec.structs.replace(BUNDLE.release, reason="edited after signing")
    with pytest.raises(BadSignatureError) as bad:
        verify_release(forged, BUNDLE, TEST_TRUST)
    newer = tiny_bundle(version="20260201T000000Z")
    with pytest.raises(BadSignatureError) as other_bundle:  # a good record, but for another bundle
        verify_release(BUNDLE.release, newer, TEST_TRUST)
    with pytest.raises(RollbackError) as rollback:
        check_order(BUNDLE.release, BUNDLE.meta.version, newer.release, newer.meta.version)
    reasons = [e.value.reason for e in (unsigned, unknown, bad, other_bundle, rollback)]
    assert reasons == ["unsigned", "unknown_key", "bad_signature", "bad_signature", "rollback"]


def test_rollback_records_must_be_issued_after_the_one_in_service() -> None:
    newer = signed(tiny_bundle(version="20260201T000000Z"), issued_at=2_000)
    back = signed(BUNDLE, action="rollback", reason="v2 misses failures", issued_at=3_000)
    check_order(back.release, BUNDLE.meta.version, newer.release, newer.meta.version)
    stale = signed(BUNDLE, action="rollback", issued_at=1_000)
    with pytest.raises(RollbackError):
        check_order(stale.release, BUNDLE.meta.version, newer.release, newer.meta.version)


def test_the_digest_covers_model_json_so_a_threshold_change_is_a_new_bundle() -> None:
    retuned = Bundle(msgspec.structs.replace(BUNDLE.meta, thresholds=Thresholds(p_fail=0.99)), BUNDLE.onnx)
    assert retuned.meta.sha256 == BUNDLE.meta.sha256  # the old checksum saw no change
    assert retuned.digest != BUNDLE.digest
    with pytest.raises(BadSignatureError):
        verify_release(BUNDLE.release, retuned, TEST_TRUST)


@settings(max_examples=80, deadline=None)
@given(part=st.sampled_from(["onnx", "meta"]), data=st.data())
def test_any_single_byte_change_fails_verification(part: str, data: st.DataObject) -> None:
    """A changed graph (with model.json's checksum fixed up to match) or a changed model.json
    read from disk: refused as a bad bundle or a bad signature, unless the change leaves the
    same content (JSON whitespace)."""
    raw = bytearray(BUNDLE.onnx if part == "onnx" else encode_meta(BUNDLE.meta))
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    raw[index] ^= data.draw(st.integers(1, 255), label="xor")
    if part == "onnx":
        changed = Bundle(msgspec.structs.replace(BUNDLE.meta, sha256=sha256_hex(bytes(raw))), bytes(raw))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_bundle(tmp, BUNDLE.meta, BUNDLE.onnx, release=BUNDLE.release)
            (folder / "model.json").write_bytes(bytes(raw))
            try:
                changed = read_bundle(folder)
            except BundleError:
                return  # not a valid model.json any more (or its checksum fails): refused before signatures
    if changed.digest == BUNDLE.digest:
        assert changed.meta == BUNDLE.meta
        return
    with pytest.raises(BadSignatureError):
        verify_release(BUNDLE.release, changed, TEST_TRUST)


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    kid = generate_keypair(tmp_path / "model.key", tmp_path / "keys" / "model.pub")
    assert stat.S_IMODE(os.stat(tmp_path / "model.key").st_mode) == 0o600
    assert b"ENCRYPTED" in (tmp_path / "model.key").read_bytes()
    key = load_private_key(tmp_path / "model.key")
    trust = TrustList.load(TrustSettings(keys=[tmp_path / "keys"]))
    assert list(trust.keys) == [kid] == [key_id(key.public_key())]
    verify_release(signed(BUNDLE, key=key).release, BUNDLE, trust)
    with pytest.raises(ConfigError, match="already exists"):
        generate_keypair(tmp_path / "model.key", tmp_path / "other.pub")
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(ConfigError, match="wrong passphrase") as wrong:
        load_private_key(tmp_path / "model.key")
    assert "wrong" not in wrong.value.one_line().replace("wrong passphrase", "")  # the secret is not echoed


def test_unreadable_or_foreign_keys_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        TrustList.load(TrustSettings(keys=[tmp_path / "junk.pub"]))
    with pytest.raises(ConfigError, match="cannot read"):
        TrustList.load(TrustSettings(keys=[tmp_path / "missing.pub"]))


def test_a_record_written_next_to_a_bundle_is_read_back(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path, BUNDLE.meta, BUNDLE.onnx)
    assert read_bundle(folder).release is None
    release = sign_release(read_bundle(folder), TEST_KEY, reason="first release")
    write_release(folder, release)
    assert read_bundle(folder).release == release
