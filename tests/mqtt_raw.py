"""paho itself as a test's MQTT client, recording the broker's reason codes (the project's
adapter does not hand them out), and a condition wait. Shared by the secure-stack tests."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from forewarn.settings import MqttSettings

NOT_AUTHORISED = 0x87  # MQTT 5; Mosquitto gives it for every refused login, a wrong password too


def client_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def until(condition: Callable[[], bool], what: str, timeout_s: float = 15.0, pause: Callable[[], None] | None = None,
           ) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        (pause or (lambda: time.sleep(0.02)))()


class Raw:
    """paho itself, MQTT 5 over the given settings, recording the broker's reason codes (the
    project's adapter does not hand them out)."""

    def __init__(self, settings: MqttSettings) -> None:
        self.pubacks: dict[int, int] = {}
        self.subacks: list[int] = []
        self.messages: list[str] = []
        self.connack: int | None = None
        self._lock = threading.Lock()
        self._answered = threading.Event()
        c = self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id("raw"),
                                      protocol=MQTTProtocolVersion.MQTTv5)
        c.username_pw_set(settings.username, settings.password_value())
        c.tls_set(ca_certs=str(settings.ca_file))
        c.on_connect = self._on_connect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.connect(settings.host, settings.port)
        c.loop_start()
        assert self._answered.wait(10), "no CONNACK"

    def _on_connect(self, _c: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: Properties | None) -> None:
        self.connack = reason.value
        self._answered.set()

    def _on_publish(self, _c: paho.Client, _u: object, mid: int, reason: ReasonCode, _p: Properties | None) -> None:
        with self._lock:
            self.pubacks[mid] = reason.value

    def _on_subscribe(self, _c: paho.Client, _u: object, _mid: int, reasons: list[ReasonCode],
                      _p: Properties | None) -> None:
        with self._lock:
            self.subacks.extend(r.value for r in reasons)

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message.topic)

    def publish(self, topic: str, payload: bytes = b"x") -> int:
        info = self.client.publish(topic, payload, qos=1)
        return info.mid

    def subscribe(self, filters: list[str]) -> list[int]:
        """Subscribe to each filter; the SUBACK reason codes, once all have come."""
        for topic_filter in filters:
            self.client.subscribe(topic_filter, qos=1)
        until(lambda: len(self.subacks) == len(filters), "no SUBACK")
        return list(self.subacks)

    def acked(self, mids: list[int]) -> list[int]:
        """The PUBACK reason codes of these publishes, once all have come."""
        until(lambda: all(m in self.pubacks for m in mids), "no PUBACK")
        return [self.pubacks[m] for m in mids]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
