"""Reconnect backoff over a long outage, on a fast-forwarded clock (no real waiting)."""

from __future__ import annotations

import itertools
import random

import pytest

from agent.backoff import backoff_delays


@pytest.mark.parametrize("seed", range(20))
def test_an_outage_of_an_hour_keeps_trying_within_the_cap(seed: int) -> None:
    delays = backoff_delays(0.5, 30.0, random.Random(seed))  # the uplink's defaults
    clock, attempts = 0.0, 0
    for delay in delays:
        assert 0.0 <= delay <= 30.0
        clock += delay
        attempts += 1
        if clock >= 3600:
            break
    # never gives up, and full jitter averages 15 s at the cap: roughly 240 tries an hour
    assert attempts > 150


def test_the_ceiling_grows_exponentially_then_stays_at_the_cap() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b  # the ceiling itself

    ceilings = list(itertools.islice(backoff_delays(0.5, 30.0, Top()), 10))
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="backoff"):
        next(backoff_delays(0, 1))
    with pytest.raises(ValueError, match="backoff"):
        next(backoff_delays(2, 1))
