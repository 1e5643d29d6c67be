"""The dashboard's process-wide parts: the store, the background consumer and the producer
for acknowledgements. Built once per server process with ``st.cache_resource``; tests and
the benchmark install their own with :func:`install`.
"""

from __future__ import annotations

import atexit
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import streamlit as st

from dashboard.consumer import ConsumerStatus, Materializer
from dashboard.settings import DashboardSettings
from dashboard.store import Retention, Store
from forewarn.kafka import KafkaProducer
from forewarn.service import ServiceThread
from forewarn.settings import load_settings
from forewarn.topics import Topics

__all__ = ["AlertSink", "Runtime", "build_runtime", "get_runtime", "install"]

log = logging.getLogger(__name__)


class AlertSink(Protocol):
    """Where acknowledgements go: :class:`~forewarn.kafka.KafkaProducer` or a test fake."""

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None, *,
                headers: Any = None, timestamp_ms: int | None = None) -> None: ...

    def flush(self, timeout_s: float = 30.0) -> int: ...


@dataclass
class Runtime:
    """Everything a page needs besides Streamlit."""

    settings: DashboardSettings
    store: Store
    topics: Topics
    sink: AlertSink
    materializer: ServiceThread[Materializer] | None = None  # the background consumer, on its thread
    _closed: bool = field(default=False, repr=False)

    @property
    def status(self) -> ConsumerStatus | None:
        return None if self.materializer is None else self.materializer.service.status

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.materializer is not None:
            self.materializer.stop()
        closer = getattr(self.sink, "close", None)
        if callable(closer):
            closer(5.0)
        self.store.close()


def build_runtime(settings: DashboardSettings) -> Runtime:
    """Open the store and start the background consumer (when ``dashboard.consume``)."""
    options = settings.dashboard
    future_s = settings.input.max_future_s
    retention = Retention(hours=options.retention_hours, max_predictions=options.max_predictions,
                          max_telemetry_rows=options.max_telemetry_rows, max_alert_events=options.max_alert_events,
                          max_future_ms=None if future_s is None else int(future_s * 1000))
    store = Store(options.store_path, retention)
    topics = Topics.from_settings(settings.topics)
    producer = KafkaProducer(settings.kafka, **{"client.id": f"{settings.kafka.client_id}-dashboard"})
    materializer = None
    if options.consume:
        materializer = ServiceThread(
            Materializer(store, settings.kafka, topics, group_id=options.group_id,
                         sample_every=options.telemetry_sample_every, poll_batch=options.poll_batch,
                         lag_every_s=options.lag_every_s, prune_every_s=options.prune_every_s),
            "forewarn-dashboard-consumer").start()
    runtime = Runtime(settings, store, topics, producer, materializer)
    atexit.register(runtime.close)
    log.info("dashboard runtime started (store %s, topics prefix %r)", options.store, settings.topics.prefix)
    return runtime


_installed: Runtime | None = None
_lock = threading.Lock()


def install(runtime: Runtime | None) -> None:
    """Use ``runtime`` for every page from now on (tests, benchmark); None goes back to the default."""
    global _installed
    with _lock:
        _installed = runtime


def _release(runtime: Runtime) -> None:
    runtime.close()


@st.cache_resource(show_spinner="Starting the dashboard's Kafka consumer…", on_release=_release)
def _process_runtime() -> Runtime:
    # Settings come from forewarn.toml and FOREWARN_* variables (`forewarn dashboard` exports its flags).
    return build_runtime(load_settings(DashboardSettings))


def get_runtime() -> Runtime:
    """The installed runtime, or the one of this server process (built once, on first use)."""
    if _installed is not None:
        return _installed
    return _process_runtime()
