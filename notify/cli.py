"""``forewarn notify``: route alerts to webhooks, email and chat, with escalation and digests."""

from __future__ import annotations

import click

from forewarn.cli_options import Flag, flags, kafka_options, settings_from
from notify.settings import NotifySettings

__all__ = ["notify"]

NOTIFY_FLAGS = (
    Flag("--group-id", "notify.group_id"),
    Flag("--instance-id", "notify.instance_id"),
    Flag("--session-timeout-ms", "notify.session_timeout_ms"),
    Flag("--from-start", "notify.from_start", secondary="--from-end"),
    Flag("--timezone", "notify.timezone"),
    Flag("--hold-s", "notify.hold_s"),
    Flag("--digest-min", "notify.digest_min"),
    Flag("--retry-min-s", "notify.retry_min_s"),
    Flag("--retry-max-s", "notify.retry_max_s"),
    Flag("--max-attempts", "notify.max_attempts"),
    Flag("--personal-channel", "notify.personal_channel"),
    Flag("--dashboard-url", "notify.dashboard_url"),
    Flag("--metrics-port", "notify.metrics_port"),
    Flag("--metrics-host", "notify.metrics_host"),
)


@click.command()
@click.option("--send-test", "test_channel", metavar="CHANNEL", default=None,
              help="Send one test message to CHANNEL, say whether it arrived, and exit (no Kafka needed).")
@kafka_options
@flags(NotifySettings, *NOTIFY_FLAGS)
def notify(test_channel: str | None) -> None:
    """Tell people about alerts: webhooks, email (SMTP) and chat/push services (Apprise).

    Consumes the alerts topic (read_committed) in its consumer group and routes each new alert
    by the first matching [[notify.rules]] entry (site, asset type, severity, time of day) to
    its channels ([notify.channels.NAME]: kind = webhook, email or apprise). An alert nobody
    acknowledges escalates along the rule's escalation chain and is reminded every repeat_s; a
    snoozed one stays quiet; many notices due at once go as one digest per channel. Channels
    and rules are set in forewarn.toml; passwords, tokens and Apprise URLs are read from files.
    Runs until SIGTERM or Ctrl-C.
    """
    settings = settings_from(NotifySettings)
    if test_channel is not None:
        _send_test(settings, test_channel)
        return
    from notify.service import Notifier

    notifier = Notifier(settings)
    with notifier.stop_on_signals(say=lambda line: click.echo(line, err=True)):
        try:
            notifier.start()
            click.echo(f"notifying in group {settings.notify.group_id}: {len(settings.notify.rules)} rule(s), "
                       f"channels {', '.join(sorted(notifier.senders))}", err=True)
            notifier.run()
        finally:
            notifier.close()


def _send_test(settings: NotifySettings, name: str) -> None:
    from notify.book import Notice, Tracked
    from notify.channels import build_senders
    from notify.errors import DeliveryFailed, NotifyError
    from notify.messages import render

    channels = settings.notify.channels
    if name not in channels:
        raise NotifyError(f"no channel {name!r}", hint=f"the channels are: {', '.join(sorted(channels)) or 'none'}")
    sender = build_senders({name: channels[name]})[name]
    import time

    from forewarn.contract import SCHEMA_VERSION, Alert

    now = int(time.time() * 1000)
    alert = Alert(SCHEMA_VERSION, f"forewarn-test-{now}", "test-site/test-machine", "open", "info", "test", now, now,
                  message="a test message from forewarn notify --send-test")
    tracked = Tracked(1, alert, 0, "test")
    notice = Notice(f"{alert.alert_id}|opened|0|{name}", name, "opened", 0, now)
    (message,) = render(name, [(tracked, notice)], digest_min=2, digest_lines=1,
                        dashboard_url=settings.notify.dashboard_url)
    try:
        sender.send(message)
    except DeliveryFailed as error:
        raise NotifyError(str(error), hint="check the channel's settings and that the receiver is up") from None
    click.echo(f"{name}: test message delivered ({message.key})")
