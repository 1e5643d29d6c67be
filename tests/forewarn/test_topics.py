from __future__ import annotations

from forewarn.settings import TopicSettings
from forewarn.topics import Topics, batch_topic, mqtt_subscriptions, telemetry_topic, topic_specs


def test_registry_names_every_topic_with_prefix() -> None:
    specs = {s.role: s for s in topic_specs(TopicSettings(prefix="plant1.", partitions=12))}
    assert set(specs) >= {"telemetry", "maintenance", "dlq", "predictions", "alerts", "models"}
    assert specs["telemetry"].name == "plant1.telemetry"
    assert specs["models"].config["cleanup.policy"] == "compact"
    assert specs["models"].partitions == 1
    # Readings and repairs of a machine must reach the same scoring worker.
    assert specs["telemetry"].partitions == specs["maintenance"].partitions == 12
    assert Topics.from_settings(TopicSettings(prefix="x-")).dlq == "x-telemetry.dlq"


def test_mqtt_layout() -> None:
    assert telemetry_topic("site-a/pump-1") == "forewarn/site-a/pump-1/telemetry"
    assert batch_topic("site-a", "site-a/gw-1") == "forewarn/site-a/gateway/gw-1/batch"
    assert "forewarn/+/gateway/+/batch" in mqtt_subscriptions()


def test_replication_follows_the_cluster_unless_set() -> None:
    spec = {s.role: s for s in topic_specs(TopicSettings())}["telemetry"]
    assert spec.replication_factor is None
    assert [(s.replication_factor, s.min_insync) for s in (spec.for_cluster(n) for n in (1, 2, 3, 5))] == [
        (1, 1), (2, 1), (3, 2), (3, 2)]
    pinned = {s.role: s for s in topic_specs(TopicSettings(replication_factor=2))}["alerts"].for_cluster(5)
    assert (pinned.replication_factor, pinned.min_insync) == (2, 1)
    assert pinned.config["cleanup.policy"] == "delete"  # the spec's own entries stay
