"""The scoring worker's settings: the shared connections plus a ``scoring`` section.

Set them in ``forewarn.toml`` (``[scoring]``), with ``FOREWARN_SCORING__*`` environment
variables (e.g. ``FOREWARN_SCORING__STRIDE=5``) or with the ``forewarn score`` flags.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from forewarn.settings import ServiceSettings

__all__ = ["AlertOptions", "ScoringOptions", "ScoringSettings"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AlertOptions(_Section):
    """Alert rules. ``None`` means: take the value from the model bundle's thresholds."""

    p_fail: float | None = Field(None, gt=0, le=1, description="open an alert at p_fail >= this (default: the "
                                 "bundle's threshold)")
    consecutive: int | None = Field(None, ge=1, description="predictions in a row past the p_fail or rul_below "
                                    "threshold that open an alert (default: the bundle's)")
    rul_below: float | None = Field(None, gt=0, description="open an alert at rul < this, for consecutive "
                                    "predictions (default: the bundle's threshold)")
    hysteresis: float = Field(0.1, ge=0, lt=1, description="resolve when p_fail < the p_fail threshold - this")
    rul_hysteresis: float = Field(0.2, ge=0, description="resolve when rul >= rul_below * (1 + this)")
    resolve_consecutive: int | None = Field(None, ge=1, description="recovered predictions in a row that resolve "
                                            "an alert (default: consecutive)")
    critical_p_fail: float = Field(0.9, gt=0, le=1, description="severity critical at or above this p_fail")
    critical_rul_fraction: float = Field(0.5, gt=0, le=1,
                                         description="severity critical when rul < rul_below * this")
    quiet_after_repair: int | None = Field(None, ge=0, description="predictions after a repair that cannot "
                                           "open an alert (default: the model's window length)")


class ScoringOptions(_Section):
    """How the worker consumes, scores and commits."""

    group_id: str = Field("forewarn-scoring", description="Kafka consumer group of the scoring workers")
    worker_id: str | None = Field(None, description="stable name of this worker (its transactional.id); keep it "
                                  "across restarts so a new process fences the old one at once (default: host "
                                  "name + pid)")
    models_dir: Path | None = Field(None, description="serve the bundles in this folder (<asset>/current) too, "
                                    "besides those of the models topic")
    stride: int = Field(1, ge=1, description="score readings whose seq is a multiple of this")
    max_gap: int | None = Field(10, ge=1, description="a seq jump larger than this restarts a machine's window")
    max_imputed: int = Field(5, ge=0, description="consecutive readings a missing sensor may be imputed for")
    reorder_slack: int = Field(2, ge=0, description="readings held back per machine waiting for a missing "
                               "earlier seq (0: late readings are dropped)")
    max_batch: int = Field(20_000, ge=1, description="records per transaction at most")
    commit_interval_ms: int = Field(100, ge=1, description="longest wait for a batch's first record (a batch "
                                    "is what has arrived, up to max_batch: it never waits for more)")
    transaction_timeout_ms: int = Field(10_000, ge=1000, description="Kafka transaction timeout: how long a killed "
                                        "worker's open transaction can block its partitions")
    session_timeout_ms: int = Field(30_000, ge=6000, description="consumer group session timeout: how long "
                                    "a dead worker keeps its partitions (a restarted one with the same "
                                    "worker_id takes them back at once)")
    threads: int = Field(1, ge=0, description="intra-op threads of onnxruntime (0 = all cores); one is fastest "
                         "on small boxes, where the worker's own thread needs the other core")
    score_slice: int = Field(8192, ge=1, description="a larger poll batch is scored in slices of this many "
                             "readings, onnxruntime working on one while the next is windowed")
    score_batch: int = Field(64, ge=1, description="windows per onnxruntime call, always this many (a short "
                             "call is padded, so scores never depend on how windows were batched)")
    shadow: bool = Field(True, description="run '<asset>.candidate' bundles from the models topic in shadow")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics on this port "
                                     "(unset = off)")
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint listens on (loopback by "
                              "default; the endpoint has no authentication, so expose it deliberately)")
    restore_timeout_s: float = Field(120.0, gt=0, description="how long rebuilding state after an assignment may "
                                     "take, in seconds")
    stats_interval_s: float = Field(10.0, gt=0, description="publish what was scored and why the rest was not "
                                    "(a PipelineStats record on the pipeline topic) this often, in seconds, when "
                                    "anything was counted")
    retry_backoff_max_s: float = Field(5.0, ge=0, description="longest pause between attempts to recover from a "
                                       "failed transaction or an unreachable Kafka, in seconds (the pause doubles "
                                       "from a twentieth of a second up to this)")
    alerts: AlertOptions = AlertOptions()


class ScoringSettings(ServiceSettings):
    """Everything ``forewarn score`` needs."""

    scoring: ScoringOptions = ScoringOptions()
