"""The dashboard login end to end: users made by ``forewarn dashboard users add`` (password on
stdin), the real ``forewarn dashboard`` process with that users file against the real Kafka,
opened in headless Chromium. A wrong password is refused; a viewer reads the alerts without an
acknowledge control; an operator acknowledges an open alert with a note, the Alerts page shows
the operator's name and the note, and so does the ``acknowledged`` event on the alerts topic."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from forewarn.contract import Alert, encode
from forewarn.kafka import KafkaConsumer, KafkaProducer
from forewarn.settings import TopicSettings
from forewarn.topics import Topics
from tests.dashboard.browser import add_user, dashboard_in_chromium, needs_chromium, pick_option, save, sign_in
from tests.stacks import RunningStack

pytestmark = [pytest.mark.integration, needs_chromium]

MACHINE = "site-a/pump-0007"
USERS = {"vera": ("viewer", "Vera Viewer", "vera's long password"),
         "olga": ("operator", "Olga Operator", "olga's long password")}
NOTE = "bearing temperature checked, grease ordered"


def _add_users(path: Path) -> None:
    for name, (role, display, password) in USERS.items():
        add_user(path, name, role, display, password)


def _open_alert(stack: RunningStack, topics: Topics) -> Alert:
    now = time.time_ns() // 1_000_000
    alert = Alert(v=1, alert_id=f"{MACHINE}:1", machine_id=MACHINE, state="open", severity="critical",
                  rule="p_fail_above", opened_at=now - 60_000, ts=now - 60_000, p_fail=0.9, asset_type="pump")
    with KafkaProducer(stack.kafka_settings) as producer:
        producer.produce(topics.alerts, encode(alert), key=MACHINE)
        assert producer.flush(30) == 0
    return alert


def _acknowledgements(stack: RunningStack, topics: Topics, timeout_s: float = 30.0) -> list[Alert]:
    consumer = KafkaConsumer(stack.kafka_settings, f"g-{uuid.uuid4().hex}", [topics.alerts])
    found: list[Alert] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not found and time.monotonic() < deadline:
            for message in consumer.consume(100, 1.0):
                event = msgspec.json.decode(message.value() or b"", type=Alert)
                if event.state == "acknowledged":
                    found.append(event)
    finally:
        consumer.close()
    return found


def test_login_roles_and_an_operators_acknowledgement(stack: RunningStack, tmp_path: Path, fresh_topics: Callable[
        ..., tuple[TopicSettings, Topics]]) -> None:
    from playwright.sync_api import expect

    settings, topics = fresh_topics(partitions=1)
    users_file = tmp_path / "dashboard-users.toml"
    _add_users(users_file)
    alert = _open_alert(stack, topics)
    with dashboard_in_chromium(stack, settings, tmp_path, ["--users-file", str(users_file)]) as (url, browser):
        # A wrong password: refused, nothing of the dashboard shows.
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/alerts", wait_until="domcontentloaded")
        sign_in(page, "olga", "not olga's password")
        expect(page.get_by_text("wrong user name or password")).to_be_visible(timeout=30_000)
        expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(0)
        page.close()

        # A viewer: the alerts, read only.
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/alerts", wait_until="domcontentloaded")
        sign_in(page, "vera", USERS["vera"][2])
        expect(page.get_by_text("Vera Viewer · viewer")).to_be_visible(timeout=30_000)
        expect(page.locator('[data-testid="stDataFrame"]', has_text=MACHINE)).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Read only: you are signed in as viewer")).to_be_visible()
        expect(page.get_by_role("button", name="Acknowledge", exact=True)).to_have_count(0)
        save(page, "login-viewer", tmp_path)
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=30_000)
        page.close()

        # An operator acknowledges with a note; the table shows who and the note.
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/alerts", wait_until="domcontentloaded")
        sign_in(page, "olga", USERS["olga"][2])
        expect(page.get_by_text("Olga Operator · operator")).to_be_visible(timeout=30_000)
        expect(page.locator('[data-testid="stMultiSelect"]', has_text="Alerts")).to_be_visible(timeout=60_000)
        expect(page.locator('[data-testid="stDataFrame"]', has_text=MACHINE)).to_be_visible(timeout=60_000)
        pick_option(page, "Alerts", f"{MACHINE} · critical · p_fail_above")
        page.get_by_label("Note (optional)").fill(NOTE)
        page.get_by_role("button", name="Acknowledge", exact=True).click()
        expect(page.get_by_text("Acknowledged 1 alert as Olga Operator")).to_be_visible(timeout=30_000)
        table = page.locator('[data-testid="stDataFrame"]')
        expect(table).to_contain_text("Olga Operator", timeout=30_000)
        expect(table).to_contain_text(NOTE)
        shot = save(page, "login-operator", tmp_path)
    assert shot.stat().st_size > 20_000

    # The event on Kafka names the operator, is dated when sent, and carries the note; the viewer sent none.
    acknowledged = _acknowledgements(stack, topics)
    assert [(a.alert_id, a.acknowledged_by, a.note) for a in acknowledged] == [
        (alert.alert_id, "Olga Operator", NOTE)]
    assert acknowledged[0].ts > alert.ts
