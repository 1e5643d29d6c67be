"""The local stack: Mosquitto + a single-node Kafka, started and stopped by pid.

``LocalStack`` is what ``forewarn stack`` and the test fixtures use. The brokers listen where
the clients look (``mqtt.port``, the port of ``kafka.bootstrap_servers``). When those settings
name a remote host, no local broker is run for it: the remote one must answer instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from forewarn.errors import KafkaError, StackError
from forewarn.kafka import KafkaAdmin
from forewarn.settings import KafkaSettings, MqttSettings, StackSettings
from forewarn.stack._process import port_open, tail
from forewarn.stack.kafka import KafkaBroker
from forewarn.stack.mosquitto import Mosquitto

__all__ = ["ComponentStatus", "KafkaBroker", "LocalStack", "Mosquitto"]

log = logging.getLogger(__name__)


LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def _local_port(bootstrap: str) -> int | None:
    """The port when ``bootstrap`` is one local address (we run that broker), else None."""
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    if len(servers) != 1:
        return None
    host, _, port = servers[0].rpartition(":")
    if host not in LOCAL_HOSTS or not port.isdigit():
        return None
    return int(port)


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    address: str
    pid: int | None
    healthy: bool
    note: str = ""


class LocalStack:
    """Mosquitto and Kafka for one ``stack.home``."""

    def __init__(self, settings: StackSettings, kafka: KafkaSettings | None = None,
                 mqtt: MqttSettings | None = None) -> None:
        self.settings = settings
        self._kafka_base = kafka or KafkaSettings()
        self._mqtt_base = mqtt or MqttSettings()
        local_port = _local_port(self._kafka_base.bootstrap_servers)
        self.external = local_port is None
        self.external_mqtt = self._mqtt_base.host not in LOCAL_HOSTS
        self.mosquitto = Mosquitto(settings, self._mqtt_base.port)
        self.kafka = KafkaBroker(settings, local_port or 9092)

    @property
    def kafka_settings(self) -> KafkaSettings:
        """Client settings for the stack's Kafka (the remote cluster's when external)."""
        return self._kafka_base if self.external else self.kafka.kafka_settings(self._kafka_base)

    @property
    def mqtt_settings(self) -> MqttSettings:
        return self._mqtt_base if self.external_mqtt else self.mosquitto.mqtt_settings(self._mqtt_base)

    def up(self, progress: Callable[[str], None] = lambda _m: None) -> None:
        """Start what is not running and wait until both answer; on failure stop what we started."""
        self.settings.home.mkdir(parents=True, exist_ok=True)
        timeout = self.settings.startup_timeout_s
        started: list[Mosquitto | KafkaBroker] = []
        try:
            if self.external_mqtt:
                progress(f"using the MQTT broker at {self._mqtt_base.host}:{self._mqtt_base.port}")
            elif self.mosquitto.process.pid() is None:
                progress(f"starting mosquitto on {self.mosquitto.address}")
                self.mosquitto.start()
                started.append(self.mosquitto)
            if self.external:
                progress(f"checking the Kafka cluster at {self._kafka_base.bootstrap_servers}")
                KafkaAdmin(self._kafka_base).ping(timeout_s=min(timeout, 15))
            elif self.kafka.process.pid() is None:
                progress(f"starting kafka on {self.kafka.address}")
                self.kafka.start()
                started.append(self.kafka)
            t0 = time.monotonic()
            if not self.external_mqtt:
                self.mosquitto.wait_ready(timeout)
            if not self.external:
                self.kafka.wait_ready(max(5.0, timeout - (time.monotonic() - t0)))
        except (StackError, KafkaError):
            for component in reversed(started):
                component.stop()
            raise

    def down(self, progress: Callable[[str], None] = lambda _m: None) -> list[str]:
        """Stop Kafka, then Mosquitto, gracefully; returns the names of what was stopped."""
        stopped: list[str] = []
        for component in (self.kafka, self.mosquitto):
            if component.process.pid() is not None:
                progress(f"stopping {component.name}")
                if component.stop():
                    stopped.append(component.name)
        return stopped

    def status(self) -> list[ComponentStatus]:
        if self.external_mqtt:
            m = self._mqtt_base
            result = [ComponentStatus("mosquitto", f"mqtt://{m.host}:{m.port}", None, port_open(m.host, m.port, 3),
                                      "external broker")]
        else:
            result = [ComponentStatus("mosquitto", self.mosquitto.address, self.mosquitto.process.pid(),
                                      self.mosquitto.healthy(), self.mosquitto.exposure())]
        if self.external:
            try:
                brokers = len(KafkaAdmin(self._kafka_base).ping(timeout_s=5).brokers)
                result.append(ComponentStatus("kafka", self._kafka_base.bootstrap_servers, None, brokers > 0,
                                              f"external cluster, {brokers} brokers"))
            except KafkaError as error:
                result.append(ComponentStatus("kafka", self._kafka_base.bootstrap_servers, None, False,
                                              error.one_line()))
        else:
            result.append(ComponentStatus("kafka", self.kafka.address, self.kafka.process.pid(),
                                          self.kafka.healthy(), "KRaft, single node"))
        return result

    def logs(self, component: str, lines: int = 50) -> str:
        if component not in ("mosquitto", "kafka"):
            raise StackError(f"unknown component {component!r}", hint="use mosquitto or kafka")
        target = self.mosquitto.log_path() if component == "mosquitto" else self.kafka.log_path()
        return tail(target, lines)

    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()
