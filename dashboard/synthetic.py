"""A synthetic store: a plausible fleet with predictions, alerts, failures, sampled telemetry,
models and pipeline figures, generated fast with numpy. For tests, the benchmark and the
README screenshots; never used when the dashboard reads Kafka.
"""

from __future__ import annotations

import json
from typing import Final

import numpy as np
import pandas as pd

from dashboard.store import Batch, Store

__all__ = ["populate"]

_SENSORS: Final = {
    "pump": {"bearing_temp_de_c": (55.0, 0.6, 12.0), "vibration_de_mm_s": (2.2, 0.25, 5.0),
             "flow_m3h": (120.0, 1.2, -12.0), "discharge_pressure_bar": (8.0, 0.08, -1.2)},
    "motor": {"winding_temp_c": (75.0, 0.8, 22.0), "vibration_radial_mm_s": (1.8, 0.2, 5.5),
              "stator_current_a": (120.0, 1.0, 9.0), "current_imbalance_pct": (1.0, 0.12, 4.0)},
}
_RULES: Final = ("p_fail_above_threshold", "rul_below_threshold")
STEP_MS: Final = 60_000
_SETTLE_MS: Final = 2 * 3600_000  # the last failures' repairs and resolutions happen before now


def _meta(asset_type: str, version: str, rng: np.random.Generator) -> str:
    stats = []
    for name, (base, noise, _drift) in _SENSORS[asset_type].items():
        edges = list(np.linspace(base - 2 * noise, base + 2 * noise, 9))
        props = np.diff(np.concatenate([[0.0], _normal_cdf((np.array(edges) - base) / noise), [1.0]]))
        stats.append({"name": name, "mean": base, "std": noise, "min": base - 4 * noise, "max": base + 4 * noise,
                      "median": base, "missing_fraction": 0.0, "bin_edges": edges, "proportions": list(props)})
    return json.dumps({
        "name": asset_type, "asset_type": asset_type, "version": version, "created_at": version,
        "window": 30, "features": list(_SENSORS[asset_type]),
        "targets": {"heads": ["rul", "p_fail"], "rul_unit": "readings", "rul_cap": 125.0, "horizon": 30.0},
        "thresholds": {"p_fail": 0.5, "consecutive": 3, "rul_below": 20.0},
        "feature_stats": stats,
        "metrics": {"test": {"precision": round(float(rng.uniform(0.6, 0.9)), 3),
                             "recall": round(float(rng.uniform(0.6, 0.9)), 3),
                             "rul_mae": round(float(rng.uniform(8, 15)), 2),
                             "auc": round(float(rng.uniform(0.85, 0.97)), 3)}},
        "training": {"machines": 400, "epochs": 12}, "lineage": {}, "sha256": "0" * 64,
    })


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    from math import erf, sqrt

    return np.array([0.5 * (1 + erf(float(v) / sqrt(2))) for v in z])


def populate(store: Store, machines: int = 200, predictions: int = 20_000, sites: int = 2, seed: int = 7,
             telemetry_every: int = 5, now_ms: int | None = None) -> dict[str, int]:
    """Fill ``store`` with a synthetic fleet whose history ends at ``now_ms`` (default: the
    store's clock); returns row counts. Predictions are spread evenly over the machines (one per
    minute of event time); about one machine in twelve fails."""
    rng = np.random.default_rng(seed)
    per = max(2, predictions // machines)
    now = now_ms if now_ms is not None else store.now_ms()
    t0 = now - per * STEP_MS - _SETTLE_MS
    idx = np.arange(machines)
    site_names = np.array([f"site-{chr(97 + i)}" for i in range(sites)])
    asset = np.where(idx % 3 == 2, "motor", "pump")
    ids = np.array([f"{site_names[i % sites]}/{a}-{i:05d}" for i, a in zip(idx, asset, strict=True)])
    site = site_names[idx % sites]
    # Each machine degrades towards a failure at a random reading; some fail inside the window.
    life = rng.integers(per // 2, per * 6, machines)
    fails = life < per
    start_seq = rng.integers(1_000, 5_000, machines)

    m_rep = np.repeat(idx, per)
    k = np.tile(np.arange(per), machines)
    seq = start_seq[m_rep] + k
    ts = t0 + k.astype("int64") * STEP_MS + (m_rep % 60) * 1000
    # After a failure and its repair the machine starts a fresh, long life.
    remaining = np.where(k <= life[m_rep], life[m_rep] - k, 400 - (k - life[m_rep]))
    alive = (k <= life[m_rep]) | (k > life[m_rep] + 60)
    true_rul = np.clip(remaining, 0, 125).astype("float64")
    rul = np.clip(true_rul + rng.normal(0, 6, len(k)), 0, 125)
    p_fail = 1 / (1 + np.exp((remaining - 22) / 5)) + rng.normal(0, 0.04, len(k))
    p_fail = np.clip(p_fail, 0, 1)
    version = np.where(k < per * 0.4, "20251120T080000Z", "20251126T080000Z")
    scored = ts + 40 + rng.integers(0, 200, len(k))
    ingest = ts + 5
    frame = pd.DataFrame({
        "machine_id": ids[m_rep], "site": site[m_rep], "asset_type": asset[m_rep], "ts": ts, "seq": seq,
        "model": asset[m_rep], "model_version": version, "scored_at": scored, "p_fail": p_fail, "rul": rul,
        "ingest_ts": ingest, "kafka_ts": scored + 3, "received_at": scored + 50 + rng.integers(0, 400, len(k)),
    })[alive]
    frame["arrived_at"] = frame["ingest_ts"]
    store.load_frame("predictions", frame)

    # Failures (then a repair) for machines whose life ended in the window.
    f_idx = idx[fails]
    f_ts = t0 + life[f_idx].astype("int64") * STEP_MS + (f_idx % 60) * 1000 + 30_000
    modes = np.where(asset[f_idx] == "pump", "bearing_wear", "winding_insulation")
    maint = pd.DataFrame({"machine_id": ids[f_idx], "site": site[f_idx], "asset_type": asset[f_idx], "ts": f_ts,
                          "event": "failure", "failure_mode": modes, "received_at": f_ts})
    repairs = maint.assign(ts=maint["ts"] + 3_600_000, event="repair", failure_mode=None)
    i_idx = idx[(idx % 17 == 0) & ~fails]
    inspections = pd.DataFrame({"machine_id": ids[i_idx], "site": site[i_idx], "asset_type": asset[i_idx],
                                "ts": t0 + per // 3 * STEP_MS, "event": "inspection", "failure_mode": None,
                                "received_at": t0})
    events_frame = pd.concat([maint, repairs, inspections], ignore_index=True)
    events_frame["identity"] = (events_frame["machine_id"] + "@" + events_frame["ts"].astype(str) + "/"
                                + events_frame["event"])
    store.load_frame("maintenance", events_frame.assign(arrived_at=events_frame["received_at"]))

    # Alerts: machines that crossed p_fail 0.5 open one; those that failed are resolved by the repair.
    crossed = frame[frame["p_fail"] >= 0.5].groupby("machine_id", sort=False).first().reset_index()
    events = []
    failed_ids = set(ids[f_idx])
    fail_ts = dict(zip(ids[f_idx], f_ts, strict=True))
    for n, row in enumerate(crossed.itertuples(index=False)):
        alert_id = f"{row.machine_id}:{row.ts}"
        severity = "critical" if row.p_fail >= 0.8 else "warning"
        base = {"alert_id": alert_id, "machine_id": row.machine_id, "site": row.site, "severity": severity,
                "rule": _RULES[n % 2], "opened_at": int(row.ts), "model": row.model,
                "model_version": row.model_version, "asset_type": row.asset_type, "p_fail": float(row.p_fail),
                "rul": float(row.rul), "message": f"p_fail {row.p_fail:.2f} above 0.50", "acknowledged_by": None,
                "note": None, "received_at": int(row.ts), "arrived_at": int(row.ts)}
        events.append({**base, "state": "open", "ts": int(row.ts)})
        if n % 3 == 0:
            events.append({**base, "state": "update", "severity": "critical", "ts": int(row.ts) + 1_200_000,
                           "p_fail": min(1.0, float(row.p_fail) + 0.3)})
        if n % 4 == 1:
            events.append({**base, "state": "acknowledged", "ts": int(row.ts) + 600_000,
                           "acknowledged_by": "operator", "note": "checked on site"})
        if row.machine_id in failed_ids:
            events.append({**base, "state": "resolved", "ts": int(fail_ts[row.machine_id]) + 3_600_000})
    if events:
        store.load_frame("alert_events", pd.DataFrame(events))

    # Sampled telemetry for the machines: drifting with damage; newer readings drift a little.
    tele = frame[frame["seq"] % telemetry_every == 0]
    parts = []
    for asset_type, sensors in _SENSORS.items():
        sub = tele[tele["asset_type"] == asset_type]
        dmg = np.clip(1 - sub["rul"].to_numpy() / 125, 0, 1) ** 3
        for name, (centre, noise, late) in sensors.items():
            shift = noise * 0.8 * (sub["ts"].to_numpy() > t0 + per * STEP_MS * 0.7)
            values = centre + late * dmg + shift + rng.normal(0, noise, len(sub))
            parts.append(pd.DataFrame({"machine_id": sub["machine_id"].to_numpy(), "asset_type": asset_type,
                                       "ts": sub["ts"].to_numpy(), "seq": sub["seq"].to_numpy(), "sensor": name,
                                       "value": values, "arrived_at": sub["ts"].to_numpy()}))
    store.load_frame("telemetry", pd.concat(parts, ignore_index=True))
    seen = frame.groupby("machine_id").agg(asset_type=("asset_type", "first"), ts=("ts", "max"))
    batch = Batch(telemetry_seen={str(m): (str(r.asset_type), int(r.ts)) for m, r in seen.iterrows()})

    # Models, pipeline figures, dead letters, lag.
    for asset_name in _SENSORS:
        for label in ("20251120T080000Z", "20251126T080000Z"):
            batch.models.append((asset_name, label, asset_name, label, _meta(asset_name, label, rng), t0))
    for s in range(300):
        bucket = now - now % 1000 - s * 1000
        batch.throughput[(bucket, "telemetry")] = int(rng.poisson(machines / 2))
        batch.throughput[(bucket, "predictions")] = int(rng.poisson(machines / 10))
        batch.throughput[(bucket, "alerts")] = int(rng.poisson(0.3))
    for m in range(30):
        bucket = now - now % 60_000 - m * 60_000
        for reason, lam in (("not_json", 2.0), ("missing_field", 1.0), ("non_finite", 0.5)):
            batch.dlq_counts[(bucket, reason)] = int(rng.poisson(lam)) + 1
    # What the scorers did not score, as they report it every few seconds.
    for n in range(12):
        since = now - (n + 1) * 300_000
        for source, role, scale in (("scoring-0", "scoring", 1.0), ("edge-site-a", "edge", 0.2)):
            counts = {"scored": int(rng.poisson(machines * 250 * scale)), "duplicate": int(rng.poisson(40 * scale)),
                      "late": int(rng.poisson(8 * scale)), "warmup": int(rng.poisson(30 * scale)),
                      "unscorable": int(rng.poisson(2 * scale)), "rejected": int(rng.poisson(5 * scale))}
            resets = {"restart": int(rng.poisson(1.0 * scale)), "gap": int(rng.poisson(0.5 * scale))}
            for kind, tally in (("count", counts), ("reset", resets)):
                for outcome, count in tally.items():
                    batch.add("pipeline_stats", (source, role, since, since + 300_000, kind, outcome, count, now))
    store.write(batch)
    for n in range(5):
        store.load_frame("dlq_samples", pd.DataFrame({
            "received_at": [now - n * 7000], "reason": ["not_json"], "detail": ["expected object, got garbage"],
            "mqtt_topic": [f"forewarn/site-a/pump-{n:05d}/telemetry"], "size": [17]}))
    store.replace_lag([
        ("forewarn-scoring", "telemetry", "telemetry", p, 1000 * p, 1000 * p + 40 + p, 40 + p, now) for p in range(3)
    ] + [("forewarn-dashboard", "predictions", "predictions", p, 900, 900, 0, now) for p in range(3)])
    return store.counts()
