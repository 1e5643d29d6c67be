"""The Prometheus endpoint every service shares, and typed per-round tallies for hot loops.

:class:`MetricsEndpoint` owns a registry of its own (several services may share a process in
tests; the default registry would refuse the second) and an HTTP server that can be started
and stopped. A service's metrics class subclasses it and adds its metrics as attributes, so a
misspelt metric is an attribute error that mypy reports, never a silently lost count.

Hot loops do not touch Prometheus per message (each increment takes a lock). They count into
tallies made once from the metric objects and flushed together once per round:

* :class:`Tally` — for a counter with one label: a ``collections.Counter[str]`` keyed by the
  label value, as cheap per event as a plain ``Counter[str]``;
* :class:`Total` — for an unlabelled counter, or one child (``counter.labels("x")``): an
  integer in ``.n``.

Making one checks the counter's labels (one label for a tally, none left open for a total), so
a mismatch fails when the metrics object is built::

    class BridgeMetrics(MetricsEndpoint):
        def __init__(self, registry: CollectorRegistry | None = None) -> None:
            super().__init__(registry)
            self.received = Counter("forewarn_bridge_received", "...", ["kind"], registry=self.registry)
            self.acked = Counter("forewarn_bridge_acked", "...", registry=self.registry)
            self.received_by_kind = self.tally(self.received)   # Tally: Counter[str]
            self.acked_now = self.total(self.acked)             # Total: .n

    received = metrics.received_by_kind           # bound once per round, outside the loop
    for message in messages:
        received[message.kind] += 1
    metrics.acked_now.n += acked
    metrics.flush()                               # once per round: every tally and total
"""

from __future__ import annotations

import collections
import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, start_http_server

__all__ = ["MetricsEndpoint", "Tally", "Total"]

log = logging.getLogger(__name__)


def _open_labels(metric: Counter) -> int:
    """How many label values ``metric`` still needs (0 for an unlabelled counter or a child)."""
    names: tuple[str, ...] = tuple(getattr(metric, "_labelnames", ()))
    values: tuple[str, ...] = tuple(getattr(metric, "_labelvalues", ()))
    return 0 if values else len(names)


class Tally(collections.Counter[str]):
    """One round's increments of a one-label Prometheus counter, by label value.

    Count with ``tally[label] += n``; :meth:`flush` adds every count to its labelled child and
    empties the tally. Not thread-safe: one loop counts and flushes.
    """

    def __init__(self, metric: Counter) -> None:
        super().__init__()
        if _open_labels(metric) != 1:
            raise TypeError(f"a Tally needs a counter with exactly one label; {metric!r} has "
                            f"{_open_labels(metric)} open (use Total for an unlabelled counter)")
        self.metric = metric

    def flush(self) -> None:
        labels = self.metric.labels
        for label, n in self.items():
            if n:
                labels(label).inc(n)
        self.clear()


class Total:
    """One round's increments of an unlabelled Prometheus counter (or of one child of a
    labelled one): add to :attr:`n`; :meth:`flush` adds it to the counter and resets it."""

    __slots__ = ("metric", "n")

    def __init__(self, metric: Counter) -> None:
        if _open_labels(metric) != 0:
            raise TypeError(f"a Total needs an unlabelled counter or a child (counter.labels(...)); {metric!r} "
                            f"has {_open_labels(metric)} open label(s) (use Tally)")
        self.metric = metric
        self.n = 0

    def flush(self) -> None:
        if self.n:
            self.metric.inc(self.n)
            self.n = 0


class MetricsEndpoint:
    """Base of a service's metrics: subclasses add their metrics to ``self.registry`` and make
    the tallies their hot loops count into with :meth:`tally` and :meth:`total`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._tallies: list[Tally | Total] = []

    def tally(self, metric: Counter) -> Tally:
        """A :class:`Tally` of ``metric`` (a one-label counter) that :meth:`flush` empties."""
        tally = Tally(metric)
        self._tallies.append(tally)
        return tally

    def total(self, metric: Counter) -> Total:
        """A :class:`Total` of ``metric`` (unlabelled, or a child) that :meth:`flush` empties."""
        total = Total(metric)
        self._tallies.append(total)
        return total

    def flush(self) -> None:
        """Add every tally and total made by :meth:`tally`/:meth:`total` to its counter."""
        for tally in self._tallies:
            tally.flush()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the HTTP endpoint; returns the port it listens on (useful with port 0)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._server.server_port)
        log.info("metrics on http://%s:%s/metrics", host, bound)
        return bound

    def close(self) -> None:
        """Flush the tallies and stop the HTTP endpoint (if it was started)."""
        self.flush()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
