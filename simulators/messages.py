"""From blocks of readings to messages: contract encoding, delivery faults, gateway batching.

The :class:`MessageBuilder` turns each period's blocks and maintenance events into
:class:`Outgoing` messages (one per reading, or gateway batches) and hands them to a
:class:`Sink`: MQTT (live, replay), Kafka (``history --to-kafka``) or a list (tests).
Encoding follows :mod:`forewarn.contract`; a non-finite value is written as the bare token
``NaN``/``Infinity``/``-Infinity``, as Python's json module does, which the contract's
decoder rejects as ``non_finite``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from forewarn.contract import SCHEMA_VERSION, MaintenanceEvent, encode
from simulators.faults import Category, FaultConfig, FaultReport, MalformedKind, ValueFaults
from simulators.fleet import Block

__all__ = ["Delivery", "ListSink", "MessageBuilder", "Outgoing", "Sink", "encode_readings"]

log = logging.getLogger(__name__)

Kind = Literal["telemetry", "batch", "maintenance"]
Delivery = Literal["single", "batch"]

_TOO_LARGE_BYTES: Final = 20 * 1024  # above the decoder's 16 KiB per-reading limit
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish. ``source`` is the machine_id (telemetry, maintenance) or the
    gateway_id (batch); ``ts`` the event time of its (first) reading; ``readings`` how many
    readings it carries (0 for maintenance)."""

    kind: Kind
    site: str
    source: str
    payload: bytes
    ts: int
    readings: int


class Sink(Protocol):
    """Where messages go."""

    def send(self, message: Outgoing) -> None: ...


class ListSink:
    """Collects messages in memory (tests, benchmarks)."""

    def __init__(self) -> None:
        self.messages: list[Outgoing] = []

    def send(self, message: Outgoing) -> None:
        self.messages.append(message)


def _reading_dict(block: Block, i: int, machine_id: str, ts: int, values: list[float],
                  settings: list[float], boot: int | None) -> dict[str, Any]:
    sensors = dict(zip(block.sensor_names, values, strict=True))
    if block.missing is not None:
        for j in np.flatnonzero(block.missing[i]).tolist():
            del sensors[block.sensor_names[j]]
    setting_values = dict(zip(block.setting_names, settings, strict=True))
    if block.settings_missing is not None:
        for j in np.flatnonzero(block.settings_missing[i]).tolist():
            del setting_values[block.setting_names[j]]
    reading = {"v": SCHEMA_VERSION, "machine_id": machine_id, "asset_type": block.asset_type, "ts": ts,
               "seq": int(block.seq[i]), "sensors": sensors, "settings": setting_values}
    if boot is not None:
        reading["boot"] = boot
    return reading


def encode_readings(block: Block, machine_ids: Sequence[str],
                    ts: npt.NDArray[np.int64] | None = None, boot: int | None = None) -> list[bytes]:
    """Encode every reading of ``block`` as a telemetry message (``ts`` overrides the event
    times, e.g. with clock skew; ``boot``, when given, is every reading's restart epoch).
    Missing fields are left out; non-finite values become bare NaN/Infinity tokens."""
    n = len(block)
    if n == 0:
        return []
    times = (block.ts if ts is None else ts).tolist()
    seqs = block.seq.tolist()
    values = block.sensors.tolist()
    settings = block.settings.tolist()
    names, setting_names, asset = block.sensor_names, block.setting_names, block.asset_type
    ids = [machine_ids[m] for m in block.machine.tolist()]
    enc = _encoder.encode
    extra = {} if boot is None else {"boot": boot}
    out = [
        enc({"v": SCHEMA_VERSION, "machine_id": ids[i], "asset_type": asset, "ts": times[i], "seq": seqs[i],
             "sensors": dict(zip(names, values[i], strict=True)),
             "settings": dict(zip(setting_names, settings[i], strict=True)), **extra})
        for i in range(n)
    ]
    special = ~np.isfinite(block.sensors).all(axis=1)
    if block.missing is not None:
        special |= block.missing.any(axis=1)
    if block.settings_missing is not None:
        special |= block.settings_missing.any(axis=1)
    for i in np.flatnonzero(special).tolist():
        obj = _reading_dict(block, i, ids[i], times[i], values[i], settings[i], boot)
        out[i] = json.dumps(obj, separators=(",", ":")).encode()
    return out


def _malformed(kind: MalformedKind, payload: bytes) -> bytes:
    """A deliberately broken version of a telemetry payload."""
    if kind == "not_json":
        return payload[: max(1, len(payload) // 2)]
    obj = json.loads(payload)
    if kind == "wrong_type":
        obj["seq"] = str(obj["seq"])
    elif kind == "missing_field":
        del obj["ts"]
    elif kind == "unknown_version":
        obj["v"] = SCHEMA_VERSION + 1
    else:  # too_large
        pad = {f"pad_{k:04d}": 0.0 for k in range(_TOO_LARGE_BYTES // 14)}
        obj["sensors"] = {**obj["sensors"], **pad}
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


# The decoder reason each malformed kind must produce.
_REASON: Final[dict[MalformedKind, str]] = {
    "not_json": "not_json", "wrong_type": "wrong_type", "missing_field": "missing_field",
    "too_large": "too_large", "unknown_version": "unknown_version",
}
# Payloads that would sink a whole gateway batch travel as a batch of their own.
_POISON: Final = frozenset({"not_json", "too_large", "non_finite"})


class MessageBuilder:
    """Turns blocks and events into messages, injecting delivery faults, and sends them.

    ``machine_ids`` is the stream's machine registry (block ``machine`` indexes it).
    ``delivery="batch"`` groups readings per gateway into gateway batches of at most
    ``batch_size`` readings; each machine belongs to one of its site's
    ``gateways_per_site`` gateways. ``boot`` is the restart epoch every reading carries (live
    runs set one per run, as a restarted device does; None: no ``boot`` field). Call
    :meth:`close` at the end to release held readings.
    """

    def __init__(self, sink: Sink, machine_ids: Sequence[str], *, faults: FaultConfig | None = None,
                 seed: int = 0, delivery: Delivery = "single", batch_size: int = 100,
                 gateways_per_site: int = 1, report: FaultReport | None = None, boot: int | None = None) -> None:
        self.sink = sink
        self.boot = boot
        self.machine_ids = list(machine_ids)
        self.faults = faults or FaultConfig()
        self.delivery = delivery
        self.batch_size = max(1, batch_size)
        self.report = report or FaultReport(config=_config_dict(self.faults))
        n = len(self.machine_ids)
        self.values = ValueFaults(self.faults, n, seed, self.report)
        self._rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xDE1,)))
        self._sites = [mid.partition("/")[0] for mid in self.machine_ids]
        self._gateways = _assign_gateways(self._sites, gateways_per_site)
        self._skew_ms = np.zeros(n, dtype=np.int64)
        if self.faults.clock_skew:
            skewed = self._rng.random(n) < self.faults.clock_skew
            offsets = self._rng.uniform(-1.0, 1.0, size=n) * self.faults.clock_skew_max_s * 1000
            self._skew_ms[skewed] = np.where(np.abs(offsets[skewed]) < 1000, 1000, offsets[skewed]).astype(np.int64)
            self.report.count("clock_skew_machines", int(skewed.sum()))
        self._held: dict[int, list[tuple[bytes, str | None, int]]] = {}
        self._burst_left = np.zeros(n, dtype=np.int64)
        self._burst_buffer: dict[int, list[tuple[bytes, str | None, int]]] = {}
        self._batches: dict[str, list[bytes]] = defaultdict(list)
        self._batch_ts: dict[str, int] = {}

    # -- public ------------------------------------------------------------------------

    def publish(self, blocks: Sequence[Block], events: Sequence[MaintenanceEvent] = ()) -> int:
        """Send one period's readings and events; returns the readings sent."""
        sent_before = self.report.readings_sent
        for block in blocks:
            if len(block):
                self._publish_block(block)
        self._flush_batches()
        for event in events:
            self.sink.send(Outgoing("maintenance", event.machine_id.partition("/")[0], event.machine_id,
                                    encode(event), event.ts, 0))
            self.report.messages += 1
            self.report.events += 1
        return self.report.readings_sent - sent_before

    def close(self) -> None:
        """Release readings still held back (out-of-order, bursts) and send partial batches."""
        for machine in sorted(self._burst_buffer):
            for item in self._burst_buffer.pop(machine):
                self._emit(machine, *item)
        for machine in sorted(self._held):
            for item in self._held.pop(machine):  # nothing came after it: in order after all
                self._emit(machine, *item)
        self._burst_left[:] = 0
        self._flush_batches()

    # -- internals ---------------------------------------------------------------------

    def _publish_block(self, block: Block) -> None:
        f = self.faults
        self.report.readings += len(block)
        cats = self.values.apply(block)
        ts = block.ts
        if f.clock_skew:
            skew = self._skew_ms[block.machine]
            ts = ts + skew
            self.report.count("clock_skew", int(np.count_nonzero(skew)))
        payloads = encode_readings(block, self.machine_ids, ts, self.boot)
        machines = block.machine.tolist()
        times = ts.tolist()
        if not f.any_delivery and not f.non_finite:
            for i, payload in enumerate(payloads):
                self._emit(machines[i], payload, None, times[i])
            return
        n = len(block)
        burst_start = (self._rng.random(n) < f.burst) if f.burst else np.zeros(n, dtype=np.bool_)
        kinds = self._rng.integers(len(f.malformed_kinds), size=n).tolist()
        cat_list = cats.tolist()
        for i, payload in enumerate(payloads):
            m, cat = machines[i], cat_list[i]
            poison: str | None = None
            copies = 1
            if cat == Category.NON_FINITE:
                poison = "non_finite"
            elif cat == Category.DUPLICATE:
                copies = 2
                self.report.count("duplicate")
            elif cat == Category.MALFORMED:
                kind = f.malformed_kinds[kinds[i]]
                payload = _malformed(kind, payload)
                self.report.count(f"malformed_{kind}")
                self.report.reject(_REASON[kind])
                poison = kind if kind in _POISON else "embedded"
            items = [(payload, poison, times[i])] * copies
            if self._burst_left[m] == 0 and burst_start[i]:
                self._burst_left[m] = f.burst_len
                self.report.count("burst_episodes")
            if self._burst_left[m] > 0:
                self._burst_buffer.setdefault(m, []).extend(items)
                self.report.count("burst", copies)
                self._burst_left[m] -= 1
                if self._burst_left[m] == 0:
                    released = self._burst_buffer.pop(m)
                    for item in released:
                        self._emit(m, *item)
                    if any(item[1] is None for item in released):
                        self._release_held(m)
                continue
            if cat == Category.OUT_OF_ORDER and m not in self._held:
                self._held[m] = items
                continue
            for item in items:
                self._emit(m, *item)
            if poison is None:
                self._release_held(m)

    def _release_held(self, machine: int) -> None:
        """Send a held-back reading after a later, decodable one: that is one out-of-order delivery."""
        held = self._held.pop(machine, None)
        if held:
            self.report.count("out_of_order", len(held))
            for item in held:
                self._emit(machine, *item)

    def _emit(self, machine: int, payload: bytes, poison: str | None, ts: int) -> None:
        self.report.readings_sent += 1
        if self.delivery == "single":
            self.sink.send(Outgoing("telemetry", self._sites[machine], self.machine_ids[machine], payload, ts, 1))
            self.report.messages += 1
            return
        gateway = self._gateways[machine]
        if poison is not None and poison != "embedded":
            body = _batch_payload(gateway, [payload])
            if poison == "not_json":
                body = body[: max(1, len(body) // 2)]
            self.sink.send(Outgoing("batch", self._sites[machine], gateway, body, ts, 1))
            self.report.messages += 1
            return
        batch = self._batches[gateway]
        if not batch:
            self._batch_ts[gateway] = ts
        batch.append(payload)
        if len(batch) >= self.batch_size:
            self._send_batch(gateway)

    def _send_batch(self, gateway: str) -> None:
        readings = self._batches.pop(gateway, [])
        if not readings:
            return
        site = gateway.partition("/")[0]
        self.sink.send(Outgoing("batch", site, gateway, _batch_payload(gateway, readings),
                                self._batch_ts.pop(gateway), len(readings)))
        self.report.messages += 1

    def _flush_batches(self) -> None:
        for gateway in list(self._batches):
            self._send_batch(gateway)


def _batch_payload(gateway: str, readings: list[bytes]) -> bytes:
    head = b'{"v":%d,"gateway_id":%s,"readings":[' % (SCHEMA_VERSION, _encoder.encode(gateway))
    return head + b",".join(readings) + b"]}"


def _assign_gateways(sites: Sequence[str], per_site: int) -> list[str]:
    seen: dict[str, int] = defaultdict(int)
    gateways = []
    for site in sites:
        k = seen[site]
        seen[site] += 1
        gateways.append(f"{site}/gw-{k % max(1, per_site) + 1}")
    return gateways


def _config_dict(config: FaultConfig) -> dict[str, Any]:
    data = {k: getattr(config, k) for k in config.__dataclass_fields__}
    data["malformed_kinds"] = list(config.malformed_kinds)
    return data
