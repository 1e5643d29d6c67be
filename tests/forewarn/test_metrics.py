from __future__ import annotations

from prometheus_client import Counter

from forewarn.metrics import MetricsEndpoint


class _Metrics(MetricsEndpoint):
    def __init__(self) -> None:
        super().__init__()
        self.received = Counter("t_received", "by kind", ["kind"], registry=self.registry)
        self.acked = Counter("t_acked", "acked", registry=self.registry)


def test_round_tallies_reach_the_right_counters() -> None:
    m = _Metrics()
    m.add_counts({"received:telemetry": 3, "received:batch": 1, "acked": 4, "unknown:x": 9})
    m.add_counts({"received:telemetry": 2})
    value = m.registry.get_sample_value
    assert value("t_received_total", {"kind": "telemetry"}) == 5
    assert value("t_received_total", {"kind": "batch"}) == 1
    assert value("t_acked_total") == 4


def test_endpoint_serves_and_closes() -> None:
    import urllib.request

    m = _Metrics()
    m.add_counts({"acked": 2})
    port = m.serve(0, "127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        m.close()
    assert "t_acked_total 2.0" in body
