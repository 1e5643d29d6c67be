"""Protocol points of the MQTT 3.1.1 and 5 specifications the subscriber must honour: SUBACK
codes, the broker's Server Keep Alive, malformed PUBLISH packets (QoS bits 3, topics that are not
well-formed UTF-8)."""

from __future__ import annotations

import time

import pytest

from bridge._subscriber import Subscriber
from forewarn.errors import MqttError
from tests.bridge.fakes import MiniBroker, Profile, mqtt_settings, publish, read_until, reconnected, wait_for


def subscribed(broker: MiniBroker, client_id: str = "b", **settings: object) -> Subscriber:
    sub = Subscriber(mqtt_settings(broker.port, **settings), client_id)
    sub.connect()
    sub.subscribe(["a/#", "c/+"])
    assert wait_for(lambda: broker.subscribes)
    return sub


@pytest.mark.parametrize(("grant", "match"), [
    (lambda f, q: 0x87 if f == "c/+" else q, "refused the subscription to c/\\+ \\(reason 0x87\\)"),
    (lambda f, q: 0x80 if f == "c/+" else q, "refused the subscription to c/\\+ \\(reason 0x80\\)"),
    (lambda f, q: 0, "granted a lower QoS than asked to a/# \\(QoS 0\\), c/\\+ \\(QoS 0\\)"),
], ids=["v5-not-authorized", "3.1.1-failure", "qos0"])
def test_a_refused_or_downgraded_subscription_raises_from_read(grant: object, match: str) -> None:
    broker = MiniBroker(Profile(grant=grant))  # type: ignore[arg-type]
    sub = subscribed(broker)
    deadline = time.monotonic() + 5
    with pytest.raises(MqttError, match=match):
        while time.monotonic() < deadline:
            sub.read(10)
            sub.wait_readable(0.01)
    sub.disconnect()
    broker.close()


def test_the_brokers_server_keep_alive_replaces_ours() -> None:
    broker = MiniBroker(Profile(connack_properties=b"\x13\x00\x07"))  # Server Keep Alive 7 s
    sub = subscribed(broker, keepalive_s=60)
    assert sub._keepalive_s == 7
    sub._last_sent -= 4  # more than half of 7 s, much less than half of 60 s
    sub.housekeeping()
    assert sub._ping_since is not None  # a PINGREQ went out
    assert wait_for(lambda: (sub.read(1), sub._ping_since is None)[1])  # and its PINGRESP came back
    sub.disconnect()
    broker.close()


@pytest.mark.parametrize("bad", [
    publish("a/b", b"x", 1, qos=3),
    publish(b"a/\xc0\xaf", b"x", 1),  # an overlong encoding of "/"
    publish(b"a/\xed\xa0\x80", b"x", 1),  # a UTF-16 surrogate
    publish(b"a/\x00", b"x", 1),
], ids=["qos3", "overlong", "surrogate", "nul"])
def test_a_malformed_publish_disconnects_with_0x81_is_counted_and_the_stream_goes_on(bad: bytes) -> None:
    broker = MiniBroker()
    sub = subscribed(broker)
    broker.send_raw("b", bad)
    assert wait_for(lambda: (sub.read(10), sub.malformed == 1)[1])
    assert not sub.is_connected
    assert reconnected(sub)
    assert wait_for(lambda: len(broker.subscribes) == 2)
    broker.publish("a/b", b"ok")
    got = read_until(sub, 1)
    sub.disconnect()
    broker.close()
    assert [p for _t, p, _q, _m in got] == [b"ok"]
    assert broker.disconnect_reasons[0] == 0x81
