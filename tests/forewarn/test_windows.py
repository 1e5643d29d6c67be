"""Windows: offline (one batch) == streaming (any poll batches), against a plain reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.windows import WindowStore, sliding_windows


def _reference(keys, values, seqs, window, max_gap, max_imputed, fill):
    """One reading at a time, straight from the policy text in forewarn/windows.py."""
    state: dict[str, dict] = {}
    out: dict[int, np.ndarray] = {}
    accepted = []
    for i, (key, row) in enumerate(zip(keys, values, strict=True)):
        st_ = state.setdefault(key, {"buf": [], "last_seq": None, "last": fill.copy(),
                                     "imp": np.zeros(len(row), int)})
        if seqs is not None:
            s = seqs[i]
            if st_["last_seq"] is not None and s <= st_["last_seq"]:
                accepted.append(False)
                continue
            if max_gap is not None and st_["last_seq"] is not None and s - st_["last_seq"] > max_gap:
                st_["buf"] = []
            st_["last_seq"] = s
        accepted.append(True)
        miss = np.isnan(row)
        filled = np.where(miss, st_["last"], row)
        st_["imp"] = np.where(miss, st_["imp"] + 1, 0)
        st_["last"] = filled
        if ((st_["imp"] > max_imputed) & miss).any() or np.isnan(filled).any():
            st_["buf"] = []
            continue
        st_["buf"].append(filled)
        if len(st_["buf"]) >= window:
            out[i] = np.stack(st_["buf"][-window:])
    return out, np.array(accepted)


def _feed(store, keys, values, seqs, cuts):
    rows, wins, acc = [], [], []
    bounds = [0, *sorted(set(cuts)), len(keys)]
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        batch = store.update(np.array(keys[a:b]), values[a:b], None if seqs is None else seqs[a:b])
        rows.append(batch.rows + a)
        wins.append(batch.windows)
        acc.append(batch.accepted)
    return np.concatenate(rows), np.concatenate(wins), np.concatenate(acc)


@st.composite
def streams(draw):
    n = draw(st.integers(1, 60))
    n_keys = draw(st.integers(1, 4))
    n_feat = draw(st.integers(1, 3))
    keys = [f"m{draw(st.integers(0, n_keys - 1))}" for _ in range(n)]
    vals = np.array([[draw(st.one_of(st.just(np.nan), st.integers(-5, 5).map(float)))
                      if draw(st.booleans()) else float(draw(st.integers(-5, 5))) for _ in range(n_feat)]
                     for _ in range(n)], dtype=np.float32)
    use_seq = draw(st.booleans())
    seqs = None
    if use_seq:
        # Mostly increasing per key, with duplicates, reorderings and gaps.
        counters: dict[str, int] = {}
        seqs = []
        for k in keys:
            step = draw(st.sampled_from([1, 1, 1, 0, -1, 4]))
            counters[k] = max(0, counters.get(k, 0) + step)
            seqs.append(counters[k])
        seqs = np.array(seqs)
    cuts = draw(st.lists(st.integers(0, n), max_size=6))
    window = draw(st.integers(1, 5))
    max_gap = draw(st.sampled_from([None, 2]))
    max_imputed = draw(st.integers(0, 2))
    fill = draw(st.sampled_from([None, 0.5]))
    return keys, vals, seqs, cuts, window, max_gap, max_imputed, fill


@settings(max_examples=150, deadline=None)
@given(streams())
def test_offline_equals_streaming_equals_reference(case):
    keys, vals, seqs, cuts, window, max_gap, max_imputed, fill = case
    n_feat = vals.shape[1]
    fill_arr = np.full(n_feat, np.nan if fill is None else fill, dtype=np.float32)

    def make():
        return WindowStore(window, n_feat, max_gap=max_gap, max_imputed=max_imputed,
                           fill_values=None if fill is None else fill_arr, capacity=1)

    offline = make().update(np.array(keys), vals, seqs)
    rows, wins, acc = _feed(make(), keys, vals, seqs, cuts)
    np.testing.assert_array_equal(offline.rows, rows)
    np.testing.assert_array_equal(offline.windows, wins)
    np.testing.assert_array_equal(offline.accepted, acc)

    expected, exp_acc = _reference(keys, vals, seqs, window, max_gap, max_imputed, fill_arr)
    assert sorted(expected) == rows.tolist()
    for r, w in zip(rows, wins, strict=True):
        np.testing.assert_array_equal(expected[int(r)], w)
    np.testing.assert_array_equal(exp_acc, acc)


def test_exported_state_loaded_into_a_new_store_continues_identically():
    rng = np.random.default_rng(0)
    keys = np.array([f"site/m{i % 7}" for i in range(300)])
    vals = rng.normal(size=(300, 4)).astype(np.float32)
    seqs = np.arange(300) // 7
    whole = WindowStore(10, 4, max_gap=3)
    a = whole.update(keys[:150], vals[:150], seqs[:150])
    b = whole.update(keys[150:], vals[150:], seqs[150:])

    first = WindowStore(10, 4, max_gap=3)
    a2 = first.update(keys[:150], vals[:150], seqs[:150])
    restored = WindowStore(10, 4, max_gap=3)
    restored.load(list(first.keys), first.export(list(first.keys)))
    b2 = restored.update(keys[150:], vals[150:], seqs[150:])
    np.testing.assert_array_equal(a.windows, a2.windows)
    np.testing.assert_array_equal(b.rows, b2.rows)
    np.testing.assert_array_equal(b.windows, b2.windows)
    assert restored.last_seq("site/m3") == whole.last_seq("site/m3")


def test_sliding_windows_matches_numpy_view():
    vals = np.arange(40, dtype=np.float32).reshape(20, 2)
    got = sliding_windows(vals, 5)
    want = np.lib.stride_tricks.sliding_window_view(vals, 5, axis=0).transpose(0, 2, 1)
    np.testing.assert_array_equal(got, want)
    assert sliding_windows(vals[:3], 5).shape == (0, 5, 2)


def test_duplicates_do_not_change_windows_and_reset_restarts():
    store = WindowStore(3, 1)
    out = store.update(["a"] * 4, [[1.0], [2.0], [2.0], [3.0]], seq=[0, 1, 1, 2])
    assert out.accepted.tolist() == [True, True, False, True]
    assert out.windows[:, :, 0].tolist() == [[1.0, 2.0, 3.0]]
    assert store.ready("a")
    store.reset("a")
    assert not store.ready("a")
    assert store.update(["a"], [[4.0]], seq=[3]).windows.shape == (0, 3, 1)


def test_bad_shapes_are_refused():
    store = WindowStore(3, 2)
    with pytest.raises(ValueError, match="shape"):
        store.update(["a"], [[1.0]])
    with pytest.raises(ValueError, match="keys"):
        store.update(["a", "b"], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="window"):
        WindowStore(0, 2)
