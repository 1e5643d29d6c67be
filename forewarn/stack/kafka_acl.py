"""Who may do what on the secure stack's Kafka: one table of ACLs, applied by the admin.

The KRaft ``StandardAuthorizer`` denies whatever no ACL allows (``allow.everyone.if.no.acl.found``
is false), so this table is all a component can do. By principal (the SCRAM user is the
principal's name, see :mod:`forewarn.stack.secure`):

============  ===============================================================================
bridge        writes ``telemetry``, ``maintenance`` and the dead letters; reads nothing
scoring       reads ``telemetry``, ``maintenance``, ``models`` and its state changelog; writes
              ``predictions``, ``alerts``, its state, the dead letters and ``pipeline.stats``,
              all in transactions (transactional ids ``<group>.<worker>``); its consumer group
edge          writes what it forwards (``telemetry``, ``maintenance``, ``predictions``,
              ``alerts``, the dead letters, ``pipeline.stats``) and reads ``models`` and the
              topics' configs (its record size limits); its groups ``forewarn-edge-*``
dashboard     reads every topic it shows (``telemetry``, sampled; ``maintenance``,
              ``predictions``, ``alerts``, the dead letters, ``pipeline.stats``, ``models``,
              ``workorders``, ``notify.preferences``) and the scoring group's positions (lag);
              writes ``alerts`` (acknowledgements, assignments, snoozes), ``workorders``,
              ``maintenance`` (a closed work order's event) and ``notify.preferences``
notify        reads ``alerts``, ``notify.preferences`` and its own ``notify.state``; writes
              ``notify.state``, ``notify.dlq`` and ``alerts`` (escalations); its group
              ``forewarn-notify*``
registry      writes and reads ``models``; reads ``telemetry`` and ``maintenance`` (exporting
              training data)
admin         a super user (creates topics, sets logins and ACLs); the brokers themselves are
              ``User:localhost`` (their certificate), also a super user
============  ===============================================================================

``simulator`` has no Kafka login: the plant reaches Kafka only through the bridge.

Limits of what Kafka's ACLs can say, left to the components: the dashboard writes the whole
``alerts`` topic (Kafka cannot restrict a writer to some records; the workers read only their own
events from it), and the groups named ``forewarn-read-*`` that the reading helpers
(:func:`forewarn.kafka.read_to_end`) use are shared by the principals that read.
"""

from __future__ import annotations

from typing import Final

from forewarn.kafka import AclGrant
from forewarn.topics import Topics

__all__ = ["KAFKA_PRINCIPALS", "READ_GROUPS", "grants"]

KAFKA_PRINCIPALS: Final = ("bridge", "scoring", "edge", "dashboard", "registry", "notify")
"""The principals with a Kafka login besides the admin."""

READ_GROUPS: Final = "forewarn-read-"
EDGE_GROUPS: Final = "forewarn-edge-"
EXPORT_GROUPS: Final = "forewarn-export-"


def _topics(principal: str, operation: str, *names: str) -> list[AclGrant]:
    return [AclGrant(principal, operation, "topic", name) for name in names]


def _group(principal: str, prefix: str, operation: str = "read") -> AclGrant:
    return AclGrant(principal, operation, "group", prefix, prefixed=True)


def grants(topics: Topics, scoring_group: str = "forewarn-scoring",
           dashboard_group: str = "forewarn-dashboard", notify_group: str = "forewarn-notify") -> list[AclGrant]:
    """Every ACL of the secure stack for these topic names and group ids."""
    t = topics
    outputs = (t.predictions, t.alerts, t.dlq, t.pipeline)
    table = [
        *_topics("bridge", "write", t.telemetry, t.maintenance, t.dlq),
        *_topics("scoring", "read", t.telemetry, t.maintenance, t.models, t.scoring_state),
        *_topics("scoring", "write", t.predictions, t.alerts, t.scoring_state, t.dlq, t.pipeline),
        _group("scoring", scoring_group), _group("scoring", READ_GROUPS),
        AclGrant("scoring", "write", "transactional_id", f"{scoring_group}.", prefixed=True),
        *_topics("edge", "write", t.telemetry, t.maintenance, *outputs),
        *_topics("edge", "read", t.models),
        *_topics("edge", "describe_configs", t.telemetry, t.maintenance, *outputs),
        _group("edge", EDGE_GROUPS), _group("edge", READ_GROUPS),
        *_topics("dashboard", "read", t.telemetry, t.maintenance, *outputs, t.models),
        *_topics("dashboard", "read", t.workorders, t.notify_preferences),
        *_topics("dashboard", "write", t.alerts, t.workorders, t.maintenance, t.notify_preferences),
        _group("dashboard", dashboard_group), _group("dashboard", READ_GROUPS),
        _group("dashboard", scoring_group, "describe"),
        *_topics("registry", "write", t.models),
        *_topics("registry", "read", t.models, t.telemetry, t.maintenance),
        _group("registry", EXPORT_GROUPS), _group("registry", READ_GROUPS),
        *_topics("notify", "read", t.alerts, t.notify_state, t.notify_preferences),
        *_topics("notify", "write", t.notify_state, t.notify_dlq, t.alerts),
        _group("notify", notify_group), _group("notify", READ_GROUPS),
    ]
    return table
