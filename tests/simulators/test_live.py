"""Live mode on the in-memory MQTT client: what is published where, and back-pressure."""

from __future__ import annotations

import threading
import time

from forewarn.contract import Decoder, MaintenanceEvent, Telemetry
from forewarn.testing import FakeMqtt, FakeMqttMessage
from simulators.fleet import FleetConfig
from simulators.live import MqttSink, Pacer, run_live
from simulators.messages import Outgoing

decoder = Decoder()


def test_live_publishes_gateway_batches_and_events_and_waits_for_every_ack() -> None:
    mqtt = FakeMqtt()
    config = FleetConfig(machines=6, sites=2, stagger=True, seed=4, mtbf_cycles=60, start_ms=1_767_225_600_000)
    summary = run_live(config, mqtt, qos=1, speed=0, ticks=30, delivery="batch", batch_size=5)
    assert summary.ticks == 30 and summary.unacked == 0
    assert summary.messages == len(mqtt.published) and all(m.qos == 1 for m in mqtt.published)
    batches = [m for m in mqtt.published if m.topic.endswith("/batch")]
    assert {m.topic for m in batches} == {"forewarn/site-01/gateway/gw-1/batch", "forewarn/site-02/gateway/gw-1/batch"}
    readings = [r for m in batches for r in decoder.batch(m.payload)[1]]
    assert len(readings) == summary.readings == summary.report.readings > 0
    assert len({(r.machine_id, r.seq) for r in readings}) == len(readings)
    events = [decoder.maintenance(m.payload) for m in mqtt.published if m.topic.endswith("/maintenance")]
    assert len(events) == summary.failures + summary.repairs > 0
    assert all(isinstance(e, MaintenanceEvent) for e in events)


def test_sink_blocks_at_max_pending_until_the_broker_acknowledges() -> None:
    mqtt = FakeMqtt()
    mqtt.auto_puback = False
    sink = MqttSink(mqtt, qos=1, max_pending=3)
    message = Outgoing("telemetry", "site-01", "site-01/pump-00001", b"{}", 0, 1)
    sent: list[int] = []

    def send_five() -> None:
        for i in range(5):
            sink.send(message)
            sent.append(i)

    sender = threading.Thread(target=send_five, daemon=True)
    sender.start()
    deadline = time.monotonic() + 5
    while len(mqtt.published) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(mqtt.published) == 3 and sink.unacked == 3 and len(sent) == 2  # the third send waits
    while sender.is_alive() and time.monotonic() < deadline:
        mqtt.puback()
        sender.join(0.05)
    assert not sender.is_alive() and len(mqtt.published) == 5
    mqtt.puback()
    assert sink.wait_acked(1.0) == 0


def test_acknowledgement_before_publish_returns_counts_as_acknowledged() -> None:
    mqtt = FakeMqtt()  # acknowledges inside publish(), as paho's network thread can
    sink = MqttSink(mqtt, qos=1)
    for _ in range(10):
        sink.send(Outgoing("maintenance", "site-01", "site-01/pump-00001", b"{}", 0, 0))
    assert sink.unacked == 0 and sink.wait_acked(0.0) == 0
    assert [m.topic for m in mqtt.published] == ["forewarn/site-01/pump-00001/maintenance"] * 10


def test_every_reading_of_a_run_carries_its_boot_and_events_have_unique_ids() -> None:
    mqtt = FakeMqtt()
    config = FleetConfig(machines=5, sites=2, stagger=True, seed=2, mtbf_cycles=60, start_ms=1_767_225_600_000,
                         run_id="boot-42")
    summary = run_live(config, mqtt, qos=1, speed=0, ticks=80, delivery="batch", batch_size=4, boot=42)
    readings = [r for m in mqtt.published if m.topic.endswith("/batch") for r in decoder.batch(m.payload)[1]]
    assert len(readings) == summary.readings > 0 and {r.boot for r in readings} == {42}
    events = [decoder.maintenance(m.payload) for m in mqtt.published if m.topic.endswith("/maintenance")]
    ids = [e.event_id for e in events if isinstance(e, MaintenanceEvent)]
    assert len(ids) == len(events) == summary.failures + summary.repairs > 0
    assert len(set(ids)) == len(ids) and all(i is not None and "/boot-42/" in i for i in ids)


class _Clocks(threading.Event):
    """A stop event whose wait moves a monotonic and a wall clock instead of sleeping."""

    def __init__(self, wall_s: float) -> None:
        super().__init__()
        self.mono = 0.0
        self.wall_s = wall_s
        self.waited: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        seconds = timeout or 0.0
        self.waited.append(seconds)
        self.mono += seconds
        self.wall_s += seconds
        return False  # not stopped


class _StampedMqtt(FakeMqtt):
    """Notes the wall clock at each publish."""

    def __init__(self, clocks: _Clocks) -> None:
        super().__init__()
        self.clocks = clocks
        self.stamped: list[tuple[float, FakeMqttMessage]] = []

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> FakeMqttMessage:
        message = super().publish(topic, payload, qos, retain)
        self.stamped.append((self.clocks.wall_s * 1000, message))
        return message


def test_the_simulated_clock_runs_at_speed_until_it_reaches_the_wall_clock_then_at_1x() -> None:
    period_ms = 60_000
    wall_start_ms = 1_767_225_600_000 + 10 * period_ms  # the run starts 10 periods behind the wall clock
    clocks = _Clocks(wall_start_ms / 1000)
    pacer = Pacer(period_ms / 1000 / 120, clocks, clock=lambda: clocks.mono, wall=lambda: clocks.wall_s)
    mqtt = _StampedMqtt(clocks)
    config = FleetConfig(asset_types=("pump",), machines=3, sites=1, seed=1, start_ms=1_767_225_600_000)
    summary = run_live(config, mqtt, qos=1, speed=120, ticks=20, stop=clocks, pacer=pacer)
    assert summary.ticks == 20
    stamps = [(now_ms, decoder.telemetry(m.payload)) for now_ms, m in mqtt.stamped]
    assert len(stamps) == summary.readings == 20 * 3
    assert all(isinstance(r, Telemetry) and r.ts <= now_ms for now_ms, r in stamps)  # never ahead of the wall clock
    fast = [w for w in clocks.waited if w < 1]
    slow = [w for w in clocks.waited if w >= 1]
    assert len(fast) >= 8 and len(slow) >= 8 and pacer.held  # caught up: one period per period
