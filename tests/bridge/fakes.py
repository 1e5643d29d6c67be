"""Fakes of an MQTT broker for the bridge's tests, at two levels.

:class:`WireBroker` and :class:`MiniBroker` speak MQTT on a real TCP socket to the real
:class:`bridge._subscriber.Subscriber`: the first runs a scripted exchange per connection (to pin
the wire format byte by byte), the second is a small broker that behaves like a given broker
implementation where implementations differ (:class:`Profile`: 3.1.1 only and how MQTT 5 is
refused, shared subscriptions or not, what SUBACK grants, CONNACK properties), with the real
return codes.

An in-memory MQTT broker session behind the bridge's subscriber interface:

:class:`FakeSubscriber` speaks :class:`bridge._subscriber.SubscriberLike` with the semantics the
bridge relies on from the real :class:`~bridge._subscriber.Subscriber` and Mosquitto:

- the broker assigns packet ids to QoS 1 messages (1..65535, wrapping, never an id still
  unacknowledged); QoS 0 messages carry id 0;
- ``read(limit)`` returns at most ``limit`` messages, only while connected, and at most
  ``receive_maximum`` unacknowledged ones at a time (MQTT 5 Receive Maximum);
- PUBACKs must come in the order the messages were sent (MQTT 4.6) and name ids outstanding on
  the current connection: anything else raises :class:`ProtocolViolation`, so a bridge bug fails
  the test instead of passing unnoticed; PUBACKs while disconnected are lost, as on a socket;
- :meth:`drop` loses the connection; the next ``read`` or ``housekeeping`` reconnects, calls
  ``on_connected(session_present)`` first and, when the session was kept, sends the unacknowledged
  messages again with their ids (DUP) before anything new; a session that was not kept lost them.
"""

from __future__ import annotations

import collections
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from bridge._mqtt_packets import packet, string, varint
from bridge._subscriber import Message, Subscriber
from forewarn.errors import MqttError
from forewarn.settings import MqttSettings

__all__ = ["AEDES_LIKE", "MOSQUITTO_311_LIKE", "FakeSubscriber", "MiniBroker", "Profile", "ProtocolViolation",
           "Sent", "WireBroker", "mqtt_settings", "packet", "publish", "read_packet", "read_until", "read_until_error",
           "reconnected", "string", "topic_matches", "varint", "wait_for"]


class ProtocolViolation(AssertionError):
    """The bridge broke the MQTT protocol (e.g. a PUBACK out of order or for an unknown id)."""


@dataclass(frozen=True)
class Sent:
    """One PUBLISH as the broker sent it."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool = False


class FakeSubscriber:
    """The broker's queue for one persistent session plus the connection the bridge reads."""

    def __init__(self, *, receive_maximum: int | None = None, first_mid: int = 1) -> None:
        self.on_connected: Callable[[bool], None] | None = None
        self.receive_maximum = receive_maximum
        self.connected = False
        self.connects = 0
        self.subscriptions: list[str] = []
        self.acks: list[int] = []  # every PUBACK the broker received, in order
        self.sent: list[Sent] = []  # every PUBLISH the broker sent
        self.queued: collections.deque[Sent] = collections.deque()  # not yet sent on a connection
        self._outstanding: collections.OrderedDict[int, Sent] = collections.OrderedDict()  # sent, unacked QoS 1
        self._next_mid = first_mid
        self._wanted = False
        self._keep_session = True

    # -- the broker's side (what tests do) ----------------------------------------------------

    def deliver(self, topic: str, payload: bytes, qos: int = 1) -> Sent:
        """A publisher's message reaches the session's queue; returns it with its packet id."""
        message = Sent(topic, payload, qos, self._take_mid() if qos else 0)
        self.queued.append(message)
        return message

    def drop(self, *, session_present: bool = True) -> None:
        """The connection is lost; the broker keeps the session (or not) for the reconnect."""
        self.connected = False
        self._keep_session = session_present

    # -- SubscriberLike ---------------------------------------------------------------------

    def connect(self, timeout_s: float = 10.0) -> None:
        self._wanted = True
        self._open()

    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        self.subscriptions.extend(topics)

    def read(self, limit: int) -> list[Message]:
        if not self.connected:
            self._maybe_reconnect()
            return []
        out: list[Message] = []
        while self.queued and len(out) < limit:
            head = self.queued[0]
            if head.qos and self.receive_maximum is not None and len(self._outstanding) >= self.receive_maximum:
                break
            self.queued.popleft()
            self.sent.append(head)
            if head.qos:
                self._outstanding[head.mid] = head
            out.append((head.topic, head.payload, head.qos, head.mid))
        return out

    def ack_many(self, mids: list[int]) -> None:
        if not self.connected:
            return  # written to a dead socket: the broker never sees them
        for mid in mids:
            if not self._outstanding:
                raise ProtocolViolation(f"PUBACK {mid} but nothing is unacknowledged on this connection")
            oldest = next(iter(self._outstanding))
            if mid != oldest:
                known = "outstanding" if mid in self._outstanding else "not outstanding on this connection"
                raise ProtocolViolation(f"PUBACK {mid} ({known}) before PUBACK {oldest}: acknowledgements go "
                                        "in the order the messages were sent")
            del self._outstanding[mid]
            self.acks.append(mid)

    def wait_readable(self, timeout_s: float) -> None:
        if self.connected and self._sendable():
            return
        if timeout_s > 0:
            time.sleep(timeout_s)

    def housekeeping(self) -> None:
        if not self.connected:
            self._maybe_reconnect()

    def disconnect(self) -> None:
        self._wanted = False
        self.connected = False

    # -- internals ----------------------------------------------------------------------------

    def _sendable(self) -> bool:
        if not self.queued:
            return False
        if not self.queued[0].qos or self.receive_maximum is None:
            return True
        return len(self._outstanding) < self.receive_maximum

    def _take_mid(self) -> int:
        in_use = {m.mid for m in self.queued if m.qos} | set(self._outstanding)
        for _ in range(65535):
            mid = self._next_mid
            self._next_mid = mid % 65535 + 1
            if mid not in in_use:
                return mid
        raise ProtocolViolation("all 65535 packet ids are in use")

    def _maybe_reconnect(self) -> None:
        if self._wanted:
            self._open()

    def _open(self) -> None:
        present = self.connects > 0 and self._keep_session
        unacked = list(self._outstanding.values())
        self._outstanding.clear()
        if present:  # resent first, same ids, flagged DUP
            self.queued.extendleft(Sent(m.topic, m.payload, m.qos, m.mid, dup=True) for m in reversed(unacked))
        elif self.connects:
            self.queued.clear()  # a new session: nothing of the old one survives
        self._keep_session = True
        self.connected = True
        self.connects += 1
        if self.on_connected is not None:
            self.on_connected(present)


# -- on the wire -----------------------------------------------------------------------------


def publish(topic: str | bytes, payload: bytes, mid: int, qos: int = 1, v5: bool = True,
            props: bytes = b"") -> bytes:
    body = string(topic) + (struct.pack("!H", mid) if qos else b"")
    if v5:
        body += varint(len(props)) + props
    return packet(0x30 | (qos << 1), body + payload)


def read_packet(conn: socket.socket) -> tuple[int, bytes]:
    first = conn.recv(1)
    if not first:
        raise ConnectionError("closed")
    length, shift = 0, 0
    while True:
        got = conn.recv(1)
        if not got:
            raise ConnectionError("closed")
        length |= (got[0] & 0x7F) << shift
        shift += 7
        if got[0] < 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return first[0], body


def mqtt_settings(port: int, **extra: object) -> MqttSettings:
    """Settings for a fake broker on ``port`` with short reconnect pauses."""
    return MqttSettings.model_validate({"port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2, **extra})


def wait_for(condition: Callable[[], object], timeout_s: float = 5.0) -> bool:
    """Poll ``condition`` until it is true or the deadline passed; returns whether it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def reconnected(sub: Subscriber, timeout_s: float = 5.0) -> bool:
    """Run the subscriber's housekeeping until it is connected again (or the deadline passed)."""
    def tick() -> bool:
        sub.housekeeping()
        return sub.is_connected
    return wait_for(tick, timeout_s)


def read_until(sub: Subscriber, n: int, timeout_s: float = 5.0) -> list[Message]:
    """Read until ``n`` messages arrived or the deadline passed."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        got.extend(sub.read(n - len(got)))
        sub.wait_readable(0.01)
    return got


def read_until_error(*subs: Subscriber, timeout_s: float = 10.0) -> MqttError | None:
    """Drive the subscribers (read, housekeeping) until one raises :class:`MqttError`; returns it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for sub in subs:
            try:
                sub.read(10)
                sub.housekeeping()
            except MqttError as error:
                return error
        time.sleep(0.01)
    return None


def reset(conn: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashing or refusing broker may."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class WireBroker:
    """Accepts connections and runs ``script(conn, n)`` for the n-th one, one at a time."""

    def __init__(self, script: Callable[[socket.socket, int], None]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.script = script
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        n = 0
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                try:
                    self.script(conn, n)
                except (ConnectionError, OSError, IndexError):
                    pass
                except BaseException as error:  # surfaced by the test
                    self.errors.append(error)
            n += 1

    def close(self) -> None:
        self.server.close()


# -- a small broker with an implementation's behaviour -------------------------------------------


@dataclass(frozen=True)
class Profile:
    """Where broker implementations differ, as :class:`MiniBroker` should behave.

    ``refuse_v5``: what a broker without MQTT 5 does with a v5 CONNECT: ``connack_0x01`` (a 3.1.1
    CONNACK "unacceptable protocol version", as Mosquitto 1.x), ``connack_0x84`` (a v5 CONNACK
    "unsupported protocol version"), ``close`` (closes the socket, as aedes and Moquette 0.17),
    ``reset`` (a TCP RST). ``shared_subscriptions`` False: ``$share/...`` is an ordinary (literal)
    filter that nothing is published to, as on a broker that does not know them. ``grant``
    decides each SUBACK code from (filter, requested QoS); ``connack_properties`` are raw v5
    CONNACK properties; ``takeover`` True: a second connection with a client id already
    connected closes the first (v5: DISCONNECT 0x8E), as every broker does. ``max_client_id``:
    longer client ids are refused with "identifier rejected" (3.1.1 return code 2, v5 0x85), as
    MQTT 3.1 brokers (and aedes and Mosquitto speaking 3.1) do past 23 characters.

    ``inflight_window``: persistent sessions as Moquette 0.17 keeps them (broker/Session.java,
    MQTTConnection.java): at most this many QoS 1 messages in flight per session, the rest queued;
    the in-flight window (a map by packet id: PUBACKs in any order) outlives the connection, but
    packet ids restart at 1 on every connection and a new message given the id of one still in
    flight replaces it (:attr:`MiniBroker.replaced_in_flight`); what was in flight is sent again
    (DUP, same id) only by a periodic resender (:meth:`MiniBroker.resend_in_flight`), not on
    reconnect. A PUBACK whose id is not in the window is recorded in
    :attr:`MiniBroker.unmatched_pubacks` (Moquette logs "Received a PUBACK with not matching
    packetId" and ignores it).
    """

    versions: frozenset[int] = frozenset({4, 5})
    refuse_v5: Literal["connack_0x01", "connack_0x84", "close", "reset"] = "connack_0x01"
    shared_subscriptions: bool = True
    grant: Callable[[str, int], int] | None = None
    connack_properties: bytes = b""
    connack_delay_s: float = 0.0
    max_client_id: int | None = None
    inflight_window: int | None = None


MOSQUITTO_311_LIKE = Profile(versions=frozenset({3, 4}), refuse_v5="connack_0x01", shared_subscriptions=False)
AEDES_LIKE = Profile(versions=frozenset({3, 4}), refuse_v5="close", shared_subscriptions=False)
MOQUETTE_LIKE = Profile(versions=frozenset({3, 4}), refuse_v5="close", shared_subscriptions=False, inflight_window=10)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching (``+`` one level, ``#`` the rest; ``$`` topics only when named)."""
    f, t = topic_filter.split("/"), topic.split("/")
    if t[0].startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


@dataclass
class _Conn:
    sock: socket.socket
    client_id: str
    v5: bool
    filters: dict[str, int] = field(default_factory=dict)  # filter as subscribed -> granted QoS
    next_mid: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)


@dataclass
class _Session:
    """A persistent session of :attr:`Profile.inflight_window` brokers (Moquette-like)."""

    filters: dict[str, int] = field(default_factory=dict)
    window: dict[int, tuple[str, bytes]] = field(default_factory=dict)  # packet id -> message in flight
    queue: collections.deque[tuple[str, bytes]] = field(default_factory=collections.deque)
    conn: _Conn | None = None


class MiniBroker:
    """A real (small) MQTT broker on a free port, one thread per connection, behaving as
    ``profile`` says. Tests publish with :meth:`publish` and inspect :attr:`connects`,
    :attr:`pubacks`, :attr:`subscribes`, :attr:`unsubscribes` and :attr:`published`."""

    def __init__(self, profile: Profile = Profile()) -> None:
        self.profile = profile
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.connects: list[tuple[int, str]] = []  # (protocol level, client id) of every CONNECT
        self.pubacks: list[tuple[str, int]] = []  # (client id, packet id)
        self.subscribes: list[tuple[str, list[str]]] = []
        self.unsubscribes: list[tuple[str, list[str]]] = []
        self.published: list[tuple[str, str]] = []  # (client id, topic) of PUBLISH from clients
        self.disconnect_reasons: list[int] = []  # reason code of every DISCONNECT from a client
        self.errors: list[BaseException] = []
        self.unmatched_pubacks: list[tuple[str, int]] = []  # (client id, packet id) not in flight
        self.replaced_in_flight = 0  # in-flight messages a new one took the packet id of (lost)
        self._sessions: dict[str, _Session] = {}
        self._conns: dict[str, _Conn] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    # -- the test's side -----------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Route a message to every matching subscription; returns how many got it."""
        if self.profile.inflight_window is not None:
            return self._enqueue(topic, payload)
        with self._lock:
            conns = list(self._conns.values())
        return sum(self._deliver(conn, topic, payload, qos) for conn in conns)

    def send_raw(self, client_id: str, data: bytes) -> None:
        """Write raw bytes to a connected client (malformed packets, DISCONNECT, ...)."""
        self._conns[client_id].send(data)

    def resend_in_flight(self, client_id: str) -> None:
        """What Moquette's resender does every 5 s: every message of the session's in-flight
        window again, DUP set, with its packet id, in the order they entered the window."""
        with self._lock:
            session = self._sessions[client_id]
            if session.conn is None:
                return
            for mid, (topic, payload) in session.window.items():
                data = bytearray(publish(topic, payload, mid, v5=False))
                data[0] |= 0x08
                session.conn.send(bytes(data))

    def connected(self, client_id: str) -> bool:
        with self._lock:
            return client_id in self._conns

    def close(self) -> None:
        self.server.close()
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.sock.close()

    # -- the broker --------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn: _Conn | None = None
        try:
            conn = self._handshake(sock)
            if conn is None:
                return
            while True:
                first, body = read_packet(sock)
                self._handle(conn, first, body)
        except (ConnectionError, OSError, IndexError):
            pass
        except BaseException as error:  # surfaced by the test
            self.errors.append(error)
        finally:
            if conn is not None:
                with self._lock:
                    if self._conns.get(conn.client_id) is conn:
                        del self._conns[conn.client_id]
                    session = self._sessions.get(conn.client_id)
                    if session is not None and session.conn is conn:
                        session.conn = None
            sock.close()

    def _handshake(self, sock: socket.socket) -> _Conn | None:
        first, body = read_packet(sock)
        if first != 0x10:
            raise ConnectionError("first packet is not CONNECT")
        level = body[6]
        self.connects.append((level, ""))
        p = self.profile
        if level not in p.versions:
            if p.refuse_v5 == "connack_0x01":
                sock.sendall(b"\x20\x02\x00\x01")
            elif p.refuse_v5 == "connack_0x84":
                sock.sendall(b"\x20\x03\x00\x84\x00")
            elif p.refuse_v5 == "reset":
                reset(sock)
            return None
        v5 = level == 5
        pos = 10 + (self._props_len(body, 10) if v5 else 0)
        cid_len = struct.unpack("!H", body[pos:pos + 2])[0]
        client_id = body[pos + 2:pos + 2 + cid_len].decode()
        self.connects[-1] = (level, client_id)
        if p.max_client_id is not None and len(client_id) > p.max_client_id:
            sock.sendall(b"\x20\x03\x00\x85\x00" if v5 else b"\x20\x02\x00\x02")
            return None
        conn = _Conn(sock, client_id, v5)
        with self._lock:
            old = self._conns.get(client_id)
            self._conns[client_id] = conn
        if old is not None:  # session taken over
            try:
                if old.v5:
                    old.send(b"\xe0\x02\x8e\x00")
                old.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if p.connack_delay_s:
            time.sleep(p.connack_delay_s)
        props = varint(len(p.connack_properties)) + p.connack_properties if v5 else b""
        if p.inflight_window is None:
            conn.send(packet(0x20, b"\x00\x00" + props))
            return conn
        with self._lock:
            session = self._sessions.get(client_id)
            present = session is not None and not body[7] & 0x02  # clean session flag
            if session is None or not present:
                session = self._sessions[client_id] = _Session()
            session.conn, conn.filters = conn, session.filters
            conn.send(packet(0x20, bytes([int(present), 0]) + props))
            self._drain(session)  # what was queued; the in-flight window waits for the resender
        return conn

    def _handle(self, conn: _Conn, first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == 0x80:  # SUBSCRIBE
            mid, pos = body[:2], 2 + (self._props_len(body, 2) if conn.v5 else 0)
            filters, codes = [], bytearray()
            while pos < len(body):
                n = struct.unpack("!H", body[pos:pos + 2])[0]
                topic_filter, qos = body[pos + 2:pos + 2 + n].decode(), body[pos + 2 + n] & 3
                pos += 3 + n
                code = self.profile.grant(topic_filter, qos) if self.profile.grant else qos
                if topic_filter.startswith("$share/") and conn.v5 and not self.profile.shared_subscriptions:
                    code = 0x9E
                filters.append(topic_filter)
                codes.append(code)
                if code < 0x80:
                    conn.filters[topic_filter] = code
            self.subscribes.append((conn.client_id, filters))
            conn.send(packet(0x90, mid + (b"\x00" if conn.v5 else b"") + bytes(codes)))
        elif kind == 0xA0:  # UNSUBSCRIBE
            mid, pos = body[:2], 2 + (self._props_len(body, 2) if conn.v5 else 0)
            gone = []
            while pos < len(body):
                n = struct.unpack("!H", body[pos:pos + 2])[0]
                gone.append(body[pos + 2:pos + 2 + n].decode())
                pos += 2 + n
            for topic_filter in gone:
                conn.filters.pop(topic_filter, None)
            self.unsubscribes.append((conn.client_id, gone))
            unsuback = mid + (b"\x00" + b"\x00" * len(gone) if conn.v5 else b"")
            conn.send(packet(0xB0, unsuback))
        elif kind == 0x30:  # PUBLISH from the client
            qos = (first >> 1) & 3
            n = struct.unpack("!H", body[:2])[0]
            topic = body[2:2 + n].decode()
            pos = 2 + n
            mid = body[pos:pos + 2] if qos else b""
            pos += 2 if qos else 0
            if conn.v5:
                pos += self._props_len(body, pos)
            self.published.append((conn.client_id, topic))
            if qos:
                conn.send(b"\x40\x02" + mid)
            self.publish(topic, body[pos:], qos)
        elif kind == 0x40:  # PUBACK
            mid = struct.unpack("!H", body[:2])[0]
            self.pubacks.append((conn.client_id, mid))
            if self.profile.inflight_window is not None:
                with self._lock:
                    session = self._sessions[conn.client_id]
                    if session.window.pop(mid, None) is None:
                        self.unmatched_pubacks.append((conn.client_id, mid))
                    self._drain(session)
        elif kind == 0xC0:  # PINGREQ
            conn.send(b"\xd0\x00")
        elif kind == 0xE0:
            self.disconnect_reasons.append(body[0] if body else 0)
            raise ConnectionError("client disconnected")

    @staticmethod
    def _props_len(body: bytes, pos: int) -> int:
        """Bytes taken by the v5 properties (their length and them) at ``pos``."""
        plen, shift, i = 0, 0, pos
        while True:
            byte = body[i]
            i += 1
            plen |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return i - pos + plen

    def _enqueue(self, topic: str, payload: bytes) -> int:
        with self._lock:
            sessions = [s for s in self._sessions.values() if any(topic_matches(f, topic) for f in s.filters)]
            for session in sessions:
                session.queue.append((topic, payload))
                self._drain(session)
        return len(sessions)

    def _drain(self, session: _Session) -> None:
        """Queued messages into free in-flight slots, numbered by the connection (caller holds the lock)."""
        conn = session.conn
        size = self.profile.inflight_window or 0
        while conn is not None and session.queue and len(session.window) < size:
            topic, payload = session.queue.popleft()
            conn.next_mid = conn.next_mid % 65535 + 1
            if conn.next_mid in session.window:
                self.replaced_in_flight += 1
            session.window[conn.next_mid] = (topic, payload)
            try:
                conn.send(publish(topic, payload, conn.next_mid, v5=False))
            except OSError:
                return

    def _deliver(self, conn: _Conn, topic: str, payload: bytes, qos: int) -> int:
        for topic_filter, granted in list(conn.filters.items()):
            plain = topic_filter
            if topic_filter.startswith("$share/") and self.profile.shared_subscriptions:
                plain = topic_filter.split("/", 2)[2]
            if topic_matches(plain, topic):
                out_qos = min(qos, granted)
                conn.next_mid = conn.next_mid % 65535 + 1
                try:
                    conn.send(publish(topic, payload, conn.next_mid, qos=out_qos, v5=conn.v5))
                except OSError:
                    return 0
                return 1
        return 0
