"""Kafka in and out for training: export ``telemetry`` + ``maintenance`` to a Parquet dataset,
and publish a bundle on the compacted ``models`` topic.

The export reads every partition from its start (or the first offset at ``since``) up to
the end offset it had when the export started (or ``until``), decodes with the shared
contract decoder (rejects are counted, never written), and writes one folder per asset type
— ``DIR/<asset_type>/readings.parquet`` and ``events.parquet`` in the generic long format —
plus ``DIR/lineage.json`` with the topic/partition/offset ranges read. Each asset folder can
be passed to ``forewarn train --data`` as is.
"""

from __future__ import annotations

import json
import logging
import time
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
from forewarn.kafka import KafkaConsumer, KafkaProducer
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
    lineage: dict[str, Any] = field(default_factory=dict)


def _read_topic(settings: KafkaSettings, topic: str, since_ms: int | None, until_ms: int | None,
                timeout_s: float) -> tuple[list[bytes], dict[str, list[int]]]:
    import confluent_kafka

    overrides: dict[str, Any] = {"enable.partition.eof": True}
    consumer = KafkaConsumer(settings, f"forewarn-export-{uuid.uuid4().hex[:8]}", (), **overrides)
    client = consumer.client
    try:
        meta = client.list_topics(topic, timeout=timeout_s)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            raise TrainingError(f"Kafka topic {topic!r} not found",
                                hint="run `forewarn topics create` or check --topic-prefix")
        ranges: dict[str, list[int]] = {}
        assignment = []
        for partition in sorted(info.partitions):
            low, high = client.get_watermark_offsets(confluent_kafka.TopicPartition(topic, partition),
                                                     timeout=timeout_s)
            start, end = low, high
            if since_ms is not None or until_ms is not None:
                stamps = [confluent_kafka.TopicPartition(topic, partition, t) for t in
                          (since_ms if since_ms is not None else 0, until_ms if until_ms is not None else 0)]
                found = client.offsets_for_times(stamps, timeout=timeout_s)
                if since_ms is not None:
                    start = found[0].offset if found[0].offset >= 0 else high
                if until_ms is not None:
                    end = found[1].offset if found[1].offset >= 0 else high
            if end > start:
                ranges[str(partition)] = [start, end]
                assignment.append(confluent_kafka.TopicPartition(topic, partition, start))
        values: list[bytes] = []
        if not assignment:
            return values, ranges
        client.assign(assignment)
        remaining = {int(p): r[1] for p, r in ranges.items()}
        deadline = time.monotonic() + timeout_s
        while remaining:
            messages = client.consume(1000, 1.0)
            if not messages and time.monotonic() > deadline:
                raise TrainingError(f"timed out reading {topic}: partitions {sorted(remaining)} not at their end")
            for message in messages:
                error = message.error()
                partition = message.partition()
                if error is not None and error.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                    raise TrainingError(f"reading {topic}: {error.str()}")
                offset = message.offset() if error is None else None
                if error is None and partition in remaining and offset is not None and offset < remaining[partition]:
                    value = message.value()
                    if value is not None:
                        values.append(value)
                position = (offset + 1) if offset is not None else message.offset()
                if partition in remaining and position is not None and position >= remaining[partition]:
                    del remaining[partition]
            if messages:
                deadline = time.monotonic() + timeout_s
        return values, ranges
    finally:
        consumer.close()


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.astimezone(UTC).timestamp() * 1000)


def export_dataset(kafka: KafkaSettings, topic_settings: TopicSettings, out: str | Path, *,
                   since: datetime | None = None, until: datetime | None = None,
                   timeout_s: float = 30.0) -> ExportResult:
    topics = Topics.from_settings(topic_settings)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    decoder = Decoder()
    since_ms, until_ms = _ms(since), _ms(until)
    raw_readings, reading_ranges = _read_topic(kafka, topics.telemetry, since_ms, until_ms, timeout_s)
    raw_events, event_ranges = _read_topic(kafka, topics.maintenance, None, until_ms, timeout_s)
    result = ExportResult(folder=folder)
    rows: dict[str, list[Telemetry]] = defaultdict(list)
    for raw in raw_readings:
        reading = decoder.telemetry(raw)
        if isinstance(reading, Rejected):
            result.rejected += 1
            continue
        rows[reading.asset_type].append(reading)
    events: list[MaintenanceEvent] = []
    for raw in raw_events:
        event = decoder.maintenance(raw)
        if isinstance(event, Rejected):
            result.rejected += 1
            continue
        events.append(event)
    event_frame = pd.DataFrame({
        "machine_id": [e.machine_id for e in events],
        "time": pd.to_datetime([e.ts for e in events], unit="ms", utc=True),
        "event": [e.event for e in events],
        "failure_mode": [e.failure_mode for e in events],
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
        for name in sensors:
            frame[name] = np.array([r.sensors.get(name, np.nan) for r in readings], dtype=np.float64)
        for name in settings:
            frame[name] = np.array([r.settings.get(name, np.nan) for r in readings], dtype=np.float64)
        frame = frame.sort_values(["machine_id", "seq"], kind="stable").drop_duplicates(["machine_id", "seq"])
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
        }
    }
    (folder / "lineage.json").write_text(json.dumps(result.lineage, indent=2) + "\n")
    log.info("exported %s readings and %d events to %s", result.readings, result.events, folder)
    return result


def publish_bundle(kafka: KafkaSettings, topic_settings: TopicSettings, bundle: Bundle,
                   timeout_s: float = 30.0) -> str:
    """Put ``bundle`` on the compacted ``models`` topic, keyed by its name; returns the topic."""
    topic = Topics.from_settings(topic_settings).models
    producer = KafkaProducer(kafka, **{"message.max.bytes": 16 * 1024 * 1024})
    try:
        producer.produce(topic, pack(bundle), key=bundle.meta.name,
                         headers=[("version", bundle.meta.version.encode()),
                                  ("sha256", bundle.meta.sha256.encode())])
        left = producer.flush(timeout_s)
    finally:
        producer.close(timeout_s)
    if left:
        raise TrainingError(f"could not publish {bundle.label} to {topic} within {timeout_s:.0f}s",
                            hint="check that Kafka is reachable")
    return topic
