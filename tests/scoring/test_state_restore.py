"""Restoring a partition's state from the changelog (``scoring.state.restore_partitions``) on the
in-memory Kafka: a marker that becomes visible a moment after the committed offsets is waited
for; a marker that never comes is a changelog that does not match the group."""

from __future__ import annotations

from typing import Any

import pytest

from forewarn.testing import FakeConsumer, InMemoryKafka
from scoring import state as state_module
from scoring.errors import RecoveryError
from scoring.state import MARKER_KEY, MachineRecord, Marker, encode_marker, encode_record, restore_partitions

TOPIC = "scoring.state"


class LaggingReader(FakeConsumer):
    """Sees each partition's end ``lag`` records short for its first ``reads`` watermark reads,
    as a read_committed reader does while the commit marker of the transaction that wrote
    them is not yet on that partition."""

    def __init__(self, kafka: InMemoryKafka, reads: int, lag: int = 1, **kwargs: Any) -> None:
        super().__init__(kafka, **kwargs)
        self.reads, self.lag = reads, lag

    def watermarks(self, topic: str, partition: int, *, cached: bool = False,
                   timeout_s: float = 10.0) -> tuple[int, int]:
        low, high = super().watermarks(topic, partition, cached=cached, timeout_s=timeout_s)
        if self.reads > 0:
            self.reads -= 1
            return low, max(low, high - self.lag)
        return low, high


def changelog(*, marker: Marker | None) -> InMemoryKafka:
    kafka = InMemoryKafka()
    kafka.create_topic(TOPIC, 1)
    producer = kafka.producer()
    producer.produce(TOPIC, encode_record(MachineRecord("pump", "sig", b"w")), "site/m1", partition=0)
    if marker is not None:
        producer.produce(TOPIC, encode_marker(marker), MARKER_KEY, partition=0)
    producer.flush()
    return kafka


def test_a_marker_not_yet_visible_is_read_again_until_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "_MARKER_RETRY_S", 0.0)
    kafka = changelog(marker=Marker(26, -1))
    reader = LaggingReader(kafka, reads=2, group_id="restore")
    states = restore_partitions(reader, TOPIC, {0: Marker(26, -1)}, timeout_s=5.0)
    assert states[0].done and list(states[0].records) == ["site/m1"]
    assert reader.reads == 0, "it read twice without the marker before it showed"


def test_a_marker_that_never_comes_is_a_changelog_that_does_not_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "_MARKER_RETRY_S", 0.0)
    kafka = changelog(marker=Marker(25, -1))  # another transaction's
    with pytest.raises(RecoveryError, match="read to the end without a marker for committed offsets 26/-1"):
        restore_partitions(FakeConsumer(kafka, group_id="restore"), TOPIC, {0: Marker(26, -1)}, timeout_s=0.2)
