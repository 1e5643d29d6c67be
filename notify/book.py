"""The notifier's record of every alert it tracks, and what it still owes each channel.

Pure: no Kafka, no network, no clock of its own; every method takes the notifier's time
(``now``, epoch ms). :class:`Book` applies alert events (:meth:`Book.apply`, idempotent: an
event applied twice changes nothing the second time), decides escalations and reminders
(:meth:`Book.tick`), hands out what is due per channel (:meth:`Book.due`) and records what was
delivered or failed. What it owes is part of each alert's :class:`Tracked` record, which the
service writes to the compacted ``notify.state`` topic before it commits the alerts it
consumed: an obligation, once taken on, survives a restart until it is delivered or
dead-lettered.

Lifecycle, per alert:

- ``open`` of an alert not tracked yet: routed by the first matching rule; each of the rule's
  ``channels`` is owed an ``opened`` notice (level 0). Other events of an untracked alert are
  ignored: the notifier never saw it open.
- ``update`` that raises the severity of an active alert: routed again (a rule for critical
  alerts takes over from one for warnings); that rule's ``channels`` are owed a ``raised`` notice.
- ``assigned`` to a user who asked for it (their :class:`~forewarn.contract.NotifyPreference`,
  and a ``personal`` book): that user is owed an ``assigned`` notice on channel ``@<user>``.
- ``acknowledged``: no escalation, no reminders; notices not yet sent for the opening, an
  escalation or a reminder are dropped (someone has seen it).
- ``snoozed`` until a time: nothing is sent for the alert until then (what is owed waits), and
  the escalation and reminder clocks start again when the snooze ends.
- ``escalated`` (from this notifier or another): the level rises; the new level's channel is
  owed an ``escalated`` notice. The notifier emits it itself when an active, unsnoozed alert was
  not acknowledged within the rule's ``escalate_after_s`` of the last level.
- ``resolved``: the channels that were told are owed a ``resolved`` notice (``notify_resolved``);
  anything else still owed is dropped. The record is forgotten ``forget_after_s`` later.
- reminders: every ``repeat_s`` without a notice, an active unacknowledged alert's current
  level is reminded again.

Every notice has an idempotency key, ``<alert_id>|<kind>|<n>|<channel>``, carried to the
receiver (``Idempotency-Key`` header, email ``Message-ID``): a notice redelivered after a crash
can be recognised there.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec

from forewarn.contract import SEVERITY_RANK, Alert, NotifyPreference, site_of
from notify.settings import WEEKDAYS, Rule

__all__ = ["Book", "Due", "Notice", "NoticeKind", "Tracked", "decode_tracked", "encode_tracked"]

NoticeKind = Literal["opened", "raised", "escalated", "reminder", "resolved", "assigned"]
PERSONAL = "@"  # channel names for one person: "@<user name>"
_QUIETED_BY_ACK: frozenset[str] = frozenset({"opened", "raised", "escalated", "reminder"})
_SENT_KEPT = 200  # delivered keys remembered per alert (a few per channel and change)
STATE_VERSION = 1


class Notice(msgspec.Struct, frozen=True, omit_defaults=True):
    """One notification owed to one channel about one change of one alert."""

    key: str
    channel: str
    kind: NoticeKind
    level: int
    created_ms: int
    attempts: int = 0
    error: str | None = None


class Tracked(msgspec.Struct, omit_defaults=True):
    """What the notifier knows of one alert: its last evidence, where it is routed, how far it
    has escalated, who was told and what is still owed. Times are the notifier's (epoch ms)."""

    v: int
    alert: Alert  # the last event that was not a lifecycle event: the evidence
    partition: int  # of the alerts topic (the record lives on the same partition of notify.state)
    rule: str | None  # the routing rule; None: no rule matched, nobody is told
    status: Literal["active", "acknowledged", "resolved"] = "active"
    level: int = 0
    level_since: int = 0
    last_told: int = 0
    last_ts: int = 0  # the latest event time seen for it (lifecycle events are dated after it)
    reminders: int = 0
    resolved_at: int = 0
    acknowledged_by: str | None = None
    assigned_to: str | None = None
    snoozed_until: int = 0
    told: list[str] = []  # channels that received at least one notice
    owed: list[Notice] = []
    sent: list[str] = []  # idempotency keys delivered (the latest _SENT_KEPT)

    @property
    def alert_id(self) -> str:
        return self.alert.alert_id

    def snoozed(self, now: int) -> bool:
        return self.snoozed_until > now


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Tracked)


def encode_tracked(tracked: Tracked) -> bytes:
    return _encoder.encode(tracked)


def decode_tracked(raw: bytes) -> Tracked:
    """A ``notify.state`` record; raises :class:`msgspec.DecodeError` for a bad one."""
    return _decoder.decode(raw)


@dataclass(frozen=True)
class Due:
    """Notices due for one channel now: each with the alert it is about."""

    channel: str
    items: list[tuple[Tracked, Notice]]


def _weekday(value: dt.datetime) -> str:
    return WEEKDAYS[value.weekday()]


def rule_matches(rule: Rule, alert: Alert, when: dt.datetime) -> bool:
    """Whether ``rule`` routes ``alert`` at local time ``when``."""
    if rule.sites and site_of(alert.machine_id) not in rule.sites:
        return False
    if rule.asset_types and (alert.asset_type or "") not in rule.asset_types:
        return False
    if rule.severities and alert.severity not in rule.severities:
        return False
    if rule.days and _weekday(when) not in rule.days:
        return False
    window = rule.minutes()
    if window is not None:
        start, end = window
        minute = when.hour * 60 + when.minute
        inside = start <= minute < end if start <= end else (minute >= start or minute < end)
        if not inside:
            return False
    return True


class Book:
    """Every tracked alert, keyed by alert id. Not thread-safe: the notifier's loop owns it."""

    def __init__(self, rules: Iterable[Rule], *, timezone: str = "UTC", hold_s: float = 5.0,
                 max_attempts: int = 100, forget_after_s: float = 86400.0, personal: bool = False) -> None:
        self.rules: list[Rule] = list(rules)
        self._by_name: Mapping[str, Rule] = {r.name: r for r in self.rules}
        self.zone = ZoneInfo(timezone)
        self.hold_ms = int(hold_s * 1000)
        self.max_attempts = max_attempts
        self.forget_ms = int(forget_after_s * 1000)
        self.alerts: dict[str, Tracked] = {}
        self.dirty: set[str] = set()  # alert ids whose record changed since it was last written
        self.forgotten: dict[str, int] = {}  # alert id -> partition: records to delete (tombstones)
        self._owing: set[str] = set()  # alert ids with something owed
        self.personal = personal  # whether users who asked are told of alerts assigned to them
        self.preferences: dict[str, NotifyPreference] = {}

    # -- routing ---------------------------------------------------------------------------

    def route(self, alert: Alert, now: int) -> Rule | None:
        """The first rule that matches ``alert`` at ``now`` (the rules' time zone)."""
        when = dt.datetime.fromtimestamp(now / 1000, tz=self.zone)
        return next((r for r in self.rules if rule_matches(r, alert, when)), None)

    def rule_of(self, tracked: Tracked) -> Rule | None:
        return None if tracked.rule is None else self._by_name.get(tracked.rule)

    # -- events ----------------------------------------------------------------------------

    def apply(self, event: Alert, partition: int, now: int) -> bool:
        """Apply one event from the alerts topic; True when it changed anything."""
        t = self.alerts.get(event.alert_id)
        if t is None:
            if event.state != "open" or event.alert_id in self.forgotten:
                return False
            rule = self.route(event, now)
            t = Tracked(1, event, partition, None if rule is None else rule.name, level_since=now, last_told=now,
                        last_ts=event.ts)
            self.alerts[event.alert_id] = t
            if rule is not None:
                for channel in rule.channels:
                    self._owe(t, "opened", 0, channel, now)
            self._touch(t)
            return True
        before = encode_tracked(t)
        t.last_ts = max(t.last_ts, event.ts)
        state = event.state
        if state in ("open", "update", "resolved") and event.ts >= t.alert.ts:
            risen = SEVERITY_RANK.get(event.severity, 0) > SEVERITY_RANK.get(t.alert.severity, 0)
            t.alert = event
            if risen and t.status == "active":
                self._reroute(t, now)
        if state == "acknowledged" and t.status == "active":
            t.status = "acknowledged"
            t.acknowledged_by = event.acknowledged_by or event.actor
            t.owed = [n for n in t.owed if n.kind not in _QUIETED_BY_ACK]
        elif state == "assigned":
            t.assigned_to = event.assigned_to or None
            wants = self.preferences.get(t.assigned_to or "")
            if (self.personal and t.status == "active" and wants is not None and wants.assigned
                    and wants.email is not None):
                self._owe(t, "assigned", 0, PERSONAL + wants.user, now)
        elif state == "snoozed":
            t.snoozed_until = event.snoozed_until or 0
        elif state == "escalated" and event.escalation is not None and t.status == "active":
            if event.escalation > t.level:
                self._escalate_to(t, event.escalation, now)
        elif state == "resolved" and t.status != "resolved":
            t.status = "resolved"
            t.resolved_at = now
            t.owed = [n for n in t.owed if n.kind == "resolved"]
            rule = self.rule_of(t)
            if rule is not None and rule.notify_resolved:
                for channel in t.told:
                    self._owe(t, "resolved", 0, channel, now)
        if encode_tracked(t) == before:
            return False
        self._touch(t)
        return True

    def tick(self, now: int) -> list[Alert]:
        """Escalate and remind what is due at ``now``; forget resolved alerts kept long enough.
        Returns the ``escalated`` events to write to the alerts topic (already applied here)."""
        escalations: list[Alert] = []
        for t in list(self.alerts.values()):
            if t.status == "resolved":
                if not t.owed and now - t.resolved_at >= self.forget_ms:
                    del self.alerts[t.alert_id]
                    self._owing.discard(t.alert_id)
                    self.dirty.discard(t.alert_id)
                    self.forgotten[t.alert_id] = t.partition
                continue
            rule = self.rule_of(t)
            if t.status != "active" or rule is None or t.snoozed(now):
                continue
            chain = rule.chain()
            since = max(t.level_since, t.snoozed_until)
            if t.level + 1 < len(chain) and now - since >= int(rule.escalate_after_s * 1000):
                level = t.level + 1
                escalations.append(msgspec.structs.replace(
                    t.alert, state="escalated", ts=max(now, t.last_ts), actor="notifier", escalation=level,
                    acknowledged_by=None, note=None,
                    message=f"not acknowledged within {rule.escalate_after_s:g} s: escalated to "
                            f"{', '.join(chain[level])}"))
                self._escalate_to(t, level, now)
                t.last_ts = max(now, t.last_ts)
                self._touch(t)
            elif (rule.repeat_s is not None and not t.owed
                  and now - max(t.last_told, t.snoozed_until) >= int(rule.repeat_s * 1000)):
                t.reminders += 1
                t.last_told = now
                for channel in chain[min(t.level, len(chain) - 1)]:
                    self._owe(t, "reminder", t.reminders, channel, now)
                self._touch(t)
        return escalations

    def _reroute(self, t: Tracked, now: int) -> None:
        """The alert's severity rose: route it again, and tell the channels of the rule that
        takes it now (the same rule's, or another's, which then owns its escalation)."""
        rule = self.route(t.alert, now)
        if rule is None:
            return
        if rule.name != t.rule:
            t.rule, t.level, t.level_since = rule.name, 0, now
        for channel in rule.channels:
            self._owe(t, "raised", SEVERITY_RANK.get(t.alert.severity, 0), channel, now)

    def _escalate_to(self, t: Tracked, level: int, now: int) -> None:
        t.level = level
        t.level_since = now
        rule = self.rule_of(t)
        if rule is not None and level < len(chain := rule.chain()):
            for channel in chain[level]:
                self._owe(t, "escalated", level, channel, now)

    def _owe(self, t: Tracked, kind: NoticeKind, n: int, channel: str, now: int) -> None:
        key = f"{t.alert_id}|{kind}|{n}|{channel}"
        if key in t.sent or any(o.key == key for o in t.owed):
            return
        t.owed.append(Notice(key, channel, kind, t.level, now))

    def _touch(self, t: Tracked) -> None:
        self.dirty.add(t.alert_id)
        if t.owed:
            self._owing.add(t.alert_id)
        else:
            self._owing.discard(t.alert_id)

    # -- delivery ----------------------------------------------------------------------------

    def due(self, now: int, waiting: Mapping[str, int] | None = None) -> list[Due]:
        """Per channel, everything owed to it once its oldest notice has been held ``hold_s``
        (what arrived meanwhile goes with it); snoozed alerts' notices wait. ``waiting`` maps a
        channel to the time before which it is not to be tried (a channel in backoff)."""
        by_channel: dict[str, list[tuple[Tracked, Notice]]] = defaultdict(list)
        for alert_id in self._owing:
            t = self.alerts[alert_id]
            if t.status == "active" and t.snoozed(now):
                continue
            for notice in t.owed:
                by_channel[notice.channel].append((t, notice))
        ready: list[Due] = []
        for channel, items in sorted(by_channel.items()):
            if waiting is not None and waiting.get(channel, 0) > now:
                continue
            if min(n.created_ms for _, n in items) + self.hold_ms <= now:
                items.sort(key=lambda item: (item[1].created_ms, item[1].key))
                ready.append(Due(channel, items))
        return ready

    def delivered(self, items: Iterable[tuple[Tracked, Notice]], now: int) -> None:
        """Record notices as delivered: no longer owed, their keys remembered."""
        for t, notice in items:
            t.owed = [n for n in t.owed if n.key != notice.key]
            t.sent = [*t.sent, notice.key][-_SENT_KEPT:]
            if notice.channel not in t.told:
                t.told = [*t.told, notice.channel]
            t.last_told = now
            self._touch(t)

    def failed(self, items: Iterable[tuple[Tracked, Notice]], reason: str, *,
               retriable: bool) -> list[tuple[Tracked, Notice]]:
        """Record a failed attempt at ``items``; returns those given up (a permanent refusal, or
        ``max_attempts`` reached), no longer owed: the caller dead-letters them."""
        given_up: list[tuple[Tracked, Notice]] = []
        for t, notice in items:
            again = msgspec.structs.replace(notice, attempts=notice.attempts + 1, error=reason[:300])
            if not retriable or again.attempts >= self.max_attempts:
                t.owed = [n for n in t.owed if n.key != notice.key]
                given_up.append((t, again))
            else:
                t.owed = [again if n.key == notice.key else n for n in t.owed]
            self._touch(t)
        return given_up

    # -- persistence -------------------------------------------------------------------------

    def changes(self) -> list[tuple[str, int, bytes | None]]:
        """``(alert_id, partition, record or None for a deletion)`` of every record changed
        since :meth:`written`; the caller writes them, then calls :meth:`written`."""
        out: list[tuple[str, int, bytes | None]] = [
            (alert_id, self.alerts[alert_id].partition, encode_tracked(self.alerts[alert_id]))
            for alert_id in sorted(self.dirty)]
        out.extend((alert_id, partition, None) for alert_id, partition in sorted(self.forgotten.items()))
        return out

    def written(self, changes: Iterable[tuple[str, int, bytes | None]]) -> None:
        """Those records are durable now."""
        for alert_id, _partition, value in changes:
            if value is None:
                self.forgotten.pop(alert_id, None)
            else:
                self.dirty.discard(alert_id)

    def load(self, tracked: Tracked) -> None:
        """Take a record read back from ``notify.state`` (a restart or a new assignment)."""
        self.alerts[tracked.alert_id] = tracked
        if tracked.owed:
            self._owing.add(tracked.alert_id)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget (in memory only) the alerts of partitions this notifier no longer reads."""
        gone = set(partitions)
        for alert_id in [a for a, t in self.alerts.items() if t.partition in gone]:
            del self.alerts[alert_id]
            self._owing.discard(alert_id)
            self.dirty.discard(alert_id)
