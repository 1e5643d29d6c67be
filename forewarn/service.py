"""The explicit lifecycle of Forewarn's long-running services, and their one signal helper.

:class:`ServiceThread` runs a :class:`LoopService` in the background (the dashboard's consumer).

:class:`LoopService` is the lifecycle of the bridge, the edge gateway and the scoring worker:
``start()``, a loop of ``step()`` until ``stop()`` (safe from signal handlers and other
threads), then ``close()`` drains and releases; usable as a context manager. A subclass
implements :meth:`~LoopService.start`, :meth:`~LoopService.step` and :meth:`~LoopService.close`
and calls ``super().__init__()``::

    class Worker(LoopService):
        def __init__(self, settings: Settings) -> None:
            super().__init__()
            ...
        def start(self) -> None: ...          # idempotent: run() calls it again
        def step(self) -> int: ...            # one round; returns the work done (0 = idle)
        def close(self) -> None: ...          # idempotent: drain, then release the clients

    worker = Worker(settings)
    with worker.stop_on_signals(say=lambda line: click.echo(line, err=True)):
        worker.run()                          # until SIGTERM/Ctrl-C, then drains and closes

:func:`on_signals` is the one way a command reacts to SIGTERM and SIGINT: it installs handlers
that call a callback, and puts the previous handlers back when its block ends. By default a
second signal raises :class:`KeyboardInterrupt` in the main thread, so a second Ctrl-C cuts a
slow drain short (``forewarn``'s CLI turns it into "interrupted", exit 130)::

    stop = threading.Event()
    with on_signals(lambda _sig: stop.set(), say=print):
        while not stop.is_set():
            ...
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Generic, Self, TypeVar

__all__ = ["LoopService", "ServiceThread", "SignalScope", "on_signals"]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_Handler = Callable[[int, FrameType | None], object] | int | None


class SignalScope:
    """Signal handlers installed by :func:`on_signals`; :meth:`restore` (or leaving the
    ``with`` block) puts the previous handlers back. Restoring twice is harmless."""

    def __init__(self, callback: Callable[[signal.Signals], None], *, signals: Iterable[signal.Signals],
                 say: Callable[[str], None] | None, action: str, force_second: bool) -> None:
        self._callback = callback
        self._say = say
        self._action = action
        self._force_second = force_second
        self.received: list[signal.Signals] = []
        self._previous: dict[signal.Signals, _Handler] = {}
        if threading.current_thread() is not threading.main_thread():
            # Python delivers signals to the main thread only and refuses handlers elsewhere.
            log.debug("not in the main thread: leaving the signal handlers as they are")
            return
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    @property
    def installed(self) -> bool:
        """Whether this scope's handlers are in place (False off the main thread and after restore)."""
        return bool(self._previous)

    def _tell(self, line: str) -> None:
        if self._say is None:
            return
        # A handler can interrupt a write to the same stream; losing the line beats crashing.
        with contextlib.suppress(RuntimeError, OSError):
            self._say(line)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        self.received.append(sig)
        if self._force_second and len(self.received) > 1:
            self._tell(f"{sig.name} again: exiting now")
            raise KeyboardInterrupt
        self._tell(f"{sig.name}: {self._action}" + (" (again to exit now)" if self._force_second else ""))
        self._callback(sig)

    def restore(self) -> None:
        """Put back the handlers that were installed before this scope."""
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            # None: a handler not installed from Python; the default is the closest we can restore.
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()


def on_signals(callback: Callable[[signal.Signals], None], *, say: Callable[[str], None] | None = None,
               action: str = "stopping", signals: Iterable[signal.Signals] = STOP_SIGNALS,
               force_second: bool = True) -> SignalScope:
    """Call ``callback(signal)`` on SIGTERM or SIGINT until the returned scope is restored.

    The handlers are installed when this is called (use the result as a context manager to
    restore the previous ones at the end of the block). ``say`` gets one line per signal, e.g.
    ``"SIGTERM: stopping"``. With ``force_second`` (the default) a second signal raises
    :class:`KeyboardInterrupt` instead of calling ``callback`` again; without it every signal
    calls ``callback`` (e.g. to pass each one on to a child process). Off the main thread
    nothing is installed: Python delivers signals to the main thread only.
    """
    return SignalScope(callback, signals=signals, say=say, action=action, force_second=force_second)


class LoopService:
    """Subclasses implement :meth:`start`, :meth:`step` and :meth:`close` (all three may be
    called more than once: make start and close idempotent) and call ``super().__init__()``."""

    _stop: threading.Event

    def __init__(self) -> None:
        self._stop = threading.Event()

    def start(self) -> None:
        """Connect and get ready to step; a second call does nothing."""
        raise NotImplementedError

    def step(self) -> int:
        """One round of work; returns how much was done (0 when there was nothing to do)."""
        raise NotImplementedError

    def close(self) -> None:
        """Drain what is in flight and release every client; a second call does nothing."""
        raise NotImplementedError

    def stop(self) -> None:
        """Ask :meth:`run` to finish its current step, drain and return (safe from signal
        handlers and other threads)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def stop_on_signals(self, say: Callable[[str], None] | None = None) -> SignalScope:
        """SIGTERM and SIGINT (Ctrl-C) make :meth:`run` drain and return; a second one exits at
        once. Use as ``with service.stop_on_signals(say): service.run()``; ``say`` reports it."""
        return on_signals(lambda _sig: self.stop(), say=say, action="draining and stopping")

    def run(self, max_steps: int | None = None, idle_exit_s: float | None = None) -> None:
        """Start (if needed), step until :meth:`stop`, then drain and close.

        ``max_steps`` ends the loop after that many steps that did work (returned more than 0);
        ``idle_exit_s`` after that many seconds in which no step did (both for tests and
        benchmarks). The service is closed however the loop ends.
        """
        self.start()
        try:
            if max_steps is None and idle_exit_s is None:
                stopping, step = self._stop.is_set, self.step
                while not stopping():
                    step()
                return
            busy = 0
            idle_since = time.monotonic()
            while not self._stop.is_set() and (max_steps is None or busy < max_steps):
                if self.step():
                    busy += 1
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
        finally:
            self.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self.close()


S = TypeVar("S", bound=LoopService)


class ServiceThread(Generic[S]):
    """Runs a :class:`~forewarn.service.LoopService` on a daemon thread: :meth:`start` returns at
    once, :meth:`stop` asks the service to stop and waits (up to ``timeout_s``) until it has
    closed; also a context manager. The service is reachable as :attr:`service`."""

    def __init__(self, service: S, name: str) -> None:
        self.service = service
        self.name = name
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Start the thread (a second call does nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.service.run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the service and wait up to ``timeout_s`` for its thread to end."""
        self.service.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("%s did not stop within %.0fs", self.name, timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
