"""The notifier's loop on the in-memory Kafka fakes and a fake clock: offsets are committed only
after the records that owe the notices are written, so a restart owes and remembers the same;
a channel that is down is retried with backoff while the others go on; a refusal for good goes
to notify.dlq with its reason."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from forewarn.contract import Alert, encode
from forewarn.settings import TopicSettings
from forewarn.testing import InMemoryKafka
from forewarn.topics import Topics, topic_specs
from notify.errors import DeliveryFailed, NotifyError
from notify.messages import Outgoing
from notify.service import Notifier
from notify.settings import NotifyOptions, NotifySettings
from tests.notify.helpers import T0, Recorder, alert

TOPICS = Topics.from_settings(TopicSettings())


class Clock:
    def __init__(self) -> None:
        self.now = T0 / 1000

    def __call__(self) -> float:
        return self.now


def settings(**notify: Any) -> NotifySettings:
    options = {"channels": {"hook": {"kind": "webhook", "url": "http://127.0.0.1:1/"},
                            "mail": {"kind": "email", "host": "127.0.0.1", "sender": "f@x", "to": ["o@x"]}},
               "rules": [{"name": "all", "channels": ["hook"], "escalation": ["mail"], "escalate_after_s": 60}],
               "hold_s": 1.0, "retry_min_s": 2.0, "retry_max_s": 8.0, "from_start": True, **notify}
    return NotifySettings(notify=NotifyOptions.model_validate(options))


def make_kafka(partitions: int) -> InMemoryKafka:
    kafka = InMemoryKafka(partitions=partitions)
    for spec in topic_specs(TopicSettings()):
        kafka.create_topic(spec.name, partitions if spec.partitions > 1 else 1)
    return kafka


def notifier(kafka: InMemoryKafka, clock: Clock, senders: dict[str, Any], **notify: Any) -> Notifier:
    n = Notifier(settings(**notify), senders=senders, clock=clock,
                 consumer_factory=lambda group, topics, **kw: kafka.consumer(group, topics, **kw),
                 producer_factory=lambda **kw: kafka.producer(**kw))
    n.start()
    return n


def publish(kafka: InMemoryKafka, *events: Alert) -> None:
    producer = kafka.producer()
    for event in events:
        producer.produce(TOPICS.alerts, encode(event), key=event.machine_id)
    producer.flush()


def rounds(n: Notifier, clock: Clock, seconds: float, every: float = 0.5) -> None:
    for _ in range(int(seconds / every)):
        n.step()
        clock.now += every


def test_a_restart_neither_repeats_nor_loses_a_notice() -> None:
    kafka, clock = make_kafka(3), Clock()
    hook, mail = Recorder("hook"), Recorder("mail")
    publish(kafka, alert(1), alert(2))
    first = notifier(kafka, clock, {"hook": hook, "mail": mail})
    rounds(first, clock, 3)
    assert sorted(hook.keys()) == ["site-a/pump-0001:1|opened|0|hook", "site-a/pump-0002:1|opened|0|hook"]
    first.close()
    publish(kafka, alert(3))
    second = notifier(kafka, clock, {"hook": hook, "mail": mail})
    rounds(second, clock, 3)
    assert len(hook.keys()) == len(set(hook.keys())) == 3  # the first two not again, the third once
    rounds(second, clock, 60)  # nobody acknowledged: each escalates to mail, once
    assert sorted(mail.keys()) == [f"site-a/pump-000{n}:1|escalated|1|mail" for n in (1, 2, 3)]
    escalated = [msgspec.json.decode(m.value(), type=Alert) for p in kafka.topic(TOPICS.alerts) for m in p
                 if b'"escalated"' in (m.value() or b"")]
    assert sorted(e.alert_id for e in escalated) == [f"site-a/pump-000{n}:1" for n in (1, 2, 3)]
    second.close()


def test_an_obligation_survives_a_crash_before_delivery() -> None:
    kafka, clock = make_kafka(3), Clock()
    hook = Recorder("hook", down=True)
    publish(kafka, alert(1))
    first = notifier(kafka, clock, {"hook": hook, "mail": Recorder("mail")})
    rounds(first, clock, 4)
    assert hook.sent == []
    killed, first._consumer = first._consumer, None
    assert killed is not None
    killed.close()  # killed: no drain, no last commit (what was written stays written)
    hook.down = False
    second = notifier(kafka, clock, {"hook": hook, "mail": Recorder("mail")})
    rounds(second, clock, 3)
    assert hook.keys() == ["site-a/pump-0001:1|opened|0|hook"]
    second.close()


def test_a_down_channel_backs_off_while_the_others_are_served() -> None:
    kafka, clock = make_kafka(1), Clock()
    hook, mail = Recorder("hook", down=True), Recorder("mail")
    rules = [{"name": "both", "channels": ["hook", "mail"]}]
    publish(kafka, alert(1))
    n = notifier(kafka, clock, {"hook": hook, "mail": mail}, rules=rules)
    attempts = 0

    def counting(message: Outgoing) -> None:
        nonlocal attempts
        attempts += 1
        raise DeliveryFailed("connection refused")

    n.senders["hook"] = type("Down", (), {"name": "hook", "send": staticmethod(counting)})()
    rounds(n, clock, 16)  # 1 s hold, then tries at 1, 3, 7, 15 s (backoff 2, 4, 8)
    assert mail.keys() == ["site-a/pump-0001:1|opened|0|mail"]
    assert attempts == 4
    n.senders["hook"] = hook
    hook.down = False
    rounds(n, clock, 9)
    assert hook.keys() == ["site-a/pump-0001:1|opened|0|hook"]
    n.close()


def test_refused_for_good_goes_to_the_dead_letter_topic_with_its_reason() -> None:
    kafka, clock = make_kafka(1), Clock()

    class Refusing:
        name = "hook"

        def send(self, message: Outgoing) -> None:
            raise DeliveryFailed("webhook hook answered HTTP 400 Bad Request", retriable=False)

    publish(kafka, alert(1))
    n = notifier(kafka, clock, {"hook": Refusing(), "mail": Recorder("mail")})
    rounds(n, clock, 3)
    (dead,) = [m for p in kafka.topic(TOPICS.notify_dlq) for m in p]
    record = msgspec.json.decode(dead.value())
    assert record["key"] == "site-a/pump-0001:1|opened|0|hook" and "HTTP 400" in record["reason"]
    assert dict(dead.headers())["channel"] == b"hook" or dict(dead.headers())["channel"] == "hook"
    rounds(n, clock, 3)
    assert len([m for p in kafka.topic(TOPICS.notify_dlq) for m in p]) == 1
    n.close()


def test_a_record_that_is_not_an_alert_is_skipped_and_counted() -> None:
    kafka, clock = make_kafka(1), Clock()
    producer = kafka.producer()
    producer.produce(TOPICS.alerts, b"not json", key="x")
    publish(kafka, alert(1))
    hook = Recorder("hook")
    n = notifier(kafka, clock, {"hook": hook, "mail": Recorder("mail")})
    rounds(n, clock, 3)
    assert hook.keys() == ["site-a/pump-0001:1|opened|0|hook"]
    assert n.metrics.rejected._value.get() == 1
    n.close()


def test_no_rules_or_no_topics_is_one_line_at_start() -> None:
    with pytest.raises(NotifyError, match="no notification rules"):
        Notifier(NotifySettings(), senders={})
    missing = r"alerts, notify.dlq, notify.preferences, notify.state do not exist"
    with pytest.raises(NotifyError, match=missing) as refused:
        notifier(InMemoryKafka(), Clock(), {})
    assert "forewarn topics create" in refused.value.one_line()


def test_preferences_from_their_topic_send_an_assignee_their_alerts() -> None:
    from forewarn.contract import NotifyPreference

    kafka, clock = make_kafka(1), Clock()
    producer = kafka.producer()
    producer.produce(TOPICS.notify_preferences, msgspec.json.encode(
        NotifyPreference(1, "olga", T0, email="olga@plant.example")), key="olga")
    publish(kafka, alert(1))
    olga = Recorder("@olga")
    n = notifier(kafka, clock, {"hook": Recorder("hook"), "mail": Recorder("mail"), "@olga": olga},
                 personal_channel="mail")
    assert n.book.preferences["olga"].email == "olga@plant.example"  # read before any alert
    rounds(n, clock, 2)
    publish(kafka, alert(1, state="assigned", assigned_to="olga", actor="vera", ts=T0 + 5000))
    rounds(n, clock, 3)
    assert olga.keys() == ["site-a/pump-0001:1|assigned|0|@olga"]
    assert "assigned to you" in olga.sent[0].title
    assert n._sender("@nobody") is None  # no preferences, no address: dead-lettered as not configured
    del n.senders["@olga"]  # the real one: the personal channel's SMTP server, to her own address
    built = n._sender("@olga")
    assert built is not None and built.settings.to == ["olga@plant.example"]  # type: ignore[attr-defined]
    n.close()
