"""What the broker's $SYS store counters mean to the bridge: gauges, one warning per crossing of
the warning share of a cap (re-armed below it), an error for every new drop."""

from __future__ import annotations

import logging

import pytest

from bridge.broker_watch import DROPPED, STORED_BYTES, STORED_MESSAGES, QueueCaps, StoreLevels
from bridge.metrics import BridgeMetrics
from forewarn.settings import StackSettings


def _levels() -> tuple[StoreLevels, BridgeMetrics]:
    metrics = BridgeMetrics()
    return StoreLevels(QueueCaps(messages=1000, bytes=10_000, warn_fraction=0.8), metrics), metrics


def _gauge(metrics: BridgeMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None
    return value


def test_store_count_warns_once_per_crossing_and_rearms_below(caplog: pytest.LogCaptureFixture) -> None:
    levels, metrics = _levels()
    with caplog.at_level(logging.WARNING, logger="bridge.broker_watch"):
        for count in (10, 500, 799):
            levels.observe(STORED_MESSAGES, b"%d" % count)
        assert caplog.records == [] and not levels.near_cap
        levels.observe(STORED_MESSAGES, b"800")
        levels.observe(STORED_MESSAGES, b"950")
        assert [r.levelno for r in caplog.records] == [logging.WARNING], "one warning for one crossing"
        assert "800 messages, 80% of its per-client cap of 1000" in caplog.text
        assert _gauge(metrics, "forewarn_bridge_mqtt_broker_queue_near_cap") == 1
        assert _gauge(metrics, "forewarn_bridge_mqtt_broker_stored_messages") == 950
        levels.observe(STORED_MESSAGES, b"719")  # below 90% of the threshold: back to normal
        levels.observe(STORED_MESSAGES, b"801")
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "the MQTT broker stores 800 messages", "the MQTT broker's store is back to 719 messages (cap 1000)",
        "the MQTT broker stores 801 messages"]


def test_bytes_have_their_own_cap_and_gauge(caplog: pytest.LogCaptureFixture) -> None:
    levels, metrics = _levels()
    with caplog.at_level(logging.WARNING, logger="bridge.broker_watch"):
        levels.observe(STORED_MESSAGES, b"5")
        levels.observe(STORED_BYTES, b"9000")
    assert "9000 bytes, 90% of its per-client cap of 10000 (max_queued_bytes)" in caplog.text
    assert _gauge(metrics, "forewarn_bridge_mqtt_broker_stored_bytes") == 9000
    assert levels.near_cap


def test_drops_are_errors_after_the_first_report(caplog: pytest.LogCaptureFixture) -> None:
    levels, metrics = _levels()
    with caplog.at_level(logging.WARNING, logger="bridge.broker_watch"):
        levels.observe(DROPPED, b"0")
        levels.observe(DROPPED, b"0")
        assert caplog.records == []
        levels.observe(DROPPED, b"25")
        levels.observe(DROPPED, b"25")
    assert [(r.levelno, r.getMessage().split(":")[0]) for r in caplog.records] == [
        (logging.ERROR, "the MQTT broker dropped 25 messages (25 since it started)")]
    assert _gauge(metrics, "forewarn_bridge_mqtt_broker_dropped_messages") == 25


def test_drops_before_the_watch_started_are_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    levels, _metrics = _levels()
    with caplog.at_level(logging.WARNING, logger="bridge.broker_watch"):
        levels.observe(DROPPED, b"7")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "dropped 7 messages since it started" in caplog.text


@pytest.mark.parametrize("payload", [b"", b"n/a", b"1.5", b"\xff"])
def test_values_that_are_not_integers_are_ignored(payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    levels, metrics = _levels()
    with caplog.at_level(logging.WARNING, logger="bridge.broker_watch"):
        levels.observe(STORED_MESSAGES, payload)
        levels.observe("$SYS/broker/uptime", b"12 seconds")
    assert caplog.records == []
    assert _gauge(metrics, "forewarn_bridge_mqtt_broker_stored_messages") == 0


def test_caps_come_from_the_stack_settings() -> None:
    caps = QueueCaps.from_stack(StackSettings(max_queued_messages=10, max_queued_bytes=20, queue_warn_fraction=0.5))
    assert caps == QueueCaps(10, 20, 0.5)
