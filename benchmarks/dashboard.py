"""Dashboard page render time with 10,000 machines and 1,000,000 stored predictions.

Fills an in-memory store with the synthetic fleet, then renders every page with Streamlit's
AppTest (the whole script run: queries, DataFrames, Altair specs, element serialisation; not
the browser's drawing) a few times. Target: <= 1.5 s per page.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamlit import config
from streamlit.testing.v1 import AppTest

from benchmarks._common import write_result
from dashboard.runtime import Runtime, install
from dashboard.settings import DashboardSettings
from dashboard.store import Store
from dashboard.synthetic import populate
from forewarn.testing import FakeProducer, InMemoryKafka
from forewarn.topics import Topics

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
PAGES = ("fleet", "machine", "alerts", "models", "pipeline")
MACHINES = int(os.environ.get("BENCH_MACHINES", "10000"))
# The synthetic fleet drops the hour after each failure (the repair): ask for a little more.
PREDICTIONS = int(os.environ.get("BENCH_PREDICTIONS", "1030000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
TARGET_S = 1.5


def main() -> None:
    started = time.perf_counter()
    store = Store()
    counts = populate(store, machines=MACHINES, predictions=PREDICTIONS)
    fill_s = time.perf_counter() - started
    settings = DashboardSettings(dashboard={"consume": False, "refresh_s": 300})
    install(Runtime(settings, store, Topics.from_settings(settings.topics), FakeProducer(InMemoryKafka())))
    # No users file: the dashboard serves only a loopback address, as `forewarn dashboard` runs it.
    config.set_option("server.address", "127.0.0.1")
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()  # imports and the first script compilation are not a page's cost
    pages: dict[str, dict[str, float]] = {}
    for page in PAGES:
        if page != "fleet":
            at.switch_page(f"views/{page}.py")
        times: list[float] = []
        for _ in range(RUNS):
            t = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t)
            if at.exception:
                raise SystemExit(f"{page}: {at.exception[0].value}")
        pages[page] = {"first_s": round(times[0], 3), "median_s": round(statistics.median(times), 3),
                       "max_s": round(max(times), 3)}
    write_result("dashboard", {
        "machines": counts["machines"], "predictions": counts["predictions"], "telemetry_rows": counts["telemetry"],
        "alert_events": counts["alert_events"], "fill_s": round(fill_s, 1), "runs_per_page": RUNS,
        "target_s": TARGET_S, "pages": pages,
        "all_within_target": all(p["max_s"] <= TARGET_S for p in pages.values()),
        "load_avg_1m": os.getloadavg()[0],
    })


if __name__ == "__main__":
    main()
