"""The one-command demo: stack, topics, initial models, then the live pipeline.

Everything runs as the same ``forewarn`` commands a user would type, as child processes of
this one (see :mod:`forewarn.supervisor`), so the demo exercises the real system and the core
imports no component. ``--check`` runs it headless for a few minutes and verifies that
predictions flowed and that an alert opened before a simulated failure, counting only what
this run produced: the check reads predictions, alerts and maintenance events from the end
offsets those topics had when the run started, so a run on a home with history cannot pass
on that history.

Every run of the simulator is a restart of its devices (a new boot epoch), whose simulated
clock starts in the past far enough to run at ``--speed`` for the whole check (or for
:data:`INTERACTIVE_BEHIND_H` simulated hours) without overtaking the wall clock.

What the demo says goes to stderr and to ``<home>/demo/demo.log``; when stderr breaks (the
reader of a pipe went away) the demo goes on, and still stops everything, logging to the file
only. The demo's children and the brokers it started stop with it, however it ends (see
:mod:`forewarn.supervisor`); brokers that ``forewarn stack up`` started keep running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import confluent_kafka
import msgspec

from forewarn.bundle import read_bundle, resolve_bundle, write_release
from forewarn.contract import Alert, MaintenanceEvent
from forewarn.errors import ForewarnError
from forewarn.kafka import KafkaAdmin, KafkaConsumer, read_to_end
from forewarn.ports import ConsumerLike
from forewarn.service import STOP_SIGNALS, on_signals
from forewarn.settings import DemoOptions, DemoSettings, ServiceSettings
from forewarn.stack import KafkaBroker, LocalStack, Mosquitto
from forewarn.stack._process import tail
from forewarn.supervisor import Supervisor, Watchdog
from forewarn.topics import Topics, topic_specs
from forewarn.trust import generate_keypair, key_id, load_private_key, sign_release

__all__ = ["CheckResult", "Narrator", "check_pipeline", "end_offsets", "run_demo"]

log = logging.getLogger(__name__)

ASSET_TYPES = ("pump", "motor")
# Without --check the simulated clock starts this far back: at the default 120x that is 36 wall
# minutes at full speed before it reaches the wall clock and goes on at 1x, well inside the
# dashboard's default retention of a week.
INTERACTIVE_BEHIND_H: Final = 72.0
_MAX_BEHIND_H: Final = 24 * 365.0
# A terminal hang-up stops the demo like Ctrl-C does.
DEMO_SIGNALS: Final = (*STOP_SIGNALS, signal.SIGHUP)

# (topic, partition) -> offset
Offsets = dict[tuple[str, int], int]


class DemoError(ForewarnError):
    """The demo could not start or its check failed."""


class Narrator:
    """What the demo says: each line to ``stream`` and appended to ``log_file``.

    A write error on ``stream`` (a broken pipe: ``forewarn demo | tee`` whose reader died)
    never reaches the caller: the stream is dropped (its descriptor pointed at /dev/null, so
    later writes by anyone cannot fail either) and the lines go on to the log file."""

    def __init__(self, stream: IO[str] | None, log_file: Path) -> None:
        self.stream = stream
        self.log_file = log_file
        log_file.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, line: str) -> None:
        self._write_log(line)
        stream = self.stream
        if stream is None:
            return
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError) as error:
            self.stream = None
            _silence(stream)
            self._write_log(f"(stderr is gone: {error}; the demo goes on, telling only this file)")

    def _write_log(self, line: str) -> None:
        try:
            with self.log_file.open("a", encoding="utf-8") as out:
                out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        except OSError as error:
            log.warning("cannot write %s: %s", self.log_file, error)


def _silence(stream: IO[str]) -> None:
    """Point ``stream``'s descriptor at /dev/null: nothing written to it can fail any more."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)


@dataclass(frozen=True)
class CheckResult:
    predictions: int
    alerts_opened: int
    failures: int
    warned_failures: int  # failures that an alert of the same machine opened before

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def problem(self) -> str | None:
        """Why the check fails, in one line (None when it passes)."""
        if self.predictions == 0:
            return ("no predictions since this run started: the pipeline scored nothing "
                    "(see the scoring workers' and the bridge's logs, and the dead letters)")
        if self.failures == 0:
            return "no simulated failure since this run started: run the check for more --minutes"
        if self.warned_failures == 0:
            return (f"none of the {self.failures} failures of this run was warned by an alert opened "
                    f"before it ({self.alerts_opened} alerts opened)")
        return None

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


class _Stopped(Exception):
    """Told to stop while setting up: nothing to check."""


def login_env(local: LocalStack, principal: str) -> dict[str, str]:
    """The environment that logs a child in as ``principal`` on a secure stack (nothing on a
    plain one): its user names and the files holding its passwords, never a password."""
    if local.secure is None:
        return {}
    kafka, mqtt = local.client_settings(principal)
    return {"FOREWARN_KAFKA__SECURITY_PROTOCOL": kafka.security_protocol,
            "FOREWARN_KAFKA__SASL_MECHANISM": str(kafka.sasl_mechanism),
            "FOREWARN_KAFKA__SASL_USERNAME": principal,
            "FOREWARN_KAFKA__SASL_PASSWORD_FILE": str(kafka.sasl_password_file),
            "FOREWARN_KAFKA__SSL_CA_LOCATION": str(kafka.ssl_ca_location),
            "FOREWARN_MQTT__TLS": "true", "FOREWARN_MQTT__CA_FILE": str(mqtt.ca_file),
            "FOREWARN_MQTT__USERNAME": principal, "FOREWARN_MQTT__PASSWORD_FILE": str(mqtt.password_file)}


def _run_step(supervisor: Supervisor, what: str, args: list[str], log_file: Path,
              say: Callable[[str], None], stop: threading.Event, env: dict[str, str] | None = None) -> None:
    say(what)
    code = supervisor.run(log_file.stem, [sys.executable, "-m", "forewarn.cli", *args], log_file, stop, env)
    if stop.is_set():
        raise _Stopped(what)
    if code != 0:
        raise DemoError(f"{what} failed (exit {code}); last lines of {log_file}:\n{tail(log_file, 8)}")


def ensure_models(supervisor: Supervisor, models_dir: Path, data_dir: Path, say: Callable[[str], None],
                  seed: int, stop: threading.Event) -> None:
    """Train initial models from simulated history when the models folder has none."""
    missing = [t for t in ASSET_TYPES if not (models_dir / t / "current").exists()]
    if not missing:
        say(f"models found in {models_dir}: {', '.join(ASSET_TYPES)}")
        return
    history = data_dir / "history"
    types = [a for t in missing for a in ("--asset-type", t)]
    _run_step(supervisor, f"simulating run-to-failure history for {', '.join(missing)}",
              ["simulate", "history", "--machines", "200", *types, "--seed", str(seed), "--out", str(history)],
              data_dir / "history.log", say, stop)
    t0 = time.monotonic()
    _run_step(supervisor, "training initial models (about two minutes on two cores)",
              ["train", "--data", str(history), "--out", str(models_dir), "--promote", "--quiet"],
              data_dir / "train.log", say, stop)
    say(f"models trained in {time.monotonic() - t0:.0f}s (metrics in {data_dir / 'train.log'})")


def ensure_signing_key(keys_dir: Path, say: Callable[[str], None]) -> tuple[Path, Path]:
    """The demo's model signing key pair (private, public), made on first start."""
    private, public = keys_dir / "model.key", keys_dir / "model.pub"
    if not private.is_file():
        ident = generate_keypair(private, public)
        say(f"generated the demo's model signing key {ident} in {keys_dir} (workers trust only it)")
    return private, public


def sign_models(models_dir: Path, private: Path, say: Callable[[str], None]) -> None:
    """Sign the current bundle of every asset type with the demo's key, unless it already is."""
    key = load_private_key(private)
    ident = key_id(key.public_key())
    for asset in ASSET_TYPES:
        path = resolve_bundle(models_dir / asset)
        bundle = read_bundle(path)
        record = bundle.release
        if record is not None and record.key_id == ident and record.digest == bundle.digest:
            continue
        write_release(path, sign_release(bundle, key, action="publish", reason="demo: trained on simulated history"))
        say(f"signed {bundle.label} with key {ident}")


def end_offsets(consumer: ConsumerLike, topics: Iterable[str]) -> Offsets:
    """The end offset (high watermark) of every partition of ``topics`` now: where what comes
    next starts. A topic that does not exist yet has none (all of it will be new)."""
    names = list(topics)
    found = consumer.topic_partitions(names, timeout_s=10)
    return {(t, p): consumer.watermarks(t, p, timeout_s=10)[1] for t in names for p in found.get(t, [])}


def _count(consumer: ConsumerLike, topic: str, since: Mapping[tuple[str, int], int] | None = None) -> int:
    """Offsets in ``topic`` now (records, plus transaction markers), after ``since`` when given
    (the run's start): a progress figure, no read."""
    total = 0
    for p in consumer.topic_partitions([topic], timeout_s=5).get(topic, []):
        low, high = consumer.watermarks(topic, p, timeout_s=5)
        start = low if since is None else max(low, since.get((topic, p), low))
        total += max(0, high - start)
    return total


def _sources(consumer: ConsumerLike, topics: list[str],
             since: Mapping[tuple[str, int], int] | None) -> list[str | confluent_kafka.TopicPartition]:
    """What to read: whole topics, or every partition from its offset in ``since`` (from its
    first record when it had none then)."""
    if since is None:
        return list(topics)
    found = consumer.topic_partitions(topics, timeout_s=10)
    return [confluent_kafka.TopicPartition(t, p, since.get((t, p), confluent_kafka.OFFSET_BEGINNING))
            for t in topics for p in found.get(t, [])]


def check_pipeline(settings: ServiceSettings, topics: Topics, timeout_s: float = 60.0, *,
                   consumer: ConsumerLike | None = None,
                   since: Mapping[tuple[str, int], int] | None = None) -> CheckResult:
    """Read what the pipeline committed up to now and check predictions flowed and alerts came
    early. ``since`` (from :func:`end_offsets` at the run's start) limits the read to what came
    after it: what this run produced. ``timeout_s`` bounds a read that makes no progress;
    ``consumer`` (a fake in unit tests) reads instead of a private one."""
    names = [topics.predictions, topics.alerts, topics.maintenance]
    reader: KafkaConsumer | None = None
    if consumer is None:
        reader = consumer = KafkaConsumer(settings.kafka, f"forewarn-demo-check-{os.getpid()}")
    try:
        return _tally(read_to_end(consumer, _sources(consumer, names, since), idle_timeout_s=timeout_s,
                                  max_messages=5000), topics)
    finally:
        if reader is not None:
            reader.close()


def _tally(messages: Iterable[confluent_kafka.Message], topics: Topics) -> CheckResult:
    """Predictions, opened alerts and failures (each event once, by its identity) of ``messages``."""
    alerts = msgspec.json.Decoder(Alert)
    events = msgspec.json.Decoder(MaintenanceEvent)
    predictions = 0
    opened: dict[str, list[int]] = {}
    failures: dict[str, tuple[str, int]] = {}
    for message in messages:
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
                    failures[event.identity] = (event.machine_id, event.ts)
        except msgspec.DecodeError:
            log.warning("undecodable record on %s", topic)
    return CheckResult(predictions, sum(len(v) for v in opened.values()), len(failures),
                       _warned_failures(list(failures.values()), opened))


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


def run_demo(settings: DemoSettings, say: Callable[[str], None] | None = None) -> int:
    """Run the demo until SIGTERM, SIGHUP or Ctrl-C (or, with ``check``, for ``minutes``);
    returns the exit code. A second Ctrl-C stops the components at once (what has not exited
    after a short grace period is killed). ``say`` (default: a :class:`Narrator` on stderr and
    ``<home>/demo/demo.log``) gets the progress lines."""
    topics = Topics.from_settings(settings.topics)
    env = _env_for(settings)
    data_dir = settings.stack.home / "demo"
    say = say or Narrator(sys.stderr, data_dir / "demo.log")
    watchdog = Watchdog(data_dir / "logs" / "watchdog.log")
    try:
        local = LocalStack(settings.stack, settings.kafka, settings.mqtt, settings.topics)
        brokers: list[Mosquitto | KafkaBroker] = [local.mosquitto, local.kafka]
        already = {b.name for b in brokers if b.process.pid() is not None}
        try:
            local.up(say)
        finally:  # what up() started (also when it failed part way) stops with the demo
            started = _watch_started(watchdog, brokers, already)
        if local.secure is not None:  # the demo itself (topics, counts, the check) is the admin
            settings = settings.model_copy(update={"kafka": local.kafka_settings})
            say("secure stack: every component logs in as itself (TLS, SCRAM, least-privilege ACLs)")
        stop = threading.Event()
        with on_signals(lambda _sig: stop.set(), say=say, action="stopping the demo", signals=DEMO_SIGNALS):
            try:
                KafkaAdmin(settings.kafka).ensure_topics(topic_specs(settings.topics))
                say("topics ready")
                return _run_pipeline(settings, settings.demo, topics, env, watchdog, stop, say,
                                     lambda principal: login_env(local, principal))
            finally:
                for broker in reversed(started):
                    say(f"stopping {broker.name}")
                    broker.stop()
    finally:
        watchdog.close()


def _watch_started(watchdog: Watchdog, brokers: list[Mosquitto | KafkaBroker],
                   already: set[str]) -> list[Mosquitto | KafkaBroker]:
    """The brokers the demo started (not running before it), each given to the watchdog."""
    started = []
    for broker in brokers:
        pid = broker.process.pid()
        if pid is not None and broker.name not in already:
            watchdog.watch(pid, broker.name, grace_s=60.0)
            started.append(broker)
    return started


def _behind_h(options: DemoOptions) -> float:
    """How far back the simulated clock starts: the whole check at ``speed``, with a margin
    (at most the year the simulator takes)."""
    if not options.check:
        return INTERACTIVE_BEHIND_H
    return min(options.speed * options.minutes / 60 * 1.2 + 0.1, _MAX_BEHIND_H)


def _run_pipeline(settings: ServiceSettings, options: DemoOptions, topics: Topics, env: dict[str, str],
                  watchdog: Watchdog, stop: threading.Event, say: Callable[[str], None],
                  login: Callable[[str], dict[str, str]]) -> int:
    home = settings.stack.home
    data_dir = home / "demo"
    models_dir = home / "models"
    with KafkaConsumer(settings.kafka, "forewarn-demo-counts") as counter:
        # What is there before the run is not the run's: counts and the check start here.
        since = end_offsets(counter, [topics.telemetry, topics.predictions, topics.alerts, topics.maintenance,
                                      topics.dlq])
        with Supervisor(data_dir / "logs", env, watchdog) as supervisor:
            try:
                private_key, public_key = ensure_signing_key(home / "keys", say)
                supervisor.env["FOREWARN_TRUST__KEYS"] = json.dumps([str(public_key.resolve())])
                _start_components(supervisor, options, models_dir, private_key, data_dir, say, stop, login)
                return _watch(settings, topics, supervisor, options, counter, since, say, stop.is_set)
            except _Stopped as step:
                say(f"stopped while {step}")
                return 130
            finally:
                say("stopping the pipeline")


def _start_components(supervisor: Supervisor, options: DemoOptions, models_dir: Path, private_key: Path,
                      data_dir: Path, say: Callable[[str], None], stop: threading.Event,
                      login: Callable[[str], dict[str, str]]) -> None:
    ensure_models(supervisor, models_dir, data_dir, say, options.seed, stop)
    sign_models(models_dir, private_key, say)
    for asset in ASSET_TYPES:
        _run_step(supervisor, f"publishing the {asset} model to the models topic",
                  ["model", "publish", "--models", str(models_dir), "--asset-type", asset],
                  data_dir / "publish.log", say, stop, login("registry"))
    supervisor.start("bridge", ["bridge", "--client-id", "forewarn-demo-bridge"], login("bridge"))
    for i in range(options.workers):
        supervisor.start(f"score-{i + 1}", ["score", "--worker-id", f"demo-worker-{i + 1}",
                                            "--models-dir", str(models_dir)], login("scoring"))
    if not options.check:
        supervisor.start("dashboard", ["dashboard", "--port", str(options.dashboard_port)], login("dashboard"))
    types = [a for t in ASSET_TYPES for a in ("--asset-type", t)]
    supervisor.start("simulator", ["simulate", "live", *types, "--machines", str(options.machines),
                                   "--sites", str(options.sites), "--speed", str(options.speed),
                                   "--start", "auto", "--behind-h", f"{_behind_h(options):.3f}",
                                   "--delivery", "batch", "--seed", str(options.seed)], login("simulator"))
    say(f"logs of every component: {supervisor.log_dir}")
    if not options.check:
        say(f"dashboard: http://127.0.0.1:{options.dashboard_port}  (Ctrl-C stops everything)")


def _watch(settings: ServiceSettings, topics: Topics, supervisor: Supervisor, options: DemoOptions,
           counter: ConsumerLike, since: Offsets, say: Callable[[str], None], stopping: Callable[[], bool]) -> int:
    started = time.monotonic()
    deadline = started + options.minutes * 60 if options.check else float("inf")
    next_report = started + 15
    while not stopping() and time.monotonic() < deadline:
        for child in supervisor.dead():
            raise DemoError(f"{child.name} stopped unexpectedly; last lines of {child.log_file}:\n"
                            f"{supervisor.last_lines(child)}")
        if time.monotonic() >= next_report:
            next_report += 15
            counts = {name: _count(counter, topic, since) for name, topic in
                      (("telemetry", topics.telemetry), ("predictions", topics.predictions),
                       ("alerts", topics.alerts), ("dead letters", topics.dlq))}
            say(f"[{time.monotonic() - started:5.0f}s] this run: "
                + " · ".join(f"{k} {v:,}" for k, v in counts.items()))
        time.sleep(0.5)
    if not options.check:
        return 0
    result = check_pipeline(settings, topics, since=since)
    say("check (this run only): " + result.summary())
    if result.problem is not None:
        say(f"check failed: {result.problem}")
        return 1
    return 0
