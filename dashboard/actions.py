"""What the dashboard writes.

Lifecycle events on the alerts topic (keyed by machine_id, like every other event of the
alert): ``acknowledged`` (with a note), ``assigned`` (to a user name, empty to unassign) and
``snoozed`` (until a time; a time now or past ends the snooze). An event sent twice is harmless
(the alert's status is the same). The notifier reads the same events: an acknowledged alert
stops escalating and reminding, a snoozed one stays quiet until its time.

Work orders on the ``workorders`` topic: opened from an alert or a machine, closed with an
outcome. Closing one first writes its maintenance event
(:func:`~forewarn.contract.work_order_maintenance`: the ground truth the scorers, the learning
loop and the live accuracy use) to ``maintenance``, and only once Kafka confirmed it the closed
state; a close retried after a failure writes the same event identity again, which every
consumer applies once.

Only an operator or an admin changes an alert or a work order: each action checks the role
itself, so a page that forgot to hide its control still cannot send one for a viewer. Every
record names the signed-in user and is dated when it is sent; alert events copy the alert's
last evidence."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final

from dashboard.auth import Principal, Role
from dashboard.errors import DashboardError
from dashboard.runtime import Runtime
from forewarn.contract import (
    SCHEMA_VERSION,
    Alert,
    AlertState,
    NotifyPreference,
    WorkOrder,
    WorkOrderOutcome,
    encode,
    work_order_maintenance,
)

__all__ = ["ACKNOWLEDGE_ROLE", "NOTE_MAX_CHARS", "SNOOZE_MAX_MINUTES", "acknowledge", "acknowledgement", "assign",
           "close_work_order", "lifecycle_event", "open_work_order", "save_preferences", "snooze"]

log = logging.getLogger(__name__)

ACKNOWLEDGE_ROLE: Final[Role] = "operator"
NOTE_MAX_CHARS: Final = 500
SNOOZE_MAX_MINUTES: Final = 7 * 24 * 60
NAME_MAX_CHARS: Final = 200


def _opt(value: Any) -> Any:
    return None if value is None or value != value else value  # NaN → None


def lifecycle_event(alert: Mapping[str, Any], state: AlertState, now_ms: int, horizon: int | None = None,
                    **fields: Any) -> Alert:
    """The ``state`` event for one alert row of :func:`dashboard.queries.alert_list`, with its
    last evidence and ``fields``. It is dated now, or after the alert's last event so it sorts
    last, unless that event is dated beyond ``horizon`` (a future outlier)."""
    p_fail, rul = _opt(alert.get("p_fail")), _opt(alert.get("rul"))
    last_ts = int(_opt(alert.get("last_ts")) or 0)
    return Alert(
        v=SCHEMA_VERSION, alert_id=str(alert["alert_id"]), machine_id=str(alert["machine_id"]),
        state=state, severity=alert["severity"], rule=str(alert["rule"]),
        opened_at=int(alert["opened_at"]),
        ts=now_ms if horizon is not None and last_ts > horizon else max(now_ms, last_ts),
        model=_opt(alert.get("model")), model_version=_opt(alert.get("model_version")),
        asset_type=_opt(alert.get("asset_type")), p_fail=None if p_fail is None else float(p_fail),
        rul=None if rul is None else float(rul), **fields)


def acknowledgement(alert: Mapping[str, Any], by: str, now_ms: int, horizon: int | None = None,
                    note: str | None = None) -> Alert:
    """The ``acknowledged`` event for one alert row, by ``by``, with the user's note."""
    return lifecycle_event(alert, "acknowledged", now_ms, horizon, message=f"acknowledged by {by}",
                           acknowledged_by=by, note=note)


def _confirm(runtime: Runtime, sent: int, what: str, timeout_s: float) -> None:
    left = runtime.sink.flush(timeout_s)
    if left:
        raise DashboardError(f"Kafka did not confirm {left} of {sent} {what} within {timeout_s:.0f} s",
                             hint="what is not confirmed stays queued and is sent when Kafka is reachable; "
                                  "check the brokers")


def _note(note: str) -> str | None:
    text = note.strip()
    if len(text) > NOTE_MAX_CHARS:
        raise DashboardError(f"the note has {len(text)} characters", hint=f"keep it to {NOTE_MAX_CHARS}")
    return text or None


def _send(runtime: Runtime, events: list[Alert], user: Principal, what: str, timeout_s: float) -> int:
    """Produce ``events`` and wait until Kafka confirmed them."""
    now_ms = runtime.store.now_ms()
    for event in events:
        runtime.sink.produce(runtime.topics.alerts, encode(event), key=event.machine_id, timestamp_ms=now_ms)
    _confirm(runtime, len(events), what, timeout_s)
    log.info("%s: %s sent as %s", what, len(events), user.name)
    return len(events)


def _may_change(user: Principal, verb: str) -> None:
    if not user.can(ACKNOWLEDGE_ROLE):
        raise DashboardError(f"{user.name} ({user.role}) may not {verb} alerts",
                             hint=f"acknowledging, assigning and snoozing need the {ACKNOWLEDGE_ROLE} or admin role")


def acknowledge(runtime: Runtime, alerts: Iterable[Mapping[str, Any]], user: Principal, note: str = "",
                timeout_s: float = 10.0) -> int:
    """Produce an ``acknowledged`` event per alert as ``user`` (many at once for a storm) and
    wait until Kafka confirmed them; :class:`DashboardError` when the user's role may not or
    the note is too long."""
    _may_change(user, "acknowledge")
    text = _note(note)
    now_ms, horizon = runtime.store.now_ms(), runtime.store.horizon()
    events = [acknowledgement(a, user.label, now_ms, horizon, text) for a in alerts]
    return _send(runtime, events, user, "acknowledgements", timeout_s)


def assign(runtime: Runtime, alerts: Iterable[Mapping[str, Any]], user: Principal, to: str,
           timeout_s: float = 10.0) -> int:
    """Produce an ``assigned`` event per alert: ``to`` (a user name) is responsible now; an
    empty ``to`` unassigns."""
    _may_change(user, "assign")
    name = to.strip()
    if len(name) > NAME_MAX_CHARS:
        raise DashboardError(f"the user name has {len(name)} characters", hint=f"keep it to {NAME_MAX_CHARS}")
    now_ms, horizon = runtime.store.now_ms(), runtime.store.horizon()
    events = [lifecycle_event(a, "assigned", now_ms, horizon, actor=user.label, assigned_to=name,
                              message=f"assigned to {name} by {user.label}" if name else
                              f"unassigned by {user.label}") for a in alerts]
    return _send(runtime, events, user, "assignments", timeout_s)


def snooze(runtime: Runtime, alerts: Iterable[Mapping[str, Any]], user: Principal, minutes: float,
           timeout_s: float = 10.0) -> int:
    """Produce a ``snoozed`` event per alert: no notification about it for ``minutes`` from now
    (0 ends a snooze); at most :data:`SNOOZE_MAX_MINUTES`."""
    _may_change(user, "snooze")
    if not 0 <= minutes <= SNOOZE_MAX_MINUTES:
        raise DashboardError(f"a snooze of {minutes:g} minutes", hint=f"snooze for 0 to {SNOOZE_MAX_MINUTES} minutes")
    now_ms, horizon = runtime.store.now_ms(), runtime.store.horizon()
    until = now_ms + int(minutes * 60_000)
    events = [lifecycle_event(a, "snoozed", now_ms, horizon, actor=user.label, snoozed_until=until,
                              message=f"snoozed for {minutes:g} min by {user.label}" if minutes else
                              f"snooze ended by {user.label}") for a in alerts]
    return _send(runtime, events, user, "snoozes", timeout_s)


def open_work_order(runtime: Runtime, machine_id: str, user: Principal, title: str = "",
                    alert: Mapping[str, Any] | None = None, asset_type: str | None = None,
                    timeout_s: float = 10.0) -> WorkOrder:
    """Open a work order for ``machine_id`` (from ``alert``, a row of the alert list, when given)
    as ``user``; its id is new and random."""
    _may_change(user, "open work orders for")
    now_ms = runtime.store.now_ms()
    order = WorkOrder(SCHEMA_VERSION, uuid.uuid4().hex[:12], machine_id, "open", now_ms, user.label, now_ms,
                      alert_id=None if alert is None else str(alert["alert_id"]),
                      asset_type=asset_type or (None if alert is None else _opt(alert.get("asset_type"))),
                      title=_note(title))
    runtime.sink.produce(runtime.topics.workorders, encode(order), key=order.work_order_id, timestamp_ms=now_ms)
    _confirm(runtime, 1, "work order", timeout_s)
    log.info("work order %s opened for %s by %s", order.work_order_id, machine_id, user.name)
    return order


def close_work_order(runtime: Runtime, order: Mapping[str, Any], user: Principal, outcome: WorkOrderOutcome,
                     failure_mode: str = "", note: str = "", timeout_s: float = 10.0) -> WorkOrder:
    """Close a work order (a row of :func:`dashboard.queries.work_orders`) with ``outcome``: its
    maintenance event goes to ``maintenance`` first, then the closed state to ``workorders``."""
    _may_change(user, "close work orders for")
    mode = failure_mode.strip() or None
    if outcome == "confirmed_failure" and mode is None:
        raise DashboardError("a confirmed failure needs its failure mode", hint="say what failed, e.g. bearing")
    now_ms = runtime.store.now_ms()
    closed = WorkOrder(SCHEMA_VERSION, str(order["work_order_id"]), str(order["machine_id"]), "closed",
                       int(order["opened_at"]), str(order["opened_by"]), now_ms,
                       alert_id=_opt(order.get("alert_id")), asset_type=_opt(order.get("asset_type")),
                       title=_opt(order.get("title")), closed_by=user.label, outcome=outcome,
                       failure_mode=mode if outcome == "confirmed_failure" else None, note=_note(note))
    event = work_order_maintenance(closed)
    runtime.sink.produce(runtime.topics.maintenance, encode(event), key=event.machine_id, timestamp_ms=now_ms)
    _confirm(runtime, 1, "maintenance event", timeout_s)
    runtime.sink.produce(runtime.topics.workorders, encode(closed), key=closed.work_order_id, timestamp_ms=now_ms)
    _confirm(runtime, 1, "closed work order", timeout_s)
    log.info("work order %s closed as %s by %s", closed.work_order_id, outcome, user.name)
    return closed


def save_preferences(runtime: Runtime, user: Principal, email: str, assigned: bool,
                     timeout_s: float = 10.0) -> NotifyPreference:
    """The signed-in user's notification preferences, on ``notify.preferences`` (keyed by the
    user name; the last one wins): with an address and ``assigned``, the notifier emails them
    the alerts assigned to them. Anyone signed in sets their own, and only their own."""
    address = email.strip() or None
    if address is not None and (len(address) > 320 or address.count("@") != 1 or " " in address):
        raise DashboardError(f"{address!r} is not an email address", hint="write it as name@example.com")
    preference = NotifyPreference(SCHEMA_VERSION, user.name, runtime.store.now_ms(), email=address, assigned=assigned)
    runtime.sink.produce(runtime.topics.notify_preferences, encode(preference), key=user.name,
                         timestamp_ms=preference.ts)
    _confirm(runtime, 1, "preferences", timeout_s)
    return preference
