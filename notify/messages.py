"""What a channel sends: one :class:`Outgoing` per notice, or one digest for many.

The same content serves every channel: a title and a plain-text body (email, chat) and a JSON
document (webhook). A digest lists up to ``digest_lines`` alerts in its text and every one in
its JSON; its idempotency key names every notice it carries, so a digest re-sent after a crash
has the same key as long as it carries the same notices.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec

from forewarn.contract import SEVERITY_RANK, site_of
from notify.book import Notice, Tracked

__all__ = ["Outgoing", "render"]

_VERBS = {"opened": "alert opened", "raised": "severity raised", "escalated": "escalated, not acknowledged",
          "reminder": "still not acknowledged", "resolved": "resolved", "assigned": "assigned to you"}


@dataclass(frozen=True)
class Outgoing:
    """One message to one channel."""

    channel: str
    key: str  # the idempotency key
    title: str
    body: str
    document: dict[str, Any]  # the webhook's JSON
    severity: str  # the worst severity it carries (for Apprise's notification type)
    count: int  # notices carried

    @property
    def digest(self) -> bool:
        return self.count > 1


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _line(t: Tracked, notice: Notice) -> str:
    a = t.alert
    evidence = [f"p_fail {a.p_fail:.2f}" if a.p_fail is not None else "",
                f"rul {a.rul:.1f}" if a.rul is not None else ""]
    detail = ", ".join(x for x in evidence if x)
    return (f"[{a.severity.upper()}] {a.machine_id} ({a.asset_type or 'unknown type'}): {_VERBS[notice.kind]}"
            f" · {a.rule}" + (f" · {detail}" if detail else ""))


def _entry(t: Tracked, notice: Notice) -> dict[str, Any]:
    return {"key": notice.key, "kind": notice.kind, "level": notice.level, "rule": t.rule,
            "assigned_to": t.assigned_to, "alert": msgspec.to_builtins(t.alert)}


def render(channel: str, items: list[tuple[Tracked, Notice]], *, digest_min: int, digest_lines: int,
           dashboard_url: str | None = None) -> list[Outgoing]:
    """The messages for the notices due to ``channel``: one each, or one digest when there
    are ``digest_min`` or more."""
    if len(items) < digest_min:
        return [_single(channel, t, n, dashboard_url) for t, n in items]
    return [_digest(channel, items, digest_lines, dashboard_url)]


def _single(channel: str, t: Tracked, notice: Notice, dashboard_url: str | None) -> Outgoing:
    a = t.alert
    lines = [_line(t, notice), "",
             f"alert {a.alert_id}, opened {_when(a.opened_at)} (event time)",
             f"model {a.model or '-'} {a.model_version or ''}".rstrip()]
    if a.message:
        lines.append(a.message)
    if t.assigned_to:
        lines.append(f"assigned to {t.assigned_to}")
    if notice.kind in ("escalated", "reminder"):
        lines.append("acknowledge it on the dashboard to stop escalations and reminders")
    if dashboard_url:
        lines.append(f"{dashboard_url.rstrip('/')}/alerts")
    document = {"v": 1, "type": "notification", "key": notice.key, "channel": channel,
                "notifications": [_entry(t, notice)]}
    return Outgoing(channel, notice.key, _line(t, notice), "\n".join(lines), document, a.severity, 1)


def _digest(channel: str, items: list[tuple[Tracked, Notice]], digest_lines: int,
            dashboard_url: str | None) -> Outgoing:
    keys = sorted(n.key for _, n in items)
    key = "digest|" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32] + "|" + channel
    sites = Counter(site_of(t.alert.machine_id) for t, _ in items)
    kinds = Counter(n.kind for _, n in items)
    worst = max((t.alert.severity for t, _ in items), key=lambda s: SEVERITY_RANK.get(s, 0))
    title = (f"Forewarn digest: {len(items)} alert notifications ("
             + ", ".join(f"{site} {n}" for site, n in sorted(sites.items())) + ")")
    ranked = sorted(items, key=lambda item: (-SEVERITY_RANK.get(item[0].alert.severity, 0), item[0].alert.machine_id))
    lines = [", ".join(f"{n} {_VERBS[k]}" for k, n in sorted(kinds.items())), ""]
    lines += [_line(t, n) for t, n in ranked[:digest_lines]]
    if len(items) > digest_lines:
        lines.append(f"... and {len(items) - digest_lines} more")
    if dashboard_url:
        lines.append(f"{dashboard_url.rstrip('/')}/alerts")
    document = {"v": 1, "type": "digest", "key": key, "channel": channel, "count": len(items),
                "notifications": [_entry(t, n) for t, n in ranked]}
    return Outgoing(channel, key, title, "\n".join(lines), document, worst, len(items))
