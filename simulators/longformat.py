"""The generic long format: readings, events and (optionally) ground truth as Parquet or CSV.

``readings``: ``machine_id``, ``asset_type``, ``time``, ``seq``, then one float column per
sensor and per setting (names as in telemetry). ``events``: ``machine_id``, ``time``,
``event`` (failure|repair), ``failure_mode``. ``truth``: ``machine_id``, ``time``, ``seq``,
``health``, ``rul`` (readings until the failure reading; 0 at it), ``failure_mode``.
``time`` is Parquet ``timestamp[ms, UTC]``, or ISO-8601 with ``Z`` in CSV. See
``simulators/README.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from forewarn.contract import MaintenanceEvent
from simulators.assets import AssetSpec
from simulators.errors import SimulatorError
from simulators.fleet import Block

__all__ = [
    "EVENTS_SCHEMA",
    "TRUTH_SCHEMA",
    "FileFormat",
    "LongFormatWriter",
    "read_table",
    "readings_schema",
    "value_columns",
]

FileFormat = Literal["parquet", "csv"]
TIME = pa.timestamp("ms", tz="UTC")
KEY_COLUMNS: Final = ("machine_id", "asset_type", "time", "seq")

EVENTS_SCHEMA: Final = pa.schema([("machine_id", pa.string()), ("time", TIME), ("event", pa.string()),
                                  ("failure_mode", pa.string())])
TRUTH_SCHEMA: Final = pa.schema([("machine_id", pa.string()), ("time", TIME), ("seq", pa.int64()),
                                 ("health", pa.float64()), ("rul", pa.int64()), ("failure_mode", pa.string())])


def value_columns(specs: Sequence[AssetSpec]) -> tuple[list[str], list[str]]:
    """Sensor and setting columns for these asset types: the union, in declaration order
    (a name two types share is one column)."""
    sensors: list[str] = []
    settings: list[str] = []
    for spec in specs:
        sensors += [s for s in spec.sensor_names if s not in sensors]
        settings += [s for s in spec.setting_names if s not in settings and s not in sensors]
    return sensors, settings


def readings_schema(specs: Sequence[AssetSpec]) -> pa.Schema:
    sensors, settings = value_columns(specs)
    return pa.schema([("machine_id", pa.string()), ("asset_type", pa.string()), ("time", TIME),
                      ("seq", pa.int64())] + [(name, pa.float64()) for name in sensors + settings])


def _iso_times(ms: npt.NDArray[np.int64]) -> pa.Array:
    text = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms")
    return pa.array(np.char.add(text, "Z").tolist(), pa.string())


class _TableFile:
    """One output file, written incrementally (a Parquet row group or CSV chunk per write)."""

    def __init__(self, path: Path, schema: pa.Schema, fmt: FileFormat) -> None:
        self.path = path
        self.schema = schema
        self.fmt = fmt
        self.rows = 0
        self._writer: pq.ParquetWriter | pacsv.CSVWriter
        if fmt == "parquet":
            self._writer = pq.ParquetWriter(path, schema, compression="zstd")
        else:
            csv_schema = pa.schema([pa.field(f.name, pa.string()) if f.name == "time" else f for f in schema])
            self._writer = pacsv.CSVWriter(path, csv_schema,
                                           write_options=pacsv.WriteOptions(quoting_style="needed"))

    def write(self, columns: dict[str, pa.Array]) -> None:
        if self.fmt == "csv":
            columns = dict(columns)
            time = columns["time"]
            columns["time"] = _iso_times(np.asarray(time.cast(pa.int64())))
            schema = pa.schema([pa.field(f.name, pa.string()) if f.name == "time" else f for f in self.schema])
        else:
            schema = self.schema
        table = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()


def _ids(machine_ids: Sequence[str], machines: npt.NDArray[np.int64]) -> pa.Array:
    dictionary = pa.array(machine_ids, pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(machines.astype(np.int32)), dictionary).cast(pa.string())


class LongFormatWriter:
    """Writes readings, events and optionally truth to ``directory`` in the long format."""

    def __init__(self, directory: Path, specs: Sequence[AssetSpec], fmt: FileFormat = "parquet",
                 *, truth: bool = False) -> None:
        if fmt not in ("parquet", "csv"):
            raise SimulatorError(f"unknown format {fmt!r}", hint="use parquet or csv")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SimulatorError(f"cannot create {directory}: {error.strerror}",
                                 hint="choose a writable --out directory") from None
        self.directory = directory
        self.fmt = fmt
        ext = "parquet" if fmt == "parquet" else "csv"
        self.sensor_columns, self.setting_columns = value_columns(specs)
        self.readings = _TableFile(directory / f"readings.{ext}", readings_schema(specs), fmt)
        self.events = _TableFile(directory / f"events.{ext}", EVENTS_SCHEMA, fmt)
        self.truth = _TableFile(directory / f"truth.{ext}", TRUTH_SCHEMA, fmt) if truth else None
        # Which columns are operating settings (not sensors): training normalises sensors per
        # operating condition with them. Same file as `forewarn export` writes.
        (directory / "settings.json").write_text(json.dumps({"settings": list(self.setting_columns)}) + "\n")

    @property
    def paths(self) -> list[Path]:
        files = [self.readings, self.events] + ([self.truth] if self.truth else [])
        return [f.path for f in files]

    def write_blocks(self, blocks: Sequence[Block], machine_ids: Sequence[str]) -> None:
        """Write readings (and truth) of ``blocks`` of one asset type, ordered by machine
        then time."""
        blocks = [b for b in blocks if len(b)]
        if not blocks:
            return
        first = blocks[0]
        machines = np.concatenate([b.machine for b in blocks])
        ts = np.concatenate([b.ts for b in blocks])
        order = np.lexsort((ts, machines))
        machines, ts = machines[order], ts[order]
        sensors = np.concatenate([b.sensors for b in blocks])[order]
        settings = np.concatenate([b.settings for b in blocks])[order]
        missing = None
        if any(b.missing is not None for b in blocks):
            missing = np.concatenate([b.missing if b.missing is not None else np.zeros(b.sensors.shape, np.bool_)
                                      for b in blocks])[order]
        n = machines.shape[0]
        ids = _ids(machine_ids, machines)
        time = pa.array(ts, TIME)
        seq = pa.array(np.concatenate([b.seq for b in blocks])[order], pa.int64())
        asset = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)),
                                               pa.array([first.asset_type])).cast(pa.string())
        columns: dict[str, pa.Array] = {"machine_id": ids, "asset_type": asset,
                                        "time": time, "seq": seq}
        null = pa.nulls(n, pa.float64())
        for name in self.sensor_columns:
            columns[name] = null
        for name in self.setting_columns:
            columns[name] = null
        for j, name in enumerate(first.sensor_names):
            mask = None if missing is None else missing[:, j]
            columns[name] = pa.array(sensors[:, j], pa.float64(), mask=mask)
        for j, name in enumerate(first.setting_names):
            columns[name] = pa.array(settings[:, j], pa.float64())
        self.readings.write(columns)
        if self.truth is not None:
            truths = [b.truth for b in blocks]
            if any(t is None for t in truths):
                raise SimulatorError("truth requested but the blocks carry none")
            mode_names = np.array(truths[0].mode_names if truths[0] else (), dtype=object)
            modes = np.concatenate([t.failure_mode for t in truths if t is not None])[order]
            self.truth.write({
                "machine_id": ids, "time": time, "seq": seq,
                "health": pa.array(np.concatenate([t.health for t in truths if t is not None])[order]),
                "rul": pa.array(np.concatenate([t.rul for t in truths if t is not None])[order], pa.int64()),
                "failure_mode": pa.array(mode_names[modes].tolist(), pa.string()),
            })

    def write_events(self, events: Sequence[MaintenanceEvent]) -> None:
        """Write maintenance events, ordered by machine then time."""
        if not events:
            return
        ordered = sorted(events, key=lambda e: (e.machine_id, e.ts))
        self.events.write({
            "machine_id": pa.array([e.machine_id for e in ordered], pa.string()),
            "time": pa.array([e.ts for e in ordered], TIME),
            "event": pa.array([e.event for e in ordered], pa.string()),
            "failure_mode": pa.array([e.failure_mode for e in ordered], pa.string()),
        })

    def close(self) -> None:
        for f in (self.readings, self.events, self.truth):
            if f is not None:
                f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_table(path: Path) -> pa.Table:
    """Read a long-format file (Parquet or CSV, by extension)."""
    if not path.is_file():
        raise SimulatorError(f"{path} not found", hint="give a readings file in the generic long format")
    try:
        if path.suffix.lower() == ".csv":
            return pacsv.read_csv(path)
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise SimulatorError(f"cannot read {path}: {error}",
                             hint="give a Parquet or CSV file in the generic long format") from None

