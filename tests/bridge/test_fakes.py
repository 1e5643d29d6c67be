"""The fakes keep MQTT's rules, so a bridge that broke them would fail the tests that use them:
the in-memory broker session (PUBACK order and ids, resumed and lost sessions, Receive Maximum)
and the small broker on the wire (how 3.1.1-only brokers refuse MQTT 5, topic matching, session
take-over). The real subscriber's wire format is pinned in test_subscriber.py, real Mosquitto in
test_subscriber_mosquitto.py and tests/integration/test_bridge_subscriber.py."""

from __future__ import annotations

import socket
import struct

import pytest

from tests.bridge.fakes import (
    AEDES_LIKE,
    MOSQUITTO_311_LIKE,
    FakeSubscriber,
    MiniBroker,
    Profile,
    ProtocolViolation,
    packet,
    string,
    topic_matches,
    wait_for,
)


def connected(**kwargs: int) -> FakeSubscriber:
    sub = FakeSubscriber(**kwargs)
    sub.connect()
    return sub


def test_pubacks_must_come_in_order_and_for_ids_of_this_connection() -> None:
    sub = connected()
    a, b = sub.deliver("t/1", b"a"), sub.deliver("t/2", b"b")
    assert [m[3] for m in sub.read(10)] == [a.mid, b.mid]
    with pytest.raises(ProtocolViolation, match="before PUBACK"):
        sub.ack_many([b.mid])
    sub.ack_many([a.mid, b.mid])
    with pytest.raises(ProtocolViolation, match="nothing is unacknowledged"):
        sub.ack_many([a.mid])
    assert sub.acks == [a.mid, b.mid]


def test_a_resumed_session_redelivers_with_the_same_ids_before_new_messages() -> None:
    sub = connected()
    calls: list[bool] = []
    sub.on_connected = calls.append
    old = sub.deliver("t/1", b"a")
    sub.read(10)
    sub.drop(session_present=True)
    new = sub.deliver("t/2", b"b")
    sub.ack_many([old.mid])  # to a dead socket: lost
    assert sub.read(10) == [] and calls == [True]  # this read reconnects
    assert [(m[3], m[1]) for m in sub.read(10)] == [(old.mid, b"a"), (new.mid, b"b")]
    assert [m.dup for m in sub.sent] == [False, True, False] and sub.acks == []


def test_a_lost_session_loses_its_messages_and_ids_are_taken_anew() -> None:
    sub = connected()
    sub.deliver("t/1", b"a")
    sub.read(10)
    sub.deliver("t/2", b"b")
    sub.drop(session_present=False)
    sub.housekeeping()
    assert sub.read(10) == [] and sub.queued == type(sub.queued)()
    again = sub.deliver("t/3", b"c")
    assert sub.read(10) == [("t/3", b"c", 1, again.mid)]


def test_receive_maximum_and_wrapping_packet_ids() -> None:
    sub = connected(receive_maximum=2, first_mid=65535)
    mids = [sub.deliver(f"t/{i}", b"x").mid for i in range(3)]
    assert mids == [65535, 1, 2]
    assert len(sub.read(10)) == 2 and len(sub.queued) == 1
    sub.ack_many([65535])
    assert [m[3] for m in sub.read(10)] == [2]
    assert sub.deliver("t/q0", b"x", qos=0).mid == 0


# -- the small broker on the wire -------------------------------------------------------------


def raw_connect(port: int, level: int, client_id: str = "c") -> bytes:
    """Send a bare CONNECT of protocol ``level``; what came back before the broker went quiet."""
    body = string("MQTT") + bytes([level, 0x02]) + struct.pack("!H", 30) + (b"\x00" if level == 5 else b"")
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(packet(0x10, body + string(client_id)))
        try:
            return conn.recv(64)
        except ConnectionResetError:
            return b"<reset>"


@pytest.mark.parametrize(("profile", "answer"), [
    (MOSQUITTO_311_LIKE, b"\x20\x02\x00\x01"),  # 3.1.1 CONNACK: unacceptable protocol version
    (Profile(versions=frozenset({4}), refuse_v5="connack_0x84"), b"\x20\x03\x00\x84\x00"),
    (AEDES_LIKE, b""),  # closed, no CONNACK
    (Profile(versions=frozenset({4}), refuse_v5="reset"), b"<reset>"),
], ids=["connack-0x01", "connack-0x84", "close", "reset"])
def test_a_3_1_1_only_broker_refuses_mqtt_5_as_real_ones_do(profile: Profile, answer: bytes) -> None:
    broker = MiniBroker(profile)
    try:
        assert raw_connect(broker.port, 5) == answer
        assert raw_connect(broker.port, 4) == b"\x20\x02\x00\x00"
    finally:
        broker.close()


def test_topic_matching_follows_mqtt() -> None:
    assert topic_matches("forewarn/+/+/telemetry", "forewarn/s/m/telemetry")
    assert not topic_matches("forewarn/+/+/telemetry", "forewarn/$probe/b")
    assert topic_matches("a/#", "a") and topic_matches("a/#", "a/b/c") and not topic_matches("+/x", "$SYS/x")
    assert not topic_matches("$share/g/a/b", "a/b")  # literal: what a broker without shared subscriptions does


def test_a_second_connection_with_the_same_id_takes_the_session_over() -> None:
    broker = MiniBroker()
    try:
        with socket.create_connection(("127.0.0.1", broker.port), timeout=2) as first:
            body = string("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 30) + b"\x00" + string("same")
            first.sendall(packet(0x10, body))
            assert first.recv(5) == b"\x20\x03\x00\x00\x00"
            assert wait_for(lambda: broker.connected("same"))
            assert raw_connect(broker.port, 5, "same").startswith(b"\x20")
            assert first.recv(4) == b"\xe0\x02\x8e\x00"  # DISCONNECT: session taken over
    finally:
        broker.close()
