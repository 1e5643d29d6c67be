"""Live mode: the fleet publishes telemetry and maintenance events over MQTT, paced.

One sample period of simulated time takes ``sample_period_s / speed`` wall seconds
(``speed=0``: no pacing, as fast as the broker takes it). :func:`run_live` returns when
``ticks`` periods are done or ``stop`` is set (the CLI sets it on SIGTERM/SIGINT); before
returning it waits until every QoS ≥ 1 publish has been acknowledged by the broker.

The simulated clock never runs ahead of the wall clock: consumers refuse event times too far
ahead of arrival (``ts_out_of_range``), as they would a device with a skewed clock. A period
is published only once the wall clock has passed its last possible event time, so a fast run
that catches up with the wall clock goes on at 1x. Start it in the past (the CLI's
``--start auto`` does) to run at ``speed`` for a while.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from forewarn.topics import batch_topic, maintenance_topic, telemetry_topic
from simulators.faults import FaultReport
from simulators.fleet import Fleet, FleetConfig
from simulators.messages import Delivery, MessageBuilder, Outgoing

__all__ = ["LiveSummary", "MqttPublisher", "MqttSink", "Pacer", "run_live", "topic_for"]

log = logging.getLogger(__name__)


def topic_for(message: Outgoing) -> str:
    """The MQTT topic of a message."""
    if message.kind == "telemetry":
        return telemetry_topic(message.source)
    if message.kind == "batch":
        return batch_topic(message.site, message.source)
    return maintenance_topic(message.source)


class MqttPublisher(Protocol):
    """What :class:`MqttSink` needs of an MQTT client (:class:`~forewarn.mqtt.MqttClient`,
    or :class:`~forewarn.testing.FakeMqtt` in unit tests)."""

    on_published: Callable[[int], None] | None

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> Any: ...


class MqttSink:
    """Publishes messages with a connected MQTT client and tracks the broker's
    acknowledgements (the client's ``on_published`` hook), keeping at most ``max_pending``
    unacknowledged QoS ≥ 1 publishes: when the broker is slow or away, :meth:`send`
    blocks (back-pressure) instead of queueing without bound. Publishes made while
    disconnected are resent by paho after the reconnect."""

    def __init__(self, mqtt: MqttPublisher, qos: int = 1, max_pending: int = 20_000) -> None:
        self.mqtt = mqtt
        self.qos = qos
        self.max_pending = max(1, min(max_pending, 60_000))  # below the 16-bit message id space
        self._cond = threading.Condition()
        self._pending: set[int] = set()
        self._early: set[int] = set()  # acknowledged before publish() returned their id
        if qos:
            mqtt.on_published = self._on_published

    def _on_published(self, mid: int) -> None:
        with self._cond:
            if mid in self._pending:
                self._pending.discard(mid)
                self._cond.notify_all()
            else:
                self._early.add(mid)

    def send(self, message: Outgoing) -> None:
        info = self.mqtt.publish(topic_for(message), message.payload, qos=self.qos)
        if self.qos == 0:
            return
        with self._cond:
            if info.mid in self._early:
                self._early.discard(info.mid)
            else:
                self._pending.add(info.mid)
            while len(self._pending) >= self.max_pending:
                self._cond.wait(1.0)

    @property
    def unacked(self) -> int:
        with self._cond:
            return len(self._pending)

    def wait_acked(self, timeout_s: float = 30.0) -> int:
        """Wait until every publish is acknowledged; returns how many are still not."""
        with self._cond:
            self._cond.wait_for(lambda: not self._pending, timeout_s)
            return len(self._pending)


class Pacer:
    """Sleeps so that period ``k`` starts at ``k * period_s`` wall seconds after start, and not
    before the wall clock (``wall``, epoch seconds) reaches ``not_before_ms`` when given.

    Waiting uses ``stop`` so a stop request wakes it at once. Returns False when stopped.
    ``held`` is True while the wall clock, not the pace, decides (the run goes at 1x).
    """

    def __init__(self, period_s: float, stop: threading.Event, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.period_s = period_s
        self.stop = stop
        self.clock = clock
        self.wall = wall
        self.start = clock()
        self.behind_s = 0.0
        self.held = False

    def wait(self, k: int, not_before_ms: int | None = None) -> bool:
        delay = self.start + k * self.period_s - self.clock() if self.period_s > 0 else 0.0
        self.behind_s = max(0.0, -delay)
        hold = 0.0 if not_before_ms is None else not_before_ms / 1000 - self.wall()
        self.held = hold > 0 and hold >= delay
        delay = max(delay, hold)
        if delay > 0:
            return not self.stop.wait(delay)
        return not self.stop.is_set()


@dataclass
class LiveSummary:
    """What a live run published."""

    ticks: int = 0
    readings: int = 0
    messages: int = 0
    failures: int = 0
    repairs: int = 0
    seconds: float = 0.0
    unacked: int = 0
    report: FaultReport = field(default_factory=FaultReport)

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


def run_live(
    fleet_config: FleetConfig,
    client: MqttPublisher,
    *,
    builder_factory: Callable[[MqttSink, list[str]], MessageBuilder] | None = None,
    qos: int = 1,
    speed: float = 60.0,
    ticks: int | None = None,
    stop: threading.Event | None = None,
    progress_s: float = 10.0,
    progress: Callable[[str], None] | None = None,
    report_path: Path | None = None,
    delivery: Delivery = "single",
    batch_size: int = 100,
    boot: int | None = None,
    pacer: Pacer | None = None,
) -> LiveSummary:
    """Simulate ``fleet_config`` and publish it through the connected ``client``; ``boot`` is
    the restart epoch of the default builder's readings, ``pacer`` (tests) replaces the one
    ``speed`` makes."""
    stop = stop or threading.Event()
    fleet = Fleet(fleet_config)
    sink = MqttSink(client, qos)
    if builder_factory is not None:
        builder = builder_factory(sink, fleet.machine_ids)
    else:
        builder = MessageBuilder(sink, fleet.machine_ids, seed=fleet_config.seed, delivery=delivery,
                                 batch_size=batch_size, boot=boot)
    summary = LiveSummary(report=builder.report)
    period_wall = fleet_config.sample_period_s / speed if speed > 0 else 0.0
    pacer = pacer or Pacer(period_wall, stop)
    started = last_report = time.monotonic()
    last_readings = 0
    log.info("live: %s machines, period %ss, speed %sx, %s delivery, QoS %s", fleet.size,
             fleet_config.sample_period_s, speed, delivery, qos)
    k = 0
    # Every event time of period k is below the start of period k + 1: wait for the wall clock to pass it.
    while (ticks is None or k < ticks) and pacer.wait(k, fleet.time_ms(k + 1)):
        blocks, events = fleet.step()
        summary.readings += builder.publish(blocks, events)
        for event in events:
            if event.event == "failure":
                summary.failures += 1
            elif event.event == "repair":
                summary.repairs += 1
        k += 1
        now = time.monotonic()
        if now - last_report >= progress_s:
            rate = (summary.readings - last_readings) / (now - last_report)
            line = (f"t+{k * fleet_config.sample_period_s:.0f}s simulated: {summary.readings} readings "
                    f"({rate:,.0f}/s), {builder.report.messages} messages, {summary.failures} failures, "
                    f"{sink.unacked} unacked")
            if pacer.held:
                line += ", caught up with the wall clock (1x)"
            elif pacer.behind_s > period_wall > 0:
                line += f", {pacer.behind_s:.1f}s behind schedule"
            if progress is not None:
                progress(line)
            log.info("%s", line)
            last_report, last_readings = now, summary.readings
    builder.close()
    summary.readings = builder.report.readings_sent
    summary.messages = builder.report.messages
    summary.ticks = k
    summary.unacked = sink.wait_acked(30.0) if qos else 0
    summary.seconds = time.monotonic() - started
    if summary.unacked:
        log.warning("live: %s publishes were not acknowledged before stopping", summary.unacked)
    if report_path is not None:
        report_path.write_text(builder.report.to_json())
    return summary
