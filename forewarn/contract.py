"""The message contract: typed, frozen messages and a validating decoder.

Every message is JSON (UTF-8) with a schema version ``v``. Decoding never raises on bad
input: it returns a :class:`Rejected` record carrying a :class:`Reason` code and the
original bytes, so a bad payload can flow to the dead-letter topic instead of stopping a
stream (errors are data).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "LIFECYCLE_STATES",
    "PIPELINE_OUTCOMES",
    "PIPELINE_RESETS",
    "SCHEMA_VERSION",
    "SEVERITY_RANK",
    "WORK_ORDER_EVENTS",
    "Alert",
    "AlertSeverity",
    "AlertState",
    "DecodeLimits",
    "Decoder",
    "GatewayBatch",
    "MaintenanceEvent",
    "MaintenanceKind",
    "NotifyPreference",
    "PipelineStats",
    "Prediction",
    "Reason",
    "Rejected",
    "Telemetry",
    "WorkOrder",
    "WorkOrderOutcome",
    "encode",
    "model_refused_alert",
    "site_of",
    "work_order_maintenance",
]

SCHEMA_VERSION: Final = 1

# Event time bounds: 2000-01-01 .. 2100-01-01 UTC, in epoch milliseconds. Beyond these fixed
# bounds, event time is checked against arrival time (see DecodeLimits).
TS_MIN_MS: Final = 946_684_800_000
TS_MAX_MS: Final = 4_102_444_800_000
# Counters (seq, boot) fit a signed 64-bit integer, so every consumer can hold them in int64.
SEQ_MAX: Final = 2**63 - 1
# Sensor and setting values are bounded in magnitude: beyond this no physical quantity is
# meant, and float32 model inputs (max ~3.4e38) stay finite after scaling.
VALUE_MAX: Final = 1e15

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^/\s#+]+/[^/\s#+]+$")]
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
_Counter = Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)]
_Key = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
_Value = Annotated[float, msgspec.Meta(ge=-VALUE_MAX, le=VALUE_MAX)]
_Values = Annotated[dict[_Key, _Value], msgspec.Meta(max_length=256)]


class Reason(enum.StrEnum):
    """Why a payload was rejected; the value is what goes into the dead-letter headers."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_VALUE = "bad_value"
    NON_FINITE = "non_finite"
    TOO_LARGE = "too_large"
    TS_OUT_OF_RANGE = "ts_out_of_range"
    UNKNOWN_VERSION = "unknown_version"
    TOPIC_MISMATCH = "topic_mismatch"
    KAFKA_REFUSED = "kafka_refused"  # valid, but Kafka refused the record for good (e.g. too large)
    UNPROCESSABLE = "unprocessable"  # valid, but a consumer could not process it (its detail says why)


class Telemetry(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One reading of one machine. ``ts`` is event time (UTC epoch ms); ``seq`` counts
    readings per machine and, with ``boot``, is the identity used to drop duplicates.

    ``boot`` is an optional restart epoch: a device (or its gateway) that can keep one sends a
    number that grows with every restart (a boot counter, or the boot time in epoch ms), and
    its ``seq`` may start again from 0 with each new ``boot``. A reading with a higher ``boot``
    than the machine's last one starts the machine's window afresh; a lower one is late. For a
    device that sends no ``boot``, a restart is a large ``seq`` regression with a later ``ts``
    (see :mod:`forewarn.windows`).
    """

    v: int
    machine_id: _Id
    asset_type: _Name
    ts: int
    seq: _Counter
    sensors: _Values
    settings: _Values = {}
    boot: _Counter | None = None

    @property
    def site(self) -> str:
        return site_of(self.machine_id)


class GatewayBatch(msgspec.Struct, frozen=True, gc=False):
    """Many readings in one message, as plant gateways send them."""

    v: int
    gateway_id: _Id
    readings: list[Telemetry]


MaintenanceKind = Literal["failure", "repair", "inspection"]


class MaintenanceEvent(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """Ground truth: something that happened to a machine.

    ``event_id`` names the event uniquely (the sender picks it, e.g. a work-order number or a
    UUID); applying the same event twice (a redelivery, a dead-letter replay) is a no-op
    everywhere. Events sent without one are identified by :attr:`identity`: machine, time
    and kind.
    """

    v: int
    machine_id: _Id
    ts: int
    event: MaintenanceKind
    failure_mode: str | None = None
    asset_type: str | None = None
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    outcome: str | None = None  # a closed work order's outcome (see WorkOrder), e.g. false_alarm
    note: str | None = None  # what the person who recorded it wrote

    @property
    def identity(self) -> str:
        """The key that makes applying this event idempotent."""
        return self.event_id if self.event_id is not None else f"{self.machine_id}@{self.ts}/{self.event}"


WorkOrderOutcome = Literal["confirmed_failure", "repaired", "false_alarm", "inspected_fine"]
WORK_ORDER_EVENTS: Final[dict[str, MaintenanceKind]] = {
    "confirmed_failure": "failure", "repaired": "repair", "false_alarm": "inspection", "inspected_fine": "inspection"}
"""The maintenance event a closed work order writes, by its outcome."""


class WorkOrder(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One state of a work order (the ``workorders`` topic, compacted, keyed by ``work_order_id``).

    Opened from an alert or a machine page (``status`` ``open``), closed with an outcome
    (``closed``); closing writes its maintenance event (:func:`work_order_maintenance`) first."""

    v: int
    work_order_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    machine_id: str
    status: Literal["open", "closed"]
    opened_at: int
    opened_by: str
    ts: int  # when this state was written
    alert_id: str | None = None
    asset_type: str | None = None
    title: str | None = None
    closed_by: str | None = None
    outcome: WorkOrderOutcome | None = None
    failure_mode: str | None = None
    note: str | None = None


def work_order_maintenance(order: WorkOrder) -> MaintenanceEvent:
    """The maintenance event (ground truth) of a closed work order: a confirmed failure with its
    mode, a repair, or an inspection (a false alarm, or inspected and fine), dated at closing and
    identified by the work order (``event_id`` ``wo:<id>``), so writing it twice applies it once."""
    if order.status != "closed" or order.outcome is None:
        raise ValueError(f"work order {order.work_order_id} is not closed with an outcome")
    mode = order.failure_mode if order.outcome == "confirmed_failure" else None
    return MaintenanceEvent(SCHEMA_VERSION, order.machine_id, order.ts, WORK_ORDER_EVENTS[order.outcome], mode,
                            order.asset_type, f"wo:{order.work_order_id}", order.outcome, order.note)


class NotifyPreference(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One user's notification preferences (the ``notify.preferences`` topic, compacted, keyed
    by ``user``, the dashboard user name), set on the dashboard and followed by the notifier:
    with ``email`` and ``assigned``, an alert assigned to the user is also emailed to them."""

    v: int
    user: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    ts: int
    email: Annotated[str, msgspec.Meta(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    assigned: bool = True


class Prediction(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A model's output for the window ending at reading (machine_id, seq)."""

    v: int
    machine_id: str
    asset_type: str
    ts: int
    seq: int
    model: str
    model_version: str
    scored_at: int
    p_fail: float | None = None
    rul: float | None = None
    ingest_ts: int | None = None


AlertState = Literal["open", "update", "resolved", "acknowledged", "assigned", "snoozed", "escalated"]
"""What one alert event says. Scorers emit ``open``, ``update`` (severity or evidence changed) and
``resolved``; people (the dashboard) emit ``acknowledged``, ``assigned`` (``assigned_to``) and
``snoozed`` (``snoozed_until``; a time already past ends a snooze); the notifier emits
``escalated`` (``escalation``: the level now notified). An alert is active until ``resolved``;
the other events change who is told and when, never whether it is active."""
LIFECYCLE_STATES: Final = ("acknowledged", "assigned", "snoozed", "escalated")
"""The states that record what people and the notifier did, not what the machine does: they
carry the alert's last evidence unchanged."""
AlertSeverity = Literal["info", "warning", "critical"]
SEVERITY_RANK: Final = {"info": 0, "warning": 1, "critical": 2}


class Alert(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One event in an alert's life; all events of one alert share ``alert_id``.

    The fields after ``note`` are optional and omitted when unset, so events written before they
    existed decode unchanged and new ones read the same to every consumer."""

    v: int
    alert_id: str
    machine_id: str
    state: AlertState
    severity: AlertSeverity
    rule: str
    opened_at: int
    ts: int
    model: str | None = None
    model_version: str | None = None
    asset_type: str | None = None
    p_fail: float | None = None
    rul: float | None = None
    message: str | None = None
    acknowledged_by: str | None = None
    note: str | None = None  # what the acknowledging user wrote (``acknowledged`` events)
    actor: str | None = None  # who made a lifecycle change (a user, or the notifier for ``escalated``)
    assigned_to: str | None = None  # ``assigned``: the user now responsible (empty: unassigned)
    snoozed_until: int | None = None  # ``snoozed``: quiet until this time (epoch ms)
    escalation: int | None = None  # ``escalated``: the escalation level now notified (1 = the first step)


def model_refused_alert(asset_type: str, version: str | None, role: str, reason: str, detail: str,
                        now_ms: int) -> Alert:
    """The alert event a scorer (worker or edge) emits when it refuses a model bundle: machine
    ``models/<asset type>``, rule ``model_refused``, the reason in ``message``."""
    return Alert(SCHEMA_VERSION, f"model/{asset_type}/{version or 'unknown'}/refused", f"models/{asset_type}", "open",
                 "warning", "model_refused", now_ms, now_ms, asset_type, version, asset_type,
                 message=f"{role} bundle refused ({reason}): {detail}"[:1000])


PIPELINE_OUTCOMES: Final = ("scored", "duplicate", "late", "warmup", "stride", "unscorable", "rejected")
"""The keys of :attr:`PipelineStats.counts`: every reading a scorer consumed is counted once, under one."""
PIPELINE_RESETS: Final = ("restart", "gap")
"""The keys of :attr:`PipelineStats.resets`."""


class PipelineStats(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """What one scorer (a scoring worker or an edge gateway) did with the readings it consumed
    between ``since`` and ``until`` (epoch ms): ``counts`` maps an outcome to a number of
    readings — ``scored``, and the reasons a reading was not scored (``duplicate``, ``late``,
    ``warmup`` while a window fills after a start, restart or gap, ``stride`` when the scorer
    scores every n-th window only, ``unscorable`` when no model could score it or its output was
    not finite, ``rejected`` when it was dead-lettered) — and ``resets`` maps why a machine's
    window started afresh (``restart``, ``gap``) to how often."""

    v: int
    source: str
    role: Literal["scoring", "edge"]
    since: int
    until: int
    counts: dict[str, int]
    resets: dict[str, int] = {}


class Rejected(msgspec.Struct, frozen=True, gc=False):
    """A payload (or one reading of a batch) that did not pass validation."""

    reason: Reason
    detail: str
    raw: bytes


class DecodeLimits(msgspec.Struct, frozen=True):
    """Size and time bounds enforced by :class:`Decoder`.

    Event time must lie within the fixed bounds ``ts_min_ms .. ts_max_ms`` and, relative to
    the message's arrival time, at most ``max_future_ms`` ahead of it (clock skew) and at most
    ``max_age_ms`` behind it (a device whose clock reset to 2000); ``None`` turns that check off.
    A maintenance event reports something that has happened, so its time may run ahead of its
    arrival by ``maintenance_max_future_ms`` only (clock skew), whatever ``max_future_ms`` allows
    readings: a repair dated ahead would otherwise resolve alerts that open before that time.
    The past is open by default: a gateway's backlog after a months-long outage, a replay of old
    history and offline training all carry old event times legitimately.
    """

    max_message_bytes: int = 16 * 1024
    max_batch_bytes: int = 4 * 1024 * 1024
    ts_min_ms: int = TS_MIN_MS
    ts_max_ms: int = TS_MAX_MS
    max_future_ms: int | None = 5 * 60 * 1000
    max_age_ms: int | None = None
    maintenance_max_future_ms: int | None = 60 * 1000

    def ts_window(self, arrived_ms: int) -> tuple[int, int]:
        """The accepted event-time range ``(lo, hi)`` for a message that arrived at ``arrived_ms``."""
        lo, hi = self.ts_min_ms, self.ts_max_ms
        if self.max_age_ms is not None:
            lo = max(lo, arrived_ms - self.max_age_ms)
        if self.max_future_ms is not None:
            hi = min(hi, arrived_ms + self.max_future_ms)
        return lo, hi

    def maintenance_ts_window(self, arrived_ms: int) -> tuple[int, int]:
        """The accepted event-time range of a maintenance event that arrived at ``arrived_ms``."""
        lo, hi = self.ts_window(arrived_ms)
        if self.maintenance_max_future_ms is not None:
            hi = min(hi, arrived_ms + self.maintenance_max_future_ms)
        return lo, hi


class _Version(msgspec.Struct):
    v: object = None


class _RawBatch(msgspec.Struct, frozen=True, gc=False):
    v: int
    gateway_id: _Id
    readings: list[msgspec.Raw]


_encoder = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    """Serialise any contract message to compact JSON bytes."""
    return _encoder.encode(message)


def site_of(machine_id: str) -> str:
    """``"site-a/pump-0042"`` → ``"site-a"``."""
    return machine_id.partition("/")[0]


_NON_FINITE_TOKENS: Final = (b"NaN", b"Infinity")


def _reason_for(error: msgspec.MsgspecError, raw: bytes) -> Reason:
    text = str(error)
    if not isinstance(error, msgspec.ValidationError):
        # JSON has no NaN/Infinity; encoders that emit them anyway make malformed JSON.
        return Reason.NON_FINITE if any(t in raw for t in _NON_FINITE_TOKENS) else Reason.NOT_JSON
    if "Number out of range" in text:
        return Reason.NON_FINITE
    if "missing required field" in text:
        return Reason.MISSING_FIELD
    if "length <=" in text:
        return Reason.TOO_LARGE
    if "Expected `object`, got" in text and " - at `$" not in text:
        return Reason.NOT_OBJECT
    if ">=" in text or "<=" in text or "matching regex" in text or "length >=" in text:
        return Reason.BAD_VALUE
    return Reason.WRONG_TYPE


def _all_finite(values: dict[str, float]) -> bool:
    # One sum is much cheaper than a check per value; only when it is not finite do we
    # look closer (a sum of huge finite values can overflow).
    if math.isfinite(sum(values.values())):
        return True
    return all(math.isfinite(x) for x in values.values())


class Decoder:
    """Validating decoder for every inbound message type. Reuse one instance: the
    msgspec decoders it holds are compiled once."""

    def __init__(self, limits: DecodeLimits | None = None, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits or DecodeLimits()
        self._clock = clock  # seconds since the epoch: the arrival time when a caller gives none
        self._telemetry = msgspec.json.Decoder(Telemetry)
        self._batch = msgspec.json.Decoder(_RawBatch)
        self._maintenance = msgspec.json.Decoder(MaintenanceEvent)
        self._version = msgspec.json.Decoder(_Version)

    # -- helpers -------------------------------------------------------------------------

    def _rejected_from(self, error: msgspec.MsgspecError, raw: bytes) -> Rejected:
        reason = _reason_for(error, raw)
        if reason in (Reason.MISSING_FIELD, Reason.WRONG_TYPE, Reason.BAD_VALUE):
            # A payload of another schema version usually fails on its shape first.
            try:
                version = self._version.decode(raw).v
            except msgspec.MsgspecError:
                version = SCHEMA_VERSION
            if version is not None and version != SCHEMA_VERSION:
                return Rejected(Reason.UNKNOWN_VERSION, f"schema version {version!r}", raw)
        return Rejected(reason, str(error)[:300], raw)

    def arrival_ms(self) -> int:
        """Now, by the decoder's clock, in epoch milliseconds."""
        return int(self._clock() * 1000)

    def _check_ts(self, ts: int, raw: bytes, arrived_ms: int | None, maintenance: bool = False) -> Rejected | None:
        arrived = self.arrival_ms() if arrived_ms is None else arrived_ms
        lo, hi = (self.limits.maintenance_ts_window if maintenance else self.limits.ts_window)(arrived)
        if lo <= ts <= hi:
            return None
        return Rejected(Reason.TS_OUT_OF_RANGE, f"ts {ts} outside {lo}..{hi} (arrival time bounds)", raw)

    def _check_reading(self, reading: Telemetry, raw: bytes, arrived_ms: int | None) -> Telemetry | Rejected:
        if reading.v != SCHEMA_VERSION:
            return Rejected(Reason.UNKNOWN_VERSION, f"schema version {reading.v!r}", raw)
        bad_ts = self._check_ts(reading.ts, raw, arrived_ms)
        if bad_ts is not None:
            return bad_ts
        if not _all_finite(reading.sensors) or (reading.settings and not _all_finite(reading.settings)):
            return Rejected(Reason.NON_FINITE, "a sensor or setting value is NaN or infinite", raw)
        return reading

    # -- public API ----------------------------------------------------------------------

    def telemetry(self, raw: bytes, arrived_ms: int | None = None) -> Telemetry | Rejected:
        """Decode one reading that arrived at ``arrived_ms`` (default: now)."""
        if len(raw) > self.limits.max_message_bytes:
            return Rejected(Reason.TOO_LARGE, f"{len(raw)} bytes > {self.limits.max_message_bytes}", raw)
        try:
            reading = self._telemetry.decode(raw)
        except msgspec.MsgspecError as error:
            return self._rejected_from(error, raw)
        except RecursionError:
            return Rejected(Reason.TOO_LARGE, "nesting too deep", raw)
        return self._check_reading(reading, raw, arrived_ms)

    def batch(self, raw: bytes, arrived_ms: int | None = None) -> tuple[str | None, list[Telemetry], list[Rejected]]:
        """Decode a gateway batch (arrived at ``arrived_ms``, default now) into its good
        readings and its rejected ones.

        One bad reading does not sink the others: each is validated on its own and a bad
        one comes back as a :class:`Rejected` holding just that reading's bytes. When the
        envelope itself is bad, the whole payload is one rejection and the gateway id is
        ``None``.
        """
        if len(raw) > self.limits.max_batch_bytes:
            return None, [], [Rejected(Reason.TOO_LARGE, f"{len(raw)} bytes > {self.limits.max_batch_bytes}", raw)]
        try:
            envelope = self._batch.decode(raw)
        except msgspec.MsgspecError as error:
            return None, [], [self._rejected_from(error, raw)]
        except RecursionError:
            return None, [], [Rejected(Reason.TOO_LARGE, "nesting too deep", raw)]
        if envelope.v != SCHEMA_VERSION:
            return None, [], [Rejected(Reason.UNKNOWN_VERSION, f"schema version {envelope.v!r}", raw)]
        good: list[Telemetry] = []
        bad: list[Rejected] = []
        arrived = self.arrival_ms() if arrived_ms is None else arrived_ms
        for item in envelope.readings:
            item_raw = bytes(item)
            result = self.telemetry(item_raw, arrived)
            (bad if isinstance(result, Rejected) else good).append(result)  # type: ignore[arg-type]
        return envelope.gateway_id, good, bad

    def maintenance(self, raw: bytes, arrived_ms: int | None = None) -> MaintenanceEvent | Rejected:
        """Decode one maintenance event that arrived at ``arrived_ms`` (default: now)."""
        if len(raw) > self.limits.max_message_bytes:
            return Rejected(Reason.TOO_LARGE, f"{len(raw)} bytes > {self.limits.max_message_bytes}", raw)
        try:
            event = self._maintenance.decode(raw)
        except msgspec.MsgspecError as error:
            return self._rejected_from(error, raw)
        except RecursionError:
            return Rejected(Reason.TOO_LARGE, "nesting too deep", raw)
        if event.v != SCHEMA_VERSION:
            return Rejected(Reason.UNKNOWN_VERSION, f"schema version {event.v!r}", raw)
        return self._check_ts(event.ts, raw, arrived_ms, maintenance=True) or event
