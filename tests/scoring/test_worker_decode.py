"""The worker's fast telemetry decode path gives the contract decoder's verdict."""

from __future__ import annotations

import pytest

from forewarn.contract import Decoder, Rejected
from scoring.settings import ScoringSettings
from scoring.worker import ScoringWorker

GOOD = b'{"v":1,"machine_id":"a/b","asset_type":"pump","ts":1764212345123,"seq":1,"sensors":{"x":1.5}}'


@pytest.mark.parametrize("raw", [
    GOOD,
    GOOD.replace(b"1.5", b"1e999"),
    GOOD.replace(b"1.5", b"NaN"),
    GOOD.replace(b'"v":1', b'"v":2'),
    GOOD.replace(b"1764212345123", b"12"),
    GOOD.replace(b'"seq":1', b'"seq":-1'),
    GOOD.replace(b"a/b", b"nope"),
    GOOD[:-1],
    GOOD.replace(b"1.5", b"1." + b"5" * 20_000),
    GOOD.replace(b"1.5", b"1e16"),
    GOOD.replace(b'"seq":1', b'"seq":9223372036854775813'),
    GOOD.replace(b"1764212345123", b"1764222345123"),  # ten thousand seconds after its arrival
])
def test_fast_path_matches_the_contract_decoder(raw: bytes) -> None:
    worker = ScoringWorker(ScoringSettings())  # no network before start()
    arrived = 1764212345123 + 1000
    fast, full = worker._decode_telemetry(raw, arrived), Decoder().telemetry(raw, arrived)
    if isinstance(full, Rejected):
        assert isinstance(fast, Rejected) and fast.reason == full.reason
    else:
        assert fast == full
