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
])
def test_fast_path_matches_the_contract_decoder(raw: bytes) -> None:
    worker = ScoringWorker(ScoringSettings())  # no network before start()
    fast, full = worker._decode_telemetry(raw), Decoder().telemetry(raw)
    if isinstance(full, Rejected):
        assert isinstance(fast, Rejected) and fast.reason == full.reason
    else:
        assert fast == full
