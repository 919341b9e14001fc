"""A simulated car on any python-can bus: roof button module, gateway, TPMS, infotainment.

It sends what the real ECUs send (SPEC §2): CONNECT_BUTTON every 100 ms and on change with
CRC and alive counter, VEHICLE_STATUS, TYRE_PRESSURE and SAFETY_STATUS every second,
ASSIST_CATEGORY on change. Values are settable while it runs. :class:`LedObserver` watches the
agent's CONNECT_LED frames and checks their CRC and alive counter the way a roof module would.
Frames are built and read with :mod:`hw_sim.matrix`, never with the agent's codec.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import can

from agent.inputs.can_bus import BusReader, open_bus
from agent.waiters import Waiters
from hw_sim.button import SimulatedButton
from hw_sim.matrix import (
    ASSIST_CATEGORY,
    CONNECT_BUTTON,
    CONNECT_LED,
    DEFAULT_DBC,
    SAFETY_STATUS,
    TYRE_PRESSURE,
    VEHICLE_STATUS,
    ButtonState,
    LedMode,
    MatrixError,
    SafetyStatus,
    SimMatrix,
    TyrePressure,
    VehicleStatus,
)
from hw_sim.service import Service, cancel_tasks

log = logging.getLogger("hw_sim.car")

HEALTHY_STATUS = VehicleStatus(
    battery_12v_v=12.6,
    hv_soc_pct=64.5,
    range_km=312,
    ignition="off",
    trailer_connected=False,
    hazard_lights=True,
    doors_locked=False,
    key_detected=True,
    speed_kmh=0,
)
HEALTHY_TYRES = TyrePressure(fl=250, fr=252, rl=248, rr=250)
HEALTHY_SAFETY = SafetyStatus(
    airbag_deployed=False,
    crash_severity=0,
    alarm_triggered=False,
    tamper_detected=False,
    hv_thermal_event=False,
    immobilised=True,
    odometer_km=48_213,
    active_dtc_count=0,
)


def dbc_path() -> Path:
    """The matrix DBC, ``config/connect.dbc``, as package data (editable or not)."""
    return DEFAULT_DBC


class SimulatedCar(SimulatedButton, Service):
    """The ECUs around the agent. Use as ``async with SimulatedCar(bus) as car:``."""

    def __init__(self, bus: can.BusABC, matrix: SimMatrix | None = None) -> None:
        self.bus = bus
        self.matrix = matrix or SimMatrix(dbc_path())
        self.button = ButtonState.RELEASED
        self.status: VehicleStatus | None = HEALTHY_STATUS
        self.tyres: TyrePressure | None = HEALTHY_TYRES
        self.safety: SafetyStatus | None = HEALTHY_SAFETY
        self.category: str | None = None
        # the periods of SPEC §2, from the DBC's GenMsgCycleTime
        self.button_period_s = self.matrix.cycle_s(CONNECT_BUTTON) or 0.1
        self.status_period_s = self.matrix.cycle_s(VEHICLE_STATUS) or 1.0
        self.button_silent = False  # simulate a dead roof module
        self._tasks: list[asyncio.Task[None]] = []
        self.sent = 0

    async def start(self) -> None:
        """Send the cyclic frames from now on, until :meth:`aclose`."""
        if self._tasks:
            raise RuntimeError("the car is already running")
        self._tasks = [
            asyncio.create_task(self._cycle_button(), name="sim-button"),
            asyncio.create_task(self._cycle_status(), name="sim-status"),
        ]

    async def aclose(self) -> None:
        """Stop the cyclic frames (safe to call twice); the bus stays open, it is the caller's."""
        tasks, self._tasks = self._tasks, []
        await cancel_tasks(*tasks)

    def send(self, frame_id: int, data: bytes) -> None:
        try:
            self.bus.send(can.Message(arbitration_id=frame_id, data=data, is_extended_id=False))
            self.sent += 1
        except (can.CanError, OSError) as exc:
            log.debug("simulated car could not send 0x%03X: %s", frame_id, exc)

    # -- the button module ------------------------------------------------------------------

    def _send_button(self) -> None:
        self.send(CONNECT_BUTTON, self.matrix.encode_button(self.button))

    async def _cycle_button(self) -> None:
        while True:
            if not self.button_silent:
                self.send(CONNECT_BUTTON, self.matrix.encode_button(self.button))
            await asyncio.sleep(self.button_period_s)

    # -- gateway, TPMS, infotainment --------------------------------------------------------

    def set_category(self, category: str | None) -> None:
        self.category = category
        self.send(ASSIST_CATEGORY, self.matrix.encode_category(category))

    def set_status(self, **changes: Any) -> None:
        assert self.status is not None
        self.status = replace(self.status, **changes)
        self.send(VEHICLE_STATUS, self.matrix.encode_vehicle_status(self.status))

    def set_tyres(self, **changes: Any) -> None:
        assert self.tyres is not None
        self.tyres = replace(self.tyres, **changes)
        self.send(TYRE_PRESSURE, self.matrix.encode_tyres(self.tyres))

    def set_safety(self, **changes: Any) -> None:
        assert self.safety is not None
        self.safety = replace(self.safety, **changes)
        self.send(SAFETY_STATUS, self.matrix.encode_safety(self.safety))

    def send_all_status(self) -> None:
        if self.status is not None:
            self.send(VEHICLE_STATUS, self.matrix.encode_vehicle_status(self.status))
        if self.tyres is not None:
            self.send(TYRE_PRESSURE, self.matrix.encode_tyres(self.tyres))
        if self.safety is not None:
            self.send(SAFETY_STATUS, self.matrix.encode_safety(self.safety))

    async def _cycle_status(self) -> None:
        while True:
            self.send_all_status()
            await asyncio.sleep(self.status_period_s)


class LedObserver(Service):
    """Watches CONNECT_LED frames: the modes seen, with E2E checks like the roof module."""

    def __init__(self, bus: can.BusABC, matrix: SimMatrix | None = None) -> None:
        self.bus = bus
        self.matrix = matrix or SimMatrix(dbc_path())
        self.modes: list[tuple[float, LedMode]] = []  # changes only
        self.frames = 0
        self.bad_frames = 0
        self._waiters = Waiters()
        self._reader: BusReader | None = None

    @property
    def mode(self) -> LedMode | None:
        return self.modes[-1][1] if self.modes else None

    async def start(self) -> None:
        if self._reader is None:
            self._reader = BusReader(self.bus, self.on_message)

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None

    def on_message(self, message: can.Message) -> None:
        if message.arbitration_id != CONNECT_LED:
            return
        self.frames += 1
        try:
            mode = self.matrix.decode_led(bytes(message.data))
        except MatrixError:
            self.bad_frames += 1
            return
        if mode != self.mode:
            self.modes.append((time.monotonic(), mode))
            self._waiters.notify()

    async def wait_for(self, mode: LedMode, timeout: float = 10.0) -> float:
        """Wait until the LED shows ``mode``; returns the monotonic time it changed to it."""
        await self._waiters.wait(lambda: self.mode == mode, timeout)
        return self.modes[-1][0]

    async def next_change(self) -> None:
        """Wait for the next change (new LED mode / new message)."""
        await self._waiters.next()

    def sequence(self) -> list[str]:
        return [mode.name.lower() for _, mode in self.modes]


def open_sim_bus(interface: str, channel: str, *, receive_own: bool = False) -> can.BusABC:
    extra: dict[str, Any] = {}
    if interface == "virtual":
        extra["receive_own_messages"] = receive_own
    return open_bus(interface, channel, 500_000, None, **extra)


__all__ = [
    "ASSIST_CATEGORY",
    "HEALTHY_SAFETY",
    "HEALTHY_STATUS",
    "HEALTHY_TYRES",
    "LedObserver",
    "SimulatedCar",
    "dbc_path",
    "open_sim_bus",
]
