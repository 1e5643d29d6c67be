"""End to end: the real ``forewarn dashboard`` process against the real Kafka, opened in
headless Chromium (Debian's, driven by Playwright); waits until machines and predictions show,
and the Pipeline page's readings not scored by reason, and saves screenshots (under the test's
tmp dir, and $FOREWARN_SCREENSHOT_DIR when set)."""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from forewarn.bundle import (
    Bundle,
    FeatureSpec,
    FeatureStats,
    InputSpec,
    ModelMeta,
    Targets,
    Thresholds,
    pack,
    sha256_hex,
)
from forewarn.contract import Alert, MaintenanceEvent, PipelineStats, Prediction, Telemetry, encode
from forewarn.kafka import KafkaProducer
from forewarn.settings import TopicSettings
from forewarn.topics import Topics
from tests.dashboard.browser import CHROMIUM, CHROMIUM_ARGS, needs_chromium, running_dashboard, save
from tests.stacks import RunningStack

MACHINES = [f"site-{s}/pump-{i:04d}" for s in "ab" for i in range(3)]
READINGS = 40

pytestmark = [pytest.mark.integration, needs_chromium]


def _bundle() -> bytes:
    onnx = b"not a real graph: the dashboard reads the metadata only"
    stats = [FeatureStats(name=n, mean=m, std=s, min=m - 4 * s, max=m + 4 * s, median=m, missing_fraction=0.0,
                          bin_edges=[m - s, m, m + s], proportions=[0.16, 0.34, 0.34, 0.16])
             for n, m, s in (("bearing_temp_de_c", 55.0, 0.6), ("vibration_de_mm_s", 2.2, 0.25))]
    meta = ModelMeta(name="pump", asset_type="pump", version="20251126T080000Z", created_at="2025-11-26T08:00:00Z",
                     input=InputSpec(name="readings", window=30,
                                     features=[FeatureSpec(s.name) for s in stats]),
                     targets=Targets(heads=["rul", "p_fail"]), thresholds=Thresholds(p_fail=0.5),
                     feature_stats=stats, sha256=sha256_hex(onnx), metrics={"test": {"precision": 0.8}})
    return pack(Bundle(meta=meta, onnx=onnx))


def _produce(stack: RunningStack, topics: Topics) -> None:
    now = time.time_ns() // 1_000_000
    t0 = now - READINGS * 60_000
    with KafkaProducer(stack.kafka_settings) as producer:
        producer.produce(topics.models, _bundle(), key="pump")
        for n, machine in enumerate(MACHINES):
            for k in range(READINGS):
                ts = t0 + k * 60_000
                risk = min(1.0, max(0.0, (k - 20) / 20)) if n == 0 else 0.05
                reading = Telemetry(v=1, machine_id=machine, asset_type="pump", ts=ts, seq=k,
                                    sensors={"bearing_temp_de_c": 55.0 + 10 * risk, "vibration_de_mm_s": 2.2 + risk})
                producer.produce(topics.telemetry, encode(reading), key=machine, timestamp_ms=ts)
                prediction = Prediction(v=1, machine_id=machine, asset_type="pump", ts=ts, seq=k, model="pump",
                                        model_version="20251126T080000Z", scored_at=now - 500, p_fail=risk,
                                        rul=max(0.0, 125.0 * (1 - risk)), ingest_ts=now - 900)
                producer.produce(topics.predictions, encode(prediction), key=machine)
        hot = MACHINES[0]
        producer.produce(topics.alerts, encode(Alert(
            v=1, alert_id=f"{hot}:1", machine_id=hot, state="open", severity="critical", rule="p_fail_above",
            opened_at=t0 + 30 * 60_000, ts=t0 + 30 * 60_000, p_fail=0.5, model_version="20251126T080000Z",
            asset_type="pump")), key=hot)
        inspection = MaintenanceEvent(v=1, machine_id=MACHINES[1], ts=t0 + 600_000, event="inspection",
                                      event_id="WO-1")
        for _ in range(2):  # a redelivery: the store holds it once
            producer.produce(topics.maintenance, encode(inspection), key=MACHINES[1])
        for source, role in (("scoring-0", "scoring"), ("edge-site-a", "edge")):
            stats = PipelineStats(v=1, source=source, role=role, since=now - 10_000, until=now,
                                  counts={"scored": 240, "duplicate": 7, "late": 3, "warmup": 29},
                                  resets={"restart": 1})
            producer.produce(topics.pipeline, encode(stats), key=source)
        producer.produce(topics.dlq, b"{oops", headers=[("reason", b"not_json"), ("detail", b"bad json"),
                                                          ("mqtt_topic", b"forewarn/site-a/x/telemetry")])
        assert producer.flush(30) == 0


@pytest.fixture
def dashboard_process(stack: RunningStack, fresh_topics: Callable[..., tuple[TopicSettings, Topics]],
                      tmp_path: Path) -> Iterator[tuple[str, Topics]]:
    settings, topics = fresh_topics(partitions=3)
    _produce(stack, topics)
    with running_dashboard(stack, settings, tmp_path) as url:  # no users file: the local user, on loopback
        yield url, topics


def test_dashboard_shows_machines_and_predictions_in_chromium(dashboard_process: tuple[str, Topics],
                                                              tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, _topics = dashboard_process
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            # Without a users file there is no login: the local OS user, as admin.
            expect(page.get_by_text(f"local:{getpass.getuser()}")).to_be_visible(timeout=60_000)
            machines = page.locator('[data-testid="stMetric"]', has_text="Machines")
            expect(machines).to_contain_text(str(len(MACHINES)), timeout=60_000)
            predicted = page.locator('[data-testid="stMetric"]', has_text="With predictions")
            expect(predicted).to_contain_text(str(len(MACHINES)), timeout=30_000)
            expect(page.locator('[data-testid="stMetric"]', has_text="Open alerts")).to_contain_text("1")
            # A busy box (three agents' tests on two cores) took longer than the default 5 s here.
            expect(page.locator('[data-testid="stDataFrame"]')).to_be_visible(timeout=30_000)
            expect(page.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible(timeout=30_000)
            page.wait_for_timeout(1500)
            fleet = save(page, "e2e-fleet", tmp_path)

            page.goto(f"{url}/machine?machine={MACHINES[0]}", wait_until="domcontentloaded")
            expect(page.locator('[data-testid="stMetric"]', has_text="p(fail)")).to_contain_text("0.95",
                                                                                             timeout=30_000)
            # p(fail), RUL and one chart per sensor (two).
            expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(4, timeout=30_000)
            page.wait_for_timeout(1500)
            machine = save(page, "e2e-machine", tmp_path)

            page.goto(f"{url}/pipeline", wait_until="domcontentloaded")
            expect(page.get_by_text("Not scored, by reason")).to_be_visible(timeout=30_000)
            expect(page.locator('[data-testid="stDataFrame"]', has_text="duplicate").first).to_be_visible(
                timeout=30_000)
            page.wait_for_timeout(1500)
            pipeline = save(page, "e2e-pipeline", tmp_path)
        finally:
            browser.close()
    assert fleet.stat().st_size > 20_000 and machine.stat().st_size > 20_000 and pipeline.stat().st_size > 20_000
