from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from forewarn.contract import Decoder, MaintenanceEvent, Telemetry
from forewarn.settings import TopicSettings
from forewarn.testing import FakeProducer, InMemoryKafka
from forewarn.topics import Topics
from simulators.assets import ASSET_TYPES
from simulators.errors import SimulatorError
from simulators.faults import FaultConfig
from simulators.fleet import FleetConfig
from simulators.history import CHUNK, chunks, write_history, write_history_to_kafka, write_history_to_sink
from simulators.messages import ListSink

MakeHistory = Callable[..., tuple[Path, object]]


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_same_seed_same_bytes(make_history: MakeHistory, fmt: str) -> None:
    a, _ = make_history("a", fmt, truth=True, machines=30, seed=9)
    b, _ = make_history("b", fmt, truth=True, machines=30, seed=9)
    c, _ = make_history("c", fmt, truth=True, machines=30, seed=10)
    assert digest(a) == digest(b)
    assert digest(a)[f"readings.{fmt}"] != digest(c)[f"readings.{fmt}"]
    assert sorted(digest(a)) == sorted([f"events.{fmt}", f"readings.{fmt}", f"truth.{fmt}", "settings.json"])


def test_readings_schema_is_the_generic_long_format(history_dir: Path) -> None:
    table = pq.read_table(history_dir / "readings.parquet")
    assert table.column_names[:4] == ["machine_id", "asset_type", "time", "seq"]
    assert table.schema.field("time").type == pa.timestamp("ms", tz="UTC")
    for spec in ASSET_TYPES.values():
        for name in spec.sensor_names + spec.setting_names:
            assert table.schema.field(name).type == pa.float64()
    pumps = table.filter(pc.equal(table["asset_type"], "pump"))
    assert pumps["winding_temp_c"].null_count == pumps.num_rows  # another type's sensor
    assert pumps["bearing_temp_de_c"].null_count == 0
    events = pq.read_table(history_dir / "events.parquet")
    assert events.column_names == ["machine_id", "time", "event", "failure_mode"]
    truth = pq.read_table(history_dir / "truth.parquet")
    assert truth.column_names == ["machine_id", "time", "seq", "health", "rul", "failure_mode"]


def test_each_machine_runs_to_failure_and_truth_agrees(history_dir: Path) -> None:
    readings = pq.read_table(history_dir / "readings.parquet", columns=["machine_id", "time", "seq"])
    truth = pq.read_table(history_dir / "truth.parquet")
    events = pq.read_table(history_dir / "events.parquet")
    assert readings["machine_id"] == truth["machine_id"] and readings["time"] == truth["time"]
    assert set(events["event"].to_pylist()) == {"failure"}  # --runs 1: no repair after the failure
    ids = np.asarray(readings["machine_id"].to_pylist())
    times = readings["time"].cast(pa.int64()).to_numpy()
    rul = truth["rul"].to_numpy()
    health = truth["health"].to_numpy()
    last = np.flatnonzero(np.append(ids[1:] != ids[:-1], True))
    first = np.append(0, last[:-1] + 1)
    assert len(last) == 480 == events.num_rows
    # Rows of a machine are contiguous and in time order; the failure is the last reading.
    assert len(set(ids[last])) == len(last)
    assert all(np.all(np.diff(times[a:b + 1]) > 0) for a, b in zip(first[:50], last[:50], strict=True))
    failure_at = dict(zip(events["machine_id"].to_pylist(), events["time"].cast(pa.int64()).to_pylist(),
                          strict=True))
    assert all(failure_at[ids[i]] == times[i] for i in last)
    assert np.all(rul[last] == 0) and np.all(rul[first] == last - first)
    assert np.all(health[last] == 0) or np.allclose(health[last], 0)
    assert np.all((health >= 0) & (health <= 1))
    lengths = last - first + 1
    assert 200 < lengths.mean() < 400


def test_csv_times_are_iso_utc_with_z(make_history: MakeHistory) -> None:
    out, _ = make_history("csv", "csv", machines=2, asset_types=("pump",))
    first_row = (out / "readings.csv").read_text().splitlines()[1]
    assert first_row.startswith('"site-01/pump-00000","pump","2026-01-01T00:')
    assert first_row.split(",")[2].endswith('Z"')
    table = pacsv.read_csv(out / "readings.csv")
    assert table.schema.field("time").type.tz == "UTC"
    parquet_out, _ = make_history("pq", "parquet", machines=2, asset_types=("pump",))
    parquet = pq.read_table(parquet_out / "readings.parquet")
    assert table["seq"].to_pylist() == parquet["seq"].to_pylist()
    assert table["flow_m3h"].to_pylist() == parquet["flow_m3h"].to_pylist()
    assert table["time"].cast(pa.timestamp("ms", tz="UTC")).to_pylist() == parquet["time"].to_pylist()


def test_chunks_number_machines_on(tmp_path: Path) -> None:
    config = FleetConfig(machines=CHUNK + 3, asset_types=("pump", "motor"))
    parts = list(chunks(config))
    assert [(c.asset_types, c.machines, c.first_machine) for c in parts] == [
        (("pump",), CHUNK, 0), (("pump",), 3, CHUNK), (("motor",), CHUNK, 0), (("motor",), 3, CHUNK)]


def test_ticks_limit_censors_runs(tmp_path: Path) -> None:
    summary = write_history(FleetConfig(machines=10, asset_types=("pump",)), tmp_path, ticks=50, truth=True)
    assert summary.readings == 500 and summary.failures == 0
    assert pq.read_table(tmp_path / "truth.parquet")["rul"].to_numpy().min() > 0


def test_value_faults_in_files_are_nulls_and_non_finite(tmp_path: Path) -> None:
    faults = FaultConfig(missing=0.05, non_finite=0.02)
    summary = write_history(FleetConfig(machines=20, asset_types=("pump",), max_runs=1), tmp_path, faults=faults)
    table = pq.read_table(tmp_path / "readings.parquet")
    sensors = ASSET_TYPES["pump"].sensor_names
    nulls = sum(table[s].null_count for s in sensors)
    values = np.column_stack([table[s].fill_null(0.0).to_numpy() for s in sensors])
    assert summary.report is not None
    assert nulls == summary.report.injected["missing_fields"] > 0
    assert (~np.isfinite(values)).any(axis=1).sum() == summary.report.injected["non_finite"] > 0
    assert summary.report.expected_rejections == {}


def _rank(x: np.ndarray) -> np.ndarray:
    r = np.empty(x.size)
    r[np.argsort(x, kind="stable")] = np.arange(x.size)
    return r


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(_rank(x), _rank(y))[0, 1])


@pytest.mark.parametrize("asset", list(ASSET_TYPES))
def test_learnable_but_not_trivial(history_dir: Path, asset: str) -> None:
    """Model-free sanity check: a simple health indicator (regime-normalised, per-machine
    baselined sensor deviations, smoothed) tracks true RUL; no raw sensor does."""
    spec = ASSET_TYPES[asset]
    readings = pq.read_table(history_dir / "readings.parquet")
    keep = pc.equal(readings["asset_type"], asset)
    readings = readings.filter(keep)
    rul = pq.read_table(history_dir / "truth.parquet").filter(keep)["rul"].to_numpy()
    x = np.column_stack([readings[s].to_numpy() for s in spec.sensor_names])
    settings = np.column_stack([readings[s].to_numpy() for s in spec.setting_names])
    ids = np.asarray(readings["machine_id"].to_pylist())
    # 1. Remove the operating regime: least squares of log sensor on log settings.
    design = np.column_stack([np.ones(len(x)), np.log(settings)])
    logged = np.log(np.abs(x) + 1e-3)
    coef, *_ = np.linalg.lstsq(design, logged, rcond=None)
    residual = logged - design @ coef
    # 2. Per machine, subtract its early-life level; scale by the early-life spread.
    starts = np.flatnonzero(np.append(True, ids[1:] != ids[:-1]))
    ends = np.append(starts[1:], len(ids))
    early = []
    for a, b in zip(starts, ends, strict=True):
        residual[a:b] -= np.median(residual[a:a + 30], axis=0)
        early.append(residual[a:a + 30])
    z = residual / np.concatenate(early).std(axis=0)
    raw_hi = np.sqrt((z**2).mean(axis=1))
    # 3. Smooth over the last 10 readings of the machine.
    hi = np.empty_like(raw_hi)
    for a, b in zip(starts, ends, strict=True):
        c = np.cumsum(raw_hi[a:b])
        window = c.copy()
        window[10:] -= c[:-10]
        hi[a:b] = window / np.minimum(np.arange(1, b - a + 1), 10)
    capped = np.minimum(rul, 125)
    assert spearman(hi, capped) < -0.35
    near, far = hi[rul < 10].mean(), hi[(rul >= 100) & (rul < 125)].mean()
    assert near > 2 * far
    for j, name in enumerate(spec.sensor_names):
        assert abs(spearman(x[:, j], capped)) < 0.5, name



def test_history_to_kafka_is_the_history_keyed_by_machine_at_event_time() -> None:
    kafka = InMemoryKafka()
    topics = Topics.from_settings(TopicSettings(prefix="t."))
    config = FleetConfig(machines=3, asset_types=("motor",), seed=2, max_runs=1)
    summary = write_history_to_kafka(config, FakeProducer(kafka), topics)
    decoder = Decoder()
    telemetry = kafka.messages(topics.telemetry)
    readings = [decoder.telemetry(m.value() or b"") for m in telemetry]
    assert len(readings) == summary.readings > 0 and all(isinstance(r, Telemetry) for r in readings)
    assert all(m.key() == r.machine_id.encode() and m.timestamp()[1] == r.ts  # type: ignore[union-attr]
               for m, r in zip(telemetry, readings, strict=True))
    events = [decoder.maintenance(m.value() or b"") for m in kafka.messages(topics.maintenance)]
    assert len(events) == summary.failures == 3 and all(isinstance(e, MaintenanceEvent) for e in events)
    sink = ListSink()  # the same messages as any other sink gets
    write_history_to_sink(config, sink)
    assert sorted(m.payload for m in sink.messages) == sorted(
        m.value() for t in (topics.telemetry, topics.maintenance) for m in kafka.messages(t))


def test_history_to_kafka_fails_loudly_on_a_failed_delivery() -> None:
    producer = FakeProducer(InMemoryKafka())
    producer.fail_next = 2
    with pytest.raises(SimulatorError,
                       match=r"2 records were not delivered to Kafka \(first error: .*_MSG_TIMED_OUT"):
        write_history_to_kafka(FleetConfig(machines=2, seed=1, max_runs=1), producer,
                               Topics.from_settings(TopicSettings()))
