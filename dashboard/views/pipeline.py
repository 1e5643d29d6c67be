"""Pipeline: throughput, consumer lag per group, dead-letter rate by reason, end-to-end
latency percentiles, and the readings scorers did not score, by reason."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, queries, ui

ui.current_user()  # the login gate holds on every page, not only through app.py
st.title("Pipeline")


@st.fragment(run_every=ui.refresh_every())
def pipeline_view() -> None:
    store = ui.runtime().store
    flow = queries.throughput(store)
    lag = queries.consumer_lag(store)
    dlq = queries.dlq_by_reason(store)
    latency = queries.latency_percentiles(store)
    outcomes = queries.not_scored(store)
    if flow.empty and lag.empty and dlq.empty and outcomes.empty:
        ui.empty_state("No records have reached the dashboard yet.")
        return

    recent = flow[flow["bucket"] >= store.now_ms() - 10_000] if not flow.empty else flow
    rate = recent.groupby("role")["n"].sum() / 10 if not recent.empty else {}
    bad = float(dlq["n"].sum()) if not dlq.empty else 0.0
    total = bad + float(flow[flow["role"] == "telemetry"]["n"].sum()) if not flow.empty else bad
    m = st.columns(5)
    m[0].metric("Telemetry / s", f"{rate.get('telemetry', 0):,.0f}")
    m[1].metric("Predictions / s", f"{rate.get('predictions', 0):,.0f}")
    m[2].metric("Alert events / s", f"{rate.get('alerts', 0):,.1f}")
    m[3].metric("Dead-letter rate", f"{(bad / total * 100) if total else 0:.2f} %",
                help="rejected payloads / (accepted readings + rejected), over the last hour")
    p95 = latency["p95"].iloc[0] if not latency.empty and latency["n"].iloc[0] else None
    m[4].metric("Ingest → scored p95", ui.duration(p95) or "–")

    left, right = st.columns(2)
    with left:
        st.subheader("Throughput")
        if flow.empty:
            st.caption("No records yet.")
        else:
            st.altair_chart(charts.throughput_chart(flow), width="stretch")
            st.caption("Records per second as they reach the dashboard (a catch-up after a restart shows as a peak).")
    with right:
        st.subheader("Consumer lag")
        if lag.empty:
            st.caption("No consumer group has committed offsets on these topics yet.")
        else:
            st.altair_chart(charts.lag_chart(lag), width="stretch")
            st.dataframe(lag[["group_id", "role", "partitions", "lag", "end_offset"]], hide_index=True,
                         width="stretch", column_config={"group_id": "Group", "role": "Topic",
                                                         "partitions": "Partitions", "lag": "Lag",
                                                         "end_offset": "End offset"})

    left, right = st.columns(2)
    with left:
        st.subheader("Dead letters by reason")
        if dlq.empty:
            st.caption("No rejected payloads. ")
        else:
            st.altair_chart(charts.dlq_chart(dlq), width="stretch")
            samples = queries.dlq_samples(store)
            st.dataframe(samples.assign(received=charts.to_time(samples["received_at"]))[
                ["received", "reason", "mqtt_topic", "detail", "size"]], hide_index=True, width="stretch",
                column_config={"received": st.column_config.DatetimeColumn("Received (UTC)",
                                                                          format="HH:mm:ss")})
    with right:
        st.subheader("End-to-end latency")
        if latency.empty or not latency["n"].iloc[0]:
            st.caption("No predictions with an ingest time in the last minutes.")
        else:
            shown = latency.copy()
            for column in ("p50", "p95", "p99"):
                shown[column] = shown[column].map(ui.duration)
            st.dataframe(shown, hide_index=True, width="stretch",
                         column_config={"stage": "Stage", "n": "Predictions"})
            st.caption("Over the predictions that reached the dashboard in the last 5 minutes.")

    not_scored_view(outcomes)


def not_scored_view(outcomes: pd.DataFrame) -> None:
    """Scored against not scored, by reason and scorer role, and window resets, over the last hour."""
    st.subheader("Not scored, by reason")
    if outcomes.empty:
        st.caption("No pipeline stats yet: scoring workers and edge gateways report what they did with "
                   "the readings they consumed on the pipeline topic.")
        return
    counts = outcomes[outcomes["kind"] == "count"]
    resets = outcomes[outcomes["kind"] == "reset"]
    left, right = st.columns(2)
    with left:
        if not counts.empty:
            st.altair_chart(charts.not_scored_chart(counts), width="stretch")
        table = counts.pivot_table(index="role", columns="outcome", values="n", aggfunc="sum", fill_value=0)
        order = [o for o in (queries.SCORED, *queries.NOT_SCORED) if o in table.columns]
        table = table[order + sorted(set(table.columns) - set(order))].reset_index()
        st.dataframe(table, hide_index=True, width="stretch", column_config={"role": "Scorer"})
    with right:
        st.markdown("**Window resets**")
        if resets.empty:
            st.caption("No machine's window restarted in the last hour.")
        else:
            st.dataframe(resets[["role", "outcome", "n", "sources"]], hide_index=True, width="stretch",
                         column_config={"role": "Scorer", "outcome": "Why", "n": "Resets",
                                        "sources": "Reporting"})
    st.caption("  \n".join([f"**{queries.SCORED}**: a prediction was made from it"]
                           + [f"**{name}**: {meaning}" for name, meaning in queries.NOT_SCORED.items()]
                           + [f"**reset: {name}**: {meaning}" for name, meaning in queries.RESETS.items()]
                           + ["Readings over the last hour, as scoring workers (`scoring`) and edge gateways "
                              "(`edge`) report them."]))


pipeline_view()
