"""Turn Kafka records into store rows. Pure: no broker, no clock other than ``now_ms``.

A record that does not decode, or that decodes into a value the store cannot hold (an integer
beyond int64, text that is not UTF-8), is counted in :attr:`Ingest.bad` and skipped with a
log line (the dashboard only reads; what is wrong upstream is the producers' dead-letter
business), never allowed to stop the consumer.

Every row carries its arrival time: the bridge's ``ingest_ts`` when the record has one, never
later than ``now_ms`` (when the dashboard received it). Retention is measured on it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from dashboard.store import Batch, unstorable
from forewarn.contract import (
    TS_MAX_MS,
    TS_MIN_MS,
    Alert,
    MaintenanceEvent,
    PipelineStats,
    Prediction,
    Telemetry,
    WorkOrder,
    site_of,
)
from forewarn.deadletter import DeadLetter, ingest_ms
from forewarn.ports import MessageLike
from forewarn.topics import Topics

__all__ = ["ROLES", "Ingest", "Record"]

log = logging.getLogger(__name__)

# The topics the dashboard reads, by role.
ROLES: Final = ("predictions", "alerts", "maintenance", "telemetry", "dlq", "models", "pipeline", "workorders")

# What the dashboard reads from a Kafka message (confluent_kafka.Message fits).
Record = MessageLike


class Unstorable(ValueError):
    """A record that decodes but holds a value the store cannot."""


def _arrival(ingest_ts: int | None, now_ms: int) -> int:
    return now_ms if ingest_ts is None else min(ingest_ts, now_ms)


def _newer(ts: int, than: int, horizon: int | None) -> bool:
    """Whether event time ``ts`` beats ``than``: one believed (not beyond ``horizon``) beats one
    that is not, then the later wins."""
    def rank(value: int) -> tuple[bool, int]:
        return horizon is None or value <= horizon, value

    return rank(ts) > rank(than)


@dataclass
class Ingest:
    """Decodes records of the dashboard's topics into a :class:`Batch`.

    ``max_future_ms`` is how far ahead of ``now_ms`` a reading's event time is believed when
    choosing a machine's newest reading (a future-dated outlier must not pin it); None
    believes every event time.
    """

    topics: Topics
    sample_every: int = 5
    max_future_ms: int | None = 300_000
    bad: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._roles = {getattr(self.topics, role): role for role in ROLES}
        self._prediction = msgspec.json.Decoder(Prediction)
        self._alert = msgspec.json.Decoder(Alert)
        self._maintenance = msgspec.json.Decoder(MaintenanceEvent)
        self._telemetry = msgspec.json.Decoder(Telemetry)
        self._pipeline = msgspec.json.Decoder(PipelineStats)
        self._work_order = msgspec.json.Decoder(WorkOrder)

    def role(self, topic: str) -> str | None:
        return self._roles.get(topic)

    def batch(self, records: Iterable[Record], now_ms: int) -> Batch:
        batch = Batch()
        second = now_ms - now_ms % 1000
        minute = now_ms - now_ms % 60_000
        skipped: dict[str, tuple[int, str]] = {}
        for record in records:
            topic = record.topic() or ""
            role = self._roles.get(topic)
            partition, offset = record.partition(), record.offset()
            if partition is not None and offset is not None:
                batch.offsets[(topic, partition)] = offset + 1
            if role is None:
                continue
            batch.throughput[(second, role)] = batch.throughput.get((second, role), 0) + 1
            value = record.value()
            if value is None and role != "dlq":
                continue
            try:
                if role == "dlq":
                    self._dlq(batch, record, now_ms, minute)
                else:
                    self._decode(batch, role, record, value or b"", now_ms)
            except (msgspec.MsgspecError, ValueError, TypeError, OverflowError) as error:
                self.bad[role] = self.bad.get(role, 0) + 1
                n, first = skipped.get(role, (0, f"{partition}/{offset}: {error}"))
                skipped[role] = (n + 1, first)
        for role, (n, first) in skipped.items():
            log.warning("skipped %s %s record(s) that do not decode or do not fit the store (first at %s)",
                        n, role, first[:300])
        return batch

    def _checked(self, table: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
        why = unstorable(table, row)
        if why is not None:
            raise Unstorable(why)
        return row

    def _decode(self, batch: Batch, role: str, record: Record, value: bytes, now_ms: int) -> None:
        if role == "predictions":
            p = self._prediction.decode(value)
            _, kafka_ts = record.timestamp()
            kafka_ts = kafka_ts if TS_MIN_MS <= kafka_ts <= TS_MAX_MS else 0  # the broker's, or absent
            ingest_ts = p.ingest_ts if p.ingest_ts is not None else ingest_ms(record.headers())
            batch.add("predictions", self._checked("predictions", (
                p.machine_id, site_of(p.machine_id), p.asset_type, p.ts, p.seq, p.model, p.model_version,
                p.scored_at, p.p_fail, p.rul, p.ingest_ts, kafka_ts if kafka_ts > 0 else None, now_ms,
                _arrival(ingest_ts, now_ms))))
        elif role == "alerts":
            a = self._alert.decode(value)
            batch.add("alert_events", self._checked("alert_events", (
                a.alert_id, a.machine_id, site_of(a.machine_id), a.state, a.severity, a.rule, a.opened_at, a.ts,
                a.model, a.model_version, a.asset_type, a.p_fail, a.rul, a.message, a.acknowledged_by, a.note, a.actor,
                a.assigned_to, a.snoozed_until, a.escalation, now_ms, _arrival(ingest_ms(record.headers()), now_ms))))
        elif role == "maintenance":
            m = self._maintenance.decode(value)
            batch.add("maintenance", self._checked("maintenance", (
                m.identity, m.event_id, m.machine_id, site_of(m.machine_id), m.asset_type, m.ts, m.event,
                m.failure_mode, m.outcome, m.note, now_ms, _arrival(ingest_ms(record.headers()), now_ms))))
        elif role == "workorders":
            w = self._work_order.decode(value)
            batch.add("work_order_events", self._checked("work_order_events", (
                w.work_order_id, w.machine_id, site_of(w.machine_id), w.status, w.opened_at, w.opened_by, w.ts,
                w.alert_id, w.asset_type, w.title, w.closed_by, w.outcome, w.failure_mode, w.note, now_ms)))
        elif role == "telemetry":
            self._reading(batch, self._telemetry.decode(value), _arrival(ingest_ms(record.headers()), now_ms), now_ms)
        elif role == "pipeline":
            s = self._pipeline.decode(value)
            rows = [self._checked("pipeline_stats", (s.source, s.role, s.since, s.until, kind, outcome, n, now_ms))
                    for kind, tally in (("count", s.counts), ("reset", s.resets)) for outcome, n in tally.items()]
            for row in rows:
                batch.add("pipeline_stats", row)
        elif role == "models":
            self._model(batch, record, value, now_ms)

    def _reading(self, batch: Batch, t: Telemetry, arrived: int, now_ms: int) -> None:
        sampled = t.seq % self.sample_every == 0
        # The decoder bounds sensor names and values; what it leaves open (ts) is checked here,
        # on every row of a sampled reading and on one row of any other.
        shown = list(t.sensors.items()) if sampled else []
        rows = [self._checked("telemetry", (t.machine_id, t.asset_type, t.ts, t.seq, t.boot, sensor, reading,
                                            arrived)) for sensor, reading in shown]
        if not rows:
            self._checked("telemetry", (t.machine_id, t.asset_type, t.ts, t.seq, t.boot, "", 0.0, arrived))
        # The newest believable event time wins; one dated beyond belief only when nothing else is.
        horizon = None if self.max_future_ms is None else now_ms + self.max_future_ms
        seen = batch.telemetry_seen.get(t.machine_id)
        if seen is None or _newer(t.ts, seen[1], horizon):
            batch.telemetry_seen[t.machine_id] = (t.asset_type, t.ts)
        for row in rows:
            batch.add("telemetry", row)

    def _model(self, batch: Batch, record: Record, value: bytes, now_ms: int) -> None:
        # The bundle format belongs to scoring; it is TensorFlow-free and verifies the sha256.
        from forewarn.bundle import BundleError, unpack

        try:
            meta = unpack(value, f"models record {record.partition()}/{record.offset()}").meta
        except BundleError as error:
            self.bad["models"] = self.bad.get("models", 0) + 1
            log.warning("skipping a model bundle: %s", error)
            return
        meta_json = msgspec.json.encode(_meta_summary(meta)).decode()
        batch.models.append((meta.asset_type, meta.version, meta.name, meta.created_at, meta_json, now_ms))

    def _dlq(self, batch: Batch, record: Record, now_ms: int, minute: int) -> None:
        # Whichever component wrote it, the dead-letter record has one definition.
        letter = DeadLetter.from_message(record)
        reason = letter.reason
        sample = self._checked("dlq_samples", (now_ms, reason, letter.detail[:300], letter.mqtt_topic or None,
                                               len(letter.value)))
        batch.dlq_counts[(minute, reason)] = batch.dlq_counts.get((minute, reason), 0) + 1
        batch.add("dlq_samples", sample)


def _meta_summary(meta: Any) -> dict[str, Any]:
    """What the Models page needs from a bundle's model.json (everything but the graph)."""
    return {
        "name": meta.name,
        "asset_type": meta.asset_type,
        "version": meta.version,
        "created_at": meta.created_at,
        "window": meta.input.window,
        "features": [f.name for f in meta.input.features],
        "targets": msgspec.to_builtins(meta.targets),
        "thresholds": msgspec.to_builtins(meta.thresholds),
        "feature_stats": msgspec.to_builtins(meta.feature_stats),
        "metrics": meta.metrics,
        "training": meta.training,
        "lineage": meta.lineage,
        "sha256": meta.sha256,
    }
