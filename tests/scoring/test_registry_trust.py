"""The registry serves only what a trusted key released, in order: every refusal reason, through
the models-topic path (``offer``) a worker and an edge use."""

from __future__ import annotations

import dataclasses

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from forewarn.bundle import Bundle, Thresholds, pack
from scoring.registry import ModelRegistry
from tests.scoring.bundle_factory import TEST_TRUST, signed, tiny_bundle

V1, V2 = "20260101T000000Z", "20260102T000000Z"


def _registry() -> ModelRegistry:
    return ModelRegistry(threads=1, trust=TEST_TRUST)


def _offer(registry: ModelRegistry, bundle: Bundle) -> tuple[str, str | None, str | None]:
    offer = registry.offer("pump", pack(bundle))
    serving = registry.serving.get("pump")
    return offer.outcome, offer.refusal.reason if offer.refusal else None, serving.meta.version if serving else None


def _unsigned(version: str = V1) -> Bundle:
    return dataclasses.replace(tiny_bundle(version=version), release=None)


def test_unsigned_unknown_key_and_forged_bundles_are_refused_and_nothing_serves() -> None:
    registry = _registry()
    assert _offer(registry, _unsigned()) == ("refused", "unsigned", None)
    stranger = Ed25519PrivateKey.generate()
    assert _offer(registry, signed(_unsigned(), key=stranger)) == ("refused", "unknown_key", None)
    good = tiny_bundle()
    never_fires = msgspec.structs.replace(good.meta, thresholds=Thresholds(p_fail=1.5))
    forged = dataclasses.replace(good, meta=never_fires)  # the signed record of another bundle
    assert _offer(registry, forged) == ("refused", "bad_signature", None)
    assert _offer(registry, good) == ("accepted", None, V1)


def test_unsigned_bundles_serve_only_when_allowed_and_a_bad_record_is_still_refused() -> None:
    registry = ModelRegistry(threads=1, trust=TEST_TRUST, allow_unsigned=True)
    assert _offer(registry, _unsigned()) == ("accepted", None, V1)
    stranger = Ed25519PrivateKey.generate()
    assert _offer(registry, signed(_unsigned(V2), key=stranger)) == ("refused", "unknown_key", V1)


def test_an_older_version_pushed_back_is_refused_unless_a_later_rollback_record_says_so() -> None:
    registry = _registry()
    old, new = tiny_bundle(version=V1), tiny_bundle(version=V2)
    assert _offer(registry, old)[0] == "accepted"
    assert _offer(registry, new) == ("accepted", None, V2)
    assert _offer(registry, old) == ("refused", "rollback", V2)  # the old publish record, replayed
    back = signed(_unsigned(V1), action="rollback", reason="v2 misses failures",
                  issued_at=new.release.issued_at + 1 if new.release else None)
    assert _offer(registry, back) == ("accepted", None, V1)
    stale = signed(_unsigned(V2), action="promote", reason="old record", issued_at=1)
    assert _offer(registry, stale) == ("refused", "rollback", V1)  # issued before the record in service


def test_a_threshold_only_change_in_a_new_version_is_a_new_bundle() -> None:
    registry = _registry()
    first = tiny_bundle(version=V1)
    assert _offer(registry, first)[0] == "accepted"
    assert _offer(registry, first)[0] == "unchanged"
    stricter = msgspec.structs.replace(first.meta, version=V2, thresholds=Thresholds(p_fail=0.9))
    update = signed(dataclasses.replace(first, meta=stricter, release=None))
    assert _offer(registry, update) == ("accepted", None, V2)
    assert registry.serving["pump"].meta.thresholds.p_fail == 0.9
