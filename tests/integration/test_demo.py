"""`forewarn demo --check`, as CI runs it, on one home, four times.

1. From a clean home the demo starts the brokers itself, builds the whole system — topics,
   models trained from simulated history, simulator, bridge, two scoring workers — checks that
   predictions flowed and an alert opened before a simulated failure, and stops the brokers.
2. With brokers from `forewarn stack up`, a second run restarts every simulated device (seq
   from 0 again, a new boot epoch): its predictions start within 30 s of its start, not after
   the old high-water marks, and its check counts only its own output.
3. A third run's pipeline refuses every reading (an input bound no reading meets): it produces
   nothing and its check fails, although the topics hold the earlier runs' predictions. The
   brokers it did not start are still running afterwards.
4. After `stack down`, a fourth run starts the brokers again and is killed with SIGKILL once
   its pipeline runs: its children and the brokers it started are all gone soon after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import confluent_kafka
import pytest

from forewarn.demo import end_offsets
from forewarn.kafka import KafkaConsumer
from forewarn.settings import KafkaSettings, TopicSettings
from forewarn.topics import Topics
from tests.stacks import JAR_CACHE, free_port

pytestmark = pytest.mark.integration  # real Mosquitto and Kafka

FIRST_PREDICTION_S = 30.0  # the bound for a restarted fleet
DEMO = [sys.executable, "-m", "forewarn.cli"]
RUN = ["demo", "--check", "--machines", "50", "--speed", "300"]


def _forewarn(env: dict[str, str], *args: str, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DEMO, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


def _first_new_prediction_s(bootstrap: str, topic: str, demo: subprocess.Popen[str], started: float,
                            since: dict[tuple[str, int], int]) -> float:
    """Seconds from ``started`` to the first committed prediction after ``since`` (read while
    the demo runs); fails when the demo ends or the bound passes first."""
    consumer = KafkaConsumer(KafkaSettings(bootstrap_servers=bootstrap), f"test-demo-{os.getpid()}")
    try:
        consumer.assign([confluent_kafka.TopicPartition(t, p, o) for (t, p), o in since.items() if t == topic])
        while time.monotonic() - started < FIRST_PREDICTION_S * 4:
            if consumer.consume(10, timeout_s=0.5):
                return time.monotonic() - started
            assert demo.poll() is None, "the second run ended before any prediction of its own"
        pytest.fail("no prediction of the second run at all")
    finally:
        consumer.close()


@pytest.mark.slow
def test_demo_check_twice_on_one_home_then_a_run_that_scores_nothing_fails(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "FOREWARN_STACK__HOME": str(tmp_path / "home"),
        "FOREWARN_STACK__CACHE_DIR": str(JAR_CACHE),
        "FOREWARN_STACK__CONTROLLER_PORT": str(free_port()),
        "FOREWARN_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "FOREWARN_MQTT__PORT": str(free_port()),
    }
    first = _forewarn(env, *RUN, "--minutes", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "check (this run only):" in first.stderr and "stopping kafka" in first.stderr, first.stderr[-3000:]
    up = _forewarn(env, "stack", "up", timeout_s=300)
    assert up.returncode == 0, up.stderr[-2000:]
    try:

        topic = Topics.from_settings(TopicSettings()).predictions
        with KafkaConsumer(KafkaSettings(bootstrap_servers=bootstrap), f"test-marks-{os.getpid()}") as marks:
            since = end_offsets(marks, [topic])
        assert sum(since.values()) > 0  # the first run's predictions are there
        started = time.monotonic()
        second = subprocess.Popen([*DEMO, *RUN, "--minutes", "1"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            waited = _first_new_prediction_s(bootstrap, topic, second, started, since)
            _, said = second.communicate(timeout=600)
        finally:
            if second.poll() is None:
                second.kill()
                second.communicate()
        assert second.returncode == 0, said[-3000:]
        assert waited <= FIRST_PREDICTION_S, f"the restarted fleet's first prediction came after {waited:.0f}s"

        refusing = {**env, "FOREWARN_INPUT__MAX_AGE_DAYS": "0.00001"}  # under a second: every reading is too old
        third = _forewarn(refusing, *RUN, "--minutes", "0.5")
        assert third.returncode == 1, third.stderr[-3000:]
        assert "check failed: no predictions since this run started" in third.stderr, third.stderr[-3000:]

        status = _forewarn(env, "stack", "status", timeout_s=120)
        assert status.returncode == 0, "the demo stopped brokers it had not started:\n" + status.stdout
    finally:
        _forewarn(env, "stack", "down", timeout_s=300)
    assert _left(tmp_path) == "", "the demo left a process behind"

    demo_log = tmp_path / "home" / "demo" / "demo.log"
    fourth = subprocess.Popen([*DEMO, *RUN, "--minutes", "5"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: demo_log.read_text().count("logs of every component") == 4, 600, "the fourth run's pipeline")
        assert _left(tmp_path) != ""  # brokers and components are running
    finally:
        fourth.kill()
        fourth.wait()
    _wait_for(lambda: _left(tmp_path) == "", 120, "the killed demo's children and brokers to go")
    assert "its supervisor is gone" in (tmp_path / "home" / "demo" / "logs" / "watchdog.log").read_text()


def _left(tmp_path: Path) -> str:
    """The processes whose command line names the test's folder (the demo's and the brokers')."""
    return subprocess.run(["pgrep", "-af", str(tmp_path)], capture_output=True, text=True).stdout.strip()


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
