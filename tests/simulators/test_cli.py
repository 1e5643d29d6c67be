from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from forewarn.cli import cli
from simulators.cli import simulate
from simulators.live import Pacer
from simulators.settings import SimulateSettings


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["simulate", *args], env=env, catch_exceptions=False)
    return result.exit_code, result.output


def test_history_writes_the_long_format(tmp_path: Path) -> None:
    code, output = invoke("history", "--machines", "3", "--asset-type", "pump", "--seed", "4", "--out",
                          str(tmp_path / "h"), "--truth", "--report", str(tmp_path / "report.json"))
    assert code == 0, output
    assert "3 machines" in output and "3 failures" in output
    assert {p.name for p in (tmp_path / "h").iterdir()} == {"readings.parquet", "events.parquet", "truth.parquet",
                                                         "settings.json"}
    assert set(pq.read_table(tmp_path / "h" / "readings.parquet")["asset_type"].to_pylist()) == {"pump"}
    assert json.loads((tmp_path / "report.json").read_text())["readings"] > 0


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "forewarn.toml"
    config.write_text('[simulate]\nmachines = 3\nasset_types = ["motor"]\n\n'
                      '[simulate.history]\nformat = "csv"\nruns = 2\n')
    code, output = invoke("history", "--out", str(tmp_path / "file"), env={"FOREWARN_CONFIG": str(config)})
    assert code == 0, output
    assert "3 machines" in output and "6 failures" in output and (tmp_path / "file" / "readings.csv").is_file()
    env = {"FOREWARN_CONFIG": str(config), "FOREWARN_SIMULATE__MACHINES": "2",
           "FOREWARN_SIMULATE__HISTORY__FORMAT": "parquet"}
    code, output = invoke("history", "--out", str(tmp_path / "env"), env=env)
    assert code == 0, output
    assert "2 machines" in output and (tmp_path / "env" / "readings.parquet").is_file()
    code, output = invoke("history", "--out", str(tmp_path / "flags"), "--machines", "1", "--runs", "1", env=env)
    assert "1 machines" in output and "1 failures" in output


@pytest.mark.parametrize("args, message", [
    (("history",), "exactly one of --out DIR and --to-kafka"),
    (("history", "--out", "x", "--to-kafka"), "exactly one of --out DIR and --to-kafka"),
    (("history", "--out", "x", "--fault-duplicate", "0.1"), "delivery faults only apply"),
    (("history", "--out", "x", "--start", "yesterday"), "not an ISO-8601 time"),
    # Event times the consumers would refuse as ts_out_of_range are not sent at all.
    (("live", "--start", "2099-01-01T00:00:00Z"), "is in the future"),
    (("history", "--to-kafka", "--start", "now", "--ticks", "100"), "ahead of the wall clock"),
])
def test_errors_are_one_actionable_line(args: tuple[str, ...], message: str) -> None:
    code, output = invoke(*args)
    assert code == 2
    assert output.startswith("error: ") and message in output and output.count("\n") == 1


def test_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    code, output = invoke("live", "--mqtt-port", port, "--ticks", "1")
    assert code == 2 and output.count("\n") == 1 and "MQTT" in output
    path = tmp_path / "r.csv"
    path.write_text("machine_id,time,x_c\na/b,1,1.0\n")
    code, output = invoke("replay", str(path), "--asset-type", "x", "--mqtt-port", port)
    assert code == 2 and output.count("\n") == 1 and "MQTT" in output


_ENV_VAR = re.compile(r"\[env var: (FOREWARN_[A-Z0-9_]+)")


@pytest.mark.parametrize("name", ["live", "history", "replay"])
def test_every_flag_shows_the_variable_of_its_setting(name: str) -> None:
    command = simulate.commands[name]
    ctx = click.Context(command, info_name=name)
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            record = param.get_help_record(ctx)
            found = _ENV_VAR.search(record[1]) if record is not None else None
            assert found is not None, param.opts
            # One scheme: FOREWARN_<SECTION>__<FIELD>, naming a field of the command's settings.
            model: type[BaseModel] = SimulateSettings
            *sections, leaf = found.group(1).removeprefix("FOREWARN_").lower().split("__")
            for section in sections:
                model = model.model_fields[section].annotation  # type: ignore[assignment]
            assert leaf in model.model_fields, (param.opts, found.group(1))
    assert CliRunner().invoke(cli, ["simulate", name, "--help"]).exit_code == 0


def test_pacer_keeps_the_schedule_and_wakes_on_stop() -> None:
    now = [0.0]
    stop = threading.Event()
    pacer = Pacer(0.5, stop, clock=lambda: now[0])
    assert pacer.wait(0)
    now[0] = 2.0  # behind schedule: no waiting
    assert pacer.wait(1) and pacer.behind_s == 1.5
    stop.set()
    assert not pacer.wait(10)
    assert Pacer(0.0, threading.Event()).wait(5)


def test_a_replay_whose_times_run_ahead_of_the_wall_clock_is_refused_before_sending(tmp_path: Path) -> None:
    path = tmp_path / "cycles.csv"
    path.write_text("machine_id,time,x_c\na/b,1,1.0\na/b,100,1.0\n")  # cycle 100: 100 minutes after --start
    code, output = invoke("replay", str(path), "--asset-type", "x", "--start", "now", "--mqtt-port", "1")
    assert code == 2 and output.count("\n") == 1 and "ahead of the wall clock" in output and "--start" in output
