"""Fleet: every machine, coloured by risk; a sortable, filterable table; counts at a glance."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, queries, ui

ui.current_user()  # the login gate holds on every page, not only through app.py
st.title("Fleet")
st.caption("Latest prediction of every machine. Click a row to open the machine.")


@st.fragment(run_every=ui.refresh_every())
def fleet_view() -> None:
    store = ui.runtime().store
    thresholds = {a: m.threshold for a, m in queries.latest_models(store).items()}
    frame = queries.fleet(store, thresholds)
    if frame.empty:
        ui.empty_state("No machines yet.")
        return
    summary = queries.fleet_summary(frame)
    cols = st.columns(6)
    cols[0].metric("Machines", f"{summary['machines']:,}")
    cols[1].metric("Sites", summary["sites"])
    cols[2].metric("Critical", f"{summary['critical']:,}")
    cols[3].metric("Warning", f"{summary['warning']:,}")
    cols[4].metric("Open alerts", f"{summary['open_alerts']:,}")
    cols[5].metric("With predictions", f"{summary['predicted']:,}")

    st.altair_chart(charts.fleet_risk_chart(frame), width="content")
    f1, f2, f3, f4, f5 = st.columns([2, 2, 2, 3, 2], vertical_alignment="bottom")
    sites = f1.multiselect("Site", sorted(frame["site"].unique()), key="fleet_sites")
    assets = f2.multiselect("Asset type", sorted(frame["asset_type"].dropna().unique()), key="fleet_assets")
    risks = f3.multiselect("Risk", charts.RISK_ORDER, key="fleet_risks")
    search = f4.text_input("Machine id contains", key="fleet_search")
    only_alerts = f5.toggle("Only with open alerts", key="fleet_only_alerts")
    shown = frame
    if sites:
        shown = shown[shown["site"].isin(sites)]
    if assets:
        shown = shown[shown["asset_type"].isin(assets)]
    if risks:
        shown = shown[shown["risk"].isin(risks)]
    if search:
        shown = shown[shown["machine_id"].str.contains(search, case=False, regex=False)]
    if only_alerts:
        shown = shown[shown["open_alerts"] > 0]
    shown = shown.sort_values(["p_fail", "machine_id"], ascending=[False, True], na_position="last")
    table = shown.assign(last_seen=charts.to_time(shown["last_seen"].where(shown["last_seen"] > 0)))[
        ["machine_id", "site", "asset_type", "risk", "p_fail", "rul", "last_seen", "open_alerts", "model_version"]
    ].reset_index(drop=True)
    st.caption(f"{len(table):,} of {len(frame):,} machines")
    event = st.dataframe(
        table, key="fleet_table", hide_index=True, width="stretch", height=520,
        on_select="rerun", selection_mode="single-row",
        column_config={
            "machine_id": st.column_config.TextColumn("Machine"),
            "site": "Site", "asset_type": "Asset type", "risk": "Risk",
            "p_fail": st.column_config.ProgressColumn("p(fail)", min_value=0.0, max_value=1.0, format="%.2f"),
            "rul": st.column_config.NumberColumn("RUL", format="%.0f", help="remaining useful life, model unit"),
            "last_seen": st.column_config.DatetimeColumn("Last seen (UTC)", format="YYYY-MM-DD HH:mm:ss"),
            "open_alerts": st.column_config.NumberColumn("Open alerts"),
            "model_version": "Model version",
        })
    rows = event.selection.rows if event is not None else []
    if rows:
        machine = str(table.iloc[rows[0]]["machine_id"])
        st.session_state["machine"] = machine
        st.switch_page("views/machine.py", query_params={"machine": machine})



fleet_view()
