"""Runs Forewarn components as child processes (``forewarn <command> ...``) for the demo:
one log file each, a line when one dies, and an orderly stop (SIGTERM, then SIGKILL) in the
reverse order of start. It installs no signal handlers: the demo owns them (through
:func:`forewarn.service.on_signals`) and leaves the ``with`` block of its supervisor when told
to stop; a child is never left running, also when that stop is interrupted."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from forewarn.stack._process import tail

__all__ = ["Child", "Supervisor"]

log = logging.getLogger(__name__)

_FORCED_STOP_S = 2.0


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


class Supervisor:
    """Starts ``forewarn`` subcommands in the background and stops them all."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, **(env or {})}
        self.children: list[Child] = []

    def start(self, name: str, args: Sequence[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "forewarn.cli", *args]
        child = Child(name, argv, self.log_dir / f"{name}.log")
        with child.log_file.open("ab") as out:
            child.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=self.env, start_new_session=True)
        self.children.append(child)
        log.info("started %s (pid %s): %s", name, child.popen.pid, " ".join(args))
        return child

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

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every child, newest first; SIGKILL what is still alive after ``timeout_s``.

        Interrupted (a second Ctrl-C), it SIGKILLs every child still running before it re-raises:
        the children run in sessions of their own, so nothing else would stop them.
        """
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
        self.stop(_FORCED_STOP_S if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) else 30.0)
