"""How much the message contract costs: decoding a ~300-byte reading, a batch of 100, and
encoding. Compared side by side with the standard library's json + a hand-written check,
the obvious alternative."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from forewarn.contract import Decoder, Telemetry, encode

READING = Telemetry(
    v=1, machine_id="site-a/pump-0042", asset_type="pump", ts=1764212345123, seq=1842,
    sensors={"bearing_temp_c": 71.2, "vib_rms_mm_s": 2.31, "flow_m3_h": 120.5, "pressure_bar": 6.2,
             "motor_current_a": 31.4, "speed_rpm": 2950.0, "seal_temp_c": 45.2, "suction_bar": 1.1,
             "discharge_temp_c": 38.7},
    settings={"load_pct": 80.0, "ambient_c": 21.5},
)


def per_call_us(fn: object, arg: bytes, n: int) -> float:
    call = fn  # type: ignore[assignment]
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            call(arg)  # type: ignore[operator]
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def stdlib_decode(raw: bytes) -> dict[str, object]:
    obj = json.loads(raw)
    for key in ("v", "machine_id", "asset_type", "ts", "seq", "sensors"):
        if key not in obj:
            raise ValueError(key)
    if not all(isinstance(x, float | int) and math.isfinite(x) for x in obj["sensors"].values()):
        raise ValueError("sensors")
    return obj  # type: ignore[no-any-return]


def main() -> None:
    decoder = Decoder()
    raw = encode(READING)
    batch = b'{"v":1,"gateway_id":"site-a/gw-1","readings":[' + b",".join([raw] * 100) + b"]}"
    decode_us = per_call_us(decoder.telemetry, raw, 100_000)
    batch_us = per_call_us(decoder.batch, batch, 2_000)
    encode_us = per_call_us(lambda _r: encode(READING), raw, 100_000)
    stdlib_us = per_call_us(stdlib_decode, raw, 100_000)
    write_result("contract", {
        "reading_bytes": len(raw),
        "decode_reading_us": round(decode_us, 3),
        "decode_batch_of_100_us": round(batch_us, 1),
        "batch_readings_per_s": round(100 / batch_us * 1e6),
        "encode_reading_us": round(encode_us, 3),
        "peer": "json.loads + hand-written checks",
        "peer_decode_reading_us": round(stdlib_us, 3),
        "speedup_vs_peer": round(stdlib_us / decode_us, 2),
    })


if __name__ == "__main__":
    main()
