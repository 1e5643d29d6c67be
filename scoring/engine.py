"""The broker-free heart of a worker: readings in, predictions, alerts and state out.

One :meth:`ScoringEngine.process` call handles one poll batch: readings are grouped by asset
type, pushed through that type's :class:`~forewarn.windows.WindowStore` in one vectorised
update (duplicates, late readings, restarts, gaps and imputation follow the policies of
:mod:`forewarn.windows`), every completed window whose reading's ``seq`` is a multiple of the
stride is scored in one onnxruntime call per model, and the predictions feed the alert rules.
The engine also says which machines changed, so the worker can write their state to the
changelog in the same transaction.

Every reading of a batch is accounted for (:class:`BatchResult`): it is scored, held back for
reordering, or not scored for a reason in :attr:`BatchResult.not_scored` — ``duplicate`` and
``late`` (the identity rules of :mod:`forewarn.windows`, restarts included), ``warmup`` (its
machine's window is still filling after a start, a restart, a gap or a missing value),
``stride`` (its seq is not a multiple of the stride) and ``unscorable`` (no model serves its
asset type, a missing value could not be imputed, or the model's output was not finite or the
model failed on it: a NaN or infinite score never becomes a prediction or reaches the alert
rules). Nothing a reading holds makes :meth:`ScoringEngine.process` raise.

Predictions depend only on each machine's sequence of readings, never on how the stream was
cut into batches or on maintenance events, so a restored worker predicts exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from forewarn.bundle import FeatureSpec
from forewarn.contract import SCHEMA_VERSION, Alert, DecodeLimits, MaintenanceEvent, Prediction, Telemetry, encode
from forewarn.inference import OnnxModel, Scores
from forewarn.windows import NO_BOOT, Reset, Verdict, WindowBatch, WindowStore
from scoring.alerts import AlertEngine, AlertRules, Scored
from scoring.errors import RecoveryError
from scoring.registry import ModelRegistry
from scoring.settings import AlertOptions, ScoringOptions
from scoring.state import MachineRecord, PartitionState

__all__ = ["BatchResult", "Incoming", "ScoringEngine", "ShadowReport"]

log = logging.getLogger(__name__)


class Incoming(msgspec.Struct, frozen=True, gc=False):
    """One decoded reading and where it came from (a Struct: built once per reading, it must
    be cheap)."""

    reading: Telemetry
    partition: int
    ingest_ts: int | None = None


@dataclass
class ShadowReport:
    """Agreement of a candidate with the model in service over the windows both scored."""

    asset_type: str
    candidate: str
    n: int = 0
    same_decision: int = 0
    abs_p_fail: float = 0.0
    abs_rul: float = 0.0

    @property
    def agreement(self) -> float:
        return self.same_decision / self.n if self.n else 1.0


@dataclass
class BatchResult:
    predictions: list[tuple[str, bytes]] = field(default_factory=list)  # (machine_id, JSON)
    prediction_ts: list[tuple[int, int | None]] = field(default_factory=list)  # (event ts, ingest ts)
    alerts: list[Alert] = field(default_factory=list)
    dirty: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    accepted: int = 0  # readings the windows took (not duplicate, not late)
    dropped: int = 0  # duplicate or late
    unscored: int = 0  # unscorable
    # Readings of this batch not scored, by reason (duplicate, late, warmup, stride, unscorable;
    # the names PipelineStats uses), and machines whose window started afresh, by why (restart,
    # gap). Every reading of the batch is scored, counted here, or held: len(readings) ==
    # scored + sum(not_scored) + held.
    not_scored: dict[str, int] = field(default_factory=dict)
    resets: dict[str, int] = field(default_factory=dict)
    held: int = 0  # readings newly held back for reordering, less those released (may be < 0)
    inference_s: dict[str, float] = field(default_factory=dict)
    per_asset: dict[str, int] = field(default_factory=dict)
    shadow: list[ShadowReport] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return len(self.predictions)

    def count(self, reason: str, n: int) -> None:
        """Add ``n`` readings not scored for ``reason``."""
        if n:
            self.not_scored[reason] = self.not_scored.get(reason, 0) + n


_telemetry = msgspec.json.Decoder(Telemetry)


@dataclass(frozen=True)
class _Prepared:
    """One asset type's windows of a slice, ready for onnxruntime."""

    asset: str
    model: OnnxModel
    items: list[Incoming]
    batch: WindowBatch


def _score(prepared: _Prepared) -> tuple[Scores, float]:
    """Scores and seconds spent (runs on the inference thread for sliced batches)."""
    started = time.perf_counter()
    model = prepared.model
    scores = model.predict_chunks(prepared.batch.chunks(model.batch_size))
    return scores, time.perf_counter() - started


def _feature_matrix(items: list[Incoming], spec: list[FeatureSpec]) -> npt.NDArray[np.float32]:
    """``(n, len(spec))`` float32, NaN where a reading lacks a feature.

    A feature is looked up where its kind says, then in the other map (a bundle that calls an
    operating setting a sensor, or the reverse, still gets its values). The common case — every
    reading has every feature where the first one had it — runs through ``itemgetter`` in C.
    """
    n = len(items)
    nan = float("nan")
    first = items[0].reading
    in_sensors = [(f.name in first.sensors) if (f.kind == "sensor" or f.name not in first.settings) else False
                  for f in spec]
    s_names = [f.name for f, here in zip(spec, in_sensors, strict=True) if here]
    t_names = [f.name for f, here in zip(spec, in_sensors, strict=True) if not here]
    values = np.empty((n, len(spec)), dtype=np.float32)
    s_cols = [j for j, here in enumerate(in_sensors) if here]
    t_cols = [j for j, here in enumerate(in_sensors) if not here]
    get_s = itemgetter(*s_names) if s_names else None
    get_t = itemgetter(*t_names) if t_names else None
    rows_s: list[Any] = []
    rows_t: list[Any] = []
    slow: list[int] = []
    nan_s: Any = nan if len(s_names) == 1 else (nan,) * len(s_names)
    nan_t: Any = nan if len(t_names) == 1 else (nan,) * len(t_names)
    for i, it in enumerate(items):
        try:
            a = get_s(it.reading.sensors) if get_s is not None else ()
            b = get_t(it.reading.settings) if get_t is not None else ()
        except KeyError:
            slow.append(i)
            a, b = nan_s, nan_t
        rows_s.append(a)
        rows_t.append(b)
    if s_cols:
        values[:, s_cols] = np.asarray(rows_s, dtype=np.float32).reshape(n, len(s_cols))
    if t_cols:
        values[:, t_cols] = np.asarray(rows_t, dtype=np.float32).reshape(n, len(t_cols))
    columns = [(f.name, f.kind == "sensor") for f in spec]
    for i in slow:
        sensors, settings = items[i].reading.sensors, items[i].reading.settings
        values[i] = [(sensors.get(name, settings.get(name, nan)) if is_sensor
                      else settings.get(name, sensors.get(name, nan))) for name, is_sensor in columns]
    return values


def _signature(model: OnnxModel) -> str:
    return f"{model.window}x{model.n_features}:" + ",".join(model.meta.input.feature_names)


def rules_for(model: OnnxModel, options: AlertOptions) -> AlertRules:
    """The bundle's thresholds, overridden by whatever the settings set."""
    t = model.meta.thresholds
    consecutive = options.consecutive or t.consecutive
    return AlertRules(
        p_fail=options.p_fail if options.p_fail is not None else t.p_fail,
        consecutive=consecutive,
        rul_below=options.rul_below if options.rul_below is not None else t.rul_below,
        hysteresis=options.hysteresis, rul_hysteresis=options.rul_hysteresis,
        resolve_consecutive=options.resolve_consecutive or consecutive,
        critical_p_fail=options.critical_p_fail, critical_rul_fraction=options.critical_rul_fraction,
        quiet_after_repair=options.quiet_after_repair if options.quiet_after_repair is not None else model.window,
    )


class ScoringEngine:
    """Windows, models and alert state of the machines a worker owns.

    ``max_future_ms``: how far ahead of the engine's clock an event time may be (the contract's
    arrival bound, :attr:`forewarn.contract.DecodeLimits.max_future_ms`); a repair dated
    further ahead is taken as of that bound, so it cannot silence its machine for longer."""

    def __init__(self, registry: ModelRegistry, options: ScoringOptions,
                 clock: Callable[[], float] = time.time,
                 max_future_ms: int | None = DecodeLimits().max_future_ms) -> None:
        self.registry = registry
        self.options = options
        self.clock = clock
        self.max_future_ms = max_future_ms
        self.stores: dict[str, WindowStore] = {}
        self._store_sig: dict[str, str] = {}
        self.alerts = AlertEngine()
        self.machine_asset: dict[str, str] = {}
        self.machine_partition: dict[str, int] = {}
        self._warned: set[str] = set()
        self.held: dict[str, dict[int, Incoming]] = {}
        self._touched_held: list[tuple[str, int]] = []
        self._held_delta = 0
        self._pool: ThreadPoolExecutor | None = None

    # -- windows per asset type -------------------------------------------------------------

    def store_for(self, asset: str) -> tuple[OnnxModel, WindowStore] | None:
        """The model serving ``asset`` and its window store (a new, empty store when the model's
        input differs from what the current store holds)."""
        model = self.registry.serving.get(asset)
        if model is None:
            return None
        sig = _signature(model)
        store = self.stores.get(asset)
        if store is None or self._store_sig.get(asset) != sig:
            if store is not None:
                log.warning("%s: %s has a different input (%s); windows restart", asset, model.bundle.label, sig)
            # A regression within the reorder slack is never taken for a restart (nor within a
            # window: the store's floor).
            store = WindowStore(model.window, model.n_features, max_gap=self.options.max_gap,
                                max_imputed=self.options.max_imputed, fill_values=model.meta.fill_values,
                                restart_margin=self.options.reorder_slack)
            self.stores[asset] = store
            self._store_sig[asset] = sig
        return model, store

    # -- the batch --------------------------------------------------------------------------

    def process(self, readings: list[Incoming], maintenance: list[tuple[MaintenanceEvent, int]]) -> BatchResult:
        """Score one poll batch. A batch larger than ``score_slice`` readings is cut into slices
        that flow through a two-stage pipeline: onnxruntime scores slice i on its own thread
        (it releases the GIL) while this thread prepares the windows of slice i+1 and turns
        slice i-1's scores into predictions and alerts. Slices keep the batch's order, and
        predictions never depend on where a batch is cut, so the result is the same."""
        result = BatchResult()
        size = self.options.score_slice
        threaded = len(readings) > size
        in_flight: deque[tuple[_Prepared, Future[tuple[Scores, float]] | tuple[Scores, float]]] = deque()
        for start in range(0, len(readings), size):
            by_asset: dict[str, list[Incoming]] = defaultdict(list)
            for item in readings[start:start + size]:
                by_asset[item.reading.asset_type].append(item)
            for asset, items in by_asset.items():
                prepared = self._prepare(asset, items, result)
                if prepared is None:
                    continue
                scoring = self._executor().submit(_score, prepared) if threaded else _score(prepared)
                in_flight.append((prepared, scoring))
                while len(in_flight) > 1:
                    self._finish(*in_flight.popleft(), result)
        while in_flight:
            self._finish(*in_flight.popleft(), result)
        latest = None if self.max_future_ms is None else int(self.clock() * 1000) + self.max_future_ms
        for event, partition in maintenance:
            if event.event != "repair":
                continue
            known = event.asset_type or self.machine_asset.get(event.machine_id)
            model = self.registry.serving.get(known) if known else None
            quiet = self.options.alerts.quiet_after_repair
            if quiet is None:
                quiet = model.window if model is not None else 0
            result.alerts.extend(self.alerts.repair(event.machine_id, event.ts, quiet, event.identity, latest))
            self.machine_partition[event.machine_id] = partition
            result.dirty[partition].add(event.machine_id)
        return result

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        return self._pool

    def close(self) -> None:
        """Stop the inference thread (if one was started)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _prepare(self, asset: str, items: list[Incoming], result: BatchResult) -> _Prepared | None:
        """Reorder, window and select one asset type's readings of a slice, counting those that
        will not be scored; ``None`` when nothing is left to score."""
        found = self.store_for(asset)
        if found is None:
            result.unscored += len(items)
            result.count("unscorable", len(items))
            if asset not in self._warned:
                self._warned.add(asset)
                log.warning("no model serves asset type %r; its readings are not scored", asset)
            return None
        model, store = found
        n_in = len(items)
        items = self._reorder(store, items)
        result.held += self._held_delta
        held_duplicates = n_in - len(items) - self._held_delta  # copies of a reading already held
        result.dropped += held_duplicates
        result.count("duplicate", held_duplicates)
        if not items:
            self._mark_dirty(items, asset, result)
            return None
        spec = model.meta.input.features
        n = len(items)
        keys = [it.reading.machine_id for it in items]
        seq = np.fromiter((it.reading.seq for it in items), dtype=np.int64, count=n)
        boot = np.fromiter((NO_BOOT if (b := it.reading.boot) is None else b for it in items), dtype=np.int64,
                           count=n)
        ts = np.fromiter((it.reading.ts for it in items), dtype=np.int64, count=n)
        values = _feature_matrix(items, spec)
        batch = store.update(keys, values, seq, boot=boot, ts=ts)
        self._count_windows(batch, result)
        self._mark_dirty(items, asset, result)
        stride = self.options.stride
        if stride > 1 and len(batch):
            on_stride = seq[batch.rows] % stride == 0
            result.count("stride", int(len(on_stride) - on_stride.sum()))
            batch = batch.select(on_stride)
        if not len(batch):
            return None
        return _Prepared(asset, model, items, batch)

    @staticmethod
    def _count_windows(batch: WindowBatch, result: BatchResult) -> None:
        """What the windows did with a batch: dropped, restarted, broken, still filling."""
        verdict = np.bincount(batch.verdict, minlength=len(Verdict))
        reset = np.bincount(batch.reset, minlength=len(Reset))
        duplicate, late = int(verdict[Verdict.DUPLICATE]), int(verdict[Verdict.LATE])
        accepted = int(verdict[Verdict.ACCEPTED])
        broken = int(batch.broken.sum())
        result.accepted += accepted
        result.dropped += duplicate + late
        result.unscored += broken
        result.count("duplicate", duplicate)
        result.count("late", late)
        result.count("unscorable", broken)
        result.count("warmup", accepted - broken - len(batch))
        for why, code in (("restart", Reset.RESTART), ("gap", Reset.GAP)):
            if reset[code]:
                result.resets[why] = result.resets.get(why, 0) + int(reset[code])

    def _finish(self, prepared: _Prepared, scoring: Future[tuple[Scores, float]] | tuple[Scores, float],
                result: BatchResult) -> None:
        """Predictions, shadow agreement and alerts of one prepared slice, once it is scored.
        Windows the model failed on, or whose scores are not finite, are counted unscorable."""
        asset, model, items, batch = prepared.asset, prepared.model, prepared.items, prepared.batch
        try:
            scores, seconds = scoring.result() if isinstance(scoring, Future) else scoring
        except Exception:  # onnxruntime raises its own untyped errors; the batch goes on
            log.exception("%s: %s failed on %d windows; they are not scored", asset, model.bundle.label, len(batch))
            result.unscored += len(batch)
            result.count("unscorable", len(batch))
            return
        finite = np.ones(len(batch), dtype=np.bool_)
        for head in (scores.p_fail, scores.rul):
            if head is not None:
                finite &= np.isfinite(head)
        if not finite.all():
            bad = int(len(finite) - finite.sum())
            log.warning("%s: %s gave %d non-finite scores; those readings are not scored", asset,
                        model.bundle.label, bad)
            result.unscored += bad
            result.count("unscorable", bad)
            batch = batch.select(finite)
            scores = Scores(rul=None if scores.rul is None else scores.rul[finite],
                            p_fail=None if scores.p_fail is None else scores.p_fail[finite])
        rows = batch.rows
        result.inference_s[asset] = result.inference_s.get(asset, 0.0) + seconds
        if not len(rows):
            return
        result.per_asset[asset] = result.per_asset.get(asset, 0) + len(rows)
        candidate = self.registry.candidates.get(asset)
        if candidate is not None and _signature(candidate) == _signature(model):
            result.shadow.append(self._shadow(asset, model, candidate, batch, scores.p_fail, scores.rul))
        now = int(self.clock() * 1000)
        name, version = model.meta.name, model.meta.version
        p_list = scores.p_fail.tolist() if scores.p_fail is not None else None
        r_list = scores.rul.tolist() if scores.rul is not None else None
        row_list = rows.tolist()
        machine_ids: list[str] = []
        ts = np.empty(len(row_list), dtype=np.int64)
        for j, row in enumerate(row_list):
            it = items[row]
            reading = it.reading
            prediction = Prediction(SCHEMA_VERSION, reading.machine_id, asset, reading.ts, reading.seq, name,
                                    version, now, None if p_list is None else p_list[j],
                                    None if r_list is None else r_list[j], it.ingest_ts)
            result.predictions.append((reading.machine_id, encode(prediction)))
            result.prediction_ts.append((reading.ts, it.ingest_ts))
            machine_ids.append(reading.machine_id)
            ts[j] = reading.ts
        scored = Scored(machine_ids, ts, scores.p_fail, scores.rul, name, version, asset)
        latest = None if self.max_future_ms is None else now + self.max_future_ms
        events, _changed = self.alerts.observe(scored, rules_for(model, self.options.alerts), latest)
        result.alerts.extend(events)

    def _mark_dirty(self, items: list[Incoming], asset: str, result: BatchResult) -> None:
        for it in items:
            m = it.reading.machine_id
            if m not in self.machine_asset:
                self.machine_asset[m] = asset
            self.machine_partition[m] = it.partition
            result.dirty[it.partition].add(m)
        for m, partition in self._touched_held:
            self.machine_asset.setdefault(m, asset)
            self.machine_partition[m] = partition
            result.dirty[partition].add(m)
        self._touched_held.clear()

    def _reorder(self, store: WindowStore, items: list[Incoming]) -> list[Incoming]:
        """Put each machine's readings back in seq order, holding at most ``reorder_slack``
        readings that arrived ahead of a missing one (see the README's policy). Depends only
        on each machine's arrival order, never on batch boundaries."""
        slack = self.options.reorder_slack
        held_all = self.held
        out: list[Incoming] = []
        last: dict[str, int] = {}
        epochs: dict[str, int | None] = {}
        self._held_delta = 0
        for it in items:
            m = it.reading.machine_id
            s = it.reading.seq
            if m in last:
                top = last[m]
            else:
                seen = store.last_seq(m)
                top = -1 if seen is None else seen  # a machine never seen starts at seq 0
                epochs[m] = store.boot(m)
            held = held_all.get(m)
            boot, epoch = it.reading.boot, epochs[m]
            if boot is not None and epoch is not None and boot < epoch:
                out.append(it)  # from an earlier epoch: the window store drops it as late
                continue
            if top >= 0 and ((boot is not None and (epoch is None or boot > epoch))
                             or (boot is None and s < top - store.restart_margin)):
                # A new boot, or maybe a restart without one (the window store decides): what was
                # held from before it goes first, in order. A new boot is put in order from this
                # reading on; without a boot the rest of this batch passes as it came (an old copy
                # taken for a restart here must not hold back the readings after it).
                if held is not None:
                    out.extend(held[key] for key in sorted(held))
                    self._held_delta -= len(held)
                    del held_all[m]
                out.append(it)
                if boot is not None:
                    epochs[m] = boot
                    last[m] = s
                else:
                    last[m] = top
                continue
            if held is None and (s <= top + 1 or slack == 0):
                out.append(it)
                last[m] = max(s, top)
                continue
            if held is None:
                held = held_all[m] = {}
            self._touched_held.append((m, it.partition))
            if s <= top:
                out.append(it)  # a duplicate or late reading: the window store drops it
            elif s == top + 1:
                out.append(it)
                top = s
                while top + 1 in held:
                    top += 1
                    out.append(held.pop(top))
                    self._held_delta -= 1
            elif s not in held:  # (a duplicate of a held reading is dropped)
                held[s] = it
                self._held_delta += 1
                if len(held) > slack:
                    for key in sorted(held):
                        out.append(held[key])
                    self._held_delta -= len(held)
                    top = max(held)
                    held.clear()
            if not held:
                del held_all[m]
            last[m] = top
        return out

    def _shadow(self, asset: str, model: OnnxModel, candidate: OnnxModel, windows: WindowBatch,
                p_fail: npt.NDArray[np.float32] | None, rul: npt.NDArray[np.float32] | None) -> ShadowReport:
        other = candidate.predict_chunks(windows.chunks(candidate.batch_size))
        report = ShadowReport(asset, candidate.bundle.label, n=len(windows))
        threshold = rules_for(model, self.options.alerts).p_fail
        if p_fail is not None and other.p_fail is not None:
            report.same_decision = int(((p_fail >= threshold) == (other.p_fail >= threshold)).sum())
            report.abs_p_fail = float(np.abs(p_fail - other.p_fail).mean())
        else:
            report.same_decision = report.n
        if rul is not None and other.rul is not None:
            report.abs_rul = float(np.abs(rul - other.rul).mean())
        return report

    # -- state for the changelog ------------------------------------------------------------

    def export(self, machines: set[str]) -> list[tuple[str, MachineRecord]]:
        """The current state of ``machines`` as changelog records."""
        out: list[tuple[str, MachineRecord]] = []
        by_asset: dict[str, list[str]] = defaultdict(list)
        loose: list[str] = []
        for m in machines:
            asset = self.machine_asset.get(m)
            if asset is not None and asset in self.stores and m in self.stores[asset]:
                by_asset[asset].append(m)
            else:
                loose.append(m)
        for asset, keys in by_asset.items():
            sig = self._store_sig[asset]
            for key, blob in zip(keys, self.stores[asset].export(keys), strict=True):
                out.append((key, MachineRecord(asset, sig, blob, self.alerts.get(key), self._held_of(key))))
        for m in loose:
            out.append((m, MachineRecord(self.machine_asset.get(m, ""), "", b"", self.alerts.get(m),
                                         self._held_of(m))))
        return out

    def _held_of(self, machine: str) -> list[tuple[bytes, int]]:
        held = self.held.get(machine)
        if not held:
            return []
        return [(encode(it.reading), -1 if it.ingest_ts is None else it.ingest_ts)
                for _, it in sorted(held.items())]

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the state of machines in ``partitions`` (they moved to another worker)."""
        gone = [m for m, p in self.machine_partition.items() if p in partitions]
        by_asset: dict[str, list[str]] = defaultdict(list)
        for m in gone:
            asset = self.machine_asset.get(m)
            if asset is not None:
                by_asset[asset].append(m)
            del self.machine_partition[m]
            self.held.pop(m, None)
        for asset, keys in by_asset.items():
            if asset in self.stores:
                self.stores[asset].forget(keys)
        self.alerts.forget(gone)

    def restore(self, state: PartitionState) -> int:
        """Load one partition's changelog state; returns the machines whose window was kept."""
        self.forget_partitions({state.partition})
        kept = 0
        by_asset: dict[str, tuple[list[str], list[bytes]]] = defaultdict(lambda: ([], []))
        for machine, record in state.records.items():
            self.machine_partition[machine] = state.partition
            if record.asset_type:
                self.machine_asset[machine] = record.asset_type
            self.alerts.put(machine, record.alerts)
            if record.held:
                self.held[machine] = {}
                for raw, ingest in record.held:
                    reading = _telemetry.decode(raw)
                    self.held[machine][reading.seq] = Incoming(reading, state.partition, None if ingest < 0 else ingest)
            if not record.window:
                continue
            found = self.store_for(record.asset_type)
            if found is None or self._store_sig.get(record.asset_type) != record.window_sig:
                log.warning("%s: saved window (%s) does not fit the model in service; it restarts", machine,
                            record.window_sig)
                continue
            keys, blobs = by_asset[record.asset_type]
            keys.append(machine)
            blobs.append(record.window)
        for asset, (keys, blobs) in by_asset.items():
            try:
                self.stores[asset].load(keys, blobs)
            except ValueError as error:
                raise RecoveryError(str(error)) from None
            kept += len(keys)
        return kept
