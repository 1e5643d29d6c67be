"""Simulator throughput: the fleet model's step rate without I/O (100,000 machines), contract
encoding, live MQTT publishing at QoS 1 (single readings and gateway batches of 100) into a
private Mosquitto, and history generation to Parquet.

Publish figures are end to end: simulate, encode, publish, and wait until the broker has
acknowledged every message (PUBACK), on one Python thread plus paho's network thread.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from forewarn.mqtt import MqttClient
from forewarn.settings import StackSettings
from forewarn.stack.mosquitto import Mosquitto
from simulators.fleet import Fleet, FleetConfig
from simulators.history import write_history
from simulators.live import run_live
from simulators.messages import ListSink, MessageBuilder
from tests.stacks import free_port

HALF = 50_000  # machines per asset type: 100,000 in all


def step_rate() -> dict[str, Any]:
    fleet = Fleet(FleetConfig(machines=HALF, stagger=True))
    for _ in range(3):
        fleet.step()
    best = 0.0
    readings = 0
    for _ in range(3):
        t0 = time.perf_counter()
        readings = 0
        for _ in range(10):
            blocks, _events = fleet.step()
            readings += sum(len(b) for b in blocks)
        best = max(best, readings / (time.perf_counter() - t0))
    return {"machines": 2 * HALF, "readings_per_step": readings // 10, "readings_per_s": round(best),
            "ms_per_step": round(2 * HALF / best * 1000, 1), "target_readings_per_s": 1_000_000}


def encode_rate(delivery: str) -> dict[str, Any]:
    fleet = Fleet(FleetConfig(machines=10_000, sites=4, stagger=True))
    sink = ListSink()
    builder = MessageBuilder(sink, fleet.machine_ids, delivery=delivery, batch_size=100)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    readings = 0
    for _ in range(10):
        readings += builder.publish(*fleet.step())
    seconds = time.perf_counter() - t0
    size = sum(len(m.payload) for m in sink.messages if m.kind != "maintenance")
    return {"readings_per_s": round(readings / seconds), "bytes_per_reading": round(size / readings)}


def publish_rate(mosquitto: Mosquitto, delivery: str, machines: int, ticks: int) -> dict[str, Any]:
    config = FleetConfig(machines=machines, sites=4, stagger=True, seed=1)
    client = MqttClient(mosquitto.mqtt_settings(), f"bench-{uuid.uuid4().hex[:8]}", max_inflight=1000)
    client.connect()
    try:
        summary = run_live(config, client, qos=1, speed=0, ticks=ticks, delivery=delivery,  # type: ignore[arg-type]
                           batch_size=100, progress_s=1e9)
    finally:
        client.disconnect()
    return {"machines": 2 * machines, "readings": summary.readings, "messages": summary.messages,
            "seconds": round(summary.seconds, 2), "readings_per_s": round(summary.rate),
            "messages_per_s": round(summary.messages / summary.seconds), "unacked": summary.unacked}


def history_rate(out: Path) -> dict[str, Any]:
    summary = write_history(FleetConfig(machines=2000, max_runs=1), out / "history")
    size = sum(p.stat().st_size for p in summary.paths)
    return {"machines": summary.machines, "readings": summary.readings, "seconds": round(summary.seconds, 2),
            "readings_per_s": round(summary.rate), "parquet_bytes_per_reading": round(size / summary.readings, 1)}


def main() -> None:
    figures: dict[str, Any] = {"step_without_io": step_rate()}
    figures["encode_single"] = encode_rate("single")
    figures["encode_batch_100"] = encode_rate("batch")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        mosquitto = Mosquitto(StackSettings(home=home / "stack"), free_port())
        mosquitto.start()
        try:
            mosquitto.wait_ready(30)
            figures["mqtt_qos1_single"] = publish_rate(mosquitto, "single", machines=10_000, ticks=4)
            figures["mqtt_qos1_batch_100"] = publish_rate(mosquitto, "batch", machines=25_000, ticks=8)
        finally:
            mosquitto.stop()
        figures["history_parquet"] = history_rate(home)
    figures["notes"] = ("publish rates are end to end (simulate + encode + publish + wait for every PUBACK) into a "
                        "local Mosquitto with no subscriber; 2-core box shared with other engineers' work")
    write_result("simulator", figures)


if __name__ == "__main__":
    main()
