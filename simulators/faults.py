"""Pipeline fault scenarios: bad data and bad delivery, injected at configured rates and
counted, so a test can compare what was injected with what the pipeline reports.

Two layers:

* value faults change the readings themselves and apply to every mode, history files
  included: a missing sensor field, a stuck sensor (holds its value for ``stuck_len``
  readings), a spike, a NaN/±Infinity value;
* delivery faults change how readings travel and apply to the message streams (live
  MQTT, replay, ``history --to-kafka``): duplicates, out-of-order delivery, clock skew,
  bursts (a machine goes quiet, then sends its backlog at once) and malformed payloads.

Every reading gets at most one of non-finite, duplicate, out-of-order and malformed (so
each has an unambiguous expected outcome at the decoder); the other faults combine freely.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from simulators.errors import SimulatorError
from simulators.fleet import Block

__all__ = [
    "MALFORMED_KINDS",
    "Category",
    "FaultConfig",
    "FaultReport",
    "ValueFaults",
]

MalformedKind = Literal["not_json", "wrong_type", "missing_field", "too_large", "unknown_version"]
MALFORMED_KINDS: Final[tuple[MalformedKind, ...]] = (
    "not_json", "wrong_type", "missing_field", "too_large", "unknown_version")


class Category:
    """The exclusive per-reading fault drawn by :class:`ValueFaults` (int8 codes)."""

    NONE: Final = 0
    NON_FINITE: Final = 1
    DUPLICATE: Final = 2
    OUT_OF_ORDER: Final = 3
    MALFORMED: Final = 4


@dataclass(frozen=True)
class FaultConfig:
    """Fault rates. Per-reading probabilities unless said otherwise."""

    missing: float = 0.0
    stuck: float = 0.0
    stuck_len: int = 20
    spike: float = 0.0
    non_finite: float = 0.0
    duplicate: float = 0.0
    out_of_order: float = 0.0
    clock_skew: float = 0.0  # fraction of machines whose clock is off
    clock_skew_max_s: float = 300.0
    burst: float = 0.0
    burst_len: int = 10
    malformed: float = 0.0
    malformed_kinds: tuple[MalformedKind, ...] = MALFORMED_KINDS

    def __post_init__(self) -> None:
        for name in ("missing", "stuck", "spike", "non_finite", "duplicate", "out_of_order", "clock_skew",
                     "burst", "malformed"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise SimulatorError(f"fault rate {name} must be in [0, 1], got {rate}")
        if self.non_finite + self.duplicate + self.out_of_order + self.malformed > 1.0:
            raise SimulatorError("non-finite + duplicate + out-of-order + malformed rates must add up to <= 1")
        if self.stuck_len < 1 or self.burst_len < 1:
            raise SimulatorError("stuck and burst lengths must be >= 1 reading")
        if self.clock_skew_max_s < 0:
            raise SimulatorError("clock skew must be >= 0 s")
        if not self.malformed_kinds or set(self.malformed_kinds) - set(MALFORMED_KINDS):
            raise SimulatorError(f"malformed kinds must be among {', '.join(MALFORMED_KINDS)}")

    @property
    def any_value(self) -> bool:
        return any((self.missing, self.stuck, self.spike, self.non_finite))

    @property
    def any_delivery(self) -> bool:
        return any((self.duplicate, self.out_of_order, self.clock_skew, self.burst, self.malformed))

    @property
    def enabled(self) -> bool:
        return self.any_value or self.any_delivery


_COUNTERS: Final[tuple[str, ...]] = (
    "missing_sensor", "missing_fields", "stuck_episodes", "stuck", "spike", "non_finite", "duplicate",
    "out_of_order", "clock_skew_machines", "clock_skew", "burst_episodes", "burst",
    *(f"malformed_{k}" for k in MALFORMED_KINDS),
)


@dataclass
class FaultReport:
    """What the simulator produced and injected. ``expected_rejections`` maps a decoder
    reason code to how many readings (or batch payloads) should be rejected with it."""

    readings: int = 0  # readings the fleet (or the replayed file) produced
    readings_sent: int = 0  # readings in published messages, duplicates and malformed ones included
    messages: int = 0
    events: int = 0
    injected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    expected_rejections: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def count(self, key: str, n: int = 1) -> None:
        self.injected[key] = self.injected.get(key, 0) + n

    def reject(self, reason: str, n: int = 1) -> None:
        self.expected_rejections[reason] = self.expected_rejections.get(reason, 0) + n

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["expected_valid_readings"] = self.readings_sent - sum(self.expected_rejections.values())
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


class ValueFaults:
    """Injects value faults into blocks and draws each reading's exclusive category.

    Its random stream is separate from the fleet's, so turning faults on or off does not
    change the underlying readings. State (stuck sensors) is kept per machine.
    """

    def __init__(self, config: FaultConfig, machines: int, seed: int, report: FaultReport,
                 stream: tuple[int, ...] = ()) -> None:
        self.config = config
        self.report = report
        self.rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x0FA017, *stream)))
        self._stuck_col = np.full(machines, -1, dtype=np.int64)
        self._stuck_left = np.zeros(machines, dtype=np.int64)
        self._stuck_value = np.zeros(machines, dtype=np.float64)
        c = config
        self._cuts = np.cumsum([c.non_finite, c.duplicate, c.out_of_order, c.malformed])

    def apply(self, block: Block, *, delivery: bool = True) -> npt.NDArray[np.int8]:
        """Change ``block`` in place; return each reading's category (see :class:`Category`).

        With ``delivery=False`` (history files) only the non-finite category is drawn.
        """
        n = len(block)
        c, rng = self.config, self.rng
        cats = np.zeros(n, dtype=np.int8)
        if n == 0 or not c.enabled:
            return cats
        n_s = block.sensors.shape[1]
        u = rng.random(n)
        cats[:] = np.searchsorted(self._cuts, u, side="right") + 1
        cats[cats > Category.MALFORMED] = Category.NONE
        if not delivery:
            cats[cats != Category.NON_FINITE] = Category.NONE
        values = block.sensors
        if c.stuck:
            self._stuck(block, values, n_s)
        if c.spike:
            rows = np.flatnonzero(rng.random(n) < c.spike)
            if rows.size:
                cols = rng.integers(n_s, size=rows.size)
                sign = np.where(rng.random(rows.size) < 0.5, -1.0, 1.0)
                magnitude = np.maximum(np.abs(values[rows, cols]), 1.0) * rng.uniform(0.5, 2.0, size=rows.size)
                values[rows, cols] += sign * magnitude
                self.report.count("spike", int(rows.size))
        nf = np.flatnonzero(cats == Category.NON_FINITE)
        if nf.size:
            cols = rng.integers(n_s, size=nf.size)
            values[nf, cols] = rng.choice(np.array([np.nan, np.inf, -np.inf]), size=nf.size)
            self.report.count("non_finite", int(nf.size))
            if delivery:
                self.report.reject("non_finite", int(nf.size))
        if c.missing:
            # A NaN must stay visible, so a non-finite reading keeps all its fields.
            rows = np.flatnonzero((rng.random(n) < c.missing) & (cats != Category.NON_FINITE))
            if rows.size:
                if block.missing is None:
                    block.missing = np.zeros(values.shape, dtype=np.bool_)
                cols = rng.integers(n_s, size=rows.size)
                block.missing[rows, cols] = True
                self.report.count("missing_sensor", int(rows.size))
                self.report.count("missing_fields", int(rows.size))
        return cats

    def _stuck(self, block: Block, values: npt.NDArray[np.float64], n_s: int) -> None:
        c, rng = self.config, self.rng
        machines = block.machine
        n = machines.shape[0]
        starting = (self._stuck_left[machines] == 0) & (rng.random(n) < c.stuck)
        rows = np.flatnonzero(starting)
        if rows.size:
            # A machine seen twice in one block (replay) starts at most one episode.
            _, first = np.unique(machines[rows], return_index=True)
            rows = rows[np.sort(first)]
            m = machines[rows]
            cols = rng.integers(n_s, size=rows.size)
            self._stuck_col[m] = cols
            self._stuck_value[m] = values[rows, cols]
            self._stuck_left[m] = c.stuck_len
            self.report.count("stuck_episodes", int(rows.size))
        stuck_rows = np.flatnonzero(self._stuck_left[machines] > 0)
        if stuck_rows.size == 0:
            return
        m = machines[stuck_rows]
        cols = self._stuck_col[m]
        values[stuck_rows, cols] = self._stuck_value[m]
        np.subtract.at(self._stuck_left, m, 1)
        np.maximum(self._stuck_left, 0, out=self._stuck_left)
        self.report.count("stuck", int(stuck_rows.size))
