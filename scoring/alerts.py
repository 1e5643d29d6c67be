"""Alert rules as a per-machine state machine.

Two rules per machine: ``p_fail`` (the failure probability) and ``rul`` (remaining useful
life; only when a limit is configured). For each rule and machine:

* **open** when the rule is *hot* for ``consecutive`` predictions in a row (``p_fail >=
  threshold``, or ``rul < rul_below``) and no alert of that rule is open: one open alert per
  machine and rule, never a storm;
* **update** while open, only when the severity changes (``warning`` ↔ ``critical``);
* **resolve** after ``resolve_consecutive`` predictions in a row have recovered past the
  hysteresis band (``p_fail < threshold - hysteresis``; ``rul >= rul_below * (1 +
  rul_hysteresis)``), or at once on a ``repair`` maintenance event.

After a repair, predictions with ``ts`` at or before the repair are ignored and the next
``quiet_after_repair`` predictions cannot open an alert (their windows still hold readings
from before the repair). Every event carries the evidence (p_fail, rul) and the model
version. The state is explicit (:class:`MachineAlerts`) so it goes into the changelog.

Repairs are idempotent and time-safe:

* a repair is applied once per identity (:attr:`forewarn.contract.MaintenanceEvent.identity`):
  a redelivered or replayed repair resolves nothing, and does not quiet the machine again.
  A machine remembers its last :data:`REMEMBERED_REPAIRS` identities, and an event older than
  its last repair is not applied either;
* a repair resolves only the alerts opened at or before its time: an alert opened by later
  predictions (a repair record that arrived late) stays open;
* a repair dated after the latest event time the caller can accept (``latest``: its clock plus
  the arrival bound) is refused, not applied (the decoder has already sent events dated ahead
  of their arrival to the dead letters), and a repair time restored from a state saved before
  is cut to that bound, so no event time ahead of the stream silences a machine. No rule
  compares with the largest event time seen.

Scores that are not finite are ignored (the engine never passes one; the rules are safe anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from forewarn.contract import SCHEMA_VERSION, Alert, AlertSeverity, AlertState

__all__ = ["REMEMBERED_REPAIRS", "AlertEngine", "AlertRules", "MachineAlerts", "RuleState"]

log = logging.getLogger(__name__)

RULES = ("p_fail", "rul")
REMEMBERED_REPAIRS = 16  # repair identities kept per machine


class RuleState(msgspec.Struct, array_like=True):
    """One rule of one machine."""

    streak: int = 0  # hot predictions in a row (while closed)
    calm: int = 0  # recovered predictions in a row (while open)
    alert_id: str | None = None
    opened_at: int = 0
    severity: str = "warning"


class MachineAlerts(msgspec.Struct, array_like=True):
    """Every rule of one machine, plus the repair bookkeeping."""

    rules: dict[str, RuleState] = msgspec.field(default_factory=dict)
    repair_ts: int = -1
    quiet: int = 0
    repairs: list[str] = msgspec.field(default_factory=list)  # identities of the last repairs applied

    def idle(self) -> bool:
        """No rule state and not quiet: predictions cannot change anything but a hot one."""
        return self.quiet == 0 and all(r.streak == 0 and r.alert_id is None for r in self.rules.values())

    def empty(self) -> bool:
        """Nothing worth keeping (no repair remembered either)."""
        return self.idle() and self.repair_ts < 0 and not self.repairs


@dataclass(frozen=True)
class AlertRules:
    """Thresholds for one model (from its bundle, overridden by settings)."""

    p_fail: float = 0.5
    consecutive: int = 3
    rul_below: float | None = None
    hysteresis: float = 0.1
    rul_hysteresis: float = 0.2
    resolve_consecutive: int = 3
    critical_p_fail: float = 0.9
    critical_rul_fraction: float = 0.5
    quiet_after_repair: int = 0


@dataclass(frozen=True)
class Scored:
    """Predictions of one batch for one model, as parallel arrays (in per-machine order)."""

    machine_ids: Sequence[str]
    ts: npt.NDArray[np.int64]
    p_fail: npt.NDArray[np.float32] | None
    rul: npt.NDArray[np.float32] | None
    model: str
    model_version: str
    asset_type: str


class AlertEngine:
    """Holds :class:`MachineAlerts` per machine and turns predictions into alert events.

    :attr:`machines` holds every machine with state (an idle one too, while it remembers a
    repair); :attr:`active` the ones whose state is not idle, which every prediction must see."""

    def __init__(self) -> None:
        self.machines: dict[str, MachineAlerts] = {}
        self.active: set[str] = set()
        self.opened = 0

    # -- state -----------------------------------------------------------------------------

    def get(self, machine_id: str) -> MachineAlerts | None:
        return self.machines.get(machine_id)

    def put(self, machine_id: str, state: MachineAlerts | None) -> None:
        if state is None:
            self.machines.pop(machine_id, None)
            self.active.discard(machine_id)
        else:
            self.machines[machine_id] = state
            self._settle(machine_id, state)

    def forget(self, machine_ids: Sequence[str]) -> None:
        for m in machine_ids:
            self.machines.pop(m, None)
            self.active.discard(m)

    def _settle(self, machine: str, state: MachineAlerts) -> None:
        """File ``machine`` as active, idle or gone, after its state changed."""
        if not state.idle():
            self.active.add(machine)
            return
        self.active.discard(machine)
        if state.empty():
            self.machines.pop(machine, None)

    # -- events ----------------------------------------------------------------------------

    def observe(self, scored: Scored, rules: AlertRules, latest: int | None = None) -> tuple[list[Alert], set[str]]:
        """Apply one batch of predictions; returns the alert events and the machines whose
        alert state changed. Machines with nothing hot and no active state are skipped in
        numpy. ``latest``: the latest event time the caller accepts (a repair time beyond it is
        cut to it); ``None``: no bound."""
        n = len(scored.machine_ids)
        if n == 0:
            return [], set()
        finite = np.ones(n, dtype=np.bool_)
        hot = np.zeros(n, dtype=np.bool_)
        if scored.p_fail is not None:
            finite &= np.isfinite(scored.p_fail)
            hot |= scored.p_fail >= rules.p_fail
        if scored.rul is not None:
            finite &= np.isfinite(scored.rul)
            if rules.rul_below is not None:
                hot |= scored.rul < rules.rul_below
        hot &= finite
        known = self.machines
        ids = scored.machine_ids
        # Every prediction of a machine that has active state or turns hot in this batch is
        # needed (a cold one resets a streak); the others are skipped without a Python loop.
        interesting = self.active.union(ids[i] for i in np.flatnonzero(hot).tolist())
        if not interesting:
            return [], set()
        needed = np.fromiter((m in interesting for m in ids), dtype=np.bool_, count=n) & finite
        events: list[Alert] = []
        changed: set[str] = set()
        for i in np.flatnonzero(needed).tolist():
            machine = scored.machine_ids[i]
            state = known.get(machine)
            if state is None:
                state = MachineAlerts()
                known[machine] = state
            p = None if scored.p_fail is None else float(scored.p_fail[i])
            r = None if scored.rul is None else float(scored.rul[i])
            if latest is not None and state.repair_ts > latest:
                state.repair_ts = latest  # saved before repairs were bounded
            self._one(machine, int(scored.ts[i]), p, r, state, rules, scored, events)
            changed.add(machine)
            self._settle(machine, state)
        return events, changed

    def _one(self, machine: str, ts: int, p: float | None, r: float | None, state: MachineAlerts,
             rules: AlertRules, scored: Scored, events: list[Alert]) -> None:
        if ts <= state.repair_ts:
            return  # a late reading from before the last repair
        can_open = state.quiet == 0
        if state.quiet > 0:
            state.quiet -= 1
        for rule in RULES:
            if rule == "p_fail":
                if p is None:
                    continue
                is_hot = p >= rules.p_fail
                recovered = p < rules.p_fail - rules.hysteresis
                critical = p >= rules.critical_p_fail
            else:
                if r is None or rules.rul_below is None:
                    continue
                is_hot = r < rules.rul_below
                recovered = r >= rules.rul_below * (1.0 + rules.rul_hysteresis)
                critical = r < rules.rul_below * rules.critical_rul_fraction
            rs = state.rules.get(rule)
            if rs is None:
                if not is_hot:
                    continue
                rs = state.rules[rule] = RuleState()
            severity: AlertSeverity = "critical" if critical else "warning"
            if rs.alert_id is None:
                rs.streak = rs.streak + 1 if is_hot else 0
                if rs.streak >= rules.consecutive and can_open:
                    rs.alert_id = f"{machine}/{rule}/{ts}"
                    rs.opened_at, rs.severity, rs.streak, rs.calm = ts, severity, 0, 0
                    self.opened += 1
                    events.append(self._event(machine, rule, rs, "open", ts, p, r, scored,
                                              f"{rule} rule hot for {rules.consecutive} predictions"))
            else:
                rs.calm = rs.calm + 1 if recovered else 0
                if rs.calm >= rules.resolve_consecutive:
                    events.append(self._event(machine, rule, rs, "resolved", ts, p, r, scored,
                                              f"{rule} recovered for {rules.resolve_consecutive} predictions"))
                    rs.alert_id, rs.calm, rs.streak = None, 0, 0
                elif is_hot and severity != rs.severity:
                    rs.severity = severity
                    events.append(self._event(machine, rule, rs, "update", ts, p, r, scored, f"severity {severity}"))
            if rs.alert_id is None and rs.streak == 0:
                del state.rules[rule]

    def repair(self, machine: str, ts: int, quiet: int, identity: str | None = None,
               latest: int | None = None) -> list[Alert]:
        """A repair resolves the machine's alerts opened at or before ``ts`` and quiets it for a
        while; once per ``identity`` (default: machine and time), never one older than the last
        repair. ``latest``: the latest event time the caller accepts (a later repair is refused)."""
        state = self.machines.get(machine)
        if latest is not None and state is not None and state.repair_ts > latest:
            state.repair_ts = latest  # saved before repairs were bounded
        if latest is not None and ts > latest:
            log.warning("a repair of %s dated %s ms ahead of the latest accepted event time is refused",
                        machine, ts - latest)
            return []
        identity = identity if identity is not None else f"{machine}@{ts}/repair"
        if state is None:
            state = self.machines[machine] = MachineAlerts()
        if identity in state.repairs or ts < state.repair_ts:
            return []  # applied already, or overtaken by a later repair
        events: list[Alert] = []
        for rule, rs in list(state.rules.items()):
            if rs.alert_id is not None and rs.opened_at > ts:
                continue  # opened by predictions after the repair: not what it repaired
            if rs.alert_id is not None:
                events.append(Alert(SCHEMA_VERSION, rs.alert_id, machine, "resolved", _sev(rs.severity), rule,
                                    rs.opened_at, ts, message="repaired"))
            del state.rules[rule]
        state.repair_ts = ts
        state.quiet = quiet
        state.repairs = [*state.repairs[-(REMEMBERED_REPAIRS - 1):], identity]
        self._settle(machine, state)
        return events

    @staticmethod
    def _event(machine: str, rule: str, rs: RuleState, kind: AlertState, ts: int, p: float | None, r: float | None,
               scored: Scored, message: str) -> Alert:
        return Alert(SCHEMA_VERSION, rs.alert_id or "", machine, kind, _sev(rs.severity), rule, rs.opened_at, ts,
                     scored.model, scored.model_version, scored.asset_type, p, r, message)


def _sev(value: str) -> AlertSeverity:
    return "critical" if value == "critical" else "warning"
