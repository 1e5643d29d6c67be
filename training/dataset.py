"""Reading the generic long format (Parquet or CSV) with checks that name the file, the row
or the column and what is wrong.

Readings: ``machine_id``, optional ``asset_type``, ``time``, optional ``seq``, then one
numeric column per sensor and per operating setting. Events: ``machine_id``, ``time``,
``event`` (failure|repair|inspection), optional ``failure_mode``. ``time`` is a cycle index
(integer) or a timestamp (Parquet timestamp or ISO-8601 text); timestamps become UTC epoch
milliseconds.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pandas as pd

from training.errors import DataError

__all__ = ["Events", "Readings", "find_file", "guess_settings", "load_events", "load_readings", "run_to_failure_events"]

log = logging.getLogger(__name__)

KEY_COLUMNS: Final = ("machine_id", "asset_type", "time", "seq", "boot")
EVENT_KINDS: Final = ("failure", "repair", "inspection")
TimeKind = Literal["index", "timestamp"]

# Unit hints from common column-name suffixes (the long format itself carries no units).
_UNIT_SUFFIXES: Final = {
    "_c": "degC", "_degc": "degC", "_k": "K", "_f": "degF", "_bar": "bar", "_psi": "psi", "_kpa": "kPa",
    "_pa": "Pa", "_mm_s": "mm/s", "_g": "g", "_rpm": "rpm", "_hz": "Hz", "_a": "A", "_v": "V",
    "_kw": "kW", "_w": "W", "_pct": "%", "_m3_h": "m3/h", "_l_min": "l/min", "_nm": "N·m", "_db": "dB",
}


_SETTING_NAME = re.compile(r"setting|setpoint|set_point|operating|op_?cond", re.IGNORECASE)


def guess_settings(columns: list[str]) -> list[str]:
    """Columns whose names say they are operating settings (``setting1``, ``speed_setpoint_rpm``,
    ``op_setting_2``); pass ``--settings`` to say so explicitly."""
    return [c for c in columns if _SETTING_NAME.search(c)]


def unit_from_name(name: str) -> str | None:
    lowered = name.lower()
    for suffix in sorted(_UNIT_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return _UNIT_SUFFIXES[suffix]
    return None


@dataclass
class Readings:
    """Validated readings, sorted by machine then time (then seq)."""

    frame: pd.DataFrame
    path: Path
    time_kind: TimeKind
    value_columns: list[str]
    sha256: str
    asset_types: list[str] = field(default_factory=list)


@dataclass
class Events:
    frame: pd.DataFrame
    path: Path | None
    sha256: str | None


def find_file(path: str | Path, stem: str) -> Path:
    """``path`` itself, or ``path/<stem>.parquet|.csv`` when ``path`` is a folder."""
    p = Path(path)
    if p.is_dir():
        for ext in (".parquet", ".pq", ".csv"):
            candidate = p / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
        raise DataError(f"{p}: no {stem}.parquet or {stem}.csv in this folder")
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    return p


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_table(path: Path) -> tuple[pd.DataFrame, bool]:
    """The file as a frame, and whether row numbers are CSV lines (header = line 1)."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pandas(), False
        if suffix == ".csv":
            return pd.read_csv(path, low_memory=False), True
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid CSV: {str(error).splitlines()[0]}") from None
    except Exception as error:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise DataError(f"{path}: cannot read as {suffix[1:]}: {str(error).splitlines()[0]}") from None
    raise DataError(f"{path}: unknown file type {suffix!r}", hint="use .parquet or .csv")


def _where(path: Path, csv: bool, index: int) -> str:
    return f"{path}: line {index + 2}" if csv else f"{path}: row {index + 1}"


def _require(frame: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    if frame.empty and len(frame.columns) == 0:
        raise DataError(f"{path}: the file is empty")
    for column in columns:
        if column not in frame.columns:
            found = ", ".join(map(str, frame.columns[:12]))
            raise DataError(f"{path}: missing required column {column!r} (found: {found})")
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows")


def _parse_time(frame: pd.DataFrame, path: Path, csv: bool) -> tuple[np.ndarray[Any, Any], TimeKind]:
    column = frame["time"]
    missing = column.isna().to_numpy()
    if missing.any():
        raise DataError(f"{_where(path, csv, int(np.argmax(missing)))}, column 'time': missing value")
    if pd.api.types.is_datetime64_any_dtype(column):
        stamps = pd.to_datetime(column, utc=True)
        return stamps.to_numpy(dtype="datetime64[ms]").astype(np.int64), "timestamp"
    if pd.api.types.is_bool_dtype(column):
        raise DataError(f"{path}: column 'time' holds booleans, expected a cycle index or timestamps")
    if pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{_where(path, csv, i)}, column 'time': {values[i]!r} is not a whole cycle index")
        return values.astype(np.int64), "index"
    text = column.astype(str)
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().all():
        return _parse_time(frame.assign(time=numeric), path, csv)
    if pd.notna(numeric.iloc[0]):
        i = int(np.argmax(numeric.isna().to_numpy()))
        raise DataError(f"{_where(path, csv, i)}, column 'time': {text.iloc[i]!r} is not a cycle index "
                        "like the rows before it")
    stamps = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    bad = stamps.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{_where(path, csv, i)}, column 'time': {text.iloc[i]!r} is neither a cycle index "
                        "nor an ISO-8601 timestamp")
    return stamps.to_numpy(dtype="datetime64[ms]").astype(np.int64), "timestamp"


def _machine_ids(frame: pd.DataFrame, path: Path, csv: bool) -> pd.Series:
    ids = frame["machine_id"]
    missing = ids.isna().to_numpy() | (ids.astype(str).str.strip() == "").to_numpy()
    if missing.any():
        raise DataError(f"{_where(path, csv, int(np.argmax(missing)))}, column 'machine_id': missing value")
    return ids.astype(str)


def _numeric(frame: pd.DataFrame, column: str, path: Path, csv: bool) -> np.ndarray[Any, Any]:
    series = frame[column]
    values: np.ndarray[Any, Any]
    if pd.api.types.is_bool_dtype(series):
        values = series.to_numpy(dtype=np.float64)
        return values
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        coerced = pd.to_numeric(series, errors="coerce")
        bad = (coerced.isna() & series.notna() & (series.astype(str).str.strip() != "")).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{_where(path, csv, i)}, column {column!r}: {series.iloc[i]!r} is not a number")
        values = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(values)
    if infinite.any():
        log.warning("%s: column %s has %d infinite values; treated as missing", path, column, int(infinite.sum()))
        values = np.where(infinite, np.nan, values)
    return values


def load_readings(path: str | Path, *, asset_type: str | None = None,
                  features: list[str] | None = None) -> Readings:
    """Read, check and sort readings; keep one asset type's rows when ``asset_type`` is given."""
    file = find_file(path, "readings")
    raw, csv = _read_table(file)
    _require(raw, file, ("machine_id", "time"))
    ids = _machine_ids(raw, file, csv)
    times, kind = _parse_time(raw, file, csv)
    frame = pd.DataFrame({"machine_id": ids.to_numpy(), "time": times})
    types: list[str] = []
    if "asset_type" in raw.columns:
        frame["asset_type"] = raw["asset_type"].fillna("").astype(str).to_numpy()
        types = sorted(t for t in frame["asset_type"].unique() if t)
    if "seq" in raw.columns:
        seq = _numeric(raw, "seq", file, csv)
        if np.isnan(seq).any():
            raise DataError(f"{_where(file, csv, int(np.argmax(np.isnan(seq))))}, column 'seq': missing value")
        frame["seq"] = seq.astype(np.int64)
    if "boot" in raw.columns:  # a device's restart epoch: seq starts again with each new boot
        frame["boot"] = pd.to_numeric(raw["boot"], errors="coerce").astype("Int64").array
    value_columns = [str(c) for c in raw.columns if c not in KEY_COLUMNS]
    if features is not None:
        unknown = [f for f in features if f not in value_columns]
        if unknown:
            raise DataError(f"{file}: no column {unknown[0]!r} for --features (found: {', '.join(value_columns)})")
        value_columns = list(features)
    if not value_columns:
        raise DataError(f"{file}: no sensor columns besides {', '.join(c for c in KEY_COLUMNS if c in raw.columns)}")
    for column in value_columns:
        frame[column] = _numeric(raw, column, file, csv)
    if asset_type is not None and "asset_type" in frame.columns:
        keep = frame["asset_type"].to_numpy() == asset_type
        if not keep.any():
            raise DataError(f"{file}: no readings with asset_type {asset_type!r} (found: {', '.join(types)})")
        frame = frame[keep]
        types = [asset_type]
    frame = frame.sort_values(["machine_id", "time", *(["seq"] if "seq" in frame.columns else [])],
                              kind="stable").reset_index(drop=True)
    before = len(frame)
    identity = ["machine_id", *(["boot"] if "boot" in frame.columns else []), "seq"]
    frame = frame.drop_duplicates(identity if "seq" in frame.columns else ["machine_id", "time"])
    if len(frame) < before:
        log.warning("%s: dropped %d duplicated readings", file, before - len(frame))
    # Columns another asset type owns are empty here.
    value_columns = [c for c in value_columns if frame[c].notna().any()]
    if not value_columns:
        raise DataError(f"{file}: every sensor column is empty for these machines")
    return Readings(frame=frame.reset_index(drop=True), path=file, time_kind=kind,
                    value_columns=value_columns, sha256=_sha256(file), asset_types=types)


def load_events(path: str | Path, time_kind: TimeKind) -> Events:
    file = find_file(path, "events")
    raw, csv = _read_table(file)
    _require(raw, file, ("machine_id", "time", "event"))
    ids = _machine_ids(raw, file, csv)
    times, kind = _parse_time(raw, file, csv)
    if kind != time_kind:
        raise DataError(f"{file}: column 'time' holds {kind} values but the readings use {time_kind} values")
    events = raw["event"].astype(str).str.strip().str.lower()
    bad = ~events.isin(EVENT_KINDS).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{_where(file, csv, i)}, column 'event': {raw['event'].iloc[i]!r} is not one of "
                        f"{', '.join(EVENT_KINDS)}")
    frame = pd.DataFrame({"machine_id": ids.to_numpy(), "time": times, "event": events.to_numpy()})
    if "failure_mode" in raw.columns:
        frame["failure_mode"] = raw["failure_mode"].to_numpy()
    # Each event once: by its event_id where it has one, else by machine, time and kind.
    if "event_id" in raw.columns:
        frame["event_id"] = raw["event_id"].to_numpy()
    identity = frame["machine_id"].astype(str) + "@" + frame["time"].astype(str) + "/" + frame["event"]
    if "event_id" in frame.columns:
        identity = frame["event_id"].where(frame["event_id"].notna(), identity).astype(str)
    duplicated = identity.duplicated().to_numpy()
    if duplicated.any():
        log.warning("%s: dropped %d maintenance events seen more than once", file, int(duplicated.sum()))
        frame = frame[~duplicated]
    frame = frame.sort_values(["machine_id", "time"], kind="stable").reset_index(drop=True)
    return Events(frame=frame, path=file, sha256=_sha256(file))


def run_to_failure_events(readings: Readings) -> Events:
    """``--run-to-failure``: each machine's last reading is its failure."""
    last = readings.frame.groupby("machine_id", sort=True)["time"].max()
    frame = pd.DataFrame({"machine_id": last.index.to_numpy(), "time": last.to_numpy(), "event": "failure"})
    return Events(frame=frame, path=None, sha256=None)
