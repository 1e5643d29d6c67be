"""Prometheus metrics of one edge gateway, in a registry of its own.

The gateway counts each batch in a :class:`BatchCounts` of its own and adds it to the metrics
only once the batch is committed to the buffer (a batch the full buffer holds back is counted
when it finally goes in, once). The forwarder counts on its own thread in tallies of its own.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from forewarn.metrics import MetricsEndpoint, Tally, Total

__all__ = ["BatchCounts", "EdgeMetrics"]

log = logging.getLogger(__name__)


class EdgeMetrics(MetricsEndpoint):
    """Intake, scoring, the buffer and the uplink."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.received = Counter("forewarn_edge_received", "MQTT messages received, by kind", ["kind"], registry=r)
        self.rejected = Counter("forewarn_edge_rejected", "payloads or readings rejected, by reason", ["reason"],
                                registry=r)
        self.acked = Counter("forewarn_edge_acked", "MQTT messages acknowledged after their records were "
                             "committed to the buffer", registry=r)
        self.readings = Counter("forewarn_edge_readings", "readings by scoring outcome", ["outcome"], registry=r)
        for outcome in ("accepted", "dropped", "unscored"):
            self.readings.labels(outcome)  # every outcome is exported from the start, at 0
        self.predictions = Counter("forewarn_edge_predictions", "predictions made locally", registry=r)
        self.alerts = Counter("forewarn_edge_alerts", "alert events, by state", ["state"], registry=r)
        self.buffered = Counter("forewarn_edge_buffered", "records committed to the buffer, by topic role",
                                ["topic"], registry=r)
        self.forwarded = Counter("forewarn_edge_forwarded", "records Kafka confirmed, by topic role", ["topic"],
                                 registry=r)
        self.kafka_errors = Counter("forewarn_edge_kafka_errors", "failed deliveries (re-sent)", registry=r)
        self.dead_letters = Counter("forewarn_edge_dead_letters", "records Kafka refused for good, by where they went "
                                    "(to: dlq topic, or local table when the DLQ refused them too) and Kafka's error",
                                    ["to", "error"], registry=r)
        self.buffer_records = Gauge("forewarn_edge_buffer_records", "records waiting in the buffer", registry=r)
        self.buffer_bytes = Gauge("forewarn_edge_buffer_bytes", "bytes waiting in the buffer", registry=r)
        self.buffer_fill = Gauge("forewarn_edge_buffer_fill_ratio", "buffer bytes / bound", registry=r)
        self.buffer_near_full = Gauge("forewarn_edge_buffer_near_full", "1 above the warning fill", registry=r)
        self.buffer_blocked = Gauge("forewarn_edge_buffer_blocked", "1 while the full buffer stops intake",
                                    registry=r)
        self.evicted = Gauge("forewarn_edge_buffer_evicted", "records evicted under drop_oldest (lifetime of the "
                             "buffer file)", registry=r)
        self.uplink_up = Gauge("forewarn_edge_uplink_up", "1 while Kafka confirms records", registry=r)
        self.models = Counter("forewarn_edge_model_offers", "model bundles offered, by outcome", ["outcome"],
                              registry=r)
        self.step_seconds = Histogram("forewarn_edge_step_seconds", "decode + score + commit of one batch",
                                      registry=r)


class BatchCounts:
    """The counts of one batch, from intake to its commit; :meth:`flush` adds them to the metrics."""

    __slots__ = ("acked", "alerts", "buffered", "predictions", "readings", "received", "rejected")

    def __init__(self, metrics: EdgeMetrics) -> None:
        self.received = Tally(metrics.received)
        self.rejected = Tally(metrics.rejected)
        self.readings = Tally(metrics.readings)
        self.alerts = Tally(metrics.alerts)
        self.buffered = Tally(metrics.buffered)
        self.acked = Total(metrics.acked)
        self.predictions = Total(metrics.predictions)

    def flush(self) -> None:
        for tally in (self.received, self.rejected, self.readings, self.alerts, self.buffered):
            tally.flush()
        self.acked.flush()
        self.predictions.flush()
