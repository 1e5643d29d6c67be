"""What the dashboard writes: acknowledgements, as ``acknowledged`` events on the alerts topic
(keyed by machine_id, like every other event of the alert). The dashboard sends no maintenance
events; an acknowledgement sent twice is harmless (the alert's status is the same).

Only an operator or an admin acknowledges: :func:`acknowledge` checks the role itself, so a
page that forgot to hide its control still cannot send one for a viewer. The event names the
signed-in user (display name, or user name), is dated when it is sent and carries the user's
note (at most :data:`NOTE_MAX_CHARS` characters)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

from dashboard.auth import Principal, Role
from dashboard.errors import DashboardError
from dashboard.runtime import Runtime
from forewarn.contract import SCHEMA_VERSION, Alert, encode

__all__ = ["ACKNOWLEDGE_ROLE", "NOTE_MAX_CHARS", "acknowledge", "acknowledgement"]

log = logging.getLogger(__name__)

ACKNOWLEDGE_ROLE: Final[Role] = "operator"
NOTE_MAX_CHARS: Final = 500


def _opt(value: Any) -> Any:
    return None if value is None or value != value else value  # NaN → None


def acknowledgement(alert: Mapping[str, Any], by: str, now_ms: int, horizon: int | None = None,
                    note: str | None = None) -> Alert:
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
        rul=None if rul is None else float(rul), message=f"acknowledged by {by}", acknowledged_by=by, note=note)


def acknowledge(runtime: Runtime, alerts: Iterable[Mapping[str, Any]], user: Principal, note: str = "",
                timeout_s: float = 10.0) -> int:
    """Produce an ``acknowledged`` event per alert as ``user`` and wait until Kafka confirmed
    them; :class:`DashboardError` when the user's role may not acknowledge or the note is too long."""
    if not user.can(ACKNOWLEDGE_ROLE):
        raise DashboardError(f"{user.name} ({user.role}) may not acknowledge alerts",
                             hint=f"acknowledging needs the {ACKNOWLEDGE_ROLE} or admin role")
    text = note.strip()
    if len(text) > NOTE_MAX_CHARS:
        raise DashboardError(f"the note has {len(text)} characters", hint=f"keep it to {NOTE_MAX_CHARS}")
    now_ms = runtime.store.now_ms()
    sent = 0
    for alert in alerts:
        event = acknowledgement(alert, user.label, now_ms, runtime.store.horizon(), text or None)
        runtime.sink.produce(runtime.topics.alerts, encode(event), key=event.machine_id, timestamp_ms=now_ms)
        sent += 1
    left = runtime.sink.flush(timeout_s)
    if left:
        raise DashboardError(f"Kafka did not confirm {left} of {sent} acknowledgements within {timeout_s:.0f} s",
                             hint="they stay queued and are sent when Kafka is reachable; check the brokers")
    log.info("acknowledged %s alerts as %s", sent, user.name)
    return sent
