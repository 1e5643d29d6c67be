"""The subscriber's interoperability points against real Mosquitto (the broker alone, from the
project's own stack code, on a free port): the shared-subscription probe on MQTT 3.1.1, session
take-overs on both protocols, an oversized message dead-lettered and acknowledged."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge._subscriber import Message, Oversized, Subscriber
from forewarn.settings import MqttSettings, StackSettings
from forewarn.stack.mosquitto import Mosquitto
from tests.bridge.fakes import read_until, read_until_error
from tests.bridge.helpers import publish_all
from tests.stacks import free_port

pytestmark = pytest.mark.integration  # real Mosquitto


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttSettings]:
    broker = Mosquitto(StackSettings(home=Path(tmp_path_factory.mktemp("mosquitto"))), free_port())
    broker.start()
    try:
        broker.wait_ready(30)
        yield broker.mqtt_settings(MqttSettings(reconnect_min_s=0.05, reconnect_max_s=0.2))
    finally:
        broker.stop()


def drain(sub: Subscriber, n: int, timeout_s: float = 30.0) -> list[Message]:
    """Read and acknowledge (each read at once, as the bridge does) until ``n`` arrived."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        batch = sub.read(n - len(got))
        sub.ack_many([m for _t, _p, q, m in batch if q])
        got.extend(batch)
        if not batch:
            sub.wait_readable(0.01)
    return got


def test_the_3_1_1_probe_finds_mosquittos_shared_subscriptions(mosquitto: MqttSettings) -> None:
    settings = mosquitto.model_copy(update={"protocol": "3.1.1"})
    group, topic = uuid.uuid4().hex[:6], f"probe-test/{uuid.uuid4().hex[:6]}"
    sub = Subscriber(settings, f"b-{group}", clean_start=True)
    sub.connect()
    sub.subscribe([f"$share/{group}/{topic}/+"])
    assert sub._sharing.works is True
    publish_all(settings, [(f"{topic}/1", b"one")])
    got = drain(sub, 1)
    sub.disconnect()
    assert [p for _t, p, _q, _m in got] == [b"one"]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_two_subscribers_with_one_client_id_end_with_an_error(mosquitto: MqttSettings, protocol: str) -> None:
    settings = mosquitto.model_copy(update={"protocol": protocol})
    client_id = f"dup-{uuid.uuid4().hex[:6]}"
    subs = [Subscriber(settings, client_id, clean_start=True) for _ in range(2)]
    for sub in subs:
        sub.connect()
    error = read_until_error(*subs, timeout_s=20)
    for sub in subs:
        sub.disconnect()
    assert error is not None and client_id in str(error)


def test_an_oversized_message_is_handed_on_once_and_acknowledged(mosquitto: MqttSettings) -> None:
    client_id, topic = f"big-{uuid.uuid4().hex[:6]}", f"big-test/{uuid.uuid4().hex[:6]}"
    big = b"z" * 300_000
    sub = Subscriber(mosquitto, client_id, session_expiry_s=60, max_packet_bytes=64 * 1024)
    sub.connect()
    sub.subscribe([f"{topic}/+"])
    publish_all(mosquitto, [(f"{topic}/1", big), (f"{topic}/2", b"small")])
    got = drain(sub, 2)
    sub.disconnect()
    again = Subscriber(mosquitto, client_id, session_expiry_s=60)
    again.connect()  # the session resumes: nothing unacknowledged comes back
    again.subscribe([f"{topic}/+"])
    assert read_until(again, 1, timeout_s=1.0) == []
    again.disconnect()
    (_t, head, _q, _m), (_t2, small, _q2, _m2) = got
    assert isinstance(head, Oversized) and head.size > len(big) and head == big[:len(head)] and small == b"small"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_queued_session_drains_once_through_shared_filters(mosquitto: MqttSettings, protocol: str) -> None:
    settings = mosquitto.model_copy(update={"protocol": protocol})
    client_id, topic = f"drain-{uuid.uuid4().hex[:6]}", f"drain-test/{uuid.uuid4().hex[:6]}"
    filters = [f"$share/g{client_id}/{topic}/+"]
    first = Subscriber(settings, client_id, session_expiry_s=60, receive_maximum=100)
    first.connect()
    first.subscribe(filters)
    assert read_until(first, 1, timeout_s=0.5) == [] and first.subscribed
    first.disconnect()
    n = 2000
    publish_all(settings, [(f"{topic}/{i % 10}", b"%d" % i) for i in range(n)])
    sub = Subscriber(settings, client_id, session_expiry_s=60, receive_maximum=100)
    sub.connect()
    sub.subscribe(filters)
    payloads = [p for _t, p, _q, _m in drain(sub, n)]
    sub.disconnect()
    assert sorted(int(p) for p in payloads) == list(range(n))
