"""Shared helpers for the bridge's tests: payloads, a size-limited fake Kafka, publishing and counting
(real brokers)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import confluent_kafka

from forewarn.kafka import OFFSET_INVALID, KafkaAdmin, KafkaConsumer
from forewarn.settings import KafkaSettings, MqttSettings
from forewarn.testing import FakeMessage, FakeProducer, InMemoryKafka, broker_error
from forewarn.topics import batch_topic, telemetry_topic

TS0 = 1_764_212_345_123


def too_large() -> confluent_kafka.KafkaError:
    """The delivery error librdkafka reports for a record above the topic's limit."""
    return broker_error(confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")


class SizeLimitedKafka(FakeProducer):
    """Kafka with a per-topic record size limit that fails a whole request for one large record:
    every record produced since the last poll fails with it (as a produce request does)."""

    def __init__(self, kafka: InMemoryKafka, limits: dict[str, int]) -> None:
        super().__init__(kafka)
        self.limits = limits
        self.requests: list[list[tuple[str, bytes | None]]] = []
        self._request: list[tuple[Any, str, bytes | None, bytes | str | None, Any, int | None]] = []

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None, *,
                headers: Sequence[tuple[str, bytes | str]] | None = None, timestamp_ms: int | None = None,
                on_delivery: Callable[[Any, Any], None] | None = None, partition: int | None = None) -> None:
        self._request.append((on_delivery, topic, value, key, headers, timestamp_ms))

    def poll(self, timeout_s: float = 0.0) -> int:
        request, self._request = self._request, []
        self.requests.append([(topic, value) for _cb, topic, value, *_ in request])
        bad = any(len(value or b"") > self.limits.get(topic, 1 << 30) for _cb, topic, value, *_ in request)
        for callback, topic, value, key, headers, ts in request:
            if bad:
                assert callback is not None
                error = too_large()
                callback(error, FakeMessage(topic, -1, OFFSET_INVALID, _as_key(key), value, None, ts or 0, error))
            else:
                super().produce(topic, value, key, headers=headers, timestamp_ms=ts, on_delivery=callback)
        return super().poll(timeout_s) + (len(request) if bad else 0)


def _as_key(key: bytes | str | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


def reading(machine_id: str, seq: int, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "machine_id": machine_id, "asset_type": "pump", "ts": TS0 + seq * 1000, "seq": seq,
            "sensors": {"bearing_temp_c": 71.2 + seq % 7, "vibration_rms": 0.8}, **extra}


def huge_reading(machine_id: str, seq: int) -> dict[str, Any]:
    """A valid reading (256 settings with 100-character keys, the contract's bounds) of ~28 KB of
    random hex: lz4 cannot bring it under a 10 KB ``max.message.bytes``."""
    return reading(machine_id, seq, settings={os.urandom(50).hex(): 1.0 for _ in range(256)})


def reading_bytes(machine_id: str, seq: int) -> bytes:
    return json.dumps(reading(machine_id, seq), separators=(",", ":")).encode()


def batch_bytes(gateway_id: str, readings: Iterable[dict[str, Any]]) -> bytes:
    return json.dumps({"v": 1, "gateway_id": gateway_id, "readings": list(readings)}, separators=(",", ":")).encode()


def single_load(machines: int, per_machine: int, site: str = "site-a") -> list[tuple[str, bytes, tuple[str, int]]]:
    """(mqtt topic, payload, identity) for ``machines`` × ``per_machine`` single readings, interleaved."""
    ids = [f"{site}/pump-{i:04d}" for i in range(machines)]
    return [(telemetry_topic(m), reading_bytes(m, seq), (m, seq)) for seq in range(per_machine) for m in ids]


def batch_load(gateways: int, batches: int, size: int, site: str = "site-b") -> list[tuple[str, bytes, int]]:
    """(mqtt topic, payload, readings) for gateway batches of ``size`` readings."""
    out = []
    for g in range(gateways):
        gw = f"{site}/gw-{g}"
        for b in range(batches):
            readings = [reading(f"{site}/m{g}-{i:03d}", b) for i in range(size)]
            out.append((batch_topic(site, gw), batch_bytes(gw, readings), size))
    return out


def connected_publisher(settings: Any, client_id: str | None = None, max_inflight: int = 1000) -> Any:
    """A paho client (MQTT 3.1.1, its network loop running) that has its CONNACK; with the
    secure stack's login and TLS when ``settings`` carry them. The caller disconnects it."""
    from paho.mqtt import client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=client_id or f"pub-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv311)
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)
    if isinstance(settings, MqttSettings):  # a login and TLS, as the secure stack's client files give
        if settings.tls:
            client.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None)
        if settings.username:
            client.username_pw_set(settings.username, settings.password_value())
    client.connect(settings.host, settings.port, keepalive=60)
    client.loop_start()
    # Publish only after CONNACK: MQTT lets a client send right after CONNECT, but Moquette 0.17
    # drops (never acknowledges) a PUBLISH that arrives before it has bound the connection to
    # its session ("Routing collision for action [PUB QoS1]"), and paho does not send it again.
    deadline = time.monotonic() + 30
    while not client.is_connected():
        if time.monotonic() > deadline:
            client.loop_stop()
            raise TimeoutError(f"no CONNACK from {settings.host}:{settings.port} within 30 s")
        time.sleep(0.01)
    return client


def publish_all(settings: Any, messages: Iterable[tuple[str, bytes]], client_id: str | None = None,
                qos: int = 1) -> int:
    """Publish with QoS 1 as fast as the broker takes them; returns how many. Waits for every PUBACK."""
    from paho.mqtt.enums import MQTTErrorCode

    client = connected_publisher(settings, client_id)
    n = 0
    last = None
    try:
        for topic, payload in messages:
            while True:
                try:
                    info = client.publish(topic, payload, qos=qos)
                except ValueError:  # paho's own queue is full: let it drain
                    time.sleep(0.01)
                    continue
                if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                    # Not queued (paho's 16-bit message ids wrapped onto one still unacknowledged,
                    # beyond ~65,000 queued): it would be dropped silently. Let paho drain, retry.
                    time.sleep(0.01)
                    continue
                last = info
                break
            n += 1
        if last is not None:
            last.wait_for_publish(120)
        deadline = time.monotonic() + 120
        while client._out_messages and time.monotonic() < deadline:  # every PUBACK back
            time.sleep(0.01)
    finally:
        client.disconnect()
        client.loop_stop()
    return n


def count_telemetry(kafka: KafkaSettings, topic: str, expect: set[tuple[str, int]] | None = None,
                    timeout_s: float = 60.0, idle_s: float = 5.0) -> Counter[tuple[str, int]]:
    """Read ``topic`` from the start: how often each (machine_id, seq) is there. Stops when every
    expected identity was seen (and ``idle_s`` passed without more), or at the timeout."""
    consumer = KafkaConsumer(kafka, f"count-{uuid.uuid4().hex}", [topic])
    seen: Counter[tuple[str, int]] = Counter()
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            messages = consumer.consume(5000, 0.5)
            if messages:
                last = time.monotonic()
            for m in messages:
                doc = json.loads(m.value())
                seen[(doc["machine_id"], doc["seq"])] += 1
            if expect is not None and expect.issubset(seen.keys()) and time.monotonic() - last > min(idle_s, 1.0):
                break
            if expect is None and seen and time.monotonic() - last > idle_s:
                break
    finally:
        consumer.close()
    return seen


def consume_records(kafka: KafkaSettings, topic: str, expect: int, timeout_s: float = 30.0) -> list[Any]:
    consumer = KafkaConsumer(kafka, f"read-{uuid.uuid4().hex}", [topic])
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expect and time.monotonic() < deadline:
            got.extend(consumer.consume(1000, 0.5))
    finally:
        consumer.close()
    return got


# -- the bridge as a real process ------------------------------------------------------------

def topic_size(kafka: KafkaSettings, topic: str) -> int:
    """How many records ``topic`` holds (sum of high watermarks; the topics start at 0)."""
    consumer = KafkaConsumer(kafka, f"size-{uuid.uuid4().hex}")
    try:
        return sum(consumer.watermarks(topic, p)[1] for p in consumer.partitions(topic))
    finally:
        consumer.close()


class BridgeProcess:
    """``python -m forewarn.cli bridge ...`` as a subprocess, with its stderr in a file."""

    def __init__(self, log_path: Any, kafka: KafkaSettings, mqtt: Any, prefix: str, client_id: str,
                 group: str, *extra: str, config: Any = None, launch: Sequence[str] = ()) -> None:
        """``config``: a settings file for ``FOREWARN_CONFIG`` (a secure stack's client file, whose
        login and TLS settings the flags here do not carry); ``launch``: an argv prefix the bridge
        runs under (``ip netns exec NS``: in a network namespace)."""
        import os
        import subprocess
        import sys

        self.log_path = log_path
        self.argv = [*launch, sys.executable, "-m", "forewarn.cli", "--log-level", "warning", "bridge",
                     "--bootstrap-servers", kafka.bootstrap_servers, "--mqtt-host", mqtt.host,
                     "--mqtt-port", str(mqtt.port), "--topic-prefix", prefix, "--client-id", client_id,
                     "--share-group", group, *extra]
        self._log = open(log_path, "ab")  # closed in stop()/kill()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FOREWARN_")}
        if config is not None:
            env["FOREWARN_CONFIG"] = str(config)
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        from pathlib import Path

        return Path(self.log_path).read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 30.0) -> BridgeProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "stops it" in self.log():
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"bridge exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"bridge not ready in {timeout_s}s:\n{self.log()}")

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self._log.close()

    def stop(self, timeout_s: float = 30.0) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout_s)
        self._log.close()
        return int(self.process.returncode)


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def limit_record_size(kafka: KafkaSettings, limits: dict[str, int]) -> None:
    """Set ``max.message.bytes`` of existing topics: Kafka then refuses larger records for good
    (``MSG_SIZE_TOO_LARGE``, and every record batched with one)."""
    KafkaAdmin(kafka).alter_topic_configs({topic: {"max.message.bytes": str(size)} for topic, size in limits.items()})


def dead_letter_headers(message: Any) -> dict[str, bytes]:
    return {k: v for k, v in (message.headers() or [])}
