"""Prometheus metrics of one edge gateway, in a registry of its own.

The gateway counts each batch in a :class:`BatchCounts` of its own and adds it to the metrics
only once the batch is committed to the buffer (a batch the full buffer or a full disk holds
back is counted when it finally goes in, once). The forwarder counts on its own thread in
tallies of its own.

Readings are counted by outcome with the names of :class:`~forewarn.contract.PipelineStats`:
``scored``, and why a reading was not scored (``duplicate``, ``late``, ``warmup``, ``stride``,
``unscorable``, ``rejected``: see :mod:`scoring.engine`; a reading held back for reordering is
counted when it is released); window resets by reason (``restart``, ``gap``). A
:class:`PipelineTally` adds the same committed counts up between two pipeline-stats records.
"""

from __future__ import annotations

import collections
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from forewarn.contract import PIPELINE_OUTCOMES, PIPELINE_RESETS, SCHEMA_VERSION, PipelineStats
from forewarn.metrics import MetricsEndpoint, Tally, Total

__all__ = ["BatchCounts", "EdgeMetrics", "PipelineTally"]

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
        self.readings = Counter("forewarn_edge_readings", "readings by outcome: scored, or why not (duplicate, "
                                "late, warmup, stride, unscorable, rejected)", ["outcome"], registry=r)
        for outcome in PIPELINE_OUTCOMES:
            self.readings.labels(outcome)  # every outcome is exported from the start, at 0
        self.producer_rebuilds = Counter("forewarn_edge_producer_rebuilds", "Kafka producers rebuilt after a fatal "
                                         "error (what they had not delivered is sent again)", registry=r)
        self.window_resets = Counter("forewarn_edge_window_resets", "machine windows started afresh, by reason "
                                     "(restart: the device restarted; gap: too long without readings)", ["reason"],
                                     registry=r)
        for reason in PIPELINE_RESETS:
            self.window_resets.labels(reason)
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
        self.disk_full = Gauge("forewarn_edge_disk_full", "1 while the buffer's file system has no room: the edge "
                               "scores and alerts locally but acknowledges no MQTT message", registry=r)
        self.disk_held_bytes = Gauge("forewarn_edge_disk_full_held_bytes", "bytes of scored, unacknowledged records "
                                     "held in memory while the disk is full", registry=r)
        self.buffer_moved_aside = Counter("forewarn_edge_buffer_moved_aside", "corrupt buffer files moved aside at "
                                          "start (a fresh buffer took their place)", registry=r)
        self.evicted = Gauge("forewarn_edge_buffer_evicted", "records evicted under drop_oldest (lifetime of the "
                             "buffer file)", registry=r)
        self.uplink_up = Gauge("forewarn_edge_uplink_up", "1 while Kafka confirms records", registry=r)
        self.stats_sent = Counter("forewarn_edge_pipeline_stats", "pipeline stats records buffered for the "
                                  "pipeline.stats topic", registry=r)
        self.models = Counter("forewarn_edge_model_offers", "model bundles offered, by outcome", ["outcome"],
                              registry=r)
        self.refusals = Counter("forewarn_model_refusals", "model bundles refused, by reason (unsigned, "
                                "unknown_key, bad_signature, rollback, or a schema reason)",
                                ["asset_type", "role", "reason"], registry=r)
        self.step_seconds = Histogram("forewarn_edge_step_seconds", "decode + score + commit of one batch",
                                      registry=r)


class BatchCounts:
    """The counts of one batch, from intake to its commit; :meth:`flush` adds them to the metrics."""

    __slots__ = ("acked", "alerts", "buffered", "predictions", "readings", "received", "rejected", "resets")

    def __init__(self, metrics: EdgeMetrics) -> None:
        self.received = Tally(metrics.received)
        self.rejected = Tally(metrics.rejected)
        self.readings = Tally(metrics.readings)
        self.resets = Tally(metrics.window_resets)
        self.alerts = Tally(metrics.alerts)
        self.buffered = Tally(metrics.buffered)
        self.acked = Total(metrics.acked)
        self.predictions = Total(metrics.predictions)

    def _tallies(self) -> tuple[Tally, ...]:
        return self.received, self.rejected, self.readings, self.resets, self.alerts, self.buffered

    def flush(self) -> None:
        for tally in self._tallies():
            tally.flush()
        self.acked.flush()
        self.predictions.flush()


class PipelineTally:
    """Committed reading outcomes and window resets since the last :meth:`stats` record."""

    def __init__(self, source: str, since_ms: int) -> None:
        self.source = source
        self.since_ms = since_ms
        self.counts: collections.Counter[str] = collections.Counter()
        self.resets: collections.Counter[str] = collections.Counter()

    def add(self, counts: BatchCounts) -> None:
        """Add a committed batch's outcomes (call before ``counts.flush()`` empties them)."""
        self.counts.update(counts.readings)
        self.resets.update(counts.resets)

    def stats(self, until_ms: int) -> PipelineStats:
        """The record for ``since .. until`` (every outcome, 0 where none)."""
        counts = {o: self.counts[o] for o in PIPELINE_OUTCOMES} | {k: n for k, n in self.counts.items() if n}
        return PipelineStats(SCHEMA_VERSION, self.source, "edge", self.since_ms, until_ms, counts,
                             {k: n for k, n in self.resets.items() if n})

    def restart(self, since_ms: int) -> None:
        """Start the next interval (after its record was committed)."""
        self.since_ms = since_ms
        self.counts.clear()
        self.resets.clear()
