"""What the dashboard writes: acknowledgements, as ``acknowledged`` events on the alerts topic
(keyed by machine_id, like every other event of the alert). The dashboard sends no maintenance
events; an acknowledgement sent twice is harmless (the alert's status is the same)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from dashboard.errors import DashboardError
from dashboard.runtime import Runtime
from forewarn.contract import SCHEMA_VERSION, Alert, encode

__all__ = ["acknowledge", "acknowledgement"]

log = logging.getLogger(__name__)


def _opt(value: Any) -> Any:
    return None if value is None or value != value else value  # NaN → None


def acknowledgement(alert: Mapping[str, Any], by: str, now_ms: int, horizon: int | None = None) -> Alert:
    """The ``acknowledged`` event for one alert row of :func:`dashboard.queries.alert_list`. It
    is dated now, or after the alert's last event so it sorts last, unless that event is dated
    beyond ``horizon`` (a future outlier)."""
    p_fail, rul = _opt(alert.get("p_fail")), _opt(alert.get("rul"))
    last_ts = int(_opt(alert.get("last_ts")) or 0)
    return Alert(
        v=SCHEMA_VERSION, alert_id=str(alert["alert_id"]), machine_id=str(alert["machine_id"]),
        state="acknowledged", severity=alert["severity"], rule=str(alert["rule"]),
        opened_at=int(alert["opened_at"]),
        ts=now_ms if horizon is not None and last_ts > horizon else max(now_ms, last_ts),
        model=_opt(alert.get("model")), model_version=_opt(alert.get("model_version")),
        asset_type=_opt(alert.get("asset_type")), p_fail=None if p_fail is None else float(p_fail),
        rul=None if rul is None else float(rul), message=f"acknowledged by {by}", acknowledged_by=by)


def acknowledge(runtime: Runtime, alerts: Iterable[Mapping[str, Any]], by: str, timeout_s: float = 10.0) -> int:
    """Produce an ``acknowledged`` event per alert and wait until Kafka confirmed them."""
    if not by.strip():
        raise DashboardError("an acknowledgement needs a name", hint="fill in 'Acknowledged by'")
    now_ms = runtime.store.now_ms()
    sent = 0
    for alert in alerts:
        event = acknowledgement(alert, by, now_ms, runtime.store.horizon())
        runtime.sink.produce(runtime.topics.alerts, encode(event), key=event.machine_id, timestamp_ms=now_ms)
        sent += 1
    left = runtime.sink.flush(timeout_s)
    if left:
        raise DashboardError(f"Kafka did not confirm {left} of {sent} acknowledgements within {timeout_s:.0f} s",
                             hint="they stay queued and are sent when Kafka is reachable; check the brokers")
    log.info("acknowledged %s alerts as %s", sent, by)
    return sent
