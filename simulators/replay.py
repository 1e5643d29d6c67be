"""Replay: publish a file in the generic long format as live telemetry.

Any readings table works as long as it has ``machine_id`` and ``time`` columns. ``time``
is a timestamp (UTC; naive means UTC) or a cycle index, which becomes
``start + time * sample_period``. Numeric columns other than ``seq`` are sensors, except
the asset type's known settings and those named with ``settings``. Machine ids without a
site (``"17"``) get one (``"replay/17"``). Rows are sent in time order; events (an events
file, or the run-to-failure convention that each machine's last row is its failure) follow
the readings they belong after.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from forewarn.contract import MaintenanceEvent, MaintenanceKind
from simulators.assets import ASSET_TYPES
from simulators.errors import SimulatorError
from simulators.fleet import Block
from simulators.longformat import read_table
from simulators.messages import MessageBuilder

__all__ = ["ReplayData", "load_replay", "run_replay"]

log = logging.getLogger(__name__)

_BAD_ID_CHARS = re.compile(r"[/\s#+]+")
_RESERVED = frozenset({"machine_id", "asset_type", "time", "seq", "health", "rul", "failure_mode", "event"})


def _clean_part(text: str) -> str:
    return _BAD_ID_CHARS.sub("-", text.strip()) or "unknown"


def normalise_machine_id(raw: str, site: str) -> str:
    """A contract-valid machine_id: ``site/machine`` with no ``/``, ``#``, ``+`` or spaces inside."""
    head, sep, tail = raw.partition("/")
    if sep:
        return f"{_clean_part(head)}/{_clean_part(tail)}"
    return f"{_clean_part(site)}/{_clean_part(raw)}"


@dataclass
class _Columns:
    asset_type: str
    sensors: list[str]
    settings: list[str]


@dataclass
class ReplayData:
    """A readings table prepared for replay, in time order."""

    machine_ids: list[str]
    machine: npt.NDArray[np.int64]
    asset: npt.NDArray[np.int64]
    asset_columns: list[_Columns]
    ts: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]
    table: pa.Table
    events: list[MaintenanceEvent]

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @property
    def last_ms(self) -> int | None:
        """The latest event time of its readings and events (None when it has neither)."""
        times = [int(self.ts.max())] if len(self) else []
        times += [e.ts for e in self.events]
        return max(times, default=None)

    def blocks(self, rows: int) -> Iterator[tuple[list[Block], list[MaintenanceEvent]]]:
        """Consecutive chunks of about ``rows`` readings (one block per asset type each),
        with the events due after them."""
        n = len(self)
        e = 0
        events = self.events
        for lo in range(0, n, max(1, rows)):
            hi = min(n, lo + rows)
            blocks = []
            for a, columns in enumerate(self.asset_columns):
                idx = lo + np.flatnonzero(self.asset[lo:hi] == a)
                if idx.size:
                    blocks.append(self._block(columns, idx))
            last_ts = int(self.ts[hi - 1])
            due: list[MaintenanceEvent] = []
            while e < len(events) and (events[e].ts <= last_ts or hi == n):
                due.append(events[e])
                e += 1
            yield blocks, due

    def _block(self, columns: _Columns, idx: npt.NDArray[np.int64]) -> Block:
        take = pa.array(idx)

        def matrix(names: Sequence[str]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
            values = np.empty((idx.size, len(names)))
            nulls = np.zeros((idx.size, len(names)), dtype=np.bool_)
            for j, name in enumerate(names):
                col = self.table.column(name).take(take)
                nulls[:, j] = np.asarray(col.is_null())
                values[:, j] = np.asarray(col.fill_null(0.0).cast(pa.float64()))
            return values, nulls

        sensors, missing = matrix(columns.sensors)
        settings, setting_nulls = matrix(columns.settings)
        return Block(columns.asset_type, tuple(columns.sensors), tuple(columns.settings), self.machine[idx],
                     self.ts[idx], self.seq[idx], sensors, settings, missing if missing.any() else None,
                     settings_missing=setting_nulls if setting_nulls.any() else None)


def _times_ms(column: pa.ChunkedArray, start_ms: int, period_ms: int) -> npt.NDArray[np.int64]:
    kind = column.type
    if pa.types.is_timestamp(kind):
        return np.asarray(column.cast(pa.timestamp("ms", tz=kind.tz)).cast(pa.int64()), dtype=np.int64)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        cycles = np.asarray(column.cast(pa.float64()), dtype=np.float64)
        result: npt.NDArray[np.int64] = (start_ms + np.rint(cycles * period_ms)).astype(np.int64)
        return result
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            parsed = pc.strptime(column, format="%Y-%m-%dT%H:%M:%S", unit="ms", error_is_null=False)
        except pa.ArrowInvalid:
            raise SimulatorError("cannot parse the time column",
                                 hint="use ISO-8601 timestamps with Z or a numeric cycle index") from None
        return np.asarray(parsed.cast(pa.int64()), dtype=np.int64)
    raise SimulatorError(f"time column has unsupported type {kind}", hint="use a timestamp or a cycle index")


def load_replay(path: Path, *, events_path: Path | None = None, asset_type: str | None = None,
                site: str = "replay", settings: Sequence[str] = (), start_ms: int = 0,
                period_ms: int = 60_000, failure_at_end: bool = False) -> ReplayData:
    """Read and prepare ``path`` (Parquet or CSV) for replay."""
    table = read_table(path)
    names = set(table.column_names)
    for needed in ("machine_id", "time"):
        if needed not in names:
            raise SimulatorError(f"{path} has no {needed} column", hint="see the generic long format in the README")
    if "asset_type" not in names and not asset_type:
        raise SimulatorError(f"{path} has no asset_type column", hint="name one with --asset-type")
    n = table.num_rows
    raw_ids = [str(v) for v in table.column("machine_id").cast(pa.string()).to_pylist()]
    ids = [normalise_machine_id(v, site) for v in raw_ids]
    registry = sorted(set(ids))
    index = {mid: i for i, mid in enumerate(registry)}
    machine = np.fromiter((index[m] for m in ids), dtype=np.int64, count=n)
    assets = (table.column("asset_type").cast(pa.string()).to_pylist() if "asset_type" in names
              else [asset_type] * n)
    asset_names = sorted({str(a or asset_type or "generic") for a in assets})
    asset_index = {a: i for i, a in enumerate(asset_names)}
    asset = np.fromiter((asset_index[str(a or asset_type or "generic")] for a in assets), dtype=np.int64, count=n)
    ts = _times_ms(table.column("time"), start_ms, period_ms)
    numeric = [c for c in table.column_names if c not in _RESERVED and (
        pa.types.is_integer(table.schema.field(c).type) or pa.types.is_floating(table.schema.field(c).type))]
    columns: list[_Columns] = []
    for a, name in enumerate(asset_names):
        rows = pa.array(np.flatnonzero(asset == a))
        present = [c for c in numeric if table.column(c).take(rows).null_count < len(rows)]
        known = ASSET_TYPES[name].setting_names if name in ASSET_TYPES else ()
        setting_cols = [c for c in present if c in known or c in settings]
        columns.append(_Columns(name, [c for c in present if c not in setting_cols], setting_cols))
    order = np.lexsort((machine, ts))
    if "seq" in names:
        seq = np.asarray(table.column("seq").cast(pa.int64()).fill_null(0), dtype=np.int64)
    else:
        seq = np.zeros(n, dtype=np.int64)
        by_machine = np.lexsort((ts, machine))
        counts = np.bincount(machine, minlength=len(registry))
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        seq[by_machine] = np.arange(n) - np.repeat(starts, counts)
    events = _load_events(events_path, site, asset_names, registry, machine, asset, ts, failure_at_end,
                          start_ms, period_ms)
    ordered = table.take(pa.array(order))
    return ReplayData(registry, machine[order], asset[order], columns, ts[order], seq[order], ordered, events)


def _load_events(path: Path | None, site: str, asset_names: list[str], registry: list[str],
                 machine: npt.NDArray[np.int64], asset: npt.NDArray[np.int64], ts: npt.NDArray[np.int64],
                 failure_at_end: bool, start_ms: int, period_ms: int) -> list[MaintenanceEvent]:
    asset_of: dict[str, str] = {}
    for m, a in zip(machine.tolist(), asset.tolist(), strict=True):
        asset_of.setdefault(registry[m], asset_names[a])
    events: list[MaintenanceEvent] = []
    if path is not None:
        table = read_table(path)
        for needed in ("machine_id", "time", "event"):
            if needed not in table.column_names:
                raise SimulatorError(f"{path} has no {needed} column", hint="see the events file in the README")
        times = _times_ms(table.column("time"), start_ms, period_ms).tolist()
        modes = (table.column("failure_mode").to_pylist() if "failure_mode" in table.column_names
                 else [None] * table.num_rows)
        for raw, when, kind, mode in zip(table.column("machine_id").cast(pa.string()).to_pylist(), times,
                                         table.column("event").to_pylist(), modes, strict=True):
            if kind not in ("failure", "repair", "inspection"):
                raise SimulatorError(f"unknown event {kind!r} in {path}", hint="use failure, repair or inspection")
            mid = normalise_machine_id(str(raw), site)
            events.append(_event(mid, int(when), kind, mode, asset_of.get(mid)))
    if failure_at_end:
        last = np.full(len(registry), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, machine, ts)
        for m, when in enumerate(last.tolist()):
            events.append(_event(registry[m], int(when), "failure", None, asset_of.get(registry[m])))
    events.sort(key=lambda e: (e.ts, e.machine_id))
    return events


def _event(machine: str, ts: int, kind: MaintenanceKind, mode: str | None, asset: str | None) -> MaintenanceEvent:
    """A replayed event; its id is what it is (machine, kind, time), so replaying the same file
    twice sends the same events again, which consumers apply once."""
    return MaintenanceEvent(1, machine, ts, kind, mode, asset, event_id=f"{machine}/{kind}@{ts}")


def run_replay(data: ReplayData, builder: MessageBuilder, *, rate: float = 0.0, stop: threading.Event | None = None,
               progress: Callable[[str], None] | None = None, progress_s: float = 10.0) -> float:
    """Publish ``data`` through ``builder`` at about ``rate`` readings/s (0: unpaced);
    returns the seconds it took."""
    stop = stop or threading.Event()
    chunk = 1000 if rate <= 0 else max(1, min(1000, int(rate / 10)))
    started = last = time.monotonic()
    sent = 0
    for blocks, events in data.blocks(chunk):
        if stop.is_set():
            break
        builder.publish(blocks, events)
        sent += sum(len(b) for b in blocks)
        if rate > 0:
            delay = started + sent / rate - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
        now = time.monotonic()
        if progress is not None and now - last >= progress_s:
            progress(f"replayed {sent}/{len(data)} readings ({sent / (now - started):,.0f}/s)")
            last = now
    builder.close()
    return time.monotonic() - started
