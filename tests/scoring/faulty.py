"""A scoring engine that fails on purpose, for the worker's and the edge's fault tests."""

from __future__ import annotations

from forewarn.contract import MaintenanceEvent
from scoring.engine import BatchResult, Incoming, ScoringEngine

__all__ = ["POISON", "BrittleEngine"]

POISON = "site-01/poison-1"


class BrittleEngine(ScoringEngine):
    """The real engine, except that a batch holding a reading of machine ``POISON`` raises after
    the rest of the batch changed state (as a failure deep inside would), and so does one
    holding an event of it."""

    def process(self, readings: list[Incoming], maintenance: list[tuple[MaintenanceEvent, int]]) -> BatchResult:
        result = super().process(readings, maintenance)
        if any(r.reading.machine_id == POISON for r in readings) or any(e.machine_id == POISON
                                                                        for e, _ in maintenance):
            raise OverflowError("Python int too large to convert to C long")
        return result
