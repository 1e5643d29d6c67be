"""A real ``forewarn edge`` on a real Mosquitto with its data dir on a small tmpfs that fills up:
while the disk is full the edge acknowledges nothing (its acked counter stands still) and still
publishes predictions on the plant broker; once space returns everything is committed and
acknowledged — every reading is in the outbox — and SIGTERM ends it cleanly.

The uplink is a Kafka nobody listens on, so no delivered row frees pages in the file while the
disk is full (with a live uplink the file's free pages come and go, and so does the full disk)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from forewarn.bundle import write_bundle
from forewarn.settings import KafkaSettings, TopicSettings
from tests.edge.helpers import edge_bundle, empty_wal, fill, fleet, mounted_tmpfs, mqtt_messages
from tests.edge.procs import EdgeProcess, LocalScreen, publish_paced
from tests.stacks import RunningStack, free_port

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka (the session's stack)


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait(done: Callable[[], bool], timeout_s: float, what: str, edge: EdgeProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert edge.proc is not None and edge.proc.poll() is None, "the edge exited:\n" + edge.log()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + edge.log()[-3000:]
        time.sleep(0.1)


def test_a_full_disk_stops_acknowledgements_not_local_predictions_and_loses_nothing(
        stack: RunningStack, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    bundle = edge_bundle()
    write_bundle(seed, bundle.meta, bundle.onnx, make_current=True, release=bundle.release)
    first, second = fleet(10, 30, site="site-df"), fleet(10, 200, site="site-df")[300:]
    nowhere = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    with mounted_tmpfs(tmp_path / "fs", "4m") as disk:
        port = free_port()
        edge = EdgeProcess(tmp_path / "edge.log", nowhere, stack.mqtt_settings, TopicSettings(prefix="df."),
                           disk / "edge", "--models-dir", str(seed), "--no-models-sync", "--sites", "site-df",
                           "--metrics-port", str(port), "--session-expiry", "300", "--shutdown-timeout", "0",
                           client_id="edge-df").start()
        screen = LocalScreen(stack.mqtt_settings)
        try:
            publish_paced(stack.mqtt_settings, mqtt_messages(first), 1.0).join(60)
            wait(lambda: metric(port, "forewarn_edge_acked_total") >= len(first), 60, "the first readings", edge)
            empty_wal(disk / "edge" / "outbox.db")
            filler = fill(disk)
            publisher = publish_paced(stack.mqtt_settings, mqtt_messages(second), 4.0)
            wait(lambda: metric(port, "forewarn_edge_disk_full") == 1, 60, "the full disk", edge)
            acked, shown = metric(port, "forewarn_edge_acked_total"), screen.count("prediction")
            wait(lambda: screen.count("prediction") > shown + 50, 60, "local predictions on a full disk", edge)
            assert metric(port, "forewarn_edge_acked_total") == acked, "nothing is acknowledged while the disk is full"
            assert metric(port, "forewarn_edge_disk_full") == 1
            filler.unlink()
            publisher.join(60)
            total = len(first) + len(second)
            wait(lambda: metric(port, "forewarn_edge_acked_total") >= total, 120, "every acknowledgement", edge)
            assert metric(port, "forewarn_edge_disk_full") == 0
        finally:
            screen.close()
            code = edge.terminate()
        assert code == 0, edge.log()[-3000:]
        with contextlib.closing(sqlite3.connect(f"file:{disk / 'edge' / 'outbox.db'}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT value FROM outbox WHERE topic = 'telemetry'").fetchall()
    buffered = {(doc["machine_id"], doc["seq"]) for doc in (msgspec.json.decode(v) for (v,) in rows)}
    assert buffered == {(r.machine_id, r.seq) for r in first + second}, "everything acknowledged is in the outbox"
    log = edge.log()
    assert log.count("no MQTT message is acknowledged until space returns") == 1, log[-3000:]
    assert "disk has room again" in log
