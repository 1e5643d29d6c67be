"""The bridge's own MQTT subscriber against real Mosquitto: offline-session drain, manual PUBACKs,
TCP backpressure (nothing is read that was not asked for), MQTT 3.1.1 and 5."""

from __future__ import annotations

import time
import uuid

import pytest

from bridge._subscriber import _CHUNK, Subscriber
from tests.bridge.helpers import publish_all
from tests.stacks import RunningStack

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka

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


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_offline_session_drains_with_backpressure_and_manual_acks(stack: RunningStack, protocol: str) -> None:
    mqtt = stack.mqtt_settings.model_copy(update={"protocol": protocol})
    client_id, topic = f"sub-{uuid.uuid4().hex[:6]}", f"sub-test/{uuid.uuid4().hex[:6]}"
    filters = [f"$share/g{client_id}/{topic}/+"]
    first = Subscriber(mqtt, client_id, session_expiry_s=600, receive_maximum=100)
    first.connect()
    first.subscribe(filters)
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
