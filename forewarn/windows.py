"""Count-based per-machine windows: the one implementation used offline by training and
online by the scoring workers (no training/serving skew).

A :class:`WindowStore` keeps, per key (a machine, or in training a machine's run), a ring
buffer of its last ``window`` readings and a little bookkeeping. :meth:`WindowStore.update`
takes a whole poll batch as numpy arrays and returns, fully vectorised, the window that ends
at every reading whose window is complete. Training feeds each run in one call; a worker
feeds each poll batch; both get the same windows for the same readings in the same order
(``tests/forewarn/test_windows.py`` proves it).

Stated policies, applied per key in arrival order:

* **Duplicates and late readings** (only when ``seq`` is given): a reading whose ``seq`` is
  not greater than the highest ``seq`` already accepted for its key is dropped. Duplicates
  therefore never change windows; a reading that arrives after a newer one is discarded.
* **Gaps**: when ``max_gap`` is set and ``seq`` jumps by more than ``max_gap`` the window
  restarts at that reading (a window never spans a long outage).
* **Missing values** (NaN): a sensor's missing value is replaced by its last observed value
  for that key (or by ``fill_values`` before any was seen). At most ``max_imputed``
  consecutive readings may be imputed per sensor; a reading beyond that bound, or one that
  has nothing to impute from, breaks the window, which restarts after it.

The state is explicit and exported key by key (:meth:`WindowStore.export`,
:meth:`WindowStore.load`), so a scoring worker writes it to its changelog and the edge gateway to
its database, and either rebuilds it after a crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["WindowBatch", "WindowStore", "sliding_windows"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_NO_SEQ = -1


class WindowBatch:
    """What one :meth:`WindowStore.update` call produced.

    ``rows``: indices into the input batch of the readings whose window is complete, in
    input order; ``windows``: float32 ``(len(rows), window, n_features)``, oldest reading
    first; ``accepted``: a mask over the input batch, False for dropped duplicates or late
    readings.

    The windows are not copied out until asked for: they are views into one contiguous
    ``source`` array (each key's history from its ring, then its readings of the batch), window
    ``i`` being ``source[starts[i]:starts[i] + window]``. :meth:`chunks` copies them a call's
    worth at a time, so a 100,000-reading batch never holds every window in memory at once
    and each chunk is still in cache when onnxruntime reads it.
    """

    __slots__ = ("accepted", "rows", "source", "starts", "window")

    def __init__(self, rows: IntArray, accepted: BoolArray, source: FloatArray, starts: IntArray,
                 window: int) -> None:
        self.rows = rows
        self.accepted = accepted
        self.source = source
        self.starts = starts
        self.window = window

    @classmethod
    def empty(cls, window: int, n_features: int, accepted: BoolArray) -> WindowBatch:
        return cls(np.zeros(0, np.int64), accepted, np.zeros((window, n_features), np.float32),
                   np.zeros(0, np.int64), window)

    def __len__(self) -> int:
        return len(self.rows)

    def _view(self) -> FloatArray:
        src = self.source
        n = len(src) - self.window + 1
        return np.lib.stride_tricks.as_strided(src, shape=(n, self.window, src.shape[1]),
                                               strides=(src.strides[0], src.strides[0], src.strides[1]),
                                               writeable=False)

    def take(self, index: IntArray | slice) -> FloatArray:
        """A copy of the windows at ``index`` (positions in ``rows``)."""
        return np.ascontiguousarray(self._view()[self.starts[index]])

    @property
    def windows(self) -> FloatArray:
        return self.take(slice(None))

    def chunks(self, size: int) -> Iterator[FloatArray]:
        """The windows in order, ``size`` at a time."""
        for start in range(0, len(self.rows), size):
            yield self.take(slice(start, start + size))

    def select(self, mask: BoolArray) -> WindowBatch:
        """The windows where ``mask`` (over ``rows``) is True."""
        return WindowBatch(self.rows[mask], self.accepted, self.source, self.starts[mask], self.window)


def sliding_windows(values: npt.ArrayLike, window: int) -> FloatArray:
    """All complete windows of one key's readings, fed in one batch through a fresh
    :class:`WindowStore` (so the offline path is the online path)."""
    data = np.asarray(values, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"values must be 2-D (readings x features), got shape {data.shape}")
    store = WindowStore(window, data.shape[1])
    return store.update(np.zeros(len(data), dtype=np.int64), data).windows


def _group_floor_cummax(marks: npt.NDArray[np.int64], floor: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Running maximum of ``marks`` within consecutive groups, where ``floor`` (one below each
    group's first position, broadcast per row) stands for "nothing yet in this group".

    Works because rows are sorted by group and every position of an earlier group is below
    the floor of a later one."""
    return np.maximum.accumulate(np.maximum(marks, floor), axis=0)


class WindowStore:
    """Per-key ring buffers of the last ``window`` readings, updated per batch with numpy."""

    def __init__(
        self,
        window: int,
        n_features: int,
        *,
        max_gap: int | None = None,
        max_imputed: int = 5,
        fill_values: npt.ArrayLike | None = None,
        capacity: int = 256,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if max_gap is not None and max_gap < 1:
            raise ValueError(f"max_gap must be >= 1 or None, got {max_gap}")
        if max_imputed < 0:
            raise ValueError(f"max_imputed must be >= 0, got {max_imputed}")
        self.window = window
        self.n_features = n_features
        self.max_gap = max_gap
        self.max_imputed = max_imputed
        if fill_values is None:
            self.fill_values = np.full(n_features, np.nan, dtype=np.float32)
        else:
            self.fill_values = np.asarray(fill_values, dtype=np.float32).reshape(n_features)
        self._slots: dict[str, int] = {}
        self._keys: list[str] = []
        capacity = max(capacity, 1)
        self._ring = np.zeros((capacity, window, n_features), dtype=np.float32)
        self._pos = np.zeros(capacity, dtype=np.int64)
        self._count = np.zeros(capacity, dtype=np.int64)
        self._last_seq = np.full(capacity, _NO_SEQ, dtype=np.int64)
        self._last_valid = np.tile(self.fill_values, (capacity, 1))
        self._imputed = np.zeros((capacity, n_features), dtype=np.int64)

    # -- state ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def ready(self, key: str) -> bool:
        """Whether ``key``'s next reading completes a window (it has ``window - 1`` readings)."""
        slot = self._slots.get(key)
        return slot is not None and self._count[slot] >= self.window - 1

    def last_seq(self, key: str) -> int | None:
        slot = self._slots.get(key)
        if slot is None or self._last_seq[slot] == _NO_SEQ:
            return None
        return int(self._last_seq[slot])

    def reset(self, key: str) -> None:
        """Restart ``key``'s window (e.g. after a repair); its seq high-water mark is kept."""
        slot = self._slots.get(key)
        if slot is not None:
            self._count[slot] = 0
            self._imputed[slot] = 0

    # -- state: exported and loaded key by key (a changelog record, an edge's database row) --

    @property
    def signature(self) -> str:
        """The shape of one key's state; a saved state loads only into a store of this shape."""
        return f"{self.window}x{self.n_features}"

    def _slot_dtype(self) -> np.dtype[np.void]:
        w, f = self.window, self.n_features
        return np.dtype([("pos", "<i8"), ("count", "<i8"), ("last_seq", "<i8"), ("ring", "<f4", (w, f)),
                         ("last_valid", "<f4", (f,)), ("imputed", "<i8", (f,))])

    def export(self, keys: Sequence[str]) -> list[bytes]:
        """The state of each key (which must be known) as bytes, in one vectorised gather."""
        if not keys:
            return []
        slots = np.fromiter((self._slots[k] for k in keys), dtype=np.int64, count=len(keys))
        out = np.empty(len(keys), dtype=self._slot_dtype())
        out["pos"] = self._pos[slots]
        out["count"] = self._count[slots]
        out["last_seq"] = self._last_seq[slots]
        out["ring"] = self._ring[slots]
        out["last_valid"] = self._last_valid[slots]
        out["imputed"] = self._imputed[slots]
        raw = out.tobytes()
        size = out.dtype.itemsize
        return [raw[i * size:(i + 1) * size] for i in range(len(keys))]

    def load(self, keys: Sequence[str], blobs: Sequence[bytes]) -> None:
        """Set the state of ``keys`` from :meth:`export` output; ``ValueError`` when the
        blobs were exported from a store of another :attr:`signature`."""
        if not keys:
            return
        joined = b"".join(blobs)
        dtype = self._slot_dtype()
        if len(blobs) != len(keys) or len(joined) != len(keys) * dtype.itemsize:
            raise ValueError(f"{len(blobs)} window records do not fit a {self.signature} store")
        data = np.frombuffer(joined, dtype=dtype)
        slots = self._slots_for(list(keys))
        self._pos[slots] = data["pos"]
        self._count[slots] = data["count"]
        self._last_seq[slots] = data["last_seq"]
        self._ring[slots] = data["ring"]
        self._last_valid[slots] = data["last_valid"]
        self._imputed[slots] = data["imputed"]

    def forget(self, keys: Iterable[str]) -> None:
        """Make ``keys`` as if never seen (their slot stays allocated)."""
        slots = [self._slots[k] for k in keys if k in self._slots]
        if not slots:
            return
        idx = np.asarray(slots, dtype=np.int64)
        self._count[idx] = 0
        self._pos[idx] = 0
        self._last_seq[idx] = _NO_SEQ
        self._imputed[idx] = 0
        self._last_valid[idx] = self.fill_values

    def _grow(self, needed: int) -> None:
        capacity = len(self._pos)
        if needed <= capacity:
            return
        new = max(needed, capacity * 2)
        extra = new - capacity
        self._ring = np.concatenate([self._ring, np.zeros((extra, self.window, self.n_features), np.float32)])
        self._pos = np.concatenate([self._pos, np.zeros(extra, np.int64)])
        self._count = np.concatenate([self._count, np.zeros(extra, np.int64)])
        self._last_seq = np.concatenate([self._last_seq, np.full(extra, _NO_SEQ, np.int64)])
        self._last_valid = np.concatenate([self._last_valid, np.tile(self.fill_values, (extra, 1))])
        self._imputed = np.concatenate([self._imputed, np.zeros((extra, self.n_features), np.int64)])

    def _slots_for(self, keys: Sequence[str] | npt.NDArray[np.generic]) -> IntArray:
        if isinstance(keys, np.ndarray):  # training: few distinct keys, maybe not strings
            unique, inverse = np.unique(keys, return_inverse=True)
            slot_of_unique: IntArray = self._slots_for([str(k) for k in unique.tolist()])
            return np.asarray(slot_of_unique[inverse.reshape(-1)], dtype=np.int64)
        slots = self._slots
        get = slots.get
        found = [get(k, -1) for k in keys]  # the worker's hot path: one dict lookup per reading
        if -1 in found:
            for i, key in enumerate(keys):
                if found[i] == -1:
                    name = key if isinstance(key, str) else str(key)
                    slot = slots.get(name)
                    if slot is None:
                        slot = slots[name] = len(self._keys)
                        self._keys.append(name)
                    found[i] = slot
            self._grow(len(self._keys))
        return np.fromiter(found, dtype=np.int64, count=len(found))

    # -- the update ----------------------------------------------------------------------

    def update(
        self,
        keys: Sequence[str] | npt.NDArray[np.generic],
        values: npt.ArrayLike,
        seq: npt.ArrayLike | None = None,
    ) -> WindowBatch:
        """Append a batch of readings (in arrival order) and return the completed windows.

        ``keys``: one key per reading; ``values``: ``(n, n_features)``, NaN for missing;
        ``seq``: optional per-key sequence numbers used for the duplicate/late/gap policies.
        """
        data = np.asarray(values, dtype=np.float32)
        n = len(data)
        if data.ndim != 2 or data.shape[1] != self.n_features:
            raise ValueError(f"values must have shape (n, {self.n_features}), got {data.shape}")
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} readings")
        w, f = self.window, self.n_features
        if n == 0:
            return WindowBatch.empty(w, f, np.ones(0, np.bool_))
        slots = self._slots_for(keys)
        order = np.argsort(slots, kind="stable")
        s_slots = slots[order]
        accepted = np.ones(n, dtype=np.bool_)
        gap_reset = np.zeros(n, dtype=np.bool_)
        seq_sorted: IntArray | None = None
        if seq is not None:
            seq_arr = np.asarray(seq, dtype=np.int64).reshape(-1)
            if len(seq_arr) != n:
                raise ValueError(f"{len(seq_arr)} seq values for {n} readings")
            if (seq_arr < 0).any():
                raise ValueError("seq must be >= 0")
            seq_sorted = seq_arr[order]
            # Highest seq seen before each reading of its key: earlier in the batch or in state.
            shift = np.int64(1) << np.int64(40)
            if int(seq_sorted.max()) >= int(shift):
                raise ValueError("seq must be < 2**40")
            combined = s_slots * shift + seq_sorted
            running = np.maximum.accumulate(combined)
            prev_in_batch = np.empty(n, dtype=np.int64)
            prev_in_batch[0] = -1
            prev_in_batch[1:] = running[:-1]
            same_group = prev_in_batch >= s_slots * shift
            prev = np.maximum(np.where(same_group, prev_in_batch - s_slots * shift, _NO_SEQ),
                              self._last_seq[s_slots])
            keep_sorted = seq_sorted > prev
            accepted[order] = keep_sorted
            if self.max_gap is not None:
                gap_reset_sorted = keep_sorted & (prev != _NO_SEQ) & (seq_sorted - prev > self.max_gap)
                gap_reset[order] = gap_reset_sorted
            order = order[keep_sorted]
            s_slots = s_slots[keep_sorted]
            seq_sorted = seq_sorted[keep_sorted]
        m = len(order)
        if m == 0:
            return WindowBatch.empty(w, f, accepted)

        # Group layout of the kept, sorted readings.
        starts_mask = np.ones(m, dtype=np.bool_)
        starts_mask[1:] = s_slots[1:] != s_slots[:-1]
        group_start = np.maximum.accumulate(np.where(starts_mask, np.arange(m), 0))
        position = np.arange(m, dtype=np.int64)
        k = position - group_start  # index of the reading within its key in this batch
        ends_mask = np.ones(m, dtype=np.bool_)
        ends_mask[:-1] = starts_mask[1:]

        # Missing values: carry the last observed value forward, at most max_imputed times.
        raw = data[order]
        missing = np.isnan(raw)
        floor = (group_start - 1)[:, None]
        last_pos = _group_floor_cummax(np.where(missing, -1, position[:, None]), floor)
        from_state = last_pos == floor
        safe_pos = np.where(from_state, 0, last_pos)
        filled = np.where(from_state, self._last_valid[s_slots], raw[safe_pos, np.arange(f)[None, :]])
        consecutive = np.where(from_state, self._imputed[s_slots] + k[:, None] + 1, position[:, None] - last_pos)
        broken = np.asarray(((consecutive > self.max_imputed) & missing).any(axis=1)
                            | np.isnan(filled).any(axis=1), dtype=np.bool_)

        # Where does the unbroken stretch that each reading belongs to start?
        # A broken reading restarts the stretch after itself; at a key's last reading that mark
        # would spill into the next key's group, and the saved count covers it instead.
        restart = np.where(broken, np.where(ends_mask, -1, position + 1), np.where(gap_reset[order], position, -1))
        seg_start = _group_floor_cummax(restart, group_start - 1)
        in_batch_start = seg_start >= group_start
        count = np.where(in_batch_start, position - seg_start + 1, self._count[s_slots] + k + 1)
        complete = (count >= w) & ~broken

        # Lay the windows out in one array: per key, its last w-1 ring entries (oldest first,
        # filled only for keys with a window reaching back into them), then its readings of this
        # batch. The window ending at sorted reading p then starts at p + group * (w - 1).
        firsts = np.flatnonzero(starts_mask)  # sorted position of each key's first reading
        emit = np.flatnonzero(complete)
        if len(emit):
            group = np.cumsum(starts_mask) - 1
            source = np.empty((m + len(firsts) * (w - 1), f), dtype=np.float32)
            source[position + (group + 1) * (w - 1)] = filled
            needs = np.unique(group[emit[k[emit] < w - 1]])
            if len(needs) and w > 1:
                h_slots = s_slots[firsts[needs]][:, None]
                back = np.arange(-(w - 1), 0, dtype=np.int64)[None, :]
                block = (firsts[needs] + needs * (w - 1))[:, None]
                source[block + back + (w - 1)] = self._ring[h_slots, (self._pos[h_slots] + back) % w]
            rows = order[emit]
            by_input = np.argsort(rows, kind="stable")
            batch = WindowBatch(rows[by_input].astype(np.int64), accepted, source,
                                (emit + group[emit] * (w - 1))[by_input].astype(np.int64), w)
        else:
            batch = WindowBatch.empty(w, f, accepted)

        # Write the newest (at most w) readings of each key into its ring and save the state.
        n_in_group = np.diff(np.append(firsts, m))
        group_size = np.repeat(n_in_group, n_in_group)
        write = k >= group_size - w
        w_slots = s_slots[write]
        self._ring[w_slots, (self._pos[w_slots] + k[write]) % w] = filled[write]
        last = np.flatnonzero(ends_mask)
        l_slots = s_slots[last]
        self._pos[l_slots] = (self._pos[l_slots] + n_in_group) % w
        self._count[l_slots] = np.where(broken[last], 0, np.minimum(count[last], w))
        self._last_valid[l_slots] = filled[last]
        self._imputed[l_slots] = np.where(missing[last], consecutive[last], 0)
        if seq_sorted is not None:
            self._last_seq[l_slots] = seq_sorted[last]
        return batch
