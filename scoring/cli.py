"""``forewarn score``: run one scoring worker of the consumer group."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType

import click

from forewarn.cli_options import Flag, flags, kafka_options, settings_from
from scoring.settings import ScoringSettings

__all__ = ["score"]

log = logging.getLogger(__name__)

_PATH = click.Path(path_type=Path, file_okay=False)

SCORING_FLAGS = (
    Flag("--group-id", "scoring.group_id", "Kafka consumer group of the scoring workers."),
    Flag("--worker-id", "scoring.worker_id",
         "Stable name of this worker; keep it across restarts so a new process fences the old one "
         "at once (default: host name + pid)."),
    Flag("--models-dir", "scoring.models_dir", "Serve the bundles in this folder too (models/<asset>/current).",
         _PATH),
    Flag("--stride", "scoring.stride", "Score readings whose seq is a multiple of this.", click.IntRange(1)),
    Flag("--max-gap", "scoring.max_gap", "A seq jump larger than this restarts a machine's window.",
         click.IntRange(1)),
    Flag("--max-imputed", "scoring.max_imputed", "Consecutive readings a missing sensor may be imputed for.",
         click.IntRange(0)),
    Flag("--reorder-slack", "scoring.reorder_slack",
         "Readings held back per machine waiting for a missing earlier one (0: late readings are dropped).",
         click.IntRange(0)),
    Flag("--max-batch", "scoring.max_batch", "Records per transaction at most.", click.IntRange(1)),
    Flag("--commit-interval-ms", "scoring.commit_interval_ms",
         "Longest wait for a batch's first record; a batch is what has arrived, up to --max-batch.",
         click.IntRange(1)),
    Flag("--transaction-timeout-ms", "scoring.transaction_timeout_ms",
         "Kafka transaction timeout: how long a killed worker's open transaction can block its partitions.",
         click.IntRange(1000)),
    Flag("--session-timeout-ms", "scoring.session_timeout_ms",
         "Consumer group session timeout: how long a dead worker keeps its partitions.", click.IntRange(6000)),
    Flag("--threads", "scoring.threads", "onnxruntime intra-op threads (0 = all cores; default 1).",
         click.IntRange(0)),
    Flag("--score-batch", "scoring.score_batch", "Windows per onnxruntime call.", click.IntRange(1)),
    Flag("--score-slice", "scoring.score_slice",
         "Score larger poll batches in slices of this many readings, onnxruntime on its own thread.",
         click.IntRange(1)),
    Flag("--shadow", "scoring.shadow", "Run '<asset>.candidate' bundles of the models topic in shadow.",
         is_flag=True, secondary="--no-shadow"),
    Flag("--metrics-port", "scoring.metrics_port", "Serve Prometheus metrics on this port.",
         click.IntRange(0, 65535)),
    Flag("--alert-p-fail", "scoring.alerts.p_fail", "Open an alert at p_fail >= this (default: the bundle's).",
         click.FloatRange(0, 1, min_open=True)),
    Flag("--alert-consecutive", "scoring.alerts.consecutive",
         "... for this many predictions in a row (default: the bundle's).", click.IntRange(1)),
    Flag("--alert-rul-below", "scoring.alerts.rul_below", "Open an alert at rul < this (default: the bundle's).",
         click.FloatRange(0, min_open=True)),
    Flag("--alert-hysteresis", "scoring.alerts.hysteresis", "Resolve when p_fail < threshold - this.",
         click.FloatRange(0, 1)),
)


@click.command()
@kafka_options
@flags(*SCORING_FLAGS)
def score() -> None:
    """Score telemetry with the models in service: predictions and alerts, exactly once.

    Joins the consumer group, rebuilds window and alert state from the scoring.state
    changelog, loads models from --models-dir and the compacted models topic (hot reload),
    and runs until SIGTERM or Ctrl-C, which finish the current transaction first.
    """
    from scoring.worker import ScoringWorker

    settings = settings_from(ScoringSettings)
    worker = ScoringWorker(settings)

    def drain(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: finishing the current batch", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    try:
        worker.start()
        click.echo(f"scoring as {worker.worker_id} in group {settings.scoring.group_id}; "
                   f"serving {sorted(m.bundle.label for m in worker.registry.serving.values()) or 'no model yet'}",
                   err=True)
        worker.run()
    finally:
        worker.close()
