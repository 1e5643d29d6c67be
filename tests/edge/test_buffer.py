from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.buffer import Buffer, BufferFull, BufferRecord


def rec(i: int, machine: str = "s/m1", size: int = 10) -> BufferRecord:
    return BufferRecord("telemetry", b"x" * size, machine.encode(), (("ingest_ts", str(i).encode()),), i)


def test_fifo_round_trip_with_headers(tmp_path: Path) -> None:
    with Buffer(tmp_path / "o.db") as box:
        box.put_many([rec(i) for i in range(5)])
        stored = box.peek(10)
        assert [s.record.ts for s in stored] == [0, 1, 2, 3, 4]
        assert stored[2].record.headers == (("ingest_ts", b"2"),)
        box.remove(s.id for s in stored[:3])
        assert [s.record.ts for s in box.peek(10)] == [3, 4] and len(box) == 2


def test_block_policy_refuses_when_full(tmp_path: Path) -> None:
    with Buffer(tmp_path / "o.db", max_bytes=1000, policy="block") as box:
        box.put_many([rec(i, size=100) for i in range(5)])
        with pytest.raises(BufferFull):
            box.put_many([rec(9, size=200)])
        assert len(box) == 5
        assert box.near_full


def test_drop_oldest_policy_evicts_and_counts(tmp_path: Path) -> None:
    with Buffer(tmp_path / "o.db", max_bytes=1000, policy="drop_oldest") as box:
        box.put_many([rec(i, size=100) for i in range(5)])
        box.put_many([rec(9, size=300)])
        assert box.bytes <= 1000
        assert box.counter("evicted") >= 2
        assert box.peek(100)[-1].record.ts == 9


def test_contents_and_size_survive_reopen(tmp_path: Path) -> None:
    with Buffer(tmp_path / "o.db") as box:
        box.put_many([rec(i) for i in range(3)])
        size = box.bytes
    with Buffer(tmp_path / "o.db") as box:
        assert len(box) == 3 and box.bytes == size


def test_committed_records_survive_kill_9(tmp_path: Path) -> None:
    """A child writes batches and reports each commit; we SIGKILL it mid-stream; every batch
    it reported as committed is there."""
    db = tmp_path / "o.db"
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from edge.buffer import Buffer, BufferRecord
        box = Buffer(Path({str(db)!r}))
        i = 0
        while True:
            box.put_many([BufferRecord("telemetry", b"v" * 50, b"s/m", (), i * 100 + j) for j in range(100)])
            print(i, flush=True)
            i += 1
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONPATH": "."})
    assert child.stdout is not None
    acknowledged = -1
    for line in child.stdout:
        acknowledged = int(line)
        if acknowledged >= 30:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    with Buffer(db) as box:
        assert len(box) >= (acknowledged + 1) * 100
        ts = [s.record.ts for s in box.peek(100_000)]
        assert ts == list(range(len(ts)))


@given(st.lists(st.tuples(st.sampled_from(["a/1", "a/2", "b/1"]), st.integers(1, 200)), max_size=60),
       st.integers(1, 20))
@settings(max_examples=30, deadline=None)
def test_drain_keeps_per_machine_order(tmp_path_factory: pytest.TempPathFactory, items: list[tuple[str, int]],
                                       chunk: int) -> None:
    path = tmp_path_factory.mktemp("prop") / "o.db"
    with Buffer(path) as box:
        records = [BufferRecord("telemetry", b"v" * size, machine.encode(), (), i)
                   for i, (machine, size) in enumerate(items)]
        for start in range(0, len(records), chunk):
            box.put_many(records[start:start + chunk])
        drained: list[BufferRecord] = []
        while batch := box.peek(7):
            drained.extend(s.record for s in batch)
            box.remove(s.id for s in batch)
        assert drained == records
        assert len(box) == 0 and box.bytes == 0
