"""The one-command demo: stack, topics, initial models, then the live pipeline.

Everything runs as the same ``forewarn`` commands a user would type, as child processes of
this one (see :mod:`forewarn.supervisor`), so the demo exercises the real system and the core
imports no component. ``--check`` runs it headless for a few minutes and verifies that
predictions flowed and that an alert opened before a simulated failure.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from forewarn.contract import Alert, MaintenanceEvent
from forewarn.errors import ForewarnError
from forewarn.kafka import KafkaAdmin, KafkaConsumer, read_to_end
from forewarn.ports import ConsumerLike
from forewarn.service import on_signals
from forewarn.settings import DemoOptions, DemoSettings, ServiceSettings
from forewarn.stack import LocalStack
from forewarn.stack._process import tail
from forewarn.supervisor import Supervisor
from forewarn.topics import Topics, topic_specs

__all__ = ["CheckResult", "check_pipeline", "run_demo"]

log = logging.getLogger(__name__)

ASSET_TYPES = ("pump", "motor")


class DemoError(ForewarnError):
    """The demo could not start or its check failed."""


@dataclass(frozen=True)
class CheckResult:
    predictions: int
    alerts_opened: int
    failures: int
    warned_failures: int  # failures that an alert of the same machine opened before

    @property
    def ok(self) -> bool:
        return self.predictions > 0 and self.warned_failures > 0

    def summary(self) -> str:
        return (f"{self.predictions} predictions, {self.alerts_opened} alerts opened, {self.failures} failures, "
                f"{self.warned_failures} of them warned by an alert opened before")


def _env_for(settings: ServiceSettings) -> dict[str, str]:
    """What every child needs to reach the same brokers and topics as the demo."""
    return {
        "FOREWARN_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "FOREWARN_MQTT__HOST": settings.mqtt.host,
        "FOREWARN_MQTT__PORT": str(settings.mqtt.port),
        "FOREWARN_TOPICS__PREFIX": settings.topics.prefix,
        "PYTHONUNBUFFERED": "1",
    }


def _run_step(what: str, args: list[str], env: dict[str, str], log_file: Path, say: Callable[[str], None]) -> None:
    say(what)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        result = subprocess.run([sys.executable, "-m", "forewarn.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **env}, check=False)
    if result.returncode != 0:
        raise DemoError(f"{what} failed (exit {result.returncode}); last lines of {log_file}:\n{tail(log_file, 8)}")


def ensure_models(models_dir: Path, data_dir: Path, env: dict[str, str], say: Callable[[str], None],
                  seed: int) -> None:
    """Train initial models from simulated history when the models folder has none."""
    missing = [t for t in ASSET_TYPES if not (models_dir / t / "current").exists()]
    if not missing:
        say(f"models found in {models_dir}: {', '.join(ASSET_TYPES)}")
        return
    history = data_dir / "history"
    types = [a for t in missing for a in ("--asset-type", t)]
    _run_step(f"simulating run-to-failure history for {', '.join(missing)}",
              ["simulate", "history", "--machines", "200", *types, "--seed", str(seed), "--out", str(history)],
              env, data_dir / "history.log", say)
    t0 = time.monotonic()
    _run_step("training initial models (about two minutes on two cores)",
              ["train", "--data", str(history), "--out", str(models_dir), "--promote", "--quiet"],
              env, data_dir / "train.log", say)
    say(f"models trained in {time.monotonic() - t0:.0f}s (metrics in {data_dir / 'train.log'})")


def _count(consumer: ConsumerLike, topic: str) -> int:
    """Offsets in ``topic`` now (records, plus transaction markers): a progress figure, no read."""
    total = 0
    for p in consumer.topic_partitions([topic], timeout_s=5).get(topic, []):
        low, high = consumer.watermarks(topic, p, timeout_s=5)
        total += max(0, high - low)
    return total


def check_pipeline(settings: ServiceSettings, topics: Topics, timeout_s: float = 60.0, *,
                   consumer: ConsumerLike | None = None) -> CheckResult:
    """Read what the pipeline committed up to now and check predictions flowed and alerts came
    early. ``timeout_s`` bounds a read that makes no progress; ``consumer`` (a fake in unit
    tests) reads instead of a private one."""
    alerts = msgspec.json.Decoder(Alert)
    events = msgspec.json.Decoder(MaintenanceEvent)
    predictions = 0
    opened: dict[str, list[int]] = {}
    failures: list[tuple[str, int]] = []
    source = [topics.predictions, topics.alerts, topics.maintenance]
    for message in read_to_end(settings.kafka if consumer is None else consumer, source, idle_timeout_s=timeout_s,
                               max_messages=5000):
        topic = message.topic()
        value = message.value() or b""
        try:
            if topic == topics.predictions:
                predictions += 1
            elif topic == topics.alerts:
                alert = alerts.decode(value)
                if alert.state == "open":
                    opened.setdefault(alert.machine_id, []).append(alert.opened_at)
            else:
                event = events.decode(value)
                if event.event == "failure":
                    failures.append((event.machine_id, event.ts))
        except msgspec.DecodeError:
            log.warning("undecodable record on %s", topic)
    return CheckResult(predictions, sum(len(v) for v in opened.values()), len(failures),
                       _warned_failures(failures, opened))


def _warned_failures(failures: list[tuple[str, int]], opened: dict[str, list[int]]) -> int:
    """Failures an alert of the same machine opened for in the same run: after the machine's
    previous failure, at or before this one."""
    previous: dict[str, int] = {}
    warned = 0
    for machine, ts in sorted(failures, key=lambda f: f[1]):
        since = previous.get(machine, -1)
        if any(since < t <= ts for t in opened.get(machine, ())):
            warned += 1
        previous[machine] = ts
    return warned


def run_demo(settings: DemoSettings, say: Callable[[str], None]) -> int:
    """Run the demo until SIGTERM or Ctrl-C (or, with ``check``, for ``minutes``); returns the
    exit code. A second Ctrl-C stops the components at once (what has not exited after a short
    grace period is killed)."""
    topics = Topics.from_settings(settings.topics)
    env = _env_for(settings)

    local = LocalStack(settings.stack, settings.kafka, settings.mqtt)
    was_running = all(s.healthy for s in local.status())
    local.up(say)
    KafkaAdmin(settings.kafka).ensure_topics(topic_specs(settings.topics))
    say("topics ready")

    stop = threading.Event()
    with on_signals(lambda _sig: stop.set(), say=say, action="stopping the demo"):
        try:
            return _run_pipeline(settings, settings.demo, topics, env, stop, say)
        finally:
            if not was_running:
                local.down(say)


def _run_pipeline(settings: ServiceSettings, options: DemoOptions, topics: Topics, env: dict[str, str],
                  stop: threading.Event, say: Callable[[str], None]) -> int:
    home = settings.stack.home
    data_dir = home / "demo"
    models_dir = home / "models"
    with Supervisor(data_dir / "logs", env) as supervisor:
        try:
            _start_components(supervisor, options, env, models_dir, data_dir, say)
            return _watch(settings, topics, supervisor, options, say, stop.is_set)
        finally:
            say("stopping the pipeline")


def _start_components(supervisor: Supervisor, options: DemoOptions, env: dict[str, str], models_dir: Path,
                      data_dir: Path, say: Callable[[str], None]) -> None:
    ensure_models(models_dir, data_dir, env, say, options.seed)
    for asset in ASSET_TYPES:
        _run_step(f"publishing the {asset} model to the models topic",
                  ["model", "publish", "--models", str(models_dir), "--asset-type", asset],
                  env, data_dir / "publish.log", say)
    supervisor.start("bridge", ["bridge", "--client-id", "forewarn-demo-bridge"])
    for i in range(options.workers):
        supervisor.start(f"score-{i + 1}", ["score", "--worker-id", f"demo-worker-{i + 1}",
                                            "--models-dir", str(models_dir)])
    if not options.check:
        supervisor.start("dashboard", ["dashboard", "--port", str(options.dashboard_port)])
    types = [a for t in ASSET_TYPES for a in ("--asset-type", t)]
    supervisor.start("simulator", ["simulate", "live", *types, "--machines", str(options.machines),
                                   "--sites", str(options.sites), "--speed", str(options.speed),
                                   "--delivery", "batch", "--seed", str(options.seed)])
    say(f"logs of every component: {supervisor.log_dir}")
    if not options.check:
        say(f"dashboard: http://127.0.0.1:{options.dashboard_port}  (Ctrl-C stops everything)")


def _watch(settings: ServiceSettings, topics: Topics, supervisor: Supervisor, options: DemoOptions,
           say: Callable[[str], None], stopping: Callable[[], bool]) -> int:
    started = time.monotonic()
    deadline = started + options.minutes * 60 if options.check else float("inf")
    counter = KafkaConsumer(settings.kafka, "forewarn-demo-counts")
    next_report = started + 15
    try:
        while not stopping() and time.monotonic() < deadline:
            for child in supervisor.dead():
                raise DemoError(f"{child.name} stopped unexpectedly; last lines of {child.log_file}:\n"
                                f"{supervisor.last_lines(child)}")
            if time.monotonic() >= next_report:
                next_report += 15
                counts = {name: _count(counter, topic) for name, topic in
                          (("telemetry", topics.telemetry), ("predictions", topics.predictions),
                           ("alerts", topics.alerts), ("dead letters", topics.dlq))}
                say(f"[{time.monotonic() - started:5.0f}s] " + " · ".join(f"{k} {v:,}" for k, v in counts.items()))
            time.sleep(0.5)
    finally:
        counter.close()
    if not options.check:
        return 0
    result = check_pipeline(settings, topics)
    say("check: " + result.summary())
    return 0 if result.ok else 1
