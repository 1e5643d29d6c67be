"""Prometheus metrics of a scoring worker, on the shared endpoint (one registry per worker, so
tests can run several in one process).

The per-batch counts (readings by outcome, window resets, predictions by asset type) are typed
tallies: the worker counts into them while it builds a batch and flushes them once that batch's
transaction has committed, so an aborted and re-done batch is counted once.

``forewarn_scoring_readings{outcome}``: every reading consumed is counted once under one of
:data:`~forewarn.contract.PIPELINE_OUTCOMES` — ``scored``, ``rejected`` (dead-lettered), or the reason it was not scored
(``duplicate``, ``late``, ``warmup``, ``stride``, ``unscorable``; see :mod:`scoring.engine`);
readings held back for reordering are counted when they are released. The older outcomes
``accepted``, ``dropped`` and ``unscored`` (:data:`LEGACY_OUTCOMES`) overlap those and are still
exported for the dashboards and tests that read them: do not sum across both sets.
``forewarn_scoring_window_resets{reason}``: machines whose window started afresh (``restart``,
``gap``).
``forewarn_model_refusals_total{asset_type,role,reason}``: bundles refused (``unsigned``,
``unknown_key``, ``bad_signature``, ``rollback``, or a schema reason: ``input_schema``,
``bad_format``, ``sha256_mismatch``, ...); each is also a ``model_refused`` alert event.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from forewarn.contract import PIPELINE_OUTCOMES, PIPELINE_RESETS, Alert
from forewarn.metrics import MetricsEndpoint
from scoring.engine import BatchResult

__all__ = ["LEGACY_OUTCOMES", "ScoringMetrics"]

LEGACY_OUTCOMES = ("accepted", "dropped", "unscored")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0)
_MAX_LATENCY_SAMPLES = 1000
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 20_000, 50_000)


class ScoringMetrics(MetricsEndpoint):
    """The worker's metrics; :attr:`readings_by_outcome` and :attr:`predictions_by_asset` are
    the tallies of one batch (flushed with :meth:`flush` when it commits)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.readings = Counter("forewarn_scoring_readings", "Telemetry readings consumed", ["outcome"], registry=r)
        self.predictions = Counter("forewarn_scoring_predictions", "Predictions committed", ["asset_type"],
                                   registry=r)
        self.batch_size = Histogram("forewarn_scoring_batch_readings", "Readings per transaction",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.inference = Histogram("forewarn_scoring_inference_seconds", "onnxruntime time per batch",
                                   ["asset_type"], registry=r)
        self.transaction = Histogram("forewarn_scoring_transaction_seconds", "Time to commit one transaction",
                                     registry=r)
        self.latency = Histogram("forewarn_scoring_latency_seconds",
                                 "Reading's event time (or ingest time) to committed prediction",
                                 ["since"], buckets=_LATENCY_BUCKETS, registry=r)
        self.lag = Gauge("forewarn_scoring_consumer_lag", "Telemetry records not yet consumed", ["partition"],
                         registry=r)
        self.alerts = Counter("forewarn_scoring_alerts", "Alert events", ["state", "rule"], registry=r)
        self.models = Counter("forewarn_scoring_model_offers", "Bundles offered", ["role", "outcome"], registry=r)
        self.refusals = Counter("forewarn_model_refusals", "Model bundles refused, by reason",
                                ["asset_type", "role", "reason"], registry=r)
        self.agreement = Gauge("forewarn_scoring_shadow_agreement",
                               "Share of predictions where the candidate takes the same alert decision",
                               ["asset_type"], registry=r)
        self.shadow_delta = Gauge("forewarn_scoring_shadow_p_fail_mae",
                                  "Mean |p_fail(candidate) - p_fail(serving)|", ["asset_type"], registry=r)
        self.restore = Histogram("forewarn_scoring_restore_seconds", "Time to rebuild state after an assignment",
                                 registry=r)
        self.resets = Counter("forewarn_scoring_window_resets", "Machines whose window started afresh",
                              ["reason"], registry=r)
        for outcome in (*PIPELINE_OUTCOMES, *LEGACY_OUTCOMES):
            self.readings.labels(outcome)  # every outcome is exported from the start, at 0
        for reason in PIPELINE_RESETS:
            self.resets.labels(reason)
        self.readings_by_outcome = self.tally(self.readings)
        self.resets_by_reason = self.tally(self.resets)
        self.predictions_by_asset = self.tally(self.predictions)

    def observe_batch(self, result: BatchResult, alerts: list[Alert], n_readings: int, n_rejected: int,
                      now_ms: float) -> None:
        """Count a batch whose transaction committed at ``now_ms``."""
        self.batch_size.observe(n_readings)
        outcomes = self.readings_by_outcome
        outcomes["scored"] += result.scored
        outcomes.update(result.not_scored)
        outcomes["rejected"] += n_rejected
        outcomes["accepted"] += result.accepted
        outcomes["dropped"] += result.dropped
        outcomes["unscored"] += result.unscored
        self.resets_by_reason.update(result.resets)
        self.predictions_by_asset.update(result.per_asset)
        for alert in alerts:
            self.alerts.labels(alert.state, alert.rule).inc()
        for asset, seconds in result.inference_s.items():
            self.inference.labels(asset).observe(seconds)
        self.flush()
        if result.prediction_ts:
            step = max(1, len(result.prediction_ts) // _MAX_LATENCY_SAMPLES)
            event = self.latency.labels("event")
            ingest = self.latency.labels("ingest")
            for ts, ingest_ts in result.prediction_ts[::step]:
                event.observe(max(0.0, (now_ms - ts) / 1000))
                if ingest_ts is not None:
                    ingest.observe(max(0.0, (now_ms - ingest_ts) / 1000))
