"""Opening one MQTT connection: TCP (and TLS), CONNECT, CONNACK, with every failure an
:class:`~forewarn.errors.MqttError` whose ``reason_code`` tells the caller what to do next.

How a 3.1.1-only broker refuses an MQTT 5 CONNECT, all reported with a refusal code in
``UNSUPPORTED_PROTOCOL``: a CONNACK with 3.1.1 return code 1 ("unacceptable protocol version",
Mosquitto 1.x), a v5 CONNACK with reason 0x84 ("unsupported protocol version"), or closing the
connection (EOF or reset) before any CONNACK (aedes, Moquette 0.17). A CONNACK that is only slow
is none of these (``reason_code`` None): MQTT 5 is tried again, not given up. A refused client id
(3.1.1 return code 2, MQTT 5 reason 0x85) says to choose a shorter one.
"""

from __future__ import annotations

import socket
import ssl

from bridge._mqtt_ids import IDENTIFIER_REJECTED, PORTABLE_MAX
from bridge._mqtt_packets import CONNACK, Connack, MalformedPacket, decode_varint, parse_connack
from forewarn.errors import MqttError
from forewarn.settings import MqttSettings

__all__ = ["UNSUPPORTED_PROTOCOL", "open_connection"]

UNSUPPORTED_PROTOCOL = (0x84, 0x01)
_CONNACK_MAX = 65536


class _Closed(Exception):
    pass


def open_connection(settings: MqttSettings, connect: bytes, v5: bool, timeout_s: float,
                    client_id: str = "") -> tuple[socket.socket, Connack, bytes]:
    """Send ``connect`` (of client ``client_id``) and read the CONNACK: (blocking socket, accepted
    CONNACK, the bytes that followed it in the same reads — queued messages may). Raises
    :class:`MqttError` otherwise."""
    s = settings
    where = f"MQTT broker at {s.host}:{s.port}"
    try:
        sock: socket.socket = socket.create_connection((s.host, s.port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if s.tls:
            context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
            if s.cert_file:
                context.load_cert_chain(str(s.cert_file), str(s.key_file) if s.key_file else None)
            sock = context.wrap_socket(sock, server_hostname=s.host)
    except (OSError, ValueError) as error:
        raise MqttError(f"cannot reach {where}: {error}",
                        hint="start it with `forewarn stack up` or fix mqtt.host/mqtt.port") from None
    try:
        sock.sendall(connect)
        first, body, rest = _read_first_packet(sock, timeout_s)
        if first & 0xF0 != CONNACK:
            raise MalformedPacket(f"CONNECT answered with packet type {first:#x}")
        # A 3.1.1 broker answers a v5 CONNECT with a 3.1.1 CONNACK (no properties).
        connack = parse_connack(body, v5 and len(body) > 2)
    except TimeoutError:
        sock.close()
        raise MqttError(f"{where}: no CONNACK within {timeout_s:.0f}s",
                        hint="the broker is slow or overloaded; retrying") from None
    except (OSError, _Closed) as error:
        sock.close()
        if not v5:
            raise MqttError(f"{where} closed the connection before CONNACK: {error or 'closed'}") from None
        raise MqttError(f"{where} closed the connection on an MQTT 5 CONNECT: {error or 'closed'}",
                        reason_code=0x84) from None
    except MalformedPacket as error:
        sock.close()
        raise MqttError(f"{where} answered CONNECT with a malformed CONNACK: {error}") from None
    if connack.code:
        sock.close()
        if connack.code in IDENTIFIER_REJECTED:
            raise MqttError(f"{where} rejected the client id {client_id!r} ({len(client_id)} characters; reason "
                            f"{connack.code:#x}, identifier rejected)", reason_code=connack.code,
                            hint=f"choose a client id of at most {PORTABLE_MAX} letters and digits "
                            "(bridge.client_id / --client-id), which every MQTT 3.1.1 broker must take")
        text = f": {connack.reason()}" if connack.reason() else ""
        raise MqttError(f"{where} refused the connection: reason {connack.code:#x}{text}",
                        reason_code=connack.code, hint="check mqtt.username/password/tls")
    return sock, connack, rest


def _read_first_packet(sock: socket.socket, timeout_s: float) -> tuple[int, bytes, bytes]:
    """The first packet (type byte, body) and whatever bytes followed it."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        if len(data) >= 2:
            try:
                length, body = decode_varint(data, 1)
            except MalformedPacket:
                if len(data) >= 5:
                    raise
            else:
                if len(data) >= body + length:
                    return data[0], data[body:body + length], data[body + length:]
        chunk = sock.recv(4096)
        if not chunk:
            raise _Closed("connection closed")
        data += chunk
        if len(data) > _CONNACK_MAX:
            raise MalformedPacket("CONNACK too large")
