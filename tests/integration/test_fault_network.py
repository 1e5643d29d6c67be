"""Network faults on a three-node Kafka cluster under steady MQTT load, at CI sizes: each node in
its own network namespace on a private switch (tests/netfaults.py), the bridge in another. One
node is cut off the other nodes and every client, then healed; the bridge's link to Kafka is
made slow and lossy (htb + tbf with a small drop-tail queue: this kernel has no netem), then
restored. As for the process faults (test_fault_campaign.py): every reading Mosquitto
acknowledged reaches ``telemetry`` (duplicates allowed), and the committed predictions are
exactly an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path

import pytest

from forewarn.stack import LocalStack
from tests.fault_campaign import SCENARIOS, Load, make_load, run_scenario
from tests.netfaults import Network

pytestmark = pytest.mark.integration  # a private namespaced cluster (netns_cluster) and Mosquitto

NETWORK_SCENARIOS = [name for name, scenario in SCENARIOS.items() if scenario.network]


@pytest.fixture(scope="module")
def load() -> Load:
    return make_load(machines=24, ticks=150)


@pytest.mark.parametrize("name", NETWORK_SCENARIOS)
def test_network_fault_loses_no_acknowledged_reading_and_changes_no_prediction(
        netns_cluster: tuple[LocalStack, Network], load: Load, name: str, tmp_path: Path) -> None:
    stack, net = netns_cluster
    result = run_scenario(stack, SCENARIOS[name], load, tmp_path, rate=400, net=net)
    print(result.as_dict())
    assert result.acked_readings == result.published_readings == load.readings, result
    assert result.readings_lost == 0, result
    assert result.predictions_missing == 0 and result.predictions_extra == 0, result
    assert result.predictions_committed == len(load.reference) > 0
    assert result.recovery_s is not None, "no prediction of a reading published after the fault"
    assert all(node.process.pid() for node in stack.kafka_nodes), "the scenario left every node running"
    assert all(n.link.is_up() for n in [*net.nodes, net.client]), "a link was left cut"
