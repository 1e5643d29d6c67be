from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import Counter

from forewarn.metrics import MetricsEndpoint, Tally, Total


class _Metrics(MetricsEndpoint):
    def __init__(self) -> None:
        super().__init__()
        self.received = Counter("t_received", "by kind", ["kind"], registry=self.registry)
        self.acked = Counter("t_acked", "acked", registry=self.registry)
        self.alerts = Counter("t_alerts", "by state and rule", ["state", "rule"], registry=self.registry)
        self.received_by_kind = self.tally(self.received)
        self.acked_now = self.total(self.acked)
        self.opened_now = self.total(self.alerts.labels("open", "p_fail"))


def test_tallies_reach_their_counters_only_when_flushed() -> None:
    m = _Metrics()
    value = m.registry.get_sample_value
    received = m.received_by_kind
    for kind in ("telemetry", "telemetry", "batch", "telemetry"):
        received[kind] += 1
    m.acked_now.n += 4
    m.opened_now.n += 1
    assert value("t_received_total", {"kind": "telemetry"}) is None  # nothing reaches Prometheus per event
    m.flush()
    assert value("t_received_total", {"kind": "telemetry"}) == 3
    assert value("t_received_total", {"kind": "batch"}) == 1
    assert value("t_acked_total") == 4
    assert value("t_alerts_total", {"state": "open", "rule": "p_fail"}) == 1
    assert not received and m.acked_now.n == 0  # emptied by the flush
    received["telemetry"] += 2
    m.flush()
    m.flush()  # an empty flush adds nothing
    assert value("t_received_total", {"kind": "telemetry"}) == 5
    assert value("t_acked_total") == 4


def test_a_tally_must_match_the_counters_labels() -> None:
    m = _Metrics()
    with pytest.raises(TypeError, match="exactly one label"):
        Tally(m.acked)
    with pytest.raises(TypeError, match="exactly one label"):
        Tally(m.alerts)
    with pytest.raises(TypeError, match="open label"):
        Total(m.received)
    assert Total(m.received.labels("batch")).n == 0  # a child is a total of its own


def test_a_misspelt_metric_fails_in_mypy_and_at_run_time() -> None:
    m = _Metrics()
    with pytest.raises(AttributeError):
        m.recieved_by_kind["telemetry"] += 1  # type: ignore[attr-defined]


def test_endpoint_serves_and_close_flushes_what_is_left() -> None:
    m = _Metrics()
    m.acked_now.n += 2
    port = m.serve(0, "127.0.0.1")
    try:
        m.flush()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        m.acked_now.n += 1
        m.close()
    assert "t_acked_total 2.0" in body
    assert m.registry.get_sample_value("t_acked_total") == 3
