"""The embedded store: DuckDB tables the background consumer writes and the pages read.

The store is a cache of Kafka, never the source of truth. Each batch of records is written in
one DuckDB transaction together with the next Kafka offset of every partition it came from,
so after a restart (with a store file) the consumer resumes exactly where the store ends:
nothing is counted twice and nothing is missed. A store file written by an older schema is
emptied and read again from Kafka.

Retention is bounded twice: by arrival time (``retention_hours`` behind the store's clock,
where a row's arrival is when the pipeline received it, never later than when the dashboard
did) and by row count (the earliest arrivals first). Event times are data, not a clock: one
record dated in the future can neither prune the others nor pin a machine's latest state.

Every row a batch appends must fit its column (:func:`unstorable` says why one does not);
maintenance events and pipeline stats are held once per identity, so a redelivery or a
dead-letter replay is a no-op.

DuckDB connections are not thread-safe: the writer uses the store's own connection under a
lock, and every reader gets a cursor of its own (:meth:`Store.read`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import duckdb
import pandas as pd
import pyarrow as pa

from dashboard.errors import StoreError
from forewarn.contract import TS_MAX_MS, TS_MIN_MS

__all__ = ["TABLE_COLUMNS", "Batch", "Retention", "Store", "unstorable"]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = "5"
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

# The tables a batch appends to: column -> SQL type, in insertion order.
_APPENDED: Final[dict[str, dict[str, str]]] = {
    "predictions": {
        "machine_id": "VARCHAR", "site": "VARCHAR", "asset_type": "VARCHAR", "ts": "BIGINT", "seq": "BIGINT",
        "model": "VARCHAR", "model_version": "VARCHAR", "scored_at": "BIGINT", "p_fail": "DOUBLE", "rul": "DOUBLE",
        "ingest_ts": "BIGINT", "kafka_ts": "BIGINT", "received_at": "BIGINT", "arrived_at": "BIGINT"},
    "telemetry": {
        "machine_id": "VARCHAR", "asset_type": "VARCHAR", "ts": "BIGINT", "seq": "BIGINT", "boot": "BIGINT",
        "sensor": "VARCHAR", "value": "DOUBLE", "arrived_at": "BIGINT"},
    "maintenance": {
        "identity": "VARCHAR", "event_id": "VARCHAR", "machine_id": "VARCHAR", "site": "VARCHAR",
        "asset_type": "VARCHAR", "ts": "BIGINT", "event": "VARCHAR", "failure_mode": "VARCHAR",
        "outcome": "VARCHAR", "note": "VARCHAR", "received_at": "BIGINT", "arrived_at": "BIGINT"},
    "work_order_events": {
        "work_order_id": "VARCHAR", "machine_id": "VARCHAR", "site": "VARCHAR", "status": "VARCHAR",
        "opened_at": "BIGINT", "opened_by": "VARCHAR", "ts": "BIGINT", "alert_id": "VARCHAR", "asset_type": "VARCHAR",
        "title": "VARCHAR", "closed_by": "VARCHAR", "outcome": "VARCHAR", "failure_mode": "VARCHAR", "note": "VARCHAR",
        "received_at": "BIGINT"},
    "alert_events": {
        "alert_id": "VARCHAR", "machine_id": "VARCHAR", "site": "VARCHAR", "state": "VARCHAR",
        "severity": "VARCHAR", "rule": "VARCHAR", "opened_at": "BIGINT", "ts": "BIGINT", "model": "VARCHAR",
        "model_version": "VARCHAR", "asset_type": "VARCHAR", "p_fail": "DOUBLE", "rul": "DOUBLE",
        "message": "VARCHAR", "acknowledged_by": "VARCHAR", "note": "VARCHAR", "actor": "VARCHAR",
        "assigned_to": "VARCHAR", "snoozed_until": "BIGINT", "escalation": "BIGINT", "received_at": "BIGINT",
        "arrived_at": "BIGINT"},
    "dlq_samples": {
        "received_at": "BIGINT", "reason": "VARCHAR", "detail": "VARCHAR", "mqtt_topic": "VARCHAR",
        "size": "BIGINT"},
    # What one scorer did not score, one row per outcome (kind 'count') or window reset (kind 'reset').
    "pipeline_stats": {
        "source": "VARCHAR", "role": "VARCHAR", "since_ms": "BIGINT", "until_ms": "BIGINT", "kind": "VARCHAR",
        "outcome": "VARCHAR", "n": "BIGINT", "received_at": "BIGINT"},
}

# Event times (and scorer clocks) lie within the contract's fixed bounds, so every difference
# of two of them a query takes fits int64; counts are never negative.
_TIMES: Final = frozenset({"ts", "opened_at", "scored_at", "ingest_ts", "since_ms", "until_ms"})
_COUNTS: Final = frozenset({"n"})

# Tables that hold each identity once: an appended row whose key is already there is ignored.
_IDENTITY: Final[dict[str, tuple[str, ...]]] = {
    "maintenance": ("identity",),
    "pipeline_stats": ("source", "role", "since_ms", "until_ms", "kind", "outcome"),
}

# Column order of every table a batch appends to.
TABLE_COLUMNS: Final[dict[str, tuple[str, ...]]] = {table: tuple(cols) for table, cols in _APPENDED.items()}

_ARROW_TYPE: Final = {"BIGINT": pa.int64(), "DOUBLE": pa.float64(), "VARCHAR": pa.string()}


def _create(table: str) -> str:
    columns = ", ".join(f"{name} {kind}" for name, kind in _APPENDED[table].items())
    key = _IDENTITY.get(table)
    return f"CREATE TABLE IF NOT EXISTS {table} ({columns}" + (f", PRIMARY KEY ({', '.join(key)}));" if key else ");")


_SCHEMA: Final = "\n".join(_create(table) for table in _APPENDED) + """
CREATE TABLE IF NOT EXISTS machines (
    machine_id VARCHAR PRIMARY KEY, site VARCHAR, asset_type VARCHAR, ts BIGINT, seq BIGINT, model VARCHAR,
    model_version VARCHAR, p_fail DOUBLE, rul DOUBLE, scored_at BIGINT, telemetry_ts BIGINT);
CREATE TABLE IF NOT EXISTS dlq_counts (
    bucket BIGINT, reason VARCHAR, n BIGINT, PRIMARY KEY (bucket, reason));
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
CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE OR REPLACE VIEW alerts AS
SELECT alert_id,
       any_value(machine_id) AS machine_id,
       any_value(site) AS site,
       arg_max(asset_type, ts) AS asset_type,
       min(opened_at) AS opened_at,
       max(ts) AS last_ts,
       coalesce(arg_max(severity, ts) FILTER (WHERE NOT lifecycle), arg_max(severity, ts)) AS severity,
       arg_max(rule, ts) AS rule,
       max(ts) FILTER (WHERE state = 'resolved') AS resolved_at,
       max(ts) FILTER (WHERE state = 'acknowledged') AS acknowledged_at,
       arg_max(acknowledged_by, ts) FILTER (WHERE state = 'acknowledged') AS acknowledged_by,
       arg_max(note, ts) FILTER (WHERE state = 'acknowledged') AS note,
       nullif(arg_max(coalesce(assigned_to, ''), ts) FILTER (WHERE state = 'assigned'), '') AS assigned_to,
       arg_max(actor, ts) FILTER (WHERE state = 'assigned') AS assigned_by,
       arg_max(coalesce(snoozed_until, 0), ts) FILTER (WHERE state = 'snoozed') AS snoozed_until,
       arg_max(actor, ts) FILTER (WHERE state = 'snoozed') AS snoozed_by,
       coalesce(max(escalation) FILTER (WHERE state = 'escalated'), 0) AS escalation,
       arg_max(p_fail, ts) FILTER (WHERE NOT lifecycle) AS p_fail,
       arg_max(rul, ts) FILTER (WHERE NOT lifecycle) AS rul,
       arg_max(model, ts) FILTER (WHERE NOT lifecycle) AS model,
       arg_max(model_version, ts) FILTER (WHERE NOT lifecycle) AS model_version,
       arg_max(message, ts) FILTER (WHERE NOT lifecycle) AS message,
       CASE WHEN bool_or(state = 'resolved') THEN 'resolved'
            WHEN bool_or(state = 'acknowledged') THEN 'acknowledged'
            ELSE 'open' END AS status
FROM (SELECT *, state IN ('acknowledged', 'assigned', 'snoozed', 'escalated') AS lifecycle FROM alert_events)
GROUP BY alert_id;
CREATE OR REPLACE VIEW work_orders AS
SELECT work_order_id,
       any_value(machine_id) AS machine_id,
       any_value(site) AS site,
       min(opened_at) AS opened_at,
       arg_min(opened_by, ts) AS opened_by,
       any_value(alert_id) AS alert_id,
       any_value(asset_type) AS asset_type,
       arg_min(title, ts) AS title,
       CASE WHEN bool_or(status = 'closed') THEN 'closed' ELSE 'open' END AS status,
       max(ts) FILTER (WHERE status = 'closed') AS closed_at,
       arg_max(closed_by, ts) FILTER (WHERE status = 'closed') AS closed_by,
       arg_max(outcome, ts) FILTER (WHERE status = 'closed') AS outcome,
       arg_max(failure_mode, ts) FILTER (WHERE status = 'closed') AS failure_mode,
       arg_max(note, ts) FILTER (WHERE status = 'closed') AS note
FROM work_order_events GROUP BY work_order_id;
"""  # noqa: S608 - the table names are this module's own

_TABLES: Final = (*_APPENDED, "machines", "dlq_counts", "throughput", "models", "consumer_lag", "offsets")


def _unstorable_value(kind: str, value: Any) -> str | None:
    if value is None:
        return None
    if kind == "BIGINT":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{type(value).__name__} is not an integer"
        return None if INT64_MIN <= value <= INT64_MAX else f"{value} does not fit int64"
    if kind == "DOUBLE":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{type(value).__name__} is not a number"
        try:
            return None if math.isfinite(float(value)) else f"{value} is not finite"
        except OverflowError:
            return "a number beyond float64"
    if not isinstance(value, str):
        return f"{type(value).__name__} is not text"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "text that is not valid UTF-8"
    return None


def unstorable(table: str, row: Sequence[Any]) -> str | None:
    """Why ``row`` (in :data:`TABLE_COLUMNS` order) cannot be held by ``table``, or None when
    it can: integers must fit int64, numbers float64 and be finite, text valid UTF-8, event
    times lie within the contract's fixed bounds (2000..2100) and counts be non-negative."""
    columns = _APPENDED[table]
    if len(row) != len(columns):
        return f"{len(row)} values for {len(columns)} columns"
    for (name, kind), value in zip(columns.items(), row, strict=True):
        why = _unstorable_value(kind, value)
        if why is None and value is not None:
            if name in _TIMES and not TS_MIN_MS <= value <= TS_MAX_MS:
                why = f"{value} is outside {TS_MIN_MS}..{TS_MAX_MS}"
            elif name in _COUNTS and value < 0:
                why = f"{value} is negative"
        if why is not None:
            return f"{table}.{name}: {why}"
    return None


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
    """How much the store keeps. ``hours`` is an arrival-time span; ``max_future_ms`` is how far
    ahead of the store's clock an event time is still believed (clock skew) when it decides a
    machine's latest state."""

    hours: float = 168.0
    max_predictions: int = 2_000_000
    max_telemetry_rows: int = 2_000_000
    max_alert_events: int = 500_000
    max_maintenance: int = 1_000_000
    wall_hours: float = 24.0  # throughput and dead-letter counts
    pipeline_hours: float = 2.0  # scorers' stats (the Pipeline page shows the last hour)
    dlq_samples: int = 200
    max_future_ms: int | None = 300_000  # None: every event time is believed


def _frame(table: str, rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """The rows as an Arrow table of the columns' exact types: integers stay exact up to
    2^63-1 (a float64 round trip, as pandas' nullable integers take from Python objects,
    would not)."""
    columns = _APPENDED[table]
    return pa.table({name: pa.array([row[i] for row in rows], type=_ARROW_TYPE[kind])
                     for i, (name, kind) in enumerate(columns.items())})


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Store:
    """One DuckDB database (a file, or in memory) holding what the dashboard shows.

    ``clock`` (epoch ms) is the store's idea of now: retention and the pages' recent windows
    are measured against it, never against the newest event time seen.
    """

    def __init__(self, path: str | Path | None = None, retention: Retention | None = None,
                 clock: Callable[[], int] = _wall_ms) -> None:
        self.path = None if path is None or str(path) == ":memory:" else Path(path)
        self.retention = retention or Retention()
        self._clock = clock
        self._lock = threading.Lock()
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(str(self.path) if self.path else ":memory:")
            self._migrate(self._con)
        except (duckdb.Error, OSError) as error:
            raise StoreError(f"cannot open the dashboard store {self.path or ':memory:'}: {error}",
                             hint="another dashboard may be using it; pass --store with another file") from None
        self._closed = False

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create the schema; a store of another schema version is emptied first (it is a
        cache: the consumer reads everything again from Kafka)."""
        existing = {str(name) for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        version = None
        if "store_meta" in existing:
            row = con.execute("SELECT value FROM store_meta WHERE key = 'schema'").fetchone()
            version = None if row is None else str(row[0])
        if existing and version != SCHEMA_VERSION:
            log.warning("the dashboard store %s has schema %s, not %s: emptying it, it is read again from Kafka",
                        self.path, version or "1", SCHEMA_VERSION)
            con.execute("DROP VIEW IF EXISTS alerts")
            con.execute("DROP VIEW IF EXISTS work_orders")
            for table in sorted(existing & {*_TABLES, "store_meta"}):
                con.execute(f"DROP TABLE {table}")
        con.execute(_SCHEMA)
        con.execute("INSERT OR REPLACE INTO store_meta VALUES ('schema', ?)", [SCHEMA_VERSION])

    def now_ms(self) -> int:
        """Now, by the store's clock (epoch ms)."""
        return self._clock()

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
        tables = ("predictions", "machines", "telemetry", "maintenance", "alert_events", "models", "pipeline_stats")
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

    def horizon(self) -> int | None:
        """The latest event time believed now (later ones are clock skew or an outlier), or
        None when every event time is."""
        future = self.retention.max_future_ms
        return None if future is None else self.now_ms() + future

    def _insert(self, con: duckdb.DuckDBPyConnection, table: str, source: str, columns: Sequence[str]) -> None:
        names = ", ".join(columns)
        key = _IDENTITY.get(table)
        if key is None:
            con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {source}")  # noqa: S608
        else:  # each identity once, within the batch and against what the store holds
            con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {source} "  # noqa: S608
                        f"QUALIFY row_number() OVER (PARTITION BY {', '.join(key)}) = 1 ON CONFLICT DO NOTHING")
        if table == "predictions":
            self._upsert_machines(con, source)

    def _write(self, con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
        for table, rows in batch.rows.items():
            if not rows:
                continue
            con.register("_batch", _frame(table, rows))
            try:
                self._insert(con, table, "_batch", TABLE_COLUMNS[table])
            finally:
                con.unregister("_batch")
        if batch.telemetry_seen:
            seen = pd.DataFrame.from_records(
                [(m, a, ts, m.partition("/")[0]) for m, (a, ts) in batch.telemetry_seen.items()],
                columns=["machine_id", "asset_type", "telemetry_ts", "site"])
            con.register("_seen", seen)
            try:
                # The newest event time wins, unless the one held is beyond belief (a future outlier).
                con.execute("""
                    INSERT INTO machines (machine_id, site, asset_type, telemetry_ts)
                    SELECT machine_id, site, asset_type, telemetry_ts FROM _seen
                    ON CONFLICT (machine_id) DO UPDATE SET
                        telemetry_ts = CASE WHEN machines.telemetry_ts IS NULL OR machines.telemetry_ts > ?
                                            THEN excluded.telemetry_ts
                                            ELSE greatest(machines.telemetry_ts, excluded.telemetry_ts) END,
                        asset_type = coalesce(machines.asset_type, excluded.asset_type)""", [self.horizon()])
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

    def _upsert_machines(self, con: duckdb.DuckDBPyConnection, source: str) -> None:
        # The newest believable prediction of each machine in the batch replaces an older one,
        # or one dated beyond belief (so a single future-dated record cannot pin a machine).
        con.execute(f"""
            INSERT INTO machines (machine_id, site, asset_type, ts, seq, model, model_version, p_fail, rul, scored_at)
            SELECT machine_id, site, asset_type, ts, seq, model, model_version, p_fail, rul, scored_at
            FROM {source}
            QUALIFY row_number() OVER (PARTITION BY machine_id ORDER BY ts > $horizon, ts DESC, seq DESC) = 1
            ON CONFLICT (machine_id) DO UPDATE SET
                site = excluded.site, asset_type = excluded.asset_type, ts = excluded.ts, seq = excluded.seq,
                model = excluded.model, model_version = excluded.model_version, p_fail = excluded.p_fail,
                rul = excluded.rul, scored_at = excluded.scored_at
            WHERE machines.ts IS NULL OR excluded.ts >= machines.ts OR machines.ts > $horizon""",  # noqa: S608
                    {"horizon": self.horizon()})

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
        """Bulk-append a DataFrame with some of a table's columns (benchmarks, tests, imports);
        identities are held once, as with :meth:`write`."""
        with self._lock:
            self._con.register("_load", frame)
            try:
                self._insert(self._con, table, "_load", list(frame.columns))
            finally:
                self._con.unregister("_load")

    def prune(self) -> dict[str, int]:
        """Enforce retention by arrival time and row count; returns how many rows each table lost."""
        r = self.retention
        now = self.now_ms()
        cut = now - int(r.hours * 3600_000)
        wall_cut = now - int(r.wall_hours * 3600_000)
        dropped: dict[str, int] = {}
        with self._lock:
            con = self._con
            for table, cap in (("predictions", r.max_predictions), ("telemetry", r.max_telemetry_rows),
                               ("alert_events", r.max_alert_events), ("maintenance", r.max_maintenance)):
                before = self._count(con, table)
                if not before:
                    continue
                con.execute(f"DELETE FROM {table} WHERE arrived_at < ?", [cut])  # noqa: S608
                left = self._count(con, table)
                if left > cap:  # the earliest arrivals go first
                    con.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "  # noqa: S608
                                "ORDER BY arrived_at DESC NULLS LAST, ts DESC OFFSET ?)", [cap])
                    left = self._count(con, table)
                if before - left:
                    dropped[table] = before - left
            con.execute("DELETE FROM throughput WHERE bucket < ?", [wall_cut])
            con.execute("DELETE FROM dlq_counts WHERE bucket < ?", [wall_cut])
            con.execute("DELETE FROM pipeline_stats WHERE received_at < ?", [now - int(r.pipeline_hours * 3600_000)])
            con.execute("DELETE FROM dlq_samples WHERE received_at < (SELECT received_at FROM dlq_samples "
                        "ORDER BY received_at DESC LIMIT 1 OFFSET ?)", [r.dlq_samples])
        if dropped:
            log.info("store retention dropped %s", dropped)
        return dropped

    @staticmethod
    def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._con.close()

    @property
    def closed(self) -> bool:
        return self._closed
