"""The edge gateway's settings: the shared connections, an ``[edge]`` section and the scoring
workers' ``[scoring]`` section.

Set them in ``forewarn.toml`` (``[edge]``, ``[scoring]``), with ``FOREWARN_EDGE__*`` and
``FOREWARN_SCORING__*`` environment variables (e.g. ``FOREWARN_EDGE__DATA_DIR=/var/lib/forewarn-edge``,
``FOREWARN_SCORING__STRIDE=5``) or with the ``forewarn edge`` flags. At a plant, ``mqtt`` is the
plant's broker and ``kafka`` the data centre's cluster (the uplink).

The edge scores with the data-centre workers' engine, so it reads the same
:class:`~scoring.settings.ScoringOptions`: windowing (``stride``, ``max_gap``, ``max_imputed``,
``reorder_slack``, ``score_slice``), onnxruntime (``threads``, ``score_batch``) and the alert
rules (``alerts``) mean the same in both. The worker's Kafka fields (``group_id``,
``worker_id``, ``max_batch``, transactions, ``models_dir``, ``metrics_port``, ...) do not apply
at the edge, which has its own in ``[edge]``; ``shadow`` is always off at the edge (shadow
candidates are a data-centre concern).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from forewarn.settings import ServiceSettings
from scoring.settings import ScoringOptions

__all__ = ["EdgeOptions", "EdgeSettings"]


def _default_client_id() -> str:
    return f"forewarn-edge-{socket.gethostname()}"


class EdgeOptions(BaseModel):
    """Where the edge keeps its data, how big its buffer may grow, what it subscribes to, how
    it forwards to Kafka. How it scores is :attr:`EdgeSettings.scoring`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = Field(default_factory=_default_client_id, min_length=1, max_length=128,
                           description="stable MQTT client id; it names the persistent session on the plant "
                           "broker (default forewarn-edge-<hostname>)")
    data_dir: Path = Field(Path(".forewarn/edge"), description="folder of the buffer database and the last good "
                           "model bundles")
    buffer_max_bytes: int = Field(512 * 1024 * 1024, ge=64 * 1024, description="size bound of the buffer, in bytes")
    buffer_policy: Literal["block", "drop_oldest"] = Field(
        "block", description="when the buffer is full: block = stop acknowledging MQTT (the plant broker keeps the "
        "messages; nothing is lost); drop_oldest = evict the oldest buffered records")
    buffer_warn_fraction: float = Field(0.8, gt=0, le=1, description="log and flag near-full above this fill")
    buffer_sync: Literal["NORMAL", "FULL"] = Field(
        "FULL", description="SQLite synchronous mode of the buffer: FULL (default) = an acknowledged record survives "
        "a power cut; NORMAL = faster commits, survives kill -9 but a power cut can lose records the plant broker "
        "was already told were delivered (choose it only if you accept that risk)")
    disk_full_hold_bytes: int = Field(32 * 2**20, ge=64 * 1024, description="while the buffer's disk is full: "
                                      "bytes of scored, unacknowledged records held in memory (scoring and local "
                                      "alerts go on meanwhile); beyond it the edge takes no more messages until "
                                      "space returns")
    stats_interval_s: float = Field(10.0, gt=0, description="period of the pipeline stats (readings scored and not "
                                    "scored, by reason) the edge sends to the pipeline.stats topic, in seconds")
    sites: tuple[str, ...] = Field((), description="comma-separated sites to subscribe to (default: every site on "
                                   "the broker)")
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, description="seconds the broker keeps the session (and "
                                  "queues messages) while the edge is away")
    receive_maximum: int = Field(1000, ge=1, le=65535, description="unacknowledged MQTT messages the broker may send "
                                 "at once")
    max_batch: int = Field(500, ge=1, description="MQTT messages scored and committed together at most (each in "
                           "flight costs memory)")
    publish_qos: int = Field(1, ge=0, le=1, description="QoS of the local prediction and alert publications")
    publish_predictions: bool = Field(True, description="publish every prediction on local MQTT (alerts always)")
    persist_windows: bool = Field(True, description="keep the per-machine windows in the buffer database, so a "
                                  "restarted edge predicts on without refilling them")
    forward_batch: int = Field(2000, ge=1, description="records read from the buffer per forwarding round")
    max_forward_in_flight: int = Field(10_000, ge=1, description="records handed to Kafka and not yet confirmed "
                                       "(held in memory while the uplink is down)")
    max_forward_in_flight_bytes: int = Field(16 * 2**20, ge=64 * 1024, description="bytes of those records at most "
                                             "(librdkafka's queue is bounded at twice this)")
    dead_letter_after: int = Field(3, ge=1, description="times Kafka may refuse a record for good (an error Kafka "
                                   "can never store: too large, invalid record, ...; see forewarn.kafka.classify), "
                                   "sent alone, before it goes to the dead-letter topic")
    models_dir: Path | None = Field(None, description="bundles to seed the edge with (copied to DATA_DIR/models)")
    models_sync: bool = Field(True, description="take new bundles from the Kafka models topic")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics on this port "
                                     "(0 = any free port; unset = off)")
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint listens on (loopback by "
                              "default; the endpoint has no authentication, so expose it deliberately)")
    shutdown_timeout_s: float = Field(10.0, ge=0, description="seconds a shutdown keeps forwarding the buffer")
    uplink_log_s: float = Field(30.0, gt=0, description="period of the 'uplink down' and 'buffer near full' lines, "
                                "in seconds")

    @field_validator("sites", mode="before")
    @classmethod
    def _split_sites(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(s.strip() for s in value.split(",") if s.strip())
        return value

    @field_validator("sites")
    @classmethod
    def _check_sites(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for site in value:
            if any(c in site for c in "/+#"):
                raise ValueError(f"site {site!r} may not contain '/', '+' or '#'")
        return value

    @property
    def buffer_path(self) -> Path:
        """The buffer's SQLite database; the file keeps the name ``outbox.db`` so that an upgraded
        edge finds the buffer it left."""
        return self.data_dir / "outbox.db"

    @property
    def bundles_dir(self) -> Path:
        return self.data_dir / "models"


class EdgeSettings(ServiceSettings):
    """Everything ``forewarn edge`` needs."""

    edge: EdgeOptions = EdgeOptions()
    scoring: ScoringOptions = ScoringOptions()
