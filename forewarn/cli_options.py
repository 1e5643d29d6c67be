"""Shared CLI flags, each bound to one settings field that is its single source of help.

Every flag maps to one setting (a dotted path into a settings class), reads that setting's
``FOREWARN_*`` environment variable and shows it in ``--help``. The help text is the field's
``description`` (first letter capitalised, a final period added), followed by its default; the
click type is derived from the field's annotation and constraints unless given. A path with no
field, or a field with no description, raises :class:`FlagError` when :func:`flags` is called
(at import of the command's module), so the CLI tests and ``make test-unit`` catch it.

Usage::

    from forewarn.cli_options import Flag, flags, kafka_options, settings_from

    SCORING_FLAGS = (
        Flag("--stride", "scoring.stride"),                       # IntRange(1) from ge=1
        Flag("--models-dir", "scoring.models_dir", click.Path(path_type=Path, file_okay=False)),
        Flag("--shadow", "scoring.shadow", secondary="--no-shadow"),  # a bool field: on/off switch
    )

    @click.command()
    @kafka_options
    @flags(ScoringSettings, *SCORING_FLAGS)
    def score() -> None:
        settings = settings_from(ScoringSettings)   # forewarn.toml < environment < the flags given

Derived click types: ``Literal[...]`` → :class:`click.Choice`; ``int``/``float`` with
``ge``/``gt``/``le``/``lt`` → :class:`click.IntRange`/:class:`click.FloatRange` (plain
``click.INT``/``click.FLOAT`` without bounds); :class:`~pathlib.Path` → ``click.Path(path_type=Path)``;
``bool`` → a flag (``secondary`` names its off switch); anything else is passed as a string for
pydantic to validate. ``X | None`` is treated as ``X``. Give ``type`` where the CLI should be
stricter or different than the field (e.g. a folder-only path). ``multiple=True`` makes a
repeatable option for a ``tuple``/``list`` field; its environment variable is then read by the
settings as a JSON list (the help says so), not by click.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import annotated_types
import click
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from forewarn.settings import ENV_PREFIX, ServiceSettings, load_settings

__all__ = [
    "Flag",
    "FlagError",
    "env_var",
    "flags",
    "kafka_options",
    "mqtt_options",
    "overrides",
    "settings_from",
    "stack_options",
]

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound=ServiceSettings)

# Where the options of one command invocation are collected, keyed by dotted setting path.
_OVERRIDES_KEY = "forewarn_overrides"


class FlagError(LookupError):
    """A flag names no settings field, or a field without a description (a programming error)."""


def env_var(path: str) -> str:
    """``kafka.bootstrap_servers`` → ``FOREWARN_KAFKA__BOOTSTRAP_SERVERS``."""
    return ENV_PREFIX + path.upper().replace(".", "__")


@dataclass(frozen=True)
class Flag:
    """One CLI flag bound to a setting path; its help comes from that field's description.

    ``type`` overrides the click type derived from the field; ``secondary`` is the off switch
    of a boolean field (``--shadow`` / ``--no-shadow``); ``multiple`` makes the option
    repeatable, for a tuple or list field.
    """

    decl: str
    path: str
    type: Any = None
    _: KW_ONLY
    secondary: str | None = None
    multiple: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.type, str):
            raise FlagError(f"{self.decl}: Flag(decl, path, type) takes no help text; write it as the description "
                            f"of the setting {self.path}")

    def option(self, settings: type[BaseModel]) -> Callable[[F], F]:
        """The click option of this flag, its help and type resolved against ``settings``;
        raises :class:`FlagError` when the path has no field or the field no description."""
        field = _field(settings, self.path, self.decl)
        annotation = _strip_optional(field.annotation)
        path = self.path
        multiple = self.multiple
        is_bool = annotation is bool and not multiple
        if self.secondary and not is_bool:
            raise FlagError(f"{self.decl}: secondary {self.secondary!r} given, but {path} is not a bool field")

        def remember(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
            if multiple:
                if value:
                    ctx.ensure_object(dict).setdefault(_OVERRIDES_KEY, {})[path] = list(value)
            elif value is not None:
                ctx.ensure_object(dict).setdefault(_OVERRIDES_KEY, {})[path] = value
            return value

        help_text = _help(field, is_bool)
        extra: dict[str, Any] = {}
        if is_bool and not self.secondary:
            extra["is_flag"] = True
        click_type = self.type
        if multiple:
            extra["multiple"] = True
            if click_type is None:
                click_type = _click_type(_element(annotation, self.decl, path), [])
            help_text += f"  [env var: {env_var(path)} as a JSON list]"
        else:
            if click_type is None and not is_bool:
                click_type = _click_type(annotation, field.metadata)
            extra.update(envvar=env_var(path), show_envvar=True)
        if click_type is not None:
            extra["type"] = click_type
        decl = f"{self.decl}/{self.secondary}" if self.secondary else self.decl
        return click.option(decl, "fw__" + path.replace(".", "__"), default=None, help=help_text,
                            expose_value=False, callback=remember, **extra)


def flags(settings: type[BaseModel], *table: Flag) -> Callable[[F], F]:
    """A decorator adding every flag of ``table`` to a click command, each resolved against
    ``settings`` when this is called: a path with no field or no description raises
    :class:`FlagError` at import of the command's module."""
    if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
        raise FlagError(f"flags(settings, *table): the first argument must be a settings class, not {settings!r}")
    options = [flag.option(settings) for flag in table]

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _field(settings: type[BaseModel], path: str, decl: str, need_description: bool = True) -> FieldInfo:
    model: type[BaseModel] | None = settings
    field: FieldInfo | None = None
    for part in path.split("."):
        if model is None:
            raise FlagError(f"{decl}: {path} goes below a field that is not a settings section")
        field = model.model_fields.get(part)
        if field is None:
            raise FlagError(f"{decl}: {settings.__name__} has no setting {path} "
                            f"({model.__name__} has no field {part!r})")
        model = _section(field.annotation)
    assert field is not None
    if need_description and not (field.description or "").strip():
        raise FlagError(f"{decl}: the setting {path} of {settings.__name__} has no description; write the flag's "
                        "help there (Field(..., description=...))")
    return field


def _section(annotation: Any) -> type[BaseModel] | None:
    annotation = _strip_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _element(annotation: Any, decl: str, path: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (tuple, list) and args:
        return args[0]
    raise FlagError(f"{decl}: multiple=True needs a tuple or list field, {path} is {annotation!r}")


_PATH = click.Path(path_type=Path)


def _click_type(annotation: Any, metadata: list[Any]) -> click.ParamType[Any] | None:
    if typing.get_origin(annotation) is Literal:
        return click.Choice(list(typing.get_args(annotation)))
    if annotation is Path:
        return _PATH
    if annotation in (int, float):
        bounds: dict[str, Any] = {}
        for item in metadata:
            if isinstance(item, annotated_types.Ge):
                bounds["min"] = item.ge
            elif isinstance(item, annotated_types.Gt):
                bounds.update(min=item.gt, min_open=True)
            elif isinstance(item, annotated_types.Le):
                bounds["max"] = item.le
            elif isinstance(item, annotated_types.Lt):
                bounds.update(max=item.lt, max_open=True)
        if annotation is int:
            return click.IntRange(**bounds) if bounds else click.INT
        return click.FloatRange(**bounds) if bounds else click.FLOAT
    return None


def _help(field: FieldInfo, is_bool: bool) -> str:
    text = " ".join((field.description or "").split())
    text = text[:1].upper() + text[1:]
    if text[-1:] not in (".", "?", "!"):
        text += "."
    shown = _default(field, is_bool)
    return f"{text} Default: {shown}." if shown else text


def _default(field: FieldInfo, is_bool: bool) -> str | None:
    """The field's default as the user would type it; None when there is none worth showing
    (no default, computed at run time, None, empty, or a secret)."""
    value = field.default
    if value is PydanticUndefined or value is None or field.default_factory is not None:
        return None
    if isinstance(value, SecretStr):
        return None
    if is_bool:
        return "on" if value else "off"
    if isinstance(value, tuple | list | dict | set | frozenset):
        return ", ".join(map(str, value)) if value else None
    shown = str(value)
    return shown or None


KAFKA_FLAGS = (
    Flag("--bootstrap-servers", "kafka.bootstrap_servers"),
    Flag("--kafka-security-protocol", "kafka.security_protocol"),
    Flag("--kafka-sasl-mechanism", "kafka.sasl_mechanism"),
    Flag("--kafka-sasl-username", "kafka.sasl_username"),
    Flag("--kafka-sasl-password-file", "kafka.sasl_password_file"),  # a password itself: never on argv
    Flag("--kafka-ssl-ca", "kafka.ssl_ca_location"),
    Flag("--topic-prefix", "topics.prefix"),
)

MQTT_FLAGS = (
    Flag("--mqtt-host", "mqtt.host"),
    Flag("--mqtt-port", "mqtt.port"),
    Flag("--mqtt-username", "mqtt.username"),
    Flag("--mqtt-password-file", "mqtt.password_file"),
    Flag("--mqtt-tls", "mqtt.tls", secondary="--no-mqtt-tls"),
    Flag("--mqtt-ca-file", "mqtt.ca_file"),
    Flag("--mqtt-protocol", "mqtt.protocol"),
)

STACK_FLAGS = (
    Flag("--home", "stack.home"),
    Flag("--controller-port", "stack.controller_port"),
    Flag("--brokers", "stack.brokers"),
    Flag("--kafka-home", "stack.kafka_home"),
    Flag("--secure", "stack.secure", secondary="--no-secure"),
)

kafka_options = flags(ServiceSettings, *KAFKA_FLAGS)
mqtt_options = flags(ServiceSettings, *MQTT_FLAGS)
stack_options = flags(ServiceSettings, *STACK_FLAGS)


def overrides() -> dict[str, Any]:
    """The flags given to the current command (and its parents), as dotted setting paths."""
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
