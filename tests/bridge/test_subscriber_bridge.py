"""The bridge on its real subscriber, against the small broker behaving like brokers that are not
Mosquitto 2 (Kafka is the in-memory fake): what reaches Kafka, what is acknowledged, and a
refusal that must end the bridge rather than leave it running at most once."""

from __future__ import annotations

import pytest

from bridge._subscriber import Subscriber
from bridge.service import Bridge, subscriptions
from bridge.settings import BridgeOptions, BridgeSettings
from forewarn.errors import MqttError
from forewarn.settings import TopicSettings
from forewarn.testing import FakeProducer, InMemoryKafka
from forewarn.topics import telemetry_topic
from tests.bridge.fakes import AEDES_LIKE, MiniBroker, Profile, mqtt_settings, wait_for
from tests.bridge.helpers import reading_bytes


def bridge_on(broker: MiniBroker) -> tuple[Bridge, InMemoryKafka]:
    kafka = InMemoryKafka()
    options = BridgeOptions(client_id="b1", shutdown_timeout_s=0.5)
    settings = BridgeSettings(topics=TopicSettings(prefix="u."), bridge=options, mqtt=mqtt_settings(broker.port))
    subscriber = Subscriber(settings.mqtt, options.client_id, session_expiry_s=60, probe_timeout_s=0.5)
    return Bridge(settings, producer=FakeProducer(kafka), subscriber=subscriber), kafka


def stored(kafka: InMemoryKafka, topic: str) -> int:
    return sum(len(partition) for partition in kafka.topic(topic))


def test_through_a_3_1_1_broker_without_shared_subscriptions_every_message_is_forwarded_and_acked() -> None:
    broker = MiniBroker(AEDES_LIKE)
    bridge, kafka = bridge_on(broker)
    bridge.start()
    assert wait_for(lambda: (bridge.step(), bool(broker.subscribes))[1])
    assert [f for cid, fs in broker.subscribes if cid == "b1" for f in fs] == [
        f.split("/", 2)[2] for f in subscriptions("forewarn-bridge")]
    for seq in range(5):
        assert broker.publish(telemetry_topic("s/m1"), reading_bytes("s/m1", seq)) == 1
    assert wait_for(lambda: (bridge.step(), len([c for c, _m in broker.pubacks if c == "b1"]) == 5)[1])
    bridge.close()
    broker.close()
    assert stored(kafka, bridge.topics.telemetry) == 5


@pytest.mark.parametrize("grant", [lambda _f, _q: 0, lambda _f, _q: 0x87], ids=["qos0", "refused"])
def test_a_subscription_granted_qos_0_or_refused_ends_the_bridge(grant: object) -> None:
    broker = MiniBroker(Profile(grant=grant))  # type: ignore[arg-type]
    bridge, _kafka = bridge_on(broker)
    with pytest.raises(MqttError):
        bridge.run(idle_exit_s=10)
    broker.close()
