"""Every page renders with data and without, filters narrow what shows, and acknowledging an
alert produces an ``acknowledged`` event on the alerts topic."""

from __future__ import annotations

import getpass
from collections.abc import Callable

import msgspec
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import queries
from dashboard.ingest import Ingest
from dashboard.runtime import Runtime
from dashboard.store import Batch
from forewarn.contract import PIPELINE_OUTCOMES, PIPELINE_RESETS, Alert
from tests.dashboard.conftest import PAGES, FakeRuntime, charts, no_exceptions, open_page

AppFactory = Callable[[Runtime], AppTest]


@pytest.mark.parametrize("page", PAGES)
def test_page_without_data_shows_a_helpful_state(page: str, app: AppFactory, empty_runtime: FakeRuntime) -> None:
    at = open_page(app(empty_runtime), page)
    no_exceptions(at)
    assert at.info, "an empty page explains what is missing"
    assert any("yet" in i.value for i in at.info)
    assert not charts(at)


@pytest.mark.parametrize("page", PAGES)
def test_page_with_data_renders(page: str, app: AppFactory, filled_runtime: FakeRuntime) -> None:
    at = open_page(app(filled_runtime), page)
    no_exceptions(at)
    assert at.title[0].value == page.capitalize()
    assert charts(at), "every page draws at least one chart"
    assert at.dataframe or page == "machine"
    if page in ("fleet", "alerts", "pipeline", "machine"):
        assert at.metric


def _fleet_table(at: AppTest) -> object:
    return at.dataframe[0].value


def test_fleet_filters(app: AppFactory, filled_runtime: FakeRuntime) -> None:
    at = open_page(app(filled_runtime), "fleet")
    everything = _fleet_table(at)
    assert len(everything) == 120
    assert list(everything["p_fail"]) == sorted(everything["p_fail"], reverse=True)

    at.multiselect(key="fleet_sites").select("site-b").run()
    by_site = _fleet_table(at)
    assert 0 < len(by_site) < len(everything) and set(by_site["site"]) == {"site-b"}

    at.multiselect(key="fleet_assets").select("motor").run()
    assert set(_fleet_table(at)["asset_type"]) == {"motor"}

    at.multiselect(key="fleet_sites").unselect("site-b").run()
    at.multiselect(key="fleet_assets").unselect("motor").run()
    at.multiselect(key="fleet_risks").select("critical").run()
    critical = _fleet_table(at)
    assert len(critical) > 0 and set(critical["risk"]) == {"critical"}

    at.multiselect(key="fleet_risks").unselect("critical").run()
    at.text_input(key="fleet_search").input("pump-0001").run()
    found = _fleet_table(at)
    assert len(found) >= 1 and all("pump-0001" in m for m in found["machine_id"])

    at.text_input(key="fleet_search").input("").run()
    at.toggle(key="fleet_only_alerts").set_value(True).run()
    alerting = _fleet_table(at)
    assert len(alerting) > 0 and (alerting["open_alerts"] > 0).all()
    no_exceptions(at)


def test_machine_page_follows_the_url_and_the_pickers(app: AppFactory, filled_runtime: FakeRuntime) -> None:
    store = filled_runtime.store
    failed = str(store.scalar("SELECT machine_id FROM maintenance WHERE event = 'failure' ORDER BY machine_id"))
    at = app(filled_runtime)
    at.query_params["machine"] = failed
    at = open_page(at, "machine")
    no_exceptions(at)
    assert at.selectbox(key="machine_pick").value == failed
    assert at.selectbox(key="machine_site").value == failed.partition("/")[0]
    # p_fail, RUL and the sensor charts, with the failure in the events table.
    assert len(charts(at)) >= 4
    at.segmented_control(key="machine_range").set_value("All").run()
    events = at.dataframe[0].value
    assert "failure" in set(events["kind"])

    sensors = at.multiselect(key=f"sensors_{failed.split('/')[1].split('-')[0]}")
    assert len(sensors.value) >= 2
    sensors.set_value([sensors.value[0]]).run()
    no_exceptions(at)

    other = at.selectbox(key="machine_pick").options[-1]
    at.selectbox(key="machine_pick").set_value(other).run()
    no_exceptions(at)
    assert at.query_params["machine"] == other


def test_alert_filters(app: AppFactory, filled_runtime: FakeRuntime) -> None:
    at = open_page(app(filled_runtime), "alerts")
    table = at.dataframe[0].value
    assert set(table["status"]) <= {"open", "acknowledged"}
    at.multiselect(key="alert_status").set_value(["resolved"]).run()
    resolved = at.dataframe[0].value
    assert len(resolved) > 0 and set(resolved["status"]) == {"resolved"}
    assert all(d for d in resolved["duration"])
    at.multiselect(key="alert_status").set_value(["open", "acknowledged", "resolved"]).run()
    at.multiselect(key="alert_severity").set_value(["critical"]).run()
    assert set(at.dataframe[0].value["severity"]) <= {"critical"}
    at.selectbox(key="alert_site").set_value("site-a").run()
    assert all(m.startswith("site-a/") for m in at.dataframe[0].value["machine_id"])
    no_exceptions(at)


def test_acknowledge_produces_an_acknowledged_event(app: AppFactory, empty_runtime: FakeRuntime) -> None:
    from dashboard.synthetic import populate

    runtime = empty_runtime
    populate(runtime.store, machines=60, predictions=6000, seed=3)
    at = open_page(app(runtime), "alerts")
    pick = at.multiselect(key="ack_alerts")
    assert pick.options, "there are open alerts to acknowledge"
    first = queries.alert_list(runtime.store, ["open"]).iloc[0]
    alert_id, machine = str(first["alert_id"]), str(first["machine_id"])
    assert pick.options[0].startswith(machine)

    # Without a users file the local OS user acknowledges, as admin; nothing is sent before the button.
    pick.select(alert_id).run()
    assert not runtime.kafka.messages(runtime.topics.alerts)
    at.text_area(key="ack_note").input("bearing greased").run()
    at.button(key="ack_button").click().run()
    no_exceptions(at)
    sent = runtime.kafka.messages(runtime.topics.alerts)
    assert len(sent) == 1
    event = msgspec.json.decode(sent[0].value(), type=Alert)
    local = f"local:{getpass.getuser()}"
    assert (event.alert_id, event.state, event.acknowledged_by, event.note, event.machine_id) == (
        alert_id, "acknowledged", local, "bearing greased", machine)
    assert sent[0].key() == machine.encode()
    assert any("Acknowledged 1 alert" in s.value for s in at.success)

    # Once the event is back from Kafka, the alert shows as acknowledged.
    runtime.store.write(Ingest(runtime.topics).batch(sent, now_ms=event.ts))
    at.multiselect(key="alert_status").set_value(["acknowledged"]).run()
    table = at.dataframe[0].value
    row = table[table["machine_id"] == machine]
    assert (list(row["acknowledged_by"]), list(row["note"])) == ([local], ["bearing greased"])
    assert row["acknowledged"].notna().all()
    at.multiselect(key="alert_status").set_value(["open"]).run()
    assert not any(o.startswith(machine + " ") for o in at.multiselect(key="ack_alerts").options)


def test_models_page_accuracy_and_drift(app: AppFactory, filled_runtime: FakeRuntime) -> None:
    at = open_page(app(filled_runtime), "models")
    no_exceptions(at)
    versions, live, drift = (d.value for d in at.dataframe[:3])
    assert set(versions["asset_type"]) == {"pump", "motor"}
    assert "test.precision" in versions.columns
    assert live["precision"].between(0, 1).all() and (live["labelled"] > 0).all()
    assert set(drift["band"]) <= {"stable", "moderate", "significant"}
    at.segmented_control(key="drift_asset").set_value("pump").run()
    assert any("pump" in s for s in at.dataframe[2].value["sensor"]) or len(at.dataframe[2].value) > 0
    no_exceptions(at)


def test_pipeline_page_shows_what_was_not_scored_by_reason(app: AppFactory, filled_runtime: FakeRuntime) -> None:
    at = open_page(app(filled_runtime), "pipeline")
    no_exceptions(at)
    assert "Not scored, by reason" in [h.value for h in at.subheader]
    by_role = next(d.value for d in at.dataframe if "duplicate" in d.value.columns)
    assert set(by_role["role"]) == {"scoring", "edge"}
    assert list(by_role.columns[1:4]) == ["scored", "duplicate", "late"]
    assert (by_role["scored"] > by_role["duplicate"]).all()
    resets = next(d.value for d in at.dataframe if "sources" in d.value.columns)
    assert set(resets["outcome"]) <= {"restart", "gap"}
    captions = " ".join(c.value for c in at.caption)
    assert all(reason in captions for reason in ("duplicate", "late", "warmup", "unscorable", "rejected",
                                                 "restart", "gap"))


def test_pipeline_page_without_stats_says_so(app: AppFactory, empty_runtime: FakeRuntime) -> None:
    store = empty_runtime.store
    now = store.now_ms()
    store.write(Batch(throughput={(now - now % 1000, "telemetry"): 10}))
    at = open_page(app(empty_runtime), "pipeline")
    no_exceptions(at)
    assert any("No pipeline stats yet" in c.value for c in at.caption)


def test_the_pipeline_page_explains_every_outcome_and_reset_scorers_report() -> None:
    assert {queries.SCORED, *queries.NOT_SCORED} == set(PIPELINE_OUTCOMES)
    assert set(queries.RESETS) == set(PIPELINE_RESETS)
