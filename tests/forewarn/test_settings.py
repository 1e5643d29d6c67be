from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from forewarn.errors import ConfigError
from forewarn.settings import KafkaSettings, MqttSettings, ServiceSettings, StackSettings, TopicSettings, load_settings


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "forewarn.toml"
    path.write_text('[kafka]\nbootstrap_servers = "file:1"\nclient_id = "from-file"\n[mqtt]\nport = 1111\n')
    monkeypatch.setenv("FOREWARN_CONFIG", str(path))
    for var in ("FOREWARN_KAFKA__BOOTSTRAP_SERVERS", "FOREWARN_MQTT__PORT"):
        monkeypatch.delenv(var, raising=False)
    return path


def test_file_then_env_then_flags(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(ServiceSettings).kafka.bootstrap_servers == "file:1"
    monkeypatch.setenv("FOREWARN_KAFKA__BOOTSTRAP_SERVERS", "env:2")
    s = load_settings(ServiceSettings)
    assert s.kafka.bootstrap_servers == "env:2"
    assert s.kafka.client_id == "from-file"  # a section is merged, not replaced
    s = load_settings(ServiceSettings, {"kafka.bootstrap_servers": "flag:3", "mqtt.port": None})
    assert s.kafka.bootstrap_servers == "flag:3"
    assert s.kafka.client_id == "from-file"
    assert s.mqtt.port == 1111  # an unset flag (None) does not mask the file


def test_secrets_are_hidden_but_reach_librdkafka(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREWARN_KAFKA__SASL_PASSWORD", "hunter2")
    s = load_settings(ServiceSettings, {"kafka.security_protocol": "SASL_SSL", "kafka.sasl_mechanism": "PLAIN",
                                        "kafka.sasl_username": "u"})
    assert "hunter2" not in repr(s)
    conf = s.kafka.librdkafka()
    assert conf["sasl.password"] == "hunter2" and conf["security.protocol"] == "SASL_SSL"


def test_extra_librdkafka_properties_pass_through() -> None:
    conf = KafkaSettings(extra={"linger.ms": "50"}).librdkafka()
    assert conf["linger.ms"] == "50"


def test_invalid_values_are_one_line_errors(config: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(ServiceSettings, {"mqtt.port": 0})
    assert "mqtt.port" in info.value.one_line() and "\n" not in info.value.one_line()


def test_missing_config_file_named_by_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FOREWARN_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings(ServiceSettings)


def test_settings_are_frozen() -> None:
    s = ServiceSettings()
    with pytest.raises(Exception, match="frozen"):
        s.kafka = KafkaSettings()  # type: ignore[misc]


@pytest.mark.parametrize("section", [KafkaSettings, MqttSettings, TopicSettings, StackSettings])
def test_every_shared_setting_is_described(section: type[BaseModel]) -> None:
    # The descriptions are the flags' help and the only documentation of the TOML keys.
    missing = [name for name, field in section.model_fields.items() if not (field.description or "").strip()]
    assert missing == []
