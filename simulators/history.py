"""Run-to-failure histories, fast and without MQTT: to long-format files or to Kafka.

Machines are simulated in chunks of :data:`CHUNK` per asset type, each chunk with its own
random streams, until every machine has completed ``runs`` run-to-failure cycles (or for
``ticks`` sample periods, which leaves the last runs censored). Files and message sinks
(Kafka: :class:`KafkaSink`) see exactly the same readings for the same seed and options.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from forewarn.contract import MaintenanceEvent
from forewarn.ports import ProducerLike
from forewarn.topics import Topics
from simulators.assets import asset_spec
from simulators.errors import SimulatorError
from simulators.faults import FaultConfig, FaultReport, ValueFaults
from simulators.fleet import Block, Fleet, FleetConfig
from simulators.longformat import FileFormat, LongFormatWriter
from simulators.messages import MessageBuilder, Outgoing, Sink

__all__ = ["CHUNK", "HistorySummary", "KafkaSink", "chunks", "write_history", "write_history_to_kafka",
           "write_history_to_sink"]

log = logging.getLogger(__name__)

CHUNK = 2048


@dataclass
class HistorySummary:
    """What a history run produced."""

    machines: int = 0
    readings: int = 0
    failures: int = 0
    repairs: int = 0
    seconds: float = 0.0
    paths: list[Path] = field(default_factory=list)
    report: FaultReport | None = None

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


def chunks(config: FleetConfig) -> Iterator[FleetConfig]:
    """The per-chunk fleet configurations of a history run: one asset type each, at most
    :data:`CHUNK` machines, numbered on from ``config.first_machine``."""
    for asset in config.asset_types:
        for first in range(0, config.machines, CHUNK):
            yield dataclasses.replace(config, asset_types=(asset,), machines=min(CHUNK, config.machines - first),
                                      first_machine=config.first_machine + first)


def _count(summary: HistorySummary, events: list[MaintenanceEvent]) -> None:
    for event in events:
        if event.event == "failure":
            summary.failures += 1
        elif event.event == "repair":
            summary.repairs += 1


def write_history(config: FleetConfig, out: Path, fmt: FileFormat = "parquet", *, ticks: int | None = None,
                  truth: bool = False, faults: FaultConfig | None = None) -> HistorySummary:
    """Write readings, events (and truth) of a run-to-failure history to ``out``.

    Only value faults apply to files (missing values are nulls, non-finite values stay
    NaN/±inf); the summary's report counts them.
    """
    started = time.perf_counter()
    faults = faults or FaultConfig()
    report = FaultReport(config=dataclasses.asdict(faults))
    summary = HistorySummary(report=report)
    specs = [asset_spec(name) for name in config.asset_types]
    with LongFormatWriter(out, specs, fmt, truth=truth) as writer:
        for k, chunk in enumerate(chunks(config)):
            fleet = Fleet(chunk)
            injector = ValueFaults(faults, fleet.size, config.seed, report, stream=(k,)) if faults.any_value else None
            blocks: list[Block] = []
            events: list[MaintenanceEvent] = []
            for step_blocks, step_events in fleet.run(ticks, truth=truth):
                for block in step_blocks:
                    if injector is not None and len(block):
                        injector.apply(block, delivery=False)
                    blocks.append(block)
                events.extend(step_events)
            writer.write_blocks(blocks, fleet.machine_ids)
            writer.write_events(events)
            summary.machines += fleet.size
            summary.readings += sum(len(b) for b in blocks)
            report.readings += sum(len(b) for b in blocks)
            _count(summary, events)
            log.debug("history chunk %s: %s machines, %s readings", k, fleet.size, summary.readings)
        summary.paths = writer.paths
    summary.seconds = time.perf_counter() - started
    return summary


def write_history_to_sink(config: FleetConfig, sink: Sink, *, ticks: int | None = None,
                          faults: FaultConfig | None = None) -> HistorySummary:
    """Send the same history as :func:`write_history` through a :class:`MessageBuilder` to
    ``sink``, one message per reading, delivery faults included."""
    started = time.perf_counter()
    faults = faults or FaultConfig()
    report = FaultReport(config=dataclasses.asdict(faults))
    summary = HistorySummary(report=report)
    for k, chunk in enumerate(chunks(config)):
        fleet = Fleet(chunk)
        builder = MessageBuilder(sink, fleet.machine_ids, faults=faults, seed=config.seed * 1_000_003 + k,
                                 report=report)
        for step_blocks, step_events in fleet.run(ticks):
            summary.readings += sum(len(b) for b in step_blocks)
            builder.publish(step_blocks, step_events)
            _count(summary, step_events)
        builder.close()
        summary.machines += fleet.size
    summary.seconds = time.perf_counter() - started
    return summary


class KafkaSink:
    """Sends each message as one record: readings to the ``telemetry`` topic, events to
    ``maintenance``, keyed by machine_id, with the event time as record timestamp.

    A delivery report with an error is kept, never dropped: after :meth:`flush`,
    :meth:`check` raises when any record was not delivered.
    """

    def __init__(self, producer: ProducerLike, topics: Topics) -> None:
        self.producer = producer
        self.topics = topics
        self.failed: list[str] = []
        self.undelivered = 0  # still queued when the last flush gave up

    def _delivered(self, error: object, _message: object) -> None:
        if error is not None:
            self.failed.append(str(error))

    def send(self, message: Outgoing) -> None:
        topic = self.topics.maintenance if message.kind == "maintenance" else self.topics.telemetry
        self.producer.produce(topic, message.payload, key=message.source, timestamp_ms=message.ts,
                              on_delivery=self._delivered)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait up to ``timeout_s`` for every delivery report."""
        self.undelivered = self.producer.flush(timeout_s)

    def check(self) -> None:
        """Raise :class:`SimulatorError` if a record failed or was still queued at the last flush."""
        if self.undelivered or self.failed:
            first = f" (first error: {self.failed[0]})" if self.failed else ""
            raise SimulatorError(f"{self.undelivered + len(self.failed)} records were not delivered to Kafka{first}",
                                 hint="check kafka.bootstrap_servers and the topics "
                                      "(`forewarn topics create` checks them)")


def write_history_to_kafka(config: FleetConfig, producer: ProducerLike, topics: Topics, *, ticks: int | None = None,
                           faults: FaultConfig | None = None, flush_timeout_s: float = 60.0) -> HistorySummary:
    """:func:`write_history_to_sink` into Kafka through a :class:`KafkaSink`; returns once
    every record is delivered, or raises :class:`SimulatorError` saying how many were not."""
    sink = KafkaSink(producer, topics)
    try:
        summary = write_history_to_sink(config, sink, ticks=ticks, faults=faults)
    finally:
        sink.flush(flush_timeout_s)
    sink.check()
    return summary
