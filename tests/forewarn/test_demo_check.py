from __future__ import annotations

from forewarn.demo import INTERACTIVE_BEHIND_H, _behind_h, _warned_failures
from forewarn.settings import DemoOptions
from simulators.settings import LiveOptions


def test_an_alert_counts_only_for_the_run_it_was_opened_in() -> None:
    failures = [("s/a", 100), ("s/a", 300), ("s/b", 250)]
    opened = {"s/a": [90], "s/b": [260]}
    # s/a's alert at 90 warns its failure at 100, not the next one at 300; s/b's came too late.
    assert _warned_failures(failures, opened) == 1
    assert _warned_failures(failures, {"s/a": [90, 150]}) == 2
    assert _warned_failures([], {"s/a": [1]}) == 0


def test_the_simulated_clock_starts_far_enough_back_for_the_whole_check() -> None:
    check = DemoOptions(check=True, speed=120, minutes=5)
    assert _behind_h(check) * 3600 >= check.speed * check.minutes * 60  # never caught up during the check
    assert _behind_h(DemoOptions()) == INTERACTIVE_BEHIND_H
    for options in (check, DemoOptions(), DemoOptions(check=True, speed=100_000, minutes=600)):
        LiveOptions(behind_h=_behind_h(options))  # what the demo passes, the simulator takes
