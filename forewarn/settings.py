"""Typed, frozen settings.

Each service has one settings object, built once at its entry point from, in rising order of
precedence: ``forewarn.toml`` (or the file named by ``FOREWARN_CONFIG``), ``FOREWARN_*``
environment variables (nested sections joined by ``__``, e.g. ``FOREWARN_KAFKA__BOOTSTRAP_SERVERS``)
and CLI flags. Secrets are :class:`~pydantic.SecretStr` and never printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from forewarn.contract import DecodeLimits
from forewarn.errors import ConfigError

__all__ = [
    "DemoOptions",
    "DemoSettings",
    "InputSettings",
    "KafkaSettings",
    "MqttSettings",
    "ServiceSettings",
    "StackSettings",
    "TopicSettings",
    "TrustSettings",
    "config_path",
    "load_settings",
    "read_secret",
]

ENV_PREFIX = "FOREWARN_"
CONFIG_ENV = "FOREWARN_CONFIG"
DEFAULT_CONFIG = "forewarn.toml"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def read_secret(value: SecretStr | None, path: Path | None, what: str) -> str | None:
    """A secret given inline (``value``, e.g. from an environment variable) or as a file that
    holds it (``path``; one line, trailing newline ignored); the file wins when both are set.
    Raises :class:`ConfigError` naming the file (never the secret) when it cannot be read."""
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as error:
            raise ConfigError(f"cannot read {what} from {path}: {error.strerror or error}",
                              hint="check the file and its permissions") from None
    return None if value is None else value.get_secret_value()


class KafkaSettings(_Section):
    """How to reach Kafka. The same fields work for the local stack and a secured cluster."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers (host:port[,host:port])")
    client_id: str = Field("forewarn", description="client.id of the Kafka clients")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = Field(
        None, description="SASL mechanism")
    sasl_username: str | None = Field(None, description="SASL username")
    sasl_password: SecretStr | None = Field(None, description="SASL password (prefer the environment variable)")
    sasl_password_file: Path | None = Field(None, description="file holding the SASL password (wins over "
                                            "sasl_password)")
    ssl_ca_location: Path | None = Field(None, description="CA certificate file for Kafka TLS")
    ssl_certificate_location: Path | None = Field(None, description="client certificate file for Kafka TLS")
    ssl_key_location: Path | None = Field(None, description="client key file for Kafka TLS")
    ssl_key_password: SecretStr | None = Field(None, description="password of the client key file")
    extra: dict[str, str] = Field(default_factory=dict, description="any other librdkafka property, passed through "
                                  'as is (e.g. {"linger.ms": "20"})')

    def librdkafka(self) -> dict[str, Any]:
        """The librdkafka configuration dict for these settings (secrets revealed here only)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        password = read_secret(self.sasl_password, self.sasl_password_file, "kafka.sasl_password")
        if password is not None:
            conf["sasl.password"] = password
        for key, path in (("ssl.ca.location", self.ssl_ca_location),
                          ("ssl.certificate.location", self.ssl_certificate_location),
                          ("ssl.key.location", self.ssl_key_location)):
            if path is not None:
                conf[key] = str(path)
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        conf.update(self.extra)
        return conf


class MqttSettings(_Section):
    """How to reach the MQTT broker (Mosquitto locally, the plant's broker at the edge)."""

    host: str = Field("127.0.0.1", description="MQTT broker host")
    port: int = Field(1883, ge=1, le=65535, description="MQTT broker port")
    username: str | None = Field(None, description="MQTT username")
    password: SecretStr | None = Field(None, description="MQTT password (prefer the environment variable)")
    password_file: Path | None = Field(None, description="file holding the MQTT password (wins over password)")
    tls: bool = Field(False, description="connect to MQTT over TLS")
    ca_file: Path | None = Field(None, description="CA certificate file for MQTT TLS")
    cert_file: Path | None = Field(None, description="client certificate file for MQTT TLS")
    key_file: Path | None = Field(None, description="client key file for MQTT TLS")
    protocol: Literal["5", "3.1.1", "auto"] = Field("auto", description="MQTT protocol version (auto = 5, "
                                                    "falling back to 3.1.1)")
    keepalive_s: int = Field(30, ge=5, description="MQTT keep-alive interval, in seconds")
    reconnect_min_s: float = Field(0.5, gt=0, description="first pause before reconnecting, in seconds")
    reconnect_max_s: float = Field(30.0, gt=0, description="longest pause between reconnect attempts, in seconds")

    def password_value(self) -> str | None:
        """The MQTT password, from ``password_file`` or ``password`` (None when neither is set)."""
        return read_secret(self.password, self.password_file, "mqtt.password")


class TopicSettings(_Section):
    """Kafka topic names (one prefix for all) and sizes."""

    prefix: str = Field("", description="prefix of every Kafka topic name")
    partitions: int = Field(6, ge=1, description="partitions of the keyed topics")
    replication_factor: int | None = Field(None, ge=1, description="replication factor of every topic; unset = "
                                           "min(3, brokers in the cluster), with min.insync.replicas one less")
    telemetry_retention_gib: float = Field(2.0, gt=0, description="telemetry kept per partition, in GiB")


class InputSettings(_Section):
    """How far a message's event time may stray from its arrival time (``ts_out_of_range``
    beyond). Every component that decodes inbound messages applies the same bounds."""

    max_future_s: float | None = Field(300.0, ge=0, description="how far event time may run ahead of arrival "
                                       "time (clock skew), in seconds; unset = no bound")
    max_age_days: float | None = Field(None, gt=0, description="how far event time may lag arrival time, in "
                                       "days; unset (the default) = no bound, as backlogs and replays of old "
                                       "history carry old event times")
    maintenance_max_future_s: float | None = Field(
        60.0, ge=0, description="how far a maintenance event's time may run ahead of its arrival, in seconds "
        "(it reports what has happened: only clock skew); unset = the readings' bound")

    def limits(self) -> DecodeLimits:
        """The decoder limits these settings mean."""
        return DecodeLimits(
            max_future_ms=None if self.max_future_s is None else int(self.max_future_s * 1000),
            max_age_ms=None if self.max_age_days is None else int(self.max_age_days * 86_400_000),
            maintenance_max_future_ms=None if self.maintenance_max_future_s is None
            else int(self.maintenance_max_future_s * 1000))


class TrustSettings(_Section):
    """Which model signing keys a scorer (worker or edge) trusts. A bundle must be signed
    (Ed25519) by one of them, and be newer than the version in service unless a signed
    promotion or rollback record says otherwise."""

    keys: list[Path] = Field(default_factory=list, description="public keys (PEM files, or folders of *.pub "
                             "files) whose signatures are trusted")
    allow_unsigned: bool = Field(False, description="serve unsigned bundles too (development only: anyone who "
                                 "can write the models topic then controls alerting); logged at every accept")


class StackSettings(_Section):
    """The local Mosquitto + Kafka stack that ``forewarn stack`` runs."""

    home: Path = Field(Path(".forewarn"), description="folder for the stack's data, logs and pid files")
    cache_dir: Path | None = Field(None, description="where the Kafka jars are cached; default HOME/cache")
    # The brokers listen where the clients look: Mosquitto on mqtt.port, Kafka on the port of
    # kafka.bootstrap_servers. A non-local address there means a remote broker: none is run.
    controller_port: int = Field(9093, ge=1, le=65535, description="port of Kafka's KRaft controller listener")
    brokers: int = Field(1, ge=1, le=9, description="Kafka nodes to run (each a broker and a KRaft controller); "
                         "node i listens on the bootstrap port + 2(i-1) and the controller port + 2(i-1); a home "
                         "keeps the node count it was made with")
    kafka_home: Path | None = Field(None, description="run this Kafka install instead of Maven's jars (KAFKA_HOME)")
    kafka_heap: str = Field("768m", description="Java heap of the local Kafka broker (-Xmx)")
    mosquitto_bin: str = Field("mosquitto", description="the Mosquitto executable")
    # The demo publishes about 1,000 readings/s (500 machines, one reading per 60 simulated seconds
    # at 120x): 2,000,000 queued messages hold about 33 minutes of a Kafka outage for one bridge
    # session. Mosquitto keeps its whole store in memory and rewrites its persistence file at every
    # save, so the byte cap bounds its memory and the cost of a save (readings are a few hundred
    # bytes, so for them the message cap binds first; the byte cap binds for large gateway batches).
    # Beyond either cap Mosquitto drops new messages for that client: the bridge warns near the cap
    # and reports drops (bridge/broker_watch.py).
    max_queued_messages: int = Field(2_000_000, ge=1, description="QoS 1 messages Mosquitto queues per client "
                                     "beyond those in flight; more are dropped")
    max_queued_bytes: int = Field(1 << 30, ge=1, description="payload bytes Mosquitto queues per client beyond "
                                  "those in flight; more are dropped")
    autosave_interval_s: int = Field(5, ge=1, description="how often Mosquitto saves its queues to disk, in seconds "
                                     "(a Mosquitto crash loses at most this much of what it acknowledged)")
    autosave_on_changes: int | None = Field(None, ge=1, description="save after this many changes to the stored "
                                            "messages instead of on the autosave_interval_s timer (1: after each, "
                                            "so a crash loses next to nothing it acknowledged; each save rewrites "
                                            "the whole file, which costs more the longer the queues)")
    sys_interval_s: int = Field(10, ge=1, description="how often Mosquitto publishes its $SYS counters (store size, "
                                "dropped messages), in seconds")
    queue_watch: bool = Field(True, description="the bridge watches the MQTT broker's stored messages ($SYS, as "
                              "Mosquitto publishes them; a broker without them is never reported) and warns near "
                              "max_queued_messages / max_queued_bytes")
    queue_warn_fraction: float = Field(0.8, gt=0, le=1, description="share of the queue caps at which the bridge "
                                       "warns that the broker's store is filling")
    max_inflight_messages: int = Field(1000, ge=0, description="unacknowledged QoS 1 and 2 messages Mosquitto sends a "
                                       "client at once")
    startup_timeout_s: float = Field(90.0, gt=0, description="how long `stack up` waits for the brokers to answer")
    secure: bool = Field(False, description="run the brokers secured: TLS with per-component passwords and ACLs on "
                         "Mosquitto, SASL_SSL (SCRAM-SHA-512) with ACLs on Kafka; credentials under HOME/secure")

    @property
    def cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.home / "cache"


class ServiceSettings(BaseSettings):
    """Base of every service's settings: the connections all of them share.

    Subclass it and add your own section, e.g. ``bridge: BridgeOptions = BridgeOptions()``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )

    kafka: KafkaSettings = KafkaSettings()
    mqtt: MqttSettings = MqttSettings()
    topics: TopicSettings = TopicSettings()
    stack: StackSettings = StackSettings()
    input: InputSettings = InputSettings()
    trust: TrustSettings = TrustSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: flags (init kwargs) > environment > forewarn.toml.
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_path())
        return (init_settings, env_settings, toml)


class DemoOptions(_Section):
    """What ``forewarn demo`` runs: the simulated fleet, the pipeline and, with ``check``, for how long."""

    machines: int = Field(250, ge=1, le=100_000, description="simulated machines per asset type")
    sites: int = Field(2, ge=1, description="sites the simulated machines are spread over")
    speed: float = Field(120.0, ge=1, le=100_000, description="simulated seconds per wall second (readings come "
                         "every 60 simulated seconds)")
    dashboard_port: int = Field(8501, ge=1, le=65535, description="port of the dashboard")
    workers: int = Field(2, ge=1, description="scoring workers to run")
    seed: int = Field(7, ge=0, description="seed of the simulated history and fleet")
    check: bool = Field(False, description="run headless for --minutes, then exit 1 unless predictions flowed and an "
                        "alert opened before a simulated failure")
    minutes: float = Field(5.0, ge=0.5, le=600, description="how long --check runs the pipeline, in minutes")


class DemoSettings(ServiceSettings):
    """Settings of ``forewarn demo``."""

    demo: DemoOptions = DemoOptions()


S = TypeVar("S", bound=ServiceSettings)


def config_path() -> Path:
    """The TOML file settings are read from: ``$FOREWARN_CONFIG`` or ./forewarn.toml."""
    return Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG))


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"kafka.bootstrap_servers": x}`` → ``{"kafka": {"bootstrap_servers": x}}``; None means unset."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        if value is None:
            continue
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(cls: type[S], overrides: dict[str, Any] | None = None) -> S:
    """Build ``cls`` from forewarn.toml, the environment and ``overrides``.

    ``overrides`` maps dotted paths (``"kafka.bootstrap_servers"``) to flag values; ``None``
    values are ignored so unset flags do not mask the environment or the file. A section
    given by a flag is merged into what the environment and file say, not replacing it.
    Raises :class:`ConfigError` with one readable line when the result is invalid.
    """
    path = config_path()
    if CONFIG_ENV in os.environ and not path.is_file():
        raise ConfigError(f"config file {path} not found", hint=f"fix {CONFIG_ENV} or create the file")
    try:
        base = cls()
        if not overrides:
            return base
        flags = _nest(overrides)
        merged = _deep_merge(base.model_dump(), flags)
        return cls.model_validate(merged)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}",
                          hint=f"check {path}, FOREWARN_* variables and flags") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read settings: {error}", hint=f"check {path}") from None
