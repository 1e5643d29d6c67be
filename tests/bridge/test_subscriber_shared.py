"""Shared subscriptions on brokers without them: detected (MQTT 5 signals, a probe on 3.1.1),
then the bridge subscribes plainly and says so, instead of receiving nothing."""

from __future__ import annotations

import logging

import pytest

from bridge._mqtt_shared import LACKS_SHARED, probe_topic
from bridge._subscriber import Subscriber
from forewarn.errors import MqttError
from tests.bridge.fakes import MOSQUITTO_311_LIKE, MiniBroker, Profile, mqtt_settings, read_until, wait_for

SHARED = ["$share/g/forewarn/+/+/telemetry", "$share/g/forewarn/+/+/maintenance"]
PLAIN = ["forewarn/+/+/telemetry", "forewarn/+/+/maintenance"]
V311 = frozenset({4})


def run(profile: Profile, caplog: pytest.LogCaptureFixture, **options: object) -> tuple[MiniBroker, list[bytes]]:
    """Subscribe the shared filters, publish one message, return what arrived."""
    broker = MiniBroker(profile)
    sub = Subscriber(mqtt_settings(broker.port), "b", session_expiry_s=60, probe_timeout_s=0.5,
                     **options)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="bridge._subscriber"):
        sub.connect()
        sub.subscribe(SHARED)
        assert wait_for(lambda: sub.read(10) == [] and sub.subscribed)
        broker.publish("forewarn/s/m/telemetry", b"{}")
        got = [p for _t, p, _q, _m in read_until(sub, 1, timeout_s=2)]
    sub.disconnect()
    broker.close()
    assert not broker.errors
    return broker, got


def main_subscriptions(broker: MiniBroker) -> list[str]:
    return [f for cid, filters in broker.subscribes if cid == "b" for f in filters]


def warned(caplog: pytest.LogCaptureFixture) -> bool:
    return any(LACKS_SHARED in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_mqtt_5_connack_without_shared_subscriptions(caplog: pytest.LogCaptureFixture) -> None:
    broker, got = run(Profile(shared_subscriptions=False, connack_properties=b"\x2a\x00"), caplog)
    assert got == [b"{}"] and main_subscriptions(broker) == PLAIN and warned(caplog)


def test_mqtt_5_suback_0x9e_resubscribes_plainly(caplog: pytest.LogCaptureFixture) -> None:
    broker, got = run(Profile(shared_subscriptions=False), caplog)
    assert got == [b"{}"] and main_subscriptions(broker) == SHARED + PLAIN and warned(caplog)


def test_mqtt_3_1_1_probe_finds_no_shared_subscriptions(caplog: pytest.LogCaptureFixture) -> None:
    broker, got = run(MOSQUITTO_311_LIKE, caplog)
    assert got == [b"{}"] and main_subscriptions(broker) == PLAIN and warned(caplog)
    assert ("b-probe", probe_topic("b")) in broker.published
    assert ("b", SHARED) in broker.unsubscribes  # what an earlier run's session may hold


def test_mqtt_3_1_1_probe_finds_shared_subscriptions(caplog: pytest.LogCaptureFixture) -> None:
    broker, got = run(Profile(versions=V311, refuse_v5="connack_0x01"), caplog)
    assert got == [b"{}"] and main_subscriptions(broker) == SHARED and not warned(caplog)
    assert ("b-probe", probe_topic("b")) in broker.published


def test_off_subscribes_plainly_without_probing(caplog: pytest.LogCaptureFixture) -> None:
    broker, got = run(Profile(versions=V311, refuse_v5="connack_0x01"), caplog, shared_subscriptions="off")
    assert got == [b"{}"] and main_subscriptions(broker) == PLAIN and not warned(caplog)
    assert [cid for _level, cid in broker.connects if cid] == ["b"]


def test_on_refuses_a_broker_that_says_it_lacks_them() -> None:
    broker = MiniBroker(Profile(shared_subscriptions=False, connack_properties=b"\x2a\x00"))
    sub = Subscriber(mqtt_settings(broker.port), "b", shared_subscriptions="on")
    sub.subscribe(SHARED)
    with pytest.raises(MqttError, match="lacks shared subscriptions"):
        sub.connect()
    broker.close()


def test_the_probe_topic_is_one_level_no_inbound_filter_routes() -> None:
    assert probe_topic("a/b+c#d") == "forewarn/$probe/a_b_c_d"


def test_filters_subscribed_before_connect_are_probed_before_the_session_resumes() -> None:
    broker = MiniBroker(MOSQUITTO_311_LIKE)
    sub = Subscriber(mqtt_settings(broker.port), "b", session_expiry_s=60, probe_timeout_s=0.3)
    sub.subscribe(SHARED)
    sub.connect()
    assert wait_for(lambda: sub.read(10) == [] and sub.subscribed)
    sub.disconnect()
    broker.close()
    assert [(level, cid) for level, cid in broker.connects] == [(5, ""), (4, "b-probe"), (4, "b")]
    assert main_subscriptions(broker) == PLAIN
