"""``forewarn simulate live|history|replay``.

Every option is a flag of :class:`~simulators.settings.SimulateSettings` (``[simulate]`` in
``forewarn.toml``, ``FOREWARN_SIMULATE__*`` variables): its help is that field's description
and ``--help`` shows its variable.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from forewarn.cli_options import Flag, flags, kafka_options, mqtt_options, settings_from
from forewarn.errors import ForewarnError
from forewarn.service import on_signals
from simulators.errors import SimulatorError
from simulators.fleet import to_epoch_ms
from simulators.settings import SimulateSettings

__all__ = ["simulate"]

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Turns expected errors into one line, also when used on its own."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ForewarnError as error:
            click.echo(f"error: {error.one_line()}", err=True)
            sys.exit(2)


_REPORT = click.Path(dir_okay=False, path_type=Path)

FLEET_FLAGS = (
    Flag("--seed", "simulate.seed"),
    Flag("--machines", "simulate.machines"),
    Flag("--sites", "simulate.sites"),
    Flag("--sample-period-s", "simulate.sample_period_s"),
    Flag("--mtbf-cycles", "simulate.mtbf_cycles"),
    Flag("--weibull-shape", "simulate.weibull_shape"),
    Flag("--downtime-cycles", "simulate.downtime_cycles"),
    Flag("--regime-switch-prob", "simulate.regime_switch_prob"),
)

PUBLISH_FLAGS = (
    Flag("--delivery", "simulate.delivery"),
    Flag("--batch-size", "simulate.batch_size"),
    Flag("--gateways-per-site", "simulate.gateways_per_site"),
    Flag("--qos", "simulate.qos"),
    Flag("--progress-s", "simulate.progress_s"),
)

VALUE_FAULT_FLAGS = (
    Flag("--fault-missing", "simulate.faults.missing"),
    Flag("--fault-stuck", "simulate.faults.stuck"),
    Flag("--fault-stuck-len", "simulate.faults.stuck_len"),
    Flag("--fault-spike", "simulate.faults.spike"),
    Flag("--fault-non-finite", "simulate.faults.non_finite"),
)

DELIVERY_FAULT_FLAGS = (
    Flag("--fault-duplicate", "simulate.faults.duplicate"),
    Flag("--fault-out-of-order", "simulate.faults.out_of_order"),
    Flag("--fault-clock-skew", "simulate.faults.clock_skew"),
    Flag("--fault-clock-skew-max-s", "simulate.faults.clock_skew_max_s"),
    Flag("--fault-burst", "simulate.faults.burst"),
    Flag("--fault-burst-len", "simulate.faults.burst_len"),
    Flag("--fault-malformed", "simulate.faults.malformed"),
)

ASSET_TYPES_FLAG = Flag("--asset-type", "simulate.asset_types", multiple=True)
MALFORMED_KINDS_FLAG = Flag("--fault-malformed-kind", "simulate.faults.malformed_kinds", multiple=True)

LIVE_FLAGS = (
    Flag("--start", "simulate.live.start"),
    Flag("--behind-h", "simulate.live.behind_h"),
    Flag("--ticks", "simulate.live.ticks"),
    Flag("--report", "simulate.live.report", _REPORT),
    Flag("--client-id", "simulate.live.client_id"),
)

HISTORY_FLAGS = (
    Flag("--out", "simulate.history.out", click.Path(file_okay=False, path_type=Path)),
    Flag("--format", "simulate.history.format"),
    Flag("--truth", "simulate.history.truth", secondary="--no-truth"),
    Flag("--runs", "simulate.history.runs"),
    Flag("--ticks", "simulate.history.ticks"),
    Flag("--start", "simulate.history.start"),
    Flag("--to-kafka", "simulate.history.to_kafka", secondary="--no-to-kafka"),
)

REPLAY_FLAGS = (
    Flag("--events", "simulate.replay.events", click.Path(dir_okay=False, path_type=Path)),
    Flag("--failure-at-end", "simulate.replay.failure_at_end", secondary="--no-failure-at-end"),
    Flag("--asset-type", "simulate.replay.asset_type"),
    Flag("--site", "simulate.replay.site"),
    Flag("--setting", "simulate.replay.setting_columns", multiple=True),
    Flag("--start", "simulate.replay.start"),
    Flag("--sample-period-s", "simulate.sample_period_s"),
    Flag("--rate", "simulate.replay.rate"),
    Flag("--seed", "simulate.seed"),
)


def _options(*table: Flag) -> Callable[[F], F]:
    """The flags of ``table``, bound to :class:`SimulateSettings`."""
    return flags(SimulateSettings, *table)


def _parse_start(value: str, behind_h: float = 0.0) -> int:
    """Epoch ms of an ISO-8601 time with a zone, of the current second for ``now``, or of
    ``behind_h`` hours before it for ``auto``."""
    if value in ("now", "auto"):
        now = to_epoch_ms(datetime.now(UTC).replace(microsecond=0))
        return now - round(behind_h * 3_600_000) if value == "auto" else now
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SimulatorError(f"--start {value!r} is not an ISO-8601 time",
                             hint="use e.g. 2026-01-01T00:00:00Z or now") from None
    if when.tzinfo is None:
        raise SimulatorError(f"--start {value!r} has no time zone", hint="add Z for UTC")
    return to_epoch_ms(when.astimezone(UTC))


def _not_ahead(last_ms: int | None, settings: SimulateSettings, what: str) -> None:
    """Refuse to send event times that consumers would refuse: beyond ``input.max_future_s``
    ahead of the wall clock (``ts_out_of_range``)."""
    bound_s = settings.input.max_future_s
    now_ms = time.time_ns() // 1_000_000
    if last_ms is None or bound_s is None or last_ms <= now_ms + bound_s * 1000:
        return
    when = datetime.fromtimestamp(last_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    raise SimulatorError(f"{what} runs to {when}, more than {bound_s:g}s ahead of the wall clock: consumers would "
                         "refuse those readings as ts_out_of_range", hint="use an earlier --start")


def _write_report(path: Path | None, text: str) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as error:
        raise SimulatorError(f"cannot write report {path}: {error.strerror}", hint="choose another --report") from None


def _progress(line: str) -> None:
    click.echo(line, err=True)


# What SIGTERM or Ctrl-C does to live and replay (through on_signals; a second one exits at once).
_ON_SIGNAL = "stopping after in-flight messages are acknowledged"


@click.group(cls=_Group)
def simulate() -> None:
    """Simulate a fleet of degrading machines: live over MQTT, as history files, or replay a file."""


# -- live --------------------------------------------------------------------------------


@simulate.command()
@_options(ASSET_TYPES_FLAG, *FLEET_FLAGS, Flag("--speed", "simulate.live.speed"), *PUBLISH_FLAGS,
          *VALUE_FAULT_FLAGS, *DELIVERY_FAULT_FLAGS, MALFORMED_KINDS_FLAG)
@mqtt_options
@_options(*LIVE_FLAGS)
def live() -> None:
    """Publish live telemetry and maintenance events over MQTT, paced by --speed.

    Machines start at random points of their life, so failures come within minutes. Every
    run is a restart of the simulated devices: its readings carry a new boot epoch (the run's
    start in epoch ms) and seq starts again from 0, as a rebooted device's would. The
    simulated clock starts --behind-h hours in the past and never overtakes the wall clock.
    SIGTERM (or Ctrl-C) stops after the in-flight messages are acknowledged.
    """
    from forewarn.mqtt import MqttClient
    from simulators.live import run_live
    from simulators.messages import MessageBuilder, Sink

    settings = settings_from(SimulateSettings)
    opts = settings.simulate
    boot = time.time_ns() // 1_000_000
    start_ms = _parse_start(opts.live.start, opts.live.behind_h)
    if start_ms > time.time_ns() // 1_000_000:
        raise SimulatorError(f"--start {opts.live.start} is in the future: the simulated clock never runs ahead of "
                             "the wall clock", hint="use auto, now or a past time")
    fleet = opts.fleet(start_ms=start_ms, stagger=True, run_id=f"boot-{boot}")
    faults = opts.faults.config()

    def builder(sink: Sink, machine_ids: list[str]) -> MessageBuilder:
        return MessageBuilder(sink, machine_ids, faults=faults, seed=opts.seed, delivery=opts.delivery,
                              batch_size=opts.batch_size, gateways_per_site=opts.gateways_per_site, boot=boot)

    client = MqttClient(settings.mqtt, opts.live.client_id)
    client.connect()
    stop = threading.Event()
    try:
        with on_signals(lambda _sig: stop.set(), say=_progress, action=_ON_SIGNAL):
            click.echo(f"simulating {fleet.machines * len(fleet.asset_types)} machines "
                       f"({', '.join(fleet.asset_types)}) at {opts.live.speed}x, {opts.delivery} delivery, "
                       f"QoS {opts.qos} -> mqtt://{settings.mqtt.host}:{settings.mqtt.port}", err=True)
            summary = run_live(fleet, client, builder_factory=builder, qos=opts.qos, speed=opts.live.speed,
                               ticks=opts.live.ticks, stop=stop, progress_s=opts.progress_s, progress=_progress)
    finally:
        client.disconnect()
    _write_report(opts.live.report, summary.report.to_json())
    click.echo(f"published {summary.readings} readings in {summary.messages} messages over {summary.seconds:.1f}s "
               f"({summary.rate:,.0f} readings/s); {summary.failures} failures, {summary.repairs} repairs; "
               f"{summary.unacked} unacknowledged", err=True)
    if summary.unacked:
        raise SimulatorError(f"{summary.unacked} publishes were not acknowledged",
                             hint="check the MQTT broker; they may be lost")


# -- history -----------------------------------------------------------------------------


@simulate.command()
@_options(ASSET_TYPES_FLAG, *FLEET_FLAGS, *VALUE_FAULT_FLAGS, *HISTORY_FLAGS, *DELIVERY_FAULT_FLAGS,
          MALFORMED_KINDS_FLAG)
@kafka_options
@_options(Flag("--report", "simulate.history.report", _REPORT))
def history() -> None:
    """Write run-to-failure histories fast, without MQTT, in the generic long format.

    Files: OUT/readings.<format>, OUT/events.<format> (and OUT/truth.<format> with --truth).
    Delivery faults (duplicates, out-of-order, ...) only apply with --to-kafka.
    """
    from simulators.history import write_history, write_history_to_kafka

    settings = settings_from(SimulateSettings)
    opts = settings.simulate
    run = opts.history
    faults = opts.faults.config()
    fleet = opts.fleet(start_ms=_parse_start(run.start), max_runs=None if run.ticks else run.runs)
    if run.to_kafka == (run.out is not None):
        raise SimulatorError("give exactly one of --out DIR and --to-kafka", hint="see forewarn simulate history -h")
    if run.to_kafka:
        from forewarn.kafka import KafkaProducer

        if run.ticks is not None:
            _not_ahead(fleet.start_ms + run.ticks * fleet.period_ms, settings, "the history")
        from forewarn.topics import Topics

        topics = Topics.from_settings(settings.topics)
        summary = write_history_to_kafka(fleet, KafkaProducer(settings.kafka), topics, ticks=run.ticks,
                                         faults=faults)
        where = f"Kafka topics {topics.telemetry} and {topics.maintenance}"
    else:
        if faults.any_delivery:
            raise SimulatorError("delivery faults only apply to message streams",
                                 hint="use them with --to-kafka, `simulate live` or `simulate replay`")
        assert run.out is not None
        summary = write_history(fleet, run.out, run.format, ticks=run.ticks, truth=run.truth, faults=faults)
        where = ", ".join(str(p) for p in summary.paths)
    assert summary.report is not None
    _write_report(run.report, summary.report.to_json())
    click.echo(f"{summary.machines} machines, {summary.readings} readings, {summary.failures} failures, "
               f"{summary.repairs} repairs in {summary.seconds:.2f}s ({summary.rate:,.0f} readings/s) -> {where}",
               err=True)


# -- replay ------------------------------------------------------------------------------


@simulate.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_options(*REPLAY_FLAGS, *PUBLISH_FLAGS, *VALUE_FAULT_FLAGS, *DELIVERY_FAULT_FLAGS, MALFORMED_KINDS_FLAG)
@mqtt_options
@_options(Flag("--report", "simulate.replay.report", _REPORT), Flag("--client-id", "simulate.replay.client_id"))
def replay(file: Path) -> None:
    """Publish FILE (generic long format, Parquet or CSV) over MQTT at --rate readings/s."""
    from forewarn.mqtt import MqttClient
    from simulators.live import MqttSink
    from simulators.messages import MessageBuilder
    from simulators.replay import load_replay, run_replay

    settings = settings_from(SimulateSettings)
    opts = settings.simulate
    run = opts.replay
    events = run.events
    if events is None:
        sibling = file.with_name(f"events{file.suffix}")
        events = sibling if sibling.is_file() and sibling != file else None
    data = load_replay(file, events_path=events, asset_type=run.asset_type, site=run.site,
                       settings=run.setting_columns, start_ms=_parse_start(run.start),
                       period_ms=opts.sample_period_ms, failure_at_end=run.failure_at_end)
    _not_ahead(data.last_ms, settings, str(file))
    client = MqttClient(settings.mqtt, run.client_id)
    client.connect()
    try:
        sink = MqttSink(client, opts.qos)
        builder = MessageBuilder(sink, data.machine_ids, faults=opts.faults.config(), seed=opts.seed,
                                 delivery=opts.delivery, batch_size=opts.batch_size,
                                 gateways_per_site=opts.gateways_per_site)
        stop = threading.Event()
        with on_signals(lambda _sig: stop.set(), say=_progress, action=_ON_SIGNAL):
            seconds = run_replay(data, builder, rate=run.rate, stop=stop, progress_s=opts.progress_s,
                                 progress=_progress)
        unacked = sink.wait_acked(30.0) if opts.qos else 0
    finally:
        client.disconnect()
    _write_report(run.report, builder.report.to_json())
    click.echo(f"replayed {builder.report.readings_sent} readings of {len(data.machine_ids)} machines and "
               f"{builder.report.events} events in {seconds:.1f}s; {unacked} unacknowledged", err=True)
    if unacked:
        raise SimulatorError(f"{unacked} publishes were not acknowledged", hint="check the MQTT broker")
