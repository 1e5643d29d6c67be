"""MQTT 3.1.1 / 5 wire codec for the bridge's subscriber: the packets it writes and the
fields it reads out of CONNACK, SUBACK and DISCONNECT.

Pure functions over bytes; no socket. The PUBLISH hot path stays in the subscriber's parser.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from forewarn.contract import DecodeLimits, Reason, Rejected

__all__ = [
    "CONNACK",
    "CONNECT",
    "DEFAULT_MAX_PACKET_BYTES",
    "DISCONNECT",
    "PINGRESP",
    "PUBACK",
    "PUBLISH",
    "SUBACK",
    "SUBSCRIBE",
    "UNSUBACK",
    "UNSUBSCRIBE",
    "Connack",
    "MalformedPacket",
    "Oversized",
    "Suback",
    "connect_packet",
    "decode_varint",
    "disconnect_packet",
    "packet",
    "parse_connack",
    "parse_disconnect",
    "parse_properties",
    "parse_suback",
    "publish_packet",
    "string",
    "subscribe_packet",
    "unsubscribe_packet",
    "varint",
]

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 0x10, 0x20, 0x30, 0x40, 0x82, 0x90
UNSUBSCRIBE, UNSUBACK, PINGRESP, DISCONNECT = 0xA2, 0xB0, 0xD0, 0xE0

# MQTT 5 property identifiers and the size of their values (2.2.2.2); "s" = UTF-8 string or
# binary data (two-byte length), "p" = string pair, "v" = variable byte integer.
_PROPERTY_KINDS: dict[int, str] = {
    0x01: "1", 0x02: "4", 0x03: "s", 0x08: "s", 0x09: "s", 0x0B: "v", 0x11: "4", 0x12: "s", 0x13: "2",
    0x15: "s", 0x16: "s", 0x17: "1", 0x18: "4", 0x19: "1", 0x1A: "s", 0x1C: "s", 0x1F: "s", 0x21: "2",
    0x22: "2", 0x23: "2", 0x24: "1", 0x25: "1", 0x26: "p", 0x27: "4", 0x28: "1", 0x29: "1", 0x2A: "1",
}
PROP_SESSION_EXPIRY, PROP_RECEIVE_MAXIMUM, PROP_MAXIMUM_PACKET_SIZE = 0x11, 0x21, 0x27
PROP_SERVER_KEEP_ALIVE, PROP_REASON_STRING, PROP_SHARED_SUBSCRIPTION_AVAILABLE = 0x13, 0x1F, 0x2A
PROP_ASSIGNED_CLIENT_ID, PROP_MAXIMUM_QOS = 0x12, 0x24


# A PUBLISH larger than the decoder's largest batch can only become a dead letter: the subscriber
# reads it streaming, never holds it whole, and keeps its first bytes for the letter.
DEFAULT_MAX_PACKET_BYTES = DecodeLimits().max_batch_bytes + 64 * 1024


class Oversized(bytes):
    """The payload of a message larger than the subscriber's ``max_packet_bytes``: its first
    bytes only (``size`` is the whole packet's length). Acknowledge it like any other message
    once its dead letter (:meth:`rejected`, reason ``too_large``) is stored."""

    size: int

    def __new__(cls, head: bytes, *, size: int) -> Oversized:
        self = super().__new__(cls, head)
        self.size = size
        return self

    def rejected(self) -> Rejected:
        return Rejected(Reason.TOO_LARGE, f"MQTT packet of {self.size} bytes; only its first {len(self)} "
                        "payload bytes were kept", bytes(self))


class MalformedPacket(ValueError):
    """A packet that does not follow the MQTT encoding rules (v5 reason 0x81)."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    """(value, position after it); :class:`MalformedPacket` past four bytes or past the end."""
    value, shift = 0, 0
    for i in range(pos, min(pos + 4, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise MalformedPacket("malformed variable byte integer")


def string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def parse_properties(data: bytes, pos: int) -> tuple[dict[int, int | bytes], int]:
    """The MQTT 5 properties at ``pos`` (integers as ints, strings and binary as bytes; a user
    property keeps only its last value) and the position after them."""
    length, pos = decode_varint(data, pos)
    end = pos + length
    if end > len(data):
        raise MalformedPacket("properties run past the packet")
    props: dict[int, int | bytes] = {}
    while pos < end:
        ident = data[pos]
        kind = _PROPERTY_KINDS.get(ident)
        pos += 1
        if kind is None:
            raise MalformedPacket(f"unknown property {ident:#x}")
        if kind == "v":
            props[ident], pos = decode_varint(data, pos)
        elif kind in ("1", "2", "4"):
            size = int(kind)
            props[ident] = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        else:
            for _ in range(2 if kind == "p" else 1):
                size = int.from_bytes(data[pos:pos + 2], "big")
                props[ident] = bytes(data[pos + 2:pos + 2 + size])
                pos += 2 + size
        if pos > end:
            raise MalformedPacket(f"property {ident:#x} runs past the properties")
    return props, end


@dataclass(frozen=True)
class Connack:
    session_present: bool
    code: int
    properties: dict[int, int | bytes] = field(default_factory=dict)

    def reason(self) -> str:
        """The broker's reason string, when it sent one."""
        text = self.properties.get(PROP_REASON_STRING)
        return text.decode(errors="replace") if isinstance(text, bytes) else ""


def parse_connack(body: bytes, v5: bool) -> Connack:
    if len(body) < 2:
        raise MalformedPacket("CONNACK shorter than two bytes")
    props: dict[int, int | bytes] = {}
    if v5 and len(body) > 2:
        props, _end = parse_properties(body, 2)
    return Connack(bool(body[0] & 1), body[1], props)


@dataclass(frozen=True)
class Suback:
    packet_id: int
    codes: bytes
    reason: str = ""


def parse_suback(body: bytes, v5: bool) -> Suback:
    """SUBACK and UNSUBACK have the same shape: packet id, (v5) properties, one code per filter."""
    if len(body) < 2:
        raise MalformedPacket("SUBACK shorter than its packet id")
    pos, reason = 2, ""
    if v5:
        props, pos = parse_properties(body, 2)
        text = props.get(PROP_REASON_STRING)
        reason = text.decode(errors="replace") if isinstance(text, bytes) else ""
    return Suback(int.from_bytes(body[:2], "big"), bytes(body[pos:]), reason)


def parse_disconnect(body: bytes) -> tuple[int, str]:
    """(reason code, reason string) of a broker's DISCONNECT (3.1.1 and empty v5: 0)."""
    if not body:
        return 0, ""
    reason = ""
    if len(body) > 1:
        try:
            props, _end = parse_properties(body, 1)
        except MalformedPacket:
            props = {}
        text = props.get(PROP_REASON_STRING)
        reason = text.decode(errors="replace") if isinstance(text, bytes) else ""
    return body[0], reason


def connect_packet(*, v5: bool, client_id: str, clean_start: bool, keepalive_s: int, username: str | None,
                   password: str | None, properties: dict[int, int]) -> bytes:
    """CONNECT; ``properties`` (v5 only) are integer properties (session expiry, receive maximum,
    maximum packet size)."""
    flags = 0x02 if clean_start else 0
    payload = string(client_id)
    if username is not None:
        flags |= 0x80
        payload += string(username)
        if password is not None:
            flags |= 0x40
            payload += string(password)
    header = string("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack("!H", keepalive_s)
    if v5:
        props = b"".join(bytes([ident]) + value.to_bytes(int(_PROPERTY_KINDS[ident]), "big")
                         for ident, value in properties.items())
        header += varint(len(props)) + props
    return packet(CONNECT, header + payload)


def subscribe_packet(packet_id: int, filters: list[tuple[str, int]], v5: bool) -> bytes:
    body = struct.pack("!H", packet_id) + (b"\x00" if v5 else b"")
    body += b"".join(string(topic) + bytes([qos]) for topic, qos in filters)
    return packet(SUBSCRIBE, body)


def unsubscribe_packet(packet_id: int, filters: list[str], v5: bool) -> bytes:
    body = struct.pack("!H", packet_id) + (b"\x00" if v5 else b"")
    return packet(UNSUBSCRIBE, body + b"".join(string(topic) for topic in filters))


def publish_packet(topic: str, payload: bytes, packet_id: int, v5: bool) -> bytes:
    """A QoS 1 PUBLISH."""
    body = string(topic) + struct.pack("!H", packet_id) + (b"\x00" if v5 else b"")
    return packet(PUBLISH | 0x02, body + payload)


def disconnect_packet(reason: int, v5: bool) -> bytes:
    """DISCONNECT; on v5 with a reason code (0x81 malformed packet, 0x95 packet too large, ...)."""
    return bytes([DISCONNECT, 1, reason]) if v5 and reason else bytes([DISCONNECT, 0])
