"""The whole pipeline on the secure stack (`forewarn stack up --secure`): readings from an
authorised device travel over TLS to Mosquitto, through the real bridge over SASL_SSL into Kafka,
and become predictions and alerts from the real scoring worker, each component logged in as its
own principal from the client files the stack wrote. Every negative case is done for real, is
refused, and is counted at the hop that refused it, while what arrives everywhere else stays
exactly what the authorised device sent."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from forewarn.bundle import Bundle, Thresholds, pack
from forewarn.contract import SCHEMA_VERSION, Alert, MaintenanceEvent, Prediction, Telemetry, encode
from forewarn.deadletter import DeadLetter
from forewarn.errors import KafkaError
from forewarn.kafka import KafkaAdmin, KafkaProducer, read_to_end
from forewarn.settings import KafkaSettings, MqttSettings, TopicSettings
from forewarn.stack import LocalStack
from forewarn.topics import Topics, maintenance_topic, telemetry_topic, topic_specs
from scoring.testing import linear_bundle
from tests.mqtt_raw import NOT_AUTHORISED, Raw
from tests.scoring.bundle_factory import signed, trust_env
from tests.stacks import REPO, make_stack

pytestmark = pytest.mark.integration  # a real secure Mosquitto and Kafka, the real bridge and worker

DEVICE = "site-a/pump-0001"
OTHER = "site-a/pump-0002"
READINGS = 40
WINDOW = 4
V1, V2, V3 = "20260101T000000Z", "20260102T000000Z", "20260103T000000Z"
TOPICS = Topics.from_settings(TopicSettings())


def _model(version: str) -> Bundle:
    # p_fail = sigmoid(mean of the window): readings of 5.0 make it 0.99, above any threshold
    return linear_bundle("pump", ["a", "b"], window=WINDOW, version=version, weights=[1.0, 1.0])


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = make_stack(tmp_path_factory.mktemp("secure-stack"), secure=True)
    local.up()
    try:
        KafkaAdmin(local.kafka_settings).ensure_topics(topic_specs(TopicSettings(partitions=2)))
        yield local
    finally:
        local.down()


class Component:
    """``python -m forewarn.cli <args>`` logged in as ``principal`` through the stack's client file."""

    def __init__(self, local: LocalStack, principal: str, log: Path, *args: str) -> None:
        assert local.secure is not None
        env = {**os.environ, "PYTHONPATH": str(REPO), **trust_env(),
               "FOREWARN_CONFIG": str(local.secure.clients_dir / f"{principal}.toml")}
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "forewarn.cli", "--log-level", "info", *args],
                                         cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _read(kafka: KafkaSettings, topic: str) -> list[bytes]:
    return [m.value() for m in read_to_end(kafka, topic, idle_timeout_s=20)]


def _wait(what: str, condition: Callable[[], bool], components: list[Component], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for c in components:
            assert c.proc.poll() is None, f"{c.log.name} exited:\n{c.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _reading(machine: str, seq: int, ts: int) -> bytes:
    return encode(Telemetry(SCHEMA_VERSION, machine, "pump", ts, seq, {"a": 5.0, "b": 5.0}))


def _publish(client: Raw, topic: str, payloads: list[bytes]) -> list[int]:
    return client.acked([client.client.publish(topic, p, qos=1).mid for p in payloads])


def test_the_pipeline_runs_secured_and_every_unauthorised_act_is_refused_and_counted(
        secure: LocalStack, tmp_path: Path) -> None:
    admin = secure.kafka_settings
    mosquitto = secure.mosquitto
    registry, _ = secure.client_settings("registry")
    scoring, _ = secure.client_settings("scoring")

    # -- models: the registry publishes; only the signed, newest bundle may serve ----------------
    good_v2, good_v1 = signed(_model(V2)), signed(_model(V1))
    crafted = dataclasses.replace(signed(_model(V3)), meta=msgspec.structs.replace(
        _model(V3).meta, thresholds=Thresholds(p_fail=1.5)))  # V3's signature on a model.json that never fires
    offers = [signed(_model(V3), key=Ed25519PrivateKey.generate()), crafted, good_v2, good_v1]
    with KafkaProducer(registry) as producer:
        for bundle in offers:
            producer.produce(TOPICS.models, pack(bundle), "pump")
        assert producer.flush(30) == 0

    # a worker's credentials cannot write models: the broker refuses the record
    refused: list[str] = []
    with KafkaProducer(scoring, **{"message.timeout.ms": 15_000}) as producer:
        producer.produce(TOPICS.models, pack(signed(_model("20270101T000000Z"))), "pump",
                         on_delivery=lambda error, _m: refused.append(error.name() if error else "delivered"))
        producer.flush(30)
    assert refused == ["TOPIC_AUTHORIZATION_FAILED"]

    # -- Kafka clients without credentials get nowhere --------------------------------------------
    plaintext = admin.model_copy(update={"security_protocol": "PLAINTEXT", "sasl_mechanism": None,
                                         "sasl_username": None, "sasl_password_file": None})
    with pytest.raises(KafkaError):
        KafkaAdmin(plaintext).ping(timeout_s=5)
    assert secure.secure is not None
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    with pytest.raises(KafkaError, match="refused the login"):
        KafkaAdmin(admin.model_copy(update={"sasl_password_file": wrong})).ping(timeout_s=10)

    # -- the pipeline: the bridge and a worker, each as itself --------------------------------------
    components = [
        Component(secure, "bridge", tmp_path / "bridge.log", "bridge", "--client-id", "secure-bridge"),
        Component(secure, "scoring", tmp_path / "worker.log", "score", "--worker-id", "secure-1",
                  "--threads", "1", "--commit-interval-ms", "200", "--alert-consecutive", "3"),
    ]
    try:
        device_login = mosquitto.client_settings(mosquitto.add_device(DEVICE))
        maintenance_login = mosquitto.client_settings(mosquitto.add_maintenance_source("site-a"))
        anonymous = Raw(MqttSettings(host="127.0.0.1", port=mosquitto.port, tls=True,
                                     ca_file=secure.secure.ca_cert))
        assert anonymous.connack == NOT_AUTHORISED
        anonymous.close()

        device = Raw(device_login)
        base = int(time.time() * 1000) - 60_000
        # Mosquitto keeps nothing for a filter nobody has subscribed yet: the first reading is sent
        # again until the bridge has it in Kafka (the worker drops the repeats by seq)
        _wait("the bridge to start", lambda: "stops it" in components[0].log.read_text(), components)
        first = [_reading(DEVICE, 0, base)]
        _wait("the first reading in telemetry", lambda: (_publish(device, telemetry_topic(DEVICE), first) == [0]
                                                          and len(_read(admin, TOPICS.telemetry)) > 0),
              components)
        own = [_reading(DEVICE, seq, base + seq * 100) for seq in range(1, READINGS)]
        assert _publish(device, telemetry_topic(DEVICE), own) == [0] * len(own)
        # under another machine's topic, or a repair: not this device's to publish
        assert _publish(device, telemetry_topic(OTHER), [_reading(OTHER, 1, base)]) == [NOT_AUTHORISED]
        repair_by_device = encode(MaintenanceEvent(SCHEMA_VERSION, DEVICE, base + 5_000, "repair", event_id="dev"))
        assert _publish(device, maintenance_topic(DEVICE), [repair_by_device]) == [NOT_AUTHORISED]

        decode_alert = msgspec.json.Decoder(Alert)

        def alerts() -> list[Alert]:
            return [decode_alert.decode(v) for v in _read(admin, TOPICS.alerts)]

        def machine_alerts(state: str) -> list[Alert]:
            return [a for a in alerts() if a.machine_id == DEVICE and a.rule == "p_fail" and a.state == state]

        _wait("an alert opened for the device", lambda: len(machine_alerts("open")) == 1, components)

        # -- ground truth: a future-dated repair is refused at the bridge (dead letter) ----------------
        maintenance = Raw(maintenance_login)
        future = encode(MaintenanceEvent(SCHEMA_VERSION, DEVICE, int(time.time() * 1000) + 3_600_000, "repair",
                                         event_id="wo-future"))
        assert _publish(maintenance, maintenance_topic(DEVICE), [future]) == [0]
        letters: list[DeadLetter] = []

        def dead_letters() -> bool:
            letters[:] = [DeadLetter.from_message(m) for m in read_to_end(admin, TOPICS.dlq, idle_timeout_s=20)]
            return len(letters) >= 1

        _wait("the future-dated repair in the dead letters", dead_letters, components)
        assert [(d.reason, d.value, d.origin) for d in letters] == [("ts_out_of_range", future, "bridge")]
        assert machine_alerts("resolved") == []
        # a repair done now (an authorised source, a time not ahead) resolves the alert opened before it
        now_repair = encode(MaintenanceEvent(SCHEMA_VERSION, DEVICE, int(time.time() * 1000), "repair",
                                             event_id="wo-now"))
        assert _publish(maintenance, maintenance_topic(DEVICE), [now_repair]) == [0]
        _wait("the repair to resolve the alert", lambda: len(machine_alerts("resolved")) == 1, components)
        maintenance.close()
        device.close()
    finally:
        for c in components:
            c.stop()

    # -- what arrived at every hop ---------------------------------------------------------------------
    telemetry = [msgspec.json.decode(v, type=Telemetry) for v in _read(admin, TOPICS.telemetry)]
    assert {r.machine_id for r in telemetry} == {DEVICE}
    assert sorted({r.seq for r in telemetry}) == list(range(READINGS))
    assert len(telemetry) - READINGS == sum(r.seq == 0 for r in telemetry) - 1  # repeats of the first only
    events = [msgspec.json.decode(v, type=MaintenanceEvent) for v in _read(admin, TOPICS.maintenance)]
    assert [e.event_id for e in events] == ["wo-now"]
    predictions = [msgspec.json.decode(v, type=Prediction) for v in _read(admin, TOPICS.predictions)]
    assert {p.machine_id for p in predictions} == {DEVICE}
    assert {p.seq for p in predictions} == set(range(WINDOW - 1, READINGS))
    assert {p.model_version for p in predictions} == {V2}
    model_refusals = sorted(a.message.split("(")[1].split(")")[0] for a in alerts()
                            if a.rule == "model_refused" and a.message)
    assert model_refusals == ["bad_signature", "rollback", "unknown_key"]
    assert len(_read(admin, TOPICS.models)) == len(offers)  # the worker's write never landed


def test_logins_are_added_and_rotated_on_the_running_stack(secure: LocalStack, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from forewarn.cli import cli

    assert secure.secure is not None
    flags = ["--home", str(secure.settings.home), "--bootstrap-servers", secure.kafka.bootstrap,
             "--mqtt-port", str(secure.mosquitto.port), "--controller-port", str(secure.settings.controller_port)]
    runner = CliRunner()
    added = runner.invoke(cli, ["stack", "login", "device", "site-b/fan-7", *flags])
    assert added.exit_code == 0, added.output
    assert "dev.site-b.fan-7" in added.output and secure.secure.password("dev.site-b.fan-7") not in added.output
    device = Raw(secure.mosquitto.client_settings("dev.site-b.fan-7"))
    # accepted (0x10 when no session holds the bridge's subscription yet); a refusal would be 0x87
    assert _publish(device, telemetry_topic("site-b/fan-7"), [_reading("site-b/fan-7", 1, 1)]) in ([0], [0x10])
    device.close()

    registry, _ = secure.client_settings("registry")
    old = tmp_path / "old-password"
    old.write_text(secure.secure.password("registry"))
    rotated = runner.invoke(cli, ["stack", "rotate", "registry", *flags])
    assert rotated.exit_code == 0 and "kafka" in rotated.output, rotated.output
    assert KafkaAdmin(registry).ping(timeout_s=10).brokers  # the new password, read from its file
    with pytest.raises(KafkaError, match="refused the login"):
        KafkaAdmin(registry.model_copy(update={"sasl_password_file": old})).ping(timeout_s=10)
    refused = runner.invoke(cli, ["stack", "rotate", "nobody", *flags])
    assert refused.exit_code != 0 and "no login" in refused.output
