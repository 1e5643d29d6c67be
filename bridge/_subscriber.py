"""A lean MQTT 5 / 3.1.1 subscriber for the bridge's receive path, driven by the bridge's own loop.

There is no network thread: :meth:`Subscriber.read` parses whole PUBLISH packets straight out
of a socket buffer when the bridge's loop asks for them (paho's thread, its per-message objects
and the hand-over across the GIL cost far more per message than Kafka; bridge/README.md has the
figures), so

- TCP is the backpressure: when the bridge stops asking (in-flight bound reached, Kafka away),
  nothing is read and the broker's socket buffer fills; no inbox grows without bound, whatever
  the broker does with Receive Maximum;
- PUBACKs of one round are one ``send``;
- keep-alive (PINGREQ, at the broker's Server Keep Alive when it sets one) and reconnects happen
  on the same loop, which never blocks for longer than a short wait (the connect itself, and a
  shared-subscription probe on 3.1.1, do). The reconnect backoff starts again from its minimum
  only after a connection stayed up for a stable period.

What it speaks: CONNECT (clean start off, session expiry, Receive Maximum, optionally Maximum
Packet Size; username/password; TLS), CONNACK, one SUBSCRIBE for all filters and its SUBACK,
PUBLISH QoS 0/1 in (QoS 2 is never granted: it subscribes with QoS 1), PUBACK out, PINGREQ /
PINGRESP, DISCONNECT both ways. MQTT 5 first, 3.1.1 when the broker refuses 5 in any of the ways
3.1.1 brokers do (``protocol = "auto"``; :mod:`bridge._mqtt_connect`).

Where it refuses to go on silently:

- a SUBACK that refuses a filter, or grants less than QoS 1 (the bridge would be at most once),
  raises :class:`~forewarn.errors.MqttError` from :meth:`Subscriber.read`;
- ``$share/...`` filters on a broker without shared subscriptions are subscribed plainly, with a
  warning (:mod:`bridge._mqtt_shared`);
- a session taken over again and again (two clients with one id) raises :class:`MqttError`;
- a malformed packet (QoS bits 3, a topic that is not well-formed UTF-8) is counted and answered
  with DISCONNECT 0x81, then it reconnects; a PUBLISH over ``max_packet_bytes`` is discarded as
  it arrives and handed on as an :class:`Oversized` head for a ``too_large`` dead letter.
"""

from __future__ import annotations

import collections
import logging
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from bridge._mqtt_connect import UNSUPPORTED_PROTOCOL, open_connection
from bridge._mqtt_ids import derived_client_id
from bridge._mqtt_packets import (
    DEFAULT_MAX_PACKET_BYTES,
    DISCONNECT,
    PINGRESP,
    PROP_MAXIMUM_PACKET_SIZE,
    PROP_RECEIVE_MAXIMUM,
    PROP_SERVER_KEEP_ALIVE,
    PROP_SESSION_EXPIRY,
    PROP_SHARED_SUBSCRIPTION_AVAILABLE,
    PUBACK,
    PUBLISH,
    SUBACK,
    MalformedPacket,
    Oversized,
    connect_packet,
    decode_varint,
    disconnect_packet,
    parse_disconnect,
    parse_suback,
    publish_packet,
    subscribe_packet,
    unsubscribe_packet,
)
from bridge._mqtt_shared import SharedMode, SharedSubscriptions, is_shared
from forewarn.errors import MqttError
from forewarn.settings import MqttSettings

__all__ = ["DEFAULT_MAX_PACKET_BYTES", "Message", "Oversized", "Subscriber", "SubscriberLike"]

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_PINGREQ = b"\xc0\x00"
_PUBACK_PACKET = struct.Struct("!BBH")
_SHARED_NOT_SUPPORTED = 0x9E  # MQTT 5 SUBACK reason "shared subscriptions not supported"
_STABLE_S = 30.0
_SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason
_YOUNG_S = 2.0  # closed by the broker this soon after CONNACK: maybe a take-over (3.1.1 has no reason)
_TAKEOVER_WINDOW_S, _TAKEOVERS_MAX = 120.0, 3  # a connection up this long resets the reconnect backoff to its minimum
_TOPIC_CACHE_MAX = 100_000
_PEEK = 2 + 65535 + 2 + 4 + 64 * 1024  # enough of a PUBLISH for its header (topic, id, properties)
_HEAD = 4096  # payload bytes an Oversized keeps

Message = tuple[str, bytes, int, int]  # (topic, payload, qos, packet id)


class SubscriberLike(Protocol):
    """What the bridge's loop needs from its MQTT connection: the one intake path.

    :class:`Subscriber` is the real one; the bridge's unit tests use an in-memory double with the
    same semantics (broker-assigned packet ids, acknowledgements in arrival order, a resumed
    session redelivering what was not acknowledged, with the same ids, after ``on_connected``).
    """

    on_connected: Callable[[bool], None] | None

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect; raise :class:`MqttError` when refused."""
    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        """Subscribe now and again after every reconnect."""
    def read(self, limit: int) -> list[Message]:
        """Up to ``limit`` messages that already arrived, all of the current connection; never
        blocks; reconnects (calling ``on_connected`` first) when the connection is gone."""
    def ack_many(self, mids: list[int]) -> None:
        """Acknowledge these packet ids (in arrival order) of the current connection."""
    def wait_readable(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s`` unless something is (or becomes) ready to read."""
    def housekeeping(self) -> None:
        """Keep-alive and reconnects while the loop is not reading."""
    def disconnect(self) -> None:
        """Disconnect for good; the persistent session stays on the broker."""


class _Disconnected(Exception):
    """The connection is gone or must be dropped; the loop reconnects with backoff. ``reason``:
    the MQTT 5 reason code our DISCONNECT gives the broker first (0: none is sent)."""

    def __init__(self, why: str, reason: int = 0, *, takeover: bool = False) -> None:
        super().__init__(why)
        self.reason = reason
        self.takeover = takeover  # the broker (maybe) gave our client id to another connection


def _malformed(why: str) -> _Disconnected:
    """A packet the spec calls malformed: DISCONNECT with reason 0x81, then reconnect (4.13)."""
    return _Disconnected(f"malformed packet from the broker: {why}", 0x81)


def _drain_until_closed(sock: socket.socket) -> None:
    """After our DISCONNECT: let the broker close first (a close with unread bytes is a TCP reset,
    which a broker may take for a failure, and Moquette 0.17 was seen to lose messages racing
    one). Bounded: at most a short wait and a few reads are discarded."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    sock.settimeout(0.5)
    for _ in range(64):
        if not sock.recv(_CHUNK):
            return


class Subscriber:
    """One MQTT connection for a QoS 1 subscriber with manual acknowledgement.

    Nothing touches the network until :meth:`connect`. ``on_connected(session_present)`` is
    called (on the caller's thread) after every successful (re)connect, before any message of
    that connection is returned by :meth:`read`.
    """

    def __init__(self, settings: MqttSettings, client_id: str, *, clean_start: bool = False,
                 session_expiry_s: int | None = None, receive_maximum: int | None = None,
                 max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES, announce_max_packet: bool = False,
                 shared_subscriptions: SharedMode = "auto", probe_timeout_s: float = 5.0) -> None:
        self.settings = settings
        self._sharing = SharedSubscriptions(settings, client_id, shared_subscriptions, self._probe_client,
                                            probe_timeout_s)
        self.max_packet_bytes = max_packet_bytes
        self.announce_max_packet = announce_max_packet
        self.client_id = client_id
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.on_connected: Callable[[bool], None] | None = None
        self._sock: socket.socket | None = None
        self._v5 = settings.protocol != "3.1.1"
        self._buf = b""
        self._pos = 0
        self._incomplete = False  # the buffer ends inside a packet: more bytes are needed
        self._need = 0  # bytes from _pos the buffer must hold before parsing can go on (0: any)
        self._chunks: list[bytes] = []  # received, not yet joined into _buf (an incomplete packet)
        self._chunked = 0
        self._skip = 0  # bytes of an oversized PUBLISH still to discard as they arrive
        self._held: Message | None = None  # that PUBLISH, handed out once it is discarded
        self.oversized = 0  # PUBLISH packets larger than max_packet_bytes
        self._out = bytearray()
        self._filters: list[tuple[str, int]] = []
        self._subscribing: dict[int, list[tuple[str, int]]] = {}  # SUBSCRIBE packet id -> its filters
        self._keepalive_s = settings.keepalive_s  # the broker's Server Keep Alive wins (MQTT 5)
        self.malformed = 0  # packets from the broker that broke the encoding rules
        self._topics: dict[bytes, str] = {}
        self._next_id = 0
        self._last_sent = 0.0
        self._ping_since: float | None = None
        self._retry_at = 0.0
        self._delay = settings.reconnect_min_s
        self._connected_at = 0.0
        self._takeovers: collections.deque[float] = collections.deque()
        self._downgraded = False  # the broker refused MQTT 5 once: 3.1.1 from then on
        self._wanted = False  # connect() was called and disconnect() was not

    # -- connection ----------------------------------------------------------------------------

    @property
    def protocol(self) -> str:
        return "5" if self._v5 else "3.1.1"

    @property
    def is_connected(self) -> bool:
        return self._sock is not None

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect (MQTT 5, else 3.1.1 with ``protocol = "auto"``); raise :class:`MqttError` if refused."""
        self._wanted = True
        self._open(timeout_s)

    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        """Subscribe (and remember, to re-subscribe after reconnects). ``$share/...`` filters are
        subscribed plainly when the broker lacks shared subscriptions (``shared_subscriptions =
        "auto"``: its MQTT 5 signals, a probe on 3.1.1; ``"off"``: always; ``"on"``: never, and a
        broker that says it lacks them is an :class:`MqttError`). Subscribing before
        :meth:`connect` lets a 3.1.1 probe run before the session resumes; after it, the
        connection is closed for the probe and opened again (the broker sends what was in flight
        again, as on any reconnect)."""
        new = [(t, qos) for t in topics]
        self._filters.extend(new)
        if self._sock is not None and new:
            if self._sharing.needs_probe(new, self._v5):  # probe while the session rests, then resume it
                self.disconnect()
                self._wanted = True
                self._open(10.0)  # subscribes every filter, as after any reconnect
                return
            self._subscribe(self._wire(new), 10.0)

    @property
    def subscribed(self) -> bool:
        """Every SUBSCRIBE of this connection has its SUBACK."""
        return self._sock is not None and not self._subscribing

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish one QoS 1 message (the shared-subscription probe; the bridge only receives)."""
        self._next_id = self._next_id % 65535 + 1
        self._send(publish_packet(topic, payload, self._next_id, self._v5))

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK these packet ids in one write. ``0x40 0x02 <id>`` is valid for 3.1.1 and 5 (reason
        0 and no properties may be left out). Dropped when disconnected (also when this write
        finds the connection reset): the broker sends them again on the next connection."""
        if self._sock is None or not mids:
            return
        pack = _PUBACK_PACKET.pack
        try:
            self._send(b"".join([pack(PUBACK, 2, mid) for mid in mids]))
        except OSError as error:
            self._lost(f"acknowledging: {error}")

    def disconnect(self) -> None:
        """Send DISCONNECT (the persistent session stays on the broker) and close the socket."""
        self._wanted = False
        sock = self._sock
        if sock is None:
            return
        try:
            self._flush_out()
            sock.setblocking(True)
            sock.settimeout(2.0)
            sock.sendall(b"\xe0\x00")
            _drain_until_closed(sock)
        except OSError:
            pass
        self._close()

    # -- the loop's side -----------------------------------------------------------------------

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    def read(self, limit: int) -> list[Message]:
        """Up to ``limit`` PUBLISH messages that already arrived; never blocks. Reconnects (with
        backoff) when the connection is gone, and sends a PINGREQ when the keep-alive asks."""
        if self._sock is None:
            self._maybe_reconnect()
            return []
        out: list[Message] = []
        try:
            if self._out:
                self._flush_out()
            self._parse(out, limit)
            if len(out) < limit and self._fill():
                self._parse(out, limit)
            self._keepalive()
        except _Disconnected as why:
            self._lost(str(why), why.reason, why.takeover)
        except (IndexError, MalformedPacket) as error:  # a length that runs past the packet
            self._lost(str(_malformed(str(error) or "a field runs past its packet")), 0x81)
        except OSError as error:
            self._lost(str(error))
        return out

    def wait_readable(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s`` unless the socket has (or gets) something to read."""
        sock = self._sock
        if sock is None:
            time.sleep(timeout_s)
            return
        if (self._pos < len(self._buf) and not self._incomplete) or (self._held is not None and not self._skip):
            return  # whole packets are waiting in the buffer
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        try:
            select.select([sock], [], [], timeout_s)
        except (OSError, ValueError):
            pass

    def housekeeping(self) -> None:
        """Keep-alive and reconnects while the loop is not reading (paused by backpressure)."""
        if self._sock is None:
            self._maybe_reconnect()
            return
        try:
            self._flush_out()
            self._keepalive(reading=False)
        except _Disconnected as why:
            self._lost(str(why))
        except OSError as error:
            self._lost(str(error))

    # -- internals -------------------------------------------------------------------------------

    def _parse(self, out: list[Message], limit: int) -> None:
        if self._held is not None:  # an oversized PUBLISH: nothing behind it goes out before it
            if self._skip or len(out) >= limit:
                return
            out.append(self._held)  # its last bytes were just discarded
            self._held = None
        buf, pos, end = self._buf, self._pos, len(self._buf)
        v5 = self._v5
        topics = self._topics
        append = out.append
        n = len(out)
        self._incomplete = False
        self._need = 0
        try:
            while True:
                if pos + 2 > end:
                    self._incomplete = pos < end
                    return
                if n >= limit:
                    return
                first = buf[pos]
                # remaining length: 1..4 bytes
                byte = buf[pos + 1]
                if byte < 0x80:
                    length, body = byte, pos + 2
                else:
                    length, shift, i = byte & 0x7F, 7, pos + 2
                    while True:
                        if i >= end:
                            self._incomplete = True
                            return
                        byte = buf[i]
                        length |= (byte & 0x7F) << shift
                        i += 1
                        if byte < 0x80:
                            break
                        shift += 7
                        if shift > 21:
                            raise _Disconnected("malformed remaining length")
                    body = i
                stop = body + length
                if length > self.max_packet_bytes:
                    done = self._oversized(out, first, buf, body, length, end)
                    if done is None:
                        self._incomplete = True
                        self._need = min(length, _PEEK) + body - pos
                        return
                    pos = done
                    n = len(out)
                    if self._skip:
                        return  # the rest of that packet is still on its way: nothing else to parse
                    continue
                if stop > end:
                    self._incomplete = True
                    self._need = stop - pos
                    return
                kind = first & 0xF0
                if kind == PUBLISH:
                    qos = (first >> 1) & 3
                    tlen = (buf[body] << 8) | buf[body + 1]
                    p = body + 2 + tlen
                    raw_topic = buf[body + 2:p]
                    topic = topics.get(raw_topic)
                    if topic is None:
                        topic = self._topic(raw_topic)
                    if qos:
                        if qos == 3:
                            raise _malformed("PUBLISH with both QoS bits set")
                        if qos == 2:  # never granted: protocol error (v5 0x82)
                            raise _Disconnected("QoS 2 PUBLISH on a QoS 1 subscription", 0x82)
                        mid = (buf[p] << 8) | buf[p + 1]
                        p += 2
                    else:
                        mid = 0
                    if v5:  # properties: a length (usually 0) then properties we do not need
                        plen = buf[p]
                        if plen < 0x80:
                            p += 1 + plen
                        else:
                            plen, shift, p = plen & 0x7F, 7, p + 1
                            while buf[p] >= 0x80:
                                plen |= (buf[p] & 0x7F) << shift
                                shift += 7
                                p += 1
                            plen |= buf[p] << shift
                            p += 1 + plen
                    if p > stop:
                        raise _Disconnected("malformed PUBLISH (its header runs past its length)")
                    append((topic, buf[p:stop], qos, mid))
                    n += 1
                else:
                    self._control(kind, buf[body:stop])
                pos = stop
        finally:
            self._pos = pos

    def _topic(self, raw: bytes) -> str:
        """A PUBLISH topic not in the cache yet: decoded strictly (MQTT 1.5.4: well-formed UTF-8,
        no overlong forms, no surrogates, no U+0000) and cached."""
        try:
            topic = raw.decode()
        except UnicodeDecodeError:
            raise _malformed(f"PUBLISH topic {raw!r} is not well-formed UTF-8") from None
        if "\x00" in topic:
            raise _malformed(f"PUBLISH topic {raw!r} holds U+0000")
        if len(self._topics) >= _TOPIC_CACHE_MAX:
            self._topics.clear()
        self._topics[raw] = topic
        return topic

    def _oversized(self, out: list[Message], first: int, buf: bytes, body: int, length: int,
                   end: int) -> int | None:
        """A packet longer than ``max_packet_bytes``. A PUBLISH becomes a message whose payload
        is an :class:`Oversized` head, handed out once its last byte has been read and discarded
        (streaming: the packet is never held whole); the caller dead-letters and acknowledges
        it like any other. Anything else larger is a protocol error (v5 0x95). Returns the
        position after what was consumed, or None until the PUBLISH header is in the buffer."""
        if first & 0xF0 != PUBLISH:
            raise _Disconnected(f"a {length}-byte packet of type {first & 0xF0:#x} from the broker", 0x95)
        if end - body < min(length, _PEEK):
            return None
        qos = (first >> 1) & 3
        if qos == 3:
            raise _malformed("PUBLISH with both QoS bits set")
        tlen = int.from_bytes(buf[body:body + 2], "big")
        p = body + 2 + tlen
        topic = self._topic(buf[body + 2:p])
        mid = 0
        if qos:
            mid, p = int.from_bytes(buf[p:p + 2], "big"), p + 2
        if self._v5:
            plen, p = decode_varint(buf, p)
            p += plen
        stop = body + length
        if p > min(stop, end):
            raise _malformed("an oversized PUBLISH whose header does not fit its first bytes")
        message = (topic, Oversized(buf[p:min(p + _HEAD, stop, end)], size=length), qos, mid)
        self.oversized += 1
        log.error("mqtt: a %s-byte PUBLISH on %s is larger than max_packet_bytes (%s): discarding it as it "
                  "arrives and handing it on as too large", length, topic, self.max_packet_bytes)
        consumed = min(stop, end)
        self._skip = stop - consumed
        if self._skip:
            self._held = message
        else:
            out.append(message)
        return consumed

    def _control(self, kind: int, body: bytes) -> None:
        self._ping_since = None
        if kind == SUBACK:
            self._suback(body)
            return
        if kind == PINGRESP:
            return
        if kind == DISCONNECT:
            reason, text = parse_disconnect(body)
            why = f"broker sent DISCONNECT (reason {reason:#x}{': ' + text if text else ''})"
            if reason == _SESSION_TAKEN_OVER:
                raise _Disconnected(f"{why}: session taken over", takeover=True)
            raise _Disconnected(why)
        log.debug("mqtt: ignoring packet type %#x", kind)

    def _fill(self) -> bool:
        """Read what the socket has (non-blocking); False when nothing. Keeps an unparsed tail."""
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except InterruptedError:
            return False
        if not data:
            # Right after CONNACK, the way a 3.1.1 broker says another client took the client id.
            young = time.monotonic() - self._connected_at < _YOUNG_S
            raise _Disconnected("connection closed by the broker", takeover=young)
        self._ping_since = None  # the broker is alive
        if self._skip:  # the rest of an oversized PUBLISH: dropped as it arrives
            if len(data) <= self._skip:
                self._skip -= len(data)
                return not self._skip
            data = data[self._skip:]
            self._skip = 0
        # Linear in the packet's size, however many reads it takes: the chunks of an incomplete
        # packet are joined once, when the packet is complete (or its length is not known yet).
        self._chunks.append(data)
        self._chunked += len(data)
        if len(self._buf) - self._pos + self._chunked < self._need:
            return False
        tail = self._buf[self._pos:] if self._pos < len(self._buf) else b""
        if not tail and len(self._chunks) == 1:
            self._buf = data
        else:
            self._buf = b"".join([tail, *self._chunks]) if tail else b"".join(self._chunks)
        self._chunks, self._chunked, self._pos = [], 0, 0
        return True

    def _keepalive(self, reading: bool = True) -> None:
        """PINGREQ when nothing was sent for half the keep-alive (also while intake is paused, so
        the broker never drops a bridge that waits for Kafka). Only a reading loop judges the
        answer: no byte at all for a keep-alive after a PINGREQ means the connection is dead."""
        keepalive = self._keepalive_s
        if not keepalive:  # the broker's Server Keep Alive 0: no keep-alive at all
            return
        now = time.monotonic()
        if reading and self._ping_since is not None and now - self._ping_since > keepalive:
            raise _Disconnected(f"no answer to PINGREQ within {keepalive}s")
        if now - self._last_sent >= keepalive / 2:
            if self._ping_since is None:
                self._ping_since = now
            self._send(_PINGREQ)

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            return
        self._out += data
        self._flush_out()

    def _flush_out(self) -> None:
        sock = self._sock
        if sock is None or not self._out:
            return
        try:
            sent = sock.send(self._out)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        if sent:
            del self._out[:sent]
            self._last_sent = time.monotonic()

    def _lost(self, why: str, reason: int = 0, takeover: bool = False) -> None:
        """The connection is gone. The backoff starts again from its minimum only when the
        connection had been up for a stable period: a broker that drops us at once (say, over a
        message we cannot parse) gets ever longer pauses, not a tight reconnect loop."""
        now = time.monotonic()
        s = self.settings
        if now - self._connected_at >= _STABLE_S:
            self._delay = s.reconnect_min_s
        else:
            self._delay = min(self._delay * 2, s.reconnect_max_s)
        log.warning("mqtt connection lost (%s); reconnecting in %.1fs", why, self._delay)
        if reason >= 0x80:
            if reason == 0x81:
                self.malformed += 1
            self._say_goodbye(reason)
        self._close()
        self._retry_at = now + self._delay
        if takeover:
            self._taken_over(now)

    def _taken_over(self, now: float) -> None:
        """Two clients with one client id kick each other off forever (each reconnect takes the
        session back): one loud ERROR, then, after a few take-overs in a short time, give up with
        an :class:`MqttError` from :meth:`read` so the process exits non-zero."""
        takeovers = self._takeovers
        takeovers.append(now)
        while takeovers and now - takeovers[0] > _TAKEOVER_WINDOW_S:
            takeovers.popleft()
        s = self.settings
        if len(takeovers) == 1:
            log.error("mqtt broker %s:%s gave client id %r to another connection (session taken over, or closed "
                      "right after CONNACK): two clients with one id kick each other off; give each bridge its "
                      "own bridge.client_id", s.host, s.port, self.client_id)
        if len(takeovers) >= _TAKEOVERS_MAX:
            self._wanted = False
            raise MqttError(f"MQTT broker at {s.host}:{s.port} took the session of client id {self.client_id!r} "
                            f"away {len(takeovers)} times within {_TAKEOVER_WINDOW_S:.0f}s: another client uses "
                            "the same id (or the broker refuses this client right after CONNACK)",
                            reason_code=_SESSION_TAKEN_OVER,
                            hint="give each bridge its own --client-id (bridge.client_id)")

    def _say_goodbye(self, reason: int) -> None:
        """Best effort: tell the broker why we disconnect (MQTT 5 only has reason codes)."""
        if self._sock is not None:
            try:
                self._sock.send(disconnect_packet(reason, self._v5))
            except OSError:
                pass

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        self._buf, self._pos, self._out = b"", 0, bytearray()
        self._chunks, self._chunked, self._need, self._skip, self._held = [], 0, 0, 0, None
        self._incomplete = False
        self._ping_since = None
        self._subscribing.clear()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _maybe_reconnect(self) -> None:
        if not self._wanted or time.monotonic() < self._retry_at:
            return
        try:
            self._open(10.0)
        except MqttError as error:
            self._delay = min(self._delay * 2, self.settings.reconnect_max_s)
            self._retry_at = time.monotonic() + self._delay
            log.warning("mqtt reconnect failed (%s); next attempt in %.1fs", error, self._delay)

    # -- connecting ----------------------------------------------------------------------------

    def _open(self, timeout_s: float) -> None:
        """Connect with the configured protocol. ``auto``: MQTT 5, and 3.1.1 from the first time
        the broker refuses 5 (a refusal code, or closing the connection before CONNACK) and then
        takes 3.1.1, for the life of this subscriber; a 3.1.1 attempt that fails too is a
        connection failure (the next attempt tries 5 again)."""
        protocol = self.settings.protocol
        if protocol != "auto" or self._downgraded:
            self._connect_once(protocol == "5", timeout_s)
            return
        try:
            self._connect_once(True, timeout_s)
        except MqttError as error:
            if error.reason_code not in UNSUPPORTED_PROTOCOL:
                raise
            self._connect_once(False, timeout_s)  # failing too: a connection failure; both again next time
            log.warning("mqtt broker %s:%s refused MQTT 5 (%s); using MQTT 3.1.1 from now on",
                        self.settings.host, self.settings.port, error)
            self._downgraded = True

    def _connect_once(self, v5: bool, timeout_s: float) -> None:
        s = self.settings
        self._close()
        self._v5 = v5
        if self._sharing.needs_probe(self._filters, v5):  # before the session resumes: nothing is in flight
            self._sharing.run_probe(self._filters)
        sock, connack, rest = open_connection(s, self._connect_packet(v5), v5, timeout_s, self.client_id)
        session_present = connack.session_present
        if v5 and connack.properties.get(PROP_SHARED_SUBSCRIPTION_AVAILABLE) == 0:
            try:
                self._sharing.lacking("its CONNACK says Shared Subscription Available = 0")
            except MqttError:
                sock.close()
                raise
        server_keepalive = connack.properties.get(PROP_SERVER_KEEP_ALIVE)
        self._keepalive_s = server_keepalive if isinstance(server_keepalive, int) else s.keepalive_s
        if self._keepalive_s != s.keepalive_s:
            log.info("mqtt broker sets the keep-alive to %ss (Server Keep Alive; mqtt.keepalive_s is %ss)",
                     self._keepalive_s, s.keepalive_s)
        sock.setblocking(False)
        self._sock = sock
        self._buf, self._pos = rest, 0  # queued messages may follow the CONNACK in the same segment
        self._last_sent = self._connected_at = time.monotonic()
        log.info("mqtt connected to %s:%s as %s (MQTT %s, session present: %s)",
                 s.host, s.port, self.client_id, self.protocol, session_present)
        if self._filters:  # re-subscribe after a reconnect; harmless when the session kept them
            self._subscribe(self._wire(self._filters), timeout_s)
        if self.on_connected is not None:
            self.on_connected(session_present)

    def _connect_packet(self, v5: bool) -> bytes:
        s = self.settings
        props: dict[int, int] = {}
        if self.session_expiry_s is not None:
            props[PROP_SESSION_EXPIRY] = self.session_expiry_s
        if self.receive_maximum is not None:
            props[PROP_RECEIVE_MAXIMUM] = self.receive_maximum
        if self.announce_max_packet:
            props[PROP_MAXIMUM_PACKET_SIZE] = self.max_packet_bytes
        return connect_packet(v5=v5, client_id=self.client_id, clean_start=self.clean_start,
                              keepalive_s=s.keepalive_s, username=s.username,
                              password=s.password_value(),
                              properties=props)

    def _subscribe(self, filters: list[tuple[str, int]], timeout_s: float) -> None:
        """One SUBSCRIBE for all filters. The SUBACK is not awaited: a resumed session's queued
        messages come before it, and waiting would mean reading them all into memory. It is
        checked when the loop reads it: a refused filter, or one granted a lower QoS than asked
        (QoS 0 would make the bridge at most once), raises :class:`MqttError` from :meth:`read`."""
        self._next_id = self._next_id % 65535 + 1
        self._subscribing[self._next_id] = list(filters)
        self._send(subscribe_packet(self._next_id, filters, self._v5))
        deadline = time.monotonic() + timeout_s
        while self._out and self._sock is not None:  # the SUBSCRIBE itself is out before we go on
            if time.monotonic() > deadline:
                raise MqttError(f"could not send SUBSCRIBE within {timeout_s:.0f}s")
            select.select([], [self._sock], [], 0.05)
            self._flush_out()

    def _wire(self, filters: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The filters as subscribed (:meth:`SharedSubscriptions.wire`), dropping the shared ones
        an earlier run's session may hold when they are subscribed plainly."""
        wired, stale = self._sharing.wire(filters)
        if stale and not self.clean_start:
            self._next_id = self._next_id % 65535 + 1
            self._send(unsubscribe_packet(self._next_id, stale, self._v5))
        return wired

    def _probe_client(self) -> Subscriber:
        settings = self.settings.model_copy(update={"protocol": self.protocol})
        return Subscriber(settings, derived_client_id(self.client_id, "probe"), clean_start=True,
                          shared_subscriptions="on")

    def _suback(self, body: bytes) -> None:
        ack = parse_suback(body, self._v5)
        filters = self._subscribing.pop(ack.packet_id, None)
        if filters is None:
            log.debug("mqtt: SUBACK for packet id %s that no SUBSCRIBE of this connection has", ack.packet_id)
            return
        if len(ack.codes) != len(filters):
            raise _malformed(f"SUBACK with {len(ack.codes)} codes for {len(filters)} filters")
        granted = list(zip(filters, ack.codes, strict=True))
        not_shared = [fq for fq, code in granted if code == _SHARED_NOT_SUPPORTED and is_shared(fq[0])]
        if not_shared and self._sharing.mode != "on":  # MQTT 5: subscribe those plainly
            self._sharing.lacking(f"its SUBACK refused {not_shared[0][0]} with reason 0x9e")
            self._subscribe(self._wire(not_shared), 10.0)
            granted = [(fq, code) for fq, code in granted if fq not in not_shared]
        s = self.settings
        why = f" ({ack.reason})" if ack.reason else ""
        refused = [f"{f} (reason {code:#x})" for (f, _qos), code in granted if code >= 0x80]
        if refused:
            raise MqttError(f"MQTT broker at {s.host}:{s.port} refused the subscription to {', '.join(refused)}"
                            f"{why}: nothing would arrive from it", reason_code=max(c for _fq, c in granted),
                            hint="check the broker's ACL for this user and client id")
        lowered = [f"{f} (QoS {code})" for (f, qos), code in granted if code < qos]
        if lowered:
            raise MqttError(f"MQTT broker at {s.host}:{s.port} granted a lower QoS than asked to {', '.join(lowered)}"
                            f"{why}: the bridge would be at most once and lose messages",
                            hint="allow QoS 1 on the broker (e.g. max_qos) for the bridge's topics")
