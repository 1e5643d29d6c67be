"""The alert lifecycle from the Alerts page: the active-and-unacknowledged and assigned-to-me
views, assigning, snoozing and acknowledging a whole view at once (a storm), each an event on the
alerts topic naming the signed-in user; the store's alert view keeps the evidence of the scorers'
events and the state of the people's."""

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
from forewarn.contract import Alert
from tests.dashboard.conftest import FakeRuntime, no_exceptions, open_page

AppFactory = Callable[[Runtime], AppTest]
LOCAL = f"local:{getpass.getuser()}"


def sent_events(runtime: FakeRuntime) -> list[Alert]:
    return [msgspec.json.decode(m.value(), type=Alert) for m in runtime.kafka.messages(runtime.topics.alerts)]


def back_from_kafka(runtime: FakeRuntime) -> None:
    messages = runtime.kafka.messages(runtime.topics.alerts)
    runtime.store.write(Ingest(runtime.topics).batch(messages, now_ms=runtime.store.now_ms()))


@pytest.fixture
def fleet(empty_runtime: FakeRuntime) -> FakeRuntime:
    populate(empty_runtime.store, machines=60, predictions=6000, seed=3)
    return empty_runtime


def test_the_active_and_unacknowledged_view_shows_open_alerts_only(app: AppFactory, fleet: FakeRuntime) -> None:
    at = open_page(app(fleet), "alerts")
    at.radio(key="alert_view").set_value("Active and unacknowledged").run()
    no_exceptions(at)
    table = at.dataframe[0].value
    assert len(table) == len(queries.alert_list(fleet.store, ["open"])) > 0
    assert set(table["status"]) == {"open"}


def test_assign_to_me_then_the_assigned_to_me_view(app: AppFactory, fleet: FakeRuntime) -> None:
    at = open_page(app(fleet), "alerts")
    at.radio(key="alert_view").set_value("Assigned to me").run()
    assert any("Nothing is assigned to you" in i.value for i in at.info)
    at.radio(key="alert_view").set_value("All alerts").run()
    first = queries.alert_list(fleet.store, ["open"]).iloc[0]
    at.multiselect(key="ack_alerts").select(str(first["alert_id"])).run()
    at.radio(key="alert_action").set_value("Assign").run()
    assert at.text_input(key="assign_to").value == LOCAL  # the signed-in user by default
    at.button(key="assign_button").click().run()
    no_exceptions(at)
    (event,) = sent_events(fleet)
    assert (event.state, event.alert_id, event.assigned_to, event.actor) == ("assigned", first["alert_id"], LOCAL,
                                                                             LOCAL)
    assert event.p_fail == pytest.approx(float(first["p_fail"]))  # the evidence travels along
    back_from_kafka(fleet)
    at.radio(key="alert_view").set_value("Assigned to me").run()
    table = at.dataframe[0].value
    assert list(table["machine_id"]) == [first["machine_id"]] and list(table["assigned_to"]) == [LOCAL]
    assert list(table["status"]) == ["open"]  # assigning is not acknowledging


def test_snooze_records_until_when_and_ending_it(app: AppFactory, fleet: FakeRuntime) -> None:
    at = open_page(app(fleet), "alerts")
    first = queries.alert_list(fleet.store, ["open"]).iloc[0]
    at.multiselect(key="ack_alerts").select(str(first["alert_id"])).run()
    at.radio(key="alert_action").set_value("Snooze").run()
    at.selectbox(key="snooze_for").set_value(60).run()
    at.button(key="snooze_button").click().run()
    no_exceptions(at)
    (event,) = sent_events(fleet)
    assert event.state == "snoozed" and event.snoozed_until is not None
    assert 3_590_000 <= event.snoozed_until - fleet.store.now_ms() <= 3_600_000
    assert any("Snoozed 1 alert for 1 h" in s.value for s in at.success)
    back_from_kafka(fleet)
    row = queries.alert_list(fleet.store, ["open"]).set_index("alert_id").loc[first["alert_id"]]
    assert bool(row["snoozed"]) and int(row["snoozed_until"]) == event.snoozed_until
    actions.snooze(fleet, [row.to_dict() | {"alert_id": first["alert_id"]}], Principal(LOCAL, "admin"), 0)
    back_from_kafka(fleet)
    row = queries.alert_list(fleet.store, ["open"]).set_index("alert_id").loc[first["alert_id"]]
    assert not bool(row["snoozed"])


def test_bulk_acknowledge_a_whole_view_with_one_note(app: AppFactory, fleet: FakeRuntime) -> None:
    at = open_page(app(fleet), "alerts")
    at.radio(key="alert_view").set_value("Active and unacknowledged").run()
    open_ids = set(queries.alert_list(fleet.store, ["open"])["alert_id"])
    at.checkbox(key="ack_all").check().run()
    at.text_area(key="ack_note").input("storm after the power cut: checked the whole line").run()
    at.button(key="ack_button").click().run()
    no_exceptions(at)
    events = sent_events(fleet)
    assert {e.alert_id for e in events} == open_ids and len(events) == len(open_ids) > 1
    assert {(e.state, e.acknowledged_by, e.note) for e in events} == {
        ("acknowledged", LOCAL, "storm after the power cut: checked the whole line")}
    back_from_kafka(fleet)
    at.run()
    assert any("Nothing to change here" in c.value for c in at.caption) or at.info
    assert queries.alert_list(fleet.store, ["open"]).empty


def test_people_may_not_change_alerts_below_the_operator_role(fleet: FakeRuntime) -> None:
    row = queries.alert_list(fleet.store, ["open"]).iloc[0].to_dict()
    viewer = Principal("vera", "viewer")
    for act, arg in ((actions.assign, "vera"), (actions.snooze, 60.0)):
        with pytest.raises(DashboardError, match="may not"):
            act(fleet, [row], viewer, arg)  # type: ignore[operator]
    with pytest.raises(DashboardError, match="snooze of 20000 minutes"):
        actions.snooze(fleet, [row], Principal(LOCAL, "admin"), 20_000)
    assert not fleet.kafka.messages(fleet.topics.alerts)


def test_lifecycle_events_leave_the_evidence_to_the_scorers_events(fleet: FakeRuntime) -> None:
    first = queries.alert_list(fleet.store, ["open"]).iloc[0].to_dict()
    changed = {**first, "p_fail": 0.01, "severity": "info", "message": "nothing to see"}
    admin = Principal(LOCAL, "admin")
    actions.assign(fleet, [changed], admin, "olga")
    escalated = actions.lifecycle_event(changed, "escalated", fleet.store.now_ms(), actor="notifier", escalation=2)
    fleet.sink.produce(fleet.topics.alerts, msgspec.json.encode(escalated), key=escalated.machine_id)
    back_from_kafka(fleet)
    row = queries.alert_list(fleet.store, ["open"]).set_index("alert_id").loc[first["alert_id"]]
    assert (row["severity"], row["message"]) == (first["severity"], first["message"])
    assert row["p_fail"] == pytest.approx(first["p_fail"])
    assert (row["assigned_to"], row["assigned_by"], int(row["escalation"])) == ("olga", LOCAL, 2)
    actions.assign(fleet, [changed], admin, "")
    back_from_kafka(fleet)
    row = queries.alert_list(fleet.store, ["open"]).set_index("alert_id").loc[first["alert_id"]]
    assert row["assigned_to"] is None or row["assigned_to"] != row["assigned_to"]  # unassigned: NULL


def test_my_notification_preferences_go_to_the_notifier(app: AppFactory, fleet: FakeRuntime) -> None:
    from forewarn.contract import NotifyPreference

    at = open_page(app(fleet), "fleet")
    at.text_input(key="pref_email").input("not an address").run()
    at.button(key="pref_save").click().run()
    assert any("is not an email address" in e.value for e in at.error)
    assert not fleet.kafka.messages(fleet.topics.notify_preferences)
    at.text_input(key="pref_email").input("me@plant.example").run()
    at.button(key="pref_save").click().run()
    no_exceptions(at)
    (sent,) = fleet.kafka.messages(fleet.topics.notify_preferences)
    preference = msgspec.json.decode(sent.value(), type=NotifyPreference)
    assert (preference.user, preference.email, preference.assigned, sent.key()) == (
        LOCAL, "me@plant.example", True, LOCAL.encode())
