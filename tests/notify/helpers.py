"""Alerts, rules and a recording channel for the notifier's tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from forewarn.contract import Alert, AlertSeverity, AlertState
from notify.errors import DeliveryFailed
from notify.messages import Outgoing
from notify.settings import Rule

T0 = 1_764_000_000_000  # a Monday, 16:00 UTC


def alert(n: int = 1, state: AlertState = "open", *, site: str = "site-a", severity: AlertSeverity = "critical",
          ts: int = T0, asset_type: str = "pump", **extra: object) -> Alert:
    machine = f"{site}/pump-{n:04d}"
    return Alert(1, f"{machine}:1", machine, state, severity, "p_fail_above", T0, ts, asset_type=asset_type,
                 p_fail=0.9, model="pump", model_version="v1", **extra)  # type: ignore[arg-type]


def rule(**overrides: object) -> Rule:
    values: dict[str, object] = {"name": "all", "channels": ["hook"], "escalation": ["mail"],
                                 "escalate_after_s": 60.0, "repeat_s": 600.0}
    values.update(overrides)
    return Rule.model_validate(values)


@dataclass
class Recorder:
    """A channel that keeps what it was sent; ``down`` makes every send fail (retriable)."""

    name: str
    down: bool = False
    sent: list[Outgoing] = field(default_factory=list)

    def send(self, message: Outgoing) -> None:
        if self.down:
            raise DeliveryFailed(f"{self.name} is down")
        self.sent.append(message)

    def keys(self) -> list[str]:
        return [e["key"] for m in self.sent for e in m.document["notifications"]]
