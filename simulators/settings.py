"""The settings of ``forewarn simulate``: the shared connections plus a ``simulate`` section.

``[simulate]`` holds the fleet and how it is published (shared by every command),
``[simulate.faults]`` the fault rates, and ``[simulate.live]``, ``[simulate.history]``,
``[simulate.replay]`` what only that command has. Set them in ``forewarn.toml``, with
``FOREWARN_SIMULATE__*`` environment variables (``FOREWARN_SIMULATE__SEED=7``,
``FOREWARN_SIMULATE__FAULTS__DUPLICATE=0.01``, ``FOREWARN_SIMULATE__HISTORY__OUT=data``;
lists as JSON: ``FOREWARN_SIMULATE__ASSET_TYPES='["pump"]'``) or with the command's flags,
each of which names its variable in ``--help``. Flags win over the environment, which wins
over the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forewarn.settings import ServiceSettings
from simulators.faults import MALFORMED_KINDS, FaultConfig, MalformedKind
from simulators.fleet import DEFAULT_START, FleetConfig

__all__ = [
    "FaultOptions",
    "HistoryOptions",
    "LiveOptions",
    "ReplayOptions",
    "SimulateOptions",
    "SimulateSettings",
]

# The default start of history and replay, as the ISO-8601 text a user would write.
_HISTORY_START = DEFAULT_START.isoformat().replace("+00:00", "Z")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FaultOptions(_Section):
    """Fault rates (per reading unless said otherwise); see ``simulators.faults``."""

    missing: float = Field(0.0, ge=0, le=1, description="rate of readings missing a sensor field")
    stuck: float = Field(0.0, ge=0, le=1, description="rate of readings that start a stuck-sensor episode")
    stuck_len: int = Field(20, ge=1, description="readings a stuck sensor stays stuck")
    spike: float = Field(0.0, ge=0, le=1, description="rate of readings with a spike on one sensor")
    non_finite: float = Field(0.0, ge=0, le=1, description="rate of readings with a NaN/Infinity value")
    duplicate: float = Field(0.0, ge=0, le=1, description="rate of readings sent twice")
    out_of_order: float = Field(0.0, ge=0, le=1, description="rate of readings delivered after the machine's "
                                "next one")
    clock_skew: float = Field(0.0, ge=0, le=1, description="fraction of machines with a skewed clock")
    clock_skew_max_s: float = Field(300.0, ge=0, description="largest clock skew, in seconds")
    burst: float = Field(0.0, ge=0, le=1, description="rate of readings that start an outage whose backlog is "
                         "sent in one burst")
    burst_len: int = Field(10, ge=1, description="readings held back per burst")
    malformed: float = Field(0.0, ge=0, le=1, description="rate of readings replaced by a malformed payload")
    malformed_kinds: tuple[MalformedKind, ...] = Field(MALFORMED_KINDS, description="kinds of malformed "
                                                       "payload to inject (repeat the flag for several)")

    def config(self) -> FaultConfig:
        return FaultConfig(**self.model_dump())


class LiveOptions(_Section):
    """What only ``forewarn simulate live`` has."""

    speed: float = Field(60.0, ge=0, description="simulated seconds per wall second (0 = as fast as possible); "
                         "the simulated clock never overtakes the wall clock: caught up, it runs at 1x")
    start: str = Field("auto", description="simulated start time, ISO-8601 UTC, 'now', or 'auto' (--behind-h "
                       "before now)")
    behind_h: float = Field(24.0, ge=0, le=24 * 365, description="with --start auto: how many simulated hours "
                            "the clock starts behind the wall clock (at --speed 60, 24 h take 24 wall minutes)")
    ticks: int | None = Field(None, ge=1, description="stop after this many sample periods (unset: run until "
                              "SIGTERM)")
    report: Path | None = Field(None, description="write the fault/production report (JSON) here at the end")
    client_id: str = Field(default_factory=lambda: f"forewarn-sim-{os.getpid()}", min_length=1,
                           description="MQTT client id (default forewarn-sim-<pid>)")


class HistoryOptions(_Section):
    """What only ``forewarn simulate history`` has."""

    out: Path | None = Field(None, description="directory to write readings/events(/truth) files into")
    format: Literal["parquet", "csv"] = Field("parquet", description="file format")
    truth: bool = Field(False, description="also write truth.<format> with health, true RUL and failure mode "
                        "per reading")
    runs: int = Field(1, ge=1, description="run-to-failure cycles per machine")
    ticks: int | None = Field(None, ge=1, description="stop after this many sample periods instead (the last "
                              "runs are then censored)")
    start: str = Field(_HISTORY_START, description="simulated start time, ISO-8601 UTC or 'now'")
    to_kafka: bool = Field(False, description="write into the Kafka telemetry and maintenance topics instead of "
                           "files")
    report: Path | None = Field(None, description="write the fault/production report (JSON) here")


class ReplayOptions(_Section):
    """What only ``forewarn simulate replay`` has."""

    events: Path | None = Field(None, description="events file (machine_id, time, event[, failure_mode]); "
                                "unset: events.<ext> next to FILE, if any")
    failure_at_end: bool = Field(False, description="run-to-failure data: each machine's last row is its failure")
    asset_type: str | None = Field(None, description="asset type of every row when FILE has no asset_type column")
    site: str = Field("replay", min_length=1, description="site for machine ids that have none")
    setting_columns: tuple[str, ...] = Field((), description="columns that are operating settings, not sensors "
                                             "(repeat the flag for several)")
    start: str = Field(_HISTORY_START, description="time of cycle 0 when FILE's time is a cycle index, ISO-8601 UTC "
                       "or 'now'")
    rate: float = Field(1000.0, ge=0, description="readings per second (0 = as fast as possible)")
    report: Path | None = Field(None, description="write the fault/production report (JSON) here at the end")
    client_id: str = Field(default_factory=lambda: f"forewarn-replay-{os.getpid()}", min_length=1,
                           description="MQTT client id (default forewarn-replay-<pid>)")


class SimulateOptions(_Section):
    """The fleet and how it is published, then the faults and each command's own options."""

    seed: int = Field(0, ge=0, description="random seed of the fleet and the fault injection: the same seed and "
                      "options give the same output")
    asset_types: tuple[Literal["pump", "motor"], ...] = Field(("pump", "motor"), description="asset types to "
                                                              "simulate (repeat the flag for several)")
    machines: int = Field(100, ge=1, description="machines per asset type")
    sites: int = Field(4, ge=1, description="sites the machines are spread over")
    gateways_per_site: int = Field(1, ge=1, description="gateways per site (batch delivery)")
    sample_period_s: float = Field(60.0, ge=0.001, description="simulated seconds between two readings (replay: "
                                   "seconds per cycle when FILE's time is a cycle index)")
    mtbf_cycles: float = Field(300.0, ge=60, description="mean run length between repair and failure, in readings")
    weibull_shape: float = Field(3.0, ge=0.1, description="shape of the Weibull run-length distribution")
    downtime_cycles: int = Field(12, ge=1, description="sample periods between a failure and its repair")
    regime_switch_prob: float = Field(0.02, ge=0, le=1, description="chance per reading that a machine changes "
                                      "operating regime")
    delivery: Literal["single", "batch"] = Field("single", description="single readings, or gateway batches")
    batch_size: int = Field(100, ge=1, description="readings per gateway batch at most")
    qos: Literal[0, 1, 2] = Field(1, description="MQTT QoS of the publishes")
    progress_s: float = Field(10.0, ge=0.1, description="seconds between progress lines")
    faults: FaultOptions = FaultOptions()
    live: LiveOptions = Field(default_factory=LiveOptions)
    history: HistoryOptions = HistoryOptions()
    replay: ReplayOptions = Field(default_factory=ReplayOptions)

    @property
    def sample_period_ms(self) -> int:
        return max(1, round(self.sample_period_s * 1000))

    def fleet(self, **changes: object) -> FleetConfig:
        """The fleet configuration these options describe (``changes`` override fields)."""
        values: dict[str, object] = {
            "asset_types": self.asset_types, "machines": self.machines, "sites": self.sites, "seed": self.seed,
            "sample_period_s": self.sample_period_s, "mtbf_cycles": self.mtbf_cycles,
            "weibull_shape": self.weibull_shape, "downtime_cycles": self.downtime_cycles,
            "regime_switch_prob": self.regime_switch_prob,
        }
        values.update(changes)
        return FleetConfig(**values)  # type: ignore[arg-type]


class SimulateSettings(ServiceSettings):
    """Settings of ``forewarn simulate``."""

    simulate: SimulateOptions = Field(default_factory=SimulateOptions)
