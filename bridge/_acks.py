"""Sending PUBACKs.

paho's ``Client.ack()`` queues one packet and wakes the network thread through its socket pair,
per acknowledgement: two system calls for four bytes. :class:`AckWriter` collects the
acknowledgements of one round and writes them as one buffer (the bridge's own
:class:`~bridge._subscriber.Subscriber`, or a paho client's packet queue).
"""

from __future__ import annotations

import struct
from typing import Any

from bridge._subscriber import Subscriber
from forewarn.errors import MqttError
from forewarn.mqtt import MqttClient
from forewarn.ports import MqttLike

__all__ = ["AckWriter"]

_PUBACK_V311 = struct.Struct("!BBH")  # fixed header 0x40, remaining length 2, packet id
_PUBACK = 0x40


class AckWriter:
    """``ack(mid)`` for QoS 1 messages, written out on ``flush()``."""

    def __init__(self, mqtt: MqttLike) -> None:
        self.mqtt = mqtt
        self._mids: list[int] = []

    def ack(self, mid: int) -> None:
        self._mids.append(mid)

    def flush(self) -> None:
        mids, self._mids = self._mids, []
        if not mids:
            return
        if isinstance(self.mqtt, Subscriber):
            self.mqtt.ack_many(mids)
            return
        raw = self._raw_client()
        if raw is None:
            for mid in mids:
                self.mqtt.ack(mid, 1)
            return
        # One PUBACK is 0x40 0x02 <id>: valid for MQTT 3.1.1 and for MQTT 5 (reason 0 "success"
        # and no properties may be left out). Queue them as one buffer: one wake-up, one send.
        pack = _PUBACK_V311.pack
        packet = b"".join([pack(_PUBACK, 2, mid) for mid in mids])
        raw._packet_queue(_PUBACK, packet, 0, 0)

    def _raw_client(self) -> Any:
        if not isinstance(self.mqtt, MqttClient):
            return None
        try:
            client = self.mqtt.client
        except MqttError:  # not connected: paho would drop the acks too; the broker resends
            return None
        return client if hasattr(client, "_packet_queue") and client._manual_ack else None
