"""The channels: a generic JSON webhook, email over SMTP, and chat and push services through
Apprise. Each sends one :class:`~notify.messages.Outgoing` or raises
:class:`~notify.errors.DeliveryFailed` saying whether trying again can help; none keeps a
connection open between messages, and none logs a secret (passwords, tokens and Apprise URLs
are read from their files when a message is sent, so a rotated one takes effect at once).

The idempotency key travels with every message: the webhook's ``Idempotency-Key`` header and
its JSON ``key``, the email's ``Message-ID`` (derived from it) and ``X-Forewarn-Key`` header.
"""

from __future__ import annotations

import hashlib
import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Protocol

from forewarn.errors import ConfigError
from forewarn.settings import read_secret
from notify.errors import DeliveryFailed
from notify.messages import Outgoing
from notify.settings import AppriseChannel, Channel, EmailChannel, WebhookChannel

__all__ = ["AppriseSender", "EmailSender", "Sender", "WebhookSender", "build_senders", "message_id"]

log = logging.getLogger(__name__)

# HTTP statuses that mean "later": the receiver is busy, rate-limiting or failing for now.
_HTTP_LATER = frozenset({408, 425, 429})


class Sender(Protocol):
    """One channel: sends a message or raises :class:`DeliveryFailed`."""

    name: str

    def send(self, message: Outgoing) -> None: ...


def _tls(ca_file: Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def _secret(path: Path | None, what: str) -> str | None:
    try:
        return read_secret(None, path, what)
    except ConfigError as error:
        raise DeliveryFailed(error.one_line()) from None


class WebhookSender:
    """POSTs the message's JSON document; 2xx is delivered, 408/425/429/5xx and network errors
    are retried, any other status is a refusal for good."""

    def __init__(self, name: str, settings: WebhookChannel) -> None:
        self.name = name
        self.settings = settings

    def send(self, message: Outgoing) -> None:
        s = self.settings
        headers = {"Content-Type": "application/json", "User-Agent": "forewarn-notify", **s.headers,
                   "Idempotency-Key": message.key}
        token = _secret(s.token_file, f"the token of channel {self.name}")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        body = json.dumps(message.document, separators=(",", ":")).encode()
        request = urllib.request.Request(s.url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only
        context = _tls(s.ca_file) if s.url.startswith("https:") else None
        try:
            with urllib.request.urlopen(request, timeout=s.timeout_s, context=context) as response:  # noqa: S310
                response.read(1024)
        except urllib.error.HTTPError as error:
            error.close()  # it holds the response and its connection
            code = error.code
            retriable = code >= 500 or code in _HTTP_LATER
            raise DeliveryFailed(f"webhook {self.name} answered HTTP {code} {error.reason}",
                                 retriable=retriable) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DeliveryFailed(f"webhook {self.name} unreachable: {reason}") from None


def message_id(key: str) -> str:
    """The email ``Message-ID`` of an idempotency key: the same key, the same id."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}@forewarn.notify>"


class EmailSender:
    """Sends over SMTP: STARTTLS (certificate checked) before any login, a login when
    ``username`` is set. A 5xx refusal of the sender, a recipient or the data is for good;
    anything else (connection refused, time-outs, 4xx, a failed login) is retried."""

    def __init__(self, name: str, settings: EmailChannel) -> None:
        self.name = name
        self.settings = settings

    def send(self, message: Outgoing) -> None:
        s = self.settings
        mail = EmailMessage()
        mail["Subject"] = message.title
        mail["From"] = s.sender
        mail["To"] = ", ".join(s.to)
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = message_id(message.key)
        mail["X-Forewarn-Key"] = message.key
        mail.set_content(message.body)
        password = _secret(s.password_file, f"the SMTP password of channel {self.name}")
        where = f"email {self.name} via {s.host}:{s.port}"
        try:
            smtp: smtplib.SMTP
            if s.security == "tls":
                smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s, context=_tls(s.ca_file))
            else:
                smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
            with smtp:
                smtp.ehlo()
                if s.security == "starttls":
                    smtp.starttls(context=_tls(s.ca_file))
                    smtp.ehlo()
                if s.username is not None:
                    smtp.login(s.username, password or "")
                smtp.send_message(mail)
        except smtplib.SMTPNotSupportedError:
            raise DeliveryFailed(f"{where}: the server offers no STARTTLS (refusing to send in clear)") from None
        except smtplib.SMTPAuthenticationError as error:
            raise DeliveryFailed(f"{where}: login of {s.username!r} refused ({error.smtp_code})") from None
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            raise DeliveryFailed(f"{where}: recipients refused ({', '.join(map(str, codes))})",
                                 retriable=not all(c >= 500 for c in codes)) from None
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as error:
            raise DeliveryFailed(f"{where}: refused ({error.smtp_code})", retriable=error.smtp_code < 500) from None
        except (smtplib.SMTPException, OSError) as error:  # ssl errors and time-outs are OSErrors
            raise DeliveryFailed(f"{where}: {type(error).__name__}: {error}") from None


_APPRISE_TYPE = {"critical": "failure", "warning": "warning", "info": "info"}


class AppriseSender:
    """Sends through Apprise to every URL of ``urls_file`` (Slack, Teams, ntfy, Telegram, ...):
    delivered when Apprise says every service took it; else retried (Apprise does not say
    which refusals are for good)."""

    def __init__(self, name: str, settings: AppriseChannel) -> None:
        self.name = name
        self.settings = settings

    def _urls(self) -> list[str]:
        try:
            text = self.settings.urls_file.read_text(encoding="utf-8")
        except OSError as error:
            raise DeliveryFailed(f"apprise {self.name}: cannot read {self.settings.urls_file}: "
                                 f"{error.strerror or error}") from None
        return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    def check(self) -> None:
        """Raise :class:`ConfigError` unless every URL of the file is one Apprise can use."""
        import apprise

        for n, url in enumerate(self._urls(), 1):
            if not apprise.Apprise().add(url):
                raise ConfigError(f"apprise channel {self.name}: URL {n} of {self.settings.urls_file} is not one "
                                  "Apprise knows", hint="see the Apprise documentation for the service's URL form")

    def send(self, message: Outgoing) -> None:
        import apprise

        urls = self._urls()
        if not urls:
            raise DeliveryFailed(f"apprise {self.name}: {self.settings.urls_file} lists no URL")
        client = apprise.Apprise()
        for url in urls:
            client.add(url)
        notify_type = apprise.NotifyType(_APPRISE_TYPE.get(message.severity, "info"))
        if not client.notify(body=message.body, title=message.title, notify_type=notify_type):
            raise DeliveryFailed(f"apprise {self.name}: a service did not take the message (see apprise's log)")


def build_senders(channels: dict[str, Channel]) -> dict[str, Sender]:
    """One sender per configured channel; Apprise channels' URL files are checked here, so a
    typo is one line at start, not a retry loop."""
    senders: dict[str, Sender] = {}
    for name, settings in channels.items():
        if isinstance(settings, WebhookChannel):
            senders[name] = WebhookSender(name, settings)
        elif isinstance(settings, EmailChannel):
            senders[name] = EmailSender(name, settings)
        else:
            sender = AppriseSender(name, settings)
            try:
                sender.check()
            except DeliveryFailed as error:
                raise ConfigError(str(error), hint="fix the channel's urls_file") from None
            senders[name] = sender
    return senders
