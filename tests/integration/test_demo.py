"""`forewarn demo --check`, as CI runs it: the whole system from a clean home — stack, topics,
models trained from simulated history, simulator, bridge, two scoring workers — then a check
that predictions flowed and an alert opened before a simulated failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stacks import JAR_CACHE, free_port

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka


@pytest.mark.slow
def test_demo_check_passes_from_a_clean_home(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FOREWARN_STACK__HOME": str(tmp_path / "home"),
        "FOREWARN_STACK__CACHE_DIR": str(JAR_CACHE),
        "FOREWARN_STACK__CONTROLLER_PORT": str(free_port()),
        "FOREWARN_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "FOREWARN_MQTT__PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-m", "forewarn.cli", "demo", "--check", "--minutes", "2", "--machines", "100"],
        env=env, capture_output=True, text=True, timeout=900, check=False)
    report = result.stderr[-3000:]
    assert result.returncode == 0, report
    assert "check:" in result.stderr and "predictions" in result.stderr, report
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == "", "the demo left a process behind"
