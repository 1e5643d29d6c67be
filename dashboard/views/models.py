"""Models: versions per asset type with their training metrics; live accuracy (predictions
joined with the failures that happened later); drift of each sensor against the training
statistics in the bundle (population stability index)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import accuracy, charts, queries, ui
from dashboard.store import Store

ui.current_user()  # the login gate holds on every page, not only through app.py
st.title("Models")


@st.cache_data(ttl=30, show_spinner="Joining predictions with failures…", max_entries=4)
def _live_accuracy(_store: Store, data_version: tuple[int, ...]) -> pd.DataFrame:
    # The join over every stored prediction is the page's heaviest query: computed at most
    # once per 30 s and per change of the store's contents, shared by every session.
    del data_version
    return accuracy.live_accuracy(_store)


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix] = float(value)


@st.fragment(run_every=max(10.0, ui.refresh_every()))
def models_view() -> None:
    store = ui.runtime().store
    versions = queries.model_versions(store)
    if versions.empty:
        ui.empty_state("No models yet.", "Train and publish one (`forewarn train`, `forewarn model publish`): "
                       "bundles on the models topic and versions seen in predictions show up here.")
        return
    infos = queries.model_infos(store)
    st.subheader("Versions")
    metrics: list[dict[str, float]] = []
    for row in versions.itertuples():
        found: dict[str, float] = {}
        info = infos.get((str(row.asset_type), str(row.version)))
        if info is not None:
            _flatten("", info.meta.get("metrics", {}), found)
        metrics.append(found)
    table = pd.concat([versions.reset_index(drop=True), pd.DataFrame(metrics)], axis=1)
    table["first_seen"] = charts.to_time(table["first_ts"])
    table["last_seen"] = charts.to_time(table["last_ts"])
    metric_columns = [c for c in table.columns if c not in versions.columns and c not in ("first_seen", "last_seen")]
    st.dataframe(table[["asset_type", "version", "serving_machines", "predictions", "first_seen", "last_seen",
                        *metric_columns]], hide_index=True, width="stretch", column_config={
        "asset_type": "Asset type", "version": "Version", "serving_machines": "Serving machines",
        "predictions": "Predictions",
        "first_seen": st.column_config.DatetimeColumn("First prediction (UTC)", format="YYYY-MM-DD HH:mm"),
        "last_seen": st.column_config.DatetimeColumn("Last prediction (UTC)", format="YYYY-MM-DD HH:mm"),
        **{c: st.column_config.NumberColumn(f"train {c}", format="%.3f") for c in metric_columns},
    })
    if not infos:
        st.caption("No bundle seen on the models topic yet: training metrics and drift need one.")

    st.subheader("Live accuracy")
    st.caption("A prediction counts as positive when its machine failed within the model's horizon after it, "
               "negative when it did not and the horizon has passed; others are not yet known. Precision and "
               "recall use the model's alert threshold; RUL error is measured on runs that ended in a failure.")
    counts = store.counts()
    live = _live_accuracy(store, (id(store), counts["predictions"], counts["maintenance"], counts["alert_events"],
                                  counts["models"]))
    if live.empty or int(live["labelled"].sum()) == 0:
        ui.empty_state("No outcome known yet.", "Accuracy needs failures (maintenance events) or enough later "
                       "readings after each prediction.")
    else:
        shown = live.assign(lead=live["lead_ms_median"].map(ui.duration))
        st.dataframe(shown[["asset_type", "model_version", "predictions", "labelled", "precision", "recall",
                            "failures", "failures_warned", "lead", "rul_mae", "rul_rmse", "rul_n"]],
                     hide_index=True, width="stretch", column_config={
            "asset_type": "Asset type", "model_version": "Version", "predictions": "Predictions",
            "labelled": "With outcome",
            "precision": st.column_config.NumberColumn("Precision", format="%.2f"),
            "recall": st.column_config.NumberColumn("Recall", format="%.2f"),
            "failures": "Failures", "failures_warned": "Warned failures", "lead": "Median lead time",
            "rul_mae": st.column_config.NumberColumn("RUL MAE", format="%.1f"),
            "rul_rmse": st.column_config.NumberColumn("RUL RMSE", format="%.1f"),
            "rul_n": "RUL points",
        })

    st.subheader("Drift")
    assets = sorted({a for a, _ in infos})
    if not assets:
        st.caption("Drift needs the training statistics of a bundle.")
        return
    asset = st.segmented_control("Asset type", assets, default=assets[0], required=True, key="drift_asset")
    window = ui.runtime().settings.dashboard.drift_window
    frame = accuracy.drift(store, str(asset), window)
    if frame.empty:
        ui.empty_state(f"No sampled readings of {asset} machines yet.")
        return
    latest = queries.latest_models(store)[str(asset)]
    st.caption(f"Latest {window:,} sampled values per sensor against model {latest.version}. "
               f"PSI < {accuracy.PSI_MODERATE} stable, < {accuracy.PSI_SIGNIFICANT} moderate, above: significant.")
    left, right = st.columns([3, 2])
    left.altair_chart(charts.psi_chart(frame), width="stretch")
    right.dataframe(frame, hide_index=True, width="stretch", column_config={
        "psi": st.column_config.NumberColumn("PSI", format="%.3f"),
        "train_mean": st.column_config.NumberColumn("Train mean", format="%.2f"),
        "live_mean": st.column_config.NumberColumn("Live mean", format="%.2f")})


models_view()
