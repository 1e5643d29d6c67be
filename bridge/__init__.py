"""The bridge: MQTT → Kafka, at least once, with validation and a dead-letter topic.

Names are loaded on first use, so ``import bridge.routing`` (as the edge gateway does) does
not pull in the service and its network client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.errors import BridgeError
    from bridge.service import Bridge
    from bridge.settings import BridgeOptions, BridgeSettings

__all__ = ["Bridge", "BridgeError", "BridgeOptions", "BridgeSettings"]

_WHERE = {"Bridge": "bridge.service", "BridgeError": "bridge.errors", "BridgeOptions": "bridge.settings",
          "BridgeSettings": "bridge.settings"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'bridge' has no attribute {name!r}")
