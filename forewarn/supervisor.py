"""Runs Forewarn components as child processes (``forewarn <command> ...``) for the demo:
one log file each, a line when one dies, and an orderly stop (SIGTERM, then SIGKILL) in the
reverse order of start. It installs no signal handlers: the demo owns them (through
:func:`forewarn.service.on_signals`) and leaves the ``with`` block of its supervisor when told
to stop; a child is never left running, also when that stop is interrupted.

Children never outlive the supervisor, however it ends. Each runs in a process group of its
own (what it starts is stopped with it) and gets SIGTERM from the kernel when the supervisor
dies (``PR_SET_PDEATHSIG``); a :class:`Watchdog`, a small process of its own, learns every
child's group and, when the supervisor is gone without stopping them (kill -9 included), stops
what is left of each group: SIGTERM, then SIGKILL after a grace period. The demo also gives
the watchdog the brokers it started, so they go with it; brokers that ``forewarn stack up``
started are never given to it and keep running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from forewarn.stack._process import ProcessId, die_with_parent, group_members, tail

__all__ = ["Child", "Supervisor", "Watchdog"]

log = logging.getLogger(__name__)

_FORCED_STOP_S: Final = 2.0
_STOP_S: Final = 30.0
_WATCHDOG_GRACE_S: Final = 20.0


@dataclass
class Child:
    name: str
    argv: list[str]
    log_file: Path
    popen: subprocess.Popen[bytes] | None = None
    reported_exit: bool = field(default=False)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Watchdog:
    """A process of its own (own session: a Ctrl-C for the demo does not reach it) that stops
    the process groups it was told about once its owner is gone.

    The owner writes one line per group to the watchdog's stdin (a pipe only the owner holds
    open); end of file, which the kernel delivers however the owner dies, starts the stop. An
    owner that stopped everything itself just closes it: what is gone is skipped. Groups are
    stopped newest first, each with SIGTERM, then SIGKILL after its grace period.
    """

    def __init__(self, log_file: Path) -> None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        read_end, write_end = os.pipe()
        try:
            with log_file.open("ab") as out:
                self._popen: subprocess.Popen[bytes] | None = subprocess.Popen(
                    [sys.executable, "-m", "forewarn.supervisor"], stdin=read_end, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._pipe: IO[str] | None = os.fdopen(write_end, "w", buffering=1)
        self.log_file = log_file

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    def watch(self, pid: int, name: str, grace_s: float = _WATCHDOG_GRACE_S) -> None:
        """Stop process ``pid`` and its process group (it must lead one) if the owner dies."""
        process = ProcessId.of(pid)
        if self._pipe is None or process is None:
            return
        try:
            self._pipe.write(f"{process.pid} {process.start} {grace_s} {name}\n")
        except OSError as error:  # the watchdog died: the kernel's parent-death signal still holds
            log.warning("the watchdog is gone (%s); %s is not watched", error, name)

    def close(self, timeout_s: float = 5.0) -> None:
        """Tell the watchdog its owner is done (what still runs, it stops) and wait for it."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
        popen, self._popen = self._popen, None
        if popen is not None:
            try:
                popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("the watchdog (pid %s) is still stopping processes; it goes on alone", popen.pid)


@dataclass(frozen=True)
class _Watched:
    process: ProcessId
    grace_s: float
    name: str


def _parse(line: str) -> _Watched | None:
    parts = line.split(maxsplit=3)
    try:
        return _Watched(ProcessId(int(parts[0]), int(parts[1])), float(parts[2]), parts[3].strip())
    except (IndexError, ValueError):
        return None


def _signal_all(members: Sequence[ProcessId], sig: signal.Signals) -> None:
    for member in members:
        if member.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member.pid, sig)


def _stop_group(watched: _Watched) -> None:
    members = group_members(watched.process)
    if not members:
        return
    log.warning("stopping %s (group %s, %s processes): its supervisor is gone", watched.name,
                watched.process.pid, len(members))
    _signal_all(members, signal.SIGTERM)
    deadline = time.monotonic() + watched.grace_s
    while time.monotonic() < deadline and (members := group_members(watched.process)):
        time.sleep(0.1)
    if members:
        log.warning("%s did not stop within %ss; killing it", watched.name, watched.grace_s)
        _signal_all(members, signal.SIGKILL)


def watch_stdin() -> int:
    """The watchdog's main loop: collect groups from stdin until end of file, then stop them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watched = [w for line in sys.stdin if (w := _parse(line)) is not None]
    for entry in reversed(watched):
        _stop_group(entry)
    return 0


class Supervisor:
    """Starts ``forewarn`` subcommands in the background and stops them all.

    ``watchdog`` stops the children if this process dies without doing so (SIGKILL for what
    is left ``watchdog_grace_s`` after its SIGTERM); without one the supervisor starts its own
    with its first child (and closes it when it stops)."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None, watchdog: Watchdog | None = None,
                 *, watchdog_grace_s: float = _WATCHDOG_GRACE_S) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, **(env or {})}
        self.children: list[Child] = []
        self.watchdog = watchdog
        self.watchdog_grace_s = watchdog_grace_s
        self._own_watchdog = False

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        """Run ``forewarn <args>`` in the background (``env`` over the supervisor's own)."""
        return self.spawn(name, [sys.executable, "-m", "forewarn.cli", *args], env)

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        """Run ``argv`` in the background, in a process group of its own, logging to ``<name>.log``.
        Call it from the main thread: the parent-death signal follows the thread that started a child."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child = Child(name, list(argv), self.log_dir / f"{name}.log")
        child.popen = self._popen(child.argv, child.log_file, env)
        self.children.append(child)
        log.info("started %s (pid %s): %s", name, child.popen.pid, " ".join(argv))
        return child

    def run(self, name: str, argv: Sequence[str], log_file: Path, stop: threading.Event | None = None,
            env: Mapping[str, str] | None = None) -> int:
        """Run ``argv`` to its end (appending its output to ``log_file``) under the same
        guarantees as a background child; returns its exit code. ``stop`` set (a Ctrl-C for the
        caller: the child, in a session of its own, gets none) sends it SIGTERM, and SIGKILL
        if it is still there after the stop timeout."""
        log_file.parent.mkdir(parents=True, exist_ok=True)
        popen = self._popen(list(argv), log_file, env)
        child = Child(name, list(argv), log_file, popen)
        self.children.append(child)
        try:
            while stop is None or not stop.is_set():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return popen.wait(None if stop is None else 0.2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                return popen.wait(_STOP_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                self._kill(child)
                return popen.wait()
        finally:
            self._kill(child)
            self.children.remove(child)

    def _popen(self, argv: list[str], log_file: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        if self.watchdog is None:
            self.watchdog = Watchdog(self.log_dir / "watchdog.log")
            self._own_watchdog = True
        with log_file.open("ab") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**self.env, **(env or {})}, start_new_session=True,
                                     preexec_fn=die_with_parent())
        self.watchdog.watch(popen.pid, log_file.stem, self.watchdog_grace_s)
        return popen

    def dead(self) -> list[Child]:
        """Children that exited since the last call (each reported once)."""
        gone = []
        for child in self.children:
            if not child.running and not child.reported_exit:
                child.reported_exit = True
                gone.append(child)
        return gone

    def last_lines(self, child: Child, lines: int = 15) -> str:
        return tail(child.log_file, lines)

    def stop(self, timeout_s: float = _STOP_S) -> None:
        """SIGTERM every child, newest first; SIGKILL what is still alive after ``timeout_s``.

        Interrupted (a second Ctrl-C), it SIGKILLs every child still running before it re-raises:
        the children run in sessions of their own, so nothing else would stop them.
        """
        try:
            self._stop(timeout_s)
        finally:
            if self._own_watchdog and self.watchdog is not None:
                self.watchdog.close()
                self.watchdog, self._own_watchdog = None, False

    def _stop(self, timeout_s: float) -> None:
        for child in reversed(self.children):
            if child.running and child.popen is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        try:
            for child in reversed(self.children):
                if child.popen is None:
                    continue
                try:
                    child.popen.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in time; killing it", child.name)
                    self._kill(child)
        except BaseException:
            for child in self.children:
                self._kill(child)
            raise

    @staticmethod
    def _kill(child: Child) -> None:
        if child.popen is None or child.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.popen.pid, signal.SIGKILL)
        child.popen.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Leaving on KeyboardInterrupt (a second Ctrl-C) means "now": a short grace period only.
        self.stop(_FORCED_STOP_S if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) else _STOP_S)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s watchdog: %(message)s")
    sys.exit(watch_stdin())
