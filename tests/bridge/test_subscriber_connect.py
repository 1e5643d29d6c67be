"""Connecting to brokers that are not Mosquitto 2: every way a 3.1.1-only broker refuses MQTT 5,
a slow CONNACK, reconnect backoff, a connection reset under an acknowledgement."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from bridge._subscriber import Subscriber
from forewarn.errors import MqttError
from tests.bridge.fakes import (
    AEDES_LIKE,
    MOSQUITTO_311_LIKE,
    MiniBroker,
    Profile,
    WireBroker,
    mqtt_settings,
    read_packet,
    read_until,
    reconnected,
    wait_for,
)


@pytest.mark.parametrize("profile", [
    MOSQUITTO_311_LIKE,  # CONNACK with 3.1.1 return code 1
    Profile(versions=frozenset({4}), refuse_v5="connack_0x84", shared_subscriptions=False),
    AEDES_LIKE,  # closes the socket before any CONNACK
    Profile(versions=frozenset({4}), refuse_v5="reset", shared_subscriptions=False),
], ids=["connack-0x01", "connack-0x84", "close", "reset"])
def test_auto_falls_back_to_3_1_1_on_every_refusal_and_says_so_once(
        profile: Profile, caplog: pytest.LogCaptureFixture) -> None:
    broker = MiniBroker(profile)
    sub = Subscriber(mqtt_settings(broker.port), "b", session_expiry_s=60)
    with caplog.at_level(logging.WARNING, logger="bridge._subscriber"):
        sub.connect()
        sub.subscribe(["forewarn/+/+/telemetry"])
        assert wait_for(lambda: broker.subscribes)
        broker.publish("forewarn/s/m/telemetry", b"{}")
        got = read_until(sub, 1)
        broker.send_raw("b", b"\xe0\x00")  # the broker drops us: the reconnect goes straight to 3.1.1
        assert wait_for(lambda: (sub.read(1), len(broker.connects) >= 3)[1])
    sub.disconnect()
    broker.close()
    assert [level for level, _cid in broker.connects] == [5, 4, 4]
    assert got == [("forewarn/s/m/telemetry", b"{}", 1, 1)] and sub.protocol == "3.1.1"
    downgrades = [r for r in caplog.records if "refused MQTT 5" in r.getMessage()]
    assert len(downgrades) == 1 and downgrades[0].levelno == logging.WARNING


def test_a_3_1_1_attempt_that_fails_the_same_way_is_a_connection_failure() -> None:
    broker = MiniBroker(Profile(versions=frozenset(), refuse_v5="close"))
    sub = Subscriber(mqtt_settings(broker.port), "b")
    with pytest.raises(MqttError, match="closed the connection before CONNACK"):
        sub.connect()
    broker.close()
    assert [level for level, _cid in broker.connects] == [5, 4]


def test_a_slow_connack_is_not_a_refusal_of_mqtt_5() -> None:
    versions: list[int] = []

    def script(conn: socket.socket, _n: int) -> None:
        _first, body = read_packet(conn)
        versions.append(body[6])
        time.sleep(1.5)  # longer than the subscriber waits for CONNACK

    broker = WireBroker(script)
    sub = Subscriber(mqtt_settings(broker.port), "b")
    with pytest.raises(MqttError, match="no CONNACK") as raised:
        sub._wanted = True
        sub._open(timeout_s=0.3)
    broker.close()
    assert versions == [5] and raised.value.reason_code is None and sub.protocol == "5"


def test_backoff_grows_while_connections_die_young_and_resets_after_a_stable_one() -> None:
    broker = MiniBroker()
    sub = Subscriber(mqtt_settings(broker.port, reconnect_min_s=0.05, reconnect_max_s=0.4), "b")
    sub.connect()
    delays = []
    for _ in range(4):
        sub._lost("test drop")
        delays.append(sub._delay)
        assert reconnected(sub)
    sub._connected_at -= 31  # as if this connection had been up for longer than the stable period
    sub._lost("test drop")
    delays.append(sub._delay)
    sub.disconnect()
    broker.close()
    assert delays == [0.1, 0.2, 0.4, 0.4, 0.05]


def test_a_reset_while_acknowledging_reconnects_and_the_broker_sends_again() -> None:
    broker = MiniBroker()
    sub = Subscriber(mqtt_settings(broker.port), "b")
    sub.connect()
    sub.subscribe(["a/#"])
    assert wait_for(lambda: broker.subscribes)
    broker.publish("a/b", b"x")
    (message,) = read_until(sub, 1)
    assert sub._sock is not None
    sub._sock.close()  # what a reset leaves: writing raises OSError
    sub.ack_many([message[3]])  # must not raise
    assert not sub.is_connected
    assert reconnected(sub)
    sub.disconnect()
    broker.close()
    assert broker.pubacks == [] and [level for level, _cid in broker.connects] == [5, 5]
