"""The notifier's pure logic on a fake clock: routing, holding, escalation, snoozes, reminders,
resolution, digests, failures and the records that make it durable."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from forewarn.contract import SCHEMA_VERSION
from notify.book import Book, decode_tracked, encode_tracked, rule_matches
from notify.messages import render
from tests.notify.helpers import T0, alert, rule

S = 1000  # ms


def book(*rules: object, **options: object) -> Book:
    return Book(rules or [rule()], hold_s=5.0, **options)  # type: ignore[arg-type]


def due_keys(b: Book, now: int) -> dict[str, list[str]]:
    return {d.channel: [n.key for _, n in d.items] for d in b.due(now)}


def deliver_all(b: Book, now: int) -> dict[str, list[str]]:
    found = {}
    for d in b.due(now):
        b.delivered(d.items, now)
        found[d.channel] = [n.key for _, n in d.items]
    return found


def test_an_open_alert_is_owed_to_the_rules_channels_once_after_the_hold() -> None:
    b = book()
    assert b.apply(alert(), 0, T0)
    assert due_keys(b, T0 + 4 * S) == {}  # held, waiting for company
    assert deliver_all(b, T0 + 5 * S) == {"hook": ["site-a/pump-0001:1|opened|0|hook"]}
    assert not b.apply(alert(), 0, T0 + 6 * S)  # the same event again (a redelivery) changes nothing
    assert due_keys(b, T0 + 100 * S) == {}


def test_unacknowledged_escalates_on_time_once_and_the_echo_is_a_no_op() -> None:
    b = book()
    b.apply(alert(), 0, T0)
    deliver_all(b, T0 + 5 * S)
    assert b.tick(T0 + 59 * S) == []
    (event,) = b.tick(T0 + 60 * S)
    assert (event.state, event.escalation, event.actor, event.alert_id) == ("escalated", 1, "notifier",
                                                                            "site-a/pump-0001:1")
    assert event.ts >= T0 + 60 * S and event.p_fail == 0.9  # dated after the alert, with its evidence
    assert b.tick(T0 + 61 * S) == []
    assert not b.apply(event, 0, T0 + 61 * S)  # read back from the alerts topic
    assert deliver_all(b, T0 + 66 * S) == {"mail": ["site-a/pump-0001:1|escalated|1|mail"]}
    assert b.tick(T0 + 200 * S) == []  # the chain has no third step


def test_an_escalation_by_another_notifier_is_followed() -> None:
    b = book()
    b.apply(alert(), 0, T0)
    assert b.apply(alert(state="escalated", escalation=1, actor="notifier"), 0, T0 + S)
    assert set(due_keys(b, T0 + 6 * S)) == {"hook", "mail"}


def test_acknowledged_stops_escalation_reminders_and_what_was_not_sent_yet() -> None:
    b = book()
    b.apply(alert(), 0, T0)
    b.apply(alert(state="acknowledged", acknowledged_by="olga", ts=T0 + S), 0, T0 + S)
    assert due_keys(b, T0 + 10 * S) == {}
    assert b.tick(T0 + 3600 * S) == []
    assert b.alerts["site-a/pump-0001:1"].acknowledged_by == "olga"


def test_a_snoozed_alert_stays_quiet_and_its_clocks_restart_when_the_snooze_ends() -> None:
    b = book()
    b.apply(alert(), 0, T0)
    deliver_all(b, T0 + 5 * S)
    until = T0 + 1800 * S
    b.apply(alert(state="snoozed", snoozed_until=until, actor="olga", ts=T0 + 10 * S), 0, T0 + 10 * S)
    for now in range(T0 + 11 * S, until, 60 * S):
        assert b.tick(now) == []
        assert due_keys(b, now) == {}
    assert b.tick(until + 59 * S) == []  # escalation counts from the snooze's end
    (event,) = b.tick(until + 60 * S)
    assert event.escalation == 1


def test_what_is_owed_to_a_snoozed_alert_waits_for_the_snooze_to_end() -> None:
    b = book()
    b.apply(alert(), 0, T0)
    b.apply(alert(state="snoozed", snoozed_until=T0 + 600 * S, ts=T0 + S), 0, T0 + S)
    assert due_keys(b, T0 + 599 * S) == {}
    assert due_keys(b, T0 + 600 * S) == {"hook": ["site-a/pump-0001:1|opened|0|hook"]}


def test_reminders_repeat_at_the_last_level_until_acknowledged() -> None:
    b = book(rule(escalation=[], repeat_s=600.0))
    b.apply(alert(), 0, T0)
    deliver_all(b, T0 + 5 * S)
    assert b.tick(T0 + 604 * S) == []
    assert due_keys(b, T0 + 604 * S) == {}
    b.tick(T0 + 605 * S)
    assert deliver_all(b, T0 + 610 * S) == {"hook": ["site-a/pump-0001:1|reminder|1|hook"]}
    b.tick(T0 + 1210 * S)
    assert deliver_all(b, T0 + 1215 * S) == {"hook": ["site-a/pump-0001:1|reminder|2|hook"]}
    b.apply(alert(state="acknowledged", ts=T0 + 1300 * S), 0, T0 + 1300 * S)
    b.tick(T0 + 9000 * S)
    assert due_keys(b, T0 + 9000 * S) == {}


def test_resolved_tells_the_channels_that_were_told_then_is_forgotten() -> None:
    b = book(forget_after_s=3600.0)
    b.apply(alert(), 0, T0)
    deliver_all(b, T0 + 5 * S)
    b.apply(alert(state="resolved", ts=T0 + 30 * S, message="repaired"), 0, T0 + 30 * S)
    assert deliver_all(b, T0 + 35 * S) == {"hook": ["site-a/pump-0001:1|resolved|0|hook"]}
    assert b.tick(T0 + 3000 * S) == []  # no escalation of a resolved alert
    b.tick(T0 + 3700 * S)
    assert "site-a/pump-0001:1" not in b.alerts
    assert b.changes() == [("site-a/pump-0001:1", 0, None)]  # a tombstone for notify.state
    assert not b.apply(alert(), 0, T0 + 3701 * S)  # a late redelivery of its opening announces nothing


def test_an_alert_resolved_before_anyone_was_told_tells_no_one() -> None:
    b = book()
    b.apply(alert(), 0, T0)
    b.apply(alert(state="resolved", ts=T0 + S), 0, T0 + S)
    assert due_keys(b, T0 + 10 * S) == {}


def test_events_of_an_alert_never_seen_opening_are_ignored() -> None:
    b = book()
    assert not b.apply(alert(state="update"), 0, T0)
    assert not b.apply(alert(state="acknowledged"), 0, T0)
    assert b.alerts == {}


@pytest.mark.parametrize(("overrides", "kwargs", "when", "matches"), [
    ({"sites": ["site-a"]}, {"site": "site-b"}, "2025-11-24T10:00", False),
    ({"sites": ["site-a"]}, {}, "2025-11-24T10:00", True),
    ({"severities": ["critical"]}, {"severity": "warning"}, "2025-11-24T10:00", False),
    ({"asset_types": ["motor"]}, {}, "2025-11-24T10:00", False),
    ({"hours": "07:00-19:00"}, {}, "2025-11-24T18:59", True),
    ({"hours": "07:00-19:00"}, {}, "2025-11-24T19:00", False),
    ({"hours": "22:00-06:00"}, {}, "2025-11-24T23:30", True),
    ({"hours": "22:00-06:00"}, {}, "2025-11-24T05:59", True),
    ({"hours": "22:00-06:00"}, {}, "2025-11-24T12:00", False),
    ({"days": ["sat", "sun"]}, {}, "2025-11-24T12:00", False),  # a Monday
    ({"days": ["mon"]}, {}, "2025-11-24T12:00", True),
])
def test_rule_filters(overrides: dict[str, object], kwargs: dict[str, object], when: str, matches: bool) -> None:
    at = dt.datetime.fromisoformat(when).replace(tzinfo=dt.UTC)
    assert rule_matches(rule(**overrides), alert(**kwargs), at) is matches  # type: ignore[arg-type]


def test_first_matching_rule_routes_by_time_of_day_in_the_rules_zone() -> None:
    day = rule(name="day shift", hours="07:00-19:00", channels=["hook"], escalation=[])
    night = rule(name="on call", channels=["mail"], escalation=[])
    b = Book([day, night], timezone="Europe/Berlin", hold_s=0)
    b.apply(alert(1), 0, T0)  # 16:00 UTC = 17:00 in Berlin: day shift
    b.apply(alert(2), 0, T0 + 3 * 3600 * S)  # 20:00 in Berlin: on call
    assert {t.rule for t in b.alerts.values()} == {"day shift", "on call"}
    assert due_keys(b, T0 + 3 * 3600 * S) == {"hook": ["site-a/pump-0001:1|opened|0|hook"],
                                               "mail": ["site-a/pump-0002:1|opened|0|mail"]}


def test_an_alert_no_rule_matches_is_tracked_and_told_to_no_one() -> None:
    b = book(rule(sites=["site-z"]))
    assert b.apply(alert(), 0, T0)
    assert b.alerts["site-a/pump-0001:1"].rule is None
    assert due_keys(b, T0 + 10 * S) == {} and b.tick(T0 + 9999 * S) == []


def test_a_storm_is_one_digest_per_channel() -> None:
    b = book(rule(channels=["hook", "chat"]))
    for n in range(500):
        b.apply(alert(n, site="site-a" if n % 2 else "site-b"), n % 3, T0 + n)  # within half a second
    dues = b.due(T0 + 6 * S)
    assert [d.channel for d in dues] == ["chat", "hook"] and all(len(d.items) == 500 for d in dues)
    for d in dues:
        (message,) = render(d.channel, d.items, digest_min=5, digest_lines=20)
        assert message.digest and message.count == 500
        assert message.title == "Forewarn digest: 500 alert notifications (site-a 250, site-b 250)"
        assert len(message.document["notifications"]) == 500
        assert message.body.endswith("... and 480 more")
    few = render("hook", dues[1].items[:4], digest_min=5, digest_lines=20)
    assert [m.count for m in few] == [1, 1, 1, 1]


def test_a_digest_key_depends_on_the_notices_it_carries_only() -> None:
    b = book()
    for n in range(6):
        b.apply(alert(n), 0, T0)
    items = b.due(T0 + 5 * S)[0].items
    first = render("hook", items, digest_min=5, digest_lines=3)[0].key
    assert render("hook", list(reversed(items)), digest_min=5, digest_lines=3)[0].key == first
    assert render("hook", items[1:], digest_min=5, digest_lines=3)[0].key != first


def test_failures_keep_the_notice_owed_until_attempts_run_out() -> None:
    b = book(max_attempts=3)
    b.apply(alert(), 0, T0)
    for attempt in (1, 2):
        (d,) = b.due(T0 + 5 * S)
        assert b.failed(d.items, "connection refused", retriable=True) == []
        assert d.items[0][0].owed[0].attempts == attempt
    (d,) = b.due(T0 + 5 * S)
    ((_, given_up),) = b.failed(d.items, "connection refused", retriable=True)
    assert (given_up.attempts, given_up.error) == (3, "connection refused")
    assert b.due(T0 + 5 * S) == []


def test_a_refusal_for_good_gives_up_at_once() -> None:
    b = book()
    b.apply(alert(), 0, T0)
    (d,) = b.due(T0 + 5 * S)
    assert len(b.failed(d.items, "HTTP 400", retriable=False)) == 1
    assert b.due(T0 + 5 * S) == []


def test_channels_in_backoff_are_not_due() -> None:
    b = book()
    b.apply(alert(), 0, T0)
    assert b.due(T0 + 5 * S, {"hook": T0 + 9 * S}) == []
    assert len(b.due(T0 + 9 * S, {"hook": T0 + 9 * S})) == 1


def test_records_round_trip_and_a_reloaded_book_owes_and_remembers_the_same() -> None:
    b = book()
    b.apply(alert(1), 0, T0)
    b.apply(alert(2), 1, T0)
    d = b.due(T0 + 5 * S)[0]
    b.delivered(d.items[:1], T0 + 5 * S)
    changes = b.changes()
    assert {c[0] for c in changes} == {"site-a/pump-0001:1", "site-a/pump-0002:1"}
    b.written(changes)
    assert b.changes() == []
    again = book()
    for _, _, value in changes:
        assert value is not None
        again.load(decode_tracked(value))
    assert due_keys(again, T0 + 6 * S) == {"hook": ["site-a/pump-0002:1|opened|0|hook"]}
    assert not again.apply(alert(1), 0, T0 + 7 * S)  # delivered before the restart: not owed again
    assert encode_tracked(again.alerts["site-a/pump-0001:1"]) == encode_tracked(b.alerts["site-a/pump-0001:1"])
    with pytest.raises(msgspec.DecodeError):
        decode_tracked(b"{}")
    assert again.alerts["site-a/pump-0002:1"].v == SCHEMA_VERSION


def test_drop_partitions_forgets_their_alerts_only() -> None:
    b = book()
    b.apply(alert(1), 0, T0)
    b.apply(alert(2), 1, T0)
    b.drop_partitions([0])
    assert set(b.alerts) == {"site-a/pump-0002:1"}


def test_a_rising_severity_routes_again_and_tells_the_new_rules_channels() -> None:
    critical = rule(name="critical", severities=["critical"], channels=["pager"], escalation=[])
    warnings = rule(name="warnings", severities=["warning"], channels=["hook"], escalation=[])
    b = book(critical, warnings)
    b.apply(alert(severity="warning"), 0, T0)
    assert deliver_all(b, T0 + 5 * S) == {"hook": ["site-a/pump-0001:1|opened|0|hook"]}
    assert b.apply(alert(state="update", severity="critical", ts=T0 + 10 * S), 0, T0 + 10 * S)
    assert b.alerts["site-a/pump-0001:1"].rule == "critical"
    assert deliver_all(b, T0 + 15 * S) == {"pager": ["site-a/pump-0001:1|raised|2|pager"]}
    assert not b.apply(alert(state="update", severity="critical", ts=T0 + 10 * S), 0, T0 + 20 * S)
    b.apply(alert(state="update", severity="warning", ts=T0 + 30 * S), 0, T0 + 30 * S)  # falling: nobody told
    assert due_keys(b, T0 + 40 * S) == {}


def test_an_alert_assigned_to_a_user_who_asked_is_owed_to_them_personally() -> None:
    from forewarn.contract import NotifyPreference

    b = book(personal=True)
    b.preferences["olga"] = NotifyPreference(1, "olga", T0, email="olga@plant.example")
    b.preferences["vera"] = NotifyPreference(1, "vera", T0, email="vera@plant.example", assigned=False)
    b.apply(alert(1), 0, T0)
    b.apply(alert(2), 0, T0)
    deliver_all(b, T0 + 5 * S)
    b.apply(alert(1, state="assigned", assigned_to="olga", ts=T0 + 6 * S), 0, T0 + 6 * S)
    b.apply(alert(2, state="assigned", assigned_to="vera", ts=T0 + 6 * S), 0, T0 + 6 * S)  # she did not ask
    assert due_keys(b, T0 + 11 * S) == {"@olga": ["site-a/pump-0001:1|assigned|0|@olga"]}
    unasked = book()  # a notifier without a personal channel tells nobody personally
    unasked.preferences = b.preferences
    unasked.apply(alert(1), 0, T0)
    unasked.apply(alert(1, state="assigned", assigned_to="olga", ts=T0 + 1), 0, T0 + 1)
    assert "@olga" not in due_keys(unasked, T0 + 10 * S)
