"""The topic registry: every Kafka topic Forewarn uses, with its size and retention, and
the MQTT topic layout.

``telemetry`` and ``maintenance`` are keyed by machine_id and must have the same number of
partitions, so one scoring worker sees both the readings and the repairs of a machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final

from forewarn.settings import TopicSettings

__all__ = [
    "MQTT_ROOT",
    "TopicSpec",
    "Topics",
    "alert_topic",
    "batch_topic",
    "maintenance_topic",
    "mqtt_subscriptions",
    "prediction_topic",
    "telemetry_topic",
    "topic_specs",
]

DAY_MS: Final = 24 * 3600 * 1000
# Records carry event time as their timestamp. Kafka 4 rejects timestamps more than an hour
# ahead of the broker's clock by default (INVALID_RECORD); a simulator running faster than
# real time, a plant clock that is off, or a replay of old data must not be refused for it.
_ANY_TIME: Final = {"message.timestamp.after.max.ms": str(2**63 - 1),
                    "message.timestamp.before.max.ms": str(2**63 - 1)}


def default_replication(brokers: int) -> int:
    """The replication factor for a cluster of ``brokers``: min(3, brokers)."""
    return min(3, max(1, brokers))


def min_insync_for(replicas: int) -> int:
    """``min.insync.replicas`` for ``replicas`` copies: one less (at least 1), so an acks=all
    write is on two brokers when there are three and one may be down without writes refused."""
    return max(1, replicas - 1)


@dataclass(frozen=True)
class TopicSpec:
    """One Kafka topic: its logical role, real name, partitions and topic-level configs.

    ``replication_factor`` None follows the cluster (:meth:`for_cluster`): min(3, brokers),
    and ``min.insync.replicas`` RF − 1 unless the config names it, so that an acknowledged
    write (acks=all) is on two brokers and one broker may be down without refusing writes.
    """

    role: str
    name: str
    partitions: int
    replication_factor: int | None
    config: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def for_cluster(self, brokers: int) -> TopicSpec:
        """This spec with its replication settled for a cluster of ``brokers`` brokers."""
        rf = self.replication_factor or default_replication(brokers)
        config = {"min.insync.replicas": str(min_insync_for(rf)), **self.config}
        return replace(self, replication_factor=rf, config=config)

    @property
    def min_insync(self) -> int:
        """The ``min.insync.replicas`` this spec asks for (1, Kafka's default, when unset)."""
        return int(self.config.get("min.insync.replicas", "1"))


@dataclass(frozen=True)
class Topics:
    """Real topic names for the roles, with the configured prefix applied."""

    telemetry: str
    maintenance: str
    dlq: str
    predictions: str
    alerts: str
    models: str
    scoring_state: str
    pipeline: str
    notify_state: str
    notify_dlq: str
    workorders: str
    notify_preferences: str

    @classmethod
    def from_settings(cls, settings: TopicSettings) -> Topics:
        p = settings.prefix
        return cls(
            telemetry=f"{p}telemetry",
            maintenance=f"{p}maintenance",
            dlq=f"{p}telemetry.dlq",
            predictions=f"{p}predictions",
            alerts=f"{p}alerts",
            models=f"{p}models",
            scoring_state=f"{p}scoring.state",
            pipeline=f"{p}pipeline.stats",
            notify_state=f"{p}notify.state",
            notify_dlq=f"{p}notify.dlq",
            workorders=f"{p}workorders",
            notify_preferences=f"{p}notify.preferences",
        )


def topic_specs(settings: TopicSettings) -> list[TopicSpec]:
    """Every topic Forewarn needs, as ``forewarn topics create`` makes them.

    Topics whose records carry event time are bounded by size per partition, not by time:
    Kafka's time retention compares the records' own timestamps with now, so a backfill of
    last year's history would be deleted the moment it was written.
    """
    t = Topics.from_settings(settings)
    n, rf = settings.partitions, settings.replication_factor
    gib = 1024**3

    def by_size(gib_per_partition: float) -> dict[str, str]:
        return {"cleanup.policy": "delete", **_ANY_TIME, "retention.ms": "-1",
                "retention.bytes": str(int(gib_per_partition * gib))}

    compacted = {"cleanup.policy": "compact", **_ANY_TIME, "min.compaction.lag.ms": "0",
                 "segment.ms": str(10 * 60 * 1000), "min.cleanable.dirty.ratio": "0.1"}
    return [
        TopicSpec("telemetry", t.telemetry, n, rf, by_size(settings.telemetry_retention_gib),
                  "one record per reading, keyed by machine_id, timestamp = event time"),
        TopicSpec("maintenance", t.maintenance, n, rf, {"cleanup.policy": "delete", **_ANY_TIME, "retention.ms": "-1"},
                  "failure/repair/inspection events (ground truth), keyed by machine_id; kept forever"),
        TopicSpec("dlq", t.dlq, max(1, n // 2), rf, {"cleanup.policy": "delete", **_ANY_TIME,
                                                     "retention.ms": str(30 * DAY_MS)},
                  "rejected payloads: original bytes, reason and MQTT topic in headers (kept 30 days)"),
        TopicSpec("predictions", t.predictions, n, rf, by_size(settings.telemetry_retention_gib / 2),
                  "model outputs per window, keyed by machine_id"),
        TopicSpec("alerts", t.alerts, n, rf, by_size(0.25),
                  "alert lifecycle events, keyed by machine_id"),
        TopicSpec("models", t.models, 1, rf, {**compacted, "max.message.bytes": "52428800"},
                  "model bundles, compacted, keyed by model name (asset type)"),
        TopicSpec("scoring_state", t.scoring_state, n, rf, compacted,
                  "scoring workers' window state changelog, compacted, keyed by machine_id"),
        TopicSpec("pipeline", t.pipeline, 1, rf, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
                  "what each scorer did with its readings (PipelineStats: scored, and not scored by reason), "
                  "keyed by scorer; kept 7 days"),
        TopicSpec("notify_state", t.notify_state, n, rf, compacted,
                  "the notifier's durable record per alert (who was told, what is still owed), compacted, keyed "
                  "by alert_id on the alert's own partition number"),
        TopicSpec("notify_dlq", t.notify_dlq, 1, rf, {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
                  "notifications that could not be delivered after every retry, with the reason (kept 30 days)"),
        TopicSpec("workorders", t.workorders, 1, rf, compacted,
                  "work orders opened from alerts or machine pages and closed with an outcome, compacted, keyed by "
                  "work order id (closing one writes its maintenance event)"),
        TopicSpec("notify_preferences", t.notify_preferences, 1, rf, compacted,
                  "each dashboard user's notification preferences, compacted, keyed by user name"),
    ]


# -- MQTT ------------------------------------------------------------------------------

MQTT_ROOT: Final = "forewarn"


def telemetry_topic(machine_id: str) -> str:
    """``site-a/pump-1`` → ``forewarn/site-a/pump-1/telemetry``."""
    return f"{MQTT_ROOT}/{machine_id}/telemetry"


def maintenance_topic(machine_id: str) -> str:
    return f"{MQTT_ROOT}/{machine_id}/maintenance"


def prediction_topic(machine_id: str) -> str:
    return f"{MQTT_ROOT}/{machine_id}/prediction"


def alert_topic(machine_id: str) -> str:
    return f"{MQTT_ROOT}/{machine_id}/alert"


def batch_topic(site: str, gateway_id: str) -> str:
    """A gateway batch; ``gateway_id`` may be given as ``site/gw`` or just ``gw``."""
    gateway = gateway_id.rsplit("/", 1)[-1]
    return f"{MQTT_ROOT}/{site}/gateway/{gateway}/batch"


def mqtt_subscriptions() -> list[str]:
    """The MQTT topic filters that carry inbound data (telemetry, batches, maintenance)."""
    return [
        f"{MQTT_ROOT}/+/+/telemetry",
        f"{MQTT_ROOT}/+/gateway/+/batch",
        f"{MQTT_ROOT}/+/+/maintenance",
    ]
