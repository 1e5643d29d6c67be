"""Protocol points of the MQTT 3.1.1 and 5 specifications the subscriber must honour: SUBACK
codes, the broker's Server Keep Alive, malformed PUBLISH packets (QoS bits 3, topics that are not
well-formed UTF-8), packets over the size limit."""

from __future__ import annotations

import socket
import time

import pytest

from bridge._subscriber import Oversized, Subscriber
from forewarn.contract import Reason
from forewarn.errors import MqttError
from tests.bridge.fakes import (
    MiniBroker,
    Profile,
    WireBroker,
    mqtt_settings,
    packet,
    publish,
    read_packet,
    read_until,
    reconnected,
    wait_for,
)


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


def test_an_oversized_publish_is_discarded_streaming_and_handed_on_as_too_large_in_order() -> None:
    big = bytes(range(256)) * (3 * 1024 * 1024 // 256)  # 3 MiB, far over the 64 KiB limit below
    seen: dict[str, bytes] = {}
    stream = publish("forewarn/s/m1/telemetry", big, 5) + publish("forewarn/s/m2/telemetry", b"{}", 6)

    def script(conn: socket.socket, _n: int) -> None:
        seen["connect"] = read_packet(conn)[1]
        conn.sendall(packet(0x20, b"\x00\x00\x00"))
        for i in range(0, len(stream), 50_000):
            conn.sendall(stream[i:i + 50_000])
        seen["puback"] = read_packet(conn)[1] + read_packet(conn)[1]

    broker = WireBroker(script)
    sub = Subscriber(mqtt_settings(broker.port), "b", max_packet_bytes=64 * 1024, announce_max_packet=True)
    sub.connect()
    got: list[tuple[str, bytes, int, int]] = []
    largest = 0
    deadline = time.monotonic() + 10
    while len(got) < 2 and time.monotonic() < deadline:
        got.extend(sub.read(10))
        largest = max(largest, len(sub._buf) + sub._chunked)
        sub.wait_readable(0.01)
    sub.ack_many([m for _t, _p, _q, m in got])
    assert wait_for(lambda: "puback" in seen)
    sub.disconnect()
    broker.close()
    (topic, head, qos, mid), second = got
    assert (topic, qos, mid) == ("forewarn/s/m1/telemetry", 1, 5) and second[1:] == (b"{}", 1, 6)
    assert isinstance(head, Oversized) and head.size == len(big) + len(topic) + 5 and head == big[:len(head)]
    assert head.rejected().reason is Reason.TOO_LARGE
    assert largest < 512 * 1024, "the oversized packet was never held whole"
    assert seen["puback"] == b"\x00\x05\x00\x06" and sub.oversized == 1
    assert b"\x27\x00\x01\x00\x00" in seen["connect"]  # Maximum Packet Size announced on request


def test_a_large_packet_within_the_limit_arrives_whole_across_many_reads() -> None:
    big = b"y" * (2 * 1024 * 1024)

    def script(conn: socket.socket, _n: int) -> None:
        read_packet(conn)
        conn.sendall(packet(0x20, b"\x00\x00\x00"))
        data = publish("a/b", big, 1)
        for i in range(0, len(data), 4096):
            conn.sendall(data[i:i + 4096])
        time.sleep(1)

    broker = WireBroker(script)
    sub = Subscriber(mqtt_settings(broker.port), "b")
    sub.connect()
    got = read_until(sub, 1, timeout_s=10)
    sub.disconnect()
    broker.close()
    assert len(got) == 1 and got[0][1] == big and not isinstance(got[0][1], Oversized)
    assert b"\x27" not in Subscriber(mqtt_settings(1), "b")._connect_packet(True)  # not announced by default
