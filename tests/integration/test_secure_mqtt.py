"""The secure stack's Mosquitto, for real: TLS only, a password per principal, the ACL of
forewarn.stack.mosquitto_acl. Clients are the project's own (the bridge's hand-written subscriber,
forewarn.mqtt over paho, the bridge's queue watch) and, where a reason code must be read, paho
itself."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge._subscriber import Subscriber
from bridge.broker_watch import DROPPED, STORED_BYTES, STORED_MESSAGES, BrokerWatch, QueueCaps
from bridge.metrics import BridgeMetrics
from bridge.service import subscriptions
from forewarn.errors import MqttError
from forewarn.mqtt import MqttClient, MqttMessage
from forewarn.settings import MqttSettings, StackSettings
from forewarn.stack import Mosquitto
from forewarn.stack.secure import SecureMaterial
from tests.stacks import free_port

pytestmark = pytest.mark.integration  # a real Mosquitto

NOT_AUTHORISED = 0x87  # MQTT 5; Mosquitto gives it for every refused login, a wrong password too


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


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _until(condition: Callable[[], bool], what: str, timeout_s: float = 15.0, pause: Callable[[], None] | None = None,
           ) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        (pause or (lambda: time.sleep(0.02)))()


class Raw:
    """paho itself, MQTT 5 over the given settings, recording the broker's reason codes (the
    project's adapter does not hand them out)."""

    def __init__(self, settings: MqttSettings) -> None:
        self.pubacks: dict[int, int] = {}
        self.subacks: list[int] = []
        self.messages: list[str] = []
        self.connack: int | None = None
        self._lock = threading.Lock()
        self._answered = threading.Event()
        c = self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=_id("raw"),
                                      protocol=MQTTProtocolVersion.MQTTv5)
        c.username_pw_set(settings.username, settings.password_value())
        c.tls_set(ca_certs=str(settings.ca_file))
        c.on_connect = self._on_connect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.connect(settings.host, settings.port)
        c.loop_start()
        assert self._answered.wait(10), "no CONNACK"

    def _on_connect(self, _c: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: Properties | None) -> None:
        self.connack = reason.value
        self._answered.set()

    def _on_publish(self, _c: paho.Client, _u: object, mid: int, reason: ReasonCode, _p: Properties | None) -> None:
        with self._lock:
            self.pubacks[mid] = reason.value

    def _on_subscribe(self, _c: paho.Client, _u: object, _mid: int, reasons: list[ReasonCode],
                      _p: Properties | None) -> None:
        with self._lock:
            self.subacks.extend(r.value for r in reasons)

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message.topic)

    def publish(self, topic: str, payload: bytes = b"x") -> int:
        info = self.client.publish(topic, payload, qos=1)
        return info.mid

    def subscribe(self, filters: list[str]) -> list[int]:
        """Subscribe to each filter; the SUBACK reason codes, once all have come."""
        for topic_filter in filters:
            self.client.subscribe(topic_filter, qos=1)
        _until(lambda: len(self.subacks) == len(filters), "no SUBACK")
        return list(self.subacks)

    def acked(self, mids: list[int]) -> list[int]:
        """The PUBACK reason codes of these publishes, once all have come."""
        _until(lambda: all(m in self.pubacks for m in mids), "no PUBACK")
        return [self.pubacks[m] for m in mids]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


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
    sub = Subscriber(broker.client_settings("bridge"), _id("bridge"), clean_start=True)
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
        MqttClient(anonymous, _id("anon")).connect(timeout_s=10)
    assert refused.value.reason_code == NOT_AUTHORISED
    with pytest.raises(MqttError) as refused:  # the bridge's own client, the same answer
        Subscriber(anonymous.model_copy(update={"protocol": "5"}), _id("anon")).connect(10)
    assert refused.value.reason_code == NOT_AUTHORISED

    with pytest.raises(MqttError) as refused:
        Subscriber(_wrong_password(broker, tmp_path, "bridge"), _id("wrong")).connect(10)
    assert refused.value.reason_code == NOT_AUTHORISED
    assert "not-the-password" not in str(refused.value)

    # A component without MQTT rights has no login, though its password is in the material.
    assert broker.secure is not None and broker.secure.password_file("dashboard").is_file()
    with pytest.raises(MqttError) as refused:
        MqttClient(broker.client_settings("dashboard"), _id("dash")).connect(timeout_s=10)
    assert refused.value.reason_code == NOT_AUTHORISED

    # The right password without TLS: the TLS listener never answers the CONNECT.
    plain = broker.client_settings("bridge").model_copy(update={"tls": False, "protocol": "3.1.1"})
    with pytest.raises(MqttError, match=r"closed the connection|no CONNACK"):
        Subscriber(plain, _id("plain")).connect(10)
    with pytest.raises(MqttError):
        MqttClient(plain, _id("plain")).connect(timeout_s=5)


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
    _until(lambda: own in readers["edge"].messages, "the edge did not receive the telemetry")
    assert readers["simulator"].messages == [] and readers["device"].messages == []
    assert all(code < 0x80 for code in subacks)  # subscribed, yet given nothing


def test_the_bridge_queue_watch_reads_the_store_counters_as_the_bridge(broker: Mosquitto) -> None:
    watch = BrokerWatch(broker.client_settings("bridge"), _id("watch"), QueueCaps(1000, 1 << 20),
                        BridgeMetrics())
    watch.start()
    try:
        _until(lambda: {STORED_MESSAGES, STORED_BYTES, DROPPED} <= watch.levels.seen,
               "the watch saw no $SYS counters", timeout_s=20)
    finally:
        watch.stop()


# -- (e) paho over TLS ---------------------------------------------------------------------------


def test_the_paho_adapter_connects_over_tls_with_a_password(broker: Mosquitto) -> None:
    got: list[MqttMessage] = []
    edge = MqttClient(broker.client_settings("edge"), _id("edge"), on_message=got.append)
    simulator = MqttClient(broker.client_settings("simulator"), _id("sim"))
    edge.connect(timeout_s=10)
    simulator.connect(timeout_s=10)
    try:
        assert (edge.protocol, simulator.protocol) == ("5", "5")
        edge.subscribe(["forewarn/site-e/+/telemetry"])
        topic = "forewarn/site-e/pump-1/telemetry"

        def delivered() -> bool:  # published again until the edge's subscription is in place
            simulator.publish(topic, b"r").wait_for_publish(5)
            return bool(got)

        _until(delivered, "the edge got nothing", pause=lambda: time.sleep(0.2))
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
        MqttClient(broker.client_settings(name), _id("early")).connect(timeout_s=10)
    assert refused.value.reason_code == NOT_AUTHORISED

    assert broker.add_device(machine) == name
    device = MqttClient(broker.client_settings(name), _id("dev"))

    def connects() -> bool:
        try:
            device.connect(timeout_s=5)
        except MqttError:
            return False
        return True

    _until(connects, "the reloaded broker did not take the new device", timeout_s=10, pause=lambda: time.sleep(0.1))
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
        stale = MqttClient(broker.client_settings(name).model_copy(update={"password_file": old}), _id("old"))
        try:
            stale.connect(5)
        except MqttError as error:
            return error.reason_code == NOT_AUTHORISED
        stale.disconnect()
        return False

    _until(old_refused, "the rotated-out password still works", timeout_s=10, pause=lambda: time.sleep(0.1))
    rotated = MqttClient(broker.client_settings(name), _id("new"))
    rotated.connect(timeout_s=10)
    rotated.disconnect()
    assert broker.process.pid() == pid and os.path.exists(f"/proc/{pid}")
