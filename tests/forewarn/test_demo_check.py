from __future__ import annotations

from forewarn.demo import _warned_failures


def test_an_alert_counts_only_for_the_run_it_was_opened_in() -> None:
    failures = [("s/a", 100), ("s/a", 300), ("s/b", 250)]
    opened = {"s/a": [90], "s/b": [260]}
    # s/a's alert at 90 warns its failure at 100, not the next one at 300; s/b's came too late.
    assert _warned_failures(failures, opened) == 1
    assert _warned_failures(failures, {"s/a": [90, 150]}) == 2
    assert _warned_failures([], {"s/a": [1]}) == 0
