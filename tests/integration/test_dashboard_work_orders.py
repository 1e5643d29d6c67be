"""An operator's walk through an alert to the ground truth, in headless Chromium against the
real ``forewarn dashboard`` process and Kafka: see the alert, acknowledge it with a note, open a
work order from it, close the work order on the machine's page as a confirmed failure with its
mode — and the maintenance event (with the work order's identity) is on the maintenance topic
and in the machine page's maintenance log."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from forewarn.contract import Alert, MaintenanceEvent, Prediction, WorkOrder, encode
from forewarn.kafka import KafkaProducer
from forewarn.settings import TopicSettings
from forewarn.topics import Topics
from tests.dashboard.browser import add_user, dashboard_in_chromium, needs_chromium, pick_option, save, sign_in
from tests.scoring.procs import read_committed
from tests.stacks import RunningStack

pytestmark = [pytest.mark.integration, needs_chromium]

MACHINE = "site-a/pump-0042"
PASSWORD = "otto's long password"
NOTE = "vibration confirmed on site, bearing noise"


def _alert_and_prediction(stack: RunningStack, topics: Topics) -> Alert:
    now = time.time_ns() // 1_000_000
    alert = Alert(v=1, alert_id=f"{MACHINE}:1", machine_id=MACHINE, state="open", severity="critical",
                  rule="p_fail_above", opened_at=now - 60_000, ts=now - 60_000, p_fail=0.91, asset_type="pump",
                  model="pump", model_version="v1")
    prediction = Prediction(v=1, machine_id=MACHINE, asset_type="pump", ts=now - 60_000, seq=100, model="pump",
                            model_version="v1", scored_at=now - 59_000, p_fail=0.91, rul=12.0)
    with KafkaProducer(stack.kafka_settings) as producer:
        producer.produce(topics.predictions, encode(prediction), key=MACHINE)
        producer.produce(topics.alerts, encode(alert), key=MACHINE)
        assert producer.flush(30) == 0
    return alert


def test_an_operator_walks_from_the_alert_to_the_maintenance_log(
        stack: RunningStack, tmp_path: Path, fresh_topics: Callable[..., tuple[TopicSettings, Topics]]) -> None:
    from playwright.sync_api import expect

    settings, topics = fresh_topics(partitions=1)
    users_file = tmp_path / "dashboard-users.toml"
    add_user(users_file, "otto", "operator", "Otto Operator", PASSWORD)
    alert = _alert_and_prediction(stack, topics)
    option = f"{MACHINE} · critical · p_fail_above"
    with dashboard_in_chromium(stack, settings, tmp_path, ["--users-file", str(users_file)]) as (url, browser):
        # See the alert; acknowledge it with a note.
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(f"{url}/alerts", wait_until="domcontentloaded")
        sign_in(page, "otto", PASSWORD)
        expect(page.get_by_text("Otto Operator · operator")).to_be_visible(timeout=30_000)
        table = page.locator('[data-testid="stDataFrame"]', has_text=MACHINE)
        expect(table).to_be_visible(timeout=60_000)
        pick_option(page, "Alerts", option)
        page.get_by_label("Note (optional)").fill(NOTE)
        page.get_by_role("button", name="Acknowledge", exact=True).click()
        expect(page.get_by_text("Acknowledged 1 alert as Otto Operator")).to_be_visible(timeout=30_000)
        expect(page.locator('[data-testid="stDataFrame"]')).to_contain_text(NOTE, timeout=30_000)

        # Open a work order from the (now acknowledged) alert.
        pick_option(page, "Alerts", option)
        page.get_by_text("Open a work order", exact=True).click()
        title = page.get_by_label("What is to be done")
        title.fill("replace the drive-end bearing")
        title.press("Tab")
        page.get_by_role("button", name="Open work order", exact=True).click()
        expect(page.get_by_text(f"Opened 1 work order ({MACHINE})")).to_be_visible(timeout=30_000)
        save(page, "work-order-opened", tmp_path)
        page.close()

        # On the machine's page: close it as a confirmed failure with its mode.
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(f"{url}/machine?machine={MACHINE}", wait_until="domcontentloaded")
        sign_in(page, "otto", PASSWORD)
        expect(page.get_by_text("Close a work order (1 open)")).to_be_visible(timeout=60_000)
        page.get_by_text("Confirmed failure", exact=True).click()
        mode = page.get_by_label("Failure mode")
        expect(mode).to_be_enabled(timeout=30_000)
        mode.fill("bearing")
        mode.press("Tab")
        page.get_by_role("button", name="Close work order", exact=True).click()
        expect(page.get_by_text("closed as confirmed failure; its maintenance event is on Kafka")).to_be_visible(
            timeout=30_000)
        log = page.locator('[data-testid="stDataFrame"]', has_text="wo:")
        expect(log).to_be_visible(timeout=60_000)
        expect(log).to_contain_text("bearing")
        expect(log).to_contain_text("confirmed_failure")
        shot = save(page, "work-order-closed", tmp_path)
    assert shot.stat().st_size > 20_000

    decoder = msgspec.json.Decoder(MaintenanceEvent)
    (event,) = [decoder.decode(v) for v in read_committed(stack.kafka_settings, topics.maintenance, expect=1,
                                                           timeout_s=30, settle_s=1.0)]
    orders = [msgspec.json.decode(v, type=WorkOrder)
              for v in read_committed(stack.kafka_settings, topics.workorders, expect=2, timeout_s=30, settle_s=1.0)]
    assert [o.status for o in orders] == ["open", "closed"]
    closed = orders[-1]
    assert (closed.alert_id, closed.machine_id, closed.closed_by, closed.title) == (
        alert.alert_id, MACHINE, "Otto Operator", "replace the drive-end bearing")
    assert (event.machine_id, event.event, event.failure_mode, event.event_id, event.outcome) == (
        MACHINE, "failure", "bearing", f"wo:{closed.work_order_id}", "confirmed_failure")
    assert event.ts == closed.ts >= alert.ts
    acknowledged = [a for a in (msgspec.json.decode(v, type=Alert) for v in read_committed(
        stack.kafka_settings, topics.alerts, timeout_s=30, settle_s=1.0)) if a.state == "acknowledged"]
    assert [(a.acknowledged_by, a.note) for a in acknowledged] == [("Otto Operator", NOTE)]
