"""A damaged buffer file does not stop the edge: garbage bytes, a truncated database, a wrong
header or pages corrupted in the middle are found at open (SQLite's own errors, then
``PRAGMA quick_check``), the file moves aside with its WAL to ``<name>.corrupt-<UTC time>``
with one error line naming both, and a fresh buffer starts. A healthy file is never moved."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.buffer import Buffer, BufferRecord
from edge.gateway import EdgeGateway
from forewarn.testing import FakeMqtt, FakeProducer, InMemoryKafka
from tests.edge.helpers import fleet, mqtt_messages, run_until, seeded

_PAGE = 4096


def filled(path: Path, rows: int = 3000) -> None:
    """A real buffer of ``rows`` records, checkpointed into the main file and closed."""
    with Buffer(path) as box:
        box.put_many([BufferRecord("telemetry", os.urandom(300), b"s/m", (), i) for i in range(rows)],
                     [("s/m", b"window")])
        box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def truncated(path: Path) -> None:
    filled(path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2 + 100)


def wrong_header(path: Path) -> None:
    filled(path)
    with path.open("r+b") as f:
        f.write(b"SQLite format 2\x00")


def middle_pages(path: Path) -> None:
    """Overwrite a few pages in the middle of the file (b-tree pages of the outbox table)."""
    filled(path)
    pages = path.stat().st_size // _PAGE
    with path.open("r+b") as f:
        for page in (pages // 3, pages // 2, 2 * pages // 3):
            f.seek(page * _PAGE)
            f.write(os.urandom(_PAGE))


@pytest.mark.parametrize("damage", [garbage, truncated, wrong_header, middle_pages],
                         ids=lambda d: d.__name__)
def test_a_corrupt_buffer_moves_aside_and_a_fresh_one_starts(tmp_path: Path, damage: Callable[[Path], None],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.db"
    damage(path)
    wal = path.with_name(path.name + "-wal")
    wal.write_bytes(b"whatever the wal held")
    damaged = path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="edge.buffer"), Buffer(path) as box:
        assert box.moved_aside is not None
        assert box.moved_aside.name.startswith("outbox.db.corrupt-") and box.moved_aside.name.endswith("Z")
        assert box.moved_aside.read_bytes() == damaged, "the damaged file is kept as it was, for salvage"
        assert box.moved_aside.with_name(box.moved_aside.name + "-wal").read_bytes() == b"whatever the wal held"
        assert len(box) == 0 and box.load_state() == {}
        box.put_many([BufferRecord("telemetry", b"v", b"s/m", (), 1)])
        assert [s.record.ts for s in box.peek()] == [1]
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert str(path) in line and str(box.moved_aside) in line and "corrupt" in line


def test_a_healthy_buffer_is_opened_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    filled(path, rows=500)
    with Buffer(path) as box:
        assert box.moved_aside is None and len(box) == 500
    assert [p.name for p in tmp_path.iterdir() if "corrupt" in p.name] == []


def test_the_edge_starts_on_a_corrupt_buffer_and_scores(tmp_path: Path) -> None:
    settings = seeded(tmp_path, shutdown_timeout_s=1.0)
    settings.edge.data_dir.mkdir(parents=True)
    middle_pages(settings.edge.buffer_path)
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    readings = fleet(2, 12, hot_every=0)
    with EdgeGateway(settings, mqtt=mqtt, producer=FakeProducer(kafka)) as gw:
        assert gw.metrics.registry.get_sample_value("forewarn_edge_buffer_moved_aside_total") == 1
        mids = [mqtt.deliver(t, p).mid for t, p in mqtt_messages(readings)]
        run_until(gw, lambda: mqtt.acks == mids)
        run_until(gw, lambda: len(kafka.messages("telemetry")) == len(readings))
    [aside] = [p for p in settings.edge.data_dir.iterdir() if p.name.startswith("outbox.db.corrupt-")
               and p.name.endswith("Z")]
    assert aside.stat().st_size > 0
