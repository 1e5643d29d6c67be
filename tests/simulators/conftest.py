"""Factories shared by the simulator tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from simulators.fleet import FleetConfig
from simulators.history import HistorySummary, write_history


@pytest.fixture(scope="session")
def history_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run-to-failure history of 240 machines per asset type, with truth (built once)."""
    out = tmp_path_factory.mktemp("history")
    write_history(FleetConfig(machines=240, max_runs=1, seed=11), out, truth=True)
    return out


@pytest.fixture
def make_history(tmp_path: Path) -> Callable[..., tuple[Path, HistorySummary]]:
    """``out, summary = make_history(name, fmt="parquet", machines=5, **fleet_options)``."""

    def make(name: str = "h", fmt: str = "parquet", *, truth: bool = False, **options: object) -> tuple[
            Path, HistorySummary]:
        options.setdefault("machines", 5)
        options.setdefault("max_runs", 1)
        out = tmp_path / name
        summary = write_history(FleetConfig(**options), out, "csv" if fmt == "csv" else "parquet",  # type: ignore[arg-type]
                                truth=truth)
        return out, summary

    return make
