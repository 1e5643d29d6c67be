"""The bridge's lean MQTT subscriber against a scripted broker on a real TCP socket.

The broker side here is a few lines of MQTT written out byte by byte, so the tests pin the wire
format: CONNECT fields, PUBLISH parsing (MQTT 5 properties, long remaining lengths, packets
split across reads), one write of PUBACKs, the 3.1.1 fallback, reconnects. Real Mosquitto runs
in ``tests/integration/test_bridge_subscriber.py``.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest
from pydantic import SecretStr

from bridge._subscriber import Subscriber
from forewarn.errors import MqttError
from tests.bridge.fakes import WireBroker as Broker
from tests.bridge.fakes import mqtt_settings as settings
from tests.bridge.fakes import packet, publish, read_packet, read_until, string


def connack(conn: socket.socket, v5: bool = True, session_present: bool = True, code: int = 0) -> None:
    conn.sendall(packet(0x20, bytes([int(session_present), code]) + (b"\x00" if v5 else b"")))


def suback(conn: socket.socket, v5: bool = True) -> int:
    first, body = read_packet(conn)
    assert first == 0x82
    mid: int = struct.unpack("!H", body[:2])[0]
    conn.sendall(packet(0x90, struct.pack("!H", mid) + (b"\x00" if v5 else b"") + b"\x01"))
    return mid


def test_connect_fields_publish_parsing_and_one_write_of_pubacks() -> None:
    seen: dict[str, Any] = {}
    big = b"x" * 300_000  # a 3-byte remaining length
    messages = [publish("forewarn/s/m1/telemetry", b"one", 7),
                publish("forewarn/s/m2/telemetry", b"two", 8, props=b"\x01\x01"),  # payload format indicator
                publish("forewarn/s/m3/telemetry", big, 9),
                publish("forewarn/s/m4/telemetry", b"qos0", 0, qos=0)]
    stream = b"".join(messages)

    def script(conn: socket.socket, _n: int) -> None:
        first, body = read_packet(conn)
        seen["connect"] = (first, body)
        connack(conn)
        seen["subscribe_mid"] = suback(conn)
        for i in range(0, len(stream), 1000):  # split anywhere, even inside a header
            conn.sendall(stream[i:i + 1000])
        seen["puback"] = conn.recv(64)

    broker = Broker(script)
    sub = Subscriber(settings(broker.port, username="u", password=SecretStr("p")), "bridge-1",
                     session_expiry_s=3600, receive_maximum=500)
    connected: list[bool] = []
    sub.on_connected = connected.append
    sub.connect()
    sub.subscribe(["$share/g/forewarn/+/+/telemetry"], qos=1)
    got = read_until(sub, 4)
    assert [(t, len(p), q, m) for t, p, q, m in got] == [
        ("forewarn/s/m1/telemetry", 3, 1, 7), ("forewarn/s/m2/telemetry", 3, 1, 8),
        ("forewarn/s/m3/telemetry", 300_000, 1, 9), ("forewarn/s/m4/telemetry", 4, 0, 0)]
    assert got[1][1] == b"two" and got[2][1] == big
    sub.ack_many([7, 8, 9])
    deadline = time.monotonic() + 5
    while "puback" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    sub.disconnect()
    broker.close()
    assert seen["puback"] == b"\x40\x02\x00\x07\x40\x02\x00\x08\x40\x02\x00\x09"
    first, body = seen["connect"]
    assert first == 0x10 and body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0xC0  # username + password, clean start off
    props = body[11:11 + body[10]]
    assert props == b"\x11\x00\x00\x0e\x10\x21\x01\xf4"  # session expiry 3600, receive maximum 500
    assert body[11 + body[10]:] == string("bridge-1") + string("u") + string("p")
    assert connected == [True] and not broker.errors


def test_read_respects_its_limit_and_keeps_the_rest() -> None:
    def script(conn: socket.socket, _n: int) -> None:
        read_packet(conn)
        connack(conn)
        suback(conn)
        conn.sendall(b"".join(publish(f"t/{i}", b"p", i + 1) for i in range(10)))
        time.sleep(2)

    broker = Broker(script)
    sub = Subscriber(settings(broker.port), "b")
    sub.connect()
    sub.subscribe(["t/#"])
    first = read_until(sub, 3)
    rest = read_until(sub, 7)
    sub.disconnect()
    broker.close()
    assert [m for _t, _p, _q, m in first] == [1, 2, 3]
    assert [m for _t, _p, _q, m in rest] == list(range(4, 11))


def test_falls_back_to_3_1_1_when_mqtt_5_is_refused() -> None:
    versions: list[int] = []

    def script(conn: socket.socket, n: int) -> None:
        _first, body = read_packet(conn)
        versions.append(body[6])
        if n == 0:
            conn.sendall(packet(0x20, b"\x00\x01"))  # 3.1.1 "unacceptable protocol version"
            conn.close()
            return
        connack(conn, v5=False, session_present=False)
        suback(conn, v5=False)
        conn.sendall(publish("forewarn/s/m/telemetry", b"{}", 3, v5=False))
        time.sleep(1)

    broker = Broker(script)
    sub = Subscriber(settings(broker.port), "b")
    sub.connect()
    sub.subscribe(["forewarn/+/+/telemetry"])
    got = read_until(sub, 1)
    sub.disconnect()
    broker.close()
    assert versions == [5, 4] and sub.protocol == "3.1.1"
    assert got == [("forewarn/s/m/telemetry", b"{}", 1, 3)]


def test_refused_connection_raises() -> None:
    def script(conn: socket.socket, _n: int) -> None:
        read_packet(conn)
        conn.sendall(packet(0x20, b"\x00\x87\x00"))  # not authorized

    broker = Broker(script)
    sub = Subscriber(settings(broker.port), "b")
    with pytest.raises(MqttError) as raised:
        sub.connect()
    broker.close()
    assert raised.value.reason_code == 0x87


def test_reconnects_and_resubscribes_after_the_broker_drops_the_connection() -> None:
    subscribes: list[int] = []

    def script(conn: socket.socket, n: int) -> None:
        read_packet(conn)
        connack(conn, session_present=n > 0)
        subscribes.append(suback(conn))
        conn.sendall(publish("a/b", b"%d" % n, 1))  # the same id again: a redelivery
        if n == 0:
            conn.close()
            return
        time.sleep(2)

    broker = Broker(script)
    sub = Subscriber(settings(broker.port), "b")
    connected: list[bool] = []
    sub.on_connected = connected.append
    sub.connect()
    sub.subscribe(["a/#"])
    got = read_until(sub, 2)
    sub.disconnect()
    broker.close()
    assert [p for _t, p, _q, _m in got] == [b"0", b"1"]
    assert connected == [False, True] and len(subscribes) == 2


def test_sends_pingreq_when_idle() -> None:
    pings: list[int] = []

    def script(conn: socket.socket, _n: int) -> None:
        read_packet(conn)
        connack(conn)
        suback(conn)
        first, _ = read_packet(conn)
        pings.append(first)
        conn.sendall(b"\xd0\x00")
        time.sleep(1)

    broker = Broker(script)
    sub = Subscriber(settings(broker.port, keepalive_s=5), "b")
    sub.connect()
    sub.subscribe(["a/#"])
    sub._last_sent -= 3  # as if 3 s passed without a packet to the broker
    deadline = time.monotonic() + 5
    while not pings and time.monotonic() < deadline:
        sub.housekeeping()
        time.sleep(0.01)
    sub.read(10)
    assert sub._ping_since is None  # the PINGRESP was read
    sub.disconnect()
    broker.close()
    assert pings == [0xC0]


def test_keeps_pinging_while_paused_even_without_answers() -> None:
    pings: list[int] = []

    def script(conn: socket.socket, _n: int) -> None:
        read_packet(conn)
        connack(conn)
        suback(conn)
        for _ in range(2):
            first, _ = read_packet(conn)  # never answered: the bridge is not reading anyway
            pings.append(first)
        time.sleep(1)

    broker = Broker(script)
    sub = Subscriber(settings(broker.port, keepalive_s=5), "b")
    sub.connect()
    sub.subscribe(["a/#"])
    for _ in range(2):
        sub._last_sent -= 3  # as if 3 s passed without a packet to the broker
        sub.housekeeping()
    deadline = time.monotonic() + 5
    while len(pings) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sub.is_connected  # paused: an unanswered ping is not judged
    sub.disconnect()
    broker.close()
    assert pings == [0xC0, 0xC0]


def test_a_malformed_publish_drops_the_connection_and_it_comes_back() -> None:
    connections: list[int] = []

    def script(conn: socket.socket, n: int) -> None:
        read_packet(conn)
        connack(conn)
        suback(conn)
        connections.append(n)
        if n == 0:  # the topic length runs past the packet
            conn.sendall(packet(0x32, struct.pack("!H", 500) + b"abc"))
            time.sleep(0.5)
            return
        conn.sendall(publish("a/b", b"ok", 1))
        time.sleep(1)

    broker = Broker(script)
    sub = Subscriber(settings(broker.port), "b")
    sub.connect()
    sub.subscribe(["a/#"])
    got = read_until(sub, 1)
    sub.disconnect()
    broker.close()
    assert [p for _t, p, _q, _m in got] == [b"ok"] and connections == [0, 1]
