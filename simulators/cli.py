"""``forewarn simulate live|history|replay``."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from forewarn.cli_options import Flag, flags, kafka_options, mqtt_options, settings_from
from forewarn.errors import ForewarnError
from simulators.assets import ASSET_TYPES
from simulators.errors import SimulatorError
from simulators.faults import MALFORMED_KINDS
from simulators.fleet import DEFAULT_START, to_epoch_ms
from simulators.settings import SimulatorSettings

__all__ = ["simulate"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Turns expected errors into one line, also when used on its own."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ForewarnError as error:
            click.echo(f"error: {error.one_line()}", err=True)
            sys.exit(2)


def _env(name: str) -> str:
    return f"FOREWARN_SIMULATE_{name.upper()}"


def _opt(*decls: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    """A command-local option that also reads ``FOREWARN_SIMULATE_<ENV>``."""
    return click.option(*decls, envvar=_env(env), show_envvar=True, **kwargs)


def _remember_list(path: str) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], tuple[str, ...]]:
    def remember(ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
        if value:
            ctx.ensure_object(dict).setdefault("forewarn_overrides", {})[path] = list(value)
        return value
    return remember


def _asset_types_option(func: F) -> F:
    return click.option(
        "--asset-type", "asset_types", multiple=True, type=click.Choice(sorted(ASSET_TYPES)), expose_value=False,
        callback=_remember_list("simulator.asset_types"),
        help="Asset type to simulate (repeat for several; default: all). "
             "[env var: FOREWARN_SIMULATOR__ASSET_TYPES as a JSON list]")(func)


def _malformed_kinds_option(func: F) -> F:
    return click.option(
        "--fault-malformed-kind", "malformed_kinds", multiple=True, type=click.Choice(MALFORMED_KINDS),
        expose_value=False, callback=_remember_list("simulator.faults.malformed_kinds"),
        help="Kind of malformed payload to inject (repeat; default: all). "
             "[env var: FOREWARN_SIMULATOR__FAULTS__MALFORMED_KINDS as a JSON list]")(func)


_RATE = click.FloatRange(0.0, 1.0)

FLEET_FLAGS = (
    Flag("--seed", "simulator.seed", "Random seed: the same seed and options give the same output.",
         click.IntRange(0)),
    Flag("--machines", "simulator.machines", "Machines per asset type.", click.IntRange(1)),
    Flag("--sites", "simulator.sites", "Sites the machines are spread over.", click.IntRange(1)),
    Flag("--sample-period-s", "simulator.sample_period_s", "Simulated seconds between two readings.",
         click.FloatRange(min=0.001)),
    Flag("--mtbf-cycles", "simulator.mtbf_cycles", "Mean run length between repair and failure, in readings.",
         click.FloatRange(min=60)),
    Flag("--weibull-shape", "simulator.weibull_shape", "Shape of the Weibull run-length distribution.",
         click.FloatRange(min=0.1)),
    Flag("--downtime-cycles", "simulator.downtime_cycles", "Sample periods between a failure and its repair.",
         click.IntRange(1)),
    Flag("--regime-switch-prob", "simulator.regime_switch_prob",
         "Chance per reading that a machine changes operating regime.", _RATE),
)

PUBLISH_FLAGS = (
    Flag("--delivery", "simulator.delivery", "single readings, or gateway batches.",
         click.Choice(["single", "batch"])),
    Flag("--batch-size", "simulator.batch_size", "Readings per gateway batch at most.", click.IntRange(1)),
    Flag("--gateways-per-site", "simulator.gateways_per_site", "Gateways per site (batch delivery).",
         click.IntRange(1)),
    Flag("--qos", "simulator.qos", "MQTT QoS of the publishes.", click.IntRange(0, 2)),
    Flag("--progress-s", "simulator.progress_s", "Seconds between progress lines.", click.FloatRange(min=0.1)),
)

VALUE_FAULT_FLAGS = (
    Flag("--fault-missing", "simulator.faults.missing", "Rate of readings missing a sensor field.", _RATE),
    Flag("--fault-stuck", "simulator.faults.stuck", "Rate of readings that start a stuck-sensor episode.", _RATE),
    Flag("--fault-stuck-len", "simulator.faults.stuck_len", "Readings a stuck sensor stays stuck.",
         click.IntRange(1)),
    Flag("--fault-spike", "simulator.faults.spike", "Rate of readings with a spike on one sensor.", _RATE),
    Flag("--fault-non-finite", "simulator.faults.non_finite", "Rate of readings with a NaN/Infinity value.",
         _RATE),
)

DELIVERY_FAULT_FLAGS = (
    Flag("--fault-duplicate", "simulator.faults.duplicate", "Rate of readings sent twice.", _RATE),
    Flag("--fault-out-of-order", "simulator.faults.out_of_order",
         "Rate of readings delivered after the machine's next one.", _RATE),
    Flag("--fault-clock-skew", "simulator.faults.clock_skew", "Fraction of machines with a skewed clock.", _RATE),
    Flag("--fault-clock-skew-max-s", "simulator.faults.clock_skew_max_s", "Largest clock skew, in seconds.",
         click.FloatRange(min=0)),
    Flag("--fault-burst", "simulator.faults.burst",
         "Rate of readings that start an outage whose backlog is sent in one burst.", _RATE),
    Flag("--fault-burst-len", "simulator.faults.burst_len", "Readings held back per burst.", click.IntRange(1)),
    Flag("--fault-malformed", "simulator.faults.malformed",
         "Rate of readings replaced by a malformed payload.", _RATE),
)


def _parse_start(value: str | None, default_now: bool) -> int:
    if value is None or value == "now":
        if value is None and not default_now:
            return to_epoch_ms(DEFAULT_START)
        return to_epoch_ms(datetime.now(UTC).replace(microsecond=0))
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SimulatorError(f"--start {value!r} is not an ISO-8601 time",
                             hint="use e.g. 2026-01-01T00:00:00Z or now") from None
    if when.tzinfo is None:
        raise SimulatorError(f"--start {value!r} has no time zone", hint="add Z for UTC")
    return to_epoch_ms(when.astimezone(UTC))


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while the block runs (main thread only)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping after in-flight messages are acknowledged", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _write_report(path: Path | None, text: str) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as error:
        raise SimulatorError(f"cannot write report {path}: {error.strerror}", hint="choose another --report") from None


@click.group(cls=_Group)
def simulate() -> None:
    """Simulate a fleet of degrading machines: live over MQTT, as history files, or replay a file."""


# -- live --------------------------------------------------------------------------------


@simulate.command()
@_asset_types_option
@flags(*FLEET_FLAGS)
@flags(Flag("--speed", "simulator.speed", "Simulated seconds per wall second (0 = as fast as possible).",
            click.FloatRange(min=0)))
@flags(*PUBLISH_FLAGS, *VALUE_FAULT_FLAGS, *DELIVERY_FAULT_FLAGS)
@_malformed_kinds_option
@mqtt_options
@_opt("--start", env="start", default=None, help="Simulated start time, ISO-8601 UTC or 'now'. [default: now]")
@_opt("--ticks", env="ticks", type=click.IntRange(1), default=None,
      help="Stop after this many sample periods (default: run until SIGTERM).")
@_opt("--report", "report", env="report", type=click.Path(dir_okay=False, path_type=Path), default=None,
      help="Write the fault/production report (JSON) here at the end.")
@_opt("--client-id", env="client_id", default=None, help="MQTT client id. [default: forewarn-sim-<pid>]")
def live(start: str | None, ticks: int | None, report: Path | None, client_id: str | None) -> None:
    """Publish live telemetry and maintenance events over MQTT, paced by --speed.

    Machines start at random points of their life, so failures come within minutes.
    SIGTERM (or Ctrl-C) stops after the in-flight messages are acknowledged.
    """
    from forewarn.mqtt import MqttClient
    from simulators.live import run_live
    from simulators.outbox import Outbox

    settings = settings_from(SimulatorSettings)
    opts = settings.simulator
    start_ms = _parse_start(start, default_now=True)
    period_ms = max(1, round(opts.sample_period_s * 1000))
    fleet = opts.fleet(start_ms=start_ms, stagger=True, seq_start=start_ms // period_ms)
    faults = opts.faults.config()

    def outbox(sink: Any, machine_ids: list[str]) -> Outbox:
        return Outbox(sink, machine_ids, faults=faults, seed=opts.seed, delivery=opts.delivery,
                      batch_size=opts.batch_size, gateways_per_site=opts.gateways_per_site)

    client = MqttClient(settings.mqtt, client_id or f"forewarn-sim-{os.getpid()}")
    client.connect()
    try:
        with _stop_on_signals() as stop:
            click.echo(f"simulating {fleet.machines * len(fleet.asset_types)} machines "
                       f"({', '.join(fleet.asset_types)}) at {opts.speed}x, {opts.delivery} delivery, "
                       f"QoS {opts.qos} -> mqtt://{settings.mqtt.host}:{settings.mqtt.port}", err=True)
            summary = run_live(fleet, client, outbox_factory=outbox, qos=opts.qos, speed=opts.speed, ticks=ticks,
                               stop=stop, progress_s=opts.progress_s,
                               progress=lambda line: click.echo(line, err=True), report_path=None)
    finally:
        client.disconnect()
    _write_report(report, summary.report.to_json())
    click.echo(f"published {summary.readings} readings in {summary.messages} messages over {summary.seconds:.1f}s "
               f"({summary.rate:,.0f} readings/s); {summary.failures} failures, {summary.repairs} repairs; "
               f"{summary.unacked} unacknowledged", err=True)
    if summary.unacked:
        raise SimulatorError(f"{summary.unacked} publishes were not acknowledged",
                             hint="check the MQTT broker; they may be lost")


# -- history -----------------------------------------------------------------------------


@simulate.command()
@_asset_types_option
@flags(*FLEET_FLAGS, *VALUE_FAULT_FLAGS)
@_opt("--out", "out", env="out", type=click.Path(file_okay=False, path_type=Path), default=None,
      help="Directory to write readings/events(/truth) files into.")
@_opt("--format", "fmt", env="format", type=click.Choice(["parquet", "csv"]), default="parquet",
      show_default=True, help="File format.")
@_opt("--truth/--no-truth", env="truth", default=False, show_default=True,
      help="Also write truth.<format> with health, true RUL and failure mode per reading.")
@_opt("--runs", env="runs", type=click.IntRange(1), default=1, show_default=True,
      help="Run-to-failure cycles per machine.")
@_opt("--ticks", env="ticks", type=click.IntRange(1), default=None,
      help="Stop after this many sample periods instead (the last runs are then censored).")
@_opt("--start", env="start", default=None, help="Simulated start time, ISO-8601 UTC. [default: 2026-01-01T00:00:00Z]")
@_opt("--to-kafka/--no-to-kafka", env="to_kafka", default=False, show_default=True,
      help="Write into the Kafka telemetry and maintenance topics instead of files.")
@flags(*DELIVERY_FAULT_FLAGS)
@_malformed_kinds_option
@kafka_options
@_opt("--report", "report", env="report", type=click.Path(dir_okay=False, path_type=Path), default=None,
      help="Write the fault/production report (JSON) here.")
def history(out: Path | None, fmt: str, truth: bool, runs: int, ticks: int | None, start: str | None,
            to_kafka: bool, report: Path | None) -> None:
    """Write run-to-failure histories fast, without MQTT, in the generic long format.

    Files: OUT/readings.<format>, OUT/events.<format> (and OUT/truth.<format> with --truth).
    Delivery faults (duplicates, out-of-order, ...) only apply with --to-kafka.
    """
    from simulators.history import write_history, write_history_to_sink

    settings = settings_from(SimulatorSettings)
    opts = settings.simulator
    faults = opts.faults.config()
    fleet = opts.fleet(start_ms=_parse_start(start, default_now=False), max_runs=None if ticks else runs)
    if to_kafka == (out is not None):
        raise SimulatorError("give exactly one of --out DIR and --to-kafka", hint="see forewarn simulate history -h")
    if to_kafka:
        from forewarn.kafka import KafkaProducer
        from forewarn.topics import Topics
        from simulators.outbox import Outgoing

        topics = Topics.from_settings(settings.topics)

        class KafkaSink:
            def __init__(self, producer: KafkaProducer) -> None:
                self.producer = producer
                self.failed: list[str] = []  # delivery reports with an error: never a silent drop

            def delivered(self, error: object, _message: object) -> None:
                if error is not None:
                    self.failed.append(str(error))

            def send(self, message: Outgoing) -> None:
                topic = topics.maintenance if message.kind == "maintenance" else topics.telemetry
                self.producer.produce(topic, message.payload, key=message.source, timestamp_ms=message.ts,
                                      on_delivery=self.delivered)

        producer = KafkaProducer(settings.kafka)
        sink = KafkaSink(producer)
        try:
            summary = write_history_to_sink(fleet, sink, ticks=ticks, faults=faults)
        finally:
            left = producer.flush(60.0)
        if left or sink.failed:
            first = f" (first error: {sink.failed[0]})" if sink.failed else ""
            raise SimulatorError(f"{left + len(sink.failed)} records were not delivered to Kafka{first}",
                                 hint="check kafka.bootstrap_servers and the topics "
                                      "(`forewarn topics create` checks them)")
        where = f"Kafka topics {topics.telemetry} and {topics.maintenance}"
    else:
        if faults.any_delivery:
            raise SimulatorError("delivery faults only apply to message streams",
                                 hint="use them with --to-kafka, `simulate live` or `simulate replay`")
        assert out is not None
        summary = write_history(fleet, out, "csv" if fmt == "csv" else "parquet", ticks=ticks, truth=truth,
                                faults=faults)
        where = ", ".join(str(p) for p in summary.paths)
    assert summary.report is not None
    _write_report(report, summary.report.to_json())
    click.echo(f"{summary.machines} machines, {summary.readings} readings, {summary.failures} failures, "
               f"{summary.repairs} repairs in {summary.seconds:.2f}s ({summary.rate:,.0f} readings/s) -> {where}",
               err=True)


# -- replay ------------------------------------------------------------------------------


@simulate.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_opt("--events", "events", env="events", type=click.Path(dir_okay=False, path_type=Path), default=None,
      help="Events file (machine_id, time, event[, failure_mode]). [default: events.<ext> next to FILE, if any]")
@_opt("--failure-at-end/--no-failure-at-end", env="failure_at_end", default=False, show_default=True,
      help="Run-to-failure data: each machine's last row is its failure.")
@_opt("--asset-type", "asset_type", env="asset_type", default=None,
      help="Asset type of every row when FILE has no asset_type column.")
@_opt("--site", env="site", default="replay", show_default=True, help="Site for machine ids that have none.")
@_opt("--setting", "setting_columns", env="settings", multiple=True,
      help="A column that is an operating setting, not a sensor (repeat).")
@_opt("--start", env="start", default=None,
      help="Time of cycle 0 when FILE's time is a cycle index, ISO-8601 UTC or 'now'. [default: 2026-01-01T00:00:00Z]")
@flags(Flag("--sample-period-s", "simulator.sample_period_s", "Seconds per cycle when time is a cycle index.",
            click.FloatRange(min=0.001)))
@_opt("--rate", env="rate", type=click.FloatRange(min=0), default=1000.0, show_default=True,
      help="Readings per second (0 = as fast as possible).")
@flags(Flag("--seed", "simulator.seed", "Seed of the fault injection.", click.IntRange(0)))
@flags(*PUBLISH_FLAGS, *VALUE_FAULT_FLAGS, *DELIVERY_FAULT_FLAGS)
@_malformed_kinds_option
@mqtt_options
@_opt("--report", "report", env="report", type=click.Path(dir_okay=False, path_type=Path), default=None,
      help="Write the fault/production report (JSON) here at the end.")
@_opt("--client-id", env="client_id", default=None, help="MQTT client id. [default: forewarn-replay-<pid>]")
def replay(file: Path, events: Path | None, failure_at_end: bool, asset_type: str | None, site: str,
           setting_columns: tuple[str, ...], start: str | None, rate: float, report: Path | None,
           client_id: str | None) -> None:
    """Publish FILE (generic long format, Parquet or CSV) over MQTT at --rate readings/s."""
    from forewarn.mqtt import MqttClient
    from simulators.live import MqttSink
    from simulators.outbox import Outbox
    from simulators.replay import load_replay, run_replay

    settings = settings_from(SimulatorSettings)
    opts = settings.simulator
    if events is None:
        sibling = file.with_name(f"events{file.suffix}")
        events = sibling if sibling.is_file() and sibling != file else None
    data = load_replay(file, events_path=events, asset_type=asset_type, site=site, settings=setting_columns,
                       start_ms=_parse_start(start, default_now=False),
                       period_ms=max(1, round(opts.sample_period_s * 1000)), failure_at_end=failure_at_end)
    client = MqttClient(settings.mqtt, client_id or f"forewarn-replay-{os.getpid()}")
    client.connect()
    try:
        sink = MqttSink(client, opts.qos)
        outbox = Outbox(sink, data.machine_ids, faults=opts.faults.config(), seed=opts.seed,
                        delivery=opts.delivery, batch_size=opts.batch_size, gateways_per_site=opts.gateways_per_site)
        with _stop_on_signals() as stop:
            seconds = run_replay(data, outbox, rate=rate, stop=stop, progress_s=opts.progress_s,
                                 progress=lambda line: click.echo(line, err=True))
        unacked = sink.wait_acked(30.0) if opts.qos else 0
    finally:
        client.disconnect()
    _write_report(report, outbox.report.to_json())
    click.echo(f"replayed {outbox.report.readings_sent} readings of {len(data.machine_ids)} machines and "
               f"{outbox.report.events} events in {seconds:.1f}s; {unacked} unacknowledged", err=True)
    if unacked:
        raise SimulatorError(f"{unacked} publishes were not acknowledged", hint="check the MQTT broker")

