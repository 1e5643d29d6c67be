"""``forewarn dashboard``: runs the Streamlit app as a child process.

The command builds and validates the settings once (forewarn.toml < FOREWARN_* < flags), then
exports the flags it was given as their ``FOREWARN_*`` variables, so the app, which reads its
settings from the environment, sees exactly the same ones. SIGINT and SIGTERM are passed on
to Streamlit, which shuts down cleanly (the background consumer closes, the store is closed).

It refuses to listen on a non-loopback address without a users file, unless told
``--allow-unauthenticated``. ``forewarn dashboard users add|passwd|role|remove|list`` keeps the
users file; a password is read from a hidden prompt or from stdin (``--password-stdin``), never
from the command line.
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

from dashboard.auth import ROLES, UsersFile, is_loopback
from dashboard.errors import DashboardError
from dashboard.settings import DashboardSettings
from forewarn.cli_options import Flag, env_var, flags, kafka_options, overrides, settings_from
from forewarn.service import on_signals

__all__ = ["DASHBOARD_FLAGS", "dashboard", "streamlit_command"]

log = logging.getLogger(__name__)

APP = Path(__file__).resolve().parent / "app.py"

USERS_FILE_FLAG = Flag("--users-file", "dashboard.users_file", click.Path(path_type=Path, dir_okay=False))
DASHBOARD_FLAGS = (
    Flag("--port", "dashboard.port"),
    Flag("--address", "dashboard.address"),
    USERS_FILE_FLAG,
    Flag("--allow-unauthenticated", "dashboard.allow_unauthenticated"),
    Flag("--store", "dashboard.store"),
    Flag("--group-id", "dashboard.group_id"),
    Flag("--refresh", "dashboard.refresh_s"),
    Flag("--retention-hours", "dashboard.retention_hours"),
    Flag("--max-predictions", "dashboard.max_predictions"),
    Flag("--telemetry-sample-every", "dashboard.telemetry_sample_every"),
    Flag("--consume", "dashboard.consume", secondary="--no-consume"),
)


def streamlit_command(settings: DashboardSettings) -> list[str]:
    """The ``streamlit run`` command line for these settings: the exposure options are set
    explicitly (XSRF protection and CORS protection on, no static files, no uploads, no error
    details in the browser), whatever Streamlit's defaults or a config.toml say."""
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
        "--server.enableXsrfProtection", "true",
        "--server.enableCORS", "true",
        "--server.enableStaticServing", "false",
        "--server.maxUploadSize", "1",
        "--client.showErrorDetails", "none",
    ]


def check_exposure(settings: DashboardSettings) -> None:
    """Refuse a non-loopback address without a login, unless explicitly allowed (with a
    warning); refuse a users file that holds no user."""
    options = settings.dashboard
    if options.users_file is not None:
        if not UsersFile(options.users_file).load():
            raise DashboardError(f"the users file {options.users_file} holds no user",
                                 hint="add one: forewarn dashboard users add NAME --role admin")
        return
    if is_loopback(options.address):
        return
    if not options.allow_unauthenticated:
        raise DashboardError(f"refusing to listen on {options.address} without a login",
                             hint="set dashboard.users_file (forewarn dashboard users add NAME), listen on "
                                  "127.0.0.1, or pass --allow-unauthenticated")
    click.echo(f"warning: the dashboard listens on {options.address} without a login: anyone who reaches it "
               "acts as the local admin and can acknowledge alerts", err=True)


def _environment(given: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    for path, value in given.items():
        env[env_var(path)] = str(value)
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    return env


@click.group(invoke_without_command=True)
@kafka_options
@flags(DashboardSettings, *DASHBOARD_FLAGS)
@click.pass_context
def dashboard(ctx: click.Context) -> None:
    """Run the Streamlit dashboard: Fleet, Machine, Alerts, Models and Pipeline pages.

    One background consumer (read_committed) materialises predictions, alerts, maintenance,
    sampled telemetry and dead-letter counts into an embedded DuckDB store; the pages query it
    and refresh every couple of seconds. Ctrl-C stops it. With a users file every page needs a
    signed-in user; without one it is a local, single-user dashboard.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = settings_from(DashboardSettings)
    check_exposure(settings)
    given = overrides()
    command = streamlit_command(settings)
    options = settings.dashboard
    host = "localhost" if options.address in ("0.0.0.0", "127.0.0.1") else options.address  # noqa: S104
    login = f"users from {options.users_file}" if options.users_file else "no login, local user"
    click.echo(f"forewarn dashboard: http://{host}:{options.port}  (Kafka {settings.kafka.bootstrap_servers}, "
               f"topic prefix {settings.topics.prefix!r}; {login}; Ctrl-C stops)", err=True)
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


# -- users -------------------------------------------------------------------------------


def _users_file() -> UsersFile:
    path = settings_from(DashboardSettings).dashboard.users_file
    if path is None:
        raise DashboardError("no users file is configured",
                             hint="pass --users-file PATH or set dashboard.users_file "
                                  "(e.g. .forewarn/dashboard-users.toml)")
    return UsersFile(path)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True))


password_stdin = click.option("--password-stdin", is_flag=True,
                              help="Read the password from the first line of stdin instead of a hidden prompt.")


@dashboard.group()
@flags(DashboardSettings, USERS_FILE_FLAG)
def users() -> None:
    """Keep the dashboard's users file: roles viewer < operator < admin, Argon2id hashes.

    Passwords are read from a hidden prompt or from stdin (--password-stdin), never from the
    command line. The file is written with mode 0600.
    """


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="viewer", show_default=True,
              help="viewer reads, operator also acknowledges alerts, admin is an operator.")
@click.option("--display-name", default="", help="The name acknowledgements record (default: the user name).")
@password_stdin
def users_add(name: str, role: str, display_name: str, password_stdin: bool) -> None:
    """Add user NAME."""
    users_file = _users_file()
    if name in users_file.load():
        raise DashboardError(f"user {name!r} exists", hint="use `users passwd` or `users remove` first")
    users_file.add(name, role, _password(password_stdin), display_name)
    click.echo(f"added {name} ({role}) to {users_file.path}", err=True)


@users.command("passwd")
@click.argument("name")
@password_stdin
def users_passwd(name: str, password_stdin: bool) -> None:
    """Give NAME a new password (rotation): their open sessions end at their next refresh."""
    users_file = _users_file()
    if name not in users_file.load():
        raise DashboardError(f"no user {name!r}", hint="`forewarn dashboard users list` shows them")
    users_file.passwd(name, _password(password_stdin))
    click.echo(f"changed the password of {name}", err=True)


@users.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(ROLES))
def users_role(name: str, role: str) -> None:
    """Give NAME another role (their open sessions get it at their next refresh)."""
    _users_file().set_role(name, role)
    click.echo(f"{name} is now {role}", err=True)


@users.command("remove")
@click.argument("name")
def users_remove(name: str) -> None:
    """Remove NAME (their open sessions end at their next refresh)."""
    _users_file().remove(name)
    click.echo(f"removed {name}", err=True)


@users.command("list")
def users_list() -> None:
    """List the users: name, role, display name (never the hashes)."""
    for user in sorted(_users_file().load().values(), key=lambda u: u.name):
        click.echo(f"{user.name}\t{user.role}\t{user.display_name}")
