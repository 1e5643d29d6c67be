"""Small helpers shared by the pages: the runtime, the consumer status, empty states and
number formatting."""

from __future__ import annotations

import math
import time
from typing import Any, Final

import pandas as pd
import streamlit as st

from dashboard.runtime import Runtime, get_runtime

__all__ = ["duration", "empty_state", "refresh_every", "runtime", "sidebar_status"]

START_HINT: Final = (
    "Nothing has arrived yet. Start the pipeline (`forewarn demo` runs all of it) or check that the "
    "dashboard reads the right Kafka (`--bootstrap-servers`, `--topic-prefix`)."
)


def runtime() -> Runtime:
    return get_runtime()


def refresh_every() -> float:
    return float(runtime().settings.dashboard.refresh_s)


def empty_state(what: str, hint: str = START_HINT) -> None:
    st.info(f"**{what}**  \n{hint}", icon=":material/hourglass_empty:")


def duration(ms: Any) -> str:
    """Milliseconds → ``3 d 4 h``, ``5 h 12 min``, ``42 s``; blank for missing values."""
    if ms is None or (isinstance(ms, float) and math.isnan(ms)) or pd.isna(ms):
        return ""
    seconds = float(ms) / 1000
    if seconds < 1:
        return f"{float(ms):.0f} ms"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        return f"{int(hours)} h {int(minutes % 60)} min"
    return f"{int(hours // 24)} d {int(hours % 24)} h"


def sidebar_status() -> None:
    """The consumer's state and what the store holds, in the sidebar (refreshed on its own)."""
    with st.sidebar:
        st.fragment(run_every=refresh_every())(_status)()


def _status() -> None:
    rt = runtime()
    status = rt.status
    if status is None:
        st.caption("Showing the store only (the Kafka consumer is off).")
    else:
        label = {"running": ":green[●] consuming", "waiting": ":orange[●] waiting",
                 "starting": ":orange[●] starting", "failed": ":red[●] failed",
                 "stopped": ":gray[●] stopped"}.get(status.state, status.state)
        st.markdown(f"**Kafka** {label}  \n`{rt.settings.kafka.bootstrap_servers}`"
                    + (f" · prefix `{rt.settings.topics.prefix}`" if rt.settings.topics.prefix else ""))
        if status.detail:
            st.caption(status.detail)
        if status.last_batch_ms:
            ago = time.time() - status.last_batch_ms / 1000
            st.caption(f"{status.records:,} records read · last batch {ago:.0f} s ago")
        if status.skipped:
            st.caption("Skipped (undecodable or unstorable): "
                       + ", ".join(f"{n:,} {role}" for role, n in sorted(status.skipped.items())))
    counts = rt.store.counts()
    st.caption(f"Store: {counts['machines']:,} machines · {counts['predictions']:,} predictions · "
               f"{counts['alert_events']:,} alert events · {counts['telemetry']:,} sensor values")
