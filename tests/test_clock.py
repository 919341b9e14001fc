"""A board without a real-time clock (issue 15): the agent as a real process whose wall clock
says 2001 and then jumps ten years, while gpsd serves the true time and the monotonic and boot
clocks run on (tests/clockshift.py, an LD_PRELOAD shim; nothing in the agent is patched).

And the broker's certificate refused on its dates while the clock is untrusted: a real TLS
handshake against Mosquitto, reported as a clock problem.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clockshift import ShiftedClock, build
from test_faults import close_pipes, read_line, start_child

from agent.core.clock import parse_rfc3339
from hw_sim.backend import SimulatedBackend
from hw_sim.gpsd import FakeGpsd
from hw_sim.mosquitto import Mosquitto
from hw_sim.scenario import VIN

pytestmark = pytest.mark.asyncio

BOARD_BOOT = datetime(2001, 1, 1, tzinfo=UTC)  # what the RTC-less board's clock says
TEN_YEARS = 10 * 365.25 * 86400


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShiftedClock]:
    yield build(tmp_path_factory.mktemp("clockshift"))


async def stop_child(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(child.wait, 20) == 0  # a clean stop exits 0
    close_pipes(child)


async def test_a_board_at_2001_takes_gps_time_and_a_ten_year_jump_purges_no_pending_call(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd, shim: ShiftedClock
) -> None:
    shim.set_wall(BOARD_BOOT)
    async with SimulatedBackend("127.0.0.1", mosquitto.port) as backend:
        await mosquitto.stop()  # the call stays pending
        child = start_child(tmp_path, mosquitto.port, fake_gpsd.port, "press", shim.env())
        try:
            incident_id = (await read_line(child, "STORED", timeout=30)).split()[1]
            stored = time.time()  # true time, ~0.2 s after the hold threshold
            shim.jump(TEN_YEARS)  # NTP or chrony steps the clock: still not trusted (2011)
            assert await read_line(child, "STEPPED", timeout=20) == "STEPPED 1"
        finally:
            await stop_child(child)
        await mosquitto.start()
        child = start_child(tmp_path, mosquitto.port, fake_gpsd.port, "resume", shim.env())
        try:
            [request] = await backend.wait_for("request", 1, timeout=30)
            await backend.wait_status(VIN, "clock", "gps", timeout=20)
            status = backend.status[VIN]
        finally:
            await stop_child(child)
    assert request.payload["incident_id"] == incident_id
    created = parse_rfc3339(request.payload["created_at"]).timestamp()
    assert abs(created - stored) < 1.0, request.payload["created_at"]
    fix_time = request.payload["location"]["fix_time"]
    assert fix_time is not None and abs(parse_rfc3339(fix_time).timestamp() - stored) < 5.0
    since = parse_rfc3339(status["since"]).timestamp()  # the second run's start, by GPS time
    assert stored < since < time.time()
    log = (tmp_path / "press.log").read_text()
    assert "wall clock: GPS time" in log and "before the build date" in log
    assert "the system clock was stepped by +315576000 s" in log
    assert "purged" not in log + (tmp_path / "resume.log").read_text()
