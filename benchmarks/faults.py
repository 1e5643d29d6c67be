"""The fault campaign at full size on a local three-node KRaft cluster (``tests/fault_campaign.py``
says what each scenario does and what is counted at every hop).

Per scenario: fresh topics (replication 3, min.insync.replicas 2), the real bridge and two real
scoring workers, simulated fleet telemetry over MQTT at a steady rate (one site's readings
alone, the other's in gateway batches), the fault done and healed, then the counts: readings
acknowledged by Mosquitto and lost before ``telemetry`` (must be 0), duplicates in ``telemetry``
(allowed), committed predictions missing or extra against the reference (must be 0 and 0), alerts,
and recovery (fault to the first committed prediction of a reading published after it). The
baseline scenario ``none`` runs the same load uninterrupted first: its pause and latency are what
the faults' figures compare with.

The network scenarios (``broker-partition``, ``slow-lossy-link``) cut and slow real links: they
run after the others, on a second cluster whose nodes are each in their own network namespace,
with the bridge in another (``tests/netfaults.py``; needs root). The others and the baseline run
on loopback, as before, so their figures stay comparable with earlier runs.

    python benchmarks/faults.py [--machines 120] [--ticks 500] [--rate 1500] [--only NAME ...]

Writes ``bench-results/faults.json`` and prints a table; exits 1 when a scenario lost an
acknowledged reading or changed a prediction.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from forewarn.topics import default_replication, min_insync_for
from tests.fault_campaign import BASELINE, SCENARIOS, ScenarioResult, make_load, run_scenario
from tests.netfaults import Network
from tests.stacks import make_stack


def table(results: list[ScenarioResult]) -> str:
    head = ("scenario", "acked", "lost", "dup", "pred", "missing", "extra", "alerts", "recovery s", "pause s",
            "edge acked", "edge lost", "edge dup", "edge missing", "edge wrong")
    def lost(n: int, in_crash: int) -> str:
        return f"{n} (+{in_crash} in the crash)" if in_crash else str(n)

    rows = [head] + [(r.name, str(r.acked_readings), lost(r.readings_lost, r.lost_in_mqtt_crash),
                      str(r.telemetry_duplicates),
                      str(r.predictions_committed), str(r.predictions_missing), str(r.predictions_extra),
                      str(r.alerts), "-" if r.recovery_s is None else f"{r.recovery_s:.1f}",
                      "-" if r.longest_pause_s is None else f"{r.longest_pause_s:.1f}",
                      str(r.edge_acked_readings), lost(r.edge_readings_lost, r.edge_lost_in_mqtt_crash),
                      str(r.edge_telemetry_duplicates),
                      str(r.edge_predictions_missing), str(r.edge_predictions_wrong)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=120, help="simulated machines, over two sites")
    parser.add_argument("--ticks", type=int, default=500, help="readings per machine")
    parser.add_argument("--rate", type=float, default=1500.0, help="readings per second over MQTT")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="run these scenarios (and the baseline)")
    parser.add_argument("--replication", type=int, choices=(1, 2, 3),
                        help="the scenarios' topics' replication factor instead of the cluster's default (3, "
                        "min.insync.replicas 2); 1 shows what the single-node defaults cost, in faults-rf1.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    names = args.only or list(SCENARIOS)
    load = make_load(args.machines, args.ticks)
    print(f"load: {load.readings} readings in {len(load.messages)} MQTT messages, "
          f"{len(load.reference)} predictions expected", file=sys.stderr)
    figures: dict[str, Any] = {"load_average": f"{os.getloadavg()[0]:.2f} (1-min, at start)",
                               "readings": load.readings, "mqtt_messages": len(load.messages),
                               "rate_readings_per_s": args.rate, "brokers": 3,
                               "replication_factor": args.replication or default_replication(3),
                               "min_insync_replicas": min_insync_for(args.replication or default_replication(3)),
                               "workers": 2, "edge_gateways": 1,
                               "mosquitto_saves": "every 5 s (the stack's default); after every change in the "
                               "mosquitto-kill scenarios"}
    results: list[ScenarioResult] = []
    failed: list[dict[str, Any]] = []  # scenarios that raised before their counts
    on_loopback = [BASELINE, *(SCENARIOS[n] for n in names if not SCENARIOS[n].network)]
    on_namespaces = [SCENARIOS[n] for n in names if SCENARIOS[n].network]
    figures["network_scenarios_topology"] = "a network namespace per Kafka node, the bridge in another"
    with tempfile.TemporaryDirectory(prefix="fw-bench-faults-") as tmp:
        for scenarios, namespaced in ((on_loopback, False), (on_namespaces, True)):
            if not scenarios:
                continue
            with contextlib.ExitStack() as held:
                net = held.enter_context(Network(3)) if namespaced else None
                stack = make_stack(Path(tmp) / ("stack-netns" if net else "stack"), brokers=3, kafka_heap="768m",
                                   netns=net)
                stack.up(progress=lambda m: print(m, file=sys.stderr))
                try:
                    for scenario in scenarios:
                        print(f"== {scenario.name}: {scenario.done}", file=sys.stderr)
                        t0 = time.monotonic()
                        try:
                            result = run_scenario(stack, scenario, load, Path(tmp) / scenario.name,
                                                  rate=args.rate, replication=args.replication, net=net)
                        except Exception as exc:  # a scenario that could not finish is a result too
                            failed.append({"name": scenario.name, "done": scenario.done, "ok": False,
                                           "error": str(exc)[:2000]})
                            print(f"   FAILED to finish: {exc}", file=sys.stderr)
                            stack.up()  # whatever the scenario left down, for the next one
                            continue
                        results.append(result)
                        print(f"   {'ok' if result.ok else 'FAILED'} in {time.monotonic() - t0:.0f}s; "
                              + "; ".join(result.observed), file=sys.stderr)
                finally:
                    stack.down()
    figures["load_average_after"] = f"{os.getloadavg()[0]:.2f}"
    figures["scenarios"] = [r.as_dict() for r in results] + failed
    write_result("faults" if args.replication is None else f"faults-rf{args.replication}", figures)
    print(table(results))
    for f in failed:
        print(f"{f['name']}: did not finish: {f['error']}")
    return 0 if all(r.ok for r in results) and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
