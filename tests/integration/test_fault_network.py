"""Network faults on a three-node Kafka cluster under steady MQTT load, at CI sizes: each node in
its own network namespace on a private switch (tests/netfaults.py), the bridge in another. One
node is cut off the other nodes and every client, then healed; the bridge's link to Kafka is
made slow and lossy (htb + tbf with a small drop-tail queue: this kernel has no netem), then
restored. As for the process faults (test_fault_campaign.py): every reading Mosquitto
acknowledged reaches ``telemetry`` (duplicates allowed), and the committed predictions are
exactly an uninterrupted run's."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from forewarn.stack import LocalStack
from tests import netfaults
from tests.fault_campaign import SCENARIOS, Load, assert_held, make_load, run_scenario
from tests.netfaults import Network
from tests.stacks import REPO

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
    assert_held(result, load, stack)
    assert all(n.link.is_up() for n in [*net.nodes, net.client]), "a link was left cut"


def test_what_a_killed_run_left_is_removed_by_the_next(tmp_path: Path) -> None:
    why = netfaults.available()
    if why is not None:
        pytest.skip(why)
    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal, subprocess, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.netfaults import Network\n"
        "net = Network(1).create()\n"
        "subprocess.Popen([*net.nodes[0].prefix, 'sleep', '600'], start_new_session=True,\n"
        "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(net.token, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    token = killed.stdout.strip()
    assert killed.returncode == -signal.SIGKILL and token.startswith("fwn"), killed.stderr
    left = [n for n in netfaults.ip("netns", "list").split() if n.startswith(token)]
    stranded = [int(p) for n in left for p in netfaults.ip("netns", "pids", n).split()]
    assert left and stranded, "the killed run left its namespaces and the process in one"
    with netfaults.Network(1) as net:
        assert net.token != token
        assert not [n for n in netfaults.ip("netns", "list").split() if n.startswith(token)]
        assert token not in netfaults.ip("-o", "link")
        assert not (netfaults.STATE / f"{token}.json").exists()
        assert not any(Path(f"/proc/{pid}").exists() for pid in stranded)
