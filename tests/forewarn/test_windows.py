"""Windows: offline (one batch) == streaming (any poll batches), against a plain reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.windows import Reset, Verdict, WindowStore, sliding_windows


def _reference(keys, values, seqs, window, max_gap, max_imputed, fill, boots=None, tss=None, margin=None):
    """One reading at a time, straight from the policy text in forewarn/windows.py."""
    margin = window if margin is None else margin
    state: dict[str, dict] = {}
    out: dict[int, np.ndarray] = {}
    verdicts, resets = [], []
    for i, (key, row) in enumerate(zip(keys, values, strict=True)):
        st_ = state.setdefault(key, {"buf": [], "seq": None, "last": fill.copy(), "imp": np.zeros(len(row), int),
                                     "boot": -1, "ts": None, "epoch_ts": None, "accepted": set()})
        reset = "none"
        if seqs is not None:
            s = int(seqs[i])
            b = -1 if boots is None else int(boots[i])
            t = None if tss is None else int(tss[i])
            epoch = st_["boot"] if b == -1 else b
            restart = False
            if st_["seq"] is None:
                restart = True
            elif epoch > st_["boot"]:
                restart, reset = True, "restart"
            elif epoch < st_["boot"] or (b == -1 and t is not None and st_["epoch_ts"] is not None
                                         and t < st_["epoch_ts"]):
                verdicts.append("late"), resets.append("none")
                continue
            elif s <= st_["seq"]:
                if (b == -1 and t is not None and st_["ts"] is not None and t > st_["ts"]
                        and st_["seq"] - s > margin):
                    restart, reset = True, "restart"
                else:
                    recent = st_["seq"] - s < 64 and s in st_["accepted"]
                    verdicts.append("duplicate" if recent else "late"), resets.append("none")
                    continue
            elif max_gap is not None and s - st_["seq"] > max_gap:
                reset = "gap"
            if restart:
                st_["boot"], st_["epoch_ts"], st_["accepted"] = epoch, t, set()
            if reset != "none":
                st_["buf"] = []
            st_["seq"], st_["ts"] = s, t
            st_["accepted"].add(s)
        verdicts.append("accepted")
        resets.append(reset)
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
    return out, np.array([v == "accepted" for v in verdicts]), verdicts, resets


_VERDICTS = {Verdict.ACCEPTED: "accepted", Verdict.DUPLICATE: "duplicate", Verdict.LATE: "late"}
_RESETS = {Reset.NONE: "none", Reset.RESTART: "restart", Reset.GAP: "gap"}


def _feed(store, keys, values, seqs, cuts, boots=None, tss=None):
    rows, wins, verdicts, resets = [], [], [], []
    bounds = [0, *sorted(set(cuts)), len(keys)]
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        batch = store.update(np.array(keys[a:b]), values[a:b], None if seqs is None else seqs[a:b],
                             boot=None if boots is None else boots[a:b], ts=None if tss is None else tss[a:b])
        rows.append(batch.rows + a)
        wins.append(batch.windows)
        verdicts.append(batch.verdict)
        resets.append(batch.reset)
    return np.concatenate(rows), np.concatenate(wins), np.concatenate(verdicts), np.concatenate(resets)


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
    seqs = boots = tss = None
    big = draw(st.sampled_from([0, 2**63 - 1 - 200]))  # counters near the int64 limit work the same
    if use_seq:
        # Mostly increasing per key, with duplicates, reorderings, gaps, restarts (with and without
        # a boot) and readings from before a restart.
        counters: dict[str, int] = {}
        epochs: dict[str, int] = {}
        clock: dict[str, int] = {}
        with_boot = draw(st.sampled_from(["none", "some", "all"]))
        seqs, boots, tss = [], [], []
        for k in keys:
            step = draw(st.sampled_from([1, 1, 1, 0, -1, 4, -30, "restart"]))
            tick = draw(st.sampled_from([1000, 1000, 0, -1000, -50_000]))
            if step == "restart":
                epochs[k] = epochs.get(k, 0) + 1
                counters[k] = 0
            else:
                counters[k] = min(max(0, counters.get(k, 0) + step), 200)
            clock[k] = clock.get(k, 1_000_000) + tick
            seqs.append(big + counters[k])
            send = with_boot == "all" or (with_boot == "some" and draw(st.booleans()))
            boots.append(big + epochs.get(k, 0) if send else -1)
            tss.append(clock[k])
        seqs = np.array(seqs, dtype=np.int64)
        boots = np.array(boots, dtype=np.int64) if draw(st.booleans()) else None
        tss = np.array(tss, dtype=np.int64) if draw(st.booleans()) else None
    cuts = draw(st.lists(st.integers(0, n), max_size=6))
    window = draw(st.integers(1, 5))
    max_gap = draw(st.sampled_from([None, 2]))
    max_imputed = draw(st.integers(0, 2))
    fill = draw(st.sampled_from([None, 0.5]))
    return keys, vals, seqs, boots, tss, cuts, window, max_gap, max_imputed, fill


@settings(max_examples=300, deadline=None)
@given(streams())
def test_offline_equals_streaming_equals_reference(case):
    keys, vals, seqs, boots, tss, cuts, window, max_gap, max_imputed, fill = case
    n_feat = vals.shape[1]
    fill_arr = np.full(n_feat, np.nan if fill is None else fill, dtype=np.float32)

    def make():
        return WindowStore(window, n_feat, max_gap=max_gap, max_imputed=max_imputed,
                           fill_values=None if fill is None else fill_arr, capacity=1)

    offline = make().update(np.array(keys), vals, seqs, boot=boots, ts=tss)
    rows, wins, verdicts, resets = _feed(make(), keys, vals, seqs, cuts, boots, tss)
    np.testing.assert_array_equal(offline.rows, rows)
    np.testing.assert_array_equal(offline.windows, wins)
    np.testing.assert_array_equal(offline.verdict, verdicts)
    np.testing.assert_array_equal(offline.reset, resets)

    expected, exp_acc, exp_verdicts, exp_resets = _reference(keys, vals, seqs, window, max_gap, max_imputed,
                                                             fill_arr, boots, tss)
    assert sorted(expected) == rows.tolist()
    for r, w in zip(rows, wins, strict=True):
        np.testing.assert_array_equal(expected[int(r)], w)
    np.testing.assert_array_equal(exp_acc, offline.accepted)
    assert [_VERDICTS[Verdict(v)] for v in verdicts] == exp_verdicts
    assert [_RESETS[Reset(r)] for r in resets] == exp_resets


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


def _one(store, seq, ts, boot=-1, value=1.0):
    batch = store.update(["a"], [[value]], [seq], boot=[boot], ts=[ts])
    return _VERDICTS[Verdict(int(batch.verdict[0]))], _RESETS[Reset(int(batch.reset[0]))], len(batch)


def test_a_device_that_restarts_its_counter_without_a_boot_is_scored_again():
    store = WindowStore(3, 1, max_gap=10)
    for s in range(100):
        _one(store, s, 1000 * s)
    # a copy of an old reading (its original event time): a duplicate, or late when too old to tell
    assert _one(store, 98, 98_000)[0] == "duplicate"
    assert _one(store, 5, 5_000)[0] == "late"
    # seq back to 0 with a later event time: a restart; the window fills again and is scored
    assert _one(store, 0, 200_000)[:2] == ("accepted", "restart")
    assert _one(store, 1, 201_000)[2] == 0
    assert _one(store, 2, 202_000)[2] == 1
    # a reading sent before the restart and delivered after it is late, whatever its seq
    assert _one(store, 100, 99_500)[0] == "late"
    # a small regression with a later time is not taken for a restart (within the margin)
    assert _one(store, 1, 203_000)[0] == "duplicate"


def test_a_device_that_sends_its_boot_restarts_on_a_new_boot_and_old_boots_are_late():
    store = WindowStore(2, 1)
    assert [_one(store, s, 10 * s, boot=7)[0] for s in range(5)] == ["accepted"] * 5
    assert _one(store, 0, 0, boot=8)[:2] == ("accepted", "restart")  # event time does not matter
    assert _one(store, 5, 50, boot=7)[0] == "late"
    assert _one(store, 0, 1, boot=8)[0] == "duplicate"
    assert _one(store, 1, 2)[0] == "accepted"  # no boot: the current epoch
    assert store.boot("a") == 8 and store.last_seq("a") == 1


def test_counters_up_to_the_int64_limit():
    top = 2**63 - 1
    store = WindowStore(2, 1, max_gap=5)
    out = store.update(["a"] * 4, [[1.0]] * 4, [top - 3, top - 1, top - 1, top], boot=[top] * 4, ts=[1, 2, 3, 4])
    assert out.verdict.tolist() == [Verdict.ACCEPTED, Verdict.ACCEPTED, Verdict.DUPLICATE, Verdict.ACCEPTED]
    assert len(out) == 2 and store.last_seq("a") == top and store.boot("a") == top
    assert _one(store, 0, 5, boot=top)[0] == "late"  # same boot: a regression is never a restart
    copy = WindowStore(2, 1, max_gap=5)
    copy.load(["a"], store.export(["a"]))
    assert copy.last_seq("a") == top and copy.boot("a") == top
    with pytest.raises(ValueError, match="seq"):
        store.update(["a"], [[1.0]], [-1])


def test_state_exported_before_epochs_still_loads():
    store = WindowStore(3, 2)
    store.update(["a"] * 3, np.ones((3, 2)), [0, 1, 2], ts=[0, 1, 2])
    full = np.frombuffer(store.export(["a"])[0], dtype=store._slot_dtype())
    old = np.empty(1, dtype=store._slot_dtype(epochs=False))
    for name in old.dtype.names:
        old[name] = full[name]
    copy = WindowStore(3, 2)
    copy.load(["a"], [old.tobytes()])
    assert copy.last_seq("a") == 2 and copy.ready("a") and copy.boot("a") is None
    out = copy.update(["a"] * 3, np.ones((3, 2)), [2, 3, 0], ts=[2, 3, 100])
    # the last seq is known to be seen; no restart before an event time is known, then one
    assert out.verdict.tolist() == [Verdict.DUPLICATE, Verdict.ACCEPTED, Verdict.LATE]
    with pytest.raises(ValueError, match="do not fit"):
        WindowStore(4, 2).load(["a"], [old.tobytes()])
