"""``forewarn edge``: the plant gateway."""

from __future__ import annotations

from pathlib import Path

import click

from edge.settings import EdgeSettings
from forewarn.cli_options import Flag, flags, kafka_options, mqtt_options, settings_from

__all__ = ["edge"]

_PATH = click.Path(path_type=Path)

EDGE_FLAGS = (
    Flag("--client-id", "edge.client_id",
         "Stable MQTT client id; it names the persistent session on the plant broker "
         "(default forewarn-edge-<hostname>)."),
    Flag("--data-dir", "edge.data_dir", "Folder of the buffer database and the last good model bundles.", _PATH),
    Flag("--buffer-max-bytes", "edge.buffer_max_bytes", "Size bound of the buffer in bytes.",
         click.IntRange(64 * 1024)),
    Flag("--buffer-policy", "edge.buffer_policy",
         "When the buffer is full: block (stop acknowledging MQTT; nothing is lost) or drop_oldest.",
         click.Choice(["block", "drop_oldest"])),
    Flag("--buffer-sync", "edge.buffer_sync", "SQLite synchronous mode: NORMAL survives kill -9, FULL power cuts.",
         click.Choice(["NORMAL", "FULL"])),
    Flag("--sites", "edge.sites", "Comma-separated sites to subscribe to (default: every site on the broker)."),
    Flag("--models-dir", "edge.models_dir", "Bundles to seed the edge with (kept under DATA_DIR/models).", _PATH),
    Flag("--models-sync", "edge.models_sync", "Take new bundles from the Kafka models topic.", is_flag=True,
         secondary="--no-models-sync"),
    Flag("--receive-maximum", "edge.receive_maximum",
         "Unacknowledged MQTT messages the broker may send at once.", click.IntRange(1, 65535)),
    Flag("--session-expiry", "edge.session_expiry_s",
         "Seconds the broker keeps the session (and queues messages) while the edge is away.", click.IntRange(0)),
    Flag("--max-batch", "edge.max_batch", "MQTT messages scored and committed together at most.", click.IntRange(1)),
    Flag("--publish-qos", "edge.publish_qos", "QoS of local prediction/alert publications.", click.IntRange(0, 1)),
    Flag("--publish-predictions", "edge.publish_predictions", "Publish every prediction on local MQTT.",
         is_flag=True, secondary="--no-publish-predictions"),
    Flag("--persist-windows", "edge.persist_windows", "Keep machine windows in the buffer database.",
         is_flag=True, secondary="--no-persist-windows"),
    Flag("--dead-letter-after", "edge.dead_letter_after",
         "Times Kafka may refuse a record for good (sent alone) before it goes to the dead-letter topic.",
         click.IntRange(1)),
    Flag("--stride", "edge.stride", "Score readings whose seq is a multiple of this.", click.IntRange(1)),
    Flag("--reorder-slack", "edge.reorder_slack", "Readings held per machine waiting for a missing seq.",
         click.IntRange(0)),
    Flag("--threads", "edge.threads", "onnxruntime intra-op threads (0 = all cores).", click.IntRange(0)),
    Flag("--alert-p-fail", "edge.alerts.p_fail", "Override the bundle's p_fail alert threshold.",
         click.FloatRange(0, 1, min_open=True)),
    Flag("--alert-consecutive", "edge.alerts.consecutive", "Override the bundle's consecutive predictions.",
         click.IntRange(1)),
    Flag("--metrics-port", "edge.metrics_port", "Serve Prometheus metrics on this port (0 = any free port).",
         click.IntRange(0, 65535)),
    Flag("--metrics-host", "edge.metrics_host", "Address the metrics endpoint listens on."),
    Flag("--shutdown-timeout", "edge.shutdown_timeout_s", "Seconds a shutdown keeps forwarding the buffer.",
         click.FloatRange(0)),
)


@click.command()
@kafka_options
@mqtt_options
@flags(*EDGE_FLAGS)
def edge() -> None:
    """Run the edge gateway at a plant: score locally, store and forward to Kafka.

    Subscribes to the plant broker's telemetry, gateway batches and maintenance events (QoS 1,
    persistent session), scores with the last good model bundle on disk (the same windows and
    alert rules as the data-centre workers), publishes predictions and alerts on
    forewarn/<site>/<machine>/prediction and .../alert, and forwards everything to Kafka
    through a durable SQLite buffer. An MQTT message is acknowledged only once its records are
    in the buffer. Kafka being unreachable only makes the buffer grow. SIGTERM or Ctrl-C: finish
    the batch, forward what it can within --shutdown-timeout, stop.
    """
    from edge.gateway import EdgeGateway

    settings = settings_from(EdgeSettings)
    gateway = EdgeGateway(settings)

    gateway.stop_on_signals(lambda line: click.echo(line, err=True))
    gateway.start()
    o = settings.edge
    served = ", ".join(f"{a}={m.bundle.label}" for a, m in sorted(gateway.registry.serving.items())) or "no model yet"
    click.echo(f"edge {o.client_id}: MQTT {settings.mqtt.host}:{settings.mqtt.port} -> Kafka "
               f"{settings.kafka.bootstrap_servers}; buffer {o.buffer_path} ({o.buffer_policy}); serving {served}; "
               "SIGTERM or Ctrl-C stops it", err=True)
    gateway.run()
