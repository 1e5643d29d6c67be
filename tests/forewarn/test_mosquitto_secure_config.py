"""The secure Mosquitto config: a TLS-only listener without anonymous clients, a password file of
hashes only, and an ACL that gives each principal exactly what its component needs."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest

from forewarn.errors import StackError
from forewarn.settings import StackSettings
from forewarn.stack import Mosquitto
from forewarn.stack.mosquitto_acl import (
    acl_text,
    device_principal,
    gateway_principal,
    maintenance_principal,
    rules_for,
)
from forewarn.stack.secure import PRINCIPALS, SecureMaterial

INBOUND = {"forewarn/+/+/telemetry", "forewarn/+/gateway/+/batch", "forewarn/+/+/maintenance"}


@pytest.fixture
def broker(tmp_path: Path) -> Mosquitto:
    material = SecureMaterial.for_home(tmp_path)
    material.ensure()
    broker = Mosquitto(StackSettings(home=tmp_path), 18831, material)
    broker.write_config()
    return broker


def _config(broker: Mosquitto) -> dict[str, str]:
    lines = [line.split(None, 1) for line in broker.config_file.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {key: value for key, value in lines}


def _acl(broker: Mosquitto) -> dict[str, set[tuple[str, str]]]:
    users: dict[str, set[tuple[str, str]]] = {}
    current: set[tuple[str, str]] | None = None
    for line in broker.acl_file.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            current = users.setdefault(words[1], set())
        else:
            assert words[0] == "topic" and current is not None, f"a rule outside a user block: {line!r}"
            current.add((words[1], words[2]))
    return users


def _hashes(broker: Mosquitto) -> dict[str, str]:
    return dict(line.split(":", 1) for line in broker.password_file.read_text().splitlines() if line)


def test_one_tls_listener_on_loopback_without_anonymous_clients(broker: Mosquitto) -> None:
    config = _config(broker)
    material = broker.secure
    assert material is not None
    assert config["listener"] == "18831 127.0.0.1"
    assert list(broker.config_file.read_text().split()).count("listener") == 1
    assert (config["certfile"], config["keyfile"], config["cafile"]) == (
        str(material.server_cert), str(material.server_key), str(material.ca_cert))
    assert config["tls_version"] == "tlsv1.2"
    assert config["allow_anonymous"] == "false"
    assert config["password_file"] == str(broker.password_file.resolve())
    assert config["acl_file"] == str(broker.acl_file.resolve())
    assert broker.password_file.parent == broker.acl_file.parent == broker.dir


def test_the_plain_config_stays_open_and_has_no_security_files(tmp_path: Path) -> None:
    plain = Mosquitto(StackSettings(home=tmp_path), 18832)
    plain.write_config()
    assert "allow_anonymous true" in plain.config_file.read_text()
    assert not plain.password_file.exists() and not plain.acl_file.exists()
    with pytest.raises(StackError, match="without --secure"):
        plain.client_settings("bridge")


def test_each_service_gets_only_what_its_component_needs(broker: Mosquitto) -> None:
    acl = _acl(broker)
    assert set(acl) == {"bridge", "edge", "simulator"}
    assert acl["bridge"] == ({("read", t) for t in INBOUND} | {
        ("read", "$SYS/broker/store/messages/count"), ("read", "$SYS/broker/store/messages/bytes"),
        ("read", "$SYS/broker/publish/messages/dropped"), ("readwrite", "forewarn/$probe/+")})
    assert acl["edge"] == ({("read", t) for t in INBOUND}
                           | {("write", "forewarn/+/+/prediction"), ("write", "forewarn/+/+/alert")})
    assert acl["simulator"] == {("write", t) for t in INBOUND}
    readers = {user for user, rules in acl.items() if ("read", "forewarn/+/+/telemetry") in rules}
    assert readers == {"bridge", "edge"}
    assert "pattern" not in broker.acl_file.read_text()


def test_components_without_mqtt_have_no_login(broker: Mosquitto) -> None:
    assert set(_hashes(broker)) == {"bridge", "edge", "simulator"}
    for principal in set(PRINCIPALS) - {"bridge", "edge", "simulator"}:
        assert rules_for(principal) == ()


def test_devices_gateways_and_maintenance_sources_write_only_their_own_topics(broker: Mosquitto) -> None:
    assert broker.add_device("site-a/pump-0001") == "dev.site-a.pump-0001"
    assert broker.add_gateway("site-a/gw-1") == "gw.site-a.gw-1"
    assert broker.add_maintenance_source("site-b") == "maint.site-b"
    acl = _acl(broker)
    assert acl["dev.site-a.pump-0001"] == {("write", "forewarn/site-a/pump-0001/telemetry")}
    assert acl["gw.site-a.gw-1"] == {("write", "forewarn/site-a/gateway/gw-1/batch")}
    assert acl["maint.site-b"] == {("write", "forewarn/site-b/+/maintenance")}
    assert {"dev.site-a.pump-0001", "gw.site-a.gw-1", "maint.site-b"} <= set(_hashes(broker))


def test_adding_a_device_to_a_broker_that_is_not_running_only_writes_the_files(broker: Mosquitto) -> None:
    assert broker.reload() is False
    broker.add_device("site-c/fan-9")
    assert "user dev.site-c.fan-9" in broker.acl_file.read_text()


@pytest.mark.parametrize("machine_id", ["site.a/pump", "site-a/pump.1", "site-a", "a/b/c", "a/b c", "a/$x",
                                        "s/" + "m" * 70])
def test_ids_that_do_not_map_to_one_principal_are_refused(machine_id: str) -> None:
    with pytest.raises(StackError, match="MQTT login"):
        device_principal(machine_id)


def test_names_map_one_to_one_and_back_to_their_rules() -> None:
    assert gateway_principal("s1/gw_2") == "gw.s1.gw_2"
    assert maintenance_principal("s1") == "maint.s1"
    with pytest.raises(StackError):
        maintenance_principal("s1/x")
    assert rules_for("dev.s1") == () and rules_for("dev.s1.a.b") == () and rules_for("other.s1.a") == ()
    assert "user dashboard" not in acl_text(["dashboard", "bridge"])


def test_the_password_file_holds_hashes_mosquitto_checks_and_no_password(broker: Mosquitto) -> None:
    material = broker.secure
    assert material is not None
    broker.add_device("site-a/pump-0001")
    for path in (broker.password_file, broker.acl_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for user, line in _hashes(broker).items():
        _, kind, rounds, salt, digest = line.split("$")
        assert kind == "7"  # PBKDF2-HMAC-SHA512, as mosquitto_passwd writes it
        expected = hashlib.pbkdf2_hmac("sha512", material.password(user).encode(), base64.b64decode(salt),
                                       int(rounds))
        assert base64.b64decode(digest) == expected, user
    passwords = [material.password(p).encode() for p in material.principals()]
    files = [p for p in broker.dir.rglob("*") if p.is_file()]
    assert broker.password_file in files and broker.config_file in files
    for path in files:
        data = path.read_bytes()
        assert not any(secret in data for secret in passwords), path


def test_rotation_changes_the_hash_and_refuses_a_principal_without_login(broker: Mosquitto) -> None:
    before = _hashes(broker)["edge"]
    broker.rotate("edge")
    assert _hashes(broker)["edge"] != before
    with pytest.raises(StackError, match="no MQTT login"):
        broker.rotate("dashboard")


def test_clients_reach_it_over_tls_as_a_principal(broker: Mosquitto) -> None:
    material = broker.secure
    assert material is not None
    plain = broker.mqtt_settings()
    assert plain.tls and plain.ca_file == material.ca_cert and plain.username is None
    edge = broker.client_settings("edge")
    assert (edge.host, edge.port, edge.username, edge.password_file) == (
        "127.0.0.1", 18831, "edge", material.password_file("edge"))
    assert edge.password is None


def test_status_says_tls_passwords_and_acl(broker: Mosquitto) -> None:
    assert broker.exposure().startswith("TLS, passwords, ACL; persistence on")
