"""Turn Kafka records into store rows. Pure: no broker, no clock other than ``now_ms``.

A record that does not decode is counted and skipped (the dashboard only reads; what is wrong
upstream is the producers' dead-letter business), never allowed to stop the consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from dashboard.store import Batch
from forewarn.contract import Alert, MaintenanceEvent, Prediction, Telemetry, site_of
from forewarn.deadletter import DeadLetter
from forewarn.ports import MessageLike
from forewarn.topics import Topics

__all__ = ["ROLES", "Ingest", "Record"]

log = logging.getLogger(__name__)

# The topics the dashboard reads, by role.
ROLES: Final = ("predictions", "alerts", "maintenance", "telemetry", "dlq", "models")


# What the dashboard reads from a Kafka message (confluent_kafka.Message fits).
Record = MessageLike


@dataclass
class Ingest:
    """Decodes records of the dashboard's topics into a :class:`Batch`."""

    topics: Topics
    sample_every: int = 5
    bad: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._roles = {getattr(self.topics, role): role for role in ROLES}
        self._prediction = msgspec.json.Decoder(Prediction)
        self._alert = msgspec.json.Decoder(Alert)
        self._maintenance = msgspec.json.Decoder(MaintenanceEvent)
        self._telemetry = msgspec.json.Decoder(Telemetry)

    def role(self, topic: str) -> str | None:
        return self._roles.get(topic)

    def batch(self, records: Iterable[Record], now_ms: int) -> Batch:
        batch = Batch()
        second = now_ms - now_ms % 1000
        minute = now_ms - now_ms % 60_000
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
            if role == "dlq":
                self._dlq(batch, record, now_ms, minute)
                continue
            if value is None:
                continue
            try:
                self._decode(batch, role, record, value, now_ms)
            except (msgspec.MsgspecError, ValueError) as error:
                self.bad[role] = self.bad.get(role, 0) + 1
                log.debug("skipping a bad %s record at %s/%s: %s", role, partition, offset, error)
        return batch

    def _decode(self, batch: Batch, role: str, record: Record, value: bytes, now_ms: int) -> None:
        if role == "predictions":
            p = self._prediction.decode(value)
            _, kafka_ts = record.timestamp()
            batch.add("predictions", (p.machine_id, site_of(p.machine_id), p.asset_type, p.ts, p.seq, p.model,
                                      p.model_version, p.scored_at, p.p_fail, p.rul, p.ingest_ts,
                                      kafka_ts if kafka_ts > 0 else None, now_ms))
        elif role == "alerts":
            a = self._alert.decode(value)
            batch.add("alert_events", (a.alert_id, a.machine_id, site_of(a.machine_id), a.state, a.severity, a.rule,
                                       a.opened_at, a.ts, a.model, a.model_version, a.asset_type, a.p_fail, a.rul,
                                       a.message, a.acknowledged_by, now_ms))
        elif role == "maintenance":
            m = self._maintenance.decode(value)
            batch.add("maintenance", (m.machine_id, site_of(m.machine_id), m.asset_type, m.ts, m.event,
                                      m.failure_mode, now_ms))
        elif role == "telemetry":
            t = self._telemetry.decode(value)
            seen = batch.telemetry_seen.get(t.machine_id)
            if seen is None or t.ts > seen[1]:
                batch.telemetry_seen[t.machine_id] = (t.asset_type, t.ts)
            if t.seq % self.sample_every == 0:
                for sensor, reading in t.sensors.items():
                    batch.add("telemetry", (t.machine_id, t.asset_type, t.ts, t.seq, sensor, reading))
        elif role == "models":
            self._model(batch, record, value, now_ms)

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
        batch.dlq_counts[(minute, reason)] = batch.dlq_counts.get((minute, reason), 0) + 1
        batch.add("dlq_samples", (now_ms, reason, letter.detail[:300], letter.mqtt_topic or None, len(letter.value)))


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
