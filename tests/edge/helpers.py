"""Readings, bundles and settings shared by the edge tests and the edge benchmark."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.gateway import EdgeGateway
from edge.settings import EdgeOptions, EdgeSettings
from forewarn.bundle import Bundle, Thresholds, write_bundle
from forewarn.contract import SCHEMA_VERSION, Telemetry, encode
from forewarn.settings import KafkaSettings, MqttSettings, TopicSettings
from forewarn.testing import FakeProducer, InMemoryKafka
from forewarn.topics import telemetry_topic
from scoring.testing import linear_bundle
from tests.scoring.bundle_factory import signed, trust_settings

FEATURES = ("temp", "vib")
WINDOW = 5


def edge_bundle(version: str = "v1", *, window: int = WINDOW, bias: float = 0.0) -> Bundle:
    """A pump model whose p_fail crosses 0.5 when the window's mean temp+vib is above 0."""
    return signed(linear_bundle("pump", list(FEATURES), window=window, version=version, bias=bias,
                                thresholds=Thresholds(p_fail=0.5, consecutive=2)))


def reading(machine: str, seq: int, *, hot: bool = False, start_ms: int | None = None) -> Telemetry:
    base = start_ms if start_ms is not None else int(time.time() * 1000) - 3_600_000
    level = 2.0 if hot else -2.0
    wobble = ((seq * 7) % 5 - 2) * 0.1
    return Telemetry(SCHEMA_VERSION, machine, "pump", base + seq * 1000, seq,
                     {"temp": level + wobble, "vib": level - wobble})


def fleet(machines: int, per_machine: int, *, site: str = "site-e", hot_every: int = 3) -> list[Telemetry]:
    """Interleaved readings; every ``hot_every``-th machine runs hot in its second half (alerts)."""
    start = int(time.time() * 1000) - 3_600_000
    out: list[Telemetry] = []
    for seq in range(per_machine):
        for m in range(machines):
            hot = hot_every > 0 and m % hot_every == 0 and seq >= per_machine // 2
            out.append(reading(f"{site}/pump-{m:04d}", seq, hot=hot, start_ms=start))
    return out


def mqtt_messages(readings: list[Telemetry]) -> list[tuple[str, bytes]]:
    return [(telemetry_topic(r.machine_id), encode(r)) for r in readings]


def edge_settings(data_dir: Path, *, kafka: KafkaSettings | None = None, mqtt: MqttSettings | None = None,
                  topics: TopicSettings | None = None, **options: Any) -> EdgeSettings:
    return EdgeSettings(kafka=kafka or KafkaSettings(), mqtt=mqtt or MqttSettings(), topics=topics or TopicSettings(),
                        trust=trust_settings(), edge=EdgeOptions(data_dir=data_dir, client_id="edge-test", **options))


class AwayProducer(FakeProducer):
    """Kafka unreachable: records are accepted but never confirmed until ``up`` is set."""

    def __init__(self, kafka: InMemoryKafka) -> None:
        super().__init__(kafka)
        self.up = False

    def poll(self, timeout_s: float = 0.0) -> int:
        if not self.up:
            time.sleep(min(timeout_s, 0.01))
            return 0
        return super().poll(timeout_s)


def seeded(tmp_path: Path, *, data_dir: Path | None = None, **options: Any) -> EdgeSettings:
    """Edge settings seeded with :func:`edge_bundle` (no model sync); data under ``tmp_path/data``
    unless ``data_dir`` says where."""
    models = tmp_path / "seed"
    bundle = edge_bundle()
    if not (models / "pump" / "v1").exists():
        write_bundle(models, bundle.meta, bundle.onnx, make_current=True, release=bundle.release)
    return edge_settings(data_dir or tmp_path / "data", models_dir=models, models_sync=False, **options)


def run_until(gw: EdgeGateway, done: Callable[..., object], timeout_s: float = 10.0) -> None:
    """Step the gateway until ``done()`` (fails after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        gw.step(0.001)


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. ``"2m"``) mounted at ``mount`` for the block: a real file
    system that fills up. Skips the test when this is not root or mounting is refused."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system has no byte left; returns it (unlink it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 1 << 16
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)
    return filler


def empty_wal(db: Path, tries: int = 50) -> None:
    """Checkpoint the WAL into the database and truncate it (from a connection of our own, as an
    operator's sqlite3 would), so the next write needs new space on the disk. Retried while a
    reader of the edge keeps the checkpoint from completing."""
    for _ in range(tries):
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as other:
            busy = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if not busy:
            return
        time.sleep(0.05)
    raise AssertionError(f"could not checkpoint and truncate the WAL of {db}")
