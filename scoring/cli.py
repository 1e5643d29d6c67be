"""``forewarn score``: run one scoring worker of the consumer group."""

from __future__ import annotations

from pathlib import Path

import click

from forewarn.cli_options import Flag, flags, kafka_options, settings_from
from scoring.settings import ScoringSettings

__all__ = ["score"]

SCORING_FLAGS = (
    Flag("--group-id", "scoring.group_id"),
    Flag("--worker-id", "scoring.worker_id"),
    Flag("--models-dir", "scoring.models_dir", click.Path(path_type=Path, file_okay=False)),
    Flag("--stride", "scoring.stride"),
    Flag("--max-gap", "scoring.max_gap"),
    Flag("--max-imputed", "scoring.max_imputed"),
    Flag("--reorder-slack", "scoring.reorder_slack"),
    Flag("--max-batch", "scoring.max_batch"),
    Flag("--commit-interval-ms", "scoring.commit_interval_ms"),
    Flag("--transaction-timeout-ms", "scoring.transaction_timeout_ms"),
    Flag("--session-timeout-ms", "scoring.session_timeout_ms"),
    Flag("--threads", "scoring.threads"),
    Flag("--score-batch", "scoring.score_batch"),
    Flag("--score-slice", "scoring.score_slice"),
    Flag("--shadow", "scoring.shadow", secondary="--no-shadow"),
    Flag("--metrics-port", "scoring.metrics_port"),
    Flag("--metrics-host", "scoring.metrics_host"),
    Flag("--stats-interval-s", "scoring.stats_interval_s"),
    Flag("--alert-p-fail", "scoring.alerts.p_fail"),
    Flag("--alert-consecutive", "scoring.alerts.consecutive"),
    Flag("--alert-rul-below", "scoring.alerts.rul_below"),
    Flag("--alert-hysteresis", "scoring.alerts.hysteresis"),
)


@click.command()
@kafka_options
@flags(ScoringSettings, *SCORING_FLAGS)
def score() -> None:
    """Score telemetry with the models in service: predictions and alerts, exactly once.

    Joins the consumer group, rebuilds window and alert state from the scoring.state
    changelog, loads models from --models-dir and the compacted models topic (hot reload),
    and runs until SIGTERM or Ctrl-C, which finish the current transaction first.
    """
    from scoring.worker import ScoringWorker

    settings = settings_from(ScoringSettings)
    worker = ScoringWorker(settings)

    with worker.stop_on_signals(say=lambda line: click.echo(line, err=True)):
        try:
            worker.start()
            serving = sorted(m.bundle.label for m in worker.registry.serving.values()) or "no model yet"
            click.echo(f"scoring as {worker.worker_id} in group {settings.scoring.group_id}; serving {serving}",
                       err=True)
            worker.run()  # until SIGTERM/Ctrl-C: the current transaction is finished, then the worker closes
        finally:
            worker.close()
