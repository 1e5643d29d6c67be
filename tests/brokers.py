"""MQTT brokers other than Mosquitto, for the bridge's interoperability tests: aedes (Node.js, from
the npm registry through ``deploy/aedes``) and Moquette (Java, from Maven Central through
``deploy/moquette/pom.xml``), both MQTT 3.1.1 only without shared subscriptions, and HiveMQ
Community Edition (Java, embedded, from Maven Central through ``deploy/hivemq/pom.xml`` with a
launcher compiled by javac), MQTT 5 and 3.1.1 with shared subscriptions.

Each is installed once into the jar cache (a folder named by a hash of its manifest, completed
by a marker file), started on a free port in a temporary home, and is ready when it accepts an
MQTT CONNECT. ``python -m tests.brokers`` installs all three (``.ci/run`` does, so a missing
registry fails early with one line).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from forewarn.errors import ForewarnError, StackError
from forewarn.mqtt import MqttClient
from forewarn.settings import KafkaSettings, MqttSettings
from forewarn.stack._process import ManagedProcess, port_free, port_open, tail
from forewarn.topics import maintenance_topic
from tests.stacks import JAR_CACHE, REPO

HOST = "127.0.0.1"
AEDES_DIR = REPO / "deploy" / "aedes"
MOQUETTE_POM = REPO / "deploy" / "moquette" / "pom.xml"
HIVEMQ_POM = REPO / "deploy" / "hivemq" / "pom.xml"
HIVEMQ_LAUNCHER = REPO / "deploy" / "hivemq" / "src" / "forewarn" / "hivemq" / "Launcher.java"
INTEROP_BROKERS = ("aedes", "moquette", "hivemq")
# What each speaks: MQTT versions, and whether it knows ``$share/...`` filters (the others take
# such a filter as a literal topic).
_SPEAKS: dict[str, tuple[frozenset[str], bool]] = {
    "aedes": (frozenset({"3.1.1"}), False),
    "moquette": (frozenset({"3.1.1"}), False),
    "hivemq": (frozenset({"5", "3.1.1"}), True),
}


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name} not found", hint=hint)
    return found


def _cached_install(cache: Path, name: str, manifest: Sequence[Path],
                    install: Callable[[Path], list[list[str]]]) -> Path:
    """Run the commands ``install(staging)`` returns, in order, once per content of ``manifest``
    and return the finished folder."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in manifest)).hexdigest()[:12]
    done = (cache / f"{name}-{digest}").resolve()
    if (done / ".complete").is_file():
        return done
    staging = done.with_name(done.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for argv in install(staging):
        result = subprocess.run(argv, cwd=staging, capture_output=True, text=True, check=False, timeout=600)
        if result.returncode != 0:
            last = (result.stdout + result.stderr).strip().splitlines()[-3:]
            raise StackError(f"installing {name} failed ({argv[0]} exit {result.returncode}): {' / '.join(last)}")
    shutil.rmtree(done, ignore_errors=True)
    staging.rename(done)
    (done / ".complete").write_text(digest + "\n")
    return done


def fetch_aedes(cache: Path = JAR_CACHE) -> Path:
    """A folder with ``server.js`` and its ``node_modules`` (``npm ci`` of deploy/aedes's lock file)."""
    files = [AEDES_DIR / "package.json", AEDES_DIR / "package-lock.json", AEDES_DIR / "server.js"]
    npm = _tool("npm", "install Node.js: apt-get install nodejs npm")

    def install(staging: Path) -> list[list[str]]:
        for f in files:
            shutil.copy2(f, staging / f.name)
        return [[npm, "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"]]

    return _cached_install(cache, "aedes", files, install)


def _copy_dependencies(pom: Path, into: Path) -> list[str]:
    mvn = _tool("mvn", "install Maven: apt-get install maven")
    return [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={into}"]


def fetch_moquette(cache: Path = JAR_CACHE) -> Path:
    """A folder with Moquette's jars (Maven's copy-dependencies of deploy/moquette/pom.xml)."""
    return _cached_install(cache, "moquette-jars", [MOQUETTE_POM],
                           lambda staging: [_copy_dependencies(MOQUETTE_POM, staging)])


def fetch_hivemq(cache: Path = JAR_CACHE) -> Path:
    """A folder with HiveMQ CE's jars in ``lib`` (copy-dependencies of deploy/hivemq/pom.xml) and
    the launcher compiled against them in ``classes``."""
    javac = _tool("javac", "install a Java 17 JDK: apt-get install openjdk-17-jdk-headless")

    def install(staging: Path) -> list[list[str]]:
        return [_copy_dependencies(HIVEMQ_POM, staging / "lib"),
                [javac, "--release", "17", "-encoding", "UTF-8", "-cp", f"{staging / 'lib'}/*",
                 "-d", str(staging / "classes"), str(HIVEMQ_LAUNCHER)]]

    return _cached_install(cache, "hivemq", [HIVEMQ_POM, HIVEMQ_LAUNCHER], install)


_MOQUETTE_CONF = """\
# Generated by tests/brokers.py for one test session.
port {port}
host {host}
websocket_port disabled
allow_anonymous true
# Sessions and their QoS 1 queues on disk (H2 + segmented queues), so a persistent session
# keeps what arrived while its client was away.
persistence_enabled true
data_path {data}
# Moquette's defaults (1,024 queued messages per session, 8 KiB packets) are too small for an
# offline bridge catching up: the same order as Mosquitto's queue in forewarn/stack.
session_queue_size 1000000
netty.mqtt.message_size 8388608
"""

_MOQUETTE_LOG = """\
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%d %p [%t] %c{1} %m%n
"""


@dataclass
class InteropBroker:
    """One non-Mosquitto MQTT broker process on ``port``, with its home and log.

    ``protocols`` are the MQTT versions it speaks; ``shared_subscriptions`` whether it knows
    ``$share/...`` filters (aedes and Moquette take one as a literal topic; HiveMQ knows them)."""

    name: str
    home: Path
    port: int
    cache: Path = JAR_CACHE
    protocols: frozenset[str] = field(init=False)
    shared_subscriptions: bool = field(init=False)
    process: ManagedProcess = field(init=False)

    def __post_init__(self) -> None:
        if self.name not in INTEROP_BROKERS:
            raise StackError(f"unknown MQTT broker {self.name!r}", hint=f"use one of {', '.join(INTEROP_BROKERS)}")
        self.protocols, self.shared_subscriptions = _SPEAKS[self.name]
        self.home.mkdir(parents=True, exist_ok=True)
        marker = str(self.home.resolve())
        self.process = ManagedProcess(self.name, self.home / f"{self.name}.pid", self.home / f"{self.name}.log",
                                      marker=marker)

    @property
    def mqtt_settings(self) -> MqttSettings:
        return MqttSettings(host=HOST, port=self.port)

    def argv(self) -> list[str]:
        if self.name == "aedes":
            node = _tool("node", "install Node.js: apt-get install nodejs npm")
            # The home is in the argv so that ManagedProcess can tell this process from others.
            return [node, str(fetch_aedes(self.cache) / "server.js"), str(self.port), HOST, str(self.home.resolve())]
        java = _tool("java", "install Java 17: apt-get install openjdk-17-jre-headless")
        if self.name == "hivemq":
            hivemq = fetch_hivemq(self.cache)
            # The launcher writes the config (listener on HOST:port) into the home it is given.
            return [java, "-Xmx256m", "-XX:+ExitOnOutOfMemoryError", "-cp", f"{hivemq}/lib/*:{hivemq}/classes",
                    "forewarn.hivemq.Launcher", str(self.home.resolve()), str(self.port), HOST]
        jars = fetch_moquette(self.cache)
        config = self.home / "config"
        config.mkdir(exist_ok=True)
        (self.home / "data").mkdir(exist_ok=True)
        (config / "moquette.conf").write_text(_MOQUETTE_CONF.format(port=self.port, host=HOST,
                                                                    data=(self.home / "data").resolve()))
        (config / "moquette-log.properties").write_text(_MOQUETTE_LOG)
        return [java, "-Xmx256m", "-XX:+ExitOnOutOfMemoryError", f"-Dmoquette.path={self.home.resolve()}",
                f"-Dlog4j.configuration=file:{(config / 'moquette-log.properties').resolve()}",
                "-cp", f"{jars}/*", "io.moquette.broker.Server"]

    def start(self) -> None:
        if not port_free(HOST, self.port):
            raise StackError(f"port {self.port} is in use, so {self.name} cannot listen on it")
        self.process.start(self.argv())

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the broker accepts an MQTT 3.1.1 CONNECT (or exits, or the deadline passes)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.exited() is not None:
                raise StackError(f"{self.name} exited at start; last log lines:\n{tail(self.process.log_file)}")
            if port_open(HOST, self.port):
                settings = self.mqtt_settings.model_copy(update={"protocol": "3.1.1"})
                probe = MqttClient(settings, f"probe-{uuid.uuid4().hex[:8]}")  # 3.1.1: at most 23 chars
                try:
                    probe.connect(timeout_s=5)
                    probe.disconnect()
                    return
                except ForewarnError:
                    pass  # listening, not yet serving: ask again
            time.sleep(0.1)
        raise StackError(f"{self.name} did not accept an MQTT CONNECT within {timeout_s:.0f}s; last log lines:\n"
                         f"{tail(self.process.log_file)}")

    def stop(self) -> None:
        self.process.stop(timeout_s=15)

    def log(self) -> str:
        return tail(self.process.log_file, 200)


# Moquette 0.17 (the last release on Maven Central here) loses a QoS 1 message now and then around a
# persistent session's reconnect. From its source: the packet-id counter is the connection's and
# restarts at 1 while the session's in-flight window survives, so a new message can take the id of
# one still in flight, which is then discarded (MQTT 3.1.1 2.3.1; Session.java 439-446); unacknowledged
# messages are re-sent by a 5 s timer, not at the reconnect (4.4); a PUBLISH that arrives before the
# connection is bound to its session is dropped unacknowledged. Seen without the bridge as well; no
# client can recover a message the broker dropped. Other errors still fail the test.
MOQUETTE_LOSES_AT_DISCONNECT = pytest.mark.xfail(
    raises=AssertionError, strict=False,
    reason="Moquette 0.17 may drop QoS 1 messages routed to a persistent session as its connection closes")


@dataclass(frozen=True)
class MqttBrokerUnderTest:
    """What the ``mqtt_broker`` fixture gives a test: which broker, how to reach it, what it speaks."""

    name: str
    mqtt_settings: MqttSettings
    protocols: frozenset[str]
    shared_subscriptions: bool
    log: Callable[[], str]


def until_routed(kafka: KafkaSettings, mqtt: MqttSettings, kafka_topic: str, timeout_s: float = 30.0) -> None:
    """Publish a maintenance event (an inspection of ``site-w/warmup``) until one is in
    ``kafka_topic`` (the bridge's maintenance topic): the bridge's subscription routes now. A
    broker may answer a SUBSCRIBE before it routes to it (Moquette), and what is published before
    a session subscribed is not that session's. Telemetry and the dead-letter topic stay untouched."""
    from tests.bridge.helpers import TS0, publish_all, topic_size

    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline:
        event = {"v": 1, "machine_id": "site-w/warmup", "ts": TS0 + n, "event": "inspection"}
        publish_all(mqtt, [(maintenance_topic("site-w/warmup"), json.dumps(event).encode())])
        n += 1
        poll_until = time.monotonic() + 2
        while time.monotonic() < poll_until:
            if topic_size(kafka, kafka_topic) > 0:
                return
            time.sleep(0.05)
    raise StackError(f"no warm-up event reached {kafka_topic} within {timeout_s:.0f}s")


def main() -> int:
    """Install all three brokers into the cache; one line on failure."""
    try:
        print(f"aedes: {fetch_aedes()}")
        print(f"moquette: {fetch_moquette()}")
        print(f"hivemq: {fetch_hivemq()}")
    except StackError as error:
        print(f"error: {error.one_line()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
