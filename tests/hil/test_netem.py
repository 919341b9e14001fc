"""A slow, lossy link made by the kernel itself: ``tc qdisc ... netem`` on the UML kernel's
loopback, between the agent and Mosquitto (issue 15). Every packet on ``lo`` is delayed and
some are lost, in both directions; TCP retransmits as it would over a cellular link.

Only in a kernel the suite starts itself (UML): netem on a real host's loopback would slow
every other process on it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from hilstack import Stack, run

from hw_sim.netem import in_uml

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def netem(spec: str) -> AsyncIterator[None]:
    """``spec``: netem's parameters, e.g. "delay 200ms loss 20%"; removed afterwards."""
    await run("tc", "qdisc", "add", "dev", "lo", "root", "netem", *spec.split())
    try:
        yield
    finally:
        await run("tc", "qdisc", "del", "dev", "lo", "root")


@pytest.mark.hil_press
@pytest.mark.skipif(not in_uml(), reason="netem on lo only in the UML kernel the suite starts")
@pytest.mark.parametrize("spec", ["delay 100ms 20ms loss 5%", "delay 200ms loss 20%"])
async def test_a_call_over_a_slow_lossy_link_is_delivered_once(stack: Stack, spec: str) -> None:
    async with netem(spec):
        qdisc = await run("tc", "qdisc", "show", "dev", "lo")
        assert "netem" in qdisc, qdisc
        await stack.hold(2200)
        held = time.monotonic()
        [received] = await stack.backend.wait_for("request", 1, timeout=60)
        incident = received.payload["incident_id"]
        status = await stack.wait_status(
            f"incident {incident} delivered and acknowledged",
            lambda s: s.get("open_incident") == incident and s.get("outbox_pending") == 0,
            timeout=60,
        )
    # a PUBACK takes at least the 200 ms round trip netem adds: the first loss probe (20 ms
    # after the request) went out on the kernel's TCP before it
    assert status["counters"].get("loss_probes", 0) >= 1, status
    requests = stack.backend.of_kind("request")
    keys = {(r.payload["incident_id"], r.payload["sequence"]) for r in requests}
    assert keys == {(incident, 1)}  # duplicates, if any, carry the same key
    assert stack.backend.invalid == []
    print(f"netem {spec}: request at the backend {received.at - held:.2f} s after the release")
