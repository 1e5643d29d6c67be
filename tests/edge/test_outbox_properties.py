"""Hypothesis: contract-valid readings with extreme values — seq and boot up to 2**63-1, event
times across the contract's bounds, magnitudes up to 1e15, 256 sensors, odd unicode machine
ids — go through the edge's outbox (written, read back, forwarded by the real Forwarder to the
in-memory Kafka) without raising, and every row comes back byte-identical; and through the
whole gateway (router, scoring engine, commit, forwarding): every message is acknowledged,
every reading reaches Kafka or the dead-letter topic, nothing raises."""

from __future__ import annotations

import itertools
import time

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.buffer import Buffer, BufferRecord
from edge.forwarder import Forwarder
from edge.gateway import EdgeGateway
from edge.metrics import EdgeMetrics
from forewarn.contract import (
    SCHEMA_VERSION,
    SEQ_MAX,
    TS_MAX_MS,
    TS_MIN_MS,
    VALUE_MAX,
    DecodeLimits,
    Decoder,
    Telemetry,
    encode,
)
from forewarn.settings import TopicSettings
from forewarn.testing import FakeMqtt, FakeProducer, InMemoryKafka
from forewarn.topics import Topics, telemetry_topic
from tests.edge.helpers import FEATURES, WINDOW, run_until, seeded

_ANY_TIME = Decoder(DecodeLimits(max_future_ms=None))  # the contract's fixed bounds only

# Any code point but surrogates, NUL included; a name part of a machine id has no '/', '#',
# '+' or whitespace (the contract's pattern).
_characters = st.characters(exclude_categories=["Cs"])
_part = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/#+"), min_size=1,
                max_size=99).filter(lambda s: not any(c.isspace() for c in s))
_counter = st.one_of(st.integers(0, 1000), st.integers(SEQ_MAX - 1000, SEQ_MAX), st.integers(0, SEQ_MAX))
_value = st.one_of(st.floats(-VALUE_MAX, VALUE_MAX, allow_nan=False, allow_infinity=False),
                   st.sampled_from([VALUE_MAX, -VALUE_MAX, 0.0, -0.0, 5e-324, 1e-300]))
_key = st.text(_characters, min_size=1, max_size=12)


@st.composite
def _sensors(draw: st.DrawFn) -> dict[str, float]:
    n = draw(st.sampled_from([1, 2, 8, 255, 256]))
    keys = [*FEATURES, *(f"s{i}" for i in range(n))][:n]
    if draw(st.booleans()):
        keys = [*keys[:-1], draw(_key.filter(lambda k: k not in keys))]
    values = draw(st.lists(_value, min_size=n, max_size=n))
    return dict(zip(keys, values, strict=True))


_contract_ts = st.integers(TS_MIN_MS, TS_MAX_MS)


@st.composite
def readings(draw: st.DrawFn, ts: st.SearchStrategy[int] = _contract_ts,
             machine: st.SearchStrategy[str] | None = None) -> Telemetry:
    machine_id = draw(machine) if machine is not None else f"{draw(_part)}/{draw(_part)}"
    reading = Telemetry(SCHEMA_VERSION, machine_id, draw(st.sampled_from(["pump", "pümp-ø", "x" * 100])),
                        draw(ts), draw(_counter), draw(_sensors()),
                        draw(st.one_of(st.just({}), st.dictionaries(_key, _value, max_size=3))),
                        draw(st.one_of(st.none(), _counter)))
    decoded = _ANY_TIME.telemetry(encode(reading), arrived_ms=TS_MAX_MS)
    assert isinstance(decoded, Telemetry), decoded  # the strategy makes contract-valid readings only
    return reading


def _row(reading: Telemetry, i: int) -> BufferRecord:
    return BufferRecord("telemetry", encode(reading), reading.machine_id.encode(),
                        (("ingest_ts", str(i).encode()), ("mqtt_topic", telemetry_topic(reading.machine_id).encode())),
                        reading.ts)


@given(st.lists(readings(), min_size=1, max_size=12))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_extreme_readings_come_back_from_the_outbox_and_kafka_byte_identical(
        tmp_path_factory: pytest.TempPathFactory, batch: list[Telemetry]) -> None:
    path = tmp_path_factory.mktemp("outbox") / "outbox.db"
    rows = [_row(r, i) for i, r in enumerate(batch)]
    with Buffer(path) as box:
        box.put_many(rows)
    with Buffer(path) as box:  # from the file, not from memory
        assert [s.record for s in box.peek(len(rows) + 1)] == rows
        kafka = InMemoryKafka()
        topics = Topics.from_settings(TopicSettings())
        forwarder = Forwarder(box, FakeProducer(kafka), topics, EdgeMetrics())
        assert forwarder.drain(10.0) == 0
        assert len(box) == 0 and box.bytes == 0
    sent = sorted(kafka.messages(topics.telemetry), key=lambda m: int(dict(m.headers() or [])["ingest_ts"]))
    assert [(m.key(), m.value(), tuple(m.headers() or ()), m.timestamp()[1]) for m in sent] == \
        [(r.key, r.value, r.headers, r.ts) for r in rows]
    assert [msgspec.json.decode(m.value() or b"", type=Telemetry) for m in sent] == batch


_now_ms = int(time.time() * 1000)
# MQTT topics may not hold U+0000 (the bridge refuses such a packet as malformed), so the
# gateway's machine ids leave it out; event times span the fixed bounds and the arrival bound.
_mqtt_part = _part.filter(lambda s: "\x00" not in s)
_edge_ts = st.one_of(st.integers(TS_MIN_MS, TS_MAX_MS), st.integers(_now_ms - 86_400_000, _now_ms + 600_000))


_mqtt_id = st.builds(lambda a, b: f"{a}/{b}", _mqtt_part, _mqtt_part)


@st.composite
def series(draw: st.DrawFn) -> list[Telemetry]:
    """Consecutive readings of one pump with extreme values, its seq ending at most at 2**63-1:
    windows fill and the model scores them."""
    n = 2 * WINDOW
    start = draw(st.one_of(st.integers(0, 100), st.integers(SEQ_MAX - 100, SEQ_MAX - n + 1)))
    machine_id, boot = draw(_mqtt_id), draw(st.one_of(st.none(), _counter))
    values = draw(st.lists(st.tuples(_value, _value), min_size=n, max_size=n))
    return [Telemetry(SCHEMA_VERSION, machine_id, "pump", _now_ms - 60_000 + i * 1000, start + i,
                      dict(zip(FEATURES, values[i], strict=True)), {}, boot) for i in range(n)]


@given(st.lists(readings(_edge_ts, _mqtt_id), max_size=8), st.lists(series(), max_size=2), st.integers(0, 2))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                   HealthCheck.function_scoped_fixture])
def test_extreme_readings_through_the_gateway_never_raise_and_are_all_accounted_for(
        tmp_path_factory: pytest.TempPathFactory, batch: list[Telemetry], runs: list[list[Telemetry]],
        repeats: int) -> None:
    base = tmp_path_factory.mktemp("edge")
    kafka, mqtt = InMemoryKafka(), FakeMqtt()
    # repeats make duplicates; the series fill windows that the pump model scores
    readings_in = [*batch, *itertools.chain.from_iterable(runs)]
    messages = [(telemetry_topic(r.machine_id), encode(r)) for r in readings_in for _ in range(repeats + 1)]
    with EdgeGateway(seeded(base, shutdown_timeout_s=5.0), mqtt=mqtt, producer=FakeProducer(kafka)) as gw:
        mids = [mqtt.deliver(t, p).mid for t, p in messages]
        run_until(gw, lambda: mqtt.acks == mids)
    assert gw.buffer is not None
    telemetry = kafka.messages(gw.topics.telemetry)
    letters = kafka.messages(gw.topics.dlq)
    assert len(telemetry) + len(letters) == len(messages)
    assert sorted(m.value() or b"" for m in itertools.chain(telemetry, letters)) == sorted(p for _, p in messages)
    for letter in letters:
        assert dict(letter.headers() or [])["reason"] == b"ts_out_of_range"
    predicted = {(p["machine_id"], p["seq"]) for p in (msgspec.json.decode(m.value() or b"")
                                                        for m in kafka.messages(gw.topics.predictions))}
    others = {r.machine_id for r in batch}
    for run in runs:  # a series no other reading shares its machine with is scored from its window on
        if run[0].machine_id not in others and [r[0].machine_id for r in runs].count(run[0].machine_id) == 1:
            assert {(r.machine_id, r.seq) for r in run[WINDOW - 1:]} <= predicted
