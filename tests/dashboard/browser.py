"""What the Chromium tests of the dashboard share: Debian's Chromium and its flags, the real
``forewarn dashboard`` process (started on a free port, waited for by its health endpoint,
stopped by SIGTERM), users made by ``forewarn dashboard users add``, signing in, picking an
option of a multiselect, and screenshots (under the test's tmp dir, and $FOREWARN_SCREENSHOT_DIR
when set)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from forewarn.settings import TopicSettings
from tests.stacks import RunningStack, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                                  "(apt-get install chromium)")


@contextmanager
def running_dashboard(stack: RunningStack, topics: TopicSettings, tmp_path: Path,
                      extra: Sequence[str] = ()) -> Iterator[str]:
    """``forewarn dashboard`` on 127.0.0.1 against the stack's Kafka; yields its URL."""
    port = free_port()
    log_path = tmp_path / "dashboard.log"
    log = log_path.open("w")
    env = {**os.environ, "FOREWARN_LOG_LEVEL": "info"}
    process = subprocess.Popen(
        [sys.executable, "-m", "forewarn.cli", "dashboard", "--port", str(port), "--address", "127.0.0.1",
         "--bootstrap-servers", stack.bootstrap, "--topic-prefix", topics.prefix, "--refresh", "1",
         "--group-id", f"dash-{topics.prefix}", "--telemetry-sample-every", "1", *extra],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.close()
            pytest.fail("the dashboard did not come up:\n" + log_path.read_text()[-3000:])
        time.sleep(0.3)
    try:
        yield url
    finally:
        process.terminate()
        try:
            assert process.wait(20) in (0, -15)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()


def save(page: object, name: str, tmp_path: Path) -> Path:
    """A full-page screenshot of ``page`` (a Playwright page)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    extra = os.environ.get("FOREWARN_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path


@contextmanager
def dashboard_in_chromium(stack: RunningStack, topics: TopicSettings, tmp_path: Path,
                          extra: Sequence[str] = ()) -> Iterator[tuple[str, Any]]:
    """:func:`running_dashboard` and a headless Chromium (a Playwright browser): ``(url, browser)``."""
    from playwright.sync_api import sync_playwright

    with running_dashboard(stack, topics, tmp_path, extra) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield url, browser
        finally:
            browser.close()


def add_user(path: Path, name: str, role: str, display_name: str, password: str) -> None:
    """``forewarn dashboard users add`` with the password on stdin (never argv)."""
    subprocess.run([sys.executable, "-m", "forewarn.cli", "dashboard", "users", "--users-file", str(path), "add",
                    name, "--role", role, "--display-name", display_name, "--password-stdin"],
                   input=f"{password}\n", text=True, check=True, capture_output=True, timeout=60)


def sign_in(page: Any, name: str, password: str) -> None:
    page.get_by_role("textbox", name="User name").fill(name)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def pick_option(page: Any, picker: str, option: str) -> None:
    """Choose ``option`` in the multiselect labelled ``picker``, trying again when a rerun of the
    page (a refresh on a busy box) closed the open list."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.locator('[data-testid="stMultiSelect"]', has_text=picker)
    choice = page.get_by_role("option", name=option)
    for attempt in range(3):
        box.click()
        try:
            choice.click(timeout=10_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
    page.keyboard.press("Escape")
