"""The in-memory broker session the bridge's unit tests run on keeps MQTT's rules, so a bridge
that broke them would fail those tests (the real subscriber's wire format is pinned in
test_subscriber.py, real Mosquitto in tests/integration/test_bridge_subscriber.py)."""

from __future__ import annotations

import pytest

from tests.bridge.fakes import FakeSubscriber, ProtocolViolation


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
