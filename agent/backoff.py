"""Capped exponential backoff with full jitter (the AWS architecture blog's "Full Jitter")."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff_delays(base: float, cap: float, rng: random.Random | None = None) -> Iterator[float]:
    """Yield delays forever: attempt n waits uniform(0, min(cap, base * 2**n)) seconds."""
    if base <= 0 or cap < base:
        raise ValueError("backoff needs 0 < base <= cap")
    rand = rng or random.Random()
    attempt = 0
    while True:
        ceiling = min(cap, base * (2**attempt))
        yield rand.uniform(0, ceiling)
        if ceiling < cap:
            attempt += 1
