"""Altair charts of the pages. Every function takes plain DataFrames (times in epoch ms) and
returns a chart; none touches the store or Streamlit."""

from __future__ import annotations

from typing import Any, Final

import altair as alt
import pandas as pd

__all__ = [
    "RISK_COLORS",
    "alerts_chart",
    "dlq_chart",
    "fleet_risk_chart",
    "lag_chart",
    "not_scored_chart",
    "prediction_chart",
    "psi_chart",
    "sensor_charts",
    "throughput_chart",
    "to_time",
]

# Altair's fluent methods are typed as returning Any; charts are passed straight to Streamlit.
Chart = Any

RISK_ORDER: Final = ["critical", "warning", "ok", "no prediction"]
RISK_COLORS: Final = ["#d62728", "#ff9f1c", "#2ca02c", "#b0b0b0"]
EVENT_COLORS: Final = {"failure": "#d62728", "repair": "#2ca02c", "inspection": "#7f7f7f",
                       "alert open": "#ff9f1c", "alert resolved": "#1f77b4"}


def to_time(ms: Any) -> Any:
    """Epoch milliseconds (scalar or Series) → UTC timestamps."""
    return pd.to_datetime(ms, unit="ms", utc=True)


def fleet_risk_chart(fleet: pd.DataFrame) -> Chart:
    """Machines per site and asset type, stacked by risk band."""
    counts = fleet.groupby(["site", "asset_type", "risk"], as_index=False).size()
    return alt.Chart(counts).mark_bar().encode(
        y=alt.Y("site:N", title=None),
        x=alt.X("sum(size):Q", title="machines"),
        color=alt.Color("risk:N", scale=alt.Scale(domain=RISK_ORDER, range=RISK_COLORS), title="risk"),
        order=alt.Order("risk_rank:Q"),
        row=alt.Row("asset_type:N", title=None),
        tooltip=["site", "asset_type", "risk", alt.Tooltip("size:Q", title="machines")],
    ).transform_calculate(
        risk_rank="indexof(" + str(RISK_ORDER) + ", datum.risk)",
    ).properties(height=alt.Step(22), width=900).configure_legend(orient="bottom")


def _event_rules(events: pd.DataFrame, changes: pd.DataFrame) -> list[alt.Chart]:
    layers: list[alt.Chart] = []
    if not events.empty:
        data = events.assign(time=to_time(events["ts"]))
        kinds = [k for k in EVENT_COLORS if k in set(data["kind"])]
        layers.append(alt.Chart(data).mark_rule(strokeWidth=2).encode(
            x="time:T",
            color=alt.Color("kind:N", scale=alt.Scale(domain=kinds, range=[EVENT_COLORS[k] for k in kinds]),
                            title="event"),
            tooltip=[alt.Tooltip("time:T", format="%Y-%m-%d %H:%M:%S"), "kind", "detail"]))
    if len(changes) > 1:
        data = changes.iloc[1:].assign(time=to_time(changes["ts"].iloc[1:]))
        layers.append(alt.Chart(data).mark_rule(strokeDash=[4, 3], color="#6a3d9a").encode(
            x="time:T", tooltip=[alt.Tooltip("time:T", format="%Y-%m-%d %H:%M:%S"), "model_version"]))
        layers.append(alt.Chart(data).mark_text(align="left", dx=3, dy=-4, color="#6a3d9a", fontSize=10).encode(
            x="time:T", y=alt.value(8), text="model_version"))
    return layers


def prediction_chart(predictions: pd.DataFrame, field: str, title: str, threshold: float | None,
                     events: pd.DataFrame, changes: pd.DataFrame, height: int = 220) -> Chart:
    """One prediction head over time with its alert threshold, events and model changes."""
    data = predictions.assign(time=to_time(predictions["ts"]))[["time", field, "model_version"]]
    scale = alt.Scale(domain=[0, 1]) if field == "p_fail" else alt.Scale(zero=True)
    line = alt.Chart(data).mark_line(color="#1f77b4", interpolate="monotone").encode(
        x=alt.X("time:T", title=None), y=alt.Y(f"{field}:Q", title=title, scale=scale),
        tooltip=[alt.Tooltip("time:T", format="%Y-%m-%d %H:%M:%S"), alt.Tooltip(f"{field}:Q", format=".3f"),
                 "model_version"])
    layers: list[Any] = [line]
    if threshold is not None:
        layers.append(alt.Chart(pd.DataFrame({"threshold": [threshold]})).mark_rule(
            color="#d62728", strokeDash=[6, 4]).encode(y="threshold:Q", tooltip=["threshold:Q"]))
    layers.extend(_event_rules(events, changes))
    return alt.layer(*layers).properties(height=height)


def sensor_charts(telemetry: pd.DataFrame, events: pd.DataFrame, changes: pd.DataFrame) -> list[Chart]:
    """One small chart per sensor (each in its own unit), events marked on the time axis."""
    charts: list[Chart] = []
    for sensor, part in telemetry.groupby("sensor", sort=True):
        data = part.assign(time=to_time(part["ts"]))[["time", "value"]]
        line = alt.Chart(data).mark_line(color="#4c78a8").encode(
            x=alt.X("time:T", title=None), y=alt.Y("value:Q", title=str(sensor), scale=alt.Scale(zero=False)),
            tooltip=[alt.Tooltip("time:T", format="%Y-%m-%d %H:%M:%S"), alt.Tooltip("value:Q", format=".3f")])
        charts.append(alt.layer(line, *_event_rules(events, changes)).properties(height=130))
    return charts


def psi_chart(drift: pd.DataFrame) -> Chart:
    return alt.Chart(drift).mark_bar().encode(
        y=alt.Y("sensor:N", sort="-x", title=None), x=alt.X("psi:Q", title="PSI"),
        color=alt.Color("band:N", scale=alt.Scale(domain=["stable", "moderate", "significant"],
                                                  range=["#2ca02c", "#ff9f1c", "#d62728"]), title="drift"),
        tooltip=["sensor", alt.Tooltip("psi:Q", format=".3f"), "band", "n",
                 alt.Tooltip("train_mean:Q", format=".3f"), alt.Tooltip("live_mean:Q", format=".3f")],
    ).properties(height=alt.Step(22))


def throughput_chart(frame: pd.DataFrame) -> Chart:
    data = frame.assign(time=to_time(frame["bucket"]))
    return alt.Chart(data).mark_line(interpolate="step-after").encode(
        x=alt.X("time:T", title=None), y=alt.Y("n:Q", title="records / s"), color=alt.Color("role:N", title="topic"),
        tooltip=[alt.Tooltip("time:T", format="%H:%M:%S"), "role", "n"]).properties(height=220)


def dlq_chart(frame: pd.DataFrame) -> Chart:
    data = frame.assign(time=to_time(frame["bucket"]))
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("time:T", title=None), y=alt.Y("sum(n):Q", title="rejected / min"),
        color=alt.Color("reason:N", title="reason"),
        tooltip=[alt.Tooltip("time:T", format="%H:%M"), "reason", "n"]).properties(height=200)


def not_scored_chart(frame: pd.DataFrame) -> Chart:
    """Readings per scorer role, stacked by outcome (``scored`` or why not)."""
    return alt.Chart(frame).mark_bar().encode(
        y=alt.Y("role:N", title=None), x=alt.X("sum(n):Q", title="readings, last hour"),
        color=alt.Color("outcome:N", title="outcome"),
        tooltip=["role", "outcome", alt.Tooltip("sum(n):Q", title="readings")]).properties(height=alt.Step(28))


def lag_chart(frame: pd.DataFrame) -> Chart:
    return alt.Chart(frame).mark_bar().encode(
        y=alt.Y("label:N", title=None, sort="-x"), x=alt.X("lag:Q", title="records behind"),
        color=alt.Color("group_id:N", title="group"),
        tooltip=["group_id", "topic", "lag", "partitions"]).transform_calculate(
        label="datum.group_id + ' · ' + datum.role").properties(height=alt.Step(24))


def alerts_chart(alerts: pd.DataFrame) -> Chart:
    """Alerts opened over time, stacked by severity."""
    data = alerts.assign(time=to_time(alerts["opened_at"]))[["time", "severity", "status"]]
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("yearmonthdatehours(time):T", title="opened (hour)"),
        y=alt.Y("count():Q", title="alerts"),
        color=alt.Color("severity:N", scale=alt.Scale(domain=["critical", "warning", "info"],
                                                      range=["#d62728", "#ff9f1c", "#1f77b4"])),
        tooltip=[alt.Tooltip("yearmonthdatehours(time):T", title="hour"), "severity", "count()"],
    ).properties(height=160)
