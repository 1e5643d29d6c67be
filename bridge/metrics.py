"""Prometheus metrics of one bridge, in a registry of its own (several bridges may share a
process in tests; the default registry would refuse the second)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from forewarn.metrics import MetricsEndpoint

__all__ = ["BridgeMetrics"]

_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class BridgeMetrics(MetricsEndpoint):
    """received, forwarded, rejected by reason, in flight, Kafka errors, acknowledgement latency,
    and the MQTT broker's store as its ``$SYS`` reports it (set by :mod:`bridge.broker_watch`).

    The loop counts into the tallies (``received_by_kind``, ``forwarded_by_topic``,
    ``rejected_by_reason``, ``acked_now``, ``kafka_errors_now``); :meth:`flush` adds them to the
    counters once per round. ``dead_letters`` (rare) is incremented directly.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.received = Counter("forewarn_bridge_received", "MQTT messages received, by kind", ["kind"], registry=r)
        self.forwarded = Counter("forewarn_bridge_forwarded",
                                 "Kafka records confirmed by Kafka, by topic role", ["topic"], registry=r)
        self.rejected = Counter("forewarn_bridge_rejected",
                                "payloads or readings sent to the dead-letter topic, by reason", ["reason"], registry=r)
        self.acked = Counter("forewarn_bridge_acked", "MQTT messages acknowledged after Kafka confirmed them",
                             registry=r)
        self.kafka_errors = Counter("forewarn_bridge_kafka_errors",
                                    "records Kafka failed to deliver (they are re-sent)", registry=r)
        self.dead_letters = Counter("forewarn_bridge_dead_letters", "records Kafka refused for good, by what replaced "
                                    "them (to: dlq, dlq_cut = a refused dead letter cut short, dropped) and Kafka's "
                                    "error", ["to", "error"], registry=r)
        self.in_flight = Gauge("forewarn_bridge_in_flight_records",
                               "records produced whose MQTT message is not yet acknowledged", registry=r)
        self.in_flight_messages = Gauge("forewarn_bridge_in_flight_messages",
                                        "MQTT messages received and not yet acknowledged", registry=r)
        self.kafka_waiting = Gauge("forewarn_bridge_kafka_waiting",
                                   "1 while records wait longer than the warning period for Kafka", registry=r)
        self.mqtt_oversized = Counter("forewarn_bridge_mqtt_oversized", "MQTT messages longer than max_packet_bytes "
                                      "(read streaming, dead-lettered as too_large)", registry=r)
        self.mqtt_malformed = Counter("forewarn_bridge_mqtt_malformed", "packets from the broker that broke MQTT's "
                                      "encoding rules (the connection was closed and opened again)", registry=r)
        self.producer_rebuilds = Counter("forewarn_bridge_producer_rebuilds", "Kafka producers rebuilt after a fatal "
                                         "error (what they had not confirmed is sent again)", registry=r)
        self.broker_stored_messages = Gauge("forewarn_bridge_mqtt_broker_stored_messages",
                                            "messages in the MQTT broker's store, as its $SYS reports them",
                                            registry=r)
        self.broker_stored_bytes = Gauge("forewarn_bridge_mqtt_broker_stored_bytes",
                                         "payload bytes in the MQTT broker's store, as its $SYS reports them",
                                         registry=r)
        self.broker_dropped_messages = Gauge("forewarn_bridge_mqtt_broker_dropped_messages",
                                             "messages the MQTT broker dropped since it started (a client's queue "
                                             "was full), as its $SYS reports them", registry=r)
        self.broker_queue_near_cap = Gauge("forewarn_bridge_mqtt_broker_queue_near_cap",
                                           "1 while the broker's store is past stack.queue_warn_fraction of a "
                                           "queue cap", registry=r)
        self.ack_latency = Histogram("forewarn_bridge_ack_latency_seconds",
                                     "time from receiving an MQTT message to acknowledging it",
                                     buckets=_ACK_BUCKETS, registry=r)
        self.received_by_kind = self.tally(self.received)
        self.forwarded_by_topic = self.tally(self.forwarded)
        self.rejected_by_reason = self.tally(self.rejected)
        self.acked_now = self.total(self.acked)
        self.kafka_errors_now = self.total(self.kafka_errors)
