"""Machine: sensor trends, p_fail and RUL over time with the alert thresholds; alerts,
maintenance events and model-version changes marked on the time axis; the machine's maintenance
log and its work orders — an operator or admin opens one and closes it with an outcome, which
writes the maintenance event (the ground truth) to Kafka."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import actions, charts, queries, ui
from dashboard.errors import DashboardError
from forewarn.contract import WorkOrderOutcome

RANGES = {"6 h": 6 * 3600_000, "24 h": 24 * 3600_000, "7 d": 7 * 24 * 3600_000, "All": None}
OUTCOMES: dict[WorkOrderOutcome, str] = {"confirmed_failure": "Confirmed failure", "repaired": "Repaired",
                                          "false_alarm": "False alarm", "inspected_fine": "Inspected, fine"}

user = ui.current_user()  # the login gate holds on every page, not only through app.py
st.title("Machine")
store = ui.runtime().store
site_list = queries.sites(store)
if not site_list:
    ui.empty_state("No machines yet.")
    st.stop()

# A machine chosen on the Fleet page (or in the URL) preselects the pickers.
# Applied once per new value, so the pickers stay free to choose another machine.
wanted = st.query_params.get("machine") or st.session_state.get("machine")
if wanted and wanted != st.session_state.get("machine_applied"):
    st.session_state["machine_applied"] = wanted
    site_of_wanted = str(wanted).partition("/")[0]
    if site_of_wanted in site_list:
        st.session_state["machine_site"] = site_of_wanted
        st.session_state["machine_pick"] = wanted

c1, c2, c3 = st.columns([1, 2, 2])
site = c1.selectbox("Site", site_list, key="machine_site")
machines = queries.machine_ids(store, site)
if not machines:
    ui.empty_state("No machines at this site yet.")
    st.stop()
if st.session_state.get("machine_pick") not in machines:
    st.session_state["machine_pick"] = machines[0]
machine = str(c2.selectbox("Machine", machines, key="machine_pick"))
span = c3.segmented_control("Time range", list(RANGES), default="24 h", required=True, key="machine_range")
st.session_state["machine"] = st.session_state["machine_applied"] = machine
st.query_params["machine"] = machine


@st.fragment(run_every=ui.refresh_every())
def machine_view(machine: str, span: str) -> None:
    rt = ui.runtime()
    store = rt.store
    fleet = store.read("SELECT * FROM machines WHERE machine_id = ?", [machine])
    if fleet.empty:
        ui.empty_state(f"{machine} is not in the store (any more).")
        return
    row = fleet.iloc[0]
    # A machine with predictions but no sampled reading yet (or the reverse) has one of them NA.
    last = int(max(0 if pd.isna(row["ts"]) else row["ts"], 0 if pd.isna(row["telemetry_ts"]) else row["telemetry_ts"]))
    window = RANGES.get(span)
    # The range ends at the machine's last event time, or now when that is dated beyond belief.
    since = queries.machine_window_end(store, last) - window if window is not None else None
    predictions = queries.machine_predictions(store, machine, since)
    events = queries.machine_events(store, machine, since)
    changes = queries.version_changes(predictions)
    infos = queries.model_infos(store)
    version = str(row["model_version"]) if row["model_version"] is not None else None
    model = infos.get((str(row["asset_type"]), version or "")) or queries.latest_models(store).get(
        str(row["asset_type"]))
    open_alerts = store.scalar("SELECT count(*) FROM alerts WHERE machine_id = ? AND status <> 'resolved'",
                               [machine])

    m = st.columns(3)
    p_fail = row["p_fail"]
    m[0].metric("p(fail)", "–" if p_fail is None or p_fail != p_fail else f"{p_fail:.2f}")
    m[1].metric("RUL", "–" if row["rul"] is None or row["rul"] != row["rul"] else
                f"{row['rul']:.0f} {model.rul_unit if model else ''}")
    m[2].metric("Open alerts", int(open_alerts or 0))
    seen = charts.to_time(last).strftime("%Y-%m-%d %H:%M:%S UTC") if last else "never"
    st.caption(f"{row['asset_type']} · last seen {seen} · model {version or 'none yet'}"
               + (f" (threshold p(fail) ≥ {model.threshold:.2f})" if model else ""))

    if predictions.empty:
        ui.empty_state("No predictions for this machine in the chosen range.",
                       "Scoring workers publish one per reading once a machine has a full window.")
    else:
        threshold = model.threshold if model else queries.DEFAULT_THRESHOLD
        st.altair_chart(charts.prediction_chart(predictions, "p_fail", "p(fail)", threshold, events, changes),
                        width="stretch")
        st.altair_chart(charts.prediction_chart(predictions, "rul", f"RUL ({model.rul_unit if model else 'readings'})",
                                                model.rul_below if model else None, events, changes),
                        width="stretch")

    sensors = queries.machine_sensors(store, machine)
    if not sensors:
        ui.empty_state("No sensor readings sampled for this machine yet.",
                       f"The dashboard keeps every {rt.settings.dashboard.telemetry_sample_every}th reading.")
    else:
        picked = st.multiselect("Sensors", sensors, default=sensors[: min(4, len(sensors))],
                                key=f"sensors_{row['asset_type']}")
        telemetry = queries.machine_telemetry(store, machine, picked, since)
        if picked and not telemetry.empty:
            for chart in charts.sensor_charts(telemetry, events, changes):
                st.altair_chart(chart, width="stretch")
    if not events.empty:
        st.subheader("Events")
        st.dataframe(events.assign(time=charts.to_time(events["ts"]))[["time", "kind", "detail"]],
                     hide_index=True, width="stretch",
                     column_config={"time": st.column_config.DatetimeColumn("Time (UTC)",
                                                                           format="YYYY-MM-DD HH:mm:ss")})


machine_view(machine, str(span))


@st.fragment(run_every=ui.refresh_every())
def maintenance_and_work_orders(machine: str) -> None:
    """The log, the work orders and their controls; refreshed like the charts, so what comes
    back from Kafka (a work order just opened, its maintenance event) shows by itself."""
    rt = ui.runtime()
    st.subheader("Maintenance log")
    log = queries.maintenance_log(rt.store, machine)
    if log.empty:
        st.caption("No maintenance recorded for this machine yet.")
    else:
        st.dataframe(log.assign(time=charts.to_time(log["ts"]))[
            ["time", "event", "failure_mode", "outcome", "note", "identity"]], hide_index=True, width="stretch",
            key="maintenance_log", column_config={
                "time": st.column_config.DatetimeColumn("Time (UTC)", format="YYYY-MM-DD HH:mm:ss"),
                "event": "Event", "failure_mode": "Failure mode", "outcome": "Outcome", "note": "Note",
                "identity": "Identity"})
    st.subheader("Work orders")
    orders = queries.work_orders(rt.store, machine)
    if not orders.empty:
        table = orders.assign(opened=charts.to_time(orders["opened_at"]), closed=charts.to_time(orders["closed_at"]))
        columns = ["work_order_id", "status", "title", "opened_by", "opened", "closed_by", "closed", "outcome",
                   "failure_mode", "note"]
        st.dataframe(table[columns], hide_index=True, width="stretch", key="work_orders", column_config={
                "work_order_id": "Work order", "status": "Status", "title": "What is to be done",
                "opened_by": "Opened by", "closed_by": "Closed by", "outcome": "Outcome",
                "failure_mode": "Failure mode", "note": "Note",
                "opened": st.column_config.DatetimeColumn("Opened (UTC)", format="YYYY-MM-DD HH:mm"),
                "closed": st.column_config.DatetimeColumn("Closed (UTC)", format="YYYY-MM-DD HH:mm")})
    if not user.can(actions.ACKNOWLEDGE_ROLE):
        st.caption(f"Read only: opening and closing work orders needs the {actions.ACKNOWLEDGE_ROLE} or admin role.")
        return
    notice = st.session_state.pop("wo_notice", None)
    if notice:
        st.success(notice, icon=":material/build:")
    try:
        with st.expander("Open a work order"):
            title = st.text_input("What is to be done", key="wo_title", max_chars=actions.NOTE_MAX_CHARS)
            if st.button("Open work order", key="wo_open"):
                order = actions.open_work_order(rt, machine, user, title)
                st.session_state["wo_notice"] = f"Work order {order.work_order_id} opened; it shows once it is back " \
                                                "from Kafka."
                st.session_state.pop("wo_title", None)
                st.rerun()
        pending = orders[orders["status"] == "open"]
        if pending.empty:
            return
        with st.expander(f"Close a work order ({len(pending)} open)", expanded=True):
            labels = {str(r.work_order_id): f"{r.work_order_id} · {r.title or 'no title'} · opened by {r.opened_by}"
                      for r in pending.itertuples()}
            picked = st.selectbox("Work order", list(labels), format_func=labels.__getitem__, key="wo_pick")
            outcome: WorkOrderOutcome = st.radio("Outcome", list(OUTCOMES), format_func=OUTCOMES.__getitem__,
                                                 horizontal=True, key="wo_outcome")
            mode = st.text_input("Failure mode", key="wo_mode", disabled=outcome != "confirmed_failure",
                                 placeholder="e.g. bearing")
            note = st.text_area("Note (optional)", key="wo_note", height=80, max_chars=actions.NOTE_MAX_CHARS)
            st.caption("Closing writes a maintenance event to Kafka: the ground truth for the live accuracy and "
                       "retraining; a repair also resolves the machine's alerts opened before it.")
            if st.button("Close work order", key="wo_close", type="primary"):
                row = pending[pending["work_order_id"] == picked].iloc[0].to_dict()
                closed = actions.close_work_order(rt, row, user, outcome, mode or "", note or "")
                st.session_state["wo_notice"] = (f"Work order {closed.work_order_id} closed as "
                                                 f"{OUTCOMES[outcome].lower()}; its maintenance event is on Kafka.")
                for key in ("wo_mode", "wo_note", "wo_pick"):
                    st.session_state.pop(key, None)
                st.rerun()
    except DashboardError as error:
        st.error(error.one_line())


maintenance_and_work_orders(machine)
