"""UDS on real SocketCAN: ``hw-sim ecu`` (the gateway's server, can-isotp's threaded stack)
as its own process on the channel, read through the kernel.

Read twice: the agent's way (its CanInput socket with kernel filters, the UdsClient driving
can-isotp's transport logic from the event loop) and udsoncan's (its Client over can-isotp's
CanStack on another socket), the oracle. Both must give the values below, written out by
hand from SPEC §2 and the simulator's stored DTCs, not formatted by the agent's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import can
import pytest
from hilstack import Child, Settings, Stack, program
from uds_oracle import udsoncan_reads

from agent.config import CanConfig
from agent.inputs.can_bus import CanInput
from agent.inputs.uds import UdsClient
from hw_sim.car import dbc_path
from hw_sim.scenario import VIN

pytestmark = pytest.mark.asyncio

REQUEST_ID, RESPONSE_ID = 0x7E0, 0x7E8  # SPEC §2
GATEWAY_VIN = "YSMFD3KA5PL012345"
# (3-byte DTC, status) as the simulator stores them, and the agent's spelling of each
STORED = [(0x0A0F1C, 0x2F), (0xC10000, 0x09), (0x056200, 0x28)]
SPELLED = ["P0A0F-1C:2F", "U0100-00:09", "P0562-00:28"]
TIMEOUT_S = 10.0


@contextlib.asynccontextmanager
async def gateway(settings: Settings, directory: Path) -> AsyncIterator[Child]:
    s = settings
    ecu = await Child.spawn(
        "hw-sim ecu",
        [program("hw-sim"), "ecu", "--interface", s.interface, "--channel", s.channel],
        log=directory / "ecu.log",
    )
    try:
        await ecu.line("gateway ECU", timeout=30)
        yield ecu
    finally:
        code = await ecu.stop(signal.SIGINT, timeout=10)
        assert code == 0, f"hw-sim ecu exited {code}; {ecu.tail()}"


@contextlib.asynccontextmanager
async def agent_side(settings: Settings) -> AsyncIterator[UdsClient]:
    """The agent's wiring: one filtered socket, 0x7E8 frames fed to the UDS client."""
    up = asyncio.Event()
    holder: list[UdsClient] = []

    def on_message(message: can.Message) -> None:
        if message.arbitration_id == RESPONSE_ID:
            holder[0].feed(message)

    def on_state(state: str) -> None:
        if state == "ok":
            up.set()

    config = CanConfig(settings.interface, settings.channel, 500_000, dbc_path())
    bus = CanInput(config, [RESPONSE_ID], on_message, on_state)
    holder.append(UdsClient(bus.send))
    task = asyncio.create_task(bus.run(), name="agent-can")
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await up.wait()
        yield holder[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def oracle_reads(settings: Settings, mask: int) -> tuple[str, list[tuple[int, int]]]:
    """The oracle on its own socket through the kernel."""
    filters = [{"can_id": RESPONSE_ID, "can_mask": 0x7FF, "extended": False}]
    bus = can.Bus(interface=settings.interface, channel=settings.channel, can_filters=filters)
    try:
        return udsoncan_reads(bus, mask, timeout=3.0)
    finally:
        bus.shutdown()


@pytest.mark.hil_socketcan
async def test_the_agents_uds_client_and_udsoncan_read_the_same_from_the_gateway(
    hil_settings: Settings, tmp_path: Path
) -> None:
    async with gateway(hil_settings, tmp_path):
        async with agent_side(hil_settings) as uds:
            vin = await uds.read_vin(timeout=2.0)
            every = await uds.read_dtcs(mask=0xFF, timeout=2.0)
            failed = await uds.read_dtcs(mask=0x01, timeout=2.0)  # bit 0 testFailed
        assert uds.counters["answers"] == 3
        assert uds.counters["timeouts"] == uds.counters["isotp_errors"] == 0
        oracle_vin, oracle_every = await asyncio.to_thread(oracle_reads, hil_settings, 0xFF)
        _, oracle_failed = await asyncio.to_thread(oracle_reads, hil_settings, 0x01)

    assert vin == oracle_vin == GATEWAY_VIN
    assert oracle_every == STORED
    assert every == SPELLED
    # statuses 0x2F and 0x09 have bit 0 set, 0x28 has not
    assert oracle_failed == [STORED[0], STORED[1]]
    assert failed == [SPELLED[0], SPELLED[1]]


@pytest.mark.hil_ecu
@pytest.mark.hil_press
async def test_a_call_carries_the_vin_and_the_dtcs_read_from_the_gateway(stack: Stack) -> None:
    await stack.hold(2200)
    [received] = await stack.backend.wait_for("request", 1, timeout=15)
    request = received.payload
    assert (request["vehicle"]["vin"], request["vehicle"]["vin_source"]) == (VIN, "uds")
    assert request["vehicle_state"]["dtcs"] == SPELLED
    counters = stack.status()["counters"]
    assert counters.get("uds_answers", 0) >= 2  # the VIN and the DTCs
    assert "vin_mismatch" not in counters
