"""Shared fixtures.

``stack`` is one real Mosquitto and one real Apache Kafka for the whole test session, on free
ports and in a temporary home, so tests never collide with a running demo. ``fresh_topics``
gives each test its own topic prefix on that broker, created from the registry. ``mqtt_broker``
runs a test once per MQTT broker implementation (Mosquitto, aedes, Moquette, HiveMQ CE).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from forewarn.kafka import KafkaAdmin
from forewarn.settings import TopicSettings
from forewarn.stack import LocalStack
from forewarn.topics import Topics, topic_specs
from tests.brokers import INTEROP_BROKERS, InteropBroker, MqttBrokerUnderTest
from tests.netfaults import Network, available
from tests.stacks import RunningStack, free_port, make_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    local = make_stack(tmp_path_factory.mktemp("stack"))
    local.up()
    try:
        yield RunningStack(local, local.kafka_settings, local.mqtt_settings, TopicSettings())
    finally:
        local.down()


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A private Mosquitto + Kafka for one test that stops, kills or restarts a broker (the
    session's ``stack`` is shared and must stay up)."""
    local = make_stack(tmp_path / "stack")
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A private Mosquitto and a three-node KRaft cluster on free ports, for a module whose
    tests kill, stop and restart its nodes."""
    local = make_stack(tmp_path_factory.mktemp("cluster"), brokers=3, kafka_heap="512m")
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="module")
def netns_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Network]]:
    """Like ``cluster``, each node in its own network namespace on a private switch (tests/netfaults.py),
    Mosquitto on the host's address there, and a client namespace for the bridge: for a module that
    cuts and slows links. Skipped where namespaces cannot be made (not root, no iproute2)."""
    why = available()
    if why is not None:
        pytest.skip(why)
    with Network(3) as net:
        local = make_stack(tmp_path_factory.mktemp("netns-cluster"), brokers=3, kafka_heap="512m", netns=net)
        local.up()
        try:
            yield local, net
        finally:
            local.down()


@pytest.fixture(scope="session", params=["mosquitto", *INTEROP_BROKERS])
def mqtt_broker(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttBrokerUnderTest]:
    """The MQTT broker a test runs the bridge against, once per implementation: the session's
    Mosquitto (MQTT 5 and 3.1.1, shared subscriptions), aedes and Moquette (3.1.1 only, no
    shared subscriptions) and HiveMQ CE (MQTT 5 and 3.1.1, shared subscriptions), each started
    once per session on a free port. Kafka is the session's
    ``stack`` (started only when a test asks for it or for Mosquitto)."""
    name: str = request.param
    if name == "mosquitto":
        stack: RunningStack = request.getfixturevalue("stack")
        yield MqttBrokerUnderTest(name, stack.mqtt_settings, frozenset({"5", "3.1.1"}), True,
                                  lambda: stack.local.logs("mosquitto", 200))
        return
    broker = InteropBroker(name, tmp_path_factory.mktemp(name), free_port())
    broker.start()
    try:
        broker.wait_ready()
        yield MqttBrokerUnderTest(name, broker.mqtt_settings, broker.protocols, broker.shared_subscriptions,
                                  broker.log)
    finally:
        broker.stop()


_prefixes = itertools.count()


@pytest.fixture
def fresh_topics(stack: RunningStack) -> Callable[..., tuple[TopicSettings, Topics]]:
    """Factory: ``settings, topics = fresh_topics(partitions=3)`` creates a private topic set."""

    def make(partitions: int = 3) -> tuple[TopicSettings, Topics]:
        prefix = f"t{os.getpid()}-{next(_prefixes)}-{uuid.uuid4().hex[:6]}."
        settings = TopicSettings(prefix=prefix, partitions=partitions)
        KafkaAdmin(stack.kafka_settings).ensure_topics(topic_specs(settings))
        return settings, Topics.from_settings(settings)

    return make


_BROKER_FIXTURES = frozenset({"stack", "own_stack", "cluster", "netns_cluster", "fresh_topics", "mqtt_broker"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One way to mark integration tests: a module that needs real brokers says
    ``pytestmark = pytest.mark.integration``. A test that takes a broker fixture without it
    fails here, so ``make test-unit`` never starts a broker by accident."""
    unmarked = [item.nodeid for item in items if _BROKER_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("integration") is None]
    if unmarked:
        raise pytest.UsageError("tests using a real broker must be marked integration: " + ", ".join(unmarked))
