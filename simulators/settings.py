"""The simulator's settings: the shared connections plus a ``simulator`` section.

Set them in ``forewarn.toml`` (``[simulator]``, ``[simulator.faults]``), with
``FOREWARN_SIMULATOR__*`` environment variables (e.g. ``FOREWARN_SIMULATOR__SEED=7``,
``FOREWARN_SIMULATOR__FAULTS__DUPLICATE=0.01``) or with the ``forewarn simulate`` flags.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forewarn.settings import ServiceSettings
from simulators.faults import MALFORMED_KINDS, FaultConfig, MalformedKind
from simulators.fleet import FleetConfig

__all__ = ["FaultOptions", "SimulatorOptions", "SimulatorSettings"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FaultOptions(_Section):
    """Fault rates (per reading unless said otherwise); see ``simulators.faults``."""

    missing: float = Field(0.0, ge=0, le=1)
    stuck: float = Field(0.0, ge=0, le=1)
    stuck_len: int = Field(20, ge=1)
    spike: float = Field(0.0, ge=0, le=1)
    non_finite: float = Field(0.0, ge=0, le=1)
    duplicate: float = Field(0.0, ge=0, le=1)
    out_of_order: float = Field(0.0, ge=0, le=1)
    clock_skew: float = Field(0.0, ge=0, le=1, description="fraction of machines with a skewed clock")
    clock_skew_max_s: float = Field(300.0, ge=0)
    burst: float = Field(0.0, ge=0, le=1)
    burst_len: int = Field(10, ge=1)
    malformed: float = Field(0.0, ge=0, le=1)
    malformed_kinds: tuple[MalformedKind, ...] = MALFORMED_KINDS

    def config(self) -> FaultConfig:
        return FaultConfig(**self.model_dump())


class SimulatorOptions(_Section):
    """The fleet and how it is published."""

    seed: int = Field(0, ge=0)
    asset_types: tuple[Literal["pump", "motor"], ...] = ("pump", "motor")
    machines: int = Field(100, ge=1, description="machines per asset type")
    sites: int = Field(4, ge=1)
    gateways_per_site: int = Field(1, ge=1)
    sample_period_s: float = Field(60.0, gt=0)
    mtbf_cycles: float = Field(300.0, ge=60, description="mean run length, in readings")
    weibull_shape: float = Field(3.0, gt=0)
    downtime_cycles: int = Field(12, ge=1, description="sample periods between a failure and its repair")
    regime_switch_prob: float = Field(0.02, ge=0, le=1)
    speed: float = Field(60.0, ge=0, description="simulated seconds per wall second; 0 = as fast as possible")
    delivery: Literal["single", "batch"] = "single"
    batch_size: int = Field(100, ge=1)
    qos: Literal[0, 1, 2] = 1
    progress_s: float = Field(10.0, gt=0)
    faults: FaultOptions = FaultOptions()

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


class SimulatorSettings(ServiceSettings):
    """Settings of ``forewarn simulate``."""

    simulator: SimulatorOptions = SimulatorOptions()
