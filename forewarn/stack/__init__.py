"""The local stack: Mosquitto + Kafka (one node, or a KRaft cluster of ``stack.brokers``
nodes on this machine), started and stopped by pid.

With ``stack.secure`` both are secured (TLS, a login per component, least-privilege ACLs on
each broker); the material lives under ``HOME/secure`` (:mod:`forewarn.stack.secure`), and
``HOME/secure/clients/<principal>.toml`` holds each component's connection settings.

``LocalStack`` is what ``forewarn stack`` and the test fixtures use. The brokers listen where
the clients look (``mqtt.port``, the port of ``kafka.bootstrap_servers``). When those settings
name a remote host, no local broker is run for it: the remote one must answer instead. A
:class:`Placement` (Python only; the CLI always runs everything on 127.0.0.1) puts the local
brokers on other addresses of this machine, and each Kafka node under a command of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from forewarn.errors import KafkaError, StackError
from forewarn.kafka import KafkaAdmin
from forewarn.settings import KafkaSettings, MqttSettings, StackSettings, TopicSettings
from forewarn.stack._process import port_open, tail
from forewarn.stack.kafka import ADMIN, KafkaBroker, new_cluster_id
from forewarn.stack.kafka_acl import KAFKA_PRINCIPALS, grants
from forewarn.stack.mosquitto import Mosquitto
from forewarn.stack.secure import SecureMaterial
from forewarn.topics import Topics

__all__ = ["ComponentStatus", "KafkaBroker", "LocalStack", "Mosquitto", "Placement"]

log = logging.getLogger(__name__)


LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def _local_port(bootstrap: str) -> int | None:
    """The first port when ``bootstrap`` names local addresses only (we run those brokers:
    node 1 listens there), else None."""
    ports: list[int] = []
    for server in (s.strip() for s in bootstrap.split(",") if s.strip()):
        host, _, port = server.rpartition(":")
        if host not in LOCAL_HOSTS or not port.isdigit():
            return None
        ports.append(int(port))
    return ports[0] if ports else None


def _runs_secured(settings: StackSettings) -> bool:
    """True when this home's Kafka is running, and was started with --secure (so ``status``,
    ``down`` and a second ``up`` need not be told again)."""
    broker = KafkaBroker(settings, 0)
    try:
        return broker.process.pid() is not None and "SASL_SSL://" in broker.config_file.read_text()
    except OSError:
        return False


def _nodes_made(settings: StackSettings) -> int:
    """How many Kafka nodes this home's storage was formatted for (0: none yet)."""
    if KafkaBroker(settings, 0).cluster_id() is None:
        return 0
    return 1 + sum(1 for i in range(2, 10) if KafkaBroker(settings, 0, node_id=i, nodes=i).cluster_id())


@dataclass(frozen=True)
class Placement:
    """Where the local brokers run, when not all on 127.0.0.1: Mosquitto on ``mqtt_host``, Kafka
    node i on the i-th of ``kafka_hosts`` (listening, advertised and KRaft voter address) and
    started under the i-th of ``kafka_launch`` (an argv prefix). Each host must be reachable from
    this process (the fault campaign's nodes live in network namespaces: tests/netfaults.py).
    The settings given to :class:`LocalStack` still name 127.0.0.1 (the stack is local; they give
    its ports); :attr:`LocalStack.kafka_settings` and ``mqtt_settings`` reach the placed brokers.
    Plaintext only: the secure stack's certificates name 127.0.0.1 and localhost."""

    mqtt_host: str = "127.0.0.1"
    kafka_hosts: tuple[str, ...] = ()
    kafka_launch: tuple[tuple[str, ...], ...] = ()


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
                 mqtt: MqttSettings | None = None, topics: TopicSettings | None = None, *,
                 placement: Placement | None = None) -> None:
        self.settings = settings
        self._kafka_base = kafka or KafkaSettings()
        self._mqtt_base = mqtt or MqttSettings()
        self.topics = Topics.from_settings(topics or TopicSettings())
        local_port = _local_port(self._kafka_base.bootstrap_servers)
        self.external = local_port is None
        self.external_mqtt = self._mqtt_base.host not in LOCAL_HOSTS
        self.secure = SecureMaterial.for_home(settings.home) if settings.secure or _runs_secured(settings) else None
        if self.secure is not None and (self.external or self.external_mqtt):
            raise StackError("--secure runs the local brokers secured; it cannot secure a remote one",
                             hint="point kafka.bootstrap_servers and mqtt.host at this machine, or secure the "
                                  "remote brokers yourself")
        place = placement or Placement()
        if self.secure is not None and place != Placement():
            raise StackError("the secure stack's certificates name 127.0.0.1 and localhost only",
                             hint="run the secure stack without a placement")
        self.mosquitto = Mosquitto(settings, self._mqtt_base.port, self.secure, host=place.mqtt_host)
        made = _nodes_made(settings)
        nodes = made or settings.brokers
        self._node_mismatch = bool(made) and settings.brokers not in (1, made)
        if self.secure is not None and nodes > 1:
            raise StackError("--secure runs a single Kafka node for now", hint="leave out --brokers with --secure")
        for field, given in (("kafka_hosts", place.kafka_hosts), ("kafka_launch", place.kafka_launch)):
            if given and len(given) != nodes:
                raise StackError(f"the placement gives {len(given)} {field} for {nodes} Kafka node(s)")
        self.kafka_nodes = [KafkaBroker(settings, local_port or 9092, self.secure, node_id=i, nodes=nodes,
                                        hosts=place.kafka_hosts,
                                        launch=place.kafka_launch[i - 1] if place.kafka_launch else ())
                            for i in range(1, nodes + 1)]
        self.kafka = self.kafka_nodes[0]

    @property
    def bootstrap(self) -> str:
        """Every local Kafka node's address (a client reaches the cluster while one is down)."""
        return ",".join(node.bootstrap for node in self.kafka_nodes)

    @property
    def kafka_settings(self) -> KafkaSettings:
        """Client settings for the stack's Kafka (the remote cluster's when external)."""
        if self.external:
            return self._kafka_base
        return self.kafka.kafka_settings(self._kafka_base).model_copy(update={"bootstrap_servers": self.bootstrap})

    @property
    def mqtt_settings(self) -> MqttSettings:
        return self._mqtt_base if self.external_mqtt else self.mosquitto.mqtt_settings(self._mqtt_base)

    def client_settings(self, principal: str) -> tuple[KafkaSettings, MqttSettings]:
        """The Kafka and MQTT settings of one component of the secure stack (its login)."""
        return (self.kafka.client_settings(principal, self._kafka_base),
                self.mosquitto.client_settings(principal, self._mqtt_base))

    def add_login(self, kind: str, name: str) -> str:
        """A new MQTT login of the plant (``device`` site/machine, ``gateway`` site/id or
        ``maintenance`` site), taken by the running broker at once; returns its principal."""
        add = {"device": self.mosquitto.add_device, "gateway": self.mosquitto.add_gateway,
               "maintenance": self.mosquitto.add_maintenance_source}[kind]
        principal = add(name)
        assert self.secure is not None  # add() refused otherwise
        self.secure.write_client_config(principal, None, self.mosquitto.mqtt_settings(self._mqtt_base))
        return principal

    def rotate(self, principal: str) -> list[str]:
        """A new password for ``principal`` on every broker it logs in to, taken at once (the
        running brokers are told; a client must read its password file again when it next
        connects). Returns the brokers changed."""
        if self.secure is None:
            raise StackError("only a secure stack has logins", hint="start it with `forewarn stack up --secure`")
        on_mqtt = principal in self.mosquitto.mqtt_principals()
        on_kafka = principal in (ADMIN, *KAFKA_PRINCIPALS)
        if not (on_mqtt or on_kafka):
            raise StackError(f"{principal!r} has no login on this stack",
                             hint=f"principals: {', '.join(self.secure.principals())}")
        if principal == ADMIN:
            raise StackError("the admin's password is written into Kafka's storage and its server.properties",
                             hint="a new admin password needs a new stack home")
        changed = []
        if on_mqtt:
            self.mosquitto.rotate(principal)  # writes the new password, then the broker re-reads it
            changed.append("mosquitto")
        else:
            self.secure.rotate(principal)
        if on_kafka:
            if self.kafka.process.pid() is not None:
                self.kafka.apply_security([principal], [])
            changed.append("kafka")
        return changed

    def _secure_up(self, progress: Callable[[str], None]) -> None:
        """The Kafka logins and ACLs, and each component's client settings file."""
        assert self.secure is not None
        progress("setting the Kafka logins and ACLs")
        self.kafka.apply_security(KAFKA_PRINCIPALS, grants(self.topics))
        kafka = self._kafka_base.model_copy(update={"bootstrap_servers": self.kafka.bootstrap})
        mqtt = self.mosquitto.mqtt_settings(self._mqtt_base)
        on_mqtt = set(self.mosquitto.mqtt_principals())
        for principal in self.secure.principals():
            self.secure.write_client_config(
                principal, kafka if principal in (ADMIN, *KAFKA_PRINCIPALS) else None,
                mqtt if principal in on_mqtt else None)
        progress(f"client settings of every component: {self.secure.clients_dir}/<component>.toml")

    def up(self, progress: Callable[[str], None] = lambda _m: None) -> None:
        """Start what is not running and wait until both answer; on failure stop what we started."""
        self.settings.home.mkdir(parents=True, exist_ok=True)
        if self.secure is not None:
            self.secure.ensure(progress=progress)
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
            else:
                if self._node_mismatch:
                    raise StackError(f"the Kafka in {self.settings.home} was made with {len(self.kafka_nodes)} "
                                     f"node(s), not {self.settings.brokers}",
                                     hint="use another --home for another cluster size")
                cluster_id = next((i for i in (n.cluster_id() for n in self.kafka_nodes) if i), new_cluster_id())
                for node in self.kafka_nodes:
                    if node.process.pid() is None:
                        progress(f"starting {node.name} on {node.address}")
                        node.start(cluster_id)
                        started.append(node)
            t0 = time.monotonic()
            if not self.external_mqtt:
                self.mosquitto.wait_ready(timeout)
            if not self.external:
                for node in self.kafka_nodes:  # a cluster's nodes answer once a quorum of controllers is up
                    node.wait_ready(max(5.0, timeout - (time.monotonic() - t0)))
            if self.secure is not None:
                self._secure_up(progress)
        except (StackError, KafkaError):
            for component in reversed(started):
                component.stop()
            raise

    def down(self, progress: Callable[[str], None] = lambda _m: None) -> list[str]:
        """Stop Kafka, then Mosquitto, gracefully; returns the names of what was stopped. A
        cluster's nodes stop together: one by one, the last would wait for a controller quorum
        that has already gone."""
        running = [node for node in self.kafka_nodes if node.process.pid() is not None]
        for node in running:
            progress(f"stopping {node.name}")
        with ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
            done = list(pool.map(KafkaBroker.stop, running))
        stopped = [node.name for node, ok in zip(running, done, strict=True) if ok]
        if self.mosquitto.process.pid() is not None:
            progress("stopping mosquitto")
            if self.mosquitto.stop():
                stopped.append(self.mosquitto.name)
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
            for node in self.kafka_nodes:
                note = ("KRaft, single node" if node.nodes == 1 else f"KRaft, node {node.node_id} of {node.nodes}") + (
                    "; SASL_SSL (SCRAM-SHA-512), ACLs" if self.secure is not None else "")
                result.append(ComponentStatus(node.name, node.address, node.process.pid(), node.healthy(), note))
        return result

    def components(self) -> dict[str, Mosquitto | KafkaBroker]:
        """The local brokers by name (mosquitto, kafka or kafka-1 … kafka-N)."""
        return {"mosquitto": self.mosquitto, **{node.name: node for node in self.kafka_nodes},
                **({"kafka": self.kafka} if len(self.kafka_nodes) > 1 else {})}

    def logs(self, component: str, lines: int = 50) -> str:
        found = self.components().get(component)
        if found is None:
            raise StackError(f"unknown component {component!r}", hint=f"use {' or '.join(self.components())}")
        return tail(found.log_path(), lines)

    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()
