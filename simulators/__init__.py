"""Simulators: a fleet of degrading machines that publishes MQTT telemetry, writes
run-to-failure history in the generic long format, replays files and injects pipeline
faults. See ``simulators/README.md``."""

from simulators.assets import ASSET_TYPES, AssetSpec
from simulators.errors import SimulatorError
from simulators.faults import FaultConfig, FaultReport
from simulators.fleet import Block, Fleet, FleetConfig

__all__ = ["ASSET_TYPES", "AssetSpec", "Block", "FaultConfig", "FaultReport", "Fleet", "FleetConfig", "SimulatorError"]
