"""The notifier against the session's real Kafka, a real SMTP server (aiosmtpd: STARTTLS and a
login required) and a real HTTP webhook receiver; the Apprise channel posts to the same receiver
through Apprise's own ``json://`` service. Each case of issue 18's Done-when list:

- an alert opened by the pipeline (the real scoring worker) arrives once per channel, and an
  alert in an aborted transaction never does;
- a receiver that is down gets it after it comes back, across a kill -9 of the notifier;
- an unacknowledged alert escalates on time (and is reminded), an acknowledged one does not, a
  snoozed one stays quiet;
- a storm of 500 alerts yields one digest per channel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from forewarn.bundle import pack
from forewarn.contract import SCHEMA_VERSION, Alert, encode
from forewarn.kafka import KafkaProducer
from forewarn.service import ServiceThread
from forewarn.settings import KafkaSettings, TopicSettings
from forewarn.topics import Topics
from notify.service import Notifier
from notify.settings import NotifyOptions, NotifySettings
from scoring.settings import ScoringOptions, ScoringSettings
from scoring.worker import ScoringWorker
from tests.notify.receivers import SmtpReceiver, WebhookReceiver, wait_until
from tests.scoring.bundle_factory import trust_settings
from tests.scoring.fleet_data import fitted_bundle, simulate
from tests.scoring.procs import alerts, produce_readings, publish_model, read_committed
from tests.stacks import REPO, RunningStack

pytestmark = pytest.mark.integration

FreshTopics = Callable[..., tuple[TopicSettings, Topics]]


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpReceiver]:
    receiver = SmtpReceiver(tmp_path).start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


def apprise_channel(tmp_path: Path, hook: WebhookReceiver) -> dict[str, Any]:
    urls = tmp_path / "apprise-urls"
    urls.write_text(f"# the plant's chat, here Apprise's JSON service\njson://127.0.0.1:{hook.port}/apprise\n")
    return {"kind": "apprise", "urls_file": str(urls)}


def options(channels: dict[str, Any], rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"group_id": f"notify-{uuid.uuid4().hex[:8]}", "from_start": True, "channels": channels, "rules": rules,
            "hold_s": 0.5, "digest_min": 1000, "retry_min_s": 0.5, "retry_max_s": 1.0, "poll_s": 0.2, **extra}


def notifier(stack: RunningStack, topics: TopicSettings, notify: dict[str, Any]) -> ServiceThread[Notifier]:
    settings = NotifySettings(kafka=stack.kafka_settings, topics=topics, notify=NotifyOptions.model_validate(notify))
    return ServiceThread(Notifier(settings), "notify").start()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def opened(n: int, *, site: str = "site-a", severity: str = "critical") -> Alert:
    machine = f"{site}/pump-{n:04d}"
    t = now_ms()
    return Alert(SCHEMA_VERSION, f"{machine}:1", machine, "open", severity, "p_fail_above", t, t,  # type: ignore[arg-type]
                 model="pump", model_version="v1", asset_type="pump", p_fail=0.93)


def produce(kafka: KafkaSettings, topic: str, events: list[Alert], *, transactional: bool = False,
            abort: bool = False) -> None:
    """Write ``events`` to the alerts topic, plainly or in one transaction as a scoring worker does."""
    if not transactional:
        with KafkaProducer(kafka) as producer:
            for event in events:
                producer.produce(topic, encode(event), key=event.machine_id)
            assert producer.flush(30) == 0
        return
    producer = KafkaProducer(kafka, **{"transactional.id": f"test-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions()
    producer.begin_transaction()
    for event in events:
        producer.produce(topic, encode(event), key=event.machine_id)
    if abort:
        producer.abort_transaction()
    else:
        producer.commit_transaction()
    producer.close()


def lifecycle(kafka: KafkaSettings, topics: Topics, state: str) -> list[Alert]:
    return [a for a in alerts(read_committed(kafka, topics.alerts, timeout_s=20, settle_s=1.0)) if a.state == state]


def test_an_alert_opened_by_the_pipeline_arrives_once_per_channel(
        stack: RunningStack, fresh_topics: FreshTopics, smtp: SmtpReceiver, hook: WebhookReceiver,
        tmp_path: Path) -> None:
    kafka = stack.kafka_settings
    settings, topics = fresh_topics(partitions=3)
    data = simulate(machines=12, ticks=150, seed=5)
    publish_model(kafka, topics, "pump", pack(fitted_bundle(data)))
    channels = {"hook": {"kind": "webhook", "url": hook.url()}, "mail": smtp.channel(),
                "chat": apprise_channel(tmp_path, hook)}
    rules = [{"name": "every alert", "channels": ["hook", "mail", "chat"], "repeat_s": None}]
    notify = notifier(stack, settings, options(channels, rules))
    worker = ScoringWorker(ScoringSettings(kafka=kafka, topics=settings, trust=trust_settings(), scoring=ScoringOptions(
        group_id=f"{settings.prefix}scoring", worker_id="notify-test", max_batch=500, commit_interval_ms=50,
        session_timeout_ms=6000, transaction_timeout_ms=6000)))
    try:
        produce_readings(kafka, topics, sorted(data.readings, key=lambda r: r.ts))
        with ServiceThread(worker, "scoring"):
            wait_until(lambda: worker.metrics.registry.get_sample_value(
                "forewarn_scoring_readings_total", {"outcome": "accepted"}) == len(data.readings), 120,
                "the worker to score every reading")
        opened_ids = {a.alert_id for a in lifecycle(kafka, topics, "open")}
        # The worker scores history far faster than real time: an alert that opened and resolved
        # again within the notifier's hold is a flap nobody is told about. One still open is.
        active = opened_ids - {a.alert_id for a in lifecycle(kafka, topics, "resolved")}
        assert active, "the pipeline left no alert open"
        # Another alert, in a transaction that aborts: read_committed never shows it to the notifier.
        produce(kafka, topics.alerts, [opened(99, site="site-z")], transactional=True, abort=True)

        def chat_opened() -> list[str]:
            return [a for r in hook.on("/apprise") if ": alert opened" in r.body["title"]
                    for a in opened_ids if f"alert {a}, opened" in r.body["message"]]

        def told() -> dict[str, list[str]]:
            return {"hook": [k.split("|")[0] for k in hook.keys("/hook") if "|opened|" in k],
                    "mail": [k.split("|")[0] for k in smtp.keys() if "|opened|" in k], "chat": chat_opened()}

        wait_until(lambda: all(set(ids) >= active for ids in told().values()), 60,
                   f"{len(active)} open alerts on every channel")
        time.sleep(2.0)  # anything extra would come now
    finally:
        notify.stop()
    by_channel = told()
    for channel, ids in by_channel.items():
        assert len(ids) == len(set(ids)), (channel, Counter(ids).most_common(3))  # once each
        assert active <= set(ids) <= opened_ids, channel
    assert set(by_channel["hook"]) == set(by_channel["mail"]) == set(by_channel["chat"])
    assert not any("site-z" in k for k in hook.keys("/hook") + smtp.keys())
    mail = next(m for m in smtp.messages if "|opened|" in str(m["X-Forewarn-Key"]))
    assert str(mail["Message-ID"]).endswith("@forewarn.notify>") and "alert opened" in str(mail["Subject"])
    assert smtp.refused_logins == 0
    first = hook.on("/hook")[0]
    assert first.headers["idempotency-key"] == first.body["key"]
    assert first.body["notifications"][0]["alert"]["state"] in ("open", "update")


def _config(tmp_path: Path, stack: RunningStack, settings: TopicSettings, hook: WebhookReceiver, group: str) -> Path:
    path = tmp_path / "forewarn.toml"
    path.write_text(f"""
[kafka]
bootstrap_servers = "{stack.kafka_settings.bootstrap_servers}"

[topics]
prefix = "{settings.prefix}"
partitions = {settings.partitions}

[notify]
group_id = "{group}"
instance_id = "notifier-1"
from_start = true
hold_s = 0.3
retry_min_s = 0.5
retry_max_s = 1.0
poll_s = 0.2

[notify.channels.hook]
kind = "webhook"
url = "{hook.url()}"

[[notify.rules]]
name = "site-a"
sites = ["site-a"]
channels = ["hook"]
repeat_s = 3600
""")
    return path


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FOREWARN_CONFIG": str(config), "FOREWARN_LOG_LEVEL": "info"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "forewarn.cli", "notify"], cwd=REPO, env=env, stdout=out,
                                stderr=out)


def test_a_receiver_that_is_down_gets_it_after_it_comes_back_across_a_kill(
        stack: RunningStack, fresh_topics: FreshTopics, tmp_path: Path) -> None:
    kafka = stack.kafka_settings
    settings, topics = fresh_topics(partitions=3)
    hook = WebhookReceiver()  # not started: the receiver is down, connections refused
    config, log = _config(tmp_path, stack, settings, hook, f"notify-{uuid.uuid4().hex[:8]}"), tmp_path / "notify.log"
    first = _start(config, log)
    try:
        produce(kafka, topics.alerts, [opened(1), opened(2)], transactional=True)
        wait_until(lambda: log.read_text().count("not delivered") >= 2, 60, "failed attempts", every=0.2)
        first.send_signal(signal.SIGKILL)  # no drain: whatever it had not written is redone
        first.wait(10)
        hook.start()
        second = _start(config, log)
        try:
            wait_until(lambda: len(hook.keys()) >= 2, 60, "the notices after the receiver came back")
            time.sleep(2.0)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
        hook.stop()
    assert sorted(hook.keys()) == ["site-a/pump-0001:1|opened|0|hook", "site-a/pump-0002:1|opened|0|hook"]


def test_unacknowledged_escalates_on_time_acknowledged_does_not_and_snoozed_stays_quiet(
        stack: RunningStack, fresh_topics: FreshTopics, smtp: SmtpReceiver, hook: WebhookReceiver) -> None:
    kafka = stack.kafka_settings
    settings, topics = fresh_topics(partitions=3)
    channels = {"hook": {"kind": "webhook", "url": hook.url()}, "mail": smtp.channel("manager@plant.example")}
    rules = [{"name": "critical", "severities": ["critical"], "channels": ["hook"], "escalation": ["mail"],
              "escalate_after_s": 4, "repeat_s": 3}]
    quiet_a, acked_a, snoozed_a = opened(1), opened(2), opened(3)
    notify = notifier(stack, settings, options(channels, rules))
    try:
        produce(kafka, topics.alerts, [quiet_a, acked_a, snoozed_a], transactional=True)
        wait_until(lambda: len(hook.keys()) == 3, 30, "the three openings")
        told = time.monotonic()
        acked = msgspec.structs.replace(acked_a, state="acknowledged", ts=now_ms(), acknowledged_by="olga",
                                        note="on it")
        snoozed = msgspec.structs.replace(snoozed_a, state="snoozed", ts=now_ms(), actor="olga",
                                          snoozed_until=now_ms() + 600_000)
        produce(kafka, topics.alerts, [acked, snoozed])
        wait_until(lambda: any("|escalated|" in k for k in smtp.keys()), 30, "the escalation")
        escalated_after = time.monotonic() - told
        wait_until(lambda: any("|reminder|" in k for k in smtp.keys()), 30, "a reminder at the last level")
        time.sleep(1.0)
    finally:
        notify.stop()
    assert 3.0 <= escalated_after <= 8.0, escalated_after  # 4 s after the opening, give or take a round
    on_mail = smtp.keys()
    assert on_mail[0] == f"{quiet_a.alert_id}|escalated|1|mail"
    assert all(k.startswith(quiet_a.alert_id) for k in on_mail + hook.keys()[3:])  # the other two: quiet
    (event,) = lifecycle(kafka, topics, "escalated")
    assert (event.alert_id, event.escalation, event.actor) == (quiet_a.alert_id, 1, "notifier")


def test_a_storm_of_500_alerts_is_one_digest_per_channel(
        stack: RunningStack, fresh_topics: FreshTopics, smtp: SmtpReceiver, hook: WebhookReceiver,
        tmp_path: Path) -> None:
    kafka = stack.kafka_settings
    settings, topics = fresh_topics(partitions=3)
    channels = {"hook": {"kind": "webhook", "url": hook.url()}, "mail": smtp.channel(),
                "chat": apprise_channel(tmp_path, hook)}
    rules = [{"name": "all", "channels": ["hook", "mail", "chat"], "repeat_s": None}]
    notify = notifier(stack, settings, options(channels, rules, hold_s=3.0, digest_min=5))
    storm = [opened(n, site=("site-a", "site-b")[n % 2], severity=("warning", "critical")[n % 3 == 0])
             for n in range(500)]
    try:
        wait_until(lambda: notify.service.assigned, 30, "the notifier's assignment")
        produce(kafka, topics.alerts, storm, transactional=True)
        wait_until(lambda: hook.on("/hook") and smtp.messages and hook.on("/apprise"), 30, "the digests")
        time.sleep(4.0)  # a second message to any channel would come now
    finally:
        notify.stop()
    (posted,) = hook.on("/hook")
    assert posted.body["type"] == "digest" and posted.body["count"] == 500
    assert sorted(n["alert"]["alert_id"] for n in posted.body["notifications"]) == sorted(a.alert_id for a in storm)
    assert posted.headers["idempotency-key"] == posted.body["key"]
    (mail,) = smtp.messages
    assert str(mail["Subject"]) == "Forewarn digest: 500 alert notifications (site-a 250, site-b 250)"
    (chat,) = hook.on("/apprise")
    assert chat.body["title"].startswith("Forewarn digest: 500") and chat.body["type"] == "failure"  # critical inside
