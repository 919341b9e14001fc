"""Recording a CAN bus into a trace file, and the scene the shipped example trace holds.

``hw-sim record FILE`` writes what the bus carries with python-can's :class:`can.Logger` (the
format from the suffix: ``.log`` candump, ``.asc``, ``.blf``). With ``--scene`` it also runs the
simulated car on that bus and plays :func:`puncture_scene`, then stops: that is how
``hw_sim/data/traces/simulated-car.log`` was made::

    hw-sim record hw_sim/data/traces/simulated-car.log --interface virtual --channel vcan0 --scene

The tests drive the live car with the same :func:`puncture_scene`, so "the replayed trace gives
the same request as the live car" compares like with like.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import can

from hw_sim.car import SimulatedCar

log = logging.getLogger("hw_sim.recording")

#: The scene's steps, in seconds from the car's start.
SCENE_TYRE_AT_S = 1.2  # the rear left tyre loses pressure
SCENE_CATEGORY_AT_S = 1.5  # the driver picks "puncture" on the infotainment
SCENE_PRESS_AT_S = 2.0  # CONNECT pressed ...
SCENE_HOLD_MS = 2200  # ... and held this long (a call: SPEC §4's hold_ms is 2000)
SCENE_TAIL_S = 1.0  # cyclic frames after the release
SCENE_TYRE_KPA = 150
SCENE_CATEGORY = "puncture"


async def puncture_scene(car: SimulatedCar) -> None:
    """A few seconds of the car: cyclic frames, a flat tyre, the driver's category, a hold."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def at(offset_s: float) -> None:
        await asyncio.sleep(max(0.0, start + offset_s - loop.time()))

    await at(SCENE_TYRE_AT_S)
    car.set_tyres(rl=SCENE_TYRE_KPA)
    await at(SCENE_CATEGORY_AT_S)
    car.set_category(SCENE_CATEGORY)
    await at(SCENE_PRESS_AT_S)
    await car.hold(SCENE_HOLD_MS)
    await asyncio.sleep(SCENE_TAIL_S)


@contextlib.asynccontextmanager
async def recording(bus: can.BusABC, path: Path) -> AsyncIterator[can.Listener]:
    """Everything ``bus`` receives goes into ``path`` until the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer: Any = can.Logger(path)
    notifier = can.Notifier(bus, [writer], loop=asyncio.get_running_loop())
    try:
        yield writer
    finally:
        notifier.stop()
        writer.stop()


async def record(
    path: Path, recorder: can.BusABC, *, seconds: float | None, scene_bus: can.BusABC | None
) -> None:
    """Record ``recorder``'s bus into ``path``: for ``seconds`` (None: until cancelled), or
    while the simulated car plays :func:`puncture_scene` on ``scene_bus``."""
    async with recording(recorder, path):
        if scene_bus is None:
            if seconds is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(seconds)
            return
        async with SimulatedCar(scene_bus) as car:
            await puncture_scene(car)
        await asyncio.sleep(0.05)  # the last frames reach the recorder's socket
