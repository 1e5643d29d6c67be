"""Alerts: open, acknowledged and resolved alerts with severity and duration, who acknowledged
them, when, with what note, who they are assigned to, until when they are snoozed and how far
they escalated. Views: every alert (with filters), the active and unacknowledged ones, and the
ones assigned to the signed-in user. An operator or admin acknowledges (with a note, one or a
whole view at once for a storm), assigns and snoozes alerts from the page — each an event on the
alerts topic naming the signed-in user; a viewer reads only."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import actions, charts, queries, ui
from dashboard.auth import Principal
from dashboard.errors import DashboardError

STATUSES = ["open", "acknowledged", "resolved"]
SEVERITIES = ["critical", "warning", "info"]
VIEWS = ["All alerts", "Active and unacknowledged", "Assigned to me"]
SNOOZES = {15: "15 min", 60: "1 h", 240: "4 h", 480: "8 h (a shift)", 1440: "24 h", 0: "end the snooze"}

user = ui.current_user()  # the login gate holds on every page, not only through app.py
st.title("Alerts")
store = ui.runtime().store

view = st.radio("Show", VIEWS, horizontal=True, key="alert_view")
c1, c2, c3, c4 = st.columns([2, 2, 1, 2])
statuses = c1.multiselect("Status", STATUSES, default=["open", "acknowledged"], key="alert_status",
                          disabled=view == VIEWS[1], help="'open' is active and not acknowledged")
severities = c2.multiselect("Severity", SEVERITIES, key="alert_severity")
site = c3.selectbox("Site", ["all", *queries.sites(store)], key="alert_site")
machine = c4.text_input("Machine id contains", key="alert_machine")

notice = st.session_state.pop("ack_notice", None)
if notice:
    st.success(notice, icon=":material/done_all:")


@st.fragment(run_every=ui.refresh_every())
def alerts_view() -> None:
    rt = ui.runtime()
    everything = queries.alert_list(rt.store)
    if everything.empty:
        ui.empty_state("No alerts yet.", "Scoring workers open an alert when a machine's p(fail) stays above the "
                       "model's threshold; with a healthy fleet that may take a while.")
        return
    counts = everything["status"].value_counts()
    m = st.columns(4)
    m[0].metric("Open", int(counts.get("open", 0)))
    m[1].metric("Acknowledged", int(counts.get("acknowledged", 0)))
    m[2].metric("Resolved", int(counts.get("resolved", 0)))
    active = everything[everything["status"] != "resolved"]
    m[3].metric("Critical, not resolved", int((active["severity"] == "critical").sum()))
    st.altair_chart(charts.alerts_chart(everything), width="stretch")

    shown = ["open"] if view == VIEWS[1] else statuses
    mine = user.name if view == VIEWS[2] else None
    frame = queries.alert_list(rt.store, shown, severities, None if site == "all" else site, machine or None,
                               assigned_to=mine)
    if frame.empty:
        st.info("Nothing is assigned to you." if mine else "No alert matches these filters.")
        return
    table = frame.assign(
        opened=charts.to_time(frame["opened_at"]),
        resolved=charts.to_time(frame["resolved_at"]),
        acknowledged=charts.to_time(frame["acknowledged_at"]),
        snoozed=charts.to_time(frame["snoozed_until"]),
        duration=frame["duration_ms"].map(ui.duration),
    )[["machine_id", "severity", "status", "assigned_to", "snoozed", "escalation", "acknowledged_by", "note",
       "acknowledged", "rule", "opened", "duration", "resolved", "p_fail", "rul", "model_version", "message"]]
    st.caption(f"{len(table):,} alerts (durations of unresolved alerts run to now)")
    st.dataframe(table, hide_index=True, width="stretch", height=420, key="alert_table", column_config={
        "machine_id": "Machine", "severity": "Severity", "status": "Status", "rule": "Rule",
        "opened": st.column_config.DatetimeColumn("Opened (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        "resolved": st.column_config.DatetimeColumn("Resolved (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        "duration": "Duration",
        "p_fail": st.column_config.ProgressColumn("p(fail)", min_value=0.0, max_value=1.0, format="%.2f"),
        "rul": st.column_config.NumberColumn("RUL", format="%.0f"),
        "model_version": "Model version", "acknowledged_by": "Acknowledged by",
        "acknowledged": st.column_config.DatetimeColumn("Acknowledged (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        "note": "Note", "message": "Message", "assigned_to": "Assigned to",
        "snoozed": st.column_config.DatetimeColumn("Snoozed until (UTC)", format="YYYY-MM-DD HH:mm"),
        "escalation": st.column_config.NumberColumn("Escalation", help="steps escalated by the notifier"),
    })

    if not user.can(actions.ACKNOWLEDGE_ROLE):
        st.caption(f"Read only: you are signed in as {user.role}; acknowledging alerts needs the "
                   f"{actions.ACKNOWLEDGE_ROLE} or admin role.")
        return

    change_alerts(rt, frame, user)


def _label(row: Any) -> str:
    extra = [str(row.status)] + ([f"assigned to {row.assigned_to}"] if isinstance(row.assigned_to, str) else []) + (
        ["snoozed"] if row.snoozed else [])
    return f"{row.machine_id} · {row.severity} · {row.rule} · {', '.join(extra)}"


def change_alerts(rt: Any, frame: pd.DataFrame, user: Principal) -> None:
    """Acknowledge, assign or snooze the chosen alerts of the view (or all of them)."""
    active = frame[frame["status"] != "resolved"]
    with st.expander(f"Acknowledge, assign or snooze ({len(active)} active in this view)",
                     expanded=not active.empty):
        if active.empty:
            st.caption("Nothing to change here: every alert in this view is resolved.")
            return
        labels = {str(r.alert_id): _label(r) for r in active.itertuples()}
        every = st.checkbox(f"All {len(active)} active alerts in this view", key="ack_all")
        chosen = list(labels) if every else st.multiselect("Alerts", list(labels), format_func=lambda a: labels[a],
                                                           key="ack_alerts")
        rows = [r for r in active.to_dict("records") if str(r["alert_id"]) in set(chosen)]
        action = st.radio("Action", ["Acknowledge", "Assign", "Snooze", "Open a work order"], horizontal=True,
                          key="alert_action")
        try:
            done = _act(rt, action, rows, user)
        except DashboardError as error:
            st.error(error.one_line())
            return
        if done is not None:
            st.session_state["ack_notice"] = done
            for key in ("ack_alerts", "ack_note", "ack_all"):
                st.session_state.pop(key, None)
            st.rerun()


def _act(rt: Any, action: str, rows: list[dict[str, Any]], user: Principal) -> str | None:
    """The controls of one action; returns what was done once its button was pressed."""
    plural = "s" if len(rows) != 1 else ""
    back = "the table shows it once it is back from Kafka."
    if action == "Acknowledge":
        unacknowledged = [r for r in rows if r["status"] == "open"]
        st.text_area("Note (optional)", key="ack_note", max_chars=actions.NOTE_MAX_CHARS, height=80,
                     placeholder="what you found or did")
        st.caption(f"Recorded as **{user.label}**, dated now"
                   + (f"; {len(rows) - len(unacknowledged)} already acknowledged are left as they are."
                      if len(unacknowledged) < len(rows) else "."))
        if st.button("Acknowledge", key="ack_button", type="primary", disabled=not unacknowledged):
            sent = actions.acknowledge(rt, unacknowledged, user, st.session_state.get("ack_note") or "")
            return f"Acknowledged {sent} alert{'s' if sent != 1 else ''} as {user.label}; {back}"
    elif action == "Assign":
        to = st.text_input("Assign to (user name; empty unassigns)", value=user.name, key="assign_to")
        if st.button("Assign", key="assign_button", type="primary", disabled=not rows):
            sent = actions.assign(rt, rows, user, to)
            whom = to.strip() or "nobody"
            return f"Assigned {sent} alert{plural} to {whom}; {back}"
    elif action == "Open a work order":
        title = st.text_input("What is to be done", key="wo_alert_title", max_chars=actions.NOTE_MAX_CHARS)
        st.caption("One work order per chosen alert; close it on the machine's page with its outcome.")
        if st.button("Open work order", key="wo_alert_open", type="primary", disabled=not rows):
            opened = [actions.open_work_order(rt, str(r["machine_id"]), user, title, alert=r) for r in rows]
            machines = ", ".join(sorted({o.machine_id for o in opened}))
            return f"Opened {len(opened)} work order{plural} ({machines}); close {'them' if plural else 'it'} " \
                   "on the machine's page."
    else:
        minutes = st.selectbox("Snooze for", list(SNOOZES), format_func=SNOOZES.__getitem__, key="snooze_for")
        st.caption("A snoozed alert sends no notification until then: no reminders, no escalation.")
        if st.button("Snooze", key="snooze_button", type="primary", disabled=not rows):
            sent = actions.snooze(rt, rows, user, float(minutes))
            return (f"Snoozed {sent} alert{plural} for {SNOOZES[minutes]}; {back}" if minutes
                    else f"Ended the snooze of {sent} alert{plural}; {back}")
    return None


alerts_view()
