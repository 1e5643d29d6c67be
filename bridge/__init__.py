"""The bridge: MQTT → Kafka, at least once, with validation and a dead-letter topic."""

from bridge.errors import BridgeError
from bridge.service import Bridge
from bridge.settings import BridgeOptions, BridgeSettings

__all__ = ["Bridge", "BridgeError", "BridgeOptions", "BridgeSettings"]
