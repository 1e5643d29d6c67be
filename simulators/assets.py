"""Asset types: what a machine measures, how it is operated and how it fails.

Each :class:`AssetSpec` describes one kind of machine: its sensors (physical units in their
names), its operating settings and the discrete operating regimes the settings take, and its
failure modes. A failure mode moves its own subset of sensors with its own signature: a
linear drift, a late (cubic) rise, and more noise as the damage grows (as vibration does).

A sensor's healthy value depends on the operating regime through a power law of the
settings (pump affinity laws, load dependence), so a model has to learn to normalise by
regime before it can see wear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from simulators.errors import SimulatorError

__all__ = ["ASSET_TYPES", "AssetSpec", "Effect", "FailureMode", "SensorSpec", "SettingSpec", "asset_spec"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SensorSpec:
    """One sensor. ``base`` is its healthy value at the nominal operating point;
    ``exponents`` maps a setting name to the power-law exponent of its dependence on that
    setting (value ∝ (setting / nominal) ** exponent). ``resolution`` is the instrument's
    resolution (readings are rounded to it); ``spread`` the relative manufacturing variation
    between machines."""

    name: str
    base: float
    noise: float
    resolution: float
    exponents: tuple[tuple[str, float], ...] = ()
    spread: float = 0.02


@dataclass(frozen=True)
class SettingSpec:
    """One operating setting; ``jitter`` is the noise of its reported value."""

    name: str
    nominal: float
    jitter: float
    resolution: float


@dataclass(frozen=True)
class Effect:
    """How a failure mode moves one sensor at full damage (damage = 1): ``linear`` * d +
    ``late`` * d³, in the sensor's unit, and noise multiplied by (1 + ``noise_gain`` * d)."""

    sensor: str
    linear: float = 0.0
    late: float = 0.0
    noise_gain: float = 0.0


@dataclass(frozen=True)
class FailureMode:
    """A way to fail. ``weight`` is its relative frequency among the type's modes."""

    name: str
    weight: float
    effects: tuple[Effect, ...]

    @property
    def sensors(self) -> frozenset[str]:
        """The sensors this mode moves."""
        return frozenset(e.sensor for e in self.effects)


@dataclass(frozen=True)
class AssetSpec:
    """A kind of machine. ``regimes`` lists the operating points (one value per setting,
    in ``settings`` order) and ``load`` how hard each one works the machine, which scales
    the visible effect of wear."""

    name: str
    sensors: tuple[SensorSpec, ...]
    settings: tuple[SettingSpec, ...]
    regimes: tuple[tuple[float, ...], ...]
    failure_modes: tuple[FailureMode, ...]
    _tables: dict[str, FloatArray] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = [s.name for s in self.sensors]
        if not 8 <= len(names) <= 24 or len(set(names)) != len(names):
            raise SimulatorError(f"asset type {self.name}: needs 8-24 uniquely named sensors")
        if not 1 <= len(self.settings) <= 3:
            raise SimulatorError(f"asset type {self.name}: needs 1-3 settings")
        if len(self.failure_modes) < 2:
            raise SimulatorError(f"asset type {self.name}: needs at least two failure modes")
        setting_names = {s.name for s in self.settings}
        for sensor in self.sensors:
            unknown = {k for k, _ in sensor.exponents} - setting_names
            if unknown:
                raise SimulatorError(f"sensor {sensor.name} depends on unknown settings {sorted(unknown)}")
        for mode in self.failure_modes:
            moved = mode.sensors - set(names)
            if moved:
                raise SimulatorError(f"failure mode {mode.name} moves unknown sensors {sorted(moved)}")
        for regime in self.regimes:
            if len(regime) != len(self.settings):
                raise SimulatorError(f"asset type {self.name}: a regime needs one value per setting")

    # -- derived tables (computed once, cached) ------------------------------------------

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sensors)

    @property
    def setting_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.settings)

    @property
    def mode_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.failure_modes)

    def _table(self, key: str) -> FloatArray:
        if not self._tables:
            self._build_tables()
        return self._tables[key]

    def _build_tables(self) -> None:
        s_index = {s.name: i for i, s in enumerate(self.sensors)}
        k_index = {s.name: i for i, s in enumerate(self.settings)}
        n_s, n_k, n_r, n_m = len(self.sensors), len(self.settings), len(self.regimes), len(self.failure_modes)
        exponents = np.zeros((n_k, n_s))
        for j, sensor in enumerate(self.sensors):
            for setting, exponent in sensor.exponents:
                exponents[k_index[setting], j] = exponent
        regimes = np.asarray(self.regimes, dtype=np.float64).reshape(n_r, n_k)
        nominal = np.array([s.nominal for s in self.settings])
        ratio = np.log(regimes / nominal)  # (R, K)
        base = np.array([s.base for s in self.sensors])
        baseline = base * np.exp(ratio @ exponents)  # (R, S)
        # How hard a regime works the machine: the mean relative power across settings.
        load = np.exp(ratio.mean(axis=1)) ** 1.5
        linear = np.zeros((n_m, n_s))
        late = np.zeros((n_m, n_s))
        gain = np.zeros((n_m, n_s))
        for m, mode in enumerate(self.failure_modes):
            for effect in mode.effects:
                j = s_index[effect.sensor]
                linear[m, j], late[m, j], gain[m, j] = effect.linear, effect.late, effect.noise_gain
        weights = np.array([m.weight for m in self.failure_modes], dtype=np.float64)
        self._tables.update(
            baseline=baseline,
            load=load / load.max(),
            regime_settings=regimes,
            linear=linear,
            late=late,
            noise_gain=gain,
            noise=np.array([s.noise for s in self.sensors]),
            spread=np.array([s.spread for s in self.sensors]) * base,
            resolution=np.array([s.resolution for s in self.sensors]),
            setting_jitter=np.array([s.jitter for s in self.settings]),
            setting_resolution=np.array([s.resolution for s in self.settings]),
            mode_cdf=np.cumsum(weights / weights.sum()),
        )

    def table(self, key: str) -> FloatArray:
        """A derived array: ``baseline`` (regimes × sensors), ``load`` (regimes),
        ``regime_settings`` (regimes × settings), ``linear``/``late``/``noise_gain``
        (modes × sensors), ``noise``/``spread``/``resolution`` (sensors),
        ``setting_jitter``/``setting_resolution`` (settings), ``mode_cdf`` (modes)."""
        return self._table(key)


def _pump() -> AssetSpec:
    spd, vlv = "speed_setpoint_rpm", "valve_opening_pct"
    return AssetSpec(
        name="pump",
        settings=(
            SettingSpec(spd, 2950.0, 3.0, 1.0),
            SettingSpec(vlv, 80.0, 0.3, 0.1),
        ),
        regimes=((1770.0, 60.0), (2360.0, 70.0), (2950.0, 80.0), (2950.0, 100.0), (2360.0, 100.0),
                 (1770.0, 90.0)),
        sensors=(
            SensorSpec("suction_pressure_bar", 1.5, 0.03, 0.001, ((vlv, -0.1),)),
            SensorSpec("discharge_pressure_bar", 8.0, 0.08, 0.001, ((spd, 2.0), (vlv, -0.3))),
            SensorSpec("flow_m3h", 120.0, 1.2, 0.01, ((spd, 1.0), (vlv, 0.8))),
            SensorSpec("motor_current_a", 85.0, 0.9, 0.01, ((spd, 2.5), (vlv, 0.4))),
            SensorSpec("power_kw", 45.0, 0.5, 0.01, ((spd, 3.0), (vlv, 0.5))),
            SensorSpec("bearing_temp_de_c", 55.0, 0.6, 0.1, ((spd, 0.5),)),
            SensorSpec("bearing_temp_nde_c", 50.0, 0.6, 0.1, ((spd, 0.4),)),
            SensorSpec("vibration_de_mm_s", 2.2, 0.25, 0.01, ((spd, 1.2),), spread=0.08),
            SensorSpec("vibration_nde_mm_s", 1.8, 0.22, 0.01, ((spd, 1.1),), spread=0.08),
            SensorSpec("seal_leak_ml_min", 2.0, 0.5, 0.01, ((spd, 1.0),), spread=0.2),
            SensorSpec("casing_temp_c", 40.0, 0.5, 0.1, ((spd, 0.3),)),
            SensorSpec("fluid_temp_c", 35.0, 0.8, 0.1, ()),
            SensorSpec("shaft_speed_rpm", 2950.0, 4.0, 1.0, ((spd, 1.0),), spread=0.002),
        ),
        failure_modes=(
            FailureMode("bearing_wear", 0.45, (
                Effect("bearing_temp_de_c", linear=4.0, late=12.0, noise_gain=0.5),
                Effect("bearing_temp_nde_c", linear=1.5, late=4.0),
                Effect("vibration_de_mm_s", linear=0.8, late=5.0, noise_gain=3.0),
                Effect("vibration_nde_mm_s", linear=0.3, late=1.8, noise_gain=1.5),
            )),
            FailureMode("impeller_erosion", 0.35, (
                Effect("discharge_pressure_bar", linear=-1.2, late=-0.8),
                Effect("flow_m3h", linear=-12.0, late=-8.0),
                Effect("power_kw", linear=2.5, late=1.5),
                Effect("motor_current_a", linear=4.0, late=2.5),
            )),
            FailureMode("seal_leak", 0.20, (
                Effect("seal_leak_ml_min", linear=6.0, late=55.0, noise_gain=2.0),
                Effect("suction_pressure_bar", linear=-0.08, late=-0.25),
                Effect("casing_temp_c", linear=1.0, late=4.0),
            )),
        ),
    )


def _motor() -> AssetSpec:
    load, freq = "load_pct", "supply_frequency_hz"
    return AssetSpec(
        name="motor",
        settings=(
            SettingSpec(load, 80.0, 0.5, 0.1),
            SettingSpec(freq, 50.0, 0.02, 0.01),
        ),
        regimes=((40.0, 35.0), (60.0, 50.0), (80.0, 50.0), (100.0, 50.0), (70.0, 60.0)),
        sensors=(
            SensorSpec("stator_current_a", 120.0, 1.0, 0.01, ((load, 0.9),)),
            SensorSpec("current_imbalance_pct", 1.0, 0.12, 0.01, (), spread=0.15),
            SensorSpec("supply_voltage_v", 400.0, 2.0, 0.1, ((freq, 0.05),), spread=0.005),
            SensorSpec("power_factor", 0.86, 0.004, 0.001, ((load, 0.08),), spread=0.005),
            SensorSpec("winding_temp_c", 75.0, 0.8, 0.1, ((load, 1.2),)),
            SensorSpec("bearing_temp_de_c", 50.0, 0.6, 0.1, ((freq, 0.5), (load, 0.2))),
            SensorSpec("bearing_temp_nde_c", 46.0, 0.6, 0.1, ((freq, 0.4), (load, 0.15))),
            SensorSpec("frame_temp_c", 45.0, 0.5, 0.1, ((load, 0.8),)),
            SensorSpec("vibration_axial_mm_s", 1.2, 0.15, 0.01, ((freq, 1.0),), spread=0.08),
            SensorSpec("vibration_radial_mm_s", 1.8, 0.2, 0.01, ((freq, 1.0),), spread=0.08),
            SensorSpec("shaft_speed_rpm", 1485.0, 1.5, 0.1, ((freq, 1.0), (load, -0.004)), spread=0.001),
            SensorSpec("torque_nm", 480.0, 4.0, 0.1, ((load, 1.0), (freq, -1.0))),
            SensorSpec("acoustic_db", 72.0, 0.7, 0.1, ((freq, 0.3), (load, 0.05))),
            SensorSpec("ambient_temp_c", 25.0, 1.5, 0.1, (), spread=0.1),
        ),
        failure_modes=(
            FailureMode("winding_insulation", 0.35, (
                Effect("winding_temp_c", linear=5.0, late=22.0, noise_gain=0.5),
                Effect("current_imbalance_pct", linear=0.6, late=4.0, noise_gain=1.0),
                Effect("power_factor", linear=-0.02, late=-0.04),
                Effect("frame_temp_c", linear=1.5, late=5.0),
            )),
            FailureMode("bearing_fault", 0.45, (
                Effect("vibration_radial_mm_s", linear=0.7, late=5.5, noise_gain=3.0),
                Effect("vibration_axial_mm_s", linear=0.3, late=2.0, noise_gain=2.0),
                Effect("bearing_temp_de_c", linear=3.0, late=13.0, noise_gain=0.5),
                Effect("acoustic_db", linear=1.5, late=7.0),
            )),
            FailureMode("rotor_bar", 0.20, (
                Effect("shaft_speed_rpm", linear=-6.0, late=-18.0, noise_gain=1.0),
                Effect("torque_nm", linear=0.0, late=0.0, noise_gain=4.0),
                Effect("stator_current_a", linear=3.0, late=9.0, noise_gain=1.5),
            )),
        ),
    )


ASSET_TYPES: Final[dict[str, AssetSpec]] = {spec.name: spec for spec in (_pump(), _motor())}


def asset_spec(name: str) -> AssetSpec:
    """The registered asset type called ``name``."""
    try:
        return ASSET_TYPES[name]
    except KeyError:
        raise SimulatorError(f"unknown asset type {name!r}",
                             hint=f"choose one of {', '.join(ASSET_TYPES)}") from None

