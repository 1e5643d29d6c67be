"""The bridge: MQTT → Kafka, at least once, with validation and a dead-letter topic.

Nothing imports this package: it is a service of its own, reached through the ``forewarn
bridge`` and ``forewarn dlq`` commands. What the edge gateway shares with it (the reading
router, the dead-letter record) lives in the core, :mod:`forewarn`.
"""

from bridge.errors import BridgeError
from bridge.service import Bridge
from bridge.settings import BridgeOptions, BridgeSettings

__all__ = ["Bridge", "BridgeError", "BridgeOptions", "BridgeSettings"]
