"""``forewarn edge``: the plant gateway."""

from __future__ import annotations

import click

from edge.settings import EdgeSettings
from forewarn.cli_options import Flag, flags, kafka_options, mqtt_options, settings_from

__all__ = ["edge"]

EDGE_FLAGS = (
    Flag("--client-id", "edge.client_id"),
    Flag("--data-dir", "edge.data_dir"),
    Flag("--buffer-max-bytes", "edge.buffer_max_bytes"),
    Flag("--buffer-policy", "edge.buffer_policy"),
    Flag("--buffer-sync", "edge.buffer_sync"),
    Flag("--disk-full-hold-bytes", "edge.disk_full_hold_bytes"),
    Flag("--stats-interval", "edge.stats_interval_s"),
    Flag("--sites", "edge.sites"),
    Flag("--models-dir", "edge.models_dir"),
    Flag("--models-sync", "edge.models_sync", secondary="--no-models-sync"),
    Flag("--receive-maximum", "edge.receive_maximum"),
    Flag("--session-expiry", "edge.session_expiry_s"),
    Flag("--max-batch", "edge.max_batch"),
    Flag("--publish-qos", "edge.publish_qos"),
    Flag("--publish-predictions", "edge.publish_predictions", secondary="--no-publish-predictions"),
    Flag("--persist-windows", "edge.persist_windows", secondary="--no-persist-windows"),
    Flag("--dead-letter-after", "edge.dead_letter_after"),
    Flag("--stride", "scoring.stride"),
    Flag("--reorder-slack", "scoring.reorder_slack"),
    Flag("--threads", "scoring.threads"),
    Flag("--alert-p-fail", "scoring.alerts.p_fail"),
    Flag("--alert-consecutive", "scoring.alerts.consecutive"),
    Flag("--metrics-port", "edge.metrics_port"),
    Flag("--metrics-host", "edge.metrics_host"),
    Flag("--shutdown-timeout", "edge.shutdown_timeout_s"),
)


@click.command()
@kafka_options
@mqtt_options
@flags(EdgeSettings, *EDGE_FLAGS)
def edge() -> None:
    """Run the edge gateway at a plant: score locally, store and forward to Kafka.

    Subscribes to the plant broker's telemetry, gateway batches and maintenance events (QoS 1,
    persistent session), scores with the last good model bundle on disk (the same windows and
    alert rules as the data-centre workers, set by the same [scoring] section and
    FOREWARN_SCORING__* variables), publishes predictions and alerts on
    forewarn/<site>/<machine>/prediction and .../alert, and forwards everything to Kafka
    through a durable SQLite buffer. An MQTT message is acknowledged only once its records are
    in the buffer. Kafka being unreachable only makes the buffer grow. SIGTERM or Ctrl-C: finish
    the batch, forward what it can within --shutdown-timeout, stop.
    """
    from edge.gateway import EdgeGateway

    settings = settings_from(EdgeSettings)
    gateway = EdgeGateway(settings)

    with gateway.stop_on_signals(lambda line: click.echo(line, err=True)):
        gateway.start()
        o = settings.edge
        serving = sorted(gateway.registry.serving.items())
        served = ", ".join(f"{a}={m.bundle.label}" for a, m in serving) or "no model yet"
        click.echo(f"edge {o.client_id}: MQTT {settings.mqtt.host}:{settings.mqtt.port} -> Kafka "
                   f"{settings.kafka.bootstrap_servers}; buffer {o.buffer_path} ({o.buffer_policy}); serving "
                   f"{served}; SIGTERM or Ctrl-C stops it", err=True)
        gateway.run()
