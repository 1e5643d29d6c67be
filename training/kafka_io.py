"""Kafka in and out for training: export ``telemetry`` + ``maintenance`` to a Parquet dataset,
and publish a bundle on the compacted ``models`` topic.

The export reads every partition from its start (or the first offset at ``since``) up to
the end offset it had when the export started (or ``until``), decodes with the shared
contract decoder (rejects are counted, never written), keeps each maintenance event once by
its identity (``event_id``, else machine, time and kind) and each reading once by machine,
boot and seq, and writes one folder per asset type
— ``DIR/<asset_type>/readings.parquet`` and ``events.parquet`` in the generic long format —
plus ``DIR/lineage.json`` with the topic/partition/offset ranges read. Each asset folder can
be passed to ``forewarn train --data`` as is.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forewarn.bundle import Bundle, pack
from forewarn.contract import Decoder, MaintenanceEvent, Rejected, Telemetry
from forewarn.kafka import KafkaConsumer, KafkaProducer, TopicPartition, read_to_end
from forewarn.ports import ConsumerLike, ProducerLike
from forewarn.settings import KafkaSettings, TopicSettings
from forewarn.topics import Topics
from training.errors import TrainingError

__all__ = ["ExportResult", "export_dataset", "publish_bundle"]

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    folder: Path
    readings: dict[str, int] = field(default_factory=dict)  # per asset type
    events: int = 0
    rejected: int = 0
    duplicate_events: int = 0  # maintenance events seen again (a redelivery, a dead-letter replay)
    lineage: dict[str, Any] = field(default_factory=dict)


def _read_topic(consumer: ConsumerLike, topic: str, since_ms: int | None, until_ms: int | None,
                timeout_s: float) -> tuple[list[bytes], dict[str, list[int]]]:
    """The values of ``topic`` from its first offset (or the first at ``since_ms``) to the end
    it has now (or the first offset at ``until_ms``), and the ``[start, end)`` offsets read per
    non-empty partition."""
    ranges: dict[str, list[int]] = {}
    start_at: list[TopicPartition] = []
    stop_at: dict[tuple[str, int], int] = {}
    for partition in consumer.partitions(topic, timeout_s):
        low, high = consumer.watermarks(topic, partition, timeout_s=timeout_s)
        start, end = low, high
        if since_ms is not None or until_ms is not None:
            stamps = [TopicPartition(topic, partition, t) for t in
                      (since_ms if since_ms is not None else 0, until_ms if until_ms is not None else 0)]
            found = consumer.offsets_for_times(stamps, timeout_s)
            if since_ms is not None:
                start = found[0].offset if found[0].offset >= 0 else high
            if until_ms is not None:
                end = found[1].offset if found[1].offset >= 0 else high
        if end > start:
            ranges[str(partition)] = [start, end]
            start_at.append(TopicPartition(topic, partition, start))
            stop_at[(topic, partition)] = end
    if not start_at:
        return [], ranges
    values = [value for message in read_to_end(consumer, start_at, stop_at=stop_at, idle_timeout_s=timeout_s)
              if (value := message.value()) is not None]
    return values, ranges


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.astimezone(UTC).timestamp() * 1000)


def export_dataset(kafka: KafkaSettings, topic_settings: TopicSettings, out: str | Path, *,
                   since: datetime | None = None, until: datetime | None = None,
                   timeout_s: float = 30.0, consumer: ConsumerLike | None = None) -> ExportResult:
    """Export ``telemetry`` (from ``since``) and ``maintenance`` (from their start), both up
    to ``until`` or their current end, to ``out``. Reads with ``consumer`` when given (it is
    left open), else with a private ``read_committed`` consumer; no progress for
    ``timeout_s`` raises :class:`~forewarn.errors.KafkaError`."""
    topics = Topics.from_settings(topic_settings)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    decoder = Decoder()
    since_ms, until_ms = _ms(since), _ms(until)
    reader = consumer if consumer is not None else KafkaConsumer(kafka, f"forewarn-export-{uuid.uuid4().hex[:8]}")
    try:
        raw_readings, reading_ranges = _read_topic(reader, topics.telemetry, since_ms, until_ms, timeout_s)
        raw_events, event_ranges = _read_topic(reader, topics.maintenance, None, until_ms, timeout_s)
    finally:
        if consumer is None:
            reader.close()
    result = ExportResult(folder=folder)
    rows: dict[str, list[Telemetry]] = defaultdict(list)
    for raw in raw_readings:
        reading = decoder.telemetry(raw)
        if isinstance(reading, Rejected):
            result.rejected += 1
            continue
        rows[reading.asset_type].append(reading)
    # Each maintenance event once, by its identity, before anything is labelled from it.
    events: dict[str, MaintenanceEvent] = {}
    for raw in raw_events:
        event = decoder.maintenance(raw)
        if isinstance(event, Rejected):
            result.rejected += 1
        elif event.identity in events:
            result.duplicate_events += 1
        else:
            events[event.identity] = event
    if result.duplicate_events:
        log.info("export: %d maintenance events were seen more than once and are kept once", result.duplicate_events)
    kept = list(events.values())
    event_frame = pd.DataFrame({
        "machine_id": [e.machine_id for e in kept],
        "time": pd.to_datetime([e.ts for e in kept], unit="ms", utc=True),
        "event": [e.event for e in kept],
        "failure_mode": [e.failure_mode for e in kept],
        "event_id": [e.event_id for e in kept],
    })
    for asset_type, readings in sorted(rows.items()):
        sensors = sorted({k for r in readings for k in r.sensors})
        settings = sorted({k for r in readings for k in r.settings} - set(sensors))
        frame = pd.DataFrame({
            "machine_id": [r.machine_id for r in readings],
            "asset_type": asset_type,
            "time": pd.to_datetime([r.ts for r in readings], unit="ms", utc=True),
            "seq": np.array([r.seq for r in readings], dtype=np.int64),
        })
        # A device's restart epoch: its seq starts again from 0 with every new boot.
        has_boot = any(r.boot is not None for r in readings)
        if has_boot:
            frame["boot"] = pd.array([r.boot for r in readings], dtype="Int64")
        for name in sensors:
            frame[name] = np.array([r.sensors.get(name, np.nan) for r in readings], dtype=np.float64)
        for name in settings:
            frame[name] = np.array([r.settings.get(name, np.nan) for r in readings], dtype=np.float64)
        key = ["machine_id", "boot", "seq"] if has_boot else ["machine_id", "seq"]
        frame = frame.sort_values(key, kind="stable", na_position="first").drop_duplicates(key)
        target = folder / asset_type
        target.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(target / "readings.parquet", index=False)
        machines = set(frame["machine_id"])
        mine = event_frame[event_frame["machine_id"].isin(machines)]
        mine.to_parquet(target / "events.parquet", index=False)
        result.readings[asset_type] = len(frame)
        result.events += len(mine)
        (target / "settings.json").write_text(json.dumps({"settings": settings}) + "\n")
    result.lineage = {
        "kafka": {
            "bootstrap_servers": kafka.bootstrap_servers,
            "exported_at": datetime.now(UTC).isoformat(),
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "topics": {topics.telemetry: reading_ranges, topics.maintenance: event_ranges},
            "rejected": result.rejected,
            "duplicate_events": result.duplicate_events,
        }
    }
    (folder / "lineage.json").write_text(json.dumps(result.lineage, indent=2) + "\n")
    log.info("exported %s readings and %d events to %s", result.readings, result.events, folder)
    return result


def publish_bundle(kafka: KafkaSettings, topic_settings: TopicSettings, bundle: Bundle,
                   timeout_s: float = 30.0, producer: ProducerLike | None = None) -> str:
    """Put ``bundle`` on the compacted ``models`` topic, keyed by its name, and wait until
    Kafka confirmed it; returns the topic. Sends with ``producer`` when given (it is left
    open), else with a private one."""
    topic = Topics.from_settings(topic_settings).models
    sender = producer if producer is not None else KafkaProducer(kafka, **{"message.max.bytes": 16 * 1024 * 1024})
    refused: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            refused.append(error)

    try:
        sender.produce(topic, pack(bundle), key=bundle.meta.name, on_delivery=delivered,
                       headers=[("version", bundle.meta.version.encode()), ("sha256", bundle.meta.sha256.encode())])
        left = sender.flush(timeout_s)
    finally:
        if producer is None:
            sender.close(timeout_s)
    if refused:
        raise TrainingError(f"Kafka refused {bundle.label} on {topic}: {refused[0]}",
                            hint="check the models topic's max.message.bytes and the broker's logs")
    if left:
        raise TrainingError(f"could not publish {bundle.label} to {topic} within {timeout_s:.0f}s",
                            hint="check that Kafka is reachable")
    return topic
