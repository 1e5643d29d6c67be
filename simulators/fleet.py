"""The fleet model: machines that wear out, fail, get repaired and start over.

Every machine has a hidden damage state ``d`` (health = 1 - d). A run starts at its initial
wear ``d0``; at a random onset the damage starts to grow exponentially and reaches 1 at the
run's last reading, which is the failure. The run length is Weibull-distributed with mean
``mtbf_cycles`` readings. After a failure the machine is down (no readings) for
``downtime_cycles`` sample periods, then a repair resets it and a new run starts with a
freshly drawn failure mode, onset, curvature and severity.

All machines of one asset type are simulated together with numpy: one :meth:`Fleet.step`
advances every machine by one sample period and returns a :class:`Block` of readings per
asset type plus the maintenance events of that period. The same configuration and seed
give the same blocks, bit for bit.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from forewarn.contract import MaintenanceEvent, MaintenanceKind
from simulators.assets import AssetSpec, asset_spec
from simulators.errors import SimulatorError

__all__ = ["DEFAULT_START", "Block", "Fleet", "FleetConfig", "Truth", "machine_name", "to_epoch_ms"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)


def to_epoch_ms(when: datetime) -> int:
    """A UTC-aware datetime as epoch milliseconds."""
    if when.tzinfo is None:
        raise SimulatorError("naive datetime given; use a UTC-aware one")
    return round(when.timestamp() * 1000)


def machine_name(asset_type: str, index: int, sites: int) -> str:
    """The machine_id of the ``index``-th machine of ``asset_type``: machines are spread
    round-robin over ``sites`` sites, e.g. ``site-01/pump-00042``."""
    return f"site-{index % sites + 1:02d}/{asset_type}-{index:05d}"


@dataclass(frozen=True)
class FleetConfig:
    """What to simulate. ``machines`` is per asset type; ``first_machine`` offsets machine
    numbering (and the random streams), so a big fleet can be generated in chunks."""

    asset_types: tuple[str, ...] = ("pump", "motor")
    machines: int = 100
    sites: int = 4
    seed: int = 0
    start_ms: int = to_epoch_ms(DEFAULT_START)
    sample_period_s: float = 60.0
    mtbf_cycles: float = 300.0
    weibull_shape: float = 3.0
    min_run_cycles: int = 30
    downtime_cycles: int = 12
    regime_switch_prob: float = 0.02
    stagger: bool = False
    max_runs: int | None = None
    first_machine: int = 0
    seq_start: int = 0
    # Names this run in the maintenance events' ids (``<machine>/<run_id>/<n>``); default
    # ``cfg-<hash of this configuration>``: a rerun of the same history gives the same ids (the
    # same events), a history of any other configuration (seed, start, ...) other ids.
    run_id: str | None = None

    def __post_init__(self) -> None:
        if not self.asset_types:
            raise SimulatorError("no asset types to simulate")
        for name in self.asset_types:
            asset_spec(name)
        problems = [
            (self.machines < 0, "machines must be >= 0"),
            (self.sites < 1, "sites must be >= 1"),
            (self.sample_period_s <= 0, "sample period must be > 0"),
            (self.mtbf_cycles < 2 * self.min_run_cycles, f"mtbf must be >= {2 * self.min_run_cycles} cycles"),
            (self.weibull_shape <= 0, "weibull shape must be > 0"),
            (self.min_run_cycles < 5, "min run length must be >= 5 cycles"),
            (self.downtime_cycles < 1, "downtime must be >= 1 cycle"),
            (not 0 <= self.regime_switch_prob <= 1, "regime switch probability must be in [0, 1]"),
            (self.max_runs is not None and self.max_runs < 1, "max runs must be >= 1"),
            (self.seq_start < 0, "seq start must be >= 0"),
            (self.run_id is not None and not 0 < len(self.run_id) <= 100, "run id must be 1..100 characters"),
        ]
        for bad, message in problems:
            if bad:
                raise SimulatorError(message)

    @property
    def period_ms(self) -> int:
        return max(1, round(self.sample_period_s * 1000))

    @property
    def event_run(self) -> str:
        """The run part of the maintenance events' ids."""
        return self.run_id if self.run_id is not None else f"cfg-{zlib.crc32(repr(self).encode()):08x}"


@dataclass(frozen=True)
class Truth:
    """Hidden state of each reading of a block: health (1 = new, 0 = failed), true remaining
    useful life in readings (0 at the failure reading) and the active failure mode."""

    health: FloatArray
    rul: IntArray
    failure_mode: npt.NDArray[np.int16]
    mode_names: tuple[str, ...]


@dataclass
class Block:
    """Readings of one asset type at (about) the same time, as arrays.

    ``machine`` indexes the stream's machine registry (``Fleet.machine_ids``); ``missing``
    and ``settings_missing`` mark sensor and setting values absent from the reading
    (``None``: all present).
    """

    asset_type: str
    sensor_names: tuple[str, ...]
    setting_names: tuple[str, ...]
    machine: IntArray
    ts: IntArray
    seq: IntArray
    sensors: FloatArray
    settings: FloatArray
    missing: BoolArray | None = None
    truth: Truth | None = None
    settings_missing: BoolArray | None = None

    def __len__(self) -> int:
        return int(self.machine.shape[0])

    def take(self, rows: npt.NDArray[np.intp] | BoolArray) -> Block:
        """A new block with only ``rows``."""
        truth = self.truth
        if truth is not None:
            truth = Truth(truth.health[rows], truth.rul[rows], truth.failure_mode[rows], truth.mode_names)
        return Block(self.asset_type, self.sensor_names, self.setting_names, self.machine[rows], self.ts[rows],
                     self.seq[rows], self.sensors[rows], self.settings[rows],
                     None if self.missing is None else self.missing[rows], truth,
                     None if self.settings_missing is None else self.settings_missing[rows])


def _decimals(resolution: FloatArray) -> FloatArray:
    return np.power(10.0, np.round(-np.log10(resolution)))


@dataclass
class _Group:
    """State of every machine of one asset type (arrays of length n)."""

    spec: AssetSpec
    offset: int  # index of the group's first machine in the fleet registry
    rng: np.random.Generator
    n: int
    running: BoolArray
    retired: BoolArray
    t: IntArray
    length: IntArray
    onset: IntArray
    curvature: FloatArray
    d0: FloatArray
    mode: npt.NDArray[np.int16]
    down_left: IntArray
    runs: IntArray
    regime: IntArray
    seq: IntArray
    events: IntArray  # maintenance events sent per machine: the <n> of their ids
    phase_ms: IntArray
    machine_offset: FloatArray
    linear: FloatArray
    late: FloatArray
    noise_scale: FloatArray = field(repr=False)
    noise_gain: FloatArray = field(repr=False)


class Fleet:
    """A vectorised fleet of degrading machines. Pure computation: no I/O, no clock."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.tick = 0
        self.machine_ids: list[str] = []
        self.asset_of: list[str] = []
        self._groups: list[_Group] = []
        for name in config.asset_types:
            spec = asset_spec(name)
            group = self._new_group(spec, len(self.machine_ids))
            self._groups.append(group)
            first = config.first_machine
            self.machine_ids.extend(machine_name(name, first + i, config.sites) for i in range(config.machines))
            self.asset_of.extend([name] * config.machines)
        self._sites = [mid.partition("/")[0] for mid in self.machine_ids]

    # -- public ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.machine_ids)

    @property
    def specs(self) -> tuple[AssetSpec, ...]:
        return tuple(g.spec for g in self._groups)

    @property
    def done(self) -> bool:
        """True when every machine has completed ``max_runs`` runs."""
        return all(bool(g.retired.all()) for g in self._groups)

    def site_of(self, machine: int) -> str:
        return self._sites[machine]

    def time_ms(self, tick: int | None = None) -> int:
        """Start of sample period ``tick`` (default: the next one) in epoch ms."""
        return self.config.start_ms + (self.tick if tick is None else tick) * self.config.period_ms

    def step(self, *, truth: bool = False) -> tuple[list[Block], list[MaintenanceEvent]]:
        """Advance every machine by one sample period.

        Returns one block per asset type with a reading of every running machine (empty
        when none runs) and the maintenance events of the period, in time order per machine:
        a failure comes right after the failed run's last reading.
        """
        now = self.time_ms()
        blocks: list[Block] = []
        events: list[MaintenanceEvent] = []
        for group in self._groups:
            block, group_events = self._step_group(group, now, truth)
            blocks.append(block)
            events.extend(group_events)
        self.tick += 1
        return blocks, events

    def run(self, ticks: int | None = None, *, truth: bool = False) -> Iterator[tuple[list[Block],
                                                                                   list[MaintenanceEvent]]]:
        """Step ``ticks`` times, or until :attr:`done` when ``ticks`` is None (which
        needs ``max_runs``)."""
        if ticks is None and self.config.max_runs is None:
            raise SimulatorError("an endless run needs ticks or max_runs")
        n = 0
        while (ticks is None or n < ticks) and not self.done:
            yield self.step(truth=truth)
            n += 1

    # -- internals ---------------------------------------------------------------------

    def _new_group(self, spec: AssetSpec, offset: int) -> _Group:
        c = self.config
        seed = np.random.SeedSequence(c.seed, spawn_key=(zlib.crc32(spec.name.encode()), c.first_machine))
        rng = np.random.default_rng(seed)
        n = c.machines
        n_s = len(spec.sensors)
        zeros_i = np.zeros(n, dtype=np.int64)
        group = _Group(
            spec=spec, offset=offset, rng=rng, n=n,
            running=np.ones(n, dtype=np.bool_), retired=np.zeros(n, dtype=np.bool_),
            t=zeros_i.copy(), length=zeros_i.copy(), onset=zeros_i.copy(),
            curvature=np.zeros(n), d0=np.zeros(n), mode=np.zeros(n, dtype=np.int16),
            down_left=zeros_i.copy(), runs=zeros_i.copy(),
            regime=rng.integers(len(spec.regimes), size=n).astype(np.int64),
            seq=np.full(n, c.seq_start, dtype=np.int64), events=zeros_i.copy(),
            phase_ms=rng.integers(0, c.period_ms, size=n).astype(np.int64),
            machine_offset=rng.standard_normal((n, n_s)) * spec.table("spread"),
            linear=np.zeros((n, n_s)), late=np.zeros((n, n_s)),
            noise_scale=np.zeros((n, n_s)), noise_gain=np.zeros((n, n_s)),
        )
        everyone = np.arange(n)
        self._new_runs(group, everyone, first=True)
        if c.stagger:
            # Start somewhere in the first run so failures do not all come at once.
            group.t[:] = (rng.random(n) * group.length).astype(np.int64) - 1
        return group

    def _new_runs(self, g: _Group, idx: npt.NDArray[np.intp], *, first: bool) -> None:
        """Draw a fresh run (length, onset, curvature, wear, failure mode) for machines ``idx``."""
        c, rng, spec, k = self.config, g.rng, g.spec, idx.shape[0]
        if k == 0:
            return
        scale = c.mtbf_cycles / math.gamma(1.0 + 1.0 / c.weibull_shape)
        length = np.maximum(c.min_run_cycles, np.rint(scale * rng.weibull(c.weibull_shape, size=k)))
        g.length[idx] = length.astype(np.int64)
        g.onset[idx] = np.floor(rng.uniform(0.25, 0.65, size=k) * (length - 1)).astype(np.int64)
        g.curvature[idx] = rng.uniform(1.5, 4.0, size=k)
        g.d0[idx] = rng.uniform(0.0, 0.15 if first else 0.05, size=k)
        mode = np.searchsorted(spec.table("mode_cdf"), rng.random(k), side="right")
        mode = np.minimum(mode, len(spec.failure_modes) - 1).astype(np.int16)
        g.mode[idx] = mode
        severity = np.asarray(rng.uniform(0.75, 1.25, size=k))[:, None]
        g.linear[idx] = spec.table("linear")[mode] * severity
        g.late[idx] = spec.table("late")[mode] * severity
        g.noise_gain[idx] = spec.table("noise_gain")[mode]
        g.noise_scale[idx] = spec.table("noise")
        g.t[idx] = -1

    def _damage(self, g: _Group) -> FloatArray:
        last = g.length - 1
        x = np.clip((g.t - g.onset) / np.maximum(last - g.onset, 1), 0.0, 1.0)
        growth: FloatArray = np.expm1(g.curvature * x) / np.expm1(g.curvature)
        return g.d0 + (1.0 - g.d0) * growth

    def _step_group(self, g: _Group, now: int, with_truth: bool) -> tuple[Block, list[MaintenanceEvent]]:
        c, spec, rng = self.config, g.spec, g.rng
        events: list[MaintenanceEvent] = []
        # Operating regime changes now and then.
        switch = np.flatnonzero(rng.random(g.n) < c.regime_switch_prob)
        if switch.size:
            g.regime[switch] = rng.integers(len(spec.regimes), size=switch.size)
        g.t[g.running] += 1
        d = self._damage(g)
        regime = g.regime
        load = spec.table("load")[regime][:, None]
        d_col = d[:, None]
        z = rng.standard_normal((g.n, len(spec.sensors)))
        values = spec.table("baseline")[regime]
        values += g.machine_offset
        values += load * (g.linear * d_col + g.late * (d_col * d_col * d_col))
        noise = g.noise_gain * d_col
        noise += 1.0
        noise *= g.noise_scale
        noise *= z
        values += noise
        scale = _decimals(spec.table("resolution"))
        np.rint(values * scale, out=values)
        values /= scale
        k_scale = _decimals(spec.table("setting_resolution"))
        settings = spec.table("regime_settings")[regime] + rng.standard_normal((g.n, len(spec.settings))) * (
            spec.table("setting_jitter"))
        settings = np.rint(settings * k_scale) / k_scale

        rows: npt.NDArray[np.intp] | None = None if bool(g.running.all()) else np.flatnonzero(g.running)
        ts = now + g.phase_ms
        seq = g.seq.copy()
        g.seq[g.running] += 1
        truth = None
        if with_truth:
            truth = Truth(1.0 - d, (g.length - 1 - g.t).astype(np.int64), g.mode.copy(), spec.mode_names)
        block = Block(spec.name, spec.sensor_names, spec.setting_names, np.arange(g.n, dtype=np.int64) + g.offset,
                      ts, seq, values, settings, None, truth)
        if rows is not None:
            block = block.take(rows)

        # Failures: the run's last reading was just taken.
        failed = np.flatnonzero(g.running & (g.t >= g.length - 1))
        for i in failed.tolist():
            events.append(self._event(g, i, int(ts[i]), "failure"))
        if failed.size:
            g.running[failed] = False
            g.down_left[failed] = c.downtime_cycles + 1
            g.runs[failed] += 1
            if c.max_runs is not None:
                g.retired[failed[g.runs[failed] >= c.max_runs]] = True
        # Repairs: downtime is over; the next period starts a new run.
        waiting = ~g.running & ~g.retired
        g.down_left[waiting] -= 1
        repaired = np.flatnonzero(waiting & (g.down_left == 0))
        for i in repaired.tolist():
            events.append(self._event(g, i, int(ts[i]), "repair"))
        if repaired.size:
            self._new_runs(g, repaired, first=False)
            g.running[repaired] = True
        return block, events

    def _event(self, g: _Group, i: int, ts: int, kind: MaintenanceKind) -> MaintenanceEvent:
        """Machine ``i`` of ``g``'s next maintenance event, with its unique id."""
        machine = self.machine_ids[g.offset + i]
        n = int(g.events[i])
        g.events[i] += 1
        return MaintenanceEvent(1, machine, ts, kind, g.spec.mode_names[g.mode[i]], g.spec.name,
                                event_id=f"{machine}/{self.config.event_run}/{n}")
