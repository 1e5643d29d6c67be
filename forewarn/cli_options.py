"""Shared CLI flags. Every flag maps to one setting and also reads its ``FOREWARN_*``
environment variable, which ``--help`` shows. Commands collect the flags they were given
into a dotted-path dict and build their settings object once with :func:`settings_from`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from forewarn.settings import ENV_PREFIX, ServiceSettings, load_settings

__all__ = [
    "Flag",
    "env_var",
    "flags",
    "kafka_options",
    "mqtt_options",
    "settings_from",
    "stack_options",
]

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound=ServiceSettings)

# Where the options of one command invocation are collected, keyed by dotted setting path.
_OVERRIDES_KEY = "forewarn_overrides"


def env_var(path: str) -> str:
    """``kafka.bootstrap_servers`` → ``FOREWARN_KAFKA__BOOTSTRAP_SERVERS``."""
    return ENV_PREFIX + path.upper().replace(".", "__")


@dataclass(frozen=True)
class Flag:
    """One CLI flag bound to a setting path."""

    decl: str
    path: str
    help: str
    type: Any = None
    is_flag: bool = False
    secondary: str | None = None

    def option(self) -> Callable[[F], F]:
        decl = f"{self.decl}/{self.secondary}" if self.secondary else self.decl

        def remember(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
            if value is not None:
                ctx.ensure_object(dict).setdefault(_OVERRIDES_KEY, {})[self.path] = value
            return value

        extra: dict[str, Any] = {"is_flag": True} if self.is_flag and not self.secondary else {}
        if self.type is not None:
            extra["type"] = self.type
        return click.option(
            decl, "fw__" + self.path.replace(".", "__"), default=None, help=self.help,
            envvar=env_var(self.path), show_envvar=True, expose_value=False, callback=remember, **extra,
        )


def flags(*table: Flag) -> Callable[[F], F]:
    """A decorator adding every flag of ``table`` to a click command."""

    def decorate(func: F) -> F:
        for flag in reversed(table):
            func = flag.option()(func)
        return func

    return decorate


_PATH = click.Path(path_type=Path)

KAFKA_FLAGS = (
    Flag("--bootstrap-servers", "kafka.bootstrap_servers", "Kafka bootstrap servers (host:port[,host:port])."),
    Flag("--kafka-security-protocol", "kafka.security_protocol", "Kafka security protocol.",
         click.Choice(["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])),
    Flag("--kafka-sasl-mechanism", "kafka.sasl_mechanism", "SASL mechanism.",
         click.Choice(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"])),
    Flag("--kafka-sasl-username", "kafka.sasl_username", "SASL username."),
    Flag("--kafka-sasl-password", "kafka.sasl_password", "SASL password (prefer the environment variable)."),
    Flag("--kafka-ssl-ca", "kafka.ssl_ca_location", "CA certificate file for Kafka TLS.", _PATH),
    Flag("--topic-prefix", "topics.prefix", "Prefix of every Kafka topic name."),
)

MQTT_FLAGS = (
    Flag("--mqtt-host", "mqtt.host", "MQTT broker host."),
    Flag("--mqtt-port", "mqtt.port", "MQTT broker port.", click.IntRange(1, 65535)),
    Flag("--mqtt-username", "mqtt.username", "MQTT username."),
    Flag("--mqtt-password", "mqtt.password", "MQTT password (prefer the environment variable)."),
    Flag("--mqtt-tls", "mqtt.tls", "Connect to MQTT over TLS.", is_flag=True, secondary="--no-mqtt-tls"),
    Flag("--mqtt-ca-file", "mqtt.ca_file", "CA certificate file for MQTT TLS.", _PATH),
    Flag("--mqtt-protocol", "mqtt.protocol", "MQTT protocol version (auto = 5, falling back to 3.1.1).",
         click.Choice(["auto", "5", "3.1.1"])),
)

STACK_FLAGS = (
    Flag("--home", "stack.home", "Folder for the stack's data, logs and pid files.", _PATH),
    Flag("--controller-port", "stack.controller_port", "Port of Kafka's KRaft controller listener.",
         click.IntRange(1, 65535)),
    Flag("--kafka-home", "stack.kafka_home", "Run this Kafka install instead of Maven's jars (KAFKA_HOME).", _PATH),
)

kafka_options = flags(*KAFKA_FLAGS)
mqtt_options = flags(*MQTT_FLAGS)
stack_options = flags(*STACK_FLAGS)


def overrides() -> dict[str, Any]:
    """The flags given to the current command, as dotted setting paths."""
    ctx = click.get_current_context()
    found: dict[str, Any] = {}
    while ctx is not None:
        if isinstance(ctx.obj, dict):
            for key, value in ctx.obj.get(_OVERRIDES_KEY, {}).items():
                found.setdefault(key, value)
        ctx = ctx.parent  # type: ignore[assignment]
    return found


def settings_from(cls: type[S], extra: dict[str, Any] | None = None) -> S:
    """Build ``cls`` from forewarn.toml < environment < the current command's flags (< ``extra``)."""
    return load_settings(cls, {**overrides(), **(extra or {})})
