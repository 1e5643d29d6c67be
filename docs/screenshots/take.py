"""Regenerate the README screenshots: a synthetic fleet in a DuckDB file, the real
``forewarn dashboard --no-consume`` on it, and Debian's headless Chromium.

    .venv/bin/python docs/screenshots/take.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

from dashboard.store import Store
from dashboard.synthetic import populate

HERE = Path(__file__).resolve().parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = {"fleet": "", "machine": "machine", "alerts": "alerts", "models": "models", "pipeline": "pipeline"}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "store.duckdb"
        store = Store(db)
        populate(store, machines=500, predictions=60_000, now_ms=time.time_ns() // 1_000_000)
        store.close()
        port = 8599
        child = subprocess.Popen([sys.executable, "-m", "forewarn.cli", "dashboard", "--no-consume", "--store",
                                  str(db), "--port", str(port), "--refresh", "300"], env=dict(os.environ))
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).close()  # noqa: S310 - our local http URL
                    break
                except OSError:
                    time.sleep(0.3)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1440, "height": 1000})
                for name, path in PAGES.items():
                    page.goto(f"{url}/{path}", wait_until="domcontentloaded")
                    page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=60_000)
                    page.wait_for_timeout(2500)
                    page.screenshot(path=str(HERE / f"{name}.png"), full_page=True)
                browser.close()
        finally:
            child.terminate()
            child.wait(20)


if __name__ == "__main__":
    main()
