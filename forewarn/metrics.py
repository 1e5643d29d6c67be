"""The Prometheus endpoint every service shares: its own registry (several services may
share a process in tests; the default registry would refuse the second) and an HTTP server
that can be started and stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["MetricsEndpoint"]

log = logging.getLogger(__name__)


class MetricsEndpoint:
    """Base of a service's metrics: subclasses add their counters to ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, port: int, host: str = "0.0.0.0") -> int:  # noqa: S104 - scraped from elsewhere
        """Start the HTTP endpoint; returns the port it listens on (useful with port 0)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._server.server_port)
        log.info("metrics on http://%s:%s/metrics", host, bound)
        return bound

    def add_counts(self, counts: Mapping[str, int]) -> None:
        """Add per-round tallies: ``"name:label"`` → the counter attribute ``name`` with that
        label, ``"name"`` → an unlabelled counter. Hot loops count in a plain Counter and call
        this once per round instead of touching Prometheus per message."""
        for key, n in counts.items():
            name, _, label = key.partition(":")
            metric = getattr(self, name, None)
            if metric is not None:
                (metric.labels(label) if label else metric).inc(n)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
