"""Prometheus metrics of the notifier, on the shared endpoint.

``forewarn_notify_deliveries{channel,outcome}``: messages sent (``delivered``), failed attempts
(``failed``, retried with backoff) and notices given up (``dead_lettered``, each also a record
on ``notify.dlq``). ``forewarn_notify_notices{kind}``: notices delivered, by kind (``opened``,
``escalated``, ``reminder``, ``resolved``); a digest counts each notice it carried.
``forewarn_notify_digests{channel}``: digests delivered. ``forewarn_notify_events{state}``:
alert events consumed; ``forewarn_notify_rejected``: records on the alerts topic that are not
alert events (skipped). ``forewarn_notify_owed``: notices owed now, ``forewarn_notify_tracked``:
alerts tracked now.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from forewarn.metrics import MetricsEndpoint

__all__ = ["NotifyMetrics"]


class NotifyMetrics(MetricsEndpoint):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.deliveries = Counter("forewarn_notify_deliveries", "Notification attempts, by channel and outcome",
                                  ["channel", "outcome"], registry=r)
        self.notices = Counter("forewarn_notify_notices", "Notices delivered, by kind", ["kind"], registry=r)
        self.digests = Counter("forewarn_notify_digests", "Digests delivered", ["channel"], registry=r)
        self.events = Counter("forewarn_notify_events", "Alert events consumed, by state", ["state"], registry=r)
        self.rejected = Counter("forewarn_notify_rejected", "Records on the alerts topic that are not alert events",
                                registry=r)
        self.escalations = Counter("forewarn_notify_escalations", "Escalations emitted", registry=r)
        self.owed = Gauge("forewarn_notify_owed", "Notices owed now", registry=r)
        self.tracked = Gauge("forewarn_notify_tracked", "Alerts tracked now", registry=r)
        self.events_by_state = self.tally(self.events)
        self.notices_by_kind = self.tally(self.notices)
