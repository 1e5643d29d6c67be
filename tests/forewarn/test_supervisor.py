"""Children never outlive their supervisor, on real processes: a driver (the demo's pieces —
Narrator, on_signals, a Watchdog, a Supervisor, a broker-like ManagedProcess) starts children
that start grandchildren; it is then killed with SIGKILL, stopped with SIGTERM, or stopped
after its stderr pipe broke, and every process it made must be gone (checked in /proc by pid
and start time, until a deadline)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from forewarn.demo import Narrator
from forewarn.stack._process import ProcessId
from forewarn.supervisor import Supervisor

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals and /proc are Linux")

CHILD = """
import signal, subprocess, sys, time
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(grandchild.pid))
import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""

DRIVER = """
import json, sys, threading
from pathlib import Path
from forewarn.demo import Narrator
from forewarn.service import on_signals
from forewarn.stack._process import ManagedProcess
from forewarn.supervisor import Supervisor, Watchdog

work, mode, child = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
say = Narrator(sys.stderr, work / "said.log")
watchdog = Watchdog(work / "watchdog.log")
broker = ManagedProcess("broker", work / "broker.pid", work / "broker.log", marker="broker-stand-in")
pid = broker.start([sys.executable, "-c", "import time; time.sleep(300)", "broker-stand-in"])
watchdog.watch(pid, "broker", grace_s=5)
stop = threading.Event()
with on_signals(lambda _sig: stop.set(), say=say, action="stopping"):
    try:
        with Supervisor(work / "logs", watchdog=watchdog, watchdog_grace_s=2) as supervisor:
            for i in range(3):
                kind = "stubborn" if mode == "stubborn" and i == 1 else "polite"
                supervisor.spawn(f"child-{i}", [sys.executable, "-c", child, str(work / f"grandchild-{i}"), kind])
            pids = [c.popen.pid for c in supervisor.children]
            print(json.dumps({"broker": pid, "watchdog": watchdog.pid, "children": pids}), flush=True)
            while not stop.is_set():
                stop.wait(0.1)
            say("stopping the pipeline")
    finally:
        broker.stop(10)
        watchdog.close()
say("stopped")
"""


def _start_driver(work: Path, mode: str) -> tuple[subprocess.Popen[str], list[ProcessId]]:
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(work), mode, CHILD], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    assert driver.stdout is not None
    line = driver.stdout.readline()
    assert line, driver.stderr.read() if driver.stderr else "the driver printed nothing"
    started = json.loads(line)
    pids = [started["broker"], started["watchdog"], *started["children"]]
    deadline = time.monotonic() + 60
    files = [work / f"grandchild-{i}" for i in range(3)]
    while not all(f.exists() for f in files):
        assert time.monotonic() < deadline, "the grandchildren did not start"
        time.sleep(0.05)
    pids += [int(f.read_text()) for f in files]
    processes = [p for p in (ProcessId.of(pid) for pid in pids) if p is not None]
    assert len(processes) == len(pids) == 8, "every process is up before the test acts"
    return driver, processes


def _wait_all_gone(processes: list[ProcessId], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while left := [p.pid for p in processes if p.alive]:
        if time.monotonic() > deadline:
            for p in processes:
                if p.alive:
                    os.kill(p.pid, signal.SIGKILL)
            pytest.fail(f"processes outlived their supervisor: {left}")
        time.sleep(0.1)


def _finish(driver: subprocess.Popen[str]) -> int:
    try:
        return driver.wait(60)
    finally:
        for stream in (driver.stdout, driver.stderr):
            if stream is not None:
                stream.close()


def test_kill_9_of_the_supervisor_leaves_nothing_behind(tmp_path: Path) -> None:
    driver, processes = _start_driver(tmp_path, "stubborn")  # one child ignores SIGTERM
    driver.kill()
    assert _finish(driver) == -signal.SIGKILL
    _wait_all_gone(processes)
    assert "did not stop within" in (tmp_path / "watchdog.log").read_text()  # the stubborn one was killed


def test_sigterm_stops_every_child_grandchild_and_broker(tmp_path: Path) -> None:
    driver, processes = _start_driver(tmp_path, "polite")
    driver.send_signal(signal.SIGTERM)
    assert _finish(driver) == 0
    _wait_all_gone(processes)
    assert "stopped" in (tmp_path / "said.log").read_text()


def test_a_broken_stderr_pipe_does_not_keep_the_supervisor_from_stopping_its_children(tmp_path: Path) -> None:
    driver, processes = _start_driver(tmp_path, "polite")
    assert driver.stderr is not None
    driver.stderr.close()  # the reader of `forewarn demo |& tee` is gone
    driver.send_signal(signal.SIGINT)
    assert _finish(driver) == 0
    _wait_all_gone(processes)
    said = (tmp_path / "said.log").read_text()
    assert "stderr is gone" in said and "stopping the pipeline" in said and said.rstrip().endswith("stopped")


def test_the_narrator_tells_the_log_file_and_survives_a_closed_stream(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    say = Narrator(stream, tmp_path / "demo.log")
    say("one")
    os.close(read_end)
    say("two")  # EPIPE: dropped from the stream, kept in the file
    say("three")
    assert say.stream is None
    lines = (tmp_path / "demo.log").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines if "stderr is gone" not in line] == ["one", "two", "three"]
    stream.close()


def test_a_step_runs_to_its_end_or_is_stopped_when_told(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs")
    try:
        code = supervisor.run("step", [sys.executable, "-c", "print('made it'); raise SystemExit(3)"],
                              tmp_path / "step.log")
        assert code == 3 and "made it" in (tmp_path / "step.log").read_text()
        stop = threading.Event()
        stop.set()  # a Ctrl-C came: the step, in a session of its own, is sent SIGTERM
        code = supervisor.run("long", [sys.executable, "-c", "import time; time.sleep(300)"], tmp_path / "long.log",
                              stop)
        assert code == -signal.SIGTERM and supervisor.children == []
    finally:
        supervisor.stop()
    assert supervisor.watchdog is None  # its own watchdog was closed with it
