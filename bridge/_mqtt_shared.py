"""Shared subscriptions (``$share/<group>/<filter>``) on brokers that may not have them.

MQTT 5 brokers say so: CONNACK property Shared Subscription Available = 0, or SUBACK reason 0x9E
for a ``$share`` filter. MQTT 3.1.1 has no such signal, and a 3.1.1 broker without shared
subscriptions takes ``$share/...`` as an ordinary filter that nothing is ever published to: the
bridge would run and receive nothing. So on 3.1.1 :func:`probe` tries: a short-lived connection
of its own (clean session) subscribes ``$share/<group>/forewarn/$probe/<client id>`` and publishes
one QoS 1 message to ``forewarn/$probe/<client id>``; the filter is shared only if the message
comes back through it. The probe topic has three levels, so no inbound filter routes it as data;
its share group is the bridge's, but the topic is this client's own, so another bridge of the
group never receives it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Literal, Protocol

from forewarn.errors import MqttError
from forewarn.settings import MqttSettings

__all__ = ["LACKS_SHARED", "SharedMode", "SharedSubscriptions", "is_shared", "probe", "probe_filter", "probe_topic",
           "unshared"]

log = logging.getLogger(__name__)

SharedMode = Literal["auto", "on", "off"]
PROBE_ROOT = "forewarn/$probe"
_NOT_IN_A_LEVEL = re.compile(r"[/+#\x00]")
LACKS_SHARED = ("broker lacks shared subscriptions: running as a single bridge; a second bridge would duplicate "
                "every message (set bridge.shared_subscriptions = \"on\" to insist, \"off\" to silence this)")


class ProbeClient(Protocol):
    """What :func:`probe` needs of an MQTT connection (the subscriber has it)."""

    def connect(self, timeout_s: float = 10.0) -> None: ...
    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None: ...
    def publish(self, topic: str, payload: bytes) -> None: ...
    def read(self, limit: int) -> list[tuple[str, bytes, int, int]]: ...
    def ack_many(self, mids: list[int]) -> None: ...
    def wait_readable(self, timeout_s: float) -> None: ...
    def disconnect(self) -> None: ...
    @property
    def subscribed(self) -> bool: ...


def is_shared(topic_filter: str) -> bool:
    return topic_filter.startswith("$share/") and topic_filter.count("/") >= 2


def unshared(topic_filter: str) -> str:
    """``$share/<group>/<filter>`` -> ``<filter>``; other filters as they are."""
    return topic_filter.split("/", 2)[2] if is_shared(topic_filter) else topic_filter


def probe_topic(client_id: str) -> str:
    """This client's probe topic (one level for the id: no ``/``, wildcards or NUL in it)."""
    return f"{PROBE_ROOT}/{_NOT_IN_A_LEVEL.sub('_', client_id)}"


def probe_filter(filters: Iterable[str], client_id: str) -> str | None:
    """The shared filter that the probe subscribes: the share group of the first shared filter."""
    for topic_filter in filters:
        if is_shared(topic_filter):
            return f"$share/{topic_filter.split('/', 2)[1]}/{probe_topic(client_id)}"
    return None


def probe(make_client: Callable[[], ProbeClient], client_id: str, filters: Iterable[str],
          timeout_s: float) -> bool | None:
    """Whether the broker delivers through shared filters: True if the probe message came back
    through ``$share``, False if it did not within ``timeout_s``, None if the probe could not run
    (connection or subscription refused). Blocks for at most about twice ``timeout_s``."""
    shared = probe_filter(filters, client_id)
    if shared is None:
        return True
    topic = probe_topic(client_id)
    client = make_client()
    try:
        client.connect(timeout_s)
        client.subscribe([shared])
        deadline = time.monotonic() + timeout_s
        published = False
        while time.monotonic() < deadline:
            got = client.read(100)
            client.ack_many([mid for _t, _p, qos, mid in got if qos])
            if any(t == topic for t, _p, _q, _m in got):
                return True
            if not published and client.subscribed:
                client.publish(topic, b"probe")
                published = True
            client.wait_readable(0.05)
        return False
    except (MqttError, OSError) as error:  # inconclusive, never fatal
        log.warning("mqtt: could not probe for shared subscriptions (%s)", error)
        return None
    finally:
        client.disconnect()


class SharedSubscriptions:
    """Whether ``$share`` filters work on one broker, decided once per subscriber: ``mode``
    ``"off"`` never, ``"on"`` always (a broker that says otherwise is an :class:`MqttError`),
    ``"auto"`` by the broker's MQTT 5 signals (:meth:`lacking`) or, on 3.1.1, a :func:`probe`."""

    def __init__(self, settings: MqttSettings, client_id: str, mode: SharedMode,
                 make_probe_client: Callable[[], ProbeClient], probe_timeout_s: float) -> None:
        self.settings = settings
        self.client_id = client_id
        self.mode = mode
        self.make_probe_client = make_probe_client
        self.probe_timeout_s = probe_timeout_s
        self.works: bool | None = None  # None: not known yet

    def needs_probe(self, filters: Iterable[tuple[str, int]], v5: bool) -> bool:
        """Whether :meth:`run_probe` must decide before these filters are subscribed (MQTT 3.1.1,
        ``auto``, shared filters, not decided yet). Probe with the main connection closed: a
        broker pushing a resumed session's messages to a connection nobody reads while the probe
        waits was seen to lose some of them (Moquette 0.17)."""
        return self.works is None and self.mode == "auto" and not v5 and any(is_shared(f) for f, _q in filters)

    def run_probe(self, filters: Iterable[tuple[str, int]]) -> None:
        shared = [f for f, _q in filters if is_shared(f)]
        found = probe(self.make_probe_client, self.client_id, shared, self.probe_timeout_s)
        if found:
            self.works = True
        else:
            self.lacking("a probe message published to a shared filter did not come back"
                         if found is False else "the probe could not run")

    def wire(self, filters: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[str]]:
        """(the filters to subscribe, the shared filters to unsubscribe): ``$share/<group>/`` taken
        off when shared subscriptions do not work."""
        shared = [f for f, _q in filters if is_shared(f)]
        if not shared:
            return filters, []
        if self.works is None:  # MQTT 5 said nothing against them, or the mode decides
            self.works = self.mode != "off"
        if self.works:
            return filters, []
        return [(unshared(f), q) for f, q in filters], shared

    def lacking(self, why: str) -> None:
        """The broker said (or the probe found) that it lacks shared subscriptions."""
        s = self.settings
        if self.mode == "on":
            raise MqttError(f"MQTT broker at {s.host}:{s.port} lacks shared subscriptions ({why})",
                            hint='set bridge.shared_subscriptions = "auto" or "off" to run as a single bridge')
        if self.works is False:
            return  # said once
        self.works = False
        if self.mode == "auto":
            log.warning("mqtt %s:%s: %s; %s", s.host, s.port, LACKS_SHARED, why)
