"""Read-side queries of the store, one function per thing a page shows. Each returns a small
pandas DataFrame (or a dict of figures): the heavy lifting happens inside DuckDB.

Times are epoch milliseconds in the store; pages convert them for display. "Now" is the
store's clock (:meth:`Store.now_ms`), never the newest time seen: one record dated in the
future must not move every window. Recent windows of the Pipeline page are measured on
arrival (the dashboard's clock); an open alert's duration runs to now.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import pandas as pd

from dashboard.store import Store

__all__ = [
    "CRITICAL_P",
    "NOT_SCORED",
    "RESETS",
    "SCORED",
    "ModelInfo",
    "alert_list",
    "consumer_lag",
    "dlq_by_reason",
    "dlq_samples",
    "fleet",
    "fleet_summary",
    "latency_percentiles",
    "machine_events",
    "machine_ids",
    "machine_predictions",
    "machine_sensors",
    "machine_telemetry",
    "machine_window_end",
    "model_infos",
    "model_versions",
    "not_scored",
    "scoring_rate",
    "sites",
    "throughput",
    "version_changes",
]

CRITICAL_P: Final = 0.8
DEFAULT_THRESHOLD: Final = 0.5
DEFAULT_HORIZON: Final = 30.0
DEFAULT_RUL_CAP: Final = 125.0


# -- models ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What the pages need of one model version (from its bundle on the models topic)."""

    asset_type: str
    version: str
    name: str
    created_at: str
    meta: dict[str, Any]

    @property
    def threshold(self) -> float:
        return float(self.meta.get("thresholds", {}).get("p_fail", DEFAULT_THRESHOLD))

    @property
    def rul_below(self) -> float | None:
        value = self.meta.get("thresholds", {}).get("rul_below")
        return None if value is None else float(value)

    @property
    def horizon(self) -> float:
        return float(self.meta.get("targets", {}).get("horizon", DEFAULT_HORIZON))

    @property
    def rul_cap(self) -> float:
        return float(self.meta.get("targets", {}).get("rul_cap", DEFAULT_RUL_CAP))

    @property
    def rul_unit(self) -> str:
        return str(self.meta.get("targets", {}).get("rul_unit", "readings"))


def model_infos(store: Store) -> dict[tuple[str, str], ModelInfo]:
    """Every bundle seen on the models topic, by (asset type, version)."""
    frame = store.read("SELECT asset_type, version, name, created_at, meta FROM models ORDER BY asset_type, version")
    return {(a, v): ModelInfo(a, v, n, c, json.loads(m)) for a, v, n, c, m in frame.itertuples(index=False)}


def latest_models(store: Store) -> dict[str, ModelInfo]:
    """The newest known bundle per asset type (versions sort by time)."""
    latest: dict[str, ModelInfo] = {}
    for (asset, _version), info in sorted(model_infos(store).items()):
        latest[asset] = info
    return latest


def model_versions(store: Store) -> pd.DataFrame:
    """Every model version that produced predictions or was published, with its usage."""
    used = store.read("""
        SELECT asset_type, model_version AS version, any_value(model) AS model, count(*) AS predictions,
               count(DISTINCT machine_id) AS machines, min(ts) AS first_ts, max(ts) AS last_ts
        FROM predictions GROUP BY ALL""")
    published = store.read("SELECT asset_type, version, name, created_at FROM models")
    frame = used.merge(published, on=["asset_type", "version"], how="outer")
    serving = store.read("SELECT asset_type, model_version AS version, count(*) AS serving_machines "
                         "FROM machines WHERE model_version IS NOT NULL GROUP BY ALL")
    frame = frame.merge(serving, on=["asset_type", "version"], how="left")
    frame["serving_machines"] = frame["serving_machines"].fillna(0).astype("int64")
    frame["predictions"] = frame["predictions"].fillna(0).astype("int64")
    return frame.sort_values(["asset_type", "version"]).reset_index(drop=True)


# -- fleet -------------------------------------------------------------------------------


def fleet(store: Store, thresholds: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per machine: latest prediction, last seen, open alerts and a risk band."""
    frame = store.read("""
        WITH open AS (
            SELECT machine_id, count(*) AS open_alerts,
                   max(CASE severity WHEN 'critical' THEN 3 WHEN 'warning' THEN 2 ELSE 1 END) AS worst
            FROM alerts WHERE status <> 'resolved' GROUP BY machine_id)
        SELECT m.machine_id, m.site, m.asset_type, m.p_fail, m.rul,
               greatest(coalesce(m.ts, 0), coalesce(m.telemetry_ts, 0)) AS last_seen,
               m.model_version, coalesce(o.open_alerts, 0) AS open_alerts, coalesce(o.worst, 0) AS worst
        FROM machines m LEFT JOIN open o USING (machine_id)""")
    thresholds = thresholds or {}
    warn = frame["asset_type"].map(lambda a: thresholds.get(a, DEFAULT_THRESHOLD)).astype("float64")
    p = frame["p_fail"]
    risk = pd.Series("ok", index=frame.index, dtype="object")
    risk[p.isna()] = "no prediction"
    risk[(p >= warn) | (frame["worst"] == 2)] = "warning"
    risk[(p >= CRITICAL_P) | (frame["worst"] == 3)] = "critical"
    frame["risk"] = risk
    frame["open_alerts"] = frame["open_alerts"].astype("int64")
    return frame.drop(columns=["worst"])


def fleet_summary(frame: pd.DataFrame) -> dict[str, int]:
    return {
        "machines": len(frame),
        "sites": int(frame["site"].nunique()) if len(frame) else 0,
        "critical": int((frame["risk"] == "critical").sum()),
        "warning": int((frame["risk"] == "warning").sum()),
        "open_alerts": int(frame["open_alerts"].sum()) if len(frame) else 0,
        "predicted": int(frame["p_fail"].notna().sum()) if len(frame) else 0,
    }


def sites(store: Store) -> list[str]:
    return [str(s) for s in store.read("SELECT DISTINCT site FROM machines ORDER BY site")["site"]]


# -- machine -----------------------------------------------------------------------------


def machine_ids(store: Store, site: str | None = None) -> list[str]:
    if site is None:
        return [str(m) for m in store.read("SELECT machine_id FROM machines ORDER BY machine_id")["machine_id"]]
    frame = store.read("SELECT machine_id FROM machines WHERE site = ? ORDER BY machine_id", [site])
    return [str(m) for m in frame["machine_id"]]


def machine_window_end(store: Store, last_seen: int | None) -> int:
    """Where a machine's charts end: its last event time, unless that is beyond belief (later
    than the store's clock allows for skew), then now."""
    horizon = store.horizon()
    return store.now_ms() if not last_seen or (horizon is not None and last_seen > horizon) else last_seen


def machine_predictions(store: Store, machine_id: str, since_ts: int | None = None) -> pd.DataFrame:
    return store.read("""
        SELECT ts, seq, p_fail, rul, model, model_version, asset_type FROM predictions
        WHERE machine_id = ? AND ts >= ? ORDER BY ts""", [machine_id, since_ts or 0])


def machine_sensors(store: Store, machine_id: str) -> list[str]:
    frame = store.read("SELECT DISTINCT sensor FROM telemetry WHERE machine_id = ? ORDER BY sensor", [machine_id])
    return [str(s) for s in frame["sensor"]]


def machine_telemetry(store: Store, machine_id: str, sensors: Sequence[str], since_ts: int | None = None,
                      ) -> pd.DataFrame:
    if not sensors:
        return pd.DataFrame({"ts": [], "sensor": [], "value": []})
    return store.read("""
        SELECT ts, sensor, value FROM telemetry
        WHERE machine_id = ? AND ts >= ? AND list_contains(?, sensor) ORDER BY ts""",
                      [machine_id, since_ts or 0, list(sensors)])


def machine_events(store: Store, machine_id: str, since_ts: int | None = None) -> pd.DataFrame:
    """Maintenance events and alert openings/resolutions of one machine, for the time axis."""
    return store.read("""
        SELECT ts, event AS kind, coalesce(failure_mode, '') AS detail FROM maintenance
        WHERE machine_id = ? AND ts >= ?
        UNION ALL
        SELECT ts, 'alert ' || state AS kind, severity || ' · ' || rule AS detail FROM alert_events
        WHERE machine_id = ? AND ts >= ? AND state IN ('open', 'resolved')
        ORDER BY ts""", [machine_id, since_ts or 0, machine_id, since_ts or 0])


def maintenance_log(store: Store, machine_id: str) -> pd.DataFrame:
    """Every maintenance event of one machine, newest first: what happened, its failure mode,
    the work order's outcome and note when one recorded it, and its identity."""
    return store.read("""
        SELECT ts, event, coalesce(failure_mode, '') AS failure_mode, coalesce(outcome, '') AS outcome,
               coalesce(note, '') AS note, identity FROM maintenance
        WHERE machine_id = ? ORDER BY ts DESC, identity""", [machine_id])


def work_orders(store: Store, machine_id: str | None = None, status: str | None = None) -> pd.DataFrame:
    """Work orders (one row each, their current state), newest first."""
    return store.read("""
        SELECT * FROM work_orders WHERE (? IS NULL OR machine_id = ?) AND (? IS NULL OR status = ?)
        ORDER BY opened_at DESC, work_order_id""", [machine_id, machine_id, status, status])


def version_changes(predictions: pd.DataFrame) -> pd.DataFrame:
    """Where the model version of a machine's predictions changed (first prediction of each)."""
    if predictions.empty:
        return pd.DataFrame({"ts": [], "model_version": []})
    changed = predictions["model_version"] != predictions["model_version"].shift()
    return predictions.loc[changed, ["ts", "model_version"]].reset_index(drop=True)


# -- alerts ------------------------------------------------------------------------------


def alert_list(store: Store, statuses: Sequence[str] = (), severities: Sequence[str] = (),
               site: str | None = None, machine: str | None = None, assigned_to: str | None = None,
               ) -> pd.DataFrame:
    """Alerts (one row each, current status), newest first, with their duration in ms
    (open ones measured up to now, or their last event when that is later), who they are
    assigned to, until when they are snoozed (``snoozed``: still now) and their escalation level.
    Status ``open`` is active and unacknowledged."""
    where = ["TRUE"]
    params: list[Any] = []
    if assigned_to:
        where.append("assigned_to = ?")
        params.append(assigned_to)
    if statuses:
        where.append("list_contains(?, status)")
        params.append(list(statuses))
    if severities:
        where.append("list_contains(?, severity)")
        params.append(list(severities))
    if site:
        where.append("site = ?")
        params.append(site)
    if machine:
        where.append("machine_id ILIKE ?")
        params.append(f"%{machine}%")
    clock = store.now_ms()
    sql = f"""
        SELECT alert_id, machine_id, site, asset_type, severity, status, rule, opened_at, resolved_at,
               coalesce(resolved_at, greatest(?, last_ts)) - opened_at AS duration_ms, p_fail, rul,
               model_version, acknowledged_by, acknowledged_at, note, message, model, last_ts, assigned_to,
               assigned_by, CASE WHEN snoozed_until > ? THEN snoozed_until END AS snoozed_until,
               coalesce(snoozed_until > ?, FALSE) AS snoozed, snoozed_by, escalation
        FROM alerts WHERE {" AND ".join(where)} ORDER BY opened_at DESC, alert_id LIMIT 5000"""  # noqa: S608
    return store.read(sql, [clock, clock, clock, *params])


# -- pipeline ----------------------------------------------------------------------------


def throughput(store: Store, minutes: int = 10) -> pd.DataFrame:
    """Records per second by topic role, as they arrived at the dashboard."""
    return store.read("SELECT bucket, role, n FROM throughput WHERE bucket >= ? ORDER BY bucket",
                      [store.now_ms() - minutes * 60_000])


def scoring_rate(store: Store, minutes: int = 10) -> pd.DataFrame:
    """Predictions per second by the workers' clock (``scored_at``), of those that reached the
    dashboard in the last ``minutes``."""
    return store.read("""
        WITH recent AS (SELECT scored_at FROM predictions WHERE received_at >= ?)
        SELECT scored_at - scored_at % 1000 AS bucket, count(*) AS n FROM recent GROUP BY 1 ORDER BY 1""",
                      [store.now_ms() - minutes * 60_000])


def consumer_lag(store: Store) -> pd.DataFrame:
    return store.read("""
        SELECT group_id, role, topic, sum(lag) AS lag, sum(end_offset) AS end_offset, count(*) AS partitions,
               max(sampled_at) AS sampled_at
        FROM consumer_lag GROUP BY ALL ORDER BY group_id, role""")


def dlq_by_reason(store: Store, minutes: int = 60) -> pd.DataFrame:
    return store.read("SELECT bucket, reason, n FROM dlq_counts WHERE bucket >= ? ORDER BY bucket",
                      [store.now_ms() - minutes * 60_000])


def dlq_samples(store: Store, limit: int = 20) -> pd.DataFrame:
    return store.read("SELECT received_at, reason, detail, mqtt_topic, size FROM dlq_samples "
                      "ORDER BY received_at DESC LIMIT ?", [limit])


def latency_percentiles(store: Store, minutes: int = 5) -> pd.DataFrame:
    """p50/p95/p99 of ingest → scored and ingest → dashboard, over the predictions that reached
    the dashboard in the last ``minutes``."""
    return store.read("""
        WITH recent AS (
            SELECT scored_at - ingest_ts AS scored, received_at - ingest_ts AS shown FROM predictions
            WHERE ingest_ts IS NOT NULL AND received_at >= ?)
        SELECT 'bridge ingest → scored' AS stage, count(*) AS n, quantile_cont(scored, 0.5) AS p50,
               quantile_cont(scored, 0.95) AS p95, quantile_cont(scored, 0.99) AS p99 FROM recent
        UNION ALL
        SELECT 'bridge ingest → dashboard', count(*), quantile_cont(shown, 0.5), quantile_cont(shown, 0.95),
               quantile_cont(shown, 0.99) FROM recent""", [store.now_ms() - minutes * 60_000])


# What scorers report on the pipeline topic: outcomes of the readings they consumed.
SCORED: Final = "scored"
NOT_SCORED: Final = {
    "duplicate": "already seen: same machine, boot and seq (a redelivery or a resend)",
    "late": "older than the machine's window: behind its newest reading, or from an earlier boot",
    "warmup": "filling the window after a start, a device restart or a gap, before the first prediction",
    "stride": "a step the scorer skips: it scores every n-th window only (--stride)",
    "unscorable": "no model could score it (none for its asset type, a sensor the model needs is missing, or an "
                  "output that was not finite)",
    "rejected": "failed validation and went to the dead-letter topic",
}
RESETS: Final = {
    "restart": "the device restarted (a higher boot, or its seq fell back with a later event time)",
    "gap": "too many readings were missing, so the window started afresh",
}


def not_scored(store: Store, minutes: int = 60) -> pd.DataFrame:
    """Readings per scorer role (``scoring``, ``edge``) and outcome (``scored`` or a reason it was
    not), and window resets by cause, over stats reported in the last ``minutes``: columns role,
    kind (``count`` or ``reset``), outcome, n, sources. A stats record is dated by its ``until``,
    never later than when it arrived (a scorer's clock may be off)."""
    return store.read("""
        SELECT role, kind, outcome, least(sum(n), 9223372036854775807)::BIGINT AS n,
               count(DISTINCT source) AS sources
        FROM pipeline_stats WHERE least(until_ms, received_at) >= ?
        GROUP BY ALL ORDER BY role, kind, outcome""", [store.now_ms() - minutes * 60_000])
