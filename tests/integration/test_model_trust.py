"""A real scoring worker on the real Kafka takes only the signed, newer bundle from the models
topic: unsigned, unknown-key, forged and pushed-back bundles are refused, each an alert event on
the alerts topic and a count by reason, and the model in service stays the good one."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from forewarn.bundle import Bundle, Thresholds, pack
from forewarn.contract import Alert
from forewarn.kafka import KafkaProducer, read_to_end
from forewarn.settings import TopicSettings
from forewarn.topics import Topics
from scoring.settings import ScoringOptions, ScoringSettings
from scoring.testing import linear_bundle
from scoring.worker import ScoringWorker
from tests.scoring.bundle_factory import signed, trust_settings
from tests.stacks import RunningStack

pytestmark = pytest.mark.integration  # real Kafka

FreshTopics = Callable[..., tuple[TopicSettings, Topics]]
V1, V2 = "20260101T000000Z", "20260102T000000Z"


def _model(version: str) -> Bundle:
    return linear_bundle("pump", ["sensor_00", "sensor_01"], window=4, version=version)


def test_a_worker_serves_only_the_signed_newer_bundle_and_counts_each_refusal(
        stack: RunningStack, fresh_topics: FreshTopics) -> None:
    kafka = stack.kafka_settings
    settings, topics = fresh_topics(partitions=1)
    good_v1, good_v2 = signed(_model(V1)), signed(_model(V2))
    never_fires = dataclasses.replace(good_v2, meta=msgspec.structs.replace(
        good_v2.meta, thresholds=Thresholds(p_fail=1.5)))  # V2's signature on a crafted model.json
    offers = [
        ("unsigned", _model(V2)),
        ("unknown_key", signed(_model(V2), key=Ed25519PrivateKey.generate())),
        (None, good_v1),
        ("bad_signature", never_fires),
        (None, good_v2),
        ("rollback", good_v1),  # the old, validly signed version pushed back
    ]
    with KafkaProducer(kafka) as producer:
        for _reason, bundle in offers:
            producer.produce(topics.models, pack(bundle), "pump")
        assert producer.flush(30) == 0

    worker = ScoringWorker(ScoringSettings(kafka=kafka, topics=settings, trust=trust_settings(),
                                           scoring=ScoringOptions(group_id=f"{settings.prefix}scoring",
                                                                  worker_id="trust", threads=1,
                                                                  commit_interval_ms=100)))
    expected = {reason: 1.0 for reason, _ in offers if reason is not None}

    def refusals() -> dict[str, float]:
        found = {}
        for reason in expected:
            value = worker.metrics.registry.get_sample_value(
                "forewarn_model_refusals_total", {"asset_type": "pump", "role": "serving", "reason": reason})
            if value:
                found[reason] = value
        return found

    deadline = time.monotonic() + 90
    with worker:
        while (refusals() != expected or "pump" not in worker.registry.serving) and time.monotonic() < deadline:
            worker.step()
        assert refusals() == expected
        serving = worker.registry.serving["pump"]
        assert serving.meta.version == V2 and serving.meta.thresholds.p_fail == good_v2.meta.thresholds.p_fail
        for _ in range(5):  # the refusal alerts go out in the next transactions
            worker.step()

    decoder = msgspec.json.Decoder(Alert)
    events = [decoder.decode(m.value()) for m in read_to_end(kafka, topics.alerts)]
    refused = sorted(e.message.split("(")[1].split(")")[0] for e in events
                     if e.rule == "model_refused" and e.message)
    assert refused == sorted(expected), events
