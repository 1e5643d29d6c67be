from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from forewarn.cli import cli


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
            command = command.get_command(ctx, name)  # type: ignore[union-attr,assignment]
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
