"""``forewarn dashboard``: runs the Streamlit app as a child process.

The command builds and validates the settings once (forewarn.toml < FOREWARN_* < flags), then
exports the flags it was given as their ``FOREWARN_*`` variables, so the app, which reads its
settings from the environment, sees exactly the same ones. SIGINT and SIGTERM are passed on
to Streamlit, which shuts down cleanly (the background consumer closes, the store is closed).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from dashboard.errors import DashboardError
from dashboard.settings import DashboardSettings
from forewarn.cli_options import Flag, env_var, flags, kafka_options, overrides, settings_from
from forewarn.service import on_signals

__all__ = ["DASHBOARD_FLAGS", "dashboard", "streamlit_command"]

log = logging.getLogger(__name__)

APP = Path(__file__).resolve().parent / "app.py"

DASHBOARD_FLAGS = (
    Flag("--port", "dashboard.port"),
    Flag("--address", "dashboard.address"),
    Flag("--store", "dashboard.store"),
    Flag("--group-id", "dashboard.group_id"),
    Flag("--refresh", "dashboard.refresh_s"),
    Flag("--retention-hours", "dashboard.retention_hours"),
    Flag("--max-predictions", "dashboard.max_predictions"),
    Flag("--telemetry-sample-every", "dashboard.telemetry_sample_every"),
    Flag("--consume", "dashboard.consume", secondary="--no-consume"),
)


def streamlit_command(settings: DashboardSettings) -> list[str]:
    """The ``streamlit run`` command line for these settings."""
    options = settings.dashboard
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(options.port),
        "--server.address", options.address,
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false",
        "--client.toolbarMode", "minimal",
        "--theme.base", "light",
    ]


def _environment(given: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    for path, value in given.items():
        env[env_var(path)] = str(value)
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    return env


@click.command()
@kafka_options
@flags(DashboardSettings, *DASHBOARD_FLAGS)
def dashboard() -> None:
    """Run the Streamlit dashboard: Fleet, Machine, Alerts, Models and Pipeline pages.

    One background consumer (read_committed) materialises predictions, alerts, maintenance,
    sampled telemetry and dead-letter counts into an embedded DuckDB store; the pages query it
    and refresh every couple of seconds. Ctrl-C stops it.
    """
    settings = settings_from(DashboardSettings)
    given = overrides()
    command = streamlit_command(settings)
    options = settings.dashboard
    host = "localhost" if options.address in ("0.0.0.0", "127.0.0.1") else options.address  # noqa: S104
    click.echo(f"forewarn dashboard: http://{host}:{options.port}  (Kafka {settings.kafka.bootstrap_servers}, "
               f"topic prefix {settings.topics.prefix!r}; Ctrl-C stops)", err=True)
    try:
        child = subprocess.Popen(command, env=_environment(given))
    except OSError as error:
        raise DashboardError(f"cannot start streamlit: {error}",
                             hint="install the dashboard extra: pip install '.[dashboard]'") from None

    def forward(sig: signal.Signals) -> None:
        if child.poll() is None:
            child.send_signal(sig)

    # Every signal is passed on: Streamlit decides what a second Ctrl-C means.
    with on_signals(forward, force_second=False):
        code = child.wait()
    if code not in (0, -signal.SIGINT, -signal.SIGTERM):
        raise DashboardError(f"the dashboard exited with status {code}", hint="see the messages above")
