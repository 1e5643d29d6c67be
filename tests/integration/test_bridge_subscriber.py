"""The bridge's own MQTT subscriber against real brokers (Mosquitto, aedes, Moquette, HiveMQ): offline-session
drain, manual PUBACKs, TCP backpressure (nothing is read that was not asked for), MQTT 3.1.1 and 5,
and protocol "auto" against brokers that speak only 3.1.1 and know no shared subscriptions, and
against one that speaks MQTT 5 with shared subscriptions (HiveMQ)."""

from __future__ import annotations

import time
import uuid

import pytest

from bridge._subscriber import _CHUNK, Subscriber
from tests.bridge.helpers import publish_all
from tests.brokers import MOQUETTE_LOSES_AT_DISCONNECT, MqttBrokerUnderTest

pytestmark = pytest.mark.integration  # real MQTT brokers

N = 20_000


def _drain(sub: Subscriber, expect: int, timeout_s: float = 60.0, ack: bool = True) -> list[bytes]:
    payloads: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(payloads) < expect and time.monotonic() < deadline:
        got = sub.read(min(1000, expect - len(payloads)))
        payloads.extend(p for _t, p, _q, _m in got)
        if ack:
            sub.ack_many([m for _t, _p, q, m in got if q])
        if not got:
            sub.wait_readable(0.05)
    return payloads


def _until_subscribed(sub: Subscriber, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not sub.subscribed:
        assert time.monotonic() < deadline, "no SUBACK"
        assert sub.read(10) == [], "nothing was published yet"
        sub.wait_readable(0.05)


@pytest.mark.parametrize(("mqtt_broker", "protocol"), [
    # Aedes and Moquette speak only 3.1.1: "auto" falls back to it, so their explicit 3.1.1 rows
    # would repeat the same session on the same protocol (they cost 80 s of make test).
    ("mosquitto", "5"), ("mosquitto", "3.1.1"),
    ("aedes", "auto"),
    pytest.param("moquette", "auto", marks=MOQUETTE_LOSES_AT_DISCONNECT),
    ("hivemq", "auto"), ("hivemq", "3.1.1"),
], indirect=["mqtt_broker"])
def test_offline_session_drains_with_backpressure_and_manual_acks(mqtt_broker: MqttBrokerUnderTest,
                                                                   protocol: str) -> None:
    mqtt = mqtt_broker.mqtt_settings.model_copy(update={"protocol": protocol})
    client_id, topic = f"sub-{uuid.uuid4().hex[:6]}", f"sub-test/{uuid.uuid4().hex[:6]}"
    filters = [f"$share/g{client_id}/{topic}/+"]
    first = Subscriber(mqtt, client_id, session_expiry_s=600, receive_maximum=100)
    first.connect()
    # "auto" speaks MQTT 5 where the broker does (HiveMQ), 3.1.1 where it speaks nothing else.
    assert first.protocol == (protocol if protocol != "auto" else "5" if "5" in mqtt_broker.protocols else "3.1.1")
    first.subscribe(filters)
    _until_subscribed(first)  # else a broker may drop a SUBSCRIBE that a DISCONNECT follows (Moquette)
    first.disconnect()
    publish_all(mqtt, [(f"{topic}/{i % 10}", b"%d" % i) for i in range(N)])

    sub = Subscriber(mqtt, client_id, session_expiry_s=600, receive_maximum=100)
    sub.connect()
    sub.subscribe(filters)
    head = _drain(sub, 50, ack=False)
    time.sleep(1.0)  # the broker keeps sending; nobody reads: TCP holds it, not our memory
    for _ in range(5):
        sub.housekeeping()
    assert len(sub._buf) <= _CHUNK + 64 and sub.is_connected
    # Not acknowledged: a new connection gets them again (same session).
    sub.disconnect()
    sub = Subscriber(mqtt, client_id, session_expiry_s=600, receive_maximum=100)
    sub.connect()
    sub.subscribe(filters)
    payloads = _drain(sub, N)
    sub.disconnect()
    assert len(head) == 50
    assert sorted(int(p) for p in payloads) == list(range(N)), "every message once, after the redelivery"
    # Everything was acknowledged: nothing is left in the session.
    again = Subscriber(mqtt, client_id, clean_start=True)
    again.connect()
    again.subscribe(filters)
    assert _drain(again, 1, timeout_s=1.0) == []
    again.disconnect()
