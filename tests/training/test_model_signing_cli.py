"""``forewarn model keygen | sign | verify`` on a bundle folder, as a user runs them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from forewarn.bundle import read_bundle, write_bundle
from forewarn.cli import cli
from tests.scoring.bundle_factory import tiny_bundle


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


def test_keygen_sign_verify_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOREWARN_CONFIG", raising=False)
    bundle = tiny_bundle()
    folder = write_bundle(tmp_path / "models", bundle.meta, bundle.onnx, make_current=True)
    keys = tmp_path / "keys"
    code, out = _run("model", "keygen", "--out", str(keys))
    assert code == 0 and "model.pub" in out
    assert stat.S_IMODE((keys / "model.key").stat().st_mode) == 0o600
    code, _ = _run("model", "keygen", "--out", str(keys))
    assert code != 0  # never overwrites a key

    trusted = {"FOREWARN_TRUST__KEYS": json.dumps([str(keys / "model.pub")])}
    code, out = _run("model", "verify", "--models", str(tmp_path / "models"), env=trusted)
    assert code == 1 and "unsigned" in out

    code, out = _run("model", "sign", "--models", str(tmp_path / "models"), "--key", str(keys / "model.key"))
    assert code == 0 and read_bundle(folder).release is not None
    code, out = _run("model", "verify", "--models", str(tmp_path / "models"), env=trusted)
    assert code == 0 and "signed by trusted key" in out

    other = tmp_path / "other"
    assert _run("model", "keygen", "--out", str(other))[0] == 0
    code, out = _run("model", "verify", "--models", str(tmp_path / "models"),
                     env={"FOREWARN_TRUST__KEYS": json.dumps([str(other / "model.pub")])})
    assert code == 1 and "unknown_key" in out

    meta = folder / "model.json"
    doc = json.loads(meta.read_text())
    doc["thresholds"]["p_fail"] = 0.999  # a threshold-only change: the alert never fires
    meta.write_text(json.dumps(doc))
    code, out = _run("model", "verify", "--models", str(tmp_path / "models"), env=trusted)
    assert code == 1 and "bad_signature" in out  # model.json is covered by the signature


def test_a_rollback_record_and_an_unsigned_publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOREWARN_CONFIG", raising=False)
    bundle = tiny_bundle()
    folder = write_bundle(tmp_path / "models", bundle.meta, bundle.onnx, make_current=True)
    models = ["--models", str(tmp_path / "models")]
    # refused before any connection: nothing listens on this port
    offline = ["--bootstrap-servers", "127.0.0.1:9"]
    code, out = _run("model", "publish", *models, *offline)
    assert code != 0 and "not signed" in out and "model sign" in out
    keys = tmp_path / "keys"
    assert _run("model", "keygen", "--out", str(keys))[0] == 0
    code, out = _run("model", "sign", *models, "--key", str(keys / "model.key"), "--action", "rollback",
                     "--reason", "v2 misses failures")
    assert code == 0 and "(rollback)" in out
    release = read_bundle(folder).release
    assert release is not None and release.action == "rollback" and release.reason == "v2 misses failures"
