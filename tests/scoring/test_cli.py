"""`forewarn score`: complete --help with environment variables, one-line errors."""

from __future__ import annotations

from click.testing import CliRunner

from forewarn.cli import cli


def test_help_lists_every_flag_with_its_environment_variable() -> None:
    result = CliRunner().invoke(cli, ["score", "--help"])
    assert result.exit_code == 0
    for flag, env in [("--stride", "FOREWARN_SCORING__STRIDE"), ("--worker-id", "FOREWARN_SCORING__WORKER_ID"),
                      ("--models-dir", "FOREWARN_SCORING__MODELS_DIR"),
                      ("--alert-p-fail", "FOREWARN_SCORING__ALERTS__P_FAIL"),
                      ("--bootstrap-servers", "FOREWARN_KAFKA__BOOTSTRAP_SERVERS")]:
        assert flag in result.output and env in result.output


def test_unreachable_kafka_is_one_actionable_line() -> None:
    result = CliRunner().invoke(cli, ["score", "--bootstrap-servers", "127.0.0.1:1"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "unreachable" in lines[0] and "forewarn stack up" in lines[0]


def test_bad_setting_is_one_line() -> None:
    result = CliRunner().invoke(cli, ["score", "--stride", "0"])
    assert result.exit_code != 0 and "stride" in result.output
