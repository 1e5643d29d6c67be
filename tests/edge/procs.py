"""Real ``forewarn edge`` processes and MQTT/Kafka helpers for the edge acceptance tests and benchmark."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka
import msgspec
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion

from forewarn.settings import KafkaSettings, MqttSettings, TopicSettings
from tests.scoring.bundle_factory import trust_env
from tests.stacks import REPO


class EdgeProcess:
    """``python -m forewarn.cli edge`` as a child process."""

    def __init__(self, log_path: Path, kafka: KafkaSettings, mqtt: MqttSettings, topics: TopicSettings,
                 data_dir: Path, *args: str, client_id: str = "edge-it") -> None:
        self.cmd = [sys.executable, "-m", "forewarn.cli", "--log-level", "info", "edge",
                    "--bootstrap-servers", kafka.bootstrap_servers, "--mqtt-host", mqtt.host,
                    "--mqtt-port", str(mqtt.port), "--topic-prefix", topics.prefix, "--data-dir", str(data_dir),
                    "--client-id", client_id, "--threads", "1", *args]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 60.0) -> EdgeProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO), **trust_env()}
        env.pop("FOREWARN_CONFIG", None)
        mark = len(self.log()) if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout_s
        while "SIGTERM or Ctrl-C stops it" not in self.log()[mark:]:
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, "edge did not start:\n" + self.log()
            time.sleep(0.1)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class LocalScreen:
    """A plant-side subscriber to the edge's predictions and alerts; counts them with arrival times."""

    def __init__(self, mqtt: MqttSettings) -> None:
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self._client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                   client_id=f"screen-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv311)
        self._client.on_message = self._on_message
        self._client.connect(mqtt.host, mqtt.port, keepalive=60)
        self._client.subscribe([("forewarn/+/+/prediction", 0), ("forewarn/+/+/alert", 0)])
        self._client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.times[message.topic.rsplit("/", 1)[-1]].append(time.monotonic())

    def count(self, kind: str, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for t in list(self.times[kind]) if since <= t <= until)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def publish_paced(mqtt: MqttSettings, messages: list[tuple[str, bytes]], duration_s: float) -> threading.Thread:
    """Publish ``messages`` with QoS 1, evenly over ``duration_s``, on a background thread."""

    def run() -> None:
        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=f"plant-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv311)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.connect(mqtt.host, mqtt.port, keepalive=60)
        client.loop_start()
        rate = len(messages) / max(duration_s, 0.001)
        start = time.monotonic()
        last = None
        for i, (topic, payload) in enumerate(messages):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            last = client.publish(topic, payload, qos=1)
        if last is not None:
            last.wait_for_publish(120)
        client.loop_stop()
        client.disconnect()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def read_topic(kafka: KafkaSettings, topic: str, *, expect: int, timeout_s: float = 120.0,
               settle_s: float = 2.0) -> list[tuple[int, bytes | None, bytes]]:
    """(partition, key, value) of every record of ``topic`` in partition order, once ``expect``
    are there (plus ``settle_s`` for late duplicates) or at the timeout."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                                         "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list[tuple[int, bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout_s
    enough_at: float | None = None
    try:
        while time.monotonic() < deadline:
            for m in consumer.consume(5000, 0.3):
                if m.error() is None:
                    out.append((m.partition() or 0, m.key(), m.value() or b""))
            if len(out) >= expect:
                enough_at = enough_at or time.monotonic()
                if time.monotonic() - enough_at > settle_s:
                    break
    finally:
        consumer.close()
    return out


def identities(records: list[tuple[int, bytes | None, bytes]]) -> collections.Counter[tuple[str, int]]:
    seen: collections.Counter[tuple[str, int]] = collections.Counter()
    for _p, _k, value in records:
        doc = msgspec.json.decode(value)
        seen[(doc["machine_id"], doc["seq"])] += 1
    return seen


def out_of_order(records: list[tuple[int, bytes | None, bytes]]) -> int:
    """First occurrences of a machine's seq that come after a higher seq of the same machine
    (a re-sent duplicate may repeat older seqs; a first occurrence may not)."""
    top: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    bad = 0
    for _p, _k, value in records:
        doc = msgspec.json.decode(value)
        ident = (doc["machine_id"], doc["seq"])
        if ident in seen:
            continue
        seen.add(ident)
        if doc["seq"] < top.get(ident[0], -1):
            bad += 1
        top[ident[0]] = max(doc["seq"], top.get(ident[0], -1))
    return bad
