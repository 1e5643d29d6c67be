"""Faults on a three-node Kafka cluster under steady MQTT load, at CI sizes (the whole campaign
at full size is ``make bench NAME=faults``; the scenarios that cut or slow links run on a
namespaced cluster in ``test_fault_network.py``): the bridge, two scoring workers and an edge
gateway run as real processes; every reading Mosquitto acknowledged reaches ``telemetry``
(duplicates allowed), every reading the plant's broker acknowledged reaches the edge's, the
committed predictions are exactly an uninterrupted run's, none missing and none extra, and the
edge forwards every prediction of the reference (at least once) and no other."""

from __future__ import annotations

from pathlib import Path

import pytest

from forewarn.stack import LocalStack
from tests.fault_campaign import SCENARIOS, Load, assert_held, make_load, run_scenario

pytestmark = pytest.mark.integration  # a private three-node cluster (the cluster fixture) and Mosquitto

# Every scenario done to processes (kill -9, SIGSTOP, a rebalance storm) but the one that shows
# a loss of Mosquitto's own (a shared subscription is not restored after its restart); the
# benchmark runs them all, larger.
CI_SCENARIOS = [name for name, scenario in SCENARIOS.items() if scenario.ci and not scenario.network]


@pytest.fixture(scope="module")
def load() -> Load:
    return make_load(machines=24, ticks=120)


@pytest.mark.parametrize("name", CI_SCENARIOS)
def test_fault_loses_no_acknowledged_reading_and_changes_no_prediction(cluster: LocalStack, load: Load, name: str,
                                                                       tmp_path: Path) -> None:
    result = run_scenario(cluster, SCENARIOS[name], load, tmp_path, rate=400)
    print(result.as_dict())
    assert_held(result, load, cluster)
