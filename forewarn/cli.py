"""The ``forewarn`` command.

Core commands (``stack``, ``topics``, ``demo``) live here; each component's commands live in
its own package (``simulators.cli``, ``bridge.cli``, ...) and are loaded by name only when
invoked, so ``forewarn --help`` stays fast and the core imports no component.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import time
from typing import Any, Final

import click

from forewarn import __version__
from forewarn.cli_options import Flag, flags, kafka_options, mqtt_options, settings_from, stack_options
from forewarn.errors import ForewarnError
from forewarn.settings import CONFIG_ENV, DemoSettings, ServiceSettings

__all__ = ["main"]

log = logging.getLogger("forewarn")

# command name -> "module:attribute"; a command whose module is not there yet is not listed.
LAZY_COMMANDS: Final = {
    "simulate": "simulators.cli:simulate",
    "bridge": "bridge.cli:bridge",
    "dlq": "bridge.cli:dlq",
    "export": "training.cli:export",
    "train": "training.cli:train",
    "evaluate": "training.cli:evaluate",
    "predict": "training.cli:predict",
    "model": "training.cli:model",
    "score": "scoring.cli:score",
    "edge": "edge.cli:edge",
    "dashboard": "dashboard.cli:dashboard",
    "notify": "notify.cli:notify",
}


def _available(target: str) -> bool:
    module = target.partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class ForewarnGroup(click.Group):
    """Loads component commands lazily and turns expected errors into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name, target in LAZY_COMMANDS.items() if _available(target)]
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in LAZY_COMMANDS:
            return command
        target = LAZY_COMMANDS[cmd_name]
        if not _available(target):
            return None
        module_name, _, attribute = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            missing = error.name or str(error)
            raise click.ClickException(
                f"`forewarn {cmd_name}` needs {missing}, which is not installed "
                "(install the matching extra, e.g. pip install '.[all]')") from None
        found = getattr(module, attribute, None)
        return found if isinstance(found, click.Command) else None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ForewarnError as error:
            click.echo(f"error: {error.one_line()}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


@click.group(cls=ForewarnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="forewarn")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning",
              show_default=True, envvar="FOREWARN_LOG_LEVEL", show_envvar=True, help="How much to log on stderr.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, envvar=CONFIG_ENV,
              show_envvar=True, help="Settings file (default ./forewarn.toml when present).")
def cli(log_level: str, config_file: str | None) -> None:
    """Forewarn: predictive maintenance on MQTT and Apache Kafka.

    Settings come from forewarn.toml, then FOREWARN_* environment variables, then flags
    (later wins). Every flag's --help names its environment variable.
    """
    import os

    if config_file:
        os.environ[CONFIG_ENV] = config_file
    _configure_logging(log_level)


# -- stack -------------------------------------------------------------------------------


def _stack() -> Any:
    from forewarn.stack import LocalStack

    settings = settings_from(ServiceSettings)
    return LocalStack(settings.stack, settings.kafka, settings.mqtt, settings.topics)


def _progress(message: str) -> None:
    click.echo(f"  {message}", err=True)


@cli.group()
def stack() -> None:
    """Run the local Mosquitto + Apache Kafka (KRaft) stack.

    Mosquitto listens on --mqtt-port and Kafka on the port of --bootstrap-servers, both on
    127.0.0.1; data, logs and pid files live under --home (default .forewarn/). When the
    settings name a remote Kafka or MQTT host, that broker is checked instead of started.

    With --brokers N (stack.brokers) Kafka is a KRaft cluster of N nodes, each a broker and a
    controller with its own folder (HOME/kafka, HOME/kafka-2, ...); node i listens on the
    bootstrap port + 2(i-1), its controller on --controller-port + 2(i-1). Topics then get
    min(3, N) replicas. status, logs and down see a home's nodes by themselves.

    With --secure (stack.secure) both run secured: TLS only, a login per component and
    least-privilege ACLs on each broker (see the README's Security section). The CA,
    certificates and passwords are made on first start under HOME/secure; each component's
    connection settings are in HOME/secure/clients/<component>.toml (use it with
    FOREWARN_CONFIG=...). Once up, status, logs and down see that it is secure by themselves.
    """


@stack.command("up")
@stack_options
@kafka_options
@mqtt_options
def stack_up() -> None:
    """Start the brokers (if not running) and wait until both answer."""
    local = _stack()
    t0 = time.monotonic()
    local.up(_progress)
    for s in local.status():
        click.echo(f"{s.name:10} {'healthy' if s.healthy else 'DOWN':8} {s.address}")
    if len(local.kafka_nodes) > 1:
        click.echo(f"clients: --bootstrap-servers {local.bootstrap}")
    click.echo(f"stack up in {time.monotonic() - t0:.1f}s; stop it with `forewarn stack down`")


@stack.command("down")
@stack_options
@kafka_options
@mqtt_options
def stack_down() -> None:
    """Stop the brokers that `stack up` started (gracefully, by pid). Data is kept."""
    stopped = _stack().down(_progress)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@stack.command("status")
@stack_options
@kafka_options
@mqtt_options
def stack_status() -> None:
    """Show each component, its address and health. Exit code 1 when one is down."""
    rows = _stack().status()
    for s in rows:
        pid = f"pid {s.pid}" if s.pid else "-"
        click.echo(f"{s.name:10} {'healthy' if s.healthy else 'DOWN':8} {s.address:28} {pid:10} {s.note}")
    if not all(s.healthy for s in rows):
        sys.exit(1)


@stack.command("login")
@click.argument("kind", type=click.Choice(["device", "gateway", "maintenance"]))
@click.argument("name")
@stack_options
@kafka_options
@mqtt_options
def stack_login(kind: str, name: str) -> None:
    """Give the plant an MQTT login on the running secure stack: a device (NAME = site/machine)
    may publish only its own telemetry, a gateway (site/id) only its own batches, a site's
    maintenance system (NAME = site) only that site's maintenance events. Prints the principal
    and the files to connect with; the password stays in its file."""
    local = _stack()
    principal = local.add_login(kind, name)
    assert local.secure is not None
    click.echo(f"{principal}: MQTT username {principal}, password in {local.secure.password_file(principal)}, "
               f"settings in {local.secure.clients_dir / (principal + '.toml')}")


@stack.command("rotate")
@click.argument("principal")
@stack_options
@kafka_options
@mqtt_options
def stack_rotate(principal: str) -> None:
    """Give PRINCIPAL (a component, or a login from `stack login`) a new password, on every
    broker it logs in to, without a restart. Mosquitto drops the clients still logged in with
    the old one; Kafka keeps the connections already logged in, and new ones need the new
    password (components read their password file when they connect)."""
    changed = _stack().rotate(principal)
    click.echo(f"{principal}: new password taken by {' and '.join(changed)}")


@stack.command("logs")
@click.argument("component", metavar="COMPONENT")
@click.option("-n", "--lines", default=50, show_default=True, help="How many lines from the end.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
@stack_options
@kafka_options
@mqtt_options
def stack_logs(component: str, lines: int, follow: bool) -> None:
    """Print the end of a component's log: mosquitto, kafka, or one node of a cluster
    (kafka-1 … kafka-N; kafka is node 1)."""
    local = _stack()
    click.echo(local.logs(component, lines))
    if follow:
        path = local.components()[component].log_path()
        with path.open() as f:
            f.seek(0, 2)
            while True:
                line = f.readline()
                if line:
                    click.echo(line, nl=False)
                else:
                    time.sleep(0.3)


# -- topics ------------------------------------------------------------------------------


@cli.group()
def topics() -> None:
    """Create and inspect Forewarn's Kafka topics."""


@topics.command("create")
@flags(ServiceSettings, Flag("--partitions", "topics.partitions", click.IntRange(1, 10_000)),
       Flag("--replication-factor", "topics.replication_factor", click.IntRange(1, 16)))
@kafka_options
def topics_create() -> None:
    """Create missing topics and check existing ones. Safe to run again.

    Unless --replication-factor is given, topics get min(3, brokers in the cluster) replicas
    and min.insync.replicas one less. Existing topics whose partitions, replication or
    min.insync.replicas cannot hold the guarantees on this cluster are reported (exit 1)."""
    from forewarn.kafka import KafkaAdmin
    from forewarn.topics import topic_specs

    settings = settings_from(ServiceSettings)
    checks = KafkaAdmin(settings.kafka).ensure_topics(topic_specs(settings.topics))
    for c in checks:
        state = c.action if c.ok else "MISMATCH: " + "; ".join(c.problems)
        click.echo(f"{c.spec.name:22} {c.spec.partitions:>4} partitions  {c.spec.replication_factor} replica(s), "
                   f"min.insync {c.spec.min_insync}  {c.spec.config.get('cleanup.policy', '')}  {state}")
    if not all(c.ok for c in checks):
        click.echo("error: some topics differ from the registry (see above); fix or recreate them", err=True)
        sys.exit(1)


@topics.command("list")
@kafka_options
def topics_list() -> None:
    """List Forewarn's topics as the registry defines them, and whether each exists."""
    from forewarn.kafka import KafkaAdmin
    from forewarn.topics import topic_specs

    settings = settings_from(ServiceSettings)
    existing = KafkaAdmin(settings.kafka).ping().topics
    for spec in topic_specs(settings.topics):
        have = existing.get(spec.name)
        state = "missing" if have is None else (
            f"{len(have.partitions)} partitions, "
            f"{min((len(p.replicas) for p in have.partitions.values()), default=0)} replica(s)")
        click.echo(f"{spec.name:22} {state:30} {spec.description}")


# -- demo --------------------------------------------------------------------------------


DEMO_FLAGS = (
    Flag("--check", "demo.check"),
    Flag("--minutes", "demo.minutes"),
    Flag("--machines", "demo.machines"),
    Flag("--speed", "demo.speed"),
    Flag("--dashboard-port", "demo.dashboard_port"),
)


@cli.command()
@flags(DemoSettings, *DEMO_FLAGS)
@stack_options
@kafka_options
@mqtt_options
def demo() -> None:
    """Run the whole system: stack, topics, models, simulator, bridge, scoring, dashboard.

    Starts the local stack and creates the topics, trains initial models from simulated
    history when .forewarn/models has none (about two minutes), publishes them, then starts
    the live simulator (2 sites, pumps and motors), the bridge, two scoring workers and the
    dashboard, and prints the dashboard's address. Ctrl-C stops everything; so does the end of
    the demo however it comes (its children and the brokers it started go with it). With
    --check it counts only what this run produced and exits 1, with the reason, when that
    falls short. What it says also goes to HOME/demo/demo.log.
    """
    from forewarn.demo import run_demo

    sys.exit(run_demo(settings_from(DemoSettings)))


def main() -> None:
    cli(prog_name="forewarn")


if __name__ == "__main__":
    main()
