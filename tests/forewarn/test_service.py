from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from forewarn.service import LoopService, on_signals
from forewarn.supervisor import Child, Supervisor


@pytest.fixture
def sentinel_handlers() -> Iterator[dict[signal.Signals, object]]:
    """Known handlers on SIGTERM and SIGINT for the test, pytest's own put back after it."""

    def sentinel(_signum: int, _frame: FrameType | None) -> None:
        raise AssertionError("the sentinel handler should have been replaced")

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in saved:
        signal.signal(sig, sentinel)
    try:
        yield {sig: sentinel for sig in saved}
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_signals_reach_the_callback_and_the_previous_handlers_come_back(
        sentinel_handlers: dict[signal.Signals, object]) -> None:
    got: list[signal.Signals] = []
    lines: list[str] = []
    with on_signals(got.append, say=lines.append, action="draining") as scope:
        assert scope.installed
        os.kill(os.getpid(), signal.SIGTERM)
    assert got == [signal.SIGTERM]
    assert lines == ["SIGTERM: draining (again to exit now)"]
    assert not scope.installed
    for sig, handler in sentinel_handlers.items():
        assert signal.getsignal(sig) is handler


def test_a_second_signal_exits_at_once(sentinel_handlers: dict[signal.Signals, object]) -> None:
    got: list[signal.Signals] = []
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt), on_signals(got.append, say=lines.append):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
    assert got == [signal.SIGINT]  # the second one did not call back: it raised
    assert lines[-1] == "SIGTERM again: exiting now"
    for sig, handler in sentinel_handlers.items():
        assert signal.getsignal(sig) is handler  # restored on the way out of the exception too


def test_without_force_every_signal_calls_back(sentinel_handlers: dict[signal.Signals, object]) -> None:
    got: list[signal.Signals] = []
    with on_signals(got.append, force_second=False):
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
            os.kill(os.getpid(), sig)
    assert got == [signal.SIGINT, signal.SIGINT, signal.SIGTERM]


def test_off_the_main_thread_nothing_is_installed(sentinel_handlers: dict[signal.Signals, object]) -> None:
    scopes = []
    thread = threading.Thread(target=lambda: scopes.append(on_signals(lambda _sig: None)))
    thread.start()
    thread.join()
    assert not scopes[0].installed
    scopes[0].restore()
    assert signal.getsignal(signal.SIGTERM) is sentinel_handlers[signal.SIGTERM]


class _Counting(LoopService):
    """Works on its first ``busy`` steps, then idles; records its lifecycle."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy = busy
        self.steps = 0
        self.events: list[str] = []

    def start(self) -> None:
        self.events.append("start")

    def step(self) -> int:
        self.steps += 1
        return 1 if self.steps <= self.busy else 0

    def close(self) -> None:
        self.events.append("close")


def test_run_bounds_and_closes() -> None:
    service = _Counting(busy=100)
    service.run(max_steps=5)
    assert service.steps == 5 and service.events == ["start", "close"]

    idle = _Counting(busy=2)
    t0 = time.monotonic()
    idle.run(idle_exit_s=0.05)
    assert idle.steps > 2 and time.monotonic() - t0 < 5
    assert idle.events == ["start", "close"]


def test_stop_from_another_thread_ends_run_and_the_context_manager_closes() -> None:
    service = _Counting(busy=10**9)
    timer = threading.Timer(0.05, service.stop)
    timer.start()
    service.run()
    timer.join()
    assert service.stopping and service.events == ["start", "close"]

    with _Counting(busy=0) as managed:
        assert managed.events == ["start"]
    assert managed.stopping and managed.events == ["start", "close"]


def test_run_closes_when_a_step_fails() -> None:
    class Failing(_Counting):
        def step(self) -> int:
            raise RuntimeError("boom")

    service = Failing(busy=0)
    with pytest.raises(RuntimeError, match="boom"):
        service.run()
    assert service.events == ["start", "close"]


_CHILD = textwrap.dedent("""
    import sys, time
    from forewarn.service import LoopService

    class Service(LoopService):
        def __init__(self, close_s):
            super().__init__()
            self.close_s = close_s
        def start(self):
            pass
        def step(self):
            time.sleep(0.01)
            return 0
        def close(self):
            print("draining", flush=True)
            time.sleep(self.close_s)
            print("closed", flush=True)

    service = Service(float(sys.argv[1]))
    with service.stop_on_signals(lambda line: print(line, flush=True)):
        print("ready", flush=True)
        service.run()
    print("returned", flush=True)
""")


def _child(close_s: float) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(close_s)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def test_sigterm_makes_a_service_process_drain_and_exit_cleanly() -> None:
    child = _child(close_s=0.0)
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0, out
    assert out.splitlines() == ["SIGTERM: draining and stopping (again to exit now)", "draining", "closed",
                                "returned"]


def test_a_second_ctrl_c_cuts_a_slow_drain_short() -> None:
    child = _child(close_s=60.0)
    assert child.stdout is not None
    child.send_signal(signal.SIGINT)
    assert child.stdout.readline().startswith("SIGINT: draining")
    assert child.stdout.readline().strip() == "draining"
    t0 = time.monotonic()
    try:
        # One second Ctrl-C is enough; it is repeated only so that a signal lost under a loaded
        # box cannot hang the test (once, under the full suite, one child did not exit in 30 s).
        out = ""
        for _ in range(10):
            child.send_signal(signal.SIGINT)
            try:
                out, _ = child.communicate(timeout=2)
                break
            except subprocess.TimeoutExpired:
                continue
        assert child.returncode is not None, "a second SIGINT did not end the drain"
        assert time.monotonic() - t0 < 20
        assert child.returncode != 0
        assert "SIGINT again: exiting now" in out and "KeyboardInterrupt" in out and "closed" not in out
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def _sleeper(tmp_path: Path, name: str, ignore_term: bool) -> Child:
    code = ("import signal, time\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
            + "print('up', flush=True)\ntime.sleep(120)\n")
    popen = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    assert popen.stdout is not None and popen.stdout.readline().strip() == b"up"
    popen.stdout.close()  # it prints nothing more
    return Child(name, [], tmp_path / f"{name}.log", popen)


def test_supervisor_stops_politely_then_kills(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    polite = _sleeper(tmp_path, "polite", ignore_term=False)
    stubborn = _sleeper(tmp_path, "stubborn", ignore_term=True)
    supervisor.children += [polite, stubborn]
    supervisor.stop(timeout_s=0.5)
    assert polite.popen is not None and polite.popen.returncode == -signal.SIGTERM
    assert stubborn.popen is not None and stubborn.popen.returncode == -signal.SIGKILL


def test_leaving_a_supervisor_on_a_forced_exit_kills_without_the_long_wait(tmp_path: Path) -> None:
    stubborn = _sleeper(tmp_path, "stubborn", ignore_term=True)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt), Supervisor(tmp_path) as supervisor:
        supervisor.children.append(stubborn)
        raise KeyboardInterrupt
    assert time.monotonic() - t0 < 15  # the short grace period, not the 30 s of an orderly stop
    assert stubborn.popen is not None and stubborn.popen.returncode == -signal.SIGKILL
