"""Who may do what on the secure stack's MQTT broker: one table, rendered as Mosquitto's ``acl_file``.

Least privilege, by principal (the MQTT username is the principal's name, see
:mod:`forewarn.stack.secure`):

- ``bridge`` reads the inbound topics (telemetry, gateway batches, maintenance), the three
  ``$SYS`` counters its queue watch reads (:mod:`bridge.broker_watch`), and reads and writes its
  own shared-subscription probe topic ``forewarn/$probe/<client id>`` (:mod:`bridge._mqtt_shared`,
  run only against 3.1.1 brokers, but a bridge may be told to speak 3.1.1);
- ``edge`` reads the inbound topics and writes predictions and alerts;
- ``simulator`` is the plant (its devices, gateways and maintenance system): it writes the
  inbound topics and reads nothing;
- a device writes only ``forewarn/<site>/<machine>/telemetry``, a gateway only
  ``forewarn/<site>/gateway/<id>/batch``, a site's maintenance source only
  ``forewarn/<site>/+/maintenance``; none of them reads anything.

Any other principal (``admin``, ``scoring``, ``dashboard``, ``registry``: they do not use MQTT)
has no MQTT login at all: it is left out of the password file.

How Mosquitto (2.0) applies this, as tested against it (tests/integration/test_secure_mqtt.py):

- A PUBLISH the ACL does not allow is dropped; under MQTT 5 its PUBACK carries reason 0x87 (not
  authorised), under 3.1.1 it is acknowledged as if accepted. Either way no subscriber gets it.
- ``read`` is checked when a message is *delivered*, against the message's own topic. The
  ``acl_file`` check does not refuse a SUBSCRIBE (Mosquitto 2.0.11 grants every filter, ``#``
  too, with a SUBACK of QoS granted; a SUBACK refusal needs its dynamic-security plugin instead).
  So a principal without ``read`` on telemetry may subscribe to ``forewarn/+/+/telemetry`` and
  receives nothing of it. A shared
  subscription (``$share/<group>/<filter>``) is no way around it: delivery through it is checked
  against the message topic the same way.
- Patterns with ``%u`` substitute the username as it is, '/' included (Mosquitto refuses only
  usernames with '+' or '#' in pattern checks), so a username ``site-a/pump-0001`` and
  ``pattern write forewarn/%u/telemetry`` would work. It is not used: a pattern applies to every
  user (``bridge`` could then write ``forewarn/bridge/telemetry``), and principal names cannot hold
  '/'. Each device, gateway and maintenance source gets an explicit ``user`` block instead.

Device principals are named from what they may write, so the name alone says it and the table
needs no state of its own: ``dev.<site>.<machine>``, ``gw.<site>.<gateway>``, ``maint.<site>``.
'.' separates the parts, so site, machine and gateway names are limited to letters, digits, '_' and
'-' (which also keeps every topic a single token in the ACL file); any other name is refused rather
than mapped, because a mapping that folds two ids into one name would give one principal both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from forewarn.errors import StackError
from forewarn.topics import MQTT_ROOT

__all__ = ["SERVICE_RULES", "Rule", "acl_text", "device_principal", "gateway_principal", "maintenance_principal",
           "rules_for"]

Access = Literal["read", "write", "readwrite"]

_PART: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_MAX_NAME: Final = 64  # what SecureMaterial takes


@dataclass(frozen=True)
class Rule:
    """One ``topic <access> <filter>`` line of the ACL."""

    access: Access
    topic: str

    def line(self) -> str:
        return f"topic {self.access} {self.topic}"


TELEMETRY: Final = f"{MQTT_ROOT}/+/+/telemetry"
BATCHES: Final = f"{MQTT_ROOT}/+/gateway/+/batch"
MAINTENANCE: Final = f"{MQTT_ROOT}/+/+/maintenance"
_INBOUND: Final = (TELEMETRY, BATCHES, MAINTENANCE)
_BROKER_WATCH: Final = ("$SYS/broker/store/messages/count", "$SYS/broker/store/messages/bytes",
                        "$SYS/broker/publish/messages/dropped")
_PROBE: Final = f"{MQTT_ROOT}/$probe/+"

SERVICE_RULES: Final[dict[str, tuple[Rule, ...]]] = {
    "bridge": (*(Rule("read", t) for t in (*_INBOUND, *_BROKER_WATCH)), Rule("readwrite", _PROBE)),
    "edge": (*(Rule("read", t) for t in _INBOUND), Rule("write", f"{MQTT_ROOT}/+/+/prediction"),
             Rule("write", f"{MQTT_ROOT}/+/+/alert")),
    "simulator": tuple(Rule("write", t) for t in _INBOUND),
}
"""The stack's services that use MQTT, and what each may do there."""


def _parts(what: str, value: str, count: int) -> list[str]:
    parts = value.split("/")
    if len(parts) != count or not all(_PART.match(p) for p in parts):
        layout = "site/name" if count == 2 else "site"
        raise StackError(f"{what} {value!r} cannot have an MQTT login",
                         hint=f"use {layout} made of letters, digits, '_' or '-'")
    return parts


def _fit(name: str, what: str, value: str) -> str:
    if len(name) > _MAX_NAME:
        raise StackError(f"{what} {value!r} is too long for an MQTT login ({name!r})",
                         hint=f"keep the principal name within {_MAX_NAME} characters")
    return name


def device_principal(machine_id: str) -> str:
    """``site-a/pump-0001`` → ``dev.site-a.pump-0001``."""
    site, machine = _parts("machine id", machine_id, 2)
    return _fit(f"dev.{site}.{machine}", "machine id", machine_id)


def gateway_principal(gateway_id: str) -> str:
    """``site-a/gw-1`` → ``gw.site-a.gw-1``."""
    site, gateway = _parts("gateway id", gateway_id, 2)
    return _fit(f"gw.{site}.{gateway}", "gateway id", gateway_id)


def maintenance_principal(site: str) -> str:
    """``site-a`` → ``maint.site-a``: the site's maintenance system."""
    (name,) = _parts("site", site, 1)
    return _fit(f"maint.{name}", "site", site)


def rules_for(principal: str) -> tuple[Rule, ...]:
    """What ``principal`` may do on MQTT (empty: no MQTT login)."""
    if principal in SERVICE_RULES:
        return SERVICE_RULES[principal]
    kind, _, rest = principal.partition(".")
    parts = rest.split(".")
    if not all(_PART.match(p) for p in parts):
        return ()
    if kind == "dev" and len(parts) == 2:
        return (Rule("write", f"{MQTT_ROOT}/{parts[0]}/{parts[1]}/telemetry"),)
    if kind == "gw" and len(parts) == 2:
        return (Rule("write", f"{MQTT_ROOT}/{parts[0]}/gateway/{parts[1]}/batch"),)
    if kind == "maint" and len(parts) == 1:
        return (Rule("write", f"{MQTT_ROOT}/{parts[0]}/+/maintenance"),)
    return ()


def acl_text(principals: Iterable[str]) -> str:
    """Mosquitto's ``acl_file`` for these principals: a ``user`` block each (those without rules
    are left out). No ``topic`` line stands before the first ``user`` line, so an anonymous client
    (refused anyway) would have no rights either."""
    lines = ["# Generated by forewarn (forewarn/stack/mosquitto_acl.py); edits are overwritten."]
    for principal in sorted(set(principals)):
        rules = rules_for(principal)
        if rules:
            lines += ["", f"user {principal}", *(rule.line() for rule in rules)]
    return "\n".join(lines) + "\n"
