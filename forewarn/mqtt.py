"""A thin adapter over paho-mqtt 2.x (callback API version 2).

MQTT 5 first, with a fallback to 3.1.1 when the broker does not speak 5; persistent sessions
(clean start off + session expiry) for subscribers that must not lose QoS 1 messages while
offline; manual acknowledgement for at-least-once consumers; automatic reconnect with
exponential backoff between ``reconnect_min_s`` and ``reconnect_max_s``.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from forewarn.errors import MqttError
from forewarn.settings import MqttSettings

__all__ = ["MqttClient", "MqttMessage"]

log = logging.getLogger(__name__)

MqttMessage = paho.MQTTMessage
_UNSUPPORTED_PROTOCOL = (132, 1)  # MQTT 5 reason code 0x84; MQTT 3.1.1 CONNACK return code 1


class MqttClient:
    """One MQTT connection. Nothing touches the network until :meth:`connect`.

    ``on_message(message)`` runs on paho's network thread. With ``manual_ack=True`` a QoS 1
    message is acknowledged only when :meth:`ack` is called for it. ``on_published(mid)`` (see
    the property) tells when the broker has a publish; :attr:`outgoing_packets` how much paho still
    has to write to the socket.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        max_inflight: int = 1000,
        on_message: Callable[[paho.MQTTMessage], None] | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.manual_ack = manual_ack
        self.receive_maximum = receive_maximum
        self.max_inflight = max_inflight
        self.on_message = on_message
        self.on_connected: Callable[[bool], None] | None = None
        self._on_published: Callable[[int], None] | None = None
        self._client: paho.Client | None = None
        self._protocol: MQTTProtocolVersion | None = None
        self._connected = threading.Event()
        self._answered = threading.Event()  # set by the first CONNACK, good or bad
        self._connack: ReasonCode | None = None
        self._subscriptions: list[tuple[str, int]] = []

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def protocol(self) -> str:
        return "5" if self._protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1"

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def _build(self, protocol: MQTTProtocolVersion) -> paho.Client:
        s = self.settings
        v5 = protocol == MQTTProtocolVersion.MQTTv5
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            clean_session=None if v5 else self.clean_start,
            manual_ack=self.manual_ack,
            reconnect_on_failure=True,
        )
        client.enable_logger(log)
        client.reconnect_delay_set(min_delay=max(1, round(s.reconnect_min_s)), max_delay=round(s.reconnect_max_s))
        client.max_inflight_messages_set(self.max_inflight)
        client.max_queued_messages_set(0)
        if s.username is not None:
            client.username_pw_set(s.username, s.password_value())
        if s.tls:
            client.tls_set(ca_certs=str(s.ca_file) if s.ca_file else None,
                           certfile=str(s.cert_file) if s.cert_file else None,
                           keyfile=str(s.key_file) if s.key_file else None,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        if self._on_published is not None:
            client.on_publish = self._handle_publish
        return client

    def _connect_properties(self) -> Properties | None:
        if self._protocol != MQTTProtocolVersion.MQTTv5:
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.session_expiry_s is not None:
            props.SessionExpiryInterval = self.session_expiry_s
        if self.receive_maximum is not None:
            props.ReceiveMaximum = self.receive_maximum
        return props

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect and start the network thread; raise :class:`MqttError` if refused."""
        wanted = self.settings.protocol
        order = {"5": [MQTTProtocolVersion.MQTTv5], "3.1.1": [MQTTProtocolVersion.MQTTv311],
                 "auto": [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311]}[wanted]
        last: MqttError | None = None
        for protocol in order:
            try:
                self._connect_once(protocol, timeout_s)
                return
            except MqttError as error:
                last = error
                if error.reason_code not in _UNSUPPORTED_PROTOCOL:
                    raise
                log.info("mqtt broker refused protocol %s; falling back", protocol.name)
        assert last is not None
        raise last

    def _connect_once(self, protocol: MQTTProtocolVersion, timeout_s: float) -> None:
        self._protocol = protocol
        self._connected.clear()
        self._answered.clear()
        self._connack = None
        client = self._client = self._build(protocol)
        s = self.settings
        try:
            if protocol == MQTTProtocolVersion.MQTTv5:
                client.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=self.clean_start,
                               properties=self._connect_properties())
            else:
                client.connect(s.host, s.port, keepalive=s.keepalive_s)
        except (OSError, ValueError) as error:
            self._client = None
            raise MqttError(f"cannot reach MQTT broker at {s.host}:{s.port}: {error}",
                            hint="start it with `forewarn stack up` or fix mqtt.host/mqtt.port") from None
        client.loop_start()
        if not self._answered.wait(timeout_s):
            client.loop_stop()
            self._client = None
            raise MqttError(f"no CONNACK from {s.host}:{s.port} within {timeout_s:.0f}s")
        if not self._connected.is_set():
            code = self._connack
            client.loop_stop()
            self._client = None
            value = code.value if code is not None else None
            raise MqttError(f"MQTT broker at {s.host}:{s.port} refused the connection: {code}",
                            reason_code=value, hint="check mqtt.username/password/tls")

    def disconnect(self) -> None:
        """Disconnect cleanly (a persistent session stays on the broker) and stop the thread."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
        finally:
            client.loop_stop()
            self._connected.clear()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.disconnect()

    # -- callbacks -------------------------------------------------------------------------

    def _handle_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                        properties: Properties | None) -> None:
        self._connack = reason
        ok = not reason.is_failure
        if ok:
            self._connected.set()
            session_present = bool(getattr(flags, "session_present", False))
            log.info("mqtt connected to %s:%s as %s (MQTT %s, session present: %s)",
                     self.settings.host, self.settings.port, self.client_id, self.protocol, session_present)
            # Re-subscribe after a reconnect; harmless when the session kept them.
            for topic, qos in self._subscriptions:
                client.subscribe(topic, qos)
            if self.on_connected is not None:
                self.on_connected(session_present)
        else:
            log.warning("mqtt connect refused: %s", reason)
        self._answered.set()

    def _handle_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                           properties: Properties | None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and self._client is not None:
            log.warning("mqtt disconnected (%s); reconnecting with backoff", reason)

    def _handle_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self.on_message is not None:
            self.on_message(message)

    def _handle_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                        properties: Properties | None) -> None:
        if reason.is_failure:
            log.warning("mqtt broker refused publish %s: %s", mid, reason)
        callback = self._on_published
        if callback is not None:
            callback(mid)

    @property
    def on_published(self) -> Callable[[int], None] | None:
        """Called with a publish's ``mid`` (as returned by :meth:`publish`) once it is done: the
        broker's PUBACK for QoS 1 (also one refusing it, under MQTT 5: logged), written to the
        socket for QoS 0. Runs on paho's network thread, possibly before :meth:`publish` has
        returned that ``mid``. May be set at any time; ``None`` removes it."""
        return self._on_published

    @on_published.setter
    def on_published(self, callback: Callable[[int], None] | None) -> None:
        self._on_published = callback
        if self._client is not None:
            self._client.on_publish = None if callback is None else self._handle_publish

    @property
    def outgoing_packets(self) -> int:
        """Packets paho has queued and not yet written to the socket (publishes, acks, ...);
        0 when not connected. Lets a fast publisher wait instead of queueing without bound."""
        client = self._client
        if client is None:
            return 0
        return len(getattr(client, "_out_packet", ()))

    # -- operations ------------------------------------------------------------------------

    @property
    def _connected_client(self) -> paho.Client:
        if self._client is None:
            raise MqttError("MQTT client is not connected", hint="call connect() first")
        return self._client

    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        """Subscribe (and remember, to re-subscribe after reconnects)."""
        for topic in topics:
            self._subscriptions.append((topic, qos))
            result, _mid = self._connected_client.subscribe(topic, qos)
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise MqttError(f"subscribe to {topic} failed: {paho.error_string(result)}")

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> paho.MQTTMessageInfo:
        """Queue a publish; the returned info's ``wait_for_publish()`` waits for the PUBACK."""
        info = self._connected_client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        return info

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge one received message (only with ``manual_ack=True``)."""
        if self._client is not None:
            self._client.ack(mid, qos)
