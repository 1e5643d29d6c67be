"""The notifier's settings: the shared connections plus a ``notify`` section.

Channels and rules are tables of ``forewarn.toml`` (``[notify.channels.<name>]``,
``[[notify.rules]]``); the scalar options also come from ``FOREWARN_NOTIFY__*`` variables and
``forewarn notify`` flags. Every secret (an SMTP password, a webhook token, Apprise URLs, which
carry their services' tokens) is read from a file named here, never given as a value on a
command line, in an environment variable the notifier reads or in a log.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from forewarn.contract import AlertSeverity
from forewarn.settings import ServiceSettings

__all__ = ["AppriseChannel", "Channel", "EmailChannel", "NotifyOptions", "NotifySettings", "Rule", "WebhookChannel"]

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WebhookChannel(_Section):
    """A generic JSON webhook: one POST per notification (or digest), ``Idempotency-Key`` header."""

    kind: Literal["webhook"] = "webhook"
    url: str = Field(description="the receiver's URL (http or https)", pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers (no secrets: "
                                    "use token_file)")
    token_file: Path | None = Field(None, description="file holding a bearer token sent as Authorization")
    ca_file: Path | None = Field(None, description="CA certificate file that the receiver's TLS certificate "
                                 "must chain to (default: the system's)")
    timeout_s: float = Field(10.0, gt=0, description="time-out of one request, in seconds")


class EmailChannel(_Section):
    """Email over SMTP: STARTTLS by default, a login when ``username`` is set."""

    kind: Literal["email"] = "email"
    host: str = Field(description="SMTP server host")
    port: int = Field(587, ge=1, le=65535, description="SMTP server port")
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls: upgrade a plain connection (refused if the server cannot); tls: TLS "
        "from the start (port 465); none: plaintext (a local relay only)")
    username: str | None = Field(None, description="SMTP login name (unset: no login)")
    password_file: Path | None = Field(None, description="file holding the SMTP password")
    ca_file: Path | None = Field(None, description="CA certificate file the server's certificate must chain "
                                 "to (default: the system's)")
    sender: str = Field(description="From address")
    to: list[str] = Field(min_length=1, description="recipients")
    timeout_s: float = Field(20.0, gt=0, description="time-out of one SMTP conversation step, in seconds")

    @model_validator(mode="after")
    def _login_needs_tls(self) -> EmailChannel:
        if self.username is not None and self.security == "none":
            raise ValueError("an SMTP login over a plaintext connection would send the password in clear: "
                             "use security = starttls or tls")
        return self


class AppriseChannel(_Section):
    """Chat and push services (Slack, Microsoft Teams, ntfy, Telegram, ...) through Apprise."""

    kind: Literal["apprise"] = "apprise"
    urls_file: Path = Field(description="file of Apprise URLs, one per line, # comments allowed (they carry the "
                            "services' tokens)")


Channel = Annotated[WebhookChannel | EmailChannel | AppriseChannel, Field(discriminator="kind")]


class Rule(_Section):
    """Which alerts go where. The first rule that matches an alert routes it; an empty filter
    matches everything. ``channels`` are told at once; ``escalation`` is the chain of channels
    told one step at a time while nobody acknowledges."""

    name: str = Field(min_length=1, description="the rule's name (shown in messages and metrics)")
    sites: list[str] = Field(default_factory=list, description="sites this rule is for (empty: every site)")
    asset_types: list[str] = Field(default_factory=list, description="asset types (empty: every type)")
    severities: list[AlertSeverity] = Field(default_factory=list, description="severities (empty: every one)")
    hours: str | None = Field(None, description="time of day the rule applies, HH:MM-HH:MM in notify.timezone "
                              "(22:00-06:00 spans midnight; unset: all day)")
    days: list[Weekday] = Field(default_factory=list, description="weekdays the rule applies (empty: every day)")
    channels: list[str] = Field(min_length=1, description="channels told when an alert opens")
    escalation: list[str] = Field(default_factory=list, description="channels told one after the other, each "
                                  "escalate_after_s after the last, while the alert is not acknowledged")
    escalate_after_s: float = Field(900.0, gt=0, description="seconds without an acknowledgement before the next "
                                    "escalation step")
    repeat_s: float | None = Field(3600.0, gt=0, description="remind the last channels told this often while not "
                                   "acknowledged (unset: no reminders)")
    notify_resolved: bool = Field(True, description="tell the channels that were told when the alert resolves")

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is not None and not _HOURS.match(value):
            raise ValueError(f"hours {value!r} is not HH:MM-HH:MM")
        return value

    def minutes(self) -> tuple[int, int] | None:
        """``hours`` as minutes of the day ``(start, end)``; None when the rule applies all day."""
        found = _HOURS.match(self.hours or "")
        if found is None:
            return None
        a, b, c, d = (int(x) for x in found.groups())
        return a * 60 + b, c * 60 + d

    def chain(self) -> list[list[str]]:
        """The channels of each level: level 0 is ``channels``, level k is ``escalation[k-1]``."""
        return [list(self.channels), *([c] for c in self.escalation)]


class NotifyOptions(_Section):
    """How the notifier routes, holds, digests and retries."""

    group_id: str = Field("forewarn-notify", description="Kafka consumer group of the notifier")
    instance_id: str | None = Field(None, description="stable name of this notifier in its group (static "
                                    "membership): one restarted with the same name gets its partitions back at once, "
                                    "not after session_timeout_ms; never give two running notifiers the same one")
    session_timeout_ms: int = Field(30_000, ge=6000, description="consumer group session timeout: how long a "
                                    "notifier that died keeps its partitions")
    from_start: bool = Field(False, description="a group with no committed offsets starts at the beginning of "
                             "the alerts topic (announcing every alert still there), not at its end")
    timezone: str = Field("UTC", description="time zone of the rules' hours and days (an IANA name)")
    channels: dict[str, Channel] = Field(default_factory=dict, description="the channels, by name")
    rules: list[Rule] = Field(default_factory=list, description="the routing rules, first match wins")
    personal_channel: str | None = Field(None, description="an email channel whose server and sender also reach "
                                         "people one by one: a user whose dashboard preferences give an address "
                                         "and ask for it is emailed the alerts assigned to them (unset: nobody is)")
    hold_s: float = Field(5.0, ge=0, description="how long a notification waits for others to the same channel, "
                          "in seconds (what arrives together goes together)")
    digest_min: int = Field(5, ge=2, description="this many notifications or more due for one channel at once go "
                            "as one digest")
    digest_lines: int = Field(50, ge=1, description="alerts listed in a digest's text (all of them are in a "
                              "webhook's JSON)")
    retry_min_s: float = Field(1.0, gt=0, description="first pause before retrying a channel that failed, in "
                               "seconds (it doubles up to retry_max_s)")
    retry_max_s: float = Field(300.0, gt=0, description="longest pause between retries of a channel, in seconds")
    max_attempts: int = Field(100, ge=1, description="attempts at one notification before it goes to the "
                              "notify.dlq topic with its reason (with the defaults about eight hours)")
    forget_after_s: float = Field(86400.0, ge=0, description="how long a resolved alert's record is kept (so a "
                                  "redelivered event cannot announce it again), in seconds")
    poll_s: float = Field(0.5, gt=0, le=10, description="longest wait for new alert events per round, in seconds")
    dashboard_url: str | None = Field(None, description="the dashboard's address, linked from every message")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics on this port "
                                     "(unset = off)")
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint listens on (loopback by "
                              "default; the endpoint has no authentication)")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _rules_name_channels(self) -> NotifyOptions:
        for rule in self.rules:
            unknown = sorted({c for level in rule.chain() for c in level} - set(self.channels))
            if unknown:
                raise ValueError(f"rule {rule.name!r} names channel(s) {', '.join(unknown)} that notify.channels "
                                 "does not define")
        if self.personal_channel is not None and not isinstance(self.channels.get(self.personal_channel),
                                                                 EmailChannel):
            raise ValueError(f"personal_channel {self.personal_channel!r} is not an email channel of notify.channels")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("two rules have the same name")
        return self


class NotifySettings(ServiceSettings):
    """Everything ``forewarn notify`` needs."""

    notify: NotifyOptions = NotifyOptions()
