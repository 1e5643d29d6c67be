"""From one MQTT message to the Kafka records it becomes.

Pure and broker-free: :class:`Router` decodes with the contract's :class:`~forewarn.contract.Decoder`,
checks that the MQTT topic agrees with the payload, and returns ready-to-produce records —
good readings for ``telemetry`` (keyed by machine_id, timestamp = event time, an ``ingest_ts``
header), maintenance events for ``maintenance``, and everything else for the dead-letter topic
as a :class:`~forewarn.deadletter.DeadLetter` (the original bytes, the reason and where it came from).
"""

from __future__ import annotations

import logging
from typing import Final, NamedTuple

import msgspec

from forewarn.contract import Alert, Decoder, Prediction, Reason, Rejected, Telemetry, encode
from forewarn.deadletter import INGEST_HEADER, DeadLetter, Headers, Kind, Origin, Record
from forewarn.topics import MQTT_ROOT, Topics, alert_topic, prediction_topic

__all__ = ["Routed", "Router", "parse_topic"]

log = logging.getLogger(__name__)

_ROOT: Final = MQTT_ROOT + "/"
_ROOT_LEN: Final = len(_ROOT)
_TELEMETRY: Final = "/telemetry"

_record = tuple.__new__  # ``_record(Record, (...))``: a Record without NamedTuple's Python-level __new__ (hot path)


class Routed(NamedTuple):
    """The records one MQTT message became, and the reasons of its rejected parts."""

    kind: Kind
    records: list[Record]
    rejected: list[str]


def parse_topic(mqtt_topic: str) -> tuple[Kind, str]:
    """``forewarn/s/m/telemetry`` → (TELEMETRY, "s/m"); batch → (BATCH, "s/gw"); else UNKNOWN."""
    if not mqtt_topic.startswith(_ROOT):
        return Kind.UNKNOWN, ""
    parts = mqtt_topic.split("/")
    if len(parts) == 4 and parts[1] and parts[2]:
        if parts[3] == "telemetry":
            return Kind.TELEMETRY, f"{parts[1]}/{parts[2]}"
        if parts[3] == "maintenance":
            return Kind.MAINTENANCE, f"{parts[1]}/{parts[2]}"
    if len(parts) == 5 and parts[2] == "gateway" and parts[4] == "batch" and parts[1] and parts[3]:
        return Kind.BATCH, f"{parts[1]}/{parts[3]}"
    return Kind.UNKNOWN, ""


class Router:
    """Turns MQTT messages into Kafka records. One instance per bridge (the decoder is compiled once)."""

    def __init__(self, topics: Topics, decoder: Decoder | None = None, dlq_max_bytes: int = 512 * 1024,
                 origin: Origin = Origin.BRIDGE) -> None:
        self.topics = topics
        self.origin = origin
        self.decoder = decoder or Decoder()
        self.dlq_max_bytes = dlq_max_bytes
        self._telemetry = topics.telemetry
        self._decode_telemetry = self.decoder.telemetry

    # -- the dead-letter record ----------------------------------------------------------

    def dead_letter(self, rejected: Rejected, mqtt_topic: str, kind: Kind, received_ms: int) -> Record:
        letter = DeadLetter.rejected(rejected, mqtt_topic=mqtt_topic, kind=kind, received_at=received_ms,
                                     origin=self.origin)
        return letter.record(self.topics.dlq, self.dlq_max_bytes)

    def _mismatch(self, raw: bytes, found: str, mqtt_topic: str) -> Rejected:
        return Rejected(Reason.TOPIC_MISMATCH, f"payload id {found!r} does not match MQTT topic {mqtt_topic!r}", raw)

    # -- routing ---------------------------------------------------------------------------

    def route(self, mqtt_topic: str, payload: bytes, received_ms: int) -> Routed:
        """The records for one MQTT message received at ``received_ms`` (epoch ms)."""
        # Fast path: a single reading, by far the most common message.
        if mqtt_topic.endswith(_TELEMETRY) and mqtt_topic.startswith(_ROOT):
            machine_id = mqtt_topic[_ROOT_LEN:-len(_TELEMETRY)]
            result = self._decode_telemetry(payload, received_ms)
            if type(result) is Telemetry:
                if result.machine_id == machine_id:
                    record = _record(Record, (self._telemetry, payload, machine_id, result.ts,
                                              [(INGEST_HEADER, b"%d" % received_ms)]))
                    return _record(Routed, (Kind.TELEMETRY, [record], []))
                result = self._mismatch(payload, result.machine_id, mqtt_topic)
            assert isinstance(result, Rejected)
            return Routed(Kind.TELEMETRY, [self.dead_letter(result, mqtt_topic, Kind.TELEMETRY, received_ms)],
                          [str(result.reason)])
        kind, ident = parse_topic(mqtt_topic)
        if kind is Kind.BATCH:
            return self._route_batch(mqtt_topic, ident, payload, received_ms)
        if kind is Kind.MAINTENANCE:
            event = self.decoder.maintenance(payload, received_ms)
            if isinstance(event, Rejected):
                bad = event
            elif event.machine_id != ident:
                bad = self._mismatch(payload, event.machine_id, mqtt_topic)
            else:
                record = Record(self.topics.maintenance, payload, event.machine_id, event.ts,
                                [(INGEST_HEADER, b"%d" % received_ms)])
                return Routed(kind, [record], [])
            return Routed(kind, [self.dead_letter(bad, mqtt_topic, kind, received_ms)], [str(bad.reason)])
        # A telemetry topic with a malformed layout (e.g. an empty level), or any other topic.
        bad = Rejected(Reason.TOPIC_MISMATCH, f"MQTT topic {mqtt_topic!r} is not a Forewarn inbound topic", payload)
        return Routed(kind, [self.dead_letter(bad, mqtt_topic, kind, received_ms)], [str(bad.reason)])

    def _route_batch(self, mqtt_topic: str, gateway: str, payload: bytes, received_ms: int) -> Routed:
        gateway_id, good, bad = self.decoder.batch(payload, received_ms)
        if gateway_id is None:
            return Routed(Kind.BATCH, [self.dead_letter(r, mqtt_topic, Kind.BATCH, received_ms) for r in bad],
                          [str(r.reason) for r in bad])
        if gateway_id != gateway:
            rejected = self._mismatch(payload, gateway_id, mqtt_topic)
            return Routed(Kind.BATCH, [self.dead_letter(rejected, mqtt_topic, Kind.BATCH, received_ms)],
                          [str(rejected.reason)])
        site_prefix = gateway.partition("/")[0] + "/"
        headers: Headers = [(INGEST_HEADER, b"%d" % received_ms)]
        telemetry = self._telemetry
        records: list[Record] = []
        reasons: list[str] = []
        for reading in good:
            raw = encode(reading)
            if reading.machine_id.startswith(site_prefix):
                records.append(_record(Record, (telemetry, raw, reading.machine_id, reading.ts, headers)))
            else:
                bad.append(self._mismatch(raw, reading.machine_id, mqtt_topic))
        for rejected in bad:
            records.append(self.dead_letter(rejected, mqtt_topic, Kind.READING, received_ms))
            reasons.append(str(rejected.reason))
        return _record(Routed, (Kind.BATCH, records, reasons))

    def internal_error(self, mqtt_topic: str, payload: bytes, received_ms: int) -> Routed:
        """The dead-letter record for a payload routing failed on unexpectedly (a bug, not bad
        data); call it from the ``except`` block, which it logs with its traceback."""
        log.exception("routing failed for a message on %s; sending it to the dead-letter topic", mqtt_topic)
        bad = Rejected(Reason.BAD_VALUE, "internal error while routing; see the bridge's log", payload)
        return Routed(Kind.UNKNOWN, [self.dead_letter(bad, mqtt_topic, Kind.UNKNOWN, received_ms)], [str(bad.reason)])

    def route_dead_letter(self, mqtt_topic: str, kind: str, payload: bytes, received_ms: int) -> Routed:
        """Re-validate a dead letter of any origin (for ``dlq replay``): same checks as on arrival.

        Telemetry, batches and maintenance events are routed like a fresh message on
        ``mqtt_topic`` (a scoring worker's or the edge's letter names the topic its machine
        publishes on); a reading of a batch is checked against its gateway's site; the edge's
        predictions and alerts are decoded as such and go back to their topics, keyed by machine.
        """
        if kind in (Kind.PREDICTION, Kind.ALERT):
            return self._route_output(mqtt_topic, Kind(kind), payload)
        if kind == Kind.READING:
            _kind, gateway = parse_topic(mqtt_topic)
            site_prefix = gateway.partition("/")[0] + "/"
            result = self._decode_telemetry(payload, received_ms)
            if isinstance(result, Rejected):
                return Routed(Kind.READING, [], [str(result.reason)])
            if not result.machine_id.startswith(site_prefix):
                return Routed(Kind.READING, [], [str(Reason.TOPIC_MISMATCH)])
            record = Record(self._telemetry, payload, result.machine_id, result.ts,
                            [(INGEST_HEADER, b"%d" % received_ms)])
            return Routed(Kind.READING, [record], [])
        routed = self.route(mqtt_topic, payload, received_ms)
        dlq = self.topics.dlq
        return Routed(routed.kind, [r for r in routed.records if r.topic != dlq], routed.rejected)

    def _route_output(self, mqtt_topic: str, kind: Kind, payload: bytes) -> Routed:
        output: Prediction | Alert
        try:
            if kind is Kind.PREDICTION:
                output, topic = msgspec.json.decode(payload, type=Prediction), self.topics.predictions
            else:
                output, topic = msgspec.json.decode(payload, type=Alert), self.topics.alerts
        except msgspec.ValidationError:
            return Routed(kind, [], [str(Reason.WRONG_TYPE)])
        except msgspec.DecodeError:
            return Routed(kind, [], [str(Reason.NOT_JSON)])
        expected = (prediction_topic if kind is Kind.PREDICTION else alert_topic)(output.machine_id)
        if mqtt_topic != expected:
            return Routed(kind, [], [str(Reason.TOPIC_MISMATCH)])
        return Routed(kind, [Record(topic, payload, output.machine_id, output.ts, [])], [])
