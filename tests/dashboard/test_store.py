"""The store, the record decoding and the live-accuracy arithmetic, without Streamlit or a broker."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dashboard import accuracy, queries
from dashboard.actions import acknowledgement
from dashboard.cli import streamlit_command
from dashboard.ingest import Ingest
from dashboard.settings import DashboardSettings
from dashboard.store import Retention, Store
from forewarn.cli import cli
from forewarn.contract import Alert, MaintenanceEvent, PipelineStats, Prediction, Telemetry, encode
from forewarn.testing import FakeMessage
from forewarn.topics import Topics

TOPICS = Topics.from_settings(DashboardSettings().topics)
T0 = 1_764_201_600_000


def store_at(now_ms: int = T0 + 10_000, retention: Retention | None = None) -> Store:
    """An in-memory store whose clock stands at ``now_ms``."""
    return Store(retention=retention, clock=lambda: now_ms)


def msg(topic: str, value: bytes | None, offset: int, partition: int = 0,
        headers: list[tuple[str, bytes]] | None = None) -> FakeMessage:
    return FakeMessage(topic, partition, offset, None, value, headers, T0)


def prediction(machine: str, seq: int, p_fail: float, rul: float, version: str = "v1") -> Prediction:
    return Prediction(v=1, machine_id=machine, asset_type="pump", ts=T0 + seq * 60_000, seq=seq, model="pump",
                      model_version=version, scored_at=T0 + seq * 60_000 + 50, p_fail=p_fail, rul=rul,
                      ingest_ts=T0 + seq * 60_000 + 5)


def test_records_land_in_the_store_with_their_offsets() -> None:
    store = store_at()
    ingest = Ingest(TOPICS, sample_every=2)
    records = [
        msg(TOPICS.predictions, encode(prediction("a/p1", 10, 0.2, 80)), 0),
        msg(TOPICS.predictions, encode(prediction("a/p1", 9, 0.9, 5)), 1),  # older: does not win
        msg(TOPICS.predictions, b"not json", 2),
        msg(TOPICS.telemetry, encode(Telemetry(v=1, machine_id="a/p2", asset_type="pump", ts=T0, seq=4,
                                               sensors={"x": 1.0, "y": 2.0})), 0, 1),
        msg(TOPICS.telemetry, encode(Telemetry(v=1, machine_id="a/p2", asset_type="pump", ts=T0 + 1, seq=5,
                                               sensors={"x": 1.5, "y": 2.5})), 1, 1),
        msg(TOPICS.maintenance, encode(MaintenanceEvent(v=1, machine_id="a/p1", ts=T0, event="failure",
                                                        failure_mode="bearing_wear")), 7),
        msg(TOPICS.dlq, b"\xff", 3, headers=[("reason", b"not_json"), ("mqtt_topic", b"forewarn/a/p9/telemetry")]),
    ]
    batch = ingest.batch(records, now_ms=T0 + 10_000)
    store.write(batch)
    assert ingest.bad == {"predictions": 1}
    assert store.offsets() == {(TOPICS.predictions, 0): 3, (TOPICS.telemetry, 1): 2, (TOPICS.maintenance, 0): 8,
                               (TOPICS.dlq, 0): 4}
    fleet = queries.fleet(store).set_index("machine_id")
    assert fleet.loc["a/p1", "p_fail"] == pytest.approx(0.2)  # the newest reading wins
    assert fleet.loc["a/p2", "last_seen"] == T0 + 1 and fleet.loc["a/p2", "risk"] == "no prediction"
    assert store.counts()["telemetry"] == 2  # only seq 4 was sampled (every 2nd)
    assert list(queries.dlq_by_reason(store)["reason"]) == ["not_json"]


def test_alert_lifecycle_and_acknowledgement_round_trip() -> None:
    store = store_at(T0)
    ingest = Ingest(TOPICS)
    opened = Alert(v=1, alert_id="a1", machine_id="a/p1", state="open", severity="warning", rule="p_fail",
                   opened_at=T0, ts=T0, p_fail=0.6, model_version="v1")
    store.write(ingest.batch([msg(TOPICS.alerts, encode(opened), 0)], T0))
    row = queries.alert_list(store).iloc[0].to_dict()
    assert row["status"] == "open"
    ack = acknowledgement(row, "Ada", T0 + 1000, note="bearing checked")
    assert (ack.state, ack.acknowledged_by, ack.severity, ack.p_fail) == ("acknowledged", "Ada", "warning", 0.6)
    resolved = Alert(v=1, alert_id="a1", machine_id="a/p1", state="resolved", severity="warning", rule="p_fail",
                     opened_at=T0, ts=T0 + 5000)
    store.write(ingest.batch([msg(TOPICS.alerts, encode(ack), 1)], T0 + 1000))
    after_ack = queries.alert_list(store).iloc[0]
    assert (after_ack["status"], after_ack["acknowledged_by"], after_ack["severity"]) == ("acknowledged", "Ada",
                                                                                         "warning")
    assert (after_ack["note"], after_ack["acknowledged_at"]) == ("bearing checked", T0 + 1000)
    store.write(ingest.batch([msg(TOPICS.alerts, encode(resolved), 2)], T0 + 5000))
    final = queries.alert_list(store).iloc[0]
    assert final["status"] == "resolved" and final["duration_ms"] == 5000


def test_retention_bounds_rows_by_count_and_arrival_time() -> None:
    # 1500 one-minute readings that reached the bridge over the last 25 hours (ingest_ts), the
    # newest just now; the dashboard read them all at once.
    now = T0 + 1499 * 60_000 + 5
    store = store_at(now, Retention(hours=1, max_predictions=1000))
    records = [msg(TOPICS.predictions, encode(prediction("a/p1", seq, 0.1, 50)), seq) for seq in range(1500)]
    store.write(Ingest(TOPICS).batch(records, now))
    dropped = store.prune()
    left = store.read("SELECT min(seq) AS lo, count(*) AS n FROM predictions").iloc[0]
    # One hour of arrivals survives the time rule; the count cap is not reached.
    assert int(left["n"]) == 61 and int(left["lo"]) == 1439 and dropped["predictions"] == 1439


def test_the_count_cap_drops_the_earliest_arrivals_first() -> None:
    store = store_at(T0, Retention(max_predictions=1000))
    ingest = Ingest(TOPICS)
    records = [msg(TOPICS.predictions, encode(prediction("a/p1", seq, 0.1, 50)), seq) for seq in range(1500)]
    store.write(ingest.batch(records, T0 + 1500 * 60_000))
    assert store.prune() == {"predictions": 500}
    assert int(store.scalar("SELECT min(seq) FROM predictions")) == 500


def test_one_future_dated_record_prunes_nothing_and_pins_no_machine() -> None:
    now = T0 + 100 * 60_000
    store = store_at(now, Retention(hours=1))
    ingest = Ingest(TOPICS)
    good = [msg(TOPICS.predictions, encode(prediction("a/p1", seq, 0.1, 50)), seq) for seq in range(95, 100)]
    year_2099 = 4_070_908_800_000
    skewed = Prediction(v=1, machine_id="a/p1", asset_type="pump", ts=year_2099, seq=100, model="pump",
                        model_version="v1", scored_at=now, p_fail=0.99, rul=1.0, ingest_ts=now)
    reading = Telemetry(v=1, machine_id="a/p1", asset_type="pump", ts=year_2099, seq=101, sensors={"x": 1.0})
    store.write(ingest.batch([*good, msg(TOPICS.predictions, encode(skewed), 100),
                              msg(TOPICS.telemetry, encode(reading), 0)], now))
    assert store.prune() == {}
    assert store.counts()["predictions"] == 6
    # The outlier was the newest prediction; the next believable one replaces it.
    later = msg(TOPICS.predictions, encode(prediction("a/p1", 101, 0.3, 40)), 101)
    store.write(ingest.batch([later, msg(TOPICS.telemetry, encode(Telemetry(
        v=1, machine_id="a/p1", asset_type="pump", ts=now, seq=102, sensors={"x": 1.0})), 1)], now))
    row = queries.fleet(store).set_index("machine_id").loc["a/p1"]
    assert row["p_fail"] == pytest.approx(0.3) and row["last_seen"] == T0 + 101 * 60_000
    assert queries.machine_window_end(store, year_2099) == now
    assert queries.machine_window_end(store, now - 5) == now - 5
    # An acknowledgement of an alert last dated in 2099 is dated now.
    ack = acknowledgement({"alert_id": "a1", "machine_id": "a/p1", "severity": "warning", "rule": "r",
                           "opened_at": now, "last_ts": year_2099}, "Ada", now, store.horizon())
    assert ack.ts == now


def test_live_accuracy_labels_predictions_by_later_failures() -> None:
    store = store_at(T0 + 101 * 60_000)
    ingest = Ingest(TOPICS)
    records = []
    # p1 fails after reading 100: its predictions in the last 30 readings are positives.
    for seq in range(40, 101):
        p = 0.9 if seq >= 80 else 0.1
        records.append(msg(TOPICS.predictions, encode(prediction("a/p1", seq, p, float(100 - seq))), seq))
    # p2 never fails and is seen long enough: negatives, one false alarm at seq 10.
    for seq in range(0, 101):
        records.append(msg(TOPICS.predictions, encode(prediction("a/p2", seq, 0.9 if seq == 10 else 0.1, 125.0)),
                           200 + seq))
    failure = MaintenanceEvent(v=1, machine_id="a/p1", ts=T0 + 100 * 60_000 + 1, event="failure")
    records.append(msg(TOPICS.maintenance, encode(failure), 0))
    store.write(ingest.batch(records, T0))
    row = accuracy.live_accuracy(store).iloc[0]
    # p1 positives: seq 70..100 (31); predicted positives 80..100 (21) → tp 21, fn 10.
    # p2: labelled seq 0..70 (71) of which one false alarm; p1 seq 40..69 negatives, not flagged.
    assert (row["tp"], row["fn"], row["fp"]) == (21, 10, 1)
    assert row["precision"] == pytest.approx(21 / 22) and row["recall"] == pytest.approx(21 / 31)
    assert row["rul_mae"] == pytest.approx(0.0)  # rul was exact for the run that failed
    assert row["failures"] == 1


def test_psi_is_zero_for_the_same_distribution_and_grows_with_shift() -> None:
    base = np.array([0.1, 0.2, 0.4, 0.2, 0.1])
    assert accuracy.psi(base, base) == pytest.approx(0.0)
    assert accuracy.psi(base, np.array([0.05, 0.1, 0.3, 0.3, 0.25])) > accuracy.PSI_MODERATE


def test_cli_help_names_env_vars_and_the_command_is_streamlit() -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--help"])
    assert result.exit_code == 0
    for env in ("FOREWARN_DASHBOARD__PORT", "FOREWARN_KAFKA__BOOTSTRAP_SERVERS", "FOREWARN_DASHBOARD__STORE"):
        assert env in result.output.replace("\n", "").replace(" ", "")
    command = streamlit_command(DashboardSettings(dashboard={"port": 8600}))
    assert command[1:4] == ["-m", "streamlit", "run"] and "8600" in command


def test_cli_bad_setting_is_one_line() -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--refresh", "0.1"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def _maintenance(event_id: str | None, ts: int = T0, event: str = "failure") -> MaintenanceEvent:
    return MaintenanceEvent(v=1, machine_id="a/p1", ts=ts, event=event, failure_mode="bearing_wear",  # type: ignore[arg-type]
                            event_id=event_id)


def test_a_maintenance_event_is_held_once_however_often_it_arrives() -> None:
    store = store_at()
    ingest = Ingest(TOPICS)
    named, unnamed = _maintenance("WO-17"), _maintenance(None, ts=T0 + 5, event="repair")
    # Within one batch (a replayed dead letter next to the original) and across batches
    # (redelivery, a second replay): each identity once.
    first = [msg(TOPICS.maintenance, encode(e), n) for n, e in enumerate((named, unnamed, named, unnamed))]
    store.write(ingest.batch(first, T0))
    again = [msg(TOPICS.maintenance, encode(e), 4 + n) for n, e in enumerate((unnamed, named))]
    store.write(ingest.batch(again, T0 + 1000))
    rows = store.read("SELECT identity, event_id, event FROM maintenance ORDER BY identity")
    assert list(rows["identity"]) == ["WO-17", unnamed.identity] and rows["event_id"].iloc[0] == "WO-17"
    assert pd.isna(rows["event_id"].iloc[1])
    assert store.offsets() == {(TOPICS.maintenance, 0): 6}
    # The same work order under another time is still the same event; another id is another.
    store.write(ingest.batch([msg(TOPICS.maintenance, encode(_maintenance("WO-17", ts=T0 + 9)), 6),
                              msg(TOPICS.maintenance, encode(_maintenance("WO-18")), 7)], T0 + 2000))
    assert store.counts()["maintenance"] == 3


HUGE = 2**64 + 5


@pytest.mark.parametrize("payload", [
    b'{"v":1,"machine_id":"a/p1","asset_type":"pump","ts":1764201600000,"seq":%d,"model":"m",'
    b'"model_version":"v1","scored_at":1764201600050,"p_fail":0.5}' % HUGE,
    b'{"v":1,"machine_id":"a/p1","asset_type":"pump","ts":%d,"seq":1,"model":"m",'
    b'"model_version":"v1","scored_at":1764201600050}' % -HUGE,
    b'{"v":1,"machine_id":"a/p1","asset_type":"pump","ts":1764201600000,"seq":1,"model":"m",'
    b'"model_version":"v1","scored_at":1764201600050,"ingest_ts":%d}' % HUGE,
], ids=["seq", "ts", "ingest_ts"])
def test_a_prediction_the_store_cannot_hold_is_skipped_and_counted(payload: bytes,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    store = store_at()
    ingest = Ingest(TOPICS)
    good = msg(TOPICS.predictions, encode(prediction("a/p2", 3, 0.2, 80)), 1)
    store.write(ingest.batch([msg(TOPICS.predictions, payload, 0), good], T0))
    assert ingest.bad == {"predictions": 1}
    assert store.counts()["predictions"] == 1 and store.offsets() == {(TOPICS.predictions, 0): 2}
    assert "does not fit int64" in caplog.text and "skipped 1 predictions record" in caplog.text


def test_alerts_telemetry_and_stats_beyond_int64_are_skipped_too() -> None:
    store = store_at()
    ingest = Ingest(TOPICS, sample_every=1)
    alert = (b'{"v":1,"alert_id":"x","machine_id":"a/p1","state":"open","severity":"warning","rule":"r",'
             b'"opened_at":%d,"ts":1}' % HUGE)
    reading = b'{"v":1,"machine_id":"a/p1","asset_type":"pump","ts":%d,"seq":5,"sensors":{"x":1.0}}' % HUGE
    stats = (b'{"v":1,"source":"w0","role":"scoring","since":1,"until":2,"counts":{"scored":%d}}' % HUGE)
    maintenance = b'{"v":1,"machine_id":"a/p1","ts":%d,"event":"failure"}' % HUGE
    store.write(ingest.batch([msg(TOPICS.alerts, alert, 0), msg(TOPICS.telemetry, reading, 0),
                              msg(TOPICS.pipeline, stats, 0), msg(TOPICS.maintenance, maintenance, 0)], T0))
    assert ingest.bad == {"alerts": 1, "telemetry": 1, "pipeline": 1, "maintenance": 1}
    assert sum(store.counts().values()) == 0


def _stats(source: str, role: str, until: int, counts: dict[str, int], resets: dict[str, int] | None = None) -> bytes:
    return encode(PipelineStats(v=1, source=source, role=role, since=until - 5000, until=until,  # type: ignore[arg-type]
                                counts=counts, resets=resets or {}))


def test_pipeline_stats_sum_by_role_and_reason_over_the_last_hour_once_each() -> None:
    now = T0 + 2 * 3600_000
    store = store_at(now)
    ingest = Ingest(TOPICS)
    records = [
        msg(TOPICS.pipeline, _stats("w0", "scoring", now - 10_000, {"scored": 90, "duplicate": 7, "late": 2},
                                    {"restart": 1}), 0),
        msg(TOPICS.pipeline, _stats("w1", "scoring", now - 5_000, {"scored": 10, "warmup": 4}, {"gap": 2}), 1),
        msg(TOPICS.pipeline, _stats("edge-1", "edge", now - 1_000, {"scored": 5, "rejected": 1}), 2),
        # Two hours old: outside the hour. A scorer clock in the future counts when it arrived.
        msg(TOPICS.pipeline, _stats("w0", "scoring", now - 2 * 3600_000, {"scored": 1000}), 3),
        msg(TOPICS.pipeline, _stats("w2", "scoring", 4_070_908_800_000, {"unscorable": 3}), 4),
    ]
    store.write(ingest.batch(records, now))
    store.write(ingest.batch(records[:1], now))  # a redelivery changes nothing
    frame = queries.not_scored(store)
    got = {(r.role, r.kind, r.outcome): int(r.n) for r in frame.itertuples(index=False)}
    assert got == {("scoring", "count", "scored"): 100, ("scoring", "count", "duplicate"): 7,
                   ("scoring", "count", "late"): 2, ("scoring", "count", "warmup"): 4,
                   ("scoring", "count", "unscorable"): 3, ("scoring", "reset", "restart"): 1,
                   ("scoring", "reset", "gap"): 2, ("edge", "count", "scored"): 5, ("edge", "count", "rejected"): 1}
    assert set(queries.NOT_SCORED) == {"duplicate", "late", "warmup", "stride", "unscorable", "rejected"}


def test_a_store_file_of_an_older_schema_is_emptied_and_read_again(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "store.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE maintenance (machine_id VARCHAR, ts BIGINT)")
    con.execute("CREATE TABLE offsets (topic VARCHAR, \"partition\" INTEGER, next_offset BIGINT)")
    con.execute("INSERT INTO offsets VALUES ('forewarn.maintenance', 0, 42)")
    con.close()
    store = Store(path)
    assert store.offsets() == {} and "emptying it" in caplog.text
    store.write(Ingest(TOPICS).batch([msg(TOPICS.maintenance, encode(_maintenance("WO-1")), 0)], T0))
    store.close()
    caplog.clear()
    reopened = Store(path)
    assert reopened.counts()["maintenance"] == 1 and "emptying" not in caplog.text
    reopened.close()


def test_live_accuracy_counts_the_horizon_in_readings_across_a_device_restart() -> None:
    """p1 ran seq 0..99, restarted (seq from 0 again) and failed after its 20th new reading:
    only the last 31 readings before the failure are positives, whatever their seq."""
    store = store_at(T0 + 200 * 60_000)
    ingest = Ingest(TOPICS)
    records = []
    for n in range(120):
        seq = n if n < 100 else n - 100
        p = 0.9 if n >= 100 else 0.1
        record = Prediction(v=1, machine_id="a/p1", asset_type="pump", ts=T0 + n * 60_000, seq=seq, model="pump",
                            model_version="v1", scored_at=T0 + n * 60_000 + 50, p_fail=p, rul=float(119 - n))
        records.append(msg(TOPICS.predictions, encode(record), n))
    failure = MaintenanceEvent(v=1, machine_id="a/p1", ts=T0 + 119 * 60_000 + 1, event="failure")
    records.append(msg(TOPICS.maintenance, encode(failure), 0))
    store.write(ingest.batch(records, T0 + 200 * 60_000))
    row = accuracy.live_accuracy(store).iloc[0]
    # Positives: readings 89..119 (31), of which the restarted boot's 20 were flagged; negatives
    # 0..88, none flagged (seq 0..19 of the first boot are not "within 30 of the failure").
    assert (row["labelled"], row["tp"], row["fn"], row["fp"]) == (120, 20, 11, 0)
    assert row["rul_mae"] == pytest.approx(0.0)


def test_pipeline_stats_are_kept_two_hours_by_arrival() -> None:
    now = T0 + 5 * 3600_000
    store = store_at(now)
    ingest = Ingest(TOPICS)
    store.write(ingest.batch([msg(TOPICS.pipeline, _stats("w0", "scoring", now - 3 * 3600_000, {"scored": 1}), 0)],
                             now - 3 * 3600_000))
    store.write(ingest.batch([msg(TOPICS.pipeline, _stats("w0", "scoring", now - 1000, {"scored": 2}), 1)], now))
    store.prune()
    assert int(store.scalar("SELECT sum(n) FROM pipeline_stats")) == 2
