"""Edge gateway benchmark: score + buffer throughput, RSS with 1,000 machines, drain rate after an outage.

1. In process (no broker): MQTT messages handed to the gateway's inbox, timed until every one
   is scored, committed to the SQLite buffer and acknowledged (forwarding paused), with the
   windows kept in the buffer (the default) and without, and with the buffer's default
   ``synchronous=FULL`` (an acknowledged record survives a power cut) against ``NORMAL`` in the
   same run (``buffer_sync``: the cost of the stronger sync). Model: a convolution stack shaped
   like the training default (50-reading windows, 16 filters), 8 sensors, every reading scored.
   The buffers live under ``--buffer-dir``: put it on the disk the edge would use (a tmpfs
   makes every fsync free, so FULL and NORMAL would look alike); its file system is recorded.
2. A real ``forewarn edge`` process on a private Mosquitto + Kafka, as deployed (model sync from
   the ``models`` topic on, which holds the bundle): 1,000 machines publish over MQTT as fast as
   Mosquitto takes them; the edge's RSS is sampled while it scores them (peak and at the end).
3. The same process with Kafka stopped: a backlog is buffered on disk; Kafka is started again
   and the drain is timed until the buffer is empty (records/s to Kafka, acks=all).

    python benchmarks/edge.py [--machines 1000] [--readings 60000] [--backlog 60000] [--buffer-dir DIR]
                              [--skip-process] [--skip-sync]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from edge.buffer import SyncMode
from edge.gateway import EdgeGateway
from edge.settings import EdgeOptions, EdgeSettings
from forewarn.bundle import Bundle, Thresholds, pack, write_bundle
from forewarn.contract import SCHEMA_VERSION, Telemetry, encode
from forewarn.kafka import KafkaAdmin
from forewarn.settings import TopicSettings
from forewarn.testing import FakeMqtt, FakeProducer, InMemoryKafka
from forewarn.topics import Topics, telemetry_topic, topic_specs
from scoring.settings import ScoringOptions
from scoring.testing import conv_bundle
from tests.edge.procs import EdgeProcess, publish_paced
from tests.scoring.bundle_factory import signed, trust_settings
from tests.scoring.procs import publish_model
from tests.stacks import free_port, make_stack

SENSORS = tuple(f"s{i}" for i in range(8))


class _Paused(FakeProducer):
    """Kafka that never confirms: the benchmark measures intake only."""

    def poll(self, timeout_s: float = 0.0) -> int:
        time.sleep(min(timeout_s, 0.01))
        return 0


def bundle() -> Bundle:
    return signed(conv_bundle("pump", list(SENSORS), window=50, filters=16, version="bench",
                              thresholds=Thresholds(p_fail=0.9, consecutive=3)))


def readings(machines: int, per_machine: int, start_seq: int = 0) -> list[tuple[str, bytes]]:
    base = int(time.time() * 1000) - 6 * 3_600_000
    out = []
    for seq in range(start_seq, start_seq + per_machine):
        for m in range(machines):
            mid = f"site-b/pump-{m:04d}"
            values = {name: float((seq * 13 + m * 7 + i) % 97) / 10 for i, name in enumerate(SENSORS)}
            out.append((telemetry_topic(mid), encode(Telemetry(SCHEMA_VERSION, mid, "pump", base + seq * 1000, seq,
                                                               values))))
    return out


def _predictions(gw: EdgeGateway) -> int:
    return int(gw.metrics.registry.get_sample_value("forewarn_edge_predictions_total") or 0)


def in_process(machines: int, n: int, persist: bool, seed: Path, buffer_dir: Path,
               sync: SyncMode = "FULL") -> dict[str, Any]:
    buffer_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=buffer_dir) as tmp:
        options = EdgeOptions(data_dir=Path(tmp), models_dir=seed, models_sync=False, persist_windows=persist,
                              max_forward_in_flight=1, buffer_sync=sync)
        settings = EdgeSettings(trust=trust_settings(), edge=options, scoring=ScoringOptions(threads=1))
        mqtt = FakeMqtt()
        messages = readings(machines, max(1, n // machines), start_seq=60)
        with EdgeGateway(settings, mqtt=mqtt, producer=_Paused(InMemoryKafka())) as gw:
            warm = readings(machines, 60)  # fill the windows first
            for topic, payload in warm:
                mqtt.deliver(topic, payload)
            while len(mqtt.acks) < len(warm):
                gw.step(0.0)
            mqtt.acks.clear()
            predicted0 = _predictions(gw)
            for topic, payload in messages:
                mqtt.deliver(topic, payload)
            started = time.perf_counter()
            cpu0 = time.process_time()
            while len(mqtt.acks) < len(messages):
                gw.step(0.0)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu0
            predictions = _predictions(gw) - predicted0
    return {"readings": len(messages), "seconds": round(elapsed, 2), "readings_per_s": round(len(messages) / elapsed),
            "cpu_s": round(cpu, 2), "predictions": predictions, "buffer_sync": sync}


def file_system(path: Path) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts; "unknown" elsewhere)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    where = str(path.resolve())
    best = max((m for m in mounts if where == m[0] or where.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    return best[1] if best else "unknown"


def buffer_sync(machines: int, n: int, seed: Path, buffer_dir: Path) -> dict[str, Any]:
    """Score + buffer with synchronous=FULL and NORMAL, one after the other in this run."""
    full = in_process(machines, n, True, seed, buffer_dir, "FULL")
    normal = in_process(machines, n, True, seed, buffer_dir, "NORMAL")
    return {"full": full, "normal": normal, "file_system": file_system(buffer_dir),
            "full_over_normal_rate": round(full["readings_per_s"] / max(1, normal["readings_per_s"]), 3),
            "note": "one commit per batch (max_batch 500); FULL fsyncs the WAL at every commit, NORMAL only at "
                    "checkpoints (a power cut can lose the last acknowledged commits)"}


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()  
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def real_process(machines: int, n: int, backlog: int, seed: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        local = make_stack(home / "stack")
        local.up()
        try:
            topics = TopicSettings(prefix="bench.", partitions=6)
            KafkaAdmin(local.kafka_settings).ensure_topics(topic_specs(topics))
            port = free_port()
            publish_model(local.kafka_settings, Topics.from_settings(topics), "pump", pack(bundle()))
            edge = EdgeProcess(home / "edge.log", local.kafka_settings, local.mqtt_settings, topics, home / "data",
                               "--models-dir", str(seed), "--metrics-port", str(port),
                               "--publish-qos", "0", client_id="edge-bench").start()
            assert edge.proc is not None
            proc = psutil.Process(edge.proc.pid)
            phase = ["idle"]
            peaks: dict[str, int] = {}
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    rss = proc.memory_info().rss
                    peaks[phase[0]] = max(peaks.get(phase[0], 0), rss)
                    time.sleep(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            out["rss_idle_mb"] = round(proc.memory_info().rss / 2**20, 1)
            live = readings(machines, max(1, n // machines))
            phase[0] = "live"
            started = time.monotonic()
            cpu0 = sum(proc.cpu_times()[:2])
            publish_paced(local.mqtt_settings, live, 0.0).join(600)
            _wait(lambda: _metric(port, "forewarn_edge_acked_total") >= len(live), 600, "the live readings")
            live_s = time.monotonic() - started
            out["live"] = {"machines": machines, "readings": len(live), "seconds": round(live_s, 1),
                           "readings_per_s": round(len(live) / live_s),
                           "edge_cpu_s": round(sum(proc.cpu_times()[:2]) - cpu0, 1),
                           "note": "end to end through Mosquitto: publisher and edge share the 2 cores"}
            _wait(lambda: _metric(port, "forewarn_edge_buffer_records") == 0, 300, "the live drain")
            out["rss_peak_mb_scoring_1000_machines"] = round(peaks["live"] / 2**20, 1)
            out["rss_after_live_mb"] = round(proc.memory_info().rss / 2**20, 1)
            # the outage: buffer a backlog with Kafka stopped, then time the drain
            local.kafka.stop()
            phase[0] = "outage"
            more = readings(machines, max(1, backlog // machines), start_seq=max(1, n // machines))
            acked0 = _metric(port, "forewarn_edge_acked_total")
            publish_paced(local.mqtt_settings, more, 0.0).join(600)
            _wait(lambda: _metric(port, "forewarn_edge_acked_total") >= acked0 + len(more), 600, "the backlog")
            time.sleep(2)
            buffered = _metric(port, "forewarn_edge_buffer_records")
            buffered_mb = _metric(port, "forewarn_edge_buffer_bytes") / 1e6
            phase[0] = "kafka_restart"
            local.kafka.start()
            local.kafka.wait_ready(120)
            phase[0] = "drain"
            up = time.monotonic()
            _wait(lambda: _metric(port, "forewarn_edge_buffer_records") < buffered, 900, "the first delivery")
            first = time.monotonic()
            _wait(lambda: _metric(port, "forewarn_edge_buffer_records") == 0, 900, "the backlog drain")
            drain_s = time.monotonic() - up
            out["drain"] = {"buffered_records": int(buffered), "buffered_mb": round(buffered_mb, 1),
                            "seconds_after_kafka_ready": round(drain_s, 1),
                            "records_per_s": round(buffered / drain_s),
                            "seconds_to_first_delivery": round(first - up, 1),
                            "records_per_s_from_first_delivery": round(buffered / max(0.1, time.monotonic() - first)),
                            "note": "timed from Kafka's wait_ready to an empty buffer (0.1 s metric polling, the "
                                    "buffer gauge is refreshed every second); the first delivery waits for "
                                    "librdkafka's reconnect backoff (at most 2 s at the edge)"}
            stop.set()
            out["rss_peak_mb_by_phase"] = {k: round(v / 2**20, 1) for k, v in peaks.items()}
            out["edge_exit_code"] = edge.terminate()
        finally:
            local.down()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--readings", type=int, default=60_000)
    parser.add_argument("--backlog", type=int, default=60_000)
    parser.add_argument("--skip-process", action="store_true", help="only the in-process throughput")
    parser.add_argument("--skip-sync", action="store_true", help="skip the buffer_sync scenario (FULL vs NORMAL)")
    parser.add_argument("--buffer-dir", type=Path, default=Path(".forewarn/bench-edge"),
                        help="where the in-process buffers are written: the disk the edge would use, not a tmpfs "
                        "(default .forewarn/bench-edge)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "models"
        b = bundle()
        write_bundle(seed, b.meta, b.onnx, make_current=True, release=b.release)
        figures: dict[str, Any] = {
            "model": "conv, window 50, 16 filters, 8 sensors, every reading scored (stride 1), onnxruntime 1 thread",
            "load_average_at_start": [round(x, 1) for x in load],
            "buffer_file_system": file_system(args.buffer_dir),
            "score_and_buffer": in_process(args.machines, args.readings, True, seed, args.buffer_dir),
            "score_and_buffer_no_window_persistence": in_process(args.machines, args.readings, False, seed,
                                                                 args.buffer_dir),
        }
        if not args.skip_sync:
            figures["buffer_sync"] = buffer_sync(args.machines, args.readings, seed, args.buffer_dir)
        if not args.skip_process:
            figures["process"] = real_process(args.machines, args.readings, args.backlog, seed)
        figures["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    write_result("edge", figures)


if __name__ == "__main__":
    main()
