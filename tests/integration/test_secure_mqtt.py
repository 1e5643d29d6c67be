"""The secure stack's Mosquitto, for real: TLS only, a password per principal, the ACL of
forewarn.stack.mosquitto_acl. Clients are the project's own (the bridge's hand-written subscriber,
forewarn.mqtt over paho, the bridge's queue watch) and, where a reason code must be read, paho
itself."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge._subscriber import Subscriber
from bridge.broker_watch import DROPPED, STORED_BYTES, STORED_MESSAGES, BrokerWatch, QueueCaps
from bridge.metrics import BridgeMetrics
from bridge.service import subscriptions
from forewarn.errors import MqttError
from forewarn.mqtt import MqttClient, MqttMessage
from forewarn.settings import MqttSettings, StackSettings
from forewarn.stack import Mosquitto
from forewarn.stack.secure import SecureMaterial
from tests.mqtt_raw import NOT_AUTHORISED, Raw, client_id, until
from tests.stacks import free_port

pytestmark = pytest.mark.integration  # a real Mosquitto



@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    home = tmp_path_factory.mktemp("secure-mqtt")
    material = SecureMaterial.for_home(home)
    material.ensure()
    mosquitto = Mosquitto(StackSettings(home=home, sys_interval_s=1), free_port(), material)
    mosquitto.start()
    try:
        mosquitto.wait_ready(30)
        yield mosquitto
    finally:
        mosquitto.stop()


@pytest.fixture
def raw() -> Iterator[Callable[[MqttSettings], Raw]]:
    opened: list[Raw] = []

    def make(settings: MqttSettings) -> Raw:
        opened.append(Raw(settings))
        return opened[-1]

    yield make
    for client in opened:
        client.close()


@pytest.fixture
def bridge(broker: Mosquitto) -> Iterator[Subscriber]:
    """The bridge's own subscriber as the bridge principal, on the bridge's (shared) filters."""
    sub = Subscriber(broker.client_settings("bridge"), client_id("bridge"), clean_start=True)
    sub.connect()
    sub.subscribe(subscriptions("forewarn"))
    deadline = time.monotonic() + 15
    while not sub.subscribed:  # the SUBACK is read by read(); nothing else is published yet
        assert time.monotonic() < deadline, "no SUBACK"
        assert sub.read(10) == []
        sub.wait_readable(0.05)
    yield sub
    sub.disconnect()


def _received(sub: Subscriber, until_topic: str, count: int = 1, timeout_s: float = 15.0) -> list[str]:
    """Topics the bridge receives (acknowledged) until ``count`` on ``until_topic`` have arrived."""
    topics: list[str] = []
    deadline = time.monotonic() + timeout_s
    while topics.count(until_topic) < count:
        assert time.monotonic() < deadline, f"nothing on {until_topic} reached the bridge"
        got = sub.read(100)
        topics.extend(t for t, _p, _q, _m in got)
        sub.ack_many([m for _t, _p, q, m in got if q])
        if not got:
            sub.wait_readable(0.05)
    return topics


def _wrong_password(broker: Mosquitto, tmp_path: Path, principal: str) -> MqttSettings:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    return broker.client_settings(principal).model_copy(update={"password_file": wrong})


# -- (a) who gets in -----------------------------------------------------------------------------


def test_anonymous_wrong_password_unknown_principal_and_plaintext_are_refused(broker: Mosquitto,
                                                                              tmp_path: Path) -> None:
    anonymous = broker.mqtt_settings()  # TLS, the CA trusted, no username
    with pytest.raises(MqttError) as refused:
        MqttClient(anonymous, client_id("anon")).connect(timeout_s=10)
    assert refused.value.reason_code == NOT_AUTHORISED
    with pytest.raises(MqttError) as refused:  # the bridge's own client, the same answer
        Subscriber(anonymous.model_copy(update={"protocol": "5"}), client_id("anon")).connect(10)
    assert refused.value.reason_code == NOT_AUTHORISED

    with pytest.raises(MqttError) as refused:
        Subscriber(_wrong_password(broker, tmp_path, "bridge"), client_id("wrong")).connect(10)
    assert refused.value.reason_code == NOT_AUTHORISED
    assert "not-the-password" not in str(refused.value)

    # A component without MQTT rights has no login, though its password is in the material.
    assert broker.secure is not None and broker.secure.password_file("dashboard").is_file()
    with pytest.raises(MqttError) as refused:
        MqttClient(broker.client_settings("dashboard"), client_id("dash")).connect(timeout_s=10)
    assert refused.value.reason_code == NOT_AUTHORISED

    # The right password without TLS: the TLS listener never answers the CONNECT.
    plain = broker.client_settings("bridge").model_copy(update={"tls": False, "protocol": "3.1.1"})
    with pytest.raises(MqttError, match=r"closed the connection|no CONNACK"):
        Subscriber(plain, client_id("plain")).connect(10)
    with pytest.raises(MqttError):
        MqttClient(plain, client_id("plain")).connect(timeout_s=5)


# -- (b), (c) what a device may publish ----------------------------------------------------------


def test_a_device_reaches_the_bridge_on_its_own_topic_only(broker: Mosquitto, bridge: Subscriber,
                                                           raw: Callable[[MqttSettings], Raw]) -> None:
    device = raw(broker.client_settings(broker.add_device("site-a/pump-0001")))
    assert device.connack == 0
    own, other = "forewarn/site-a/pump-0001/telemetry", "forewarn/site-a/pump-0002/telemetry"
    foreign = [device.publish(other) for _ in range(5)] + [device.publish("forewarn/site-b/pump-0001/telemetry"),
                                                           device.publish("forewarn/site-a/pump-0001/maintenance")]
    mine = [device.publish(own) for _ in range(3)]
    assert device.acked(foreign) == [NOT_AUTHORISED] * len(foreign)  # MQTT 5 says so
    assert device.acked(mine) == [0, 0, 0]
    # One client's messages arrive in order: the refused ones, had they passed, would have come first.
    assert _received(bridge, own, count=3) == [own] * 3


@pytest.mark.parametrize(("add", "allowed", "forbidden"), [
    (lambda b: b.add_gateway("site-a/gw-1"), "forewarn/site-a/gateway/gw-1/batch",
     ["forewarn/site-a/gateway/gw-2/batch", "forewarn/site-b/gateway/gw-1/batch", "forewarn/site-a/gw-1/telemetry"]),
    (lambda b: b.add_maintenance_source("site-a"), "forewarn/site-a/pump-0001/maintenance",
     ["forewarn/site-b/pump-0001/maintenance", "forewarn/site-a/pump-0001/telemetry"]),
    (lambda b: "simulator", "forewarn/site-z/pump-7/maintenance",
     ["forewarn/site-z/pump-7/prediction", "forewarn/site-z/pump-7/alert", "$SYS/broker/x"]),
], ids=["gateway", "maintenance-source", "simulator"])
def test_gateways_maintenance_sources_and_the_plant_publish_only_where_allowed(
        broker: Mosquitto, bridge: Subscriber, raw: Callable[[MqttSettings], Raw],
        add: Callable[[Mosquitto], str], allowed: str, forbidden: list[str]) -> None:
    client = raw(broker.client_settings(add(broker)))
    refused = [client.publish(t) for t in forbidden]
    accepted = client.publish(allowed)
    assert client.acked(refused) == [NOT_AUTHORISED] * len(forbidden)
    assert client.acked([accepted]) == [0]
    assert _received(bridge, allowed) == [allowed]


# -- (d) who may read telemetry ------------------------------------------------------------------


def test_only_the_bridge_and_the_edge_receive_telemetry(broker: Mosquitto, bridge: Subscriber,
                                                        raw: Callable[[MqttSettings], Raw]) -> None:
    # Mosquitto's acl_file grants any SUBSCRIBE and checks "read" at delivery (mosquitto_acl's doc):
    # a principal without read rights is subscribed and gets nothing, through a shared filter neither.
    filters = ["forewarn/+/+/telemetry", "$share/forewarn/forewarn/+/+/telemetry", "#", "$SYS/#"]
    device = raw(broker.client_settings(broker.add_device("site-d/pump-1")))
    readers = {name: raw(broker.client_settings(name)) for name in ("simulator", "edge")}
    readers["device"] = raw(broker.client_settings(broker.add_device("site-d/pump-2")))
    subacks = [code for reader in readers.values() for code in reader.subscribe(filters)]
    own = "forewarn/site-d/pump-1/telemetry"
    assert device.acked([device.publish(own)]) == [0]
    assert _received(bridge, own) == [own]
    until(lambda: own in readers["edge"].messages, "the edge did not receive the telemetry")
    assert readers["simulator"].messages == [] and readers["device"].messages == []
    assert all(code < 0x80 for code in subacks)  # subscribed, yet given nothing


def test_the_bridge_queue_watch_reads_the_store_counters_as_the_bridge(broker: Mosquitto) -> None:
    watch = BrokerWatch(broker.client_settings("bridge"), client_id("watch"), QueueCaps(1000, 1 << 20),
                        BridgeMetrics())
    watch.start()
    try:
        until(lambda: {STORED_MESSAGES, STORED_BYTES, DROPPED} <= watch.levels.seen,
               "the watch saw no $SYS counters", timeout_s=20)
    finally:
        watch.stop()


# -- (e) paho over TLS ---------------------------------------------------------------------------


def test_the_paho_adapter_connects_over_tls_with_a_password(broker: Mosquitto) -> None:
    got: list[MqttMessage] = []
    edge = MqttClient(broker.client_settings("edge"), client_id("edge"), on_message=got.append)
    simulator = MqttClient(broker.client_settings("simulator"), client_id("sim"))
    edge.connect(timeout_s=10)
    simulator.connect(timeout_s=10)
    try:
        assert (edge.protocol, simulator.protocol) == ("5", "5")
        edge.subscribe(["forewarn/site-e/+/telemetry"])
        topic = "forewarn/site-e/pump-1/telemetry"

        def delivered() -> bool:  # published again until the edge's subscription is in place
            simulator.publish(topic, b"r").wait_for_publish(5)
            return bool(got)

        until(delivered, "the edge got nothing", pause=lambda: time.sleep(0.2))
        assert {m.topic for m in got} == {topic}
        prediction = edge.publish("forewarn/site-e/pump-1/prediction", b"p")
        prediction.wait_for_publish(5)
        assert prediction.is_published()
    finally:
        edge.disconnect()
        simulator.disconnect()


# -- (f) logins added and rotated at runtime ------------------------------------------------------


def test_a_device_added_at_runtime_publishes_without_a_restart(broker: Mosquitto, bridge: Subscriber,
                                                               tmp_path: Path) -> None:
    pid = broker.process.pid()
    machine = f"site-f/pump-{uuid.uuid4().hex[:6]}"
    assert broker.secure is not None
    name = broker.secure.add_principal(f"dev.{machine.replace('/', '.')}").name  # a password, no login yet
    with pytest.raises(MqttError) as refused:
        MqttClient(broker.client_settings(name), client_id("early")).connect(timeout_s=10)
    assert refused.value.reason_code == NOT_AUTHORISED

    assert broker.add_device(machine) == name
    device = MqttClient(broker.client_settings(name), client_id("dev"))

    def connects() -> bool:
        try:
            device.connect(timeout_s=5)
        except MqttError:
            return False
        return True

    until(connects, "the reloaded broker did not take the new device", timeout_s=10, pause=lambda: time.sleep(0.1))
    try:
        own = f"forewarn/{machine}/telemetry"
        device.publish(own, b"r").wait_for_publish(5)
        assert _received(bridge, own) == [own]
    finally:
        device.disconnect()
    assert broker.process.pid() == pid, "Mosquitto was restarted"

    old = tmp_path / "old"
    old.write_bytes(broker.secure.password_file(name).read_bytes())
    old.chmod(0o600)
    broker.rotate(name)

    def old_refused() -> bool:
        stale = MqttClient(broker.client_settings(name).model_copy(update={"password_file": old}), client_id("old"))
        try:
            stale.connect(5)
        except MqttError as error:
            return error.reason_code == NOT_AUTHORISED
        stale.disconnect()
        return False

    until(old_refused, "the rotated-out password still works", timeout_s=10, pause=lambda: time.sleep(0.1))
    rotated = MqttClient(broker.client_settings(name), client_id("new"))
    rotated.connect(timeout_s=10)
    rotated.disconnect()
    assert broker.process.pid() == pid and os.path.exists(f"/proc/{pid}")
