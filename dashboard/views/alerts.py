"""Alerts: open, acknowledged and resolved alerts with severity and duration, and who
acknowledged them, when, with what note; an operator or admin acknowledges alerts from the page
(an ``acknowledged`` event on the alerts topic, naming the signed-in user), a viewer reads only."""

from __future__ import annotations

import streamlit as st

from dashboard import actions, charts, queries, ui
from dashboard.errors import DashboardError

STATUSES = ["open", "acknowledged", "resolved"]
SEVERITIES = ["critical", "warning", "info"]

user = ui.current_user()  # the login gate holds on every page, not only through app.py
st.title("Alerts")
store = ui.runtime().store

c1, c2, c3, c4 = st.columns([2, 2, 1, 2])
statuses = c1.multiselect("Status", STATUSES, default=["open", "acknowledged"], key="alert_status")
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

    frame = queries.alert_list(rt.store, statuses, severities, None if site == "all" else site, machine or None)
    if frame.empty:
        st.info("No alert matches these filters.")
        return
    table = frame.assign(
        opened=charts.to_time(frame["opened_at"]),
        resolved=charts.to_time(frame["resolved_at"]),
        acknowledged=charts.to_time(frame["acknowledged_at"]),
        duration=frame["duration_ms"].map(ui.duration),
    )[["machine_id", "severity", "status", "acknowledged_by", "note", "acknowledged", "rule", "opened", "duration",
       "resolved", "p_fail", "rul", "model_version", "message"]]
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
        "note": "Note", "message": "Message",
    })

    if not user.can(actions.ACKNOWLEDGE_ROLE):
        st.caption(f"Read only: you are signed in as {user.role}; acknowledging alerts needs the "
                   f"{actions.ACKNOWLEDGE_ROLE} or admin role.")
        return

    pending = frame[frame["status"] == "open"]
    with st.expander(f"Acknowledge alerts ({len(pending)} open in this view)", expanded=not pending.empty):
        if pending.empty:
            st.caption("Nothing to acknowledge here.")
            return
        labels = {str(r.alert_id): f"{r.machine_id} · {r.severity} · {r.rule}" for r in pending.itertuples()}
        chosen = st.multiselect("Alerts", list(labels), format_func=lambda a: labels[a], key="ack_alerts")
        note = st.text_area("Note (optional)", key="ack_note", max_chars=actions.NOTE_MAX_CHARS, height=80,
                            placeholder="what you found or did")
        st.caption(f"Recorded as **{user.label}**, dated now.")
        if st.button("Acknowledge", key="ack_button", type="primary", disabled=not chosen):
            rows = [r for r in pending.to_dict("records") if str(r["alert_id"]) in chosen]
            try:
                sent = actions.acknowledge(rt, rows, user, note)
            except DashboardError as error:
                st.error(error.one_line())
                return
            st.session_state["ack_notice"] = (f"Acknowledged {sent} alert{'s' if sent != 1 else ''} as "
                                              f"{user.label}; the table shows it once it is back from Kafka.")
            st.session_state.pop("ack_alerts", None)
            st.session_state.pop("ack_note", None)
            st.rerun()


alerts_view()
