"""Watch how full the MQTT broker's store is, so a long Kafka outage is loud before it loses data.

Mosquitto queues QoS 1 messages for the bridge's persistent session while the bridge cannot
forward them (Kafka away, bridge stopped), up to ``max_queued_messages`` / ``max_queued_bytes``
per client; beyond that it drops new messages for that client, silently. It publishes its
store size and its count of dropped messages on ``$SYS`` topics every ``sys_interval``. The
watch subscribes to them on a connection of its own (MQTT 3.1.1, its own client id, no session),
mirrors them in the bridge's metrics, logs a WARNING when the store passes the configured share
of a cap and an ERROR when the broker drops messages.

The store count is the broker's total, so with several clients it reaches the cap before any one
client's queue does: the warning comes early, never late. A broker that publishes none of these
topics (aedes, Moquette) is simply never reported; a watch that cannot connect logs one line and
leaves the bridge alone.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from bridge._mqtt_ids import fit_client_id
from bridge.metrics import BridgeMetrics
from forewarn.errors import MqttError
from forewarn.mqtt import MqttClient, MqttMessage
from forewarn.settings import MqttSettings, StackSettings

__all__ = ["DROPPED", "STORED_BYTES", "STORED_MESSAGES", "BrokerWatch", "QueueCaps", "StoreLevels"]

log = logging.getLogger(__name__)

STORED_MESSAGES = "$SYS/broker/store/messages/count"
STORED_BYTES = "$SYS/broker/store/messages/bytes"
DROPPED = "$SYS/broker/publish/messages/dropped"
_REARM = 0.9  # a warning re-arms once the level falls below this share of its threshold


@dataclass(frozen=True)
class QueueCaps:
    """The broker's per-client queue caps and the share of them that warns."""

    messages: int
    bytes: int
    warn_fraction: float = 0.8

    @classmethod
    def from_stack(cls, stack: StackSettings) -> QueueCaps:
        return cls(stack.max_queued_messages, stack.max_queued_bytes, stack.queue_warn_fraction)


class StoreLevels:
    """What the ``$SYS`` values mean: gauges, one warning per crossing, an error per drop.

    Pure state (no network): :meth:`observe` takes one ``$SYS`` topic and its payload;
    :attr:`seen` holds the topics reported so far."""

    def __init__(self, caps: QueueCaps, metrics: BridgeMetrics) -> None:
        self.caps = caps
        self.metrics = metrics
        self._near = {STORED_MESSAGES: False, STORED_BYTES: False}
        self._dropped: int | None = None
        self.seen: set[str] = set()

    @property
    def near_cap(self) -> bool:
        return any(self._near.values())

    def observe(self, topic: str, payload: bytes) -> None:
        try:
            value = int(payload.strip())
        except ValueError:
            log.debug("ignoring %s = %r (not an integer)", topic, payload[:40])
            return
        self.seen.add(topic)
        if topic == DROPPED:
            self._observe_dropped(value)
        elif topic in self._near:
            self._observe_stored(topic, value)

    def _observe_stored(self, topic: str, value: int) -> None:
        messages = topic == STORED_MESSAGES
        (self.metrics.broker_stored_messages if messages else self.metrics.broker_stored_bytes).set(value)
        cap = self.caps.messages if messages else self.caps.bytes
        what = "messages" if messages else "bytes"
        threshold = self.caps.warn_fraction * cap
        if not self._near[topic] and value >= threshold:
            self._near[topic] = True
            log.warning("the MQTT broker stores %s %s, %.0f%% of its per-client cap of %s (max_queued_%s): "
                        "the bridge is not keeping up or Kafka is away; at the cap the broker drops new messages",
                        value, what, 100 * value / cap, cap, what)
        elif self._near[topic] and value < _REARM * threshold:
            self._near[topic] = False
            log.warning("the MQTT broker's store is back to %s %s (cap %s)", value, what, cap)
        self.metrics.broker_queue_near_cap.set(1 if self.near_cap else 0)

    def _observe_dropped(self, value: int) -> None:
        self.metrics.broker_dropped_messages.set(value)
        before, self._dropped = self._dropped, value
        if before is None:
            if value > 0:
                log.warning("the MQTT broker has dropped %s messages since it started (a client's queue was full)",
                            value)
        elif value > before:
            log.error("the MQTT broker dropped %s messages (%s since it started): a client's queue was full "
                      "(max_queued_messages / max_queued_bytes); what it dropped for the bridge is lost",
                      value - before, value)


class BrokerWatch:
    """Subscribes to the broker's ``$SYS`` store counters in the background; see the module doc.

    :meth:`start` returns at once (the connection is made on a thread, so a broker that never
    answers cannot delay the bridge); :meth:`stop` disconnects."""

    def __init__(self, settings: MqttSettings, client_id: str, caps: QueueCaps, metrics: BridgeMetrics,
                 connect_timeout_s: float = 10.0) -> None:
        # 3.1.1: every broker speaks it, and $SYS needs nothing of MQTT 5.
        self.levels = StoreLevels(caps, metrics)
        # The caller derives the id from the bridge's (``<id>-watch``): fitted to what every broker takes.
        self._client = MqttClient(settings.model_copy(update={"protocol": "3.1.1"}), fit_client_id(client_id),
                                  on_message=self._on_message)
        self._timeout_s = connect_timeout_s
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.connected = threading.Event()

    def _on_message(self, message: MqttMessage) -> None:
        self.levels.observe(message.topic, bytes(message.payload))

    def _connect(self) -> None:
        try:
            self._client.connect(timeout_s=self._timeout_s)
            self._client.subscribe([STORED_MESSAGES, STORED_BYTES, DROPPED], qos=0)
        except MqttError as error:
            if not self._stopping.is_set():
                log.warning("the MQTT broker's queue is not watched: %s", error.one_line())
            return
        self.connected.set()
        log.info("watching the MQTT broker's store ($SYS) as %s", self._client.client_id)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._connect, name="broker-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self._timeout_s + 1)
        self._client.disconnect()
