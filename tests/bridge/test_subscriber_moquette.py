"""The subscriber on a Moquette-like persistent session (tests/bridge/fakes.py ``MOQUETTE_LIKE``):
it acknowledges only ids delivered on the current connection, each once, in arrival order, so
every PUBACK matches a message in flight; where Moquette still logs "Received a PUBACK with not
matching packetId", it is Moquette numbering a new connection's messages with ids that earlier
connections' messages still hold in flight (MQTT 3.1.1 2.3.1: a sender MUST use a currently unused
packet id)."""

from __future__ import annotations

from collections.abc import Callable

from bridge._subscriber import Subscriber
from tests.bridge.fakes import MOQUETTE_LIKE, MiniBroker, mqtt_settings, read_until, wait_for

TOPIC = "plant/m1/telemetry"


def _connected(broker: MiniBroker, reconnects: int) -> Subscriber:
    sub = Subscriber(mqtt_settings(broker.port, protocol="3.1.1"), "m", session_expiry_s=600)
    sub.subscribe([TOPIC])
    sub.connect()
    assert wait_for(lambda: len(broker.subscribes) > reconnects), "no SUBSCRIBE"
    return sub


def _take(sub: Subscriber, n: int, ack: int) -> list[int]:
    """Read ``n`` messages, acknowledge the first ``ack`` of them (as the bridge does: in order)."""
    got = read_until(sub, n)
    assert len(got) == n
    sub.ack_many([mid for _t, _p, _q, mid in got[:ack]])
    return [int(payload) for _t, payload, _q, _m in got]


def _drain_acking(sub: Subscriber, seen: list[int], more: Callable[[], bool]) -> None:
    """Read and acknowledge everything while ``more()``, then disconnect."""
    while more():
        got = read_until(sub, 1)
        assert got, f"stalled after {sorted(set(seen))}"
        sub.ack_many([mid for _t, _p, _q, mid in got])
        seen += [int(payload) for _t, payload, _q, _m in got]
    sub.disconnect()


def test_a_resumed_session_drains_with_every_puback_matching_a_message_in_flight() -> None:
    broker = MiniBroker(MOQUETTE_LIKE)
    sub = _connected(broker, 0)
    for i in range(30):
        broker.publish(TOPIC, b"%d" % i)
    seen = _take(sub, 10, ack=5)  # ids 1-10; acking 1-5 lets 11-15 out
    seen += _take(sub, 5, ack=0)
    sub.disconnect()  # 6-15 in flight, not acknowledged
    sub = _connected(broker, 1)
    broker.resend_in_flight("m")  # Moquette's resender: 6-15 again, same ids, DUP
    _drain_acking(sub, seen, lambda: len(set(seen)) < 30)
    broker.close()
    assert sorted(set(seen)) == list(range(30))
    assert broker.unmatched_pubacks == [] and broker.replaced_in_flight == 0 and not broker.errors


def test_the_unmatched_puback_comes_from_moquette_reusing_an_in_flight_packet_id() -> None:
    """Two reconnects, each PUBACK in arrival order for a message of that connection: the third
    connection numbers its new messages 1, 2, ... while the second connection's 1-5 are still in
    flight; Moquette replaces them (each replacement frees a slot, so one PUBACK replaces all five),
    the PUBACKs of their redeliveries remove the new messages before the client has them, and the
    new messages' own PUBACKs match nothing. A client that stops in between loses them."""
    broker = MiniBroker(MOQUETTE_LIKE)
    sub = _connected(broker, 0)
    for i in range(40):
        broker.publish(TOPIC, b"%d" % i)
    seen = _take(sub, 10, ack=0)  # 1-10, none acknowledged
    sub.disconnect()
    sub = _connected(broker, 1)
    broker.resend_in_flight("m")
    seen += _take(sub, 10, ack=5)  # DUP 1-10, acking 1-5: new messages get ids 1-5 of this connection
    seen += _take(sub, 5, ack=0)
    sub.disconnect()  # in flight: 6-10 of the first connection, 1-5 of the second
    sub = _connected(broker, 2)
    broker.resend_in_flight("m")
    seen += _take(sub, 1, ack=1)  # DUP 6 acknowledged: new messages are numbered 1-5, like ones in flight
    assert wait_for(lambda: broker.replaced_in_flight == 5)
    _drain_acking(sub, seen, lambda: len(set(seen)) < 40 or len(broker.unmatched_pubacks) < 5)
    broker.close()
    assert broker.unmatched_pubacks == [("m", mid) for mid in range(1, 6)]
    assert sorted(set(seen)) == list(range(40)) and not broker.errors
