"""Faster reads for paho's network thread (a receive-heavy client).

paho 2.x reads one packet per ``select()`` (``loop_read`` limits itself to the number of
in-flight *outgoing* messages, 1 for a subscriber) and each packet with at least three
``recv()`` calls (the command byte, each length byte, the body). For a bridge receiving tens of
thousands of small messages a second that is most of its CPU. :func:`install` changes one paho
client instance, not the library: ``recv`` goes through a 64 KiB buffer, and ``loop_read``
keeps reading packets until the socket and the buffer are both empty. The buffer is dropped
whenever paho opens a new socket.
"""

from __future__ import annotations

import logging
from typing import Any

from paho.mqtt.enums import MQTTErrorCode

__all__ = ["install"]

log = logging.getLogger(__name__)

_CHUNK = 65536
_MAX_PACKETS = 5000  # per wake-up; then paho gets to write (acks, pings) and we come back


class _BufferedReader:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.recv = client._sock_recv  # paho's own: maps SSL want-read/write to BlockingIOError
        self.sock: Any = None
        self.buf = b""
        self.pos = 0

    def __call__(self, bufsize: int) -> bytes:
        sock = self.client._sock
        if sock is not self.sock:
            self.sock, self.buf, self.pos = sock, b"", 0
        if self.pos >= len(self.buf):
            data: bytes = self.recv(_CHUNK)  # raises BlockingIOError when there is nothing
            if not data:
                return b""  # closed
            self.buf, self.pos = data, 0
        start = self.pos
        end = self.pos = min(start + bufsize, len(self.buf))
        return self.buf[start:end]

    @property
    def buffered(self) -> bool:
        return self.client._sock is self.sock and self.pos < len(self.buf)


def install(client: Any) -> bool:
    """Speed up reads of ``client`` (a paho ``Client``); False when its internals are not as expected."""
    needed = ("_sock_recv", "_packet_read", "_loop_rc_handle", "_sock")
    if not all(hasattr(client, name) for name in needed):
        log.warning("paho internals changed; reading at paho's own pace")
        return False
    reader = _BufferedReader(client)
    packet_read = client._packet_read
    rc_handle = client._loop_rc_handle

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        for _ in range(_MAX_PACKETS):
            if client._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = packet_read()
            if rc > 0:
                return rc_handle(rc)  # type: ignore[no-any-return]
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN and not reader.buffered:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._sock_recv = reader
    client.loop_read = loop_read
    return True
