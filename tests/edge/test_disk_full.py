"""The edge's buffer on a real, full file system: a small tmpfs mounted for the test and filled
to its last byte. The buffer refuses the write with ``DiskFull`` and keeps what it had; the
gateway keeps scoring and publishing locally, acknowledges nothing while the disk is full, and
once space returns commits what it held: every acknowledged message is in the outbox."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge.buffer import Buffer, BufferRecord, DiskFull
from edge.gateway import EdgeGateway
from forewarn.contract import Prediction, Telemetry
from forewarn.testing import FakeMqtt, InMemoryKafka
from tests.edge.helpers import AwayProducer, empty_wal, fill, fleet, mounted_tmpfs, mqtt_messages, run_until, seeded

_telemetry = msgspec.json.Decoder(Telemetry)
_prediction = msgspec.json.Decoder(Prediction)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own."""
    with mounted_tmpfs(tmp_path / "fs", "2m") as mount:
        yield mount


def rec(i: int) -> BufferRecord:
    return BufferRecord("telemetry", b"v" * 200, b"s/m", (), i)


def test_a_full_disk_refuses_the_write_and_leaves_the_buffer_as_it_was(small_fs: Path) -> None:
    path = small_fs / "outbox.db"
    with Buffer(path) as box:
        box.put_many([rec(i) for i in range(10)], [("s/m", b"window-1")])
        empty_wal(path)
        filler = fill(small_fs)
        with pytest.raises(DiskFull, match="no space left"):
            box.put_many([rec(i) for i in range(10, 2000)], [("s/m", b"window-2")])
        assert len(box) == 10 and [s.record.ts for s in box.peek(100)] == list(range(10))
        assert box.load_state() == {"s/m": b"window-1"}
        filler.unlink()
        box.put_many([rec(i) for i in range(10, 2000)], [("s/m", b"window-2")])
        assert len(box) == 2000
    with Buffer(path) as box:
        assert [s.record.ts for s in box.peek(5000)] == list(range(2000))
        assert box.load_state() == {"s/m": b"window-2"}


def test_removing_delivered_rows_on_a_full_disk_takes_them_out_of_the_queue_at_once(small_fs: Path) -> None:
    path = small_fs / "outbox.db"
    with Buffer(path) as box:
        box.put_many([rec(i) for i in range(100)])
        empty_wal(path)
        filler = fill(small_fs)
        delivered = [s.id for s in box.peek(40)]
        box.remove(delivered)  # no exception: delivered rows are never sent again by this process
        assert len(box) == 60
        assert [s.record.ts for s in box.peek(1000)] == list(range(40, 100))
        assert [s.record.ts for s in box.peek(10)] == list(range(40, 50)), "the limit counts the queue only"
        filler.unlink()
        box.put_many([rec(100)])  # the next write that succeeds deletes them from the file too
    with Buffer(path) as box:
        assert [s.record.ts for s in box.peek(1000)] == list(range(40, 101))


def test_the_edge_scores_and_alerts_on_a_full_disk_and_acknowledges_once_space_returns(
        small_fs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    readings = fleet(4, 24)
    half = len(readings) // 2
    messages = mqtt_messages(readings)
    settings = seeded(tmp_path, data_dir=small_fs / "edge", max_batch=10, shutdown_timeout_s=0.1)
    with EdgeGateway(settings, mqtt=mqtt, producer=AwayProducer(kafka)) as gw:
        first = [mqtt.deliver(t, p).mid for t, p in messages[:half]]
        run_until(gw, lambda: mqtt.acks == first)
        local_before = len([m for m in mqtt.published if m.topic.endswith("/prediction")])
        empty_wal(settings.edge.buffer_path)
        filler = fill(small_fs)

        caplog.set_level(logging.INFO, logger="edge.gateway")
        rest = [mqtt.deliver(t, p).mid for t, p in messages[half:]]
        sample = gw.metrics.registry.get_sample_value
        run_until(gw, lambda: sample("forewarn_edge_disk_full") == 1)
        # every reading is scored and its predictions and alerts go out locally, yet nothing is acknowledged
        run_until(gw, lambda: not gw._inbox)
        for _ in range(20):
            gw.step(0.001)
        local = [m for m in mqtt.published if m.topic.endswith("/prediction")]
        assert len(local) > local_before, "scoring goes on while the disk is full"
        assert any(m.topic.endswith("/alert") for m in mqtt.published[local_before:])
        assert mqtt.acks == first, "nothing is acknowledged while the disk is full"
        assert (sample("forewarn_edge_disk_full_held_bytes") or 0) > 0

        filler.unlink()
        run_until(gw, lambda: mqtt.acks == first + rest)
        assert sample("forewarn_edge_disk_full") == 0 and sample("forewarn_edge_disk_full_held_bytes") == 0
        assert len([m for m in mqtt.published if m.topic.endswith("/prediction")]) == len(local), "published once"
        assert gw.buffer is not None
        outbox = [s.record for s in gw.buffer.peek(100_000)]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "no MQTT message is acknowledged" in
              r.getMessage()]
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "has room again" in r.getMessage()]
    assert len(errors) == 1 and len(infos) == 1
    # every acknowledged message is in the outbox, once, with the predictions published locally
    buffered = sorted((t.machine_id, t.seq) for t in (_telemetry.decode(r.value or b"") for r in outbox
                                                      if r.topic == "telemetry"))
    assert buffered == sorted((r.machine_id, r.seq) for r in readings)
    predicted = sorted((p.machine_id, p.seq) for p in (_prediction.decode(r.value or b"") for r in outbox
                                                       if r.topic == "predictions"))
    assert predicted == sorted((p.machine_id, p.seq) for p in (_prediction.decode(m.payload) for m in local))
    assert sample("forewarn_edge_acked_total") == len(readings)
    assert sample("forewarn_edge_buffered_total", {"topic": "telemetry"}) == len(readings)


def test_past_its_hold_bound_the_edge_takes_no_more_messages_until_space_returns(small_fs: Path,
                                                                                 tmp_path: Path) -> None:
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    readings = fleet(4, 200, hot_every=0)
    settings = seeded(tmp_path, data_dir=small_fs / "edge", max_batch=20, disk_full_hold_bytes=64 * 1024,
                      shutdown_timeout_s=0.1)
    with EdgeGateway(settings, mqtt=mqtt, producer=AwayProducer(kafka)) as gw:
        first = mqtt.deliver(*mqtt_messages(readings[:1])[0]).mid
        run_until(gw, lambda: mqtt.acks == [first])
        empty_wal(settings.edge.buffer_path)
        filler = fill(small_fs)
        mids = [mqtt.deliver(t, p).mid for t, p in mqtt_messages(readings[1:])]
        sample = gw.metrics.registry.get_sample_value
        run_until(gw, lambda: (sample("forewarn_edge_disk_full_held_bytes") or 0) >= 64 * 1024)
        for _ in range(20):
            gw.step(0.001)
        assert gw._inbox, "the hold is full: the rest waits (paho's inbox, then the broker)"
        assert mqtt.acks == [first]
        filler.unlink()
        run_until(gw, lambda: len(mqtt.acks) == len(readings), timeout_s=30)
        assert mqtt.acks == [first, *mids]


_ops = st.lists(st.one_of(st.tuples(st.just("put"), st.integers(1, 400)),
                          st.tuples(st.just("remove"), st.integers(1, 300)),
                          st.tuples(st.just("fill"), st.just(0)), st.tuples(st.just("free"), st.just(0))),
                min_size=1, max_size=25)


@given(_ops)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_whatever_the_disk_does_what_was_committed_and_not_removed_is_the_queue_before_and_after_reopen(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]) -> None:
    with mounted_tmpfs(tmp_path_factory.mktemp("fs"), "2m") as disk:
        path = disk / "outbox.db"
        expected: list[int] = []
        filler = None
        next_ts = 0
        with Buffer(path) as box:
            for op, n in ops:
                if op == "put":
                    batch = [rec(next_ts + i) for i in range(n)]
                    next_ts += n
                    try:
                        box.put_many(batch)
                    except DiskFull:
                        event("a put refused by the full disk")
                        continue
                    expected.extend(r.ts or 0 for r in batch)
                elif op == "remove":
                    delivered = box.peek(n)
                    box.remove(s.id for s in delivered)
                    if filler is not None:
                        event("a remove on the full disk")
                    gone = {s.record.ts for s in delivered}
                    expected = [ts for ts in expected if ts not in gone]
                elif op == "fill" and filler is None:
                    filler = fill(disk)
                elif op == "free" and filler is not None:
                    filler.unlink()
                    filler = None
                assert [s.record.ts for s in box.peek(100_000)] == expected and len(box) == len(expected)
            if filler is not None:
                filler.unlink()
            box.put_many([rec(next_ts)])
        with Buffer(path) as box:
            assert [s.record.ts for s in box.peek(100_000)] == [*expected, next_ts]
