"""The embedded store: DuckDB tables the background consumer writes and the pages read.

The store is a cache of Kafka, never the source of truth. Each batch of records is written in
one DuckDB transaction together with the next Kafka offset of every partition it came from,
so after a restart (with a store file) the consumer resumes exactly where the store ends:
nothing is counted twice and nothing is missed.

Retention is bounded twice: by event time (``retention_hours`` behind the newest record) and
by row count (oldest first), so the store stays small whatever flows through Kafka.

DuckDB connections are not thread-safe: the writer uses the store's own connection under a
lock, and every reader gets a cursor of its own (:meth:`Store.read`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import duckdb
import pandas as pd

from dashboard.errors import StoreError

__all__ = ["TABLE_COLUMNS", "Batch", "Retention", "Store"]

log = logging.getLogger(__name__)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS predictions (
    machine_id VARCHAR, site VARCHAR, asset_type VARCHAR, ts BIGINT, seq BIGINT, model VARCHAR,
    model_version VARCHAR, scored_at BIGINT, p_fail DOUBLE, rul DOUBLE, ingest_ts BIGINT, kafka_ts BIGINT,
    received_at BIGINT);
CREATE TABLE IF NOT EXISTS machines (
    machine_id VARCHAR PRIMARY KEY, site VARCHAR, asset_type VARCHAR, ts BIGINT, seq BIGINT, model VARCHAR,
    model_version VARCHAR, p_fail DOUBLE, rul DOUBLE, scored_at BIGINT, telemetry_ts BIGINT);
CREATE TABLE IF NOT EXISTS telemetry (
    machine_id VARCHAR, asset_type VARCHAR, ts BIGINT, seq BIGINT, sensor VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS maintenance (
    machine_id VARCHAR, site VARCHAR, asset_type VARCHAR, ts BIGINT, event VARCHAR, failure_mode VARCHAR,
    received_at BIGINT);
CREATE TABLE IF NOT EXISTS alert_events (
    alert_id VARCHAR, machine_id VARCHAR, site VARCHAR, state VARCHAR, severity VARCHAR, rule VARCHAR,
    opened_at BIGINT, ts BIGINT, model VARCHAR, model_version VARCHAR, asset_type VARCHAR, p_fail DOUBLE,
    rul DOUBLE, message VARCHAR, acknowledged_by VARCHAR, received_at BIGINT);
CREATE TABLE IF NOT EXISTS dlq_counts (
    bucket BIGINT, reason VARCHAR, n BIGINT, PRIMARY KEY (bucket, reason));
CREATE TABLE IF NOT EXISTS dlq_samples (
    received_at BIGINT, reason VARCHAR, detail VARCHAR, mqtt_topic VARCHAR, size BIGINT);
CREATE TABLE IF NOT EXISTS throughput (
    bucket BIGINT, role VARCHAR, n BIGINT, PRIMARY KEY (bucket, role));
CREATE TABLE IF NOT EXISTS models (
    asset_type VARCHAR, version VARCHAR, name VARCHAR, created_at VARCHAR, meta VARCHAR, received_at BIGINT,
    PRIMARY KEY (asset_type, version));
CREATE TABLE IF NOT EXISTS consumer_lag (
    group_id VARCHAR, topic VARCHAR, role VARCHAR, "partition" INTEGER, committed BIGINT, end_offset BIGINT,
    lag BIGINT, sampled_at BIGINT);
CREATE TABLE IF NOT EXISTS offsets (
    topic VARCHAR, "partition" INTEGER, next_offset BIGINT, PRIMARY KEY (topic, "partition"));
CREATE OR REPLACE VIEW alerts AS
SELECT alert_id,
       any_value(machine_id) AS machine_id,
       any_value(site) AS site,
       arg_max(asset_type, ts) AS asset_type,
       min(opened_at) AS opened_at,
       max(ts) AS last_ts,
       coalesce(arg_max(severity, ts) FILTER (WHERE state <> 'acknowledged'), arg_max(severity, ts)) AS severity,
       arg_max(rule, ts) AS rule,
       max(ts) FILTER (WHERE state = 'resolved') AS resolved_at,
       max(ts) FILTER (WHERE state = 'acknowledged') AS acknowledged_at,
       arg_max(acknowledged_by, ts) FILTER (WHERE state = 'acknowledged') AS acknowledged_by,
       arg_max(p_fail, ts) FILTER (WHERE state <> 'acknowledged') AS p_fail,
       arg_max(rul, ts) FILTER (WHERE state <> 'acknowledged') AS rul,
       arg_max(model, ts) FILTER (WHERE state <> 'acknowledged') AS model,
       arg_max(model_version, ts) FILTER (WHERE state <> 'acknowledged') AS model_version,
       arg_max(message, ts) FILTER (WHERE state <> 'acknowledged') AS message,
       CASE WHEN bool_or(state = 'resolved') THEN 'resolved'
            WHEN bool_or(state = 'acknowledged') THEN 'acknowledged'
            ELSE 'open' END AS status
FROM alert_events GROUP BY alert_id;
"""

# Column order of every table a batch appends to.
TABLE_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "predictions": ("machine_id", "site", "asset_type", "ts", "seq", "model", "model_version", "scored_at",
                    "p_fail", "rul", "ingest_ts", "kafka_ts", "received_at"),
    "telemetry": ("machine_id", "asset_type", "ts", "seq", "sensor", "value"),
    "maintenance": ("machine_id", "site", "asset_type", "ts", "event", "failure_mode", "received_at"),
    "alert_events": ("alert_id", "machine_id", "site", "state", "severity", "rule", "opened_at", "ts", "model",
                     "model_version", "asset_type", "p_fail", "rul", "message", "acknowledged_by", "received_at"),
    "dlq_samples": ("received_at", "reason", "detail", "mqtt_topic", "size"),
}

_DTYPES: Final = {
    "ts": "int64", "seq": "int64", "scored_at": "int64", "received_at": "int64", "opened_at": "int64",
    "kafka_ts": "Int64", "ingest_ts": "Int64", "size": "int64",
    "p_fail": "float64", "rul": "float64", "value": "float64",
}


@dataclass
class Batch:
    """Rows to append, keyed by table, plus the next offset of every partition they came from.

    ``rows[table]`` is a list of tuples in :data:`TABLE_COLUMNS` order. ``telemetry_seen`` maps
    machine_id to (asset_type, newest event time) of every reading, sampled or not.
    """

    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    telemetry_seen: dict[str, tuple[str, int]] = field(default_factory=dict)
    dlq_counts: dict[tuple[int, str], int] = field(default_factory=dict)
    throughput: dict[tuple[int, str], int] = field(default_factory=dict)
    models: list[tuple[str, str, str, str, str, int]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def add(self, table: str, row: tuple[Any, ...]) -> None:
        self.rows.setdefault(table, []).append(row)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values()) + len(self.telemetry_seen) + len(self.models) + \
            len(self.dlq_counts) + len(self.throughput)


@dataclass(frozen=True)
class Retention:
    """How much the store keeps."""

    hours: float = 168.0
    max_predictions: int = 2_000_000
    max_telemetry_rows: int = 2_000_000
    max_alert_events: int = 500_000
    max_maintenance: int = 1_000_000
    wall_hours: float = 24.0  # throughput and dead-letter counts, by arrival time
    dlq_samples: int = 200


def _frame(table: str, rows: Sequence[tuple[Any, ...]]) -> pd.DataFrame:
    columns = TABLE_COLUMNS[table]
    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    for column in columns:
        dtype = _DTYPES.get(column)
        if dtype is not None:
            frame[column] = frame[column].astype(dtype)
    return frame


class Store:
    """One DuckDB database (a file, or in memory) holding what the dashboard shows."""

    def __init__(self, path: str | Path | None = None, retention: Retention | None = None) -> None:
        self.path = None if path is None or str(path) == ":memory:" else Path(path)
        self.retention = retention or Retention()
        self._lock = threading.Lock()
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(str(self.path) if self.path else ":memory:")
            self._con.execute(_SCHEMA)
        except (duckdb.Error, OSError) as error:
            raise StoreError(f"cannot open the dashboard store {self.path or ':memory:'}: {error}",
                             hint="another dashboard may be using it; pass --store with another file") from None
        self._closed = False

    # -- reading ---------------------------------------------------------------------------

    def read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Run one query on a cursor of the calling thread; returns a DataFrame."""
        cursor = self._con.cursor()
        try:
            return cursor.execute(sql, params).df()
        finally:
            cursor.close()

    def read_with(self, sql: str, frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
        """Like :meth:`read`, with DataFrames registered as views under the given names."""
        cursor = self._con.cursor()
        try:
            for name, frame in frames.items():
                cursor.register(name, frame)
            return cursor.execute(sql).df()
        finally:
            cursor.close()

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        cursor = self._con.cursor()
        try:
            row = cursor.execute(sql, params).fetchone()
            return None if row is None else row[0]
        finally:
            cursor.close()

    def offsets(self) -> dict[tuple[str, int], int]:
        """The next offset to read of every partition the store has seen."""
        rows = self.read('SELECT topic, "partition", next_offset FROM offsets')
        return {(str(t), int(p)): int(o) for t, p, o in rows.itertuples(index=False)}

    def counts(self) -> dict[str, int]:
        tables = ("predictions", "machines", "telemetry", "maintenance", "alert_events", "models")
        sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in tables)  # noqa: S608
        return {str(name): int(n) for name, n in self.read(sql).itertuples(index=False)}

    # -- writing ---------------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Append a batch and advance the stored offsets, all in one transaction."""
        with self._lock:
            con = self._con
            con.execute("BEGIN TRANSACTION")
            try:
                self._write(con, batch)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _write(self, con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
        for table, rows in batch.rows.items():
            if not rows:
                continue
            frame = _frame(table, rows)
            con.register("_batch", frame)
            try:
                columns = ", ".join(TABLE_COLUMNS[table])
                con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _batch")  # noqa: S608
                if table == "predictions":
                    self._upsert_machines(con)
            finally:
                con.unregister("_batch")
        if batch.telemetry_seen:
            seen = pd.DataFrame.from_records(
                [(m, a, ts, m.partition("/")[0]) for m, (a, ts) in batch.telemetry_seen.items()],
                columns=["machine_id", "asset_type", "telemetry_ts", "site"])
            con.register("_seen", seen)
            try:
                con.execute("""
                    INSERT INTO machines (machine_id, site, asset_type, telemetry_ts)
                    SELECT machine_id, site, asset_type, telemetry_ts FROM _seen
                    ON CONFLICT (machine_id) DO UPDATE SET
                        telemetry_ts = greatest(coalesce(machines.telemetry_ts, 0), excluded.telemetry_ts),
                        asset_type = coalesce(machines.asset_type, excluded.asset_type)""")
            finally:
                con.unregister("_seen")
        for name, counts, key in (("dlq_counts", batch.dlq_counts, "reason"), ("throughput", batch.throughput, "role")):
            if counts:
                rows = [(bucket, label, n) for (bucket, label), n in counts.items()]
                con.executemany(
                    f"INSERT INTO {name} VALUES (?, ?, ?) ON CONFLICT (bucket, {key}) "  # noqa: S608
                    f"DO UPDATE SET n = {name}.n + excluded.n", rows)
        if batch.models:
            con.executemany("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)", batch.models)
        if batch.offsets:
            con.executemany('INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)',
                            [(t, p, o) for (t, p), o in batch.offsets.items()])

    @staticmethod
    def _upsert_machines(con: duckdb.DuckDBPyConnection) -> None:
        # The newest prediction of each machine in the batch replaces an older one.
        con.execute("""
            INSERT INTO machines (machine_id, site, asset_type, ts, seq, model, model_version, p_fail, rul, scored_at)
            SELECT machine_id, site, asset_type, ts, seq, model, model_version, p_fail, rul, scored_at
            FROM _batch QUALIFY row_number() OVER (PARTITION BY machine_id ORDER BY ts DESC, seq DESC) = 1
            ON CONFLICT (machine_id) DO UPDATE SET
                site = excluded.site, asset_type = excluded.asset_type, ts = excluded.ts, seq = excluded.seq,
                model = excluded.model, model_version = excluded.model_version, p_fail = excluded.p_fail,
                rul = excluded.rul, scored_at = excluded.scored_at
            WHERE machines.ts IS NULL OR excluded.ts >= machines.ts""")

    def replace_lag(self, rows: Iterable[tuple[str, str, str, int, int | None, int, int | None, int]]) -> None:
        """Replace the consumer-lag sample (group, topic, role, partition, committed, end, lag, at)."""
        rows = list(rows)
        with self._lock:
            self._con.execute("BEGIN TRANSACTION")
            try:
                self._con.execute("DELETE FROM consumer_lag")
                if rows:
                    self._con.executemany("INSERT INTO consumer_lag VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise

    def load_frame(self, table: str, frame: pd.DataFrame) -> None:
        """Bulk-append a DataFrame with a table's columns (benchmarks, tests, imports)."""
        with self._lock:
            self._con.register("_load", frame)
            try:
                columns = ", ".join(frame.columns)
                self._con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _load")  # noqa: S608
                if table == "predictions":
                    self._con.unregister("_load")
                    self._con.register("_batch", frame)
                    self._upsert_machines(self._con)
                    self._con.unregister("_batch")
            finally:
                self._con.unregister("_load")

    def prune(self) -> dict[str, int]:
        """Enforce retention; returns how many rows each table lost."""
        r = self.retention
        span_ms = int(r.hours * 3600_000)
        dropped: dict[str, int] = {}
        with self._lock:
            con = self._con
            for table, cap in (("predictions", r.max_predictions), ("telemetry", r.max_telemetry_rows),
                               ("alert_events", r.max_alert_events), ("maintenance", r.max_maintenance)):
                before = int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]  # noqa: S608
                if not before:
                    continue
                con.execute(f"DELETE FROM {table} WHERE ts < (SELECT max(ts) FROM {table}) - ?", [span_ms])  # noqa: S608
                left = int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]  # noqa: S608
                if left > cap:
                    con.execute(f"DELETE FROM {table} WHERE ts < (SELECT ts FROM {table} "  # noqa: S608
                                "ORDER BY ts DESC LIMIT 1 OFFSET ?)", [cap])
                    left = int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]  # noqa: S608
                if before - left:
                    dropped[table] = before - left
            wall_cut = int(con.execute("SELECT epoch_ms(now())").fetchone()[0]) - int(r.wall_hours * 3600_000)  # type: ignore[index]
            con.execute("DELETE FROM throughput WHERE bucket < ?", [wall_cut])
            con.execute("DELETE FROM dlq_counts WHERE bucket < ?", [wall_cut])
            con.execute("DELETE FROM dlq_samples WHERE received_at < (SELECT received_at FROM dlq_samples "
                        "ORDER BY received_at DESC LIMIT 1 OFFSET ?)", [r.dlq_samples])
        if dropped:
            log.info("store retention dropped %s", dropped)
        return dropped

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._con.close()

    @property
    def closed(self) -> bool:
        return self._closed
