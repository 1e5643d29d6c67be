"""Property tests: contract-valid records with extreme values — counters near 2^63-1, event
times anywhere in 2000..2100, magnitudes up to 1e15, 256 sensors, odd unicode ids — go through
the dashboard's ingest and store, a prune and the pages' queries without raising, and the
prune drops only what arrived before the retention span."""

from __future__ import annotations

from typing import Any, Final

import msgspec
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard import accuracy, queries
from dashboard.ingest import Ingest
from dashboard.settings import DashboardSettings
from dashboard.store import Retention, Store
from forewarn.contract import (
    SEQ_MAX,
    TS_MAX_MS,
    TS_MIN_MS,
    VALUE_MAX,
    Alert,
    DecodeLimits,
    Decoder,
    MaintenanceEvent,
    PipelineStats,
    Prediction,
    Rejected,
    Telemetry,
    encode,
)
from forewarn.testing import FakeMessage
from forewarn.topics import Topics

TOPICS = Topics.from_settings(DashboardSettings().topics)
NOW: Final = 1_796_212_800_000  # the store's clock in these tests
RETENTION: Final = Retention(hours=24)
# Fixed bounds only: event times anywhere in 2000..2100 are contract-valid here.
DECODER: Final = Decoder(DecodeLimits(max_future_ms=None))

# Ids of the contract's shape (site/machine: no '/', whitespace, '#' or '+') in odd unicode.
_part = st.text(st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), exclude_characters="/#+",
                              include_characters="\x00"), min_size=1, max_size=60)
machine_ids = st.builds(lambda a, b: f"{a}/{b}", _part, _part).filter(lambda m: len(m) <= 200)
names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=100)
counters = st.one_of(st.integers(0, 10), st.integers(SEQ_MAX - 10, SEQ_MAX), st.integers(0, SEQ_MAX))
times = st.one_of(st.integers(TS_MIN_MS, TS_MAX_MS), st.sampled_from([TS_MIN_MS, TS_MAX_MS, NOW]))
values = st.floats(-VALUE_MAX, VALUE_MAX, allow_nan=False, allow_infinity=False)
few_sensors = st.dictionaries(names, values, min_size=1, max_size=8)
many_sensors = st.builds(lambda n, v: {f"s{i}": v for i in range(n)}, st.integers(200, 256), values)


@st.composite
def readings(draw: st.DrawFn) -> Telemetry:
    sensors = draw(st.one_of(few_sensors, many_sensors))
    return Telemetry(v=1, machine_id=draw(machine_ids), asset_type=draw(names), ts=draw(times), seq=draw(counters),
                     sensors=sensors, settings=draw(st.dictionaries(names, values, max_size=3)),
                     boot=draw(st.none() | counters))


@st.composite
def predictions(draw: st.DrawFn) -> Prediction:
    return Prediction(v=1, machine_id=draw(machine_ids), asset_type=draw(names), ts=draw(times), seq=draw(counters),
                      model=draw(names), model_version=draw(names), scored_at=draw(times),
                      p_fail=draw(st.none() | st.floats(0, 1)), rul=draw(st.none() | values),
                      ingest_ts=draw(st.none() | times))


@st.composite
def alerts(draw: st.DrawFn) -> Alert:
    return Alert(v=1, alert_id=draw(names), machine_id=draw(machine_ids),
                 state=draw(st.sampled_from(["open", "update", "resolved", "acknowledged"])),
                 severity=draw(st.sampled_from(["info", "warning", "critical"])), rule=draw(names),
                 opened_at=draw(times), ts=draw(times), model=draw(st.none() | names),
                 model_version=draw(st.none() | names), asset_type=draw(st.none() | names),
                 p_fail=draw(st.none() | st.floats(0, 1)), rul=draw(st.none() | values),
                 message=draw(st.none() | names), acknowledged_by=draw(st.none() | names))


@st.composite
def maintenance(draw: st.DrawFn) -> MaintenanceEvent:
    return MaintenanceEvent(v=1, machine_id=draw(machine_ids), ts=draw(times),
                            event=draw(st.sampled_from(["failure", "repair", "inspection"])),
                            failure_mode=draw(st.none() | names), asset_type=draw(st.none() | names),
                            event_id=draw(st.none() | st.sampled_from(["WO-1", "WO-2"]) | names))


_outcomes = st.sampled_from(["scored", "duplicate", "late", "warmup", "unscorable", "rejected"])


@st.composite
def stats(draw: st.DrawFn) -> PipelineStats:
    since = draw(times)
    return PipelineStats(v=1, source=draw(names), role=draw(st.sampled_from(["scoring", "edge"])), since=since,
                         until=draw(st.integers(since, TS_MAX_MS)),
                         counts=draw(st.dictionaries(_outcomes, counters, max_size=6)),
                         resets=draw(st.dictionaries(st.sampled_from(["restart", "gap"]), counters, max_size=2)))


def _valid(reading: Telemetry) -> bool:
    return not isinstance(DECODER.telemetry(encode(reading), NOW), Rejected)


batches = st.fixed_dictionaries({
    "telemetry": st.lists(readings().filter(_valid), max_size=6),
    "predictions": st.lists(predictions(), max_size=8),
    "alerts": st.lists(alerts(), max_size=6),
    "maintenance": st.lists(maintenance(), max_size=6),
    "pipeline": st.lists(stats(), max_size=4),
})


def _messages(records: dict[str, list[Any]], now: int) -> list[FakeMessage]:
    out: list[FakeMessage] = []
    for role, items in records.items():
        topic = getattr(TOPICS, role)
        for offset, item in enumerate(items):
            headers = [("ingest_ts", str(now).encode())] if role == "telemetry" else None
            out.append(FakeMessage(topic, 0, offset, None, encode(item), headers, item.ts if hasattr(item, "ts")
                                   else now))
    return out


def _run_queries(store: Store) -> None:
    frame = queries.fleet(store)
    queries.fleet_summary(frame)
    queries.model_versions(store)
    for machine in queries.machine_ids(store)[:3]:
        row = store.read("SELECT ts, telemetry_ts FROM machines WHERE machine_id = ?", [machine]).iloc[0]
        last = max(int(v) for v in (row["ts"], row["telemetry_ts"], 0) if not pd.isna(v))
        since = queries.machine_window_end(store, last) - 24 * 3600_000
        predictions_of = queries.machine_predictions(store, machine, since)
        queries.version_changes(predictions_of)
        queries.machine_events(store, machine, since)
        queries.machine_telemetry(store, machine, queries.machine_sensors(store, machine), since)
    queries.alert_list(store)
    queries.alert_list(store, ["open"], ["critical"], machine="ü")
    queries.throughput(store)
    queries.scoring_rate(store)
    queries.dlq_by_reason(store)
    queries.latency_percentiles(store)
    queries.not_scored(store)
    accuracy.live_accuracy(store)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.filter_too_much])
@given(batches, batches)
def test_extreme_records_go_through_ingest_store_prune_and_queries(first: dict[str, list[Any]],
                                                                   second: dict[str, list[Any]]) -> None:
    store = Store(retention=RETENTION, clock=lambda: NOW)
    ingest = Ingest(TOPICS, sample_every=1)
    try:
        for records in (first, second):
            store.write(ingest.batch(_messages(records, NOW), NOW))
        _run_queries(store)
        assert ingest.bad == {}, "every contract-valid record fits the store"
        dropped = store.prune()
        _run_queries(store)
        everything = [*first["predictions"], *second["predictions"]]
        # Only predictions that reached the bridge before the retention span are outliers here.
        cut = NOW - int(RETENTION.hours * 3600_000)
        old = sum(1 for p in everything if p.ingest_ts is not None and p.ingest_ts < cut)
        assert dropped == ({"predictions": old} if old else {})
        counts = store.counts()
        assert counts["predictions"] == len(everything) - old
        readings_in = [*first["telemetry"], *second["telemetry"]]
        assert counts["telemetry"] == sum(len(r.sensors) for r in readings_in)
        identities = {e.identity for e in (*first["maintenance"], *second["maintenance"])}
        assert counts["maintenance"] == len(identities)
        alerts_in = len(first["alerts"]) + len(second["alerts"])
        assert int(store.scalar("SELECT count(*) FROM alert_events")) == alerts_in
        assert {str(m) for m in queries.machine_ids(store)} == {
            r.machine_id for r in (*everything, *readings_in)}
    finally:
        store.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(predictions(), min_size=1, max_size=10), st.integers(NOW + 3600_000, TS_MAX_MS))
def test_a_machines_state_is_never_pinned_by_an_event_time_beyond_belief(batch: list[Prediction],
                                                                         outlier_ts: int) -> None:
    """Whatever a machine's predictions held, one dated beyond belief included, a believable
    prediction dated now replaces every older or unbelievable one."""
    store = Store(retention=RETENTION, clock=lambda: NOW)
    ingest = Ingest(TOPICS)
    try:
        machine = batch[0].machine_id
        skewed = msgspec.structs.replace(batch[0], ts=outlier_ts)
        store.write(ingest.batch(_messages({"predictions": [*batch, skewed]}, NOW), NOW))
        fresh = msgspec.structs.replace(batch[0], ts=NOW, seq=1, p_fail=0.123)
        store.write(ingest.batch(_messages({"predictions": [fresh]}, NOW), NOW))
        held = int(store.scalar("SELECT ts FROM machines WHERE machine_id = ?", [machine]))
        horizon = NOW + (RETENTION.max_future_ms or 0)
        assert held == max([NOW, *(p.ts for p in batch if p.machine_id == machine and p.ts <= horizon)])
    finally:
        store.close()


_header_names = st.sampled_from(["reason", "detail", "kind", "mqtt_topic", "origin", "kafka_topic", "truncated_from"])


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=64), st.lists(st.tuples(_header_names, st.binary(max_size=40)),
                                                           max_size=6)), min_size=1, max_size=8))
def test_dead_letters_with_any_headers_are_counted_or_skipped_never_raised(letters: list[Any]) -> None:
    store = Store(retention=RETENTION, clock=lambda: NOW)
    ingest = Ingest(TOPICS)
    try:
        messages = [FakeMessage(TOPICS.dlq, 0, n, None, value, headers, NOW)
                    for n, (value, headers) in enumerate(letters)]
        store.write(ingest.batch(messages, NOW))
        store.prune()
        counted = int(queries.dlq_by_reason(store)["n"].sum())
        assert counted + ingest.bad.get("dlq", 0) == len(letters)
        assert len(queries.dlq_samples(store, limit=100)) == counted
    finally:
        store.close()
