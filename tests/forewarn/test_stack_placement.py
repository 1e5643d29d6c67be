"""A placement puts the local brokers on other addresses of this machine (the fault campaign's
nodes in network namespaces); without one, everything stays on 127.0.0.1 as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from forewarn.errors import StackError
from forewarn.settings import KafkaSettings, MqttSettings, StackSettings
from forewarn.stack import LocalStack, Placement

HOSTS = ("10.231.7.11", "10.231.7.12", "10.231.7.13")


def _stack(tmp_path: Path, placement: Placement | None = None) -> LocalStack:
    return LocalStack(StackSettings(home=tmp_path, brokers=3, controller_port=19093),
                      KafkaSettings(bootstrap_servers="127.0.0.1:19092"), MqttSettings(port=11883), placement=placement)


def _properties(stack: LocalStack, node: int) -> dict[str, str]:
    broker = stack.kafka_nodes[node - 1]
    broker.write_config()
    return dict(line.split("=", 1) for line in broker.config_file.read_text().splitlines()
                if "=" in line and not line.startswith("#"))


def test_without_a_placement_every_node_listens_advertises_and_votes_on_loopback(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    config = _properties(stack, 2)
    assert config["listeners"] == "PLAINTEXT://127.0.0.1:19094,CONTROLLER://127.0.0.1:19095"
    assert config["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19094"
    assert config["controller.quorum.voters"] == "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    assert stack.bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert stack.mqtt_settings.host == "127.0.0.1" and all(not n.launch for n in stack.kafka_nodes)


def test_a_placement_moves_each_node_and_mosquitto_and_prefixes_each_node_s_command(tmp_path: Path) -> None:
    launch = tuple(("ip", "netns", "exec", f"ns{i}") for i in (1, 2, 3))
    stack = _stack(tmp_path, Placement("10.231.7.1", HOSTS, launch))
    config = _properties(stack, 3)
    assert config["listeners"] == "PLAINTEXT://10.231.7.13:19096,CONTROLLER://10.231.7.13:19097"
    assert config["advertised.listeners"] == "PLAINTEXT://10.231.7.13:19096"
    assert config["controller.quorum.voters"] == "1@10.231.7.11:19093,2@10.231.7.12:19095,3@10.231.7.13:19097"
    assert stack.kafka_settings.bootstrap_servers == "10.231.7.11:19092,10.231.7.12:19094,10.231.7.13:19096"
    assert stack.mqtt_settings.host == "10.231.7.1" and stack.mosquitto.address == "mqtt://10.231.7.1:11883"
    assert [n.launch for n in stack.kafka_nodes] == list(launch)
    assert not stack.external and not stack.external_mqtt  # still the local stack: it runs these brokers


def test_a_placement_must_name_every_node(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="2 kafka_hosts for 3 Kafka node"):
        _stack(tmp_path, Placement(kafka_hosts=HOSTS[:2]))


def test_the_secure_stack_cannot_be_placed(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"certificates name 127\.0\.0\.1"):
        LocalStack(StackSettings(home=tmp_path, secure=True), placement=Placement(mqtt_host="10.231.7.1"))
