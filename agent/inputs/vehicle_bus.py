"""The car as the agent hears it on CAN: the matrix decoded, the vehicle state kept, the VIN
and the fault memory read over UDS.

CAN frames arrive on the event loop (``CanInput``). The CONNECT button's samples go to the
caller's ``on_button``; the driver's category and the cyclic status frames go into
:class:`VehicleState`. A change in the gateway's active DTC count starts a UDS read of the
fault memory, which never delays a call (SPEC §4).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

import can

from agent.config import CanConfig
from agent.core.frames import (
    CONNECT_LED,
    RECEIVED_IDS,
    ButtonFrame,
    ButtonState,
    CategoryFrame,
    LedMode,
    Matrix,
    Rejected,
    SafetyStatus,
    TyrePressure,
    VehicleStatus,
)
from agent.core.request import VehicleProfile
from agent.core.vehicle import VehicleState
from agent.inputs.can_bus import CanInput
from agent.inputs.uds import RESPONSE_ID as UDS_RESPONSE_ID
from agent.inputs.uds import UdsClient, UdsError

log = logging.getLogger("agent")

DTC_TIMEOUT_S = 0.3


class VehicleBus:
    def __init__(
        self,
        can_config: CanConfig,
        vehicle: VehicleProfile,
        *,
        on_button: Callable[[ButtonState, float], None],
        on_state: Callable[[str], None],
        now_utc: Callable[[], datetime],
    ) -> None:
        self.configured_vin = vehicle.vin
        self.vin = vehicle.vin
        self.vin_source = "config"
        self.matrix = Matrix.from_file(can_config.dbc)
        self.vehicle = VehicleState()
        self.immobilised_since: datetime | None = None  # SAFETY_STATUS Immobilised, wall time
        self.counters: dict[str, int] = {}
        self.can = CanInput(
            can_config,
            [*RECEIVED_IDS, UDS_RESPONSE_ID],
            self._on_can,
            on_state,
            on_recovered=self._on_can_recovered,
        )
        self.uds = UdsClient(self.can.send)
        self._on_button = on_button
        self._on_state = on_state
        self._now_utc = now_utc
        self._dtc_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # the last bytes and decoding of VEHICLE_STATUS, TYRE_PRESSURE, SAFETY_STATUS
        self._cyclic: dict[int, tuple[bytes, VehicleStatus | TyrePressure | SafetyStatus]] = {}

    def _count(self, name: str) -> int:
        self.counters[name] = self.counters.get(name, 0) + 1
        return self.counters[name]

    def send_led(self, mode: LedMode) -> None:
        self.can.send(CONNECT_LED, self.matrix.encode_led(mode))

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.can.run()

    def _on_can(self, message: can.Message) -> None:
        if message.arbitration_id == UDS_RESPONSE_ID:
            self.uds.feed(message)
            return
        now = time.monotonic()
        frame_id, data = message.arbitration_id, bytes(message.data)
        cached = self._cyclic.get(frame_id)
        if cached is not None and cached[0] == data:  # cyclic status, unchanged: no decode
            self.vehicle.update(cached[1], now)
            return
        frame = self.matrix.decode(frame_id, data)
        if isinstance(frame, Rejected):
            if self._count(f"can_{frame.reason}") == 1:
                log.warning("ignored CAN frame 0x%03X: %s", frame.frame_id, frame.reason)
            return
        if isinstance(frame, ButtonFrame):
            self._on_button(frame.state, now)
        elif isinstance(frame, CategoryFrame):
            self.vehicle.category = frame.category
        else:
            if isinstance(frame, SafetyStatus):
                if frame.immobilised and self.immobilised_since is None:
                    self.immobilised_since = self._now_utc()
                elif not frame.immobilised:
                    self.immobilised_since = None
                previous = self.vehicle.safety
                if previous is None or previous.active_dtc_count != frame.active_dtc_count:
                    self.read_dtcs()  # the gateway's fault memory changed
            self._cyclic[frame_id] = (data, frame)
            self.vehicle.update(frame, now)

    def _on_can_recovered(self) -> None:
        # Back from bus-off or a link down: frames were missed, so the next alive counter may
        # repeat the last one seen by chance. Start the E2E receivers afresh.
        self.matrix.reset_counters()
        self._count("e2e_resets")

    # -- UDS: VIN at start-up, DTCs when they change and at every call ----------------------

    async def read_vin(self) -> None:
        vin = await self.uds.read_vin_with_retry(timeout=1.0)
        if vin != self.configured_vin:
            self._count("vin_mismatch")
            log.warning(
                "the gateway's VIN %s differs from the configured %s", vin, self.configured_vin
            )
        else:
            log.info("VIN confirmed by the gateway")
        self.vin, self.vin_source = vin, "uds"
        self.read_dtcs()

    def read_dtcs(self) -> None:
        """Start a DTC read unless one runs; it never delays a request (SPEC §4: at once)."""
        if self._dtc_task is not None and not self._dtc_task.done():
            return
        if self._loop is None:
            return
        self._dtc_task = self._loop.create_task(self._dtcs(), name="uds-dtcs")

    async def _dtcs(self) -> None:
        try:
            dtcs = await self.uds.read_dtcs(timeout=DTC_TIMEOUT_S)
        except UdsError as exc:
            self._count("dtc_read_failures")
            log.debug("DTC read failed: %s", exc)
            return
        if dtcs != self.vehicle.dtcs:
            self.vehicle.dtcs = dtcs
            log.info("%d DTC(s) stored in the gateway", len(dtcs))
