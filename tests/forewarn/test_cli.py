from __future__ import annotations

from pathlib import Path
from typing import Literal

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict, Field

from forewarn.cli import cli
from forewarn.cli_options import Flag, FlagError, env_var, flags, settings_from
from forewarn.settings import ServiceSettings


def all_commands(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None:
            continue
        path = (*prefix, name)
        found.append(path)
        if isinstance(command, click.Group):
            found.extend(all_commands(command, click.Context(command, parent=ctx), path))
    return found


def test_every_command_has_help_and_every_option_names_its_env_var() -> None:
    runner = CliRunner()
    ctx = click.Context(cli)
    commands = all_commands(cli, ctx)
    assert ("stack", "up") in commands and ("topics", "create") in commands
    for path in commands:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
        command = cli
        for name in path:
            command = command.get_command(ctx, name)  # type: ignore[assignment]
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help" and not param.hidden:
                assert param.help, (path, param.name)
                if param.expose_value is False or param.envvar:
                    assert param.show_envvar or "env var:" in (param.help or ""), (path, param.name)


def test_unreachable_kafka_is_one_actionable_line(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli, ["topics", "list", "--bootstrap-servers", "127.0.0.1:1"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "unreachable" in lines[0] and "forewarn stack up" in lines[0]
    assert "Traceback" not in result.output


def test_bad_setting_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREWARN_KAFKA__SECURITY_PROTOCOL", "CARRIER_PIGEON")
    result = CliRunner().invoke(cli, ["stack", "status"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_every_flag_and_its_env_var_are_in_the_rendered_help() -> None:
    runner = CliRunner()
    ctx = click.Context(cli)
    for path in all_commands(cli, ctx):
        command = cli
        for name in path:
            command = command.get_command(ctx, name)  # type: ignore[assignment]
        text = "".join(runner.invoke(cli, [*path, "--help"], terminal_width=100).output.split())
        for param in command.params:
            if not isinstance(param, click.Option) or not (param.name or "").startswith("fw__"):
                continue
            assert all(decl in text for decl in param.opts + param.secondary_opts), (path, param.opts)
            setting = (param.name or "").removeprefix("fw__").replace("__", ".")
            assert env_var(setting) in text, (path, param.opts)


class _Inner(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int = Field(3, ge=1, le=9, description="how many things")
    ratio: float = Field(0.5, gt=0, lt=1, description="share of the things.")
    mode: Literal["fast", "safe"] = Field("safe", description="how to go")
    level: Literal[0, 1, 2] = Field(1, description="QoS-like level")
    where: Path | None = Field(None, description="a folder")
    loud: bool = Field(True, description="say what happens")
    tags: tuple[str, ...] = Field(("a",), description="labels to attach")
    name: str = Field("x", description="")
    plain: str = "no description"


class _Settings(ServiceSettings):
    toy: _Inner = _Inner()


def _option(flag: Flag) -> click.Option:
    @click.command()
    @flags(_Settings, flag)
    def command() -> None:
        pass

    [param] = [p for p in command.params if isinstance(p, click.Option)]
    return param


def test_help_default_and_type_come_from_the_field() -> None:
    count = _option(Flag("--count", "toy.count"))
    assert count.help == "How many things. Default: 3."
    assert isinstance(count.type, click.IntRange) and (count.type.min, count.type.max) == (1, 9)
    assert count.envvar == "FOREWARN_TOY__COUNT" and count.show_envvar
    ratio = _option(Flag("--ratio", "toy.ratio"))
    assert ratio.help == "Share of the things. Default: 0.5."
    assert isinstance(ratio.type, click.FloatRange) and ratio.type.min_open and ratio.type.max_open
    mode = _option(Flag("--mode", "toy.mode"))
    assert isinstance(mode.type, click.Choice) and list(mode.type.choices) == ["fast", "safe"]
    level = _option(Flag("--level", "toy.level"))
    assert isinstance(level.type, click.Choice) and list(level.type.choices) == [0, 1, 2]
    where = _option(Flag("--where", "toy.where"))
    assert isinstance(where.type, click.Path) and where.help == "A folder."
    loud = _option(Flag("--loud", "toy.loud", secondary="--quiet"))
    assert loud.is_flag and loud.secondary_opts == ["--quiet"] and loud.help == "Say what happens. Default: on."
    given = _option(Flag("--where", "toy.where", click.Path(path_type=Path, file_okay=False)))
    assert isinstance(given.type, click.Path) and not given.type.file_okay  # an explicit type wins
    tags = _option(Flag("--tag", "toy.tags", multiple=True))
    assert tags.multiple and tags.envvar is None and "FOREWARN_TOY__TAGS as a JSON list" in (tags.help or "")


@pytest.mark.parametrize(("flag", "message"), [
    (Flag("--nope", "toy.nope"), "has no setting toy.nope"),
    (Flag("--deeper", "toy.count.deeper"), "not a settings section"),
    (Flag("--plain", "toy.plain"), "toy.plain of _Settings has no description"),
    (Flag("--name", "toy.name"), "toy.name of _Settings has no description"),
    (Flag("--count", "toy.count", secondary="--no-count"), "not a bool field"),
    (Flag("--count", "toy.count", multiple=True), "needs a tuple or list field"),
])
def test_a_flag_without_a_described_field_fails_when_the_command_is_built(flag: Flag, message: str) -> None:
    with pytest.raises(FlagError, match=message):
        flags(_Settings, flag)


def test_old_style_help_strings_are_refused() -> None:
    with pytest.raises(FlagError, match="takes no help text"):
        Flag("--count", "toy.count", "How many.")
    with pytest.raises(FlagError, match="must be a settings class"):
        flags(Flag("--count", "toy.count"))  # type: ignore[arg-type]


def test_flags_and_env_vars_reach_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FOREWARN_CONFIG", str(tmp_path / "forewarn.toml"))
    (tmp_path / "forewarn.toml").write_text("[toy]\nratio = 0.25\n")
    monkeypatch.setenv("FOREWARN_TOY__MODE", "fast")
    seen: list[_Settings] = []

    @click.command()
    @flags(_Settings, Flag("--count", "toy.count"), Flag("--mode", "toy.mode"), Flag("--ratio", "toy.ratio"),
           Flag("--loud", "toy.loud", secondary="--quiet"), Flag("--tag", "toy.tags", multiple=True))
    def command() -> None:
        seen.append(settings_from(_Settings))

    result = CliRunner().invoke(command, ["--count", "7", "--quiet", "--tag", "b", "--tag", "c"])
    assert result.exit_code == 0, result.output
    toy = seen[-1].toy
    assert (toy.count, toy.mode, toy.ratio, toy.loud, toy.tags) == (7, "fast", 0.25, False, ("b", "c"))
    result = CliRunner().invoke(command, [])
    assert result.exit_code == 0, result.output
    assert seen[-1].toy.tags == ("a",) and seen[-1].toy.loud  # unset flags do not mask the defaults
    result = CliRunner().invoke(command, ["--count", "10"])
    assert result.exit_code == 2 and "1<=x<=9" in result.output  # the field's bound, checked by click
