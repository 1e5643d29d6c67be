"""Work orders from the dashboard: opened from an alert or a machine page, closed with an
outcome, which writes the maintenance event (with its identity) to the maintenance topic before
the closed state; the machine page shows its maintenance log."""

from __future__ import annotations

import getpass
from collections.abc import Callable

import msgspec
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import actions, queries
from dashboard.auth import Principal
from dashboard.errors import DashboardError
from dashboard.ingest import Ingest
from dashboard.runtime import Runtime
from dashboard.synthetic import populate
from forewarn.contract import Decoder, MaintenanceEvent, WorkOrder, work_order_maintenance
from tests.dashboard.conftest import FakeRuntime, no_exceptions, open_page

AppFactory = Callable[[Runtime], AppTest]
LOCAL = f"local:{getpass.getuser()}"


def back_from_kafka(runtime: FakeRuntime) -> None:
    messages = [*runtime.kafka.messages(runtime.topics.workorders), *runtime.kafka.messages(runtime.topics.maintenance),
                *runtime.kafka.messages(runtime.topics.alerts)]
    runtime.store.write(Ingest(runtime.topics).batch(messages, now_ms=runtime.store.now_ms()))


@pytest.fixture
def fleet(empty_runtime: FakeRuntime) -> FakeRuntime:
    populate(empty_runtime.store, machines=60, predictions=6000, seed=3)
    return empty_runtime


@pytest.mark.parametrize(("outcome", "event", "mode"), [
    ("confirmed_failure", "failure", "bearing"), ("repaired", "repair", None), ("false_alarm", "inspection", None),
    ("inspected_fine", "inspection", None)])
def test_each_outcome_writes_its_maintenance_event(outcome: str, event: str, mode: str | None) -> None:
    order = WorkOrder(1, "abc", "site-a/pump-1", "closed", 1_764_000_000_000, "olga", 1_764_000_100_000,
                      closed_by="olga", outcome=outcome, failure_mode="bearing", note="n")  # type: ignore[arg-type]
    m = work_order_maintenance(order)
    assert (m.event, m.failure_mode, m.event_id, m.identity, m.outcome, m.ts) == (
        event, mode, "wo:abc", "wo:abc", outcome, 1_764_000_100_000)
    decoded = Decoder().maintenance(msgspec.json.encode(m), arrived_ms=m.ts)
    assert decoded == m  # what the scorers and the bridge's decoder accept
    with pytest.raises(ValueError, match="not closed"):
        work_order_maintenance(msgspec.structs.replace(order, status="open"))


def test_open_on_the_machine_page_close_as_a_confirmed_failure(app: AppFactory, fleet: FakeRuntime) -> None:
    machine = queries.machine_ids(fleet.store)[0]
    at = app(fleet)
    at.query_params["machine"] = machine
    at = open_page(at, "machine")
    no_exceptions(at)
    assert any("No maintenance recorded" in c.value for c in at.caption) or at.dataframe
    at.text_input(key="wo_title").input("vibration up, check the bearing").run()
    at.button(key="wo_open").click().run()
    no_exceptions(at)
    (opened,) = [msgspec.json.decode(m.value(), type=WorkOrder) for m in fleet.kafka.messages(fleet.topics.workorders)]
    assert (opened.machine_id, opened.status, opened.opened_by, opened.title) == (
        machine, "open", LOCAL, "vibration up, check the bearing")
    back_from_kafka(fleet)
    at.run()
    at.radio(key="wo_outcome").set_value("confirmed_failure").run()
    at.button(key="wo_close").click().run()
    assert any("needs its failure mode" in e.value for e in at.error)  # no event without the mode
    assert not fleet.kafka.messages(fleet.topics.maintenance)
    at.text_input(key="wo_mode").input("bearing").run()
    at.text_area(key="wo_note").input("outer race spalled").run()
    at.button(key="wo_close").click().run()
    no_exceptions(at)
    (sent,) = fleet.kafka.messages(fleet.topics.maintenance)
    event = msgspec.json.decode(sent.value(), type=MaintenanceEvent)
    assert (event.machine_id, event.event, event.failure_mode, event.event_id, event.outcome, event.note) == (
        machine, "failure", "bearing", f"wo:{opened.work_order_id}", "confirmed_failure", "outer race spalled")
    assert sent.key() == machine.encode()
    back_from_kafka(fleet)
    at.run()
    log = queries.maintenance_log(fleet.store, machine)
    assert f"wo:{opened.work_order_id}" in set(log["identity"])
    shown = next(d.value for d in at.dataframe if "identity" in d.value.columns)
    assert f"wo:{opened.work_order_id}" in set(shown["identity"])
    (order,) = queries.work_orders(fleet.store, machine).to_dict("records")
    assert (order["status"], order["outcome"], order["closed_by"]) == ("closed", "confirmed_failure", LOCAL)


def test_open_a_work_order_from_an_alert(app: AppFactory, fleet: FakeRuntime) -> None:
    at = open_page(app(fleet), "alerts")
    first = queries.alert_list(fleet.store, ["open"]).iloc[0]
    at.multiselect(key="ack_alerts").select(str(first["alert_id"])).run()
    at.radio(key="alert_action").set_value("Open a work order").run()
    at.button(key="wo_alert_open").click().run()
    no_exceptions(at)
    (opened,) = [msgspec.json.decode(m.value(), type=WorkOrder) for m in fleet.kafka.messages(fleet.topics.workorders)]
    assert (opened.machine_id, opened.alert_id) == (first["machine_id"], first["alert_id"])


def test_a_viewer_cannot_open_or_close(fleet: FakeRuntime) -> None:
    viewer = Principal("vera", "viewer")
    with pytest.raises(DashboardError, match="may not open work orders"):
        actions.open_work_order(fleet, "site-a/pump-1", viewer)
    order = actions.open_work_order(fleet, "site-a/pump-1", Principal(LOCAL, "admin"))
    with pytest.raises(DashboardError, match="may not close work orders"):
        actions.close_work_order(fleet, msgspec.to_builtins(order), viewer, "repaired")
    assert not fleet.kafka.messages(fleet.topics.maintenance)
