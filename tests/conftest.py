"""Shared fixtures.

``stack`` is one real Mosquitto and one real Apache Kafka for the whole test session, on free
ports and in a temporary home, so tests never collide with a running demo. ``fresh_topics``
gives each test its own topic prefix on that broker, created from the registry.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from forewarn.kafka import KafkaAdmin
from forewarn.settings import KafkaSettings, MqttSettings, StackSettings, TopicSettings
from forewarn.stack import LocalStack
from forewarn.topics import Topics, topic_specs

REPO = Path(__file__).resolve().parents[1]
JAR_CACHE = REPO / ".forewarn" / "cache"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range: a port the kernel picked
    (bind to 0) can be taken as the source port of some client's connection before the broker
    binds it, which failed a Kafka start with "Address already in use"."""
    low, _high = _ephemeral_range()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12_000), low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found below the ephemeral range")


@dataclass
class RunningStack:
    """A started LocalStack and the client settings that reach it."""

    local: LocalStack
    kafka_settings: KafkaSettings
    mqtt_settings: MqttSettings
    topic_settings: TopicSettings

    @property
    def bootstrap(self) -> str:
        return self.kafka_settings.bootstrap_servers

    @property
    def mqtt_port(self) -> int:
        return self.mqtt_settings.port

    def restart_mosquitto(self) -> None:
        self.local.mosquitto.stop()
        self.local.mosquitto.start()
        self.local.mosquitto.wait_ready(30)

    def stop_kafka(self) -> None:
        self.local.kafka.stop()

    def start_kafka(self) -> None:
        self.local.kafka.start()
        self.local.kafka.wait_ready(90)


def make_stack(home: Path) -> LocalStack:
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", client_id="forewarn-tests")
    mqtt = MqttSettings(port=free_port())
    settings = StackSettings(home=home, cache_dir=JAR_CACHE, controller_port=free_port(), kafka_heap="1g")
    return LocalStack(settings, kafka, mqtt)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    local = make_stack(tmp_path_factory.mktemp("stack"))
    local.up()
    try:
        yield RunningStack(local, local.kafka_settings, local.mqtt_settings, TopicSettings())
    finally:
        local.down()


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
