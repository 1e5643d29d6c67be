"""The explicit lifecycle of Forewarn's long-running services (bridge, edge gateway):
``start()``, a loop of ``step()`` until ``stop()`` (safe from signal handlers), then
``close()`` drains; usable as a context manager."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Self

__all__ = ["LoopService"]


class LoopService:
    """Subclasses implement :meth:`start`, :meth:`step` and :meth:`close`."""

    _stop: threading.Event

    def start(self) -> None:
        raise NotImplementedError

    def step(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Ask :meth:`run` to finish its current step, drain and return."""
        self._stop.set()

    def stop_on_signals(self, say: Callable[[str], None] = lambda _line: None) -> None:
        """SIGTERM and SIGINT (Ctrl-C) make :meth:`run` drain and return; ``say`` reports it."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            say(f"{signal.Signals(signum).name}: draining and stopping")
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> None:
        """Start (if needed), step until :meth:`stop`, then drain and close."""
        self.start()
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
