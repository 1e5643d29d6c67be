"""Scoring throughput and latency, side by side with the obvious alternatives.

1. Preload ``telemetry`` with N readings over M machines (default 1,000,000 over 10,000).
2. The ceiling: the model's bare batched onnxruntime throughput on the same box.
3. One scoring worker (stride 1, exactly-once transactions, state changelog) scores the topic;
   readings/s from its first record to its last commit.
4. A Quix Streams application doing the obvious thing (a per-record sliding window in its
   state store and one onnxruntime call per record) scores a slice of the same topic.
5. Latency: a worker process under a steady rate (default 5,000 readings/s); p50/p99 from the
   reading's timestamp to the committed prediction, read with read_committed.
6. The worker's run again on the secure stack (SASL_SSL, ACLs): ``secure_vs_plaintext_readings_per_s``.

The model is the newest bundle under ``--models-dir`` (e.g. from ``forewarn train``) when one
is there, else the training default, trained briefly on simulated history (inference cost is what counts).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
import numpy as np

from benchmarks._common import write_result
from forewarn.bundle import Bundle, BundleError, encode_meta, read_bundle, resolve_bundle, write_release
from forewarn.contract import Prediction
from forewarn.deadletter import INGEST_HEADER
from forewarn.inference import OnnxModel
from forewarn.kafka import KafkaAdmin, KafkaConsumer, KafkaProducer
from forewarn.settings import KafkaSettings, TopicSettings
from forewarn.topics import Topics, topic_specs
from scoring.settings import ScoringOptions, ScoringSettings
from scoring.worker import ScoringWorker
from simulators.fleet import Fleet, FleetConfig
from tests.scoring.bundle_factory import signed, trust_env, trust_settings
from tests.stacks import REPO, free_port, make_stack

log = logging.getLogger("bench.scoring")
_prediction = msgspec.json.Decoder(Prediction)


def load_model(models_dir: Path | None, work: Path) -> tuple[Bundle, str]:
    """The newest pump bundle under ``models_dir``; else the training default (architecture,
    window, filters) trained for two epochs on simulated history: its inference cost is the
    default model's, whatever its accuracy."""
    if models_dir is not None and models_dir.is_dir():
        try:
            bundle = read_bundle(resolve_bundle(models_dir, "pump"))
            return bundle, f"trained ({bundle.label}, {bundle.meta.architecture.get('architecture', 'default')})"
        except BundleError as error:
            log.warning("no usable bundle in %s (%s); training the default model", models_dir, error)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = work / "trained"
    for step in (["simulate", "history", "--machines", "60", "--asset-type", "pump", "--seed", "1",
                  "--out", str(work / "history")],
                 ["train", "--data", str(work / "history"), "--out", str(out), "--epochs", "2", "--quiet"]):
        subprocess.run([sys.executable, "-m", "forewarn.cli", *step], cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    bundle = read_bundle(resolve_bundle(out, "pump"))
    arch = bundle.meta.architecture
    return bundle, (f"the training default ({arch.get('architecture', 'conv')}, {arch.get('filters', '?')} filters, "
                    f"window {bundle.meta.input.window}), 2 epochs on simulated history")


def fleet_payloads(machines: int, ticks: int, seed: int = 1) -> tuple[list[tuple[bytes, bytes, int]], list[str],
                                                                     list[str]]:
    # Event times end now: the telemetry topic's 7-day retention would delete older records.
    period_ms = 60_000
    start_ms = int(time.time() * 1000) - (ticks + 1) * period_ms
    fleet = Fleet(FleetConfig(asset_types=("pump",), machines=machines, sites=10, seed=seed, stagger=True,
                              start_ms=start_ms, sample_period_s=period_ms / 1000))
    out: list[tuple[bytes, bytes, int]] = []
    names: list[str] = []
    settings: list[str] = []
    ids = [m.encode() for m in fleet.machine_ids]
    for blocks, _events in fleet.run(ticks):
        for block in blocks:
            names, settings = list(block.sensor_names), list(block.setting_names)
            head = [b'{"v":1,"machine_id":"' + ids[int(m)] + b'","asset_type":"pump","ts":' for m in block.machine]
            sensors = block.sensors.tolist()
            sets = block.settings.tolist()
            for i, (ts, seq) in enumerate(zip(block.ts.tolist(), block.seq.tolist(), strict=True)):
                body = ",".join(f'"{n}":{v}' for n, v in zip(names, sensors[i], strict=True))
                sbody = ",".join(f'"{n}":{v}' for n, v in zip(settings, sets[i], strict=True))
                value = head[i] + f'{ts},"seq":{seq},"sensors":{{{body}}},"settings":{{{sbody}}}}}'.encode()
                out.append((ids[int(block.machine[i])], value, ts))
    return out, names, settings


def produce_all(kafka: KafkaSettings, topic: str, records: list[tuple[bytes, bytes, int]]) -> float:
    # Idempotent: a plain producer's retries under load wrote duplicates and reordered batches,
    # which the worker rightly dropped (and the readings count then ended its run early).
    producer = KafkaProducer(kafka, **{
        "linger.ms": 50, "batch.size": 1_000_000, "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000})
    started = time.perf_counter()
    for key, value, ts in records:
        producer.produce(topic, value, key, timestamp_ms=ts)  # waits out a full local queue itself
    producer.flush(120)
    return time.perf_counter() - started


def ceiling(bundle: Bundle, n: int = 32_768) -> tuple[float, dict[str, int]]:
    """The model's best bare batched onnxruntime throughput on this box: windows/s over a sweep
    of intra-op threads and batch sizes (the worker's defaults must not define the ceiling)."""
    x = np.random.default_rng(0).normal(size=(n, bundle.meta.input.window,
                                              len(bundle.meta.input.features))).astype(np.float32)
    table: dict[str, int] = {}
    for threads in (1, 0):
        for batch in (64, 128, 256, 512, 1024, 4096):
            model = OnnxModel(bundle, threads=threads, batch_size=batch)
            model.predict(x[:batch * 4])
            started = time.perf_counter()
            model.predict(x)
            table[f"threads={threads or 'all'},batch={batch}"] = round(n / (time.perf_counter() - started))
    return max(table.values()), table


def single_call_rate(bundle: Bundle, n: int = 3000) -> float:
    """One onnxruntime call per window, one thread: what a per-record stream processor pays."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(bundle.onnx, sess_options=options, providers=["CPUExecutionProvider"])
    spec = bundle.meta.input
    x = np.random.default_rng(0).normal(size=(n, 1, spec.window, len(spec.features))).astype(np.float32)
    started = time.perf_counter()
    for window in x:
        session.run(None, {spec.name: window})
    return n / (time.perf_counter() - started)


def settings_for(kafka: KafkaSettings, prefix: str, **scoring: Any) -> ScoringSettings:
    return ScoringSettings(kafka=kafka, trust=trust_settings(),
                           topics=TopicSettings(prefix=prefix, partitions=4),
                           scoring=ScoringOptions(**scoring))


def run_worker(kafka: KafkaSettings, prefix: str, total: int, models_dir: Path, name: str = "bench",
               max_batch: int = 20_000, commit_interval_ms: int = 200, warm_after: float = 0.55,
               group_id: str | None = None) -> dict[str, Any]:
    """One in-process worker scores the preloaded topic; also the rate once past ``warm_after``
    of it, when every machine's window is complete."""
    settings = settings_for(kafka, prefix, worker_id=name, group_id=group_id or f"{prefix}{name}",
                            models_dir=models_dir, max_batch=max_batch, commit_interval_ms=commit_interval_ms)
    worker = ScoringWorker(settings)
    worker.start()
    consumed = 0
    first: float | None = None
    inference = 0.0
    batches = 0
    warm: tuple[float, int, int] | None = None  # (time, readings, windows) once past the warm-up
    try:
        deadline = time.monotonic() + 3600
        while consumed < total and time.monotonic() < deadline:
            before = time.perf_counter()
            got = worker.step()
            if got and first is None:
                first = before
            consumed += got
            batches += 1 if got else 0
            if warm is None and consumed >= warm_after * total:
                warm = (time.perf_counter(), consumed, _count(worker, "predictions"))
        finished = time.perf_counter()
        elapsed = finished - (first or finished)
        inference = _inference_seconds(worker)
    finally:
        worker.stop()
        worker.close()
    windows = _count(worker, "predictions")
    outcomes = {s.labels["outcome"]: int(s.value) for m in worker.metrics.readings.collect() for s in m.samples
                if s.name.endswith("_total")}
    result: dict[str, Any] = {
        "readings": consumed, "seconds": round(elapsed, 2), "readings_per_s": round(consumed / elapsed),
        "windows_scored": windows, "windows_per_s": round(windows / elapsed), "transactions": batches,
        "max_batch": max_batch, "outcomes": outcomes, "inference_seconds": round(inference, 2),
        "inference_windows_per_s": round(windows / inference) if inference else None}
    if warm is not None and finished > warm[0] and consumed > warm[1]:
        span = finished - warm[0]
        # The topic is in tick order, so past the warm-up every reading completes a window.
        result["warm"] = {"readings": consumed - warm[1], "windows": windows - warm[2],
                          "readings_per_s": round((consumed - warm[1]) / span),
                          "windows_per_s": round((windows - warm[2]) / span)}
    return result


def _count(worker: ScoringWorker, what: str) -> int:
    metric = worker.metrics.predictions if what == "predictions" else worker.metrics.readings
    return int(sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total")))


def _inference_seconds(worker: ScoringWorker) -> float:
    for metric in worker.metrics.inference.collect():
        return sum(s.value for s in metric.samples if s.name.endswith("_sum"))
    return 0.0


def run_quix(bootstrap: str, topic: str, bundle: Bundle, limit: int, state_dir: Path, max_s: float) -> dict[str, Any]:
    import onnxruntime as ort
    from quixstreams import Application

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(bundle.onnx, sess_options=options, providers=["CPUExecutionProvider"])
    spec = bundle.meta.input
    window = spec.window
    columns = [(f.name, f.kind == "sensor") for f in spec.features]
    app = Application(broker_address=bootstrap, consumer_group=f"quix-bench-{os.getpid()}",
                      auto_offset_reset="earliest", state_dir=str(state_dir),
                      loglevel=os.environ.get("QUIX_LOGLEVEL", "WARNING"),
                      processing_guarantee="exactly-once")
    source = app.topic(topic, value_deserializer="json")
    sink = app.topic(topic.replace("telemetry", "quix-predictions"), value_serializer="json")
    sdf = app.dataframe(source)
    seen = {"n": 0, "scored": 0, "first": 0.0, "last": 0.0}

    def score(value: dict[str, Any], state: Any) -> dict[str, Any] | None:
        if seen["n"] == 0:
            seen["first"] = time.perf_counter()
        seen["n"] += 1
        sensors, settings = value["sensors"], value.get("settings", {})
        row = [sensors.get(n, settings.get(n, 0.0)) if is_sensor else settings.get(n, sensors.get(n, 0.0))
               for n, is_sensor in columns]
        buffer = state.get("window", [])
        buffer.append(row)
        buffer = buffer[-window:]
        state.set("window", buffer)
        if seen["n"] >= limit or time.perf_counter() - seen["first"] > max_s:
            seen["last"] = time.perf_counter()
            app.stop()
        if len(buffer) < window:
            return None
        rul, p_fail = session.run(["rul", "p_fail"], {spec.name: np.asarray([buffer], dtype=np.float32)})
        seen["scored"] += 1
        return {"machine_id": value["machine_id"], "seq": value["seq"], "p_fail": float(p_fail.reshape(-1)[0]),
                "rul": float(rul.reshape(-1)[0])}

    sdf = sdf.apply(score, stateful=True).filter(lambda v: v is not None)
    sdf.to_topic(sink)
    app.run()
    elapsed = (seen["last"] or time.perf_counter()) - seen["first"]
    return {"readings": seen["n"], "scored": seen["scored"], "seconds": round(elapsed, 2),
            "readings_per_s": round(seen["n"] / elapsed) if elapsed > 0 else 0, "processing_guarantee": "exactly-once"}


def run_latency(bootstrap: str, prefix: str, models_dir: Path, rate: int, machines: int, seconds: float,
                warmup_s: float, log_path: Path) -> dict[str, Any]:
    topics = Topics.from_settings(TopicSettings(prefix=prefix))
    metrics_port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), **trust_env()}
    env.pop("FOREWARN_CONFIG", None)
    cmd = [sys.executable, "-m", "forewarn.cli", "--log-level", "info", "score", "--bootstrap-servers", bootstrap,
           "--topic-prefix", prefix, "--worker-id", "latency", "--models-dir", str(models_dir),
           "--metrics-port", str(metrics_port)]  # default batching: a batch is what has arrived
    with log_path.open("wb") as out:
        worker = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    payloads, _, _ = fleet_payloads(machines, 1, seed=7)
    template = [(k, v) for k, v, _ in payloads]
    latencies: list[float] = []
    stop = threading.Event()
    measure_from = [0.0]

    def read() -> None:
        consumer = KafkaConsumer(KafkaSettings(bootstrap_servers=bootstrap), f"lat-{os.getpid()}",
                                 [topics.predictions], **{"fetch.wait.max.ms": 5})
        while not stop.is_set():
            # A short timeout: consume() waits for its timeout unless 2,000 records are there, and
            # that wait is the reader's, not the pipeline's latency.
            for m in consumer.consume(2000, 0.002):
                now = time.time() * 1000
                p = _prediction.decode(m.value() or b"")
                if measure_from[0] and p.ts >= measure_from[0]:
                    latencies.append(now - p.ts)
        consumer.close()

    deadline = time.monotonic() + 120
    while "assigned partitions" not in log_path.read_text(errors="replace"):
        if time.monotonic() > deadline or worker.poll() is not None:
            raise RuntimeError(f"latency worker did not start: {log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    producer = KafkaProducer(KafkaSettings(bootstrap_servers=bootstrap), **{"linger.ms": 2, "compression.type": "none"})
    tick = 0.02
    per_tick = max(1, round(rate * tick))
    seq = [0] * len(template)
    started = time.monotonic()
    sent = 0
    i = 0
    next_at = started
    while time.monotonic() - started < warmup_s + seconds:
        if not measure_from[0] and time.monotonic() - started >= warmup_s:
            measure_from[0] = time.time() * 1000
        now_ms = int(time.time() * 1000)
        for _ in range(per_tick):
            j = i % len(template)
            key, value = template[j]
            # Same reading, new seq and event time = now.
            head, _, rest = value.partition(b',"ts":')
            rest = rest.split(b',"sensors"', 1)[1]
            producer.produce(topics.telemetry, head + b',"ts":' + str(now_ms).encode() + b',"seq":'
                             + str(seq[j]).encode() + b',"sensors"' + rest, key,
                             timestamp_ms=now_ms, headers=[(INGEST_HEADER, str(now_ms))])
            seq[j] += 1
            i += 1
            sent += 1
        producer.poll(0)
        next_at += tick
        time.sleep(max(0.0, next_at - time.monotonic()))
    producer.flush(30)
    achieved = sent / (time.monotonic() - started)
    time.sleep(2.0)
    worker_metrics = scrape(metrics_port)
    stop.set()
    reader.join(10)
    worker.terminate()
    worker.wait(30)
    arr = np.asarray(latencies)
    if not len(arr):
        return {"error": "no predictions measured", "worker_log_tail": log_path.read_text(errors="replace")[-1500:]}
    return {"target_rate": rate, "achieved_rate": round(achieved), "machines": machines,
            "measured_s": seconds, "predictions_measured": len(arr),
            "p50_ms": round(float(np.percentile(arr, 50)), 1), "p99_ms": round(float(np.percentile(arr, 99)), 1),
            "max_ms": round(float(arr.max()), 1), "worker": worker_metrics}


def scrape(port: int) -> dict[str, float]:
    """Means of the worker's own histograms, from its Prometheus endpoint."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError as error:
        return {"error": str(error)}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        values[name] = values.get(name, 0.0) + float(value)
    out: dict[str, float] = {}
    for metric in ("forewarn_scoring_transaction_seconds", "forewarn_scoring_batch_readings",
                   "forewarn_scoring_inference_seconds"):
        total = sum(v for k, v in values.items() if k.startswith(metric + "_sum"))
        count = sum(v for k, v in values.items() if k.startswith(metric + "_count"))
        out[metric.removeprefix("forewarn_scoring_") + "_mean"] = round(total / count, 4) if count else 0.0
        out[metric.removeprefix("forewarn_scoring_") + "_count"] = count
    return out


def run_secure(home: Path, prefix: str, payloads: list[tuple[bytes, bytes, int]], models: Path,
               args: argparse.Namespace) -> dict[str, Any]:
    """The worker's run again on the secure stack (``stack up --secure``): Kafka over SASL_SSL
    (SCRAM-SHA-512) with the StandardAuthorizer's ACLs, the worker logged in as ``scoring`` in
    its group ``forewarn-scoring`` (the one its transactional-id ACL names)."""
    topic_settings = TopicSettings(prefix=prefix, partitions=4)
    stack = make_stack(home, secure=True, topics=topic_settings)
    try:
        log.info("starting the secure stack")
        stack.up()
        KafkaAdmin(stack.kafka_settings).ensure_topics(topic_specs(topic_settings))
        produce_s = produce_all(stack.kafka_settings, Topics.from_settings(topic_settings).telemetry, payloads)
        log.info("preloaded %s readings over SASL_SSL in %.1fs", len(payloads), produce_s)
        result = run_worker(stack.client_settings("scoring")[0], prefix, len(payloads), models,
                            max_batch=args.max_batch, commit_interval_ms=args.commit_interval_ms,
                            group_id="forewarn-scoring")
        log.info("secure worker: %s", result)
        return {"preload_seconds": round(produce_s, 1), "worker": result,
                "transport": "SASL_SSL, SCRAM-SHA-512; ACLs of forewarn.stack.kafka_acl"}
    finally:
        stack.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--max-batch", type=int, default=100_000, help="worker records per transaction")
    parser.add_argument("--commit-interval-ms", type=int, default=1000)
    parser.add_argument("--quix-max-s", type=float, default=600.0, help="stop the Quix application after this")
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--latency-machines", type=int, default=1_000)
    parser.add_argument("--latency-s", type=float, default=30.0)
    parser.add_argument("--models-dir", type=Path, default=Path(os.environ.get("FOREWARN_BENCH_MODELS", "models")))
    parser.add_argument("--skip", action="append", default=[], choices=["worker", "quix", "latency", "secure"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("scoring.worker").setLevel(logging.INFO)  # assignments, restores, aborts

    home = Path(tempfile.mkdtemp(prefix="fw-bench-scoring-"))
    stack = make_stack(home)
    figures: dict[str, Any] = {"load_average_before": os.getloadavg()}
    try:
        log.info("starting Kafka")
        stack.up()
        bootstrap = stack.kafka_settings.bootstrap_servers
        ticks = max(1, args.readings // args.machines)
        log.info("simulating %s machines x %s ticks", args.machines, ticks)
        payloads, _, _ = fleet_payloads(args.machines, ticks)
        bundle, model_kind = load_model(args.models_dir, home)
        models = home / "models"
        (models / "pump" / bundle.meta.version).mkdir(parents=True)
        (models / "pump" / bundle.meta.version / "model.onnx").write_bytes(bundle.onnx)
        (models / "pump" / bundle.meta.version / "model.json").write_bytes(encode_meta(bundle.meta))
        # Workers serve only signed bundles: sign with the tests' key, which trust_env() trusts.
        bundle = signed(bundle)
        write_release(models / "pump" / bundle.meta.version, bundle.release)  # type: ignore[arg-type]
        figures["model"] = {"kind": model_kind, "window": bundle.meta.input.window,
                            "features": len(bundle.meta.input.features)}
        figures["ceiling_windows_per_s"], figures["ceiling_sweep"] = ceiling(bundle)
        figures["single_call_windows_per_s"] = round(single_call_rate(bundle))
        log.info("ceiling: %s windows/s batched, %s windows/s one call per window", figures["ceiling_windows_per_s"],
                 figures["single_call_windows_per_s"])
        prefix = f"bench{os.getpid()}."
        admin = KafkaAdmin(stack.kafka_settings)
        admin.ensure_topics(topic_specs(TopicSettings(prefix=prefix, partitions=4)))
        topics = Topics.from_settings(TopicSettings(prefix=prefix))
        produce_s = produce_all(stack.kafka_settings, topics.telemetry, payloads)
        figures["preload"] = {"readings": len(payloads), "machines": args.machines, "seconds": round(produce_s, 1)}
        log.info("preloaded %s readings in %.1fs", len(payloads), produce_s)
        if "secure" in args.skip:
            del payloads
        if "worker" not in args.skip:
            result = run_worker(stack.kafka_settings, prefix, figures["preload"]["readings"], models,
                                max_batch=args.max_batch, commit_interval_ms=args.commit_interval_ms)
            result["note"] = (f"stride 1; a machine's windows are complete from its {bundle.meta.input.window}th "
                              "reading, so windows_scored < readings")
            figures["worker"] = result
            figures["ceiling_after_windows_per_s"], figures["ceiling_sweep_after"] = ceiling(bundle)
            ceil = (figures["ceiling_windows_per_s"] + figures["ceiling_after_windows_per_s"]) / 2
            figures["worker_readings_vs_ceiling"] = round(result["readings_per_s"] / ceil, 3)
            figures["worker_windows_vs_ceiling"] = round(result["windows_per_s"] / ceil, 3)
            if "warm" in result:
                figures["worker_warm_windows_vs_ceiling"] = round(result["warm"]["windows_per_s"] / ceil, 3)
            log.info("worker: %s", result)
        if "quix" not in args.skip:
            # The same topic, read from its start by a Quix Streams application.
            quix = run_quix(bootstrap, topics.telemetry, bundle, figures["preload"]["readings"],
                            home / "quix-state", args.quix_max_s)
            figures["quix_streams"] = quix
            log.info("quix: %s", quix)
            if quix["readings_per_s"] and "worker" in figures:
                figures["worker_vs_quix"] = round(figures["worker"]["readings_per_s"] / quix["readings_per_s"], 2)
                if quix["scored"] and quix["seconds"]:
                    figures["worker_vs_quix_windows"] = round(
                        figures["worker"]["windows_per_s"] / (quix["scored"] / quix["seconds"]), 2)
        if "latency" not in args.skip:
            lat_prefix = f"lat{os.getpid()}."
            admin.ensure_topics(topic_specs(TopicSettings(prefix=lat_prefix, partitions=4)))
            figures["latency"] = run_latency(bootstrap, lat_prefix, models, args.rate, args.latency_machines,
                                             args.latency_s, 10.0, home / "latency-worker.log")
            log.info("latency: %s", figures["latency"])
        if "secure" not in args.skip:
            stack.down()
            figures["secure"] = run_secure(home / "secure", prefix, payloads, models, args)
            if "worker" in figures:
                figures["secure_vs_plaintext_readings_per_s"] = round(
                    figures["secure"]["worker"]["readings_per_s"] / figures["worker"]["readings_per_s"], 2)
        figures["load_average_after"] = os.getloadavg()
        figures["note"] = ("2-core box shared with other engineers' processes; figures are noisy. "
                           "The worker figure includes JSON decoding, windowing, inference, encoding, the state "
                           "changelog and Kafka transactions.")
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)
    write_result("scoring", figures)


if __name__ == "__main__":
    main()
