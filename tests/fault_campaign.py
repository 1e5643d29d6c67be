"""A fault campaign on a local three-node Kafka cluster, shared by its integration test (CI
sizes) and ``benchmarks/faults.py`` (full size).

Each scenario runs the pipeline on fresh topics (replication 3, ``min.insync.replicas`` 2):
the real bridge (one process, MQTT → Kafka) and two real scoring workers (one consumer group,
exactly-once transactions). A publisher sends simulated fleet telemetry over MQTT at a steady
rate, the readings of one site as single messages and those of the other as gateway batches.
When a share of the load is out, the fault is done for real (kill -9, SIGSTOP, a rebalance
storm) and healed; when the load is done and the pipeline has caught up, every hop is counted:

- MQTT: messages and readings published, and acknowledged (PUBACK) by Mosquitto;
- ``telemetry``: distinct readings, duplicates, and acknowledged readings that never arrived;
- ``predictions`` (read_committed): each one against the reference, what an uninterrupted
  worker commits for the same readings (computed in-process), missing and extra;
- ``alerts`` (read_committed), counted;
- recovery: from the fault to the first committed prediction of a reading published after it,
  and the longest pause between committed predictions from the fault to the end.

What happened is described in ``observed`` (which broker was killed, which leaders moved).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import confluent_kafka
import msgspec
from confluent_kafka import admin as kadmin
from paho.mqtt.enums import MQTTErrorCode

from forewarn.bundle import Bundle, pack, write_bundle
from forewarn.contract import SCHEMA_VERSION, GatewayBatch, Prediction, Telemetry, encode, site_of
from forewarn.errors import KafkaError
from forewarn.kafka import KafkaAdmin
from forewarn.settings import KafkaSettings, MqttSettings, StackSettings, TopicSettings
from forewarn.stack import LocalStack
from forewarn.stack.kafka import KafkaBroker
from forewarn.stack.mosquitto import Mosquitto
from forewarn.topics import Topics, batch_topic, default_replication, telemetry_topic, topic_specs
from tests.bridge.helpers import BridgeProcess, connected_publisher, count_telemetry, topic_size
from tests.edge.procs import EdgeProcess
from tests.netfaults import Network, Shaping
from tests.scoring.fleet_data import FleetData, fitted_bundle, simulate
from tests.scoring.procs import (
    PredictionKey,
    Worker,
    offline,
    prediction_keys,
    publish_model,
    read_committed,
    wait_for,
)
from tests.stacks import free_port

log = logging.getLogger("faults")

Identity = tuple[str, int]
_prediction = msgspec.json.Decoder(Prediction)
# Workers commit often and notice a lost member quickly: scenarios stay short.
WORKER_ARGS = ("--max-batch", "200", "--commit-interval-ms", "100")


# -- the load ---------------------------------------------------------------------------------

@dataclass
class Load:
    """Simulated fleet telemetry as MQTT messages, and the predictions it must give."""

    data: FleetData
    bundle: Bundle
    messages: list[tuple[str, bytes, tuple[Identity, ...]]]  # MQTT topic, payload, readings in it
    reference: list[PredictionKey]
    edge_messages: list[tuple[str, bytes, tuple[Identity, ...]]]  # the plant broker's, for the edge gateway
    edge_reference: list[PredictionKey]  # what the edge must forward for them

    @property
    def readings(self) -> int:
        return len(self.data.readings)

    @property
    def edge_readings(self) -> int:
        return len(self.edge_messages)

    def reference_for(self, arrived: Collection[Identity], *, edge: bool) -> list[PredictionKey]:
        """The reference for the readings that ``arrived`` (in telemetry): the precomputed one
        when every reading did, else an uninterrupted run on exactly those (a reading that a
        broker's crash lost leaves a gap in its machine's window, and the pipeline handles it)."""
        messages, reference = (self.edge_messages, self.edge_reference) if edge else (self.messages, self.reference)
        wanted = {ident for _t, _p, idents in messages for ident in idents}
        if wanted <= set(arrived):
            return reference
        kept = set(arrived) & wanted
        return offline(dataclasses.replace(self.data, readings=[r for r in self.data.readings
                                                                if (r.machine_id, r.seq) in kept]), self.bundle)


# How long before a kill -9 a Mosquitto saving after every change may have acknowledged a message
# it had not saved yet (see Run.lost_in_crash).
_SAVED_ON_CHANGE_WINDOW_S = 0.5


def make_load(machines: int, ticks: int, seed: int = 11) -> Load:
    """``machines`` over two sites for ``ticks`` ticks: the first site's machines publish each
    reading alone, the second's go in gateway batches (one per tick of that site)."""
    data = simulate(machines=machines, ticks=ticks, seed=seed)
    sites = sorted({site_of(r.machine_id) for r in data.readings})
    batched = sites[-1]
    per_batch = len({r.machine_id for r in data.readings if site_of(r.machine_id) == batched})
    gateway = f"{batched}/gw-1"
    messages: list[tuple[str, bytes, tuple[Identity, ...]]] = []
    pending: list[Telemetry] = []

    def flush() -> None:
        if pending:
            payload = encode(GatewayBatch(SCHEMA_VERSION, gateway, list(pending)))
            messages.append((batch_topic(batched, gateway), payload, tuple((r.machine_id, r.seq) for r in pending)))
            pending.clear()

    for r in data.readings:
        if site_of(r.machine_id) != batched:
            messages.append((telemetry_topic(r.machine_id), encode(r), ((r.machine_id, r.seq),)))
            continue
        pending.append(r)
        if len(pending) == per_batch:
            flush()
    flush()
    bundle = fitted_bundle(data)
    # The edge gateway's plant: the first site's readings again, alone, on a broker of their own;
    # the edge forwards them to topics of its own, so the workers never see them.
    edge_site = sites[0]
    edge_messages = [m for m in messages if len(m[2]) == 1 and site_of(m[2][0][0]) == edge_site]
    edge_data = dataclasses.replace(data, readings=[r for r in data.readings if site_of(r.machine_id) == edge_site])
    return Load(data, bundle, messages, offline(data, bundle), edge_messages, offline(edge_data, bundle))


class Publisher(threading.Thread):
    """Publishes a load over MQTT (QoS 1) at ``rate`` readings/s; counts what Mosquitto acknowledged
    and when each reading went out."""

    def __init__(self, mqtt: MqttSettings, messages: list[tuple[str, bytes, tuple[Identity, ...]]], rate: float,
                 name: str = "publisher") -> None:
        super().__init__(daemon=True, name=name)
        self.mqtt, self.messages, self.rate = mqtt, messages, rate
        self.readings = sum(len(m[2]) for m in messages)
        self.sent_at: dict[Identity, float] = {}
        self.published_messages = self.published_readings = 0
        self.acked_messages = 0
        self.acked: set[Identity] = set()
        self.error: BaseException | None = None
        self._by_mid: dict[int, tuple[Identity, ...]] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()

    def progress(self) -> float:
        return self.published_readings / max(1, self.readings)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the campaign, not lost in a thread
            self.error = exc

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, _rc: Any, _props: Any) -> None:
        with self._lock:  # (paho calls this holding its own lock: never publish() holding this one)
            readings = self._by_mid.pop(mid, None)
            if readings is None:  # acknowledged before publish() returned its mid
                self._early.add(mid)
            else:
                self._ack(readings)

    def _ack(self, readings: tuple[Identity, ...]) -> None:
        self.acked_messages += 1
        self.acked.update(readings)

    def _run(self) -> None:
        client = connected_publisher(self.mqtt, f"campaign-{uuid.uuid4().hex[:8]}", max_inflight=200)
        client.on_publish = self._on_publish
        try:
            start = time.monotonic()
            for topic, payload, readings in self.messages:
                delay = start + self.published_readings / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                while (info := client.publish(topic, payload, qos=1)).rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                    time.sleep(0.01)
                with self._lock:
                    if info.mid in self._early:
                        self._early.discard(info.mid)
                        self._ack(readings)
                    else:
                        self._by_mid[info.mid] = readings
                now = time.monotonic()
                for ident in readings:
                    self.sent_at[ident] = now
                self.published_messages += 1
                self.published_readings += len(readings)
            deadline = time.monotonic() + 120
            while self.acked_messages < self.published_messages and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            client.disconnect()
            client.loop_stop()


class EdgePlant:
    """The edge gateway's side of a scenario: a plant Mosquitto of its own, a real ``forewarn
    edge`` on it (seeded with the bundle on disk) forwarding to topics of its own prefix, and a
    publisher of the plant's readings paced to end with the main load."""

    def __init__(self, kafka: KafkaSettings, load: Load, work: Path, prefix: str, *, rate: float,
                 partitions: int, replication: int | None, autosave_on_changes: int | None) -> None:
        self.settings = TopicSettings(prefix=f"{prefix}edge.", partitions=partitions, replication_factor=replication)
        self.topics = Topics.from_settings(self.settings)
        KafkaAdmin(kafka).ensure_topics(topic_specs(self.settings))
        seed = work / "edge-seed"
        write_bundle(seed, load.bundle.meta, load.bundle.onnx, make_current=True, release=load.bundle.release)
        # Saved as the stack's Mosquitto is (the campaign's saves after every change).
        self.broker = Mosquitto(StackSettings(home=work / "plant", autosave_on_changes=autosave_on_changes),
                                free_port())
        self.broker.start()
        self.broker.wait_ready(30)
        self.mqtt = self.broker.mqtt_settings()
        self.gateway = EdgeProcess(work / "edge.log", kafka, self.mqtt, self.settings, work / "edge-data",
                                   "--models-dir", str(seed), "--no-models-sync", "--shutdown-timeout", "10",
                                   client_id=f"{prefix}edge")
        self.gateway.start()
        self.publisher = Publisher(self.mqtt, load.edge_messages, rate * load.edge_readings / max(1, load.readings),
                                   name="plant-publisher")

    def restart_broker(self) -> None:
        self.broker.start()
        self.broker.wait_ready(30)

    def stop(self) -> None:
        if self.gateway.proc is not None and self.gateway.proc.poll() is None:
            try:
                self.gateway.terminate()
            except Exception:
                self.gateway.kill9()
        self.broker.stop()


class PredictionTail(threading.Thread):
    """Reads committed predictions as they come, noting when each arrived (for recovery times)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        super().__init__(daemon=True, name="prediction-tail")
        self.arrivals: list[tuple[float, Identity]] = []
        self._halt = threading.Event()
        self._consumer = confluent_kafka.Consumer({
            "bootstrap.servers": kafka.bootstrap_servers, "group.id": f"tail-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed", "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "log_level": 2})
        self._consumer.subscribe([topic])

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                for m in self._consumer.consume(2000, 0.2):
                    if m.error() is None:
                        p = _prediction.decode(m.value() or b"")
                        self.arrivals.append((time.monotonic(), (p.machine_id, p.seq)))
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


# -- the cluster ------------------------------------------------------------------------------

class ClusterView:
    """One admin client for a scenario's questions to the cluster (a client per question would
    each log its own "connection refused" for a killed node)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._client = kadmin.AdminClient({"bootstrap.servers": kafka.bootstrap_servers, "log_level": 2})
        self.last_state = "not described yet"

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition → leader node id (-1 while none is elected)."""
        partitions = self._client.list_topics(topic, timeout=5).topics[topic].partitions
        return {p: meta.leader for p, meta in partitions.items()}

    def members(self, group: str) -> int:
        """Members of a stable ``group``; -1 while it rebalances or cannot be described."""
        try:
            described = self._client.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
        except confluent_kafka.KafkaException as exc:
            self.last_state = f"not described: {exc}"
            return -1
        self.last_state = f"{described.state} with {len(described.members)} members"
        return len(described.members) if str(described.state).endswith("STABLE") else -1

    def replicas(self, topic: str) -> dict[int, list[int]]:
        """Partition → its replicas' node ids."""
        partitions = self._client.list_topics(topic, timeout=5).topics[topic].partitions
        return {p: list(meta.replicas) for p, meta in partitions.items()}

    def out_of_sync(self, node_id: int) -> int:
        """Partitions, of every topic, that have ``node_id`` as a replica but not in their ISR
        (-1 while the cluster cannot be asked)."""
        try:
            topics = self._client.list_topics(timeout=5).topics
        except confluent_kafka.KafkaException:
            return -1
        return sum(1 for t in topics.values() for p in t.partitions.values()
                   if node_id in p.replicas and node_id not in p.isrs)


def active_controller(stack: LocalStack) -> KafkaBroker:
    """The KRaft quorum's leader, from the nodes' ``quorum-state`` files (the newest epoch's
    view): Kafka's describe-cluster answer names any broker in KRaft mode, not the controller."""
    best: tuple[int, int] = (-1, -1)
    for node in stack.kafka_nodes:
        state_file = node.data / "__cluster_metadata-0" / "quorum-state"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if state.get("leaderId", -1) >= 0:
            best = max(best, (int(state.get("leaderEpoch", -1)), int(state["leaderId"])))
    if best[1] < 0:
        raise RuntimeError("no node knows the KRaft quorum's leader")
    return next(n for n in stack.kafka_nodes if n.node_id == best[1])


# -- one scenario -----------------------------------------------------------------------------

@dataclass
class Run:
    """A scenario's running pipeline: what its fault may touch."""

    stack: LocalStack
    kafka: KafkaSettings
    topics: Topics
    group: str
    publisher: Publisher
    bridge: BridgeProcess
    workers: list[Worker]
    work: Path
    new_bridge: Callable[[], BridgeProcess]
    new_worker: Callable[[str], Worker]
    view: ClusterView
    edge: EdgePlant
    replication: int  # of the scenario's topics
    observed: list[str] = field(default_factory=list)
    mqtt_crashes: list[tuple[Mosquitto, float]] = field(default_factory=list)  # (broker, when) of each kill -9
    fault_at: float = 0.0
    healed_at: float = 0.0
    net: Network | None = None  # the namespaced cluster's network (tests/netfaults.py), if it runs on one

    def note(self, text: str) -> None:
        log.info("%s", text)
        self.observed.append(text)

    def busiest_leader(self) -> KafkaBroker:
        """The node leading the most telemetry partitions."""
        counts = Counter(self.view.leaders(self.topics.telemetry).values())
        node_id = max(counts, key=lambda n: (counts[n], -n))
        return next(n for n in self.stack.kafka_nodes if n.node_id == node_id)

    def await_new_leaders(self, victim: KafkaBroker, timeout_s: float = 60) -> None:
        """Until no telemetry partition is led by ``victim`` or by no one. With one replica
        there is no other to elect: note which partitions are leaderless instead."""
        if self.replication == 1:
            orphaned = sorted(p for p, n in self.view.leaders(self.topics.telemetry).items()
                              if n in (-1, victim.node_id))
            self.note(f"telemetry partitions {orphaned} have no leader until {victim.name} is back (one replica)")
            return
        wait_for(lambda: all(n not in (-1, victim.node_id) for n in self.view.leaders(self.topics.telemetry).values()),
                 timeout_s, "new leaders for the telemetry partitions")
        self.note(f"new leaders after {time.monotonic() - self.fault_at:.1f}s")

    def lost_in_crash(self, lost: set[Identity], publisher: Publisher, home: Path) -> int:
        """Of ``lost`` readings, those the Mosquitto of ``home`` acknowledged in its last autosave interval before
        a kill -9: Mosquitto acknowledges a QoS 1 message before it is on disk (it saves every
        ``autosave_interval_s``), so a crash loses what it had not yet passed on or saved. Saving
        after every change narrows that to an instant, not to nothing (one acknowledged reading
        was lost that way in a make test run; the PUBACK presumably goes out while the packet is
        handled, the save at the end of that pass of its loop; not checked in its source), so what was
        acknowledged in the last ``_SAVED_ON_CHANGE_WINDOW_S`` before the kill counts as the crash's."""
        crashes = [(b, t) for b, t in self.mqtt_crashes if b.settings.home == home]
        if not crashes:
            return 0
        window = max(_SAVED_ON_CHANGE_WINDOW_S if b.settings.autosave_on_changes is not None
                     else b.settings.autosave_interval_s + 1.0 for b, _t in crashes)
        return sum(1 for ident in lost
                   if any(t - window <= publisher.sent_at.get(ident, -1e9) <= t for _b, t in crashes))

    def restart_mosquitto(self) -> None:
        """Start the stack's Mosquitto and the plant's again (those that are down)."""
        self.stack.mosquitto.start()
        self.stack.mosquitto.wait_ready(30)
        self.edge.restart_broker()
        self.note("started both Mosquittos again")

    def wait_progress(self, share: float, timeout_s: float = 300) -> None:
        """Until ``share`` of the load has been published."""
        wait_for(lambda: self.publisher.progress() >= min(share, 1.0) or not self.publisher.is_alive(), timeout_s,
             f"{share:.0%} of the load to be published")

    def wait_members(self, count: int, what: str, timeout_s: float = 120) -> None:
        """Until the scoring group is stable with ``count`` members; a time-out names the state
        the group was last seen in and the workers' last log lines."""
        try:
            wait_for(lambda: self.view.members(self.group) == count, timeout_s, what)
        except AssertionError as exc:
            tails = "; ".join(f"{w.log_path.stem}: {w.log().strip().splitlines()[-1:]}" for w in self.workers
                              if w.log_path.exists())
            raise AssertionError(f"{exc} (group last {self.view.last_state}; {tails})") from None

    def restart_brokers(self) -> None:
        """``forewarn stack up``'s way: start the nodes that are down, wait until they answer."""
        down = [n.name for n in self.stack.kafka_nodes if n.process.pid() is None]
        self.stack.up()
        self.note(f"started {', '.join(down)} again")


Fault = Callable[[Run], None]


@dataclass
class ScenarioResult:
    name: str
    done: str
    observed: list[str]
    published_messages: int
    published_readings: int
    acked_readings: int
    telemetry_distinct: int
    telemetry_duplicates: int
    readings_lost: int  # acknowledged on MQTT, never in telemetry (but for lost_in_mqtt_crash)
    lost_in_mqtt_crash: int  # acknowledged by a Mosquitto in its last autosave interval before its kill -9
    predictions_expected: int
    predictions_committed: int
    predictions_missing: int
    predictions_extra: int
    alerts: int
    edge_acked_readings: int  # by the plant's Mosquitto, for the edge gateway
    edge_readings_lost: int  # acknowledged by the plant's broker, never in the edge's telemetry topic
    edge_lost_in_mqtt_crash: int
    edge_telemetry_duplicates: int
    edge_predictions_missing: int  # against the reference for the plant's machines
    edge_predictions_wrong: int  # distinct predictions the reference does not have
    edge_predictions_duplicates: int  # forwarded more than once (the edge forwards at least once)
    recovery_s: float | None  # fault to the first committed prediction of a reading published after it
    longest_pause_s: float | None  # between committed predictions, from the fault to the end
    fault_s: float  # from the fault to its healing
    wall_s: float

    @property
    def ok(self) -> bool:
        """What the benchmark calls a pass: every published reading acknowledged (a broker that
        stops acknowledging loses nothing it acknowledged, but stalls the devices), none of them
        lost, the predictions exactly the reference, the edge's too."""
        return (self.acked_readings == self.published_readings
                and self.readings_lost == 0 and self.predictions_missing == 0 and self.predictions_extra == 0
                and self.edge_readings_lost == 0 and self.edge_predictions_missing == 0
                and self.edge_predictions_wrong == 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class Scenario:
    name: str
    done: str  # what is done, in one line
    fault: Fault
    at: float = 0.3  # share of the load published when the fault is done
    network: bool = False  # needs the namespaced cluster (run_scenario's ``net``)
    shared_subscription: bool = True  # the bridge's default; False: a plain subscription (one bridge)
    mosquitto_saves_on_changes: bool = False  # both Mosquittos save after every change (else every 5 s)
    ci: bool = True  # in make test (the benchmark runs every scenario)


def run_scenario(stack: LocalStack, scenario: Scenario, load: Load, work: Path, *, rate: float,
                 partitions: int = 6, drain_timeout_s: float = 300, net: Network | None = None,
                 replication: int | None = None) -> ScenarioResult:
    """Run ``scenario`` on fresh topics of the running cluster ``stack``; count every hop.
    ``net``: the network ``stack`` was made on (``make_stack(netns=...)``); the bridge then runs
    in its client namespace, reaching Kafka and Mosquitto over its own link."""
    if scenario.network and net is None:
        raise ValueError(f"{scenario.name} cuts or slows links: run it on the namespaced cluster (net=...)")
    started = time.monotonic()
    prefix = f"f{uuid.uuid4().hex[:6]}."
    topic_settings = TopicSettings(prefix=prefix, partitions=partitions, replication_factor=replication)
    topics = Topics.from_settings(topic_settings)
    kafka = stack.kafka_settings
    KafkaAdmin(kafka).ensure_topics(topic_specs(topic_settings))
    publish_model(kafka, topics, "pump", pack(load.bundle))
    work.mkdir(parents=True, exist_ok=True)
    group = f"{prefix}scoring"

    def new_bridge(ready: bool = True) -> BridgeProcess:
        started = BridgeProcess(work / "bridge.log", kafka, stack.mqtt_settings, prefix, f"{prefix}bridge",
                                f"{prefix}share" if scenario.shared_subscription else "",
                                launch=net.client.prefix if net else ())
        return started.wait_ready(60) if ready else started

    def new_worker(worker_id: str) -> Worker:
        return Worker(kafka, topic_settings, worker_id, work, *WORKER_ARGS).start()

    workers = [new_worker("w1"), new_worker("w2")]  # they start while the edge and the bridge do
    saving = 1 if scenario.mosquitto_saves_on_changes else None
    timer_broker = stack.mosquitto
    if saving is not None:  # the stack's Mosquitto again, saving after every change, for this scenario only
        stack.mosquitto = respawn(stack.mosquitto, autosave_on_changes=saving)
    starting = new_bridge(ready=False)  # it starts while the edge does
    edge = EdgePlant(kafka, load, work, prefix, rate=rate, partitions=partitions, replication=replication,
                     autosave_on_changes=saving)
    bridge = starting.wait_ready(60)
    view = ClusterView(kafka)
    wait_for(lambda: view.members(group) == 2, 120, "both workers in the group")
    tail = PredictionTail(kafka, topics.predictions)
    tail.start()
    publisher = Publisher(stack.mqtt_settings, load.messages, rate)
    run = Run(stack, kafka, topics, group, publisher, bridge, workers, work, new_bridge, new_worker, view, edge,
              replication or default_replication(len(stack.kafka_nodes)), net=net)
    publisher.start()
    edge.publisher.start()
    try:
        run.wait_progress(scenario.at)
        run.fault_at = time.monotonic()
        scenario.fault(run)
        run.healed_at = time.monotonic()
        for pub in (publisher, edge.publisher):
            pub.join(600)
            if pub.error is not None:
                raise RuntimeError(f"the {pub.name} failed: {pub.error}") from pub.error
        # Every acknowledged message is in telemetry now (the bridge acknowledges after Kafka
        # did); once the group has consumed and committed all of it, every prediction is committed.
        admin = KafkaAdmin(kafka)
        wait_for(lambda: scored_to_end(admin, group, topics.telemetry, partitions), drain_timeout_s,
                 "the workers to score telemetry to its end")
        # Everything is committed by now: a short settle only catches what a bug would add.
        telemetry = count_telemetry(kafka, topics.telemetry, publisher.acked, timeout_s=60, idle_s=1.0)
        reference = load.reference_for(telemetry.keys(), edge=False)
        committed = read_committed(kafka, topics.predictions, expect=len(reference), timeout_s=60, settle_s=1.0)
        alerts = read_committed(kafka, topics.alerts, timeout_s=30, settle_s=0.5)
        edge_telemetry = count_telemetry(kafka, edge.topics.telemetry, edge.publisher.acked, timeout_s=60)
        edge_reference = load.reference_for(edge_telemetry.keys(), edge=True)
        edge_predictions = read_committed(kafka, edge.topics.predictions, expect=len(edge_reference),
                                          timeout_s=drain_timeout_s, settle_s=2.0)
    finally:
        tail.stop()
        running = [p for p in (edge.gateway.proc, run.bridge.process, *(w.proc for w in run.workers))
                   if p is not None and p.poll() is None]
        for proc in running:  # all told at once, then waited for (a second SIGTERM would mean "now")
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        edge.stop()
        run.bridge.stop()
        # The bridge's persistent session would queue every later scenario's readings, and each
        # Mosquitto save rewrites them all: end it (a clean start with no expiry ends a session).
        forget_session(stack.mqtt_settings, f"{prefix}bridge")
        if stack.mosquitto is not timer_broker:
            stack.mosquitto = respawn(stack.mosquitto, like=timer_broker)
        for worker in run.workers:
            if worker.alive():
                try:
                    worker.terminate()
                except Exception:
                    worker.kill()
    got = Counter(prediction_keys(committed))
    want = Counter(reference)
    edge_got = Counter(prediction_keys(edge_predictions))
    edge_want = Counter(edge_reference)
    lost = publisher.acked - telemetry.keys()
    in_crash = run.lost_in_crash(lost, publisher, stack.mosquitto.settings.home)
    edge_lost = edge.publisher.acked - edge_telemetry.keys()
    edge_in_crash = run.lost_in_crash(edge_lost, edge.publisher, edge.broker.settings.home)
    after = sorted(t for t, ident in tail.arrivals if publisher.sent_at.get(ident, 0.0) > run.fault_at)
    times = [run.fault_at, *sorted(t for t, _i in tail.arrivals if t >= run.fault_at)]
    return ScenarioResult(
        name=scenario.name, done=scenario.done, observed=run.observed,
        published_messages=publisher.published_messages, published_readings=publisher.published_readings,
        acked_readings=len(publisher.acked), telemetry_distinct=len(telemetry),
        telemetry_duplicates=sum(n - 1 for n in telemetry.values()),
        readings_lost=len(lost) - in_crash, lost_in_mqtt_crash=in_crash,
        predictions_expected=len(reference), predictions_committed=len(committed),
        predictions_missing=sum((want - got).values()), predictions_extra=sum((got - want).values()),
        alerts=len(alerts),
        edge_acked_readings=len(edge.publisher.acked),
        edge_readings_lost=len(edge_lost) - edge_in_crash, edge_lost_in_mqtt_crash=edge_in_crash,
        edge_telemetry_duplicates=sum(n - 1 for n in edge_telemetry.values()),
        edge_predictions_missing=sum((edge_want - edge_got).values()),
        edge_predictions_wrong=len(edge_got.keys() - edge_want.keys()),
        edge_predictions_duplicates=sum(n - 1 for k, n in edge_got.items() if k in edge_want),
        recovery_s=round(after[0] - run.fault_at, 2) if after else None,
        longest_pause_s=round(max(b - a for a, b in itertools.pairwise(times)), 2) if len(times) > 1
        else None,
        fault_s=round(run.healed_at - run.fault_at, 2), wall_s=round(time.monotonic() - started, 1))


def assert_held(result: ScenarioResult, load: Load, stack: LocalStack) -> None:
    """What every scenario of the campaign must keep, as its tests check it: everything
    published acknowledged, none of it lost on either path, predictions exactly the reference
    (the edge's at least once), a prediction after the fault, every node running at the end."""
    assert result.acked_readings == result.published_readings == load.readings, result
    assert result.readings_lost == 0, result
    assert result.predictions_missing == 0 and result.predictions_extra == 0, result
    assert result.predictions_committed == len(load.reference) > 0
    assert result.edge_acked_readings == load.edge_readings > 0, result
    assert result.edge_readings_lost == 0, result
    assert result.edge_predictions_missing == 0 and result.edge_predictions_wrong == 0, result
    assert result.recovery_s is not None, "no prediction of a reading published after the fault"
    assert all(node.process.pid() for node in stack.kafka_nodes), "the scenario left every node running"


# -- the faults -------------------------------------------------------------------------------

def respawn(broker: Mosquitto, *, autosave_on_changes: int | None = None, like: Mosquitto | None = None) -> Mosquitto:
    """``broker`` stopped (a clean stop saves) and started again on the same port and data,
    saving after every ``autosave_on_changes`` changes, or as ``like`` does."""
    settings = like.settings if like is not None else broker.settings.model_copy(
        update={"autosave_on_changes": autosave_on_changes})
    broker.stop()
    again = Mosquitto(settings, broker.port, host=broker.host)
    again.start()
    again.wait_ready(30)
    return again


def forget_session(mqtt: MqttSettings, client_id: str) -> None:
    client = connected_publisher(mqtt, client_id)  # MQTT 3.1.1 with a clean session ends the old one
    client.disconnect()
    client.loop_stop()


def scored_to_end(admin: KafkaAdmin, group: str, topic: str, partitions: int) -> bool:
    """True when ``group`` has committed offsets at the end of every non-empty partition of ``topic``."""
    try:
        lags = {g.partition: g.lag for g in admin.group_lag([topic]) if g.group == group}
        ends = admin.end_offsets([(topic, p) for p in range(partitions)])
    except Exception:  # a node just restarted: ask again
        return False
    return len(ends) == partitions and all(end == 0 or lags.get(p) == 0 for (_t, p), end in ends.items())


def _kill(run: Run, node: KafkaBroker, why: str) -> None:
    node.process.kill()
    run.note(f"kill -9 {node.name} ({why})")


def kill_partition_leader(run: Run) -> None:
    victim = run.busiest_leader()
    led = sorted(p for p, n in run.view.leaders(run.topics.telemetry).items() if n == victim.node_id)
    _kill(run, victim, f"leader of telemetry partitions {led}")
    run.await_new_leaders(victim)
    run.wait_progress(run.publisher.progress() + 0.2)
    run.restart_brokers()


def kill_active_controller(run: Run) -> None:
    victim = active_controller(run.stack)
    _kill(run, victim, "the active KRaft controller")

    def elected() -> bool:
        try:
            return active_controller(run.stack).node_id != victim.node_id
        except RuntimeError:
            return False

    wait_for(elected, 60, "a new KRaft controller")
    run.note(f"{active_controller(run.stack).name} is the controller after {time.monotonic() - run.fault_at:.1f}s")
    run.wait_progress(run.publisher.progress() + 0.2)
    run.restart_brokers()


def kill_every_broker(run: Run) -> None:
    for node in run.stack.kafka_nodes:
        _kill(run, node, "every broker")
    run.wait_progress(run.publisher.progress() + 0.15)  # MQTT keeps taking readings meanwhile
    run.restart_brokers()


def zombie_worker(run: Run) -> None:
    zombie, other = run.workers
    assert zombie.proc is not None
    zombie.proc.send_signal(signal.SIGSTOP)
    run.note(f"SIGSTOP {zombie.log_path.stem}")
    run.wait_members(1, "the group to move on without the stopped worker")
    run.note(f"the group went on with {other.log_path.stem} alone after {time.monotonic() - run.fault_at:.1f}s")
    run.wait_progress(run.publisher.progress() + 0.1)
    before = len(zombie.log())
    zombie.proc.send_signal(signal.SIGCONT)
    run.note("SIGCONT: the zombie resumes mid-batch")
    run.wait_members(2, "the resumed worker to rejoin")
    fenced = [line for line in zombie.log()[before:].splitlines() if "fenc" in line.lower() or "generation" in line]
    run.note(f"the zombie rejoined; its log says: {fenced[0].strip()[:200]}" if fenced
             else "the zombie rejoined; its log names no fencing")


def rebalance_storm(run: Run, until: float = 0.8, least: int = 2) -> None:
    """A third worker joins and leaves, by SIGTERM and kill -9 in turn, while the load goes on:
    until ``until`` of it is published, at least ``least`` times."""
    for i in itertools.count():
        if i >= least and run.publisher.progress() >= until:
            break
        extra = run.new_worker(f"storm{i}")
        run.workers.append(extra)
        run.wait_members(3, f"storm worker {i} to join")
        if i % 2:
            extra.kill()
            how = "kill -9"
        else:
            extra.terminate()
            how = "SIGTERM"
        run.wait_members(2, f"storm worker {i} to leave ({how})")
        run.note(f"storm worker {i} joined and left ({how}) at {run.publisher.progress():.0%} of the load")


def kill_mosquitto(run: Run) -> None:
    """kill -9 the Mosquitto under the bridge and the plant's under the edge, keep them down
    while a tenth of the load is published (the publishers' clients queue it), restart both."""
    for broker in (run.stack.mosquitto, run.edge.broker):
        broker.process.kill()
        run.mqtt_crashes.append((broker, time.monotonic()))
    run.note("kill -9 the Mosquitto under the bridge and the one under the edge")
    acked = run.publisher.acked_messages + run.edge.publisher.acked_messages
    run.wait_progress(run.publisher.progress() + 0.1)
    run.restart_mosquitto()
    wait_for(lambda: run.publisher.acked_messages + run.edge.publisher.acked_messages > acked, 120,
             "the publishers' messages to be acknowledged again")
    run.note(f"publishes acknowledged again {time.monotonic() - run.fault_at:.1f}s after the kill")


def kill_bridge_during_election(run: Run) -> None:
    victim = run.busiest_leader()
    _kill(run, victim, "leader of the busiest telemetry partitions")
    run.bridge.kill9()
    run.note("kill -9 the bridge while the leaders are being elected")
    run.bridge = run.new_bridge()
    run.note(f"bridge started again after {time.monotonic() - run.fault_at:.1f}s")
    run.wait_progress(run.publisher.progress() + 0.2)
    run.restart_brokers()


# -- network faults (the namespaced cluster: tests/netfaults.py) ------------------------------

# The bridge's link to Kafka while slowed: tbf at this rate with an 8 KB queue (about 0.25 s of
# it); what does not fit is dropped. This kernel has no netem: no random loss, no added delay.
SLOW_LINK = Shaping(rate="256kbit", burst=4096, limit=8192)


def _network(run: Run) -> Network:
    if run.net is None:
        raise RuntimeError("a network fault needs the namespaced cluster: run_scenario(..., net=...)")
    return run.net


def _moved_off(run: Run, view: ClusterView, node_id: int, partitions: list[int]) -> bool:
    """Each of the telemetry ``partitions`` has a leader, none of them ``node_id``."""
    try:
        leaders = view.leaders(run.topics.telemetry)
    except confluent_kafka.KafkaException:  # asked a node that cannot answer: ask again
        return False
    return all(leaders.get(p, -1) not in (-1, node_id) for p in partitions)


def _stored(run: Run) -> int:
    """Records in the scenario's telemetry topic (-1 while a partition's new leader cannot say)."""
    try:
        return topic_size(run.kafka, run.topics.telemetry)
    except KafkaError:  # e.g. "leader high watermark is not caught up" just after a move
        return -1


def partition_broker(run: Run) -> None:
    """Cut the busiest leader's link: it can reach neither the other nodes nor any client (no
    RST, no ICMP: its connections just go silent). Heal once the others moved its leaders and
    the bridge wrote what was published through them (the link heals whatever happens); return
    when it is back in every partition's ISR."""
    net = _network(run)
    victim = run.busiest_leader()
    led = sorted(p for p, n in run.view.leaders(run.topics.telemetry).items() if n == victim.node_id)
    replicas = run.view.replicas(run.topics.telemetry)  # asked before the cut: it may be the one asked
    alone = sorted(p for p, r in replicas.items() if r == [victim.node_id])
    movable = sorted(p for p, r in replicas.items() if len(r) > 1)
    # Asked through the other nodes by a client that never reached the cut one: run.view would
    # wait on its silent connection to it until the socket times out (60 s), not see the move.
    others = ",".join(n.bootstrap for n in run.stack.kafka_nodes if n is not victim)
    view = ClusterView(run.kafka.model_copy(update={"bootstrap_servers": others}))
    link = net.namespace_of(victim.host).link
    link.cut()
    try:
        run.note(f"cut {victim.name} ({victim.host}, leader of telemetry partitions {led}) off the other nodes "
                 "and every client")
        if alone:  # replication 1: nowhere to move them
            run.note(f"telemetry partitions {alone} have no other replica: no leader while it is cut")
        if movable:
            wait_for(lambda: _moved_off(run, view, victim.node_id, movable), 120,
                     f"leaders to move off the cut {victim.name}")
            run.note(f"its leaders moved to the other nodes after {time.monotonic() - run.fault_at:.1f}s")
        run.wait_progress(run.publisher.progress() + 0.2)
        if not alone:  # every partition writable on the other two: the bridge gets through before the heal
            published = run.publisher.published_readings
            wait_for(lambda: _stored(run) >= published, 120,
                     "the bridge to write what was published through the other nodes")
            run.note(f"the {published} readings published so far in telemetry, through the other nodes, "
                     f"{time.monotonic() - run.fault_at:.1f}s after the cut")
    finally:
        link.heal()
    healed = time.monotonic()
    behind = view.out_of_sync(victim.node_id)
    run.note(f"healed after {healed - run.fault_at:.1f}s; {victim.name} out of the ISR of {behind} partitions")
    wait_for(lambda: view.out_of_sync(victim.node_id) == 0, 180, f"{victim.name} back in every ISR")
    run.note(f"{victim.name} back in the ISR of every partition {time.monotonic() - healed:.1f}s after healing")


def slow_lossy_link(run: Run, shaping: Shaping = SLOW_LINK, share: float = 0.4) -> None:
    """Slow the bridge's link to Kafka (both ways, Kafka's ports only; MQTT is not on it) while
    ``share`` of the load is published, then restore it (whatever happens); note how far the
    bridge fell behind and how long it took to catch up."""
    link = _network(run).client.link
    link.shape([node.port for node in run.stack.kafka_nodes], shaping)
    try:
        run.note(f"the bridge's link to Kafka slowed to {shaping} (htb + tbf; this kernel has no netem)")
        run.wait_progress(run.publisher.progress() + share)
        published, stored = run.publisher.published_readings, _stored(run)
        stats = link.shaped_stats()
    finally:
        link.unshape()
    unshaped = time.monotonic()
    run.note(f"restored after {unshaped - run.fault_at:.1f}s: {published} readings published, {stored} records in "
             f"telemetry ({max(0, published - stored)} behind); the slow link passed {stats['sent_packets']} "
             f"packets ({stats['sent_bytes'] / 1024:.0f} KiB) and dropped {stats['dropped']}")
    wait_for(lambda: _stored(run) >= published, 180, "the bridge to catch up")
    run.note(f"the bridge caught up {time.monotonic() - unshaped:.1f}s after the link was restored")


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("leader-kill", "kill -9 the node leading the most telemetry partitions, restart it",
             kill_partition_leader),
    Scenario("controller-kill", "kill -9 the active KRaft controller, restart it", kill_active_controller),
    Scenario("all-brokers-kill", "kill -9 all three nodes, restart them all", kill_every_broker),
    Scenario("zombie-worker", "SIGSTOP a scoring worker past its session timeout, let the group move on, SIGCONT it",
             zombie_worker),
    Scenario("rebalance-storm", "a third worker joins and leaves (SIGTERM and kill -9 in turn) until 80 % of the "
             "load is out", rebalance_storm, at=0.15),
    # Mosquitto 2.0 restores a shared subscriber's session after a restart but not its shared
    # subscription: what devices publish before the bridge subscribes again goes nowhere. With
    # a plain subscription the session keeps queueing, so the bridge runs on one here, and the
    # benchmark's second run shows what the default shared one loses.
    Scenario("mosquitto-kill", "kill -9 Mosquitto under the bridge (on a plain subscription) and under the edge, "
             "restart both", kill_mosquitto, shared_subscription=False, mosquitto_saves_on_changes=True),
    Scenario("mosquitto-kill-shared", "the same with the bridge on its default shared subscription", kill_mosquitto,
             mosquitto_saves_on_changes=True, ci=False),
    Scenario("mosquitto-kill-timer", "the same on a plain subscription, Mosquitto saving on its default 5 s timer",
             kill_mosquitto, shared_subscription=False, ci=False),
    Scenario("bridge-kill-in-election", "kill -9 a partition leader and at once the bridge; start the bridge again, "
             "then the node", kill_bridge_during_election),
    Scenario("broker-partition", "cut the node leading the most telemetry partitions off the other nodes and every "
             "client (its veth down), heal it", partition_broker, network=True),
    Scenario("slow-lossy-link", "slow the bridge's link to Kafka to 256 kbit/s with an 8 KB drop-tail queue (htb + "
             "tbf; no netem here) for 40 % of the load", slow_lossy_link, network=True),
]}


def no_fault(run: Run) -> None:
    run.note("nothing done: the uninterrupted run the others are read against")


BASELINE = Scenario("none", "no fault (the baseline: the same load and pipeline, uninterrupted)", no_fault)
