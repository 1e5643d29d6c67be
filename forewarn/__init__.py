"""Forewarn's shared core: the message contract, topics, settings, client adapters, the
local stack and the CLI."""

__version__ = "0.1.0"
