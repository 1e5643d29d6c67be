from __future__ import annotations

import re

import numpy as np
import pytest

from simulators.assets import ASSET_TYPES, AssetSpec, Effect, FailureMode, SensorSpec, SettingSpec, asset_spec
from simulators.errors import SimulatorError

UNIT = re.compile(r"_(c|bar|m3h|a|kw|mm_s|ml_min|rpm|pct|v|nm|db|hz)$")


def test_at_least_two_asset_types_with_different_sensor_sets() -> None:
    assert len(ASSET_TYPES) >= 2
    sets = [set(spec.sensor_names) for spec in ASSET_TYPES.values()]
    assert sets[0] != sets[1]


@pytest.mark.parametrize("spec", ASSET_TYPES.values(), ids=list(ASSET_TYPES))
def test_asset_type_shape(spec: AssetSpec) -> None:
    assert 8 <= len(spec.sensors) <= 24
    assert 1 <= len(spec.settings) <= 3
    assert len(spec.failure_modes) >= 2
    for name in spec.sensor_names + spec.setting_names + spec.sensor_names:
        assert UNIT.search(name) or name == "power_factor", f"{name} has no unit in its name"
    # Each failure mode has its own main sensor and its own sensor subset.
    mains = [m.effects[0].sensor for m in spec.failure_modes]
    assert len(set(mains)) == len(mains)
    assert len({m.sensors for m in spec.failure_modes}) == len(spec.failure_modes)


@pytest.mark.parametrize("spec", ASSET_TYPES.values(), ids=list(ASSET_TYPES))
def test_regimes_change_the_baseline(spec: AssetSpec) -> None:
    baseline = spec.table("baseline")
    assert baseline.shape == (len(spec.regimes), len(spec.sensors))
    assert np.ptp(baseline, axis=0).max() > 0
    assert np.isclose(spec.table("mode_cdf")[-1], 1.0)


def test_unknown_asset_type_is_an_actionable_error() -> None:
    with pytest.raises(SimulatorError) as info:
        asset_spec("turbine")
    assert "pump" in info.value.one_line()


def test_spec_validation() -> None:
    sensors = tuple(SensorSpec(f"s{i}_c", 1.0, 0.1, 0.1) for i in range(8))
    setting = (SettingSpec("load_pct", 50.0, 0.1, 0.1),)
    modes = (FailureMode("a", 1.0, (Effect("s0_c", 1.0),)), FailureMode("b", 1.0, (Effect("s1_c", 1.0),)))
    AssetSpec("ok", sensors, setting, ((50.0,),), modes)
    with pytest.raises(SimulatorError):
        AssetSpec("few", sensors[:3], setting, ((50.0,),), modes)
    with pytest.raises(SimulatorError):
        AssetSpec("one-mode", sensors, setting, ((50.0,),), modes[:1])
    with pytest.raises(SimulatorError):
        AssetSpec("bad-effect", sensors, setting, ((50.0,),), (*modes, FailureMode("c", 1.0, (Effect("x", 1.0),))))
    with pytest.raises(SimulatorError):
        AssetSpec("bad-regime", sensors, setting, ((50.0, 1.0),), modes)
