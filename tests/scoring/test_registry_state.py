"""Model registry (verification, refusal reasons, shadow) and the changelog's window codec."""

from __future__ import annotations

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.bundle import pack
from forewarn.windows import WindowStore
from scoring.registry import ModelRegistry
from scoring.state import MachineRecord, Marker, decode_record, encode_marker, encode_record
from scoring.testing import conv_bundle, linear_bundle
from tests.scoring.bundle_factory import TEST_TRUST, signed

FEATURES = ["a", "b", "c"]


def test_good_bundle_serves_and_republishing_it_changes_nothing() -> None:
    registry = ModelRegistry(threads=1, trust=TEST_TRUST)
    bundle = signed(linear_bundle("pump", FEATURES, window=4))
    assert registry.offer("pump", pack(bundle)).outcome == "accepted"
    assert registry.offer("pump", pack(bundle)).outcome == "unchanged"
    assert registry.serving["pump"].meta.version == "v1"


def test_bad_bundles_are_refused_with_a_reason_and_the_old_model_keeps_serving() -> None:
    registry = ModelRegistry(threads=1, trust=TEST_TRUST)
    registry.offer("pump", pack(signed(linear_bundle("pump", FEATURES, window=4))))
    tampered = bytearray(pack(signed(linear_bundle("pump", FEATURES, window=4, version="v2"))))
    tampered[-30] ^= 0x01
    cases = {
        "sha256_mismatch": bytes(tampered),
        "bad_format": b"not a bundle",
        "wrong_key": pack(signed(linear_bundle("motor", FEATURES, window=4, version="v3"))),
    }
    for reason, value in cases.items():
        offer = registry.offer("pump", value)
        assert offer.outcome == "refused" and offer.refusal is not None
        assert offer.refusal.reason == reason, offer.refusal
    assert registry.serving["pump"].meta.version == "v1"


def test_schema_mismatch_is_refused() -> None:
    good = signed(linear_bundle("pump", FEATURES, window=4, version="v2"))
    wrong = msgspec.structs.replace(good.meta, input=msgspec.structs.replace(good.meta.input, window=5))
    offer = ModelRegistry(threads=1, trust=TEST_TRUST).offer_bundle(signed(type(good)(wrong, good.onnx)))
    assert offer.outcome == "refused" and offer.refusal is not None and offer.refusal.reason == "input_schema"


def test_candidate_runs_in_shadow_and_is_promoted() -> None:
    registry = ModelRegistry(threads=1, trust=TEST_TRUST)
    registry.offer("pump", pack(signed(linear_bundle("pump", FEATURES, window=4))))
    candidate = signed(conv_bundle("pump", FEATURES, window=4, version="c1", filters=4, dilations=(1,), dense=4))
    assert registry.offer("pump.candidate", pack(candidate)).outcome == "accepted"
    assert registry.candidates["pump"].meta.version == "c1"
    assert registry.offer("pump", pack(signed(candidate, action="promote"))).outcome == "accepted"
    assert "pump" not in registry.candidates
    assert registry.offer("pump.candidate", None).outcome == "unchanged"


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30)),
                                                      min_size=1, max_size=80))
def test_window_slots_round_trip_through_the_changelog(window: int, n_features: int,
                                                        readings: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(0)
    store = WindowStore(window, n_features, max_gap=5, max_imputed=1)
    keys = [f"s/m{k}" for k, _ in readings]
    values = rng.normal(size=(len(readings), n_features)).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = np.nan
    store.update(keys, values, [s for _, s in readings])
    known = list(store.keys)
    blobs = [decode_record(encode_record(MachineRecord("pump", store.signature, b))).window
             for b in store.export(known)]
    copy = WindowStore(window, n_features, max_gap=5, max_imputed=1)
    copy.load(known, blobs)
    more = rng.normal(size=(30, n_features)).astype(np.float32)
    more_keys = [known[i % len(known)] for i in range(30)]
    seqs = [40 + i for i in range(30)]
    a, b = store.update(more_keys, more, seqs), copy.update(more_keys, more, seqs)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.windows, b.windows)
    copy.forget(known[:1])
    assert (copy.last_seq(known[0]) is None and not copy.ready(known[0])) or window == 1
    assert encode_marker(Marker(3, -1)) != encode_marker(Marker(3, 0))
