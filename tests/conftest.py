"""Shared fixtures: real peers on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from gpsfake import gpsfake_gpsd
from peers import require

from hw_sim.gpsd import FakeGpsd, load_route, route_to_nmea
from hw_sim.mosquitto import Mosquitto


@pytest_asyncio.fixture
async def mosquitto() -> AsyncIterator[Mosquitto]:
    """A real Mosquitto on a free loopback port, with persistence like a production broker."""
    require("mosquitto")
    async with Mosquitto() as broker:
        yield broker


@pytest_asyncio.fixture
async def fake_gpsd() -> AsyncIterator[FakeGpsd]:
    async with FakeGpsd(interval=0.2) as gpsd:
        yield gpsd


@pytest.fixture
def real_gpsd(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """Real gpsd fed by gpsfake with the simulator's route as NMEA: ``(host, port)``."""
    workdir = tmp_path / "gpsfake"
    workdir.mkdir()
    with gpsfake_gpsd(route_to_nmea(load_route()), workdir) as address:
        yield address
