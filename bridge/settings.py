"""The bridge's settings: the shared connections plus a ``[bridge]`` section."""

from __future__ import annotations

import socket

from pydantic import BaseModel, ConfigDict, Field

from bridge._mqtt_shared import SharedMode
from bridge._subscriber import DEFAULT_MAX_PACKET_BYTES
from forewarn.settings import ServiceSettings

__all__ = ["BridgeOptions", "BridgeSettings"]


def _default_client_id() -> str:
    return f"forewarn-bridge-{socket.gethostname()}"


class BridgeOptions(BaseModel):
    """How the bridge subscribes, how much it keeps in flight, where it reports."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = Field(default_factory=_default_client_id, min_length=1, max_length=128,
                           description="stable MQTT client id; it names the persistent session (default "
                           "forewarn-bridge-<hostname>). Give each bridge process its own")
    share_group: str = Field("forewarn-bridge", pattern=r"^[^/#+]*$",
                             description="shared-subscription group ($share/<group>/...): bridges in one group "
                             "split the load. Empty: a plain subscription")
    shared_subscriptions: SharedMode = Field("auto", description="whether the broker has shared subscriptions: "
                                             "auto = detect (MQTT 5 says so; on 3.1.1 a probe message), then "
                                             "subscribe plainly with a warning if not; on = insist (error if it "
                                             "says no); off = always subscribe plainly (one bridge per group)")
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, description="seconds the broker keeps the session (and "
                                  "queues messages) while the bridge is away")
    receive_maximum: int = Field(10_000, ge=1, le=65535, description="unacknowledged MQTT messages the broker may "
                                 "send at once (MQTT 5 Receive Maximum)")
    max_packet_bytes: int = Field(DEFAULT_MAX_PACKET_BYTES, ge=1024, le=268_435_460, description="a longer MQTT "
                                  "packet is read streaming, never held, and becomes a too_large dead letter "
                                  "(default: the largest batch the contract accepts plus headroom)")
    announce_max_packet: bool = Field(False, description="also announce max_packet_bytes to the broker (MQTT 5 "
                                      "Maximum Packet Size): it then sends nothing longer, but discards such "
                                      "messages without a trace (MQTT 5, 3.1.2.11.4) instead of the bridge "
                                      "dead-lettering them")
    max_in_flight: int = Field(100_000, ge=1, description="records produced but not yet confirmed by Kafka before "
                               "intake pauses")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics on this port "
                                     "(0 = any free port; unset = off)")
    metrics_host: str = Field("0.0.0.0", description="address the metrics endpoint listens on")  # noqa: S104
    dlq_max_bytes: int = Field(512 * 1024, ge=1024, description="longer rejected payloads are truncated in the DLQ")
    kafka_wait_log_s: float = Field(10.0, gt=0, description="period of the 'waiting for Kafka' log line, in seconds")
    retry_backoff_s: float = Field(1.0, gt=0, description="pause before re-sending records Kafka refused, in seconds")
    dead_letter_after: int = Field(3, ge=1, description="times Kafka may refuse a record for good (an error that is "
                                   "not retriable), at least once sent alone, before its dead letter replaces it")
    shutdown_timeout_s: float = Field(30.0, ge=0, description="seconds a shutdown waits for Kafka to confirm what is "
                                      "in flight")
    check_topics: bool = Field(True, description="check at start that the Kafka topics exist")


class BridgeSettings(ServiceSettings):
    """Settings of ``forewarn bridge`` and ``forewarn dlq``."""

    bridge: BridgeOptions = BridgeOptions()
