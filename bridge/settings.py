"""The bridge's settings: the shared connections plus a ``[bridge]`` section."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import socket
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from bridge._mqtt_ids import host_client_id
from bridge._mqtt_shared import SharedMode
from bridge._subscriber import DEFAULT_MAX_PACKET_BYTES
from forewarn.settings import ServiceSettings

__all__ = ["BridgeOptions", "BridgeSettings"]

log = logging.getLogger(__name__)


_SLOTS = 64
_held: dict[str, tuple[str, int]] = {}  # the default id this process took, and the lock file it holds open


def _default_client_id(lock_dir: Path | None = None) -> str:
    """``fwb-<hash of the host name>``, or ``-2``, ``-3``, ... when another process on this host
    holds that one: unique among the bridges running on a host, the same again after a restart
    (the first bridge of a host always gets the first id back), which a persistent session needs
    to be resumed, and short enough for every broker (:mod:`bridge._mqtt_ids`). Each id is held
    with a lock on a file in the user's temporary directory for the life of the process (the
    kernel lets go of it however the process ends)."""
    host = socket.gethostname()
    key = str(lock_dir)
    if key in _held:
        return _held[key][0]
    folder = lock_dir or Path(tempfile.gettempdir()) / f"forewarn-{os.getuid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for slot in range(1, _SLOTS + 1):
            client_id = host_client_id(host, slot)
            fd = os.open(folder / f"{client_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            _held[key] = (client_id, fd)
            if slot > 1:
                log.info("another process on this host holds MQTT client id %s; this bridge is %s",
                         host_client_id(host), client_id)
            return client_id
    except OSError as error:
        log.warning("cannot lock a default MQTT client id in %s (%s); using a random one (set bridge.client_id "
                    "for a session that survives restarts)", folder, error)
    else:
        log.warning("all %s default MQTT client ids of this host are taken; using a random one", _SLOTS)
    client_id = f"fwb-{secrets.token_hex(5)}"
    _held[key] = (client_id, -1)
    return client_id


class BridgeOptions(BaseModel):
    """How the bridge subscribes, how much it keeps in flight, where it reports."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = Field(default_factory=_default_client_id, min_length=1, max_length=128,
                           description="stable MQTT client id; it names the persistent session (default "
                           "fwb-<hash of the hostname>, then -2, -3, ... for further bridges running on the host: "
                           "at most 23 characters, which every MQTT 3.1.1 broker must take). "
                           "Give each bridge process its own: two with one id kick each other off, and the "
                           "bridge exits after a few take-overs")
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
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint listens on (loopback by "
                              "default; the endpoint has no authentication, so expose it deliberately)")
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

    bridge: BridgeOptions = Field(default_factory=BridgeOptions)
