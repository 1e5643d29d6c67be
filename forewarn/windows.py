"""Count-based per-machine windows: the one implementation used offline by training and
online by the scoring workers and the edge (no training/serving skew).

A :class:`WindowStore` keeps, per key (a machine, or in training a machine's run), a ring
buffer of its last ``window`` readings and a little bookkeeping. :meth:`WindowStore.update`
takes a whole poll batch as numpy arrays and returns, fully vectorised, the window that ends
at every reading whose window is complete, and what it did with every reading. Training feeds
each run in one call; a worker feeds each poll batch; both get the same windows for the same
readings in the same order (``tests/forewarn/test_windows.py`` proves it).

Stated policies, applied per key in arrival order (the ``seq`` rules only when ``seq`` is
given, the ``ts`` rules only when ``ts`` is given):

* **Identity**: per key the store keeps the *epoch* ``boot`` of the last accepted reading
  (:attr:`forewarn.contract.Telemetry.boot`; a reading without one belongs to the key's
  current epoch), its ``seq`` and ``ts``, the ``ts`` at which the current epoch started, and
  which of the 64 ``seq`` values up to the last one were accepted.
* **Restarts** (the reading is accepted and the window starts afresh at it, reported as
  :attr:`Reset.RESTART`):

  - a reading whose ``boot`` is greater than the key's epoch (the device said it restarted);
  - a reading *without* ``boot`` whose ``seq`` is more than ``restart_margin`` below the
    last accepted ``seq`` and whose ``ts`` is later than the last accepted reading's ``ts``
    (a device that restarted its counter and sends no epoch). Redelivery and replay cannot
    produce such a reading: a copy carries the event time of its original, which is not
    later than the newest reading accepted. The margin (at least the window length) keeps a
    device whose event times jitter, and whose readings are reordered in transport by a few
    places, from being taken for restarted; the cost is that a device restarted before it
    had sent ``restart_margin`` readings has its next readings dropped until its ``seq``
    passes the old one. A device whose clock also restarts (to a ``ts`` earlier than its last)
    cannot be told from a replay: it must send ``boot``.
* **Late** (dropped, :attr:`Verdict.LATE`): a reading whose ``boot`` is below the key's
  epoch; one without ``boot`` whose ``ts`` is before the start of the key's current epoch
  (sent before the device restarted, delivered after); and one whose ``seq`` is not above the
  last accepted one but which is not known to have been accepted (it arrived after newer
  readings, too late to be put in order).
* **Duplicates** (dropped, :attr:`Verdict.DUPLICATE`): a reading of the current epoch whose
  ``seq`` was already accepted (the last one, or one of the 63 before it). Neither late
  readings nor duplicates ever change windows.
* **Gaps**: when ``max_gap`` is set and ``seq`` jumps by more than ``max_gap`` the window
  restarts at that reading (a window never spans a long outage), reported as
  :attr:`Reset.GAP`.
* **Missing values** (NaN): a sensor's missing value is replaced by its last observed value
  for that key (or by ``fill_values`` before any was seen). At most ``max_imputed``
  consecutive readings may be imputed per sensor; a reading beyond that bound, or one that
  has nothing to impute from, is *broken*: it completes no window, and the window restarts
  after it.

``seq`` and ``boot`` are int64 (0 .. 2**63-1, the contract's bound) throughout: no shifts,
sums or float conversions that could overflow or lose precision.

The common batch — every key's readings in strictly increasing ``seq`` within its epoch — is
classified in numpy; only keys with a regression, a new epoch or their first reading go
through the per-reading rules in Python.

The state is explicit and exported key by key (:meth:`WindowStore.export`,
:meth:`WindowStore.load`), so a scoring worker writes it to its changelog and the edge gateway to
its database, and either rebuilds it after a crash. State exported before epochs existed still
loads (the key then has no epoch and no known ``ts``: no restart is detected until its next
accepted reading).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["NO_BOOT", "Reset", "Verdict", "WindowBatch", "WindowStore", "sliding_windows"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
CodeArray = npt.NDArray[np.int8]

_NO_SEQ = -1
NO_BOOT = -1  # a reading (or a key) without an epoch
_NO_TS = np.iinfo(np.int64).min  # no event time known
_SEEN_BITS = 64  # accepted seq values remembered per key, the last one included
_U1 = np.uint64(1)


class Verdict(enum.IntEnum):
    """What :meth:`WindowStore.update` did with one reading."""

    ACCEPTED = 0
    DUPLICATE = 1
    LATE = 2


class Reset(enum.IntEnum):
    """Why an accepted reading started its key's window afresh."""

    NONE = 0
    RESTART = 1
    GAP = 2


class WindowBatch:
    """What one :meth:`WindowStore.update` call produced.

    ``rows``: indices into the input batch of the readings whose window is complete, in
    input order; ``windows``: float32 ``(len(rows), window, n_features)``, oldest reading
    first. Per input reading: ``verdict`` (a :class:`Verdict`), ``reset`` (a :class:`Reset`:
    the window restarted at this reading) and ``broken`` (accepted, but a missing value could
    not be imputed: no window ends here and the window restarts after it); ``accepted`` is
    ``verdict == ACCEPTED``.

    The windows are not copied out until asked for: they are views into one contiguous
    ``source`` array (each key's history from its ring, then its readings of the batch), window
    ``i`` being ``source[starts[i]:starts[i] + window]``. :meth:`chunks` copies them a call's
    worth at a time, so a 100,000-reading batch never holds every window in memory at once
    and each chunk is still in cache when onnxruntime reads it.
    """

    __slots__ = ("broken", "reset", "rows", "source", "starts", "verdict", "window")

    def __init__(self, rows: IntArray, verdict: CodeArray, source: FloatArray, starts: IntArray,
                 window: int, reset: CodeArray | None = None, broken: BoolArray | None = None) -> None:
        self.rows = rows
        self.verdict = verdict
        self.source = source
        self.starts = starts
        self.window = window
        self.reset = np.zeros(len(verdict), np.int8) if reset is None else reset
        self.broken = np.zeros(len(verdict), np.bool_) if broken is None else broken

    @classmethod
    def empty(cls, window: int, n_features: int, verdict: CodeArray, reset: CodeArray | None = None,
              broken: BoolArray | None = None) -> WindowBatch:
        return cls(np.zeros(0, np.int64), verdict, np.zeros((window, n_features), np.float32),
                   np.zeros(0, np.int64), window, reset, broken)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def accepted(self) -> BoolArray:
        return np.asarray(self.verdict == Verdict.ACCEPTED, dtype=np.bool_)

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
        return WindowBatch(self.rows[mask], self.verdict, self.source, self.starts[mask], self.window, self.reset,
                           self.broken)


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


class _Epoch:
    """One key's identity state while its readings are classified one by one."""

    __slots__ = ("boot", "epoch_ts", "last_ts", "seen", "seq")

    def __init__(self, seq: int, boot: int, last_ts: int, epoch_ts: int, seen: int) -> None:
        self.seq, self.boot, self.last_ts, self.epoch_ts, self.seen = seq, boot, last_ts, epoch_ts, seen

    def start(self, seq: int, boot: int, ts: int) -> None:
        self.seq, self.boot, self.last_ts, self.epoch_ts, self.seen = seq, boot, ts, ts, 1

    def classify(self, seq: int, boot: int, ts: int, max_gap: int | None, margin: int) -> tuple[Verdict, Reset]:
        """The policies of the module docstring for one reading; updates the state when it is accepted."""
        epoch = self.boot if boot == NO_BOOT else boot
        if self.seq == _NO_SEQ:
            self.start(seq, epoch, ts)
            return Verdict.ACCEPTED, Reset.NONE
        if epoch > self.boot:
            self.start(seq, epoch, ts)
            return Verdict.ACCEPTED, Reset.RESTART
        if epoch < self.boot or (boot == NO_BOOT and ts < self.epoch_ts):
            return Verdict.LATE, Reset.NONE
        if seq > self.seq:
            step = seq - self.seq
            self.seen = ((self.seen << step) | 1) & 0xFFFF_FFFF_FFFF_FFFF if step < _SEEN_BITS else 1
            self.seq, self.last_ts = seq, ts
            return Verdict.ACCEPTED, (Reset.GAP if max_gap is not None and step > max_gap else Reset.NONE)
        behind = self.seq - seq
        if boot == NO_BOOT and self.last_ts != _NO_TS and ts > self.last_ts and behind > margin:
            self.start(seq, epoch, ts)
            return Verdict.ACCEPTED, Reset.RESTART
        if behind < _SEEN_BITS and (self.seen >> behind) & 1:
            return Verdict.DUPLICATE, Reset.NONE
        return Verdict.LATE, Reset.NONE


class WindowStore:
    """Per-key ring buffers of the last ``window`` readings, updated per batch with numpy.

    ``restart_margin``: how far (in ``seq``) a reading without ``boot`` must fall behind its
    key's last one, with a later ``ts``, to count as a restart; never less than ``window``."""

    def __init__(
        self,
        window: int,
        n_features: int,
        *,
        max_gap: int | None = None,
        max_imputed: int = 5,
        fill_values: npt.ArrayLike | None = None,
        capacity: int = 256,
        restart_margin: int = 0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if max_gap is not None and max_gap < 1:
            raise ValueError(f"max_gap must be >= 1 or None, got {max_gap}")
        if max_imputed < 0:
            raise ValueError(f"max_imputed must be >= 0, got {max_imputed}")
        if restart_margin < 0:
            raise ValueError(f"restart_margin must be >= 0, got {restart_margin}")
        self.window = window
        self.n_features = n_features
        self.max_gap = max_gap
        self.max_imputed = max_imputed
        self.restart_margin = max(window, restart_margin)
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
        self._boot = np.full(capacity, NO_BOOT, dtype=np.int64)
        self._last_ts = np.full(capacity, _NO_TS, dtype=np.int64)
        self._epoch_ts = np.full(capacity, _NO_TS, dtype=np.int64)
        self._seen = np.zeros(capacity, dtype=np.uint64)
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

    def boot(self, key: str) -> int | None:
        """The epoch of ``key``'s last accepted reading (``None``: none seen, or sent without one)."""
        slot = self._slots.get(key)
        if slot is None or self._boot[slot] == NO_BOOT:
            return None
        return int(self._boot[slot])

    def reset(self, key: str) -> None:
        """Restart ``key``'s window (e.g. after a repair); its identity state is kept."""
        slot = self._slots.get(key)
        if slot is not None:
            self._count[slot] = 0
            self._imputed[slot] = 0

    # -- state: exported and loaded key by key (a changelog record, an edge's database row) --

    @property
    def signature(self) -> str:
        """The shape of one key's state; a saved state loads only into a store of this shape."""
        return f"{self.window}x{self.n_features}"

    def _slot_dtype(self, *, epochs: bool = True) -> np.dtype[np.void]:
        """One key's exported state; ``epochs=False``: the layout exported before epochs existed."""
        w, f = self.window, self.n_features
        fields: list[tuple[str, str] | tuple[str, str, tuple[int, ...]]] = [
            ("pos", "<i8"), ("count", "<i8"), ("last_seq", "<i8"), ("ring", "<f4", (w, f)),
            ("last_valid", "<f4", (f,)), ("imputed", "<i8", (f,))]
        if epochs:
            fields += [("boot", "<i8"), ("last_ts", "<i8"), ("epoch_ts", "<i8"), ("seen", "<u8")]
        return np.dtype(fields)

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
        out["boot"] = self._boot[slots]
        out["last_ts"] = self._last_ts[slots]
        out["epoch_ts"] = self._epoch_ts[slots]
        out["seen"] = self._seen[slots]
        raw = out.tobytes()
        size = out.dtype.itemsize
        return [raw[i * size:(i + 1) * size] for i in range(len(keys))]

    def load(self, keys: Sequence[str], blobs: Sequence[bytes]) -> None:
        """Set the state of ``keys`` from :meth:`export` output (of this version or the one
        before epochs); ``ValueError`` when the blobs were exported from a store of another
        :attr:`signature`."""
        if not keys:
            return
        joined = b"".join(blobs)
        if len(blobs) != len(keys):
            raise ValueError(f"{len(blobs)} window records for {len(keys)} keys")
        for dtype in (self._slot_dtype(), self._slot_dtype(epochs=False)):
            if len(joined) == len(keys) * dtype.itemsize and all(len(b) == dtype.itemsize for b in blobs):
                break
        else:
            raise ValueError(f"{len(blobs)} window records do not fit a {self.signature} store")
        data = np.frombuffer(joined, dtype=dtype)
        slots = self._slots_for(list(keys))
        self._pos[slots] = data["pos"]
        self._count[slots] = data["count"]
        self._last_seq[slots] = data["last_seq"]
        self._ring[slots] = data["ring"]
        self._last_valid[slots] = data["last_valid"]
        self._imputed[slots] = data["imputed"]
        if dtype.names is not None and "boot" in dtype.names:
            self._boot[slots] = data["boot"]
            self._last_ts[slots] = data["last_ts"]
            self._epoch_ts[slots] = data["epoch_ts"]
            self._seen[slots] = data["seen"]
        else:  # no epoch, no known event time; the last seq was accepted
            self._boot[slots] = NO_BOOT
            self._last_ts[slots] = _NO_TS
            self._epoch_ts[slots] = _NO_TS
            self._seen[slots] = np.where(data["last_seq"] == _NO_SEQ, 0, 1).astype(np.uint64)

    def forget(self, keys: Iterable[str]) -> None:
        """Make ``keys`` as if never seen (their slot stays allocated)."""
        slots = [self._slots[k] for k in keys if k in self._slots]
        if not slots:
            return
        idx = np.asarray(slots, dtype=np.int64)
        self._count[idx] = 0
        self._pos[idx] = 0
        self._last_seq[idx] = _NO_SEQ
        self._boot[idx] = NO_BOOT
        self._last_ts[idx] = _NO_TS
        self._epoch_ts[idx] = _NO_TS
        self._seen[idx] = 0
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
        self._boot = np.concatenate([self._boot, np.full(extra, NO_BOOT, np.int64)])
        self._last_ts = np.concatenate([self._last_ts, np.full(extra, _NO_TS, np.int64)])
        self._epoch_ts = np.concatenate([self._epoch_ts, np.full(extra, _NO_TS, np.int64)])
        self._seen = np.concatenate([self._seen, np.zeros(extra, np.uint64)])
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

    # -- identity: duplicates, late readings, restarts, gaps ------------------------------

    def _classify(self, s_slots: IntArray, starts_mask: BoolArray, seq: IntArray, boot: IntArray,
                  ts: IntArray) -> tuple[CodeArray, CodeArray]:
        """Verdict and reset of every reading (sorted by key, arrival order within a key), and
        the keys' new identity state written back."""
        n = len(seq)
        firsts = np.flatnonzero(starts_mask)
        g_slots = s_slots[firsts]
        group = np.cumsum(starts_mask) - 1
        state_seq = self._last_seq[s_slots]
        fresh = state_seq == _NO_SEQ  # per reading: its key has no state yet
        # The epoch and its start: the key's, or for a new key its first reading's.
        base_boot = np.where(fresh, boot[firsts][group], self._boot[s_slots])
        epoch_ts = np.where(fresh, ts[firsts][group], self._epoch_ts[s_slots])
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = seq[:-1]
        prev[starts_mask] = state_seq[starts_mask]
        ok = ((seq > prev) & ((boot == NO_BOOT) | (boot == base_boot))
              & ~((boot == NO_BOOT) & (ts < epoch_ts)))
        bad_group = np.zeros(len(firsts), dtype=np.bool_)
        np.logical_or.at(bad_group, group, ~ok)
        verdict = np.zeros(n, dtype=np.int8)
        reset = np.zeros(n, dtype=np.int8)
        if self.max_gap is not None:
            # prev >= 0 wherever it is a seq, so the difference cannot overflow
            step = seq - np.maximum(prev, 0)
            reset[(prev != _NO_SEQ) & (step > self.max_gap)] = Reset.GAP

        # Keys whose readings all move forward in their epoch: the new state in numpy.
        lasts = np.append(firsts[1:], n) - 1
        last_seq = seq[lasts]
        behind = last_seq[group] - seq  # >= 0: seq increases within such a key
        bits = np.where(behind < _SEEN_BITS, _U1 << np.minimum(behind, _SEEN_BITS - 1).astype(np.uint64),
                        np.uint64(0))
        seen = np.bitwise_or.reduceat(bits, firsts)
        g_state = self._last_seq[g_slots]
        moved = last_seq - np.maximum(g_state, 0)
        carried = np.where((g_state != _NO_SEQ) & (moved < _SEEN_BITS),
                           self._seen[g_slots] << np.minimum(moved, _SEEN_BITS - 1).astype(np.uint64), np.uint64(0))
        good = ~bad_group
        gs = g_slots[good]
        self._last_seq[gs] = last_seq[good]
        self._boot[gs] = base_boot[firsts][good]
        self._last_ts[gs] = ts[lasts][good]
        self._epoch_ts[gs] = epoch_ts[firsts][good]
        self._seen[gs] = (seen | carried)[good]

        # The others, reading by reading.
        for g in np.flatnonzero(bad_group).tolist():
            slot = int(g_slots[g])
            state = _Epoch(int(self._last_seq[slot]), int(self._boot[slot]), int(self._last_ts[slot]),
                           int(self._epoch_ts[slot]), int(self._seen[slot]))
            for i in range(int(firsts[g]), int(lasts[g]) + 1):
                v, r = state.classify(int(seq[i]), int(boot[i]), int(ts[i]), self.max_gap, self.restart_margin)
                verdict[i], reset[i] = v, r
            self._last_seq[slot], self._boot[slot] = state.seq, state.boot
            self._last_ts[slot], self._epoch_ts[slot] = state.last_ts, state.epoch_ts
            self._seen[slot] = np.uint64(state.seen)
        return verdict, reset

    # -- the update ----------------------------------------------------------------------

    def update(
        self,
        keys: Sequence[str] | npt.NDArray[np.generic],
        values: npt.ArrayLike,
        seq: npt.ArrayLike | None = None,
        *,
        boot: npt.ArrayLike | None = None,
        ts: npt.ArrayLike | None = None,
    ) -> WindowBatch:
        """Append a batch of readings (in arrival order) and return the completed windows.

        ``keys``: one key per reading; ``values``: ``(n, n_features)``, NaN for missing;
        ``seq``: optional per-key sequence numbers (0 .. 2**63-1) used for the identity
        policies, with the optional ``boot`` (:data:`NO_BOOT` for a reading without one) and
        event time ``ts`` of each reading.
        """
        data = np.asarray(values, dtype=np.float32)
        n = len(data)
        if data.ndim != 2 or data.shape[1] != self.n_features:
            raise ValueError(f"values must have shape (n, {self.n_features}), got {data.shape}")
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} readings")
        w, f = self.window, self.n_features
        verdict = np.zeros(n, dtype=np.int8)
        reset = np.zeros(n, dtype=np.int8)
        broken_in = np.zeros(n, dtype=np.bool_)
        if n == 0:
            return WindowBatch.empty(w, f, verdict, reset, broken_in)
        slots = self._slots_for(keys)
        order = np.argsort(slots, kind="stable")
        s_slots = slots[order]
        starts_mask = np.ones(n, dtype=np.bool_)
        starts_mask[1:] = s_slots[1:] != s_slots[:-1]
        if seq is not None:
            seq_sorted = self._column(seq, n, "seq", 0)[order]
            boot_sorted = self._column(boot, n, "boot", NO_BOOT)[order]
            ts_sorted = self._column(ts, n, "ts", _NO_TS)[order]
            v_sorted, r_sorted = self._classify(s_slots, starts_mask, seq_sorted, boot_sorted, ts_sorted)
            verdict[order] = v_sorted
            keep_sorted = v_sorted == Verdict.ACCEPTED
            reset[order] = np.where(keep_sorted, r_sorted, Reset.NONE)
            order = order[keep_sorted]
            s_slots = s_slots[keep_sorted]
        m = len(order)
        if m == 0:
            return WindowBatch.empty(w, f, verdict, reset, broken_in)

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
        broken_in[order] = broken

        # Where does the unbroken stretch that each reading belongs to start?
        # A broken reading restarts the stretch after itself; at a key's last reading that mark
        # would spill into the next key's group, and the saved count covers it instead.
        fresh = reset[order] != Reset.NONE
        restart = np.where(broken, np.where(ends_mask, -1, position + 1), np.where(fresh, position, -1))
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
            batch = WindowBatch(rows[by_input].astype(np.int64), verdict, source,
                                (emit + group[emit] * (w - 1))[by_input].astype(np.int64), w, reset, broken_in)
        else:
            batch = WindowBatch.empty(w, f, verdict, reset, broken_in)

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
        return batch

    @staticmethod
    def _column(values: npt.ArrayLike | None, n: int, name: str, default: int) -> IntArray:
        """One int64 value per reading (``default`` for all when ``values`` is None)."""
        if values is None:
            return np.full(n, default, dtype=np.int64)
        arr = np.asarray(values, dtype=np.int64).reshape(-1)
        if len(arr) != n:
            raise ValueError(f"{len(arr)} {name} values for {n} readings")
        if name != "ts" and (arr < default).any():
            raise ValueError(f"{name} must be >= {default}")
        return arr
