"""The Mosquitto config the stack generates bounds what a crash can lose and how much it queues,
from the [stack] settings."""

from __future__ import annotations

from pathlib import Path

from forewarn.settings import StackSettings
from forewarn.stack import Mosquitto


def _config(tmp_path: Path, **settings: int) -> dict[str, str]:
    broker = Mosquitto(StackSettings(home=tmp_path, **settings), 18830)
    broker.write_config()
    lines = [line.split(None, 1) for line in broker.config_file.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {key: value for key, value in lines}


def test_defaults_save_every_5_s_on_a_timer_and_cap_the_queue_explicitly(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config["persistence"] == "true"
    assert config["autosave_interval"] == "5" and config["autosave_on_changes"] == "false"
    assert config["max_queued_messages"] == "2000000"
    assert config["max_queued_bytes"] == str(1 << 30)
    assert config["sys_interval"] == "10"


def test_settings_reach_the_config(tmp_path: Path) -> None:
    config = _config(tmp_path, autosave_interval_s=2, max_queued_messages=500, max_queued_bytes=4096,
                     sys_interval_s=1)
    assert (config["autosave_interval"], config["max_queued_messages"], config["max_queued_bytes"],
            config["sys_interval"]) == ("2", "500", "4096", "1")


def test_status_states_the_exposure(tmp_path: Path) -> None:
    note = Mosquitto(StackSettings(home=tmp_path), 18830).exposure()
    assert note == "persistence on, saved every 5s; queue cap per client 2,000,000 messages / 1,024 MiB, then drops"


def test_saving_on_changes_replaces_the_timer(tmp_path: Path) -> None:
    config = _config(tmp_path, autosave_on_changes=1)
    assert config["autosave_interval"] == "1" and config["autosave_on_changes"] == "true"
    note = Mosquitto(StackSettings(home=tmp_path, autosave_on_changes=1), 18830).exposure()
    assert note.startswith("persistence on, saved after every 1 change(s);")
