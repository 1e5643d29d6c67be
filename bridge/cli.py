"""``forewarn bridge`` and ``forewarn dlq replay|stats``."""

from __future__ import annotations

import sys

import click

from bridge.settings import BridgeSettings
from forewarn.cli_options import Flag, flags, kafka_options, mqtt_options, settings_from
from forewarn.contract import Reason
from forewarn.topics import Topics

__all__ = ["bridge", "dlq"]

BRIDGE_FLAGS = (
    Flag("--client-id", "bridge.client_id"),
    Flag("--share-group", "bridge.share_group"),
    Flag("--receive-maximum", "bridge.receive_maximum"),
    Flag("--max-in-flight", "bridge.max_in_flight"),
    Flag("--dead-letter-after", "bridge.dead_letter_after"),
    Flag("--session-expiry", "bridge.session_expiry_s"),
    Flag("--metrics-port", "bridge.metrics_port"),
    Flag("--metrics-host", "bridge.metrics_host"),
    Flag("--shutdown-timeout", "bridge.shutdown_timeout_s"),
    Flag("--check-topics", "bridge.check_topics", secondary="--no-check-topics"),
    Flag("--shared-subscriptions", "bridge.shared_subscriptions"),
    Flag("--max-packet-bytes", "bridge.max_packet_bytes"),
    Flag("--announce-max-packet", "bridge.announce_max_packet", secondary="--no-announce-max-packet"),
    Flag("--queue-watch", "stack.queue_watch", secondary="--no-queue-watch"),
    Flag("--max-queued-messages", "stack.max_queued_messages"),
    Flag("--max-queued-bytes", "stack.max_queued_bytes"),
)


@click.command()
@kafka_options
@mqtt_options
@flags(BridgeSettings, *BRIDGE_FLAGS)
def bridge() -> None:
    """Forward MQTT telemetry, gateway batches and maintenance events to Kafka.

    Subscribes with QoS 1 on a persistent session (clean start off) through a shared
    subscription (plainly, with a warning, on a broker without them; MQTT 3.1.1 when the
    broker refuses MQTT 5), and acknowledges each MQTT message only once Kafka confirmed every record
    made from it: a crash can duplicate, never lose. Invalid payloads go to the dead-letter
    topic with their reason. SIGTERM or Ctrl-C: stop intake, wait for Kafka, acknowledge,
    disconnect.

    With the queue watch on (the default), a second MQTT connection follows the broker's
    stored-message counts ($SYS, as Mosquitto publishes them) and warns when they pass
    stack.queue_warn_fraction of the queue caps given here (set them to the broker's own).
    """
    from bridge.broker_watch import BrokerWatch, QueueCaps
    from bridge.service import Bridge

    settings = settings_from(BridgeSettings)
    service = Bridge(settings)
    watch = None
    if settings.stack.queue_watch:
        watch = BrokerWatch(settings.mqtt, f"{settings.bridge.client_id}-watch", QueueCaps.from_stack(settings.stack),
                            service.metrics)

    with service.stop_on_signals(lambda line: click.echo(line, err=True)):
        service.start()
        click.echo(f"bridge {settings.bridge.client_id}: MQTT {settings.mqtt.host}:{settings.mqtt.port} -> Kafka "
                   f"{settings.kafka.bootstrap_servers} (topics {service.topics.telemetry}, "
                   f"{service.topics.maintenance}, {service.topics.dlq}); SIGTERM or Ctrl-C stops it", err=True)
        if watch is not None:
            watch.start()
        try:
            service.run()
        finally:
            if watch is not None:
                watch.stop()


@click.group()
def dlq() -> None:
    """Inspect and replay the dead-letter topic (telemetry.dlq)."""


@dlq.command("stats")
@kafka_options
def dlq_stats() -> None:
    """Count dead-letter records by reason."""
    from bridge.dlq import stats

    settings = settings_from(BridgeSettings)
    counts = stats(settings.kafka, Topics.from_settings(settings.topics))
    for reason, n in counts.most_common():
        click.echo(f"{reason:20} {n:>10}")
    click.echo(f"{'total':20} {sum(counts.values()):>10}")


@dlq.command("replay")
@click.option("--reason", type=click.Choice([r.value for r in Reason]), default=None,
              help="Replay only records rejected for this reason (default: all).")
@kafka_options
def dlq_replay(reason: str | None) -> None:
    """Re-validate dead-letter records and re-send those that pass now (after a contract fix).

    Reads the whole topic; what still fails stays where it is. Running it twice sends twice:
    consumers drop duplicates by (machine_id, seq).
    """
    from bridge.dlq import replay

    settings = settings_from(BridgeSettings)
    result = replay(settings.kafka, Topics.from_settings(settings.topics), reason)
    click.echo(f"scanned {result.scanned}, matched {result.matched}, replayed {result.replayed_payloads} "
               f"payload(s) as {result.records_sent} record(s)")
    for why, n in result.still_invalid.most_common():
        click.echo(f"still invalid: {why:20} {n:>8}")
    if result.matched and not result.replayed_payloads:
        sys.exit(1)
