"""kill -9 of a real ``forewarn edge`` while Kafka is up (mid-forwarding), then a restart: on a
real Mosquitto and Kafka, every reading, prediction and alert reaches Kafka, first occurrences
in order per machine, and the duplicates the crash causes are counted and reported.

To be sure the duplicate path is taken, the edge is frozen (SIGSTOP) until a frozen moment
shows readings Kafka already has that are still in the edge's buffer (their delivery reports
not yet handled); it is killed (SIGKILL) in that state, so the restarted edge sends them again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import confluent_kafka
import msgspec
import pytest

from forewarn.bundle import write_bundle
from forewarn.settings import KafkaSettings, TopicSettings
from forewarn.topics import Topics
from tests.edge.helpers import edge_bundle, fleet, mqtt_messages
from tests.edge.procs import EdgeProcess, identities, out_of_order, publish_paced, read_topic
from tests.integration.test_edge_outage import reference, report
from tests.stacks import RunningStack

Ident = tuple[str, int]

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka (the session's stack)


class Seen:
    """Every (machine_id, seq) of a topic so far, read up to its current end on each call."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.topic = topic
        self.consumer = confluent_kafka.Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                                                  "group.id": f"seen-{uuid.uuid4().hex[:8]}",
                                                  "enable.auto.commit": False})
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.parts = [confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in parts]
        self.consumer.assign(self.parts)
        self.next = {p: 0 for p in parts}
        self.idents: set[Ident] = set()

    def update(self) -> set[Ident]:
        ends = {p: self.consumer.get_watermark_offsets(confluent_kafka.TopicPartition(self.topic, p), timeout=10)[1]
                for p in self.next}
        deadline = time.monotonic() + 10
        while any(self.next[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            for m in self.consumer.consume(1000, 0.2):
                if m.error() is None:
                    doc = msgspec.json.decode(m.value() or b"")
                    self.idents.add((doc["machine_id"], doc["seq"]))
                    self.next[m.partition() or 0] = (m.offset() or 0) + 1
        return self.idents

    def close(self) -> None:
        self.consumer.close()


def buffered_readings(db: Path) -> set[Ident]:
    """The readings in the buffer on disk (read while the edge is frozen)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT value FROM outbox WHERE topic = 'telemetry'").fetchall()
    docs = [msgspec.json.decode(value) for (value,) in rows]
    return {(d["machine_id"], d["seq"]) for d in docs}


def kill_with_delivered_rows_buffered(edge: EdgeProcess, seen: Seen, db: Path, tries: int = 100) -> set[Ident]:
    """Freeze the edge until Kafka has readings its buffer still holds, then kill -9 it there."""
    assert edge.proc is not None
    for _ in range(tries):
        os.kill(edge.proc.pid, signal.SIGSTOP)
        both = seen.update() & buffered_readings(db)
        if both:
            edge.kill9()
            return both
        os.kill(edge.proc.pid, signal.SIGCONT)
        time.sleep(0.013)
    raise AssertionError("never caught the edge between a delivery and its delivery report")


def test_kill_9_while_kafka_is_up_duplicates_are_counted_nothing_is_lost(
        stack: RunningStack, fresh_topics: Callable[..., tuple[TopicSettings, Topics]], tmp_path: Path) -> None:
    settings, topics = fresh_topics(partitions=3)
    seed = tmp_path / "seed"
    bundle = edge_bundle()
    write_bundle(seed, bundle.meta, bundle.onnx, make_current=True, release=bundle.release)
    readings = fleet(30, 100, site="site-k9")
    expected_predictions, _alerts = reference(readings)
    edge = EdgeProcess(tmp_path / "edge.log", stack.kafka_settings, stack.mqtt_settings, settings, tmp_path / "data",
                       "--models-dir", str(seed), "--no-models-sync", "--sites", "site-k9", "--session-expiry", "120",
                       "--shutdown-timeout", "5", client_id="edge-k9").start()
    seen = Seen(stack.kafka_settings, topics.telemetry)
    publisher = publish_paced(stack.mqtt_settings, mqtt_messages(readings), 8.0)
    try:
        time.sleep(2)
        resent = kill_with_delivered_rows_buffered(edge, seen, tmp_path / "data" / "outbox.db")
        edge.start()
        publisher.join(60)
        telemetry = read_topic(stack.kafka_settings, topics.telemetry, expect=len(readings), timeout_s=60)
        predictions = read_topic(stack.kafka_settings, topics.predictions, expect=len(expected_predictions),
                                 timeout_s=30)
    finally:
        seen.close()
        code = edge.terminate()
    assert code == 0, edge.log()[-3000:]
    seen_readings = identities(telemetry)
    lost, duplicates = report("readings", seen_readings, {(r.machine_id, r.seq) for r in readings})
    assert lost == 0 and out_of_order(telemetry) == 0
    lost, duplicates_p = report("predictions", identities(predictions), expected_predictions)
    assert lost == 0 and out_of_order(predictions) == 0
    print(f"kill -9 with Kafka up and {len(resent)} delivered readings still buffered: {duplicates} duplicated "
          f"readings and {duplicates_p} duplicated predictions in Kafka (consumers drop them by (machine_id, seq))")
    assert duplicates >= len(resent) and all(seen_readings[ident] >= 2 for ident in resent), \
        "what Kafka had but the buffer still held was sent again"
