"""Training's settings and CLI: one [section] per command, FOREWARN_<SECTION>__<FIELD>
variables, flags that set fields, and a --help that names every option's variable."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from forewarn.cli import cli
from forewarn.cli_options import env_var
from forewarn.settings import load_settings
from training import cli as training_cli
from training.settings import LSTM_MAX_WINDOW, TrainingSettings

COMMANDS = {
    ("train",): training_cli.train,
    ("evaluate",): training_cli.evaluate,
    ("predict",): training_cli.predict,
    ("export",): training_cli.export,
    ("model", "list"): training_cli.model_list,
    ("model", "show"): training_cli.model_show,
    ("model", "promote"): training_cli.model_promote,
    ("model", "publish"): training_cli.model_publish,
}


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./forewarn.toml
    monkeypatch.delenv("FOREWARN_CONFIG", raising=False)


@pytest.mark.parametrize("words", list(COMMANDS), ids=" ".join)
def test_help_names_every_options_variable(words):
    outcome = CliRunner().invoke(cli, [*words, "--help"], terminal_width=400)
    assert outcome.exit_code == 0, outcome.output
    options = [p for p in COMMANDS[words].params if isinstance(p, click.Option) and p.name != "help"]
    assert options
    for option in options:
        assert option.envvar and option.envvar.startswith("FOREWARN_"), option.name
        assert option.envvar in outcome.output and option.help, option.name
    assert "FOREWARN_TRAIN_" not in outcome.output.replace("FOREWARN_TRAIN__", "")


@pytest.mark.parametrize("words", [("evaluate",), ("predict",), ("model", "list"), ("model", "show"),
                                   ("model", "promote")], ids=" ".join)
def test_offline_commands_take_no_kafka_options(words):
    assert not [p for p in COMMANDS[words].params if (p.envvar or "").startswith("FOREWARN_KAFKA__")]


def test_file_then_environment_then_flags(monkeypatch, tmp_path):
    config = tmp_path / "train.toml"
    config.write_text('[train]\nwindow = 20\nepochs = 5\nsettings = ["speed"]\n\n'
                      '[train.network]\narchitecture = "lstm"\nfilters = 4\n\n[model]\nmodels_dir = "registry"\n')
    monkeypatch.setenv("FOREWARN_CONFIG", str(config))
    monkeypatch.setenv("FOREWARN_TRAIN__EPOCHS", "7")
    monkeypatch.setenv("FOREWARN_TRAIN__FEATURES", "s1, s2")
    settings = load_settings(TrainingSettings, {"train.window": 30})
    train = settings.train
    assert (train.window, train.epochs, train.features, train.settings) == (30, 7, ("s1", "s2"), ("speed",))
    assert (train.network.architecture, train.network.filters, train.network.kernel_size) == ("lstm", 4, 3)
    assert str(settings.model.models_dir) == "registry"


def test_blank_column_lists_are_unset(monkeypatch):
    monkeypatch.setenv("FOREWARN_TRAIN__SETTINGS", " ")
    assert load_settings(TrainingSettings).train.settings is None


def test_export_times_without_a_zone_are_utc(monkeypatch):
    monkeypatch.setenv("FOREWARN_EXPORT__SINCE", "2026-01-01T00:00:00")
    options = load_settings(TrainingSettings, {"export.until": "2026-01-02T00:00:00Z"}).export
    assert options.since is not None and options.since.utcoffset().total_seconds() == 0
    assert options.until is not None and options.until.utcoffset().total_seconds() == 0


def test_train_needs_exactly_one_source():
    outcome = CliRunner().invoke(cli, ["train", "--quiet"])
    assert outcome.exit_code == 2 and "exactly one of --data or --from-kafka" in outcome.output


def test_a_missing_required_option_names_its_variable():
    outcome = CliRunner().invoke(cli, ["evaluate", "--data", "somewhere"])
    assert outcome.exit_code == 2 and "--model" in outcome.output and "FOREWARN_EVALUATE__MODEL" in outcome.output


def test_lstm_window_is_bounded_with_one_line(tmp_path):
    outcome = CliRunner().invoke(cli, ["train", "--data", str(tmp_path), "--architecture", "lstm",
                                       "--window", str(LSTM_MAX_WINDOW + 1)])
    assert outcome.exit_code == 2 and f"at most {LSTM_MAX_WINDOW}" in outcome.output
    assert outcome.output.count("\n") == 1


def test_flags_reach_the_options(monkeypatch, tmp_path):
    """A flag given on the command line wins over its variable (checked before any data is read)."""
    monkeypatch.setenv("FOREWARN_TRAIN__DATA", str(tmp_path / "from-env"))
    outcome = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "from-flag"), "--run-to-failure"])
    assert outcome.exit_code == 2 and "from-flag" in outcome.output and "from-env" not in outcome.output


def _variables(model: type[BaseModel], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= _variables(annotation, f"{path}.")
        else:
            found.add(env_var(path))
    return found


def test_readme_names_only_real_variables():
    """training/README.md stays true to the settings: every FOREWARN_ variable it names exists."""
    readme = (Path(training_cli.__file__).parent / "README.md").read_text()
    named = set(re.findall(r"FOREWARN_[A-Z0-9_]*[A-Z0-9]", readme)) - {"FOREWARN_CONFIG"}
    real = _variables(TrainingSettings)
    assert named and named <= real, sorted(named - real)
    train_flags = {p.envvar for p in training_cli.train.params if isinstance(p, click.Option)
                   and (p.envvar or "").startswith("FOREWARN_TRAIN__")}
    assert train_flags <= named, sorted(train_flags - named)
