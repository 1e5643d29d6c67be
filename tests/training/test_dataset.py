"""Loading the long format: warts handled, garbage refused with one line naming file, row/column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.dataset import guess_settings, load_events, load_readings, run_to_failure_events, unit_from_name
from training.errors import DataError


def _write(path, text):
    path.write_text(text)
    return path


def test_empty_file(tmp_path):
    path = _write(tmp_path / "readings.csv", "")
    with pytest.raises(DataError, match=r"readings\.csv: the file is empty"):
        load_readings(path)


def test_header_only(tmp_path):
    path = _write(tmp_path / "readings.csv", "machine_id,time,s1\n")
    with pytest.raises(DataError, match="no rows"):
        load_readings(path)


def test_missing_machine_id_column(tmp_path):
    path = _write(tmp_path / "readings.csv", "machine,time,s1\na,0,1.0\n")
    with pytest.raises(DataError, match=r"readings\.csv: missing required column 'machine_id'") as caught:
        load_readings(path)
    assert "\n" not in caught.value.one_line()


def test_text_in_sensor_column_names_line_and_column(tmp_path):
    path = _write(tmp_path / "readings.csv", "machine_id,time,s1\na,0,1.0\na,1,hot\n")
    with pytest.raises(DataError, match=r"readings\.csv: line 3, column 's1': 'hot' is not a number"):
        load_readings(path)


def test_bad_time_and_bad_event(tmp_path):
    path = _write(tmp_path / "readings.csv", "machine_id,time,s1\na,0,1.0\na,yesterday,2\n")
    with pytest.raises(DataError, match=r"line 3, column 'time'"):
        load_readings(path)
    good = _write(tmp_path / "r.csv", "machine_id,time,s1\na,0,1.0\n")
    events = _write(tmp_path / "events.csv", "machine_id,time,event\na,0,exploded\n")
    with pytest.raises(DataError, match=r"events\.csv: line 2, column 'event': 'exploded'"):
        load_events(events, load_readings(good).time_kind)


def test_parquet_rows_and_missing_file(tmp_path):
    frame = pd.DataFrame({"machine_id": ["a", None], "time": [0, 1], "s1": [1.0, 2.0]})
    frame.to_parquet(tmp_path / "readings.parquet")
    with pytest.raises(DataError, match=r"row 2, column 'machine_id': missing value"):
        load_readings(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_readings(tmp_path / "nope.csv")


def test_unsorted_rows_missing_values_constant_columns_timestamps(tmp_path):
    path = _write(tmp_path / "readings.csv",
                  "machine_id,asset_type,time,s1,flat,empty\n"
                  "b,pump,2026-01-01T00:00:02Z,3,1,\n"
                  "a,pump,2026-01-01T00:00:01Z,,1,\n"
                  "a,pump,2026-01-01T00:00:00Z,1,1,\n"
                  "a,pump,2026-01-01T00:00:00Z,1,1,\n")
    readings = load_readings(path)
    assert readings.time_kind == "timestamp"
    assert readings.frame["machine_id"].tolist() == ["a", "a", "b"]  # sorted, duplicate dropped
    assert readings.frame["time"].iloc[0] == 1767225600000
    assert np.isnan(readings.frame["s1"].iloc[1])
    assert readings.value_columns == ["s1", "flat"]  # the all-empty column is gone
    assert readings.asset_types == ["pump"]
    events = run_to_failure_events(readings)
    assert events.frame["time"].tolist() == [1767225601000, 1767225602000]


def test_time_kinds_must_match(tmp_path):
    readings = load_readings(_write(tmp_path / "r.csv", "machine_id,time,s1\na,0,1\n"))
    events = _write(tmp_path / "e.csv", "machine_id,time,event\na,2026-01-01T00:00:00Z,failure\n")
    with pytest.raises(DataError, match="timestamp values but the readings use index"):
        load_events(events, readings.time_kind)


def test_names():
    assert unit_from_name("bearing_temp_c") == "degC"
    assert unit_from_name("vibration_de_mm_s") == "mm/s"
    assert unit_from_name("s1") is None
    assert guess_settings(["setting1", "speed_setpoint_rpm", "s2"]) == ["setting1", "speed_setpoint_rpm"]


def test_events_seen_twice_are_kept_once_by_identity(tmp_path, caplog):
    _write(tmp_path / "readings.csv", "machine_id,time,s1\na,0,1.0\na,1,2.0\n")
    path = _write(tmp_path / "events.csv", "machine_id,time,event,event_id\n"
                  "a,5,failure,WO-1\na,6,failure,WO-1\na,7,repair,\na,7,repair,\na,9,inspection,WO-2\n")
    frame = load_events(path, "index").frame
    assert list(frame["event"]) == ["failure", "repair", "inspection"]
    assert "dropped 2 maintenance events seen more than once" in caplog.text


def test_readings_of_each_boot_are_kept_when_seq_starts_again(tmp_path):
    path = _write(tmp_path / "readings.csv", "machine_id,time,seq,boot,s1\n"
                  "a,0,0,1,1.0\na,1,1,1,2.0\na,2,0,2,3.0\na,3,1,2,4.0\na,3,1,2,4.0\n")
    readings = load_readings(path)
    assert len(readings.frame) == 4 and readings.value_columns == ["s1"]


def test_predict_restarts_a_machines_window_when_its_device_restarted(tmp_path):
    from forewarn.bundle import write_bundle
    from tests.scoring.bundle_factory import tiny_bundle
    from training.evaluation import predict_frame

    bundle = tiny_bundle(window=4)
    folder = write_bundle(tmp_path / "models", bundle.meta, bundle.onnx)
    rows = [f"a,{n},{n % 6},{1 + n // 6},1.0,1.0" for n in range(12)]  # seq 0..5 with boot 1, then boot 2
    path = _write(tmp_path / "readings.csv", "machine_id,time,seq,boot,s0_c,s1_c\n" + "\n".join(rows) + "\n")
    scored = predict_frame(folder, load_readings(path))
    # Three full windows per boot: the second boot's readings are not dropped as old seq numbers.
    assert list(scored["time"]) == [3, 4, 5, 9, 10, 11]
