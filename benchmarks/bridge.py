"""Bridge drain benchmark: MQTT persistent session → Kafka (acks=all), ours against quixstreams' MQTTSource.

For each run: create the subscriber's persistent session, stop the subscriber, publish N QoS 1
messages into the offline session, start the subscriber and time the drain into Kafka: from the
first record's arrival to the N-th, watching the topic's high watermarks. CPU seconds are the
subscriber's (and its children's) user+system time over the same interval; peak RSS is sampled
while it drains. Each subscriber's session is dropped after its run, so later runs' messages are
not queued (and autosaved by Mosquitto) for it.

Runs: ours with single readings, ours with gateway batches of 100, and quixstreams' community
``MQTTSource`` (paho, auto-acknowledging on receipt) producing the same single readings to Kafka.
Then ours again, both loads, on the secure stack (``stack up --secure``: MQTT over TLS with a
login per component and ACLs, Kafka over SASL_SSL with SCRAM-SHA-512 and ACLs): the cost of
security is ``secure_vs_plaintext``.
quixstreams' source uses a clean session; the benchmark subclasses it only to turn that off,
since a drain from an offline session needs a persistent one.

    python benchmarks/bridge.py [--messages 200000] [--batches 2000] [--batch-size 100] [--skip-secure]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from forewarn.kafka import KafkaAdmin
from forewarn.settings import TopicSettings
from forewarn.topics import Topics, TopicSpec, topic_specs
from tests.bridge.helpers import BridgeProcess, batch_load, publish_all, single_load, topic_size
from tests.stacks import make_stack


def _cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            continue
    return total


def _drain(pid: int, kafka: Any, topic: str, expect: int, base: int = 0, timeout_s: float = 600,
           ready: Any = None) -> dict[str, float]:
    """Watch ``topic`` until it holds ``expect`` more records than ``base``. The drain is timed from
    ``ready()`` turning true (subscriber connected) when given, else from the first record."""
    from forewarn.kafka import KafkaConsumer

    proc = psutil.Process(pid)
    peak_rss = 0
    started = time.monotonic()
    t_first = cpu_first = None
    watcher = KafkaConsumer(kafka, f"watch-{uuid.uuid4().hex[:6]}")
    parts = watcher.partitions(topic)

    def size() -> int:
        return sum(watcher.watermarks(topic, p)[1] for p in parts)

    while ready is not None and not ready():
        time.sleep(0.005)
    if ready is not None:
        t_first, cpu_first = time.monotonic(), _cpu(proc)
    while time.monotonic() - started < timeout_s:
        try:
            peak_rss = max(peak_rss, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
        n = size() - base
        now = time.monotonic()
        if n > 0 and t_first is None:
            t_first, cpu_first = now, _cpu(proc)
        if n >= expect:
            assert t_first is not None and cpu_first is not None
            seconds = max(now - t_first, 1e-3)
            cpu = _cpu(proc) - cpu_first
            watcher.close()
            return {"records": n, "seconds": round(seconds, 3), "since_start_s": round(now - started, 3),
                    "cpu_s": round(cpu, 3), "peak_rss_mb": round(peak_rss / 2**20)}
        time.sleep(0.005)
    raise SystemExit(f"drain of {topic} did not finish in {timeout_s}s ({topic_size(kafka, topic) - base}/{expect})")


def _forget_session(mqtt: Any, client_id: str) -> None:
    """Drop a subscriber's persistent session: else the broker keeps queueing every later run's
    messages for it (and saving them all to its persistence file every few seconds)."""
    from bridge._subscriber import Subscriber

    session = Subscriber(mqtt, client_id, clean_start=True)  # session expiry 0: gone on disconnect
    session.connect()
    session.disconnect()


# -- quixstreams peer (run as a subprocess of this file) ------------------------------------


try:  # the peer's class must live at module level: quixstreams pickles a source into its own process
    from paho.mqtt import client as _paho
    from quixstreams.sources.community.mqtt import MQTTSource as _MQTTSource

    class PersistentMQTTSource(_MQTTSource):  # type: ignore[misc]
        """quixstreams' MQTTSource, with clean_session=False (else an offline drain has nothing to drain)."""

        def setup(self) -> None:
            self._client = _paho.Client(callback_api_version=_paho.CallbackAPIVersion.VERSION2,
                                        client_id=self._client_id, protocol=self._protocol, clean_session=False)
            self._client.on_message = self._mqtt_on_message
            self._client.connect(self._server, self._port)
            self._client.subscribe(self._topic, qos=self._qos)
            self._client.loop_start()
except ImportError:  # quixstreams is a dev extra
    PersistentMQTTSource = None


def quix_peer(bootstrap: str, mqtt_port: int, client_id: str, topic: str) -> None:
    from quixstreams import Application

    app = Application(broker_address=bootstrap, consumer_group=f"bench-{uuid.uuid4().hex[:6]}",
                      auto_create_topics=False, loglevel="WARNING")
    source = PersistentMQTTSource(topic="forewarn/+/+/telemetry", client_id=client_id, server="127.0.0.1",
                                  port=mqtt_port, version="3.1.1", tls_enabled=False, qos=1)
    app.add_source(source, topic=app.topic(topic))
    print("quix peer running", file=sys.stderr, flush=True)
    app.run()


class QuixProcess:
    def __init__(self, log: Path, bootstrap: str, mqtt_port: int, client_id: str, topic: str) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # closed in stop()
        self.process = subprocess.Popen([sys.executable, __file__, "--quix-peer", bootstrap, str(mqtt_port),
                                         client_id, topic], stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, seconds: float = 15.0) -> QuixProcess:
        deadline = time.monotonic() + 60
        while "quix peer running" not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("quix peer did not start:\n" + self.log_path.read_text(errors="replace"))
            time.sleep(0.1)
        time.sleep(seconds)  # the source starts in a child process after the app is up
        return self

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


# -- the benchmark ---------------------------------------------------------------------------


def _ours(local: Any, home: Path, args: argparse.Namespace, settings: TopicSettings, label: str,
          load: list[tuple[str, bytes]], expect: int) -> dict[str, float]:
    """Our bridge drains ``load`` from its offline session into ``telemetry``. On a secure stack it
    logs in as ``bridge`` (from its client file) and the plant publishes as ``simulator``."""
    kafka, mqtt = local.kafka_settings, local.mqtt_settings  # the admin's, on a secure stack
    config = publisher = None
    if local.secure is not None:
        config = local.secure.clients_dir / "bridge.toml"
        mqtt = local.client_settings("bridge")[1]
        publisher = local.client_settings("simulator")[1]
    telemetry = Topics.from_settings(settings).telemetry
    client_id = f"bench-{label}"
    bridge_args = (home / f"{label}.log", kafka, mqtt, settings.prefix, client_id, f"g-{label}",
                   "--receive-maximum", str(args.receive_maximum))
    BridgeProcess(*bridge_args, config=config).wait_ready().stop()  # the persistent session and its subscription
    t0 = time.monotonic()
    publish_all(publisher or mqtt, load)
    print(f"{label}: published {len(load)} messages in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    base = topic_size(kafka, telemetry)
    bridge = BridgeProcess(*bridge_args, config=config)
    try:
        return _drain(bridge.process.pid, kafka, telemetry, expect, base, ready=lambda: "stops it" in bridge.log())
    finally:
        bridge.stop()
        _forget_session(mqtt, client_id)


def _ours_both(local: Any, home: Path, args: argparse.Namespace, settings: TopicSettings,
               single: list[tuple[str, bytes]], batches: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Single readings, then gateway batches, through our bridge on ``local``."""
    readings_in_batches = len(batches) * args.batch_size
    out: dict[str, Any] = {}
    run = _ours(local, home, args, settings, "single", single, len(single))
    out["single"] = {**run, "messages": len(single), "msg_per_s": round(len(single) / run["seconds"]),
                     "cpu_s_per_1000_msgs": round(1000 * run["cpu_s"] / len(single), 4)}
    print(out["single"], file=sys.stderr)
    run = _ours(local, home, args, settings, "batch", batches, readings_in_batches)
    out["batches"] = {**run, "messages": len(batches), "batch_size": args.batch_size,
                      "readings_per_s": round(readings_in_batches / run["seconds"]),
                      "msg_per_s": round(len(batches) / run["seconds"]),
                      "cpu_s_per_1000_readings": round(1000 * run["cpu_s"] / readings_in_batches, 4)}
    print(out["batches"], file=sys.stderr)
    return out


def _quix(local: Any, home: Path, single: list[tuple[str, bytes]]) -> dict[str, Any]:
    kafka, mqtt = local.kafka_settings, local.mqtt_settings
    quix_log = home / "quix.log"
    QuixProcess(quix_log, kafka.bootstrap_servers, mqtt.port, "bench-quix", "bench.quix").wait_ready().stop()
    t0 = time.monotonic()
    publish_all(mqtt, single)
    print(f"quix: published {len(single)} messages in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    quix = QuixProcess(quix_log, kafka.bootstrap_servers, mqtt.port, "bench-quix", "bench.quix")
    try:
        run = _drain(quix.process.pid, kafka, "bench.quix", len(single))
    finally:
        quix.stop()
        _forget_session(mqtt, "bench-quix")
    return {**run, "messages": len(single), "msg_per_s": round(len(single) / run["seconds"]),
            "cpu_s_per_1000_msgs": round(1000 * run["cpu_s"] / len(single), 4),
            "note": "acknowledges on receipt (at-most-once across a crash), no validation; timed from its first "
                    "record in Kafka (ours from the moment it is connected: conservative for us)"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=int(os.environ.get("BENCH_MESSAGES", "200000")))
    parser.add_argument("--batches", type=int, default=int(os.environ.get("BENCH_BATCHES", "2000")))
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--skip-quix", action="store_true")
    parser.add_argument("--skip-secure", action="store_true", help="skip the run on the secure stack")
    parser.add_argument("--receive-maximum", type=int, default=int(os.environ.get("BENCH_RECEIVE_MAXIMUM", "10000")))
    args = parser.parse_args()

    settings = TopicSettings(prefix="bench.", partitions=6)
    n = args.messages
    single = [(t, p) for t, p, _i in single_load(machines=200, per_machine=n // 200)]
    batches = [(t, p) for t, p, _r in batch_load(gateways=20, batches=args.batches // 20, size=args.batch_size)]
    figures: dict[str, Any] = {"load": f"{os.getloadavg()[0]:.2f} (1-min load average at start)",
                               "receive_maximum": args.receive_maximum}
    home = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    local = make_stack(home)
    print(f"starting the stack in {home}", file=sys.stderr)
    local.up()
    try:
        KafkaAdmin(local.kafka_settings).ensure_topics([*topic_specs(settings), TopicSpec("quix", "bench.quix", 6, 1)])
        ours = _ours_both(local, home, args, settings, single, batches)
        figures["ours_single"], figures["ours_batches"] = ours["single"], ours["batches"]
        if not args.skip_quix:
            figures["quixstreams_mqtt_source_single"] = _quix(local, home, single)
            figures["ratio_ours_to_quix_single"] = round(
                figures["ours_single"]["msg_per_s"] / figures["quixstreams_mqtt_source_single"]["msg_per_s"], 2)
    finally:
        local.down()
    if not args.skip_secure:
        # The same runs on the secure stack: MQTT over TLS with logins and ACLs, Kafka over SASL_SSL
        # (SCRAM-SHA-512) with the StandardAuthorizer. The ACLs grant the prefixed topic names.
        secure_home = Path(tempfile.mkdtemp(prefix="bench-bridge-secure-"))
        local = make_stack(secure_home, secure=True, topics=settings)
        print(f"starting the secure stack in {secure_home}", file=sys.stderr)
        local.up()
        try:
            KafkaAdmin(local.kafka_settings).ensure_topics(topic_specs(settings))
            secure = _ours_both(local, secure_home, args, settings, single, batches)
        finally:
            local.down()
        figures["secure_single"], figures["secure_batches"] = secure["single"], secure["batches"]
        figures["secure_vs_plaintext"] = {
            "single_msg_per_s": round(secure["single"]["msg_per_s"] / ours["single"]["msg_per_s"], 2),
            "batch_readings_per_s": round(secure["batches"]["readings_per_s"] / ours["batches"]["readings_per_s"], 2),
            "single_cpu_per_msg": round(secure["single"]["cpu_s"] / max(ours["single"]["cpu_s"], 1e-3), 2),
            "batch_cpu_per_reading": round(secure["batches"]["cpu_s"] / max(ours["batches"]["cpu_s"], 1e-3), 2)}
    figures["load_after"] = f"{os.getloadavg()[0]:.2f}"
    figures["targets"] = {"single_msg_per_s": 15_000, "batch_readings_per_s": 150_000, "ratio_to_quix": 1.5}
    write_result("bridge", figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--quix-peer":
        quix_peer(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        main()
