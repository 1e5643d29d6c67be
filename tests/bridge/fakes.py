"""An in-memory MQTT broker session behind the bridge's subscriber interface.

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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bridge._subscriber import Message

__all__ = ["FakeSubscriber", "ProtocolViolation", "Sent"]


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
