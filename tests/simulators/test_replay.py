from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forewarn.contract import Decoder, MaintenanceEvent, Telemetry
from simulators.errors import SimulatorError
from simulators.messages import ListSink, MessageBuilder
from simulators.replay import load_replay, normalise_machine_id, run_replay

decoder = Decoder()
MakeHistory = Callable[..., tuple[Path, object]]


def replay(data: object, **options: object) -> tuple[list[Telemetry], list[MaintenanceEvent]]:
    sink = ListSink()
    assert hasattr(data, "machine_ids")
    run_replay(data, MessageBuilder(sink, data.machine_ids, **options))  # type: ignore[arg-type]
    readings: list[Telemetry] = []
    events: list[MaintenanceEvent] = []
    for message in sink.messages:
        if message.kind == "maintenance":
            event = decoder.maintenance(message.payload)
            assert isinstance(event, MaintenanceEvent)
            events.append(event)
        elif message.kind == "batch":
            _, good, bad = decoder.batch(message.payload)
            assert not bad
            readings += good
        else:
            reading = decoder.telemetry(message.payload)
            assert isinstance(reading, Telemetry), reading
            readings.append(reading)
    return readings, events


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_replaying_a_history_reproduces_its_rows(make_history: MakeHistory, fmt: str) -> None:
    out, _ = make_history("h", fmt, machines=4, max_runs=2)
    data = load_replay(out / f"readings.{fmt}", events_path=out / f"events.{fmt}")
    readings, events = replay(data)
    table = pq.read_table(out / "readings.parquet") if fmt == "parquet" else pacsv.read_csv(out / "readings.csv")
    assert len(readings) == table.num_rows
    # Each machine's readings are sent in time order (chunks of readings are split per asset type);
    # every row comes back with its seq, time, sensors and settings.
    for mid in data.machine_ids:
        mine = [r.ts for r in readings if r.machine_id == mid]
        assert mine == sorted(mine)
    rows = {(row["machine_id"], row["seq"]): row for row in table.to_pylist()}
    for r in readings:
        row = rows[(r.machine_id, r.seq)]
        assert int(row["time"].timestamp() * 1000) == r.ts
        assert r.asset_type == row["asset_type"]
        assert all(row[k] == v for k, v in r.sensors.items())
        assert set(r.settings) <= {"speed_setpoint_rpm", "valve_opening_pct", "load_pct", "supply_frequency_hz"}
        assert len(r.sensors) + len(r.settings) == sum(v is not None for v in row.values()) - 4
    assert {e.event for e in events} == {"failure", "repair"}
    assert len(events) == 8 * 3
    # A failure is sent after the run's last reading.
    position = {(r.machine_id, r.ts): i for i, r in enumerate(readings)}
    assert all(position[(e.machine_id, e.ts)] >= 0 for e in events if e.event == "failure")


def test_cycle_indexed_file_without_site_or_asset_type(tmp_path: Path) -> None:
    path = tmp_path / "cmapss.csv"
    path.write_text("machine_id,time,op_setting_1,sensor_2,sensor_3\n"
                    "1,1,0.5,641.8,1589.7\n1,2,0.5,642.1,\n2,1,,642.4,1590.1\n")
    data = load_replay(path, asset_type="turbofan", settings=["op_setting_1"], start_ms=1_767_225_600_000,
                       period_ms=1000, failure_at_end=True)
    readings, events = replay(data, delivery="batch", batch_size=10)
    assert [r.machine_id for r in readings] == ["replay/1", "replay/2", "replay/1"]
    assert [r.seq for r in readings] == [0, 0, 1]
    assert readings[0].ts == 1_767_225_601_000 and readings[2].ts == 1_767_225_602_000
    assert readings[2].sensors == {"sensor_2": 642.1}  # the empty cell is a missing field
    assert readings[0].settings == {"op_setting_1": 0.5} and readings[0].asset_type == "turbofan"
    assert readings[1].settings == {}  # an empty setting cell is left out too
    assert [(e.machine_id, e.event, e.ts) for e in events] == [
        ("replay/2", "failure", 1_767_225_601_000), ("replay/1", "failure", 1_767_225_602_000)]


def test_replay_errors_are_actionable(tmp_path: Path) -> None:
    with pytest.raises(SimulatorError, match="not found"):
        load_replay(tmp_path / "nope.parquet")
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"machine_id": ["a/b"], "time": [1]}), path)
    with pytest.raises(SimulatorError) as info:
        load_replay(path)
    assert "--asset-type" in info.value.one_line()
    pq.write_table(pa.table({"unit": ["a/b"]}), path)
    with pytest.raises(SimulatorError, match="no machine_id"):
        load_replay(path, asset_type="x")


@given(st.text(min_size=0, max_size=30), st.text(min_size=1, max_size=10))
def test_normalised_machine_ids_are_contract_valid(raw: str, site: str) -> None:
    machine_id = normalise_machine_id(raw, site)
    payload = Telemetry(1, machine_id, "x", 1_767_225_600_000, 0, {"a": 1.0})
    from forewarn.contract import encode

    assert isinstance(decoder.telemetry(encode(payload)), Telemetry), machine_id
