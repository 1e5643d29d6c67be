"""Real brokers for tests and benchmarks: free ports, a LocalStack in a temporary home, and the
client settings that reach it. The session fixtures in ``tests/conftest.py`` are built from
these; tests and benchmarks that start their own stack import them from here."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from forewarn.settings import KafkaSettings, MqttSettings, StackSettings, TopicSettings
from forewarn.stack import LocalStack, Placement

if TYPE_CHECKING:
    from tests.netfaults import Network

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


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (a local Kafka cluster's nodes listen on
    the bootstrap and controller ports two apart: base, base + 1, base + 2, ...)."""
    low, _high = _ephemeral_range()
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(max(1024, low - 12_000), low - count)
        block = range(base, base + count)
        if _handed_out.intersection(block):
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in block:
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.update(block)
        return base
    raise RuntimeError(f"no {count} consecutive free ports found below the ephemeral range")


def forewarn_cli(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``python -m forewarn.cli ARGS`` with ``env`` on top of this process's environment."""
    return subprocess.run([sys.executable, "-m", "forewarn.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout, check=False)


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


def make_stack(home: Path, *, secure: bool = False, topics: TopicSettings | None = None, brokers: int = 1,
               kafka_heap: str = "1g", netns: Network | None = None) -> LocalStack:
    """A stack on free ports in ``home``; ``topics``: the topic names a secure stack's ACLs grant
    (the default names otherwise); ``brokers`` > 1: a KRaft cluster of that many nodes;
    ``netns``: each node in its own namespace of that network (listening on its address there),
    Mosquitto on the host's address on its switch."""
    if brokers > 1:
        base = free_ports(2 * brokers)  # node i: base + 2(i-1), its controller one above
        port, controller = base, base + 1
    else:
        port, controller = free_port(), free_port()
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", client_id="forewarn-tests")
    mqtt = MqttSettings(port=free_port())
    settings = StackSettings(home=home, cache_dir=JAR_CACHE, controller_port=controller, kafka_heap=kafka_heap,
                             secure=secure, brokers=brokers)
    placement = None if netns is None else Placement(netns.host_address, netns.node_addresses, netns.node_prefixes)
    return LocalStack(settings, kafka, mqtt, topics, placement=placement)


