"""Every simulator in hw_sim has the Service lifecycle: ``async with``, ``aclose()`` twice."""

from __future__ import annotations

import uuid

import pytest

from agent.inputs.can_bus import open_bus
from agent.inputs.uds import REQUEST_ID
from hw_sim.backend import SimulatedBackend
from hw_sim.car import LedObserver, SimulatedCar
from hw_sim.ecu import SimulatedEcu
from hw_sim.scenario import Scenario
from hw_sim.serial_button import SerialButtonModule
from hw_sim.service import Service


@pytest.mark.parametrize(
    "cls", [SimulatedCar, LedObserver, SimulatedEcu, SerialButtonModule, SimulatedBackend, Scenario]
)
def test_is_a_service(cls: type) -> None:
    assert issubclass(cls, Service)


@pytest.mark.asyncio
async def test_car_and_ecu_close_twice() -> None:
    channel = f"lifecycle-{uuid.uuid4()}"
    bus = open_bus("virtual", channel, 500_000, None)
    ecu_bus = open_bus("virtual", channel, 500_000, [REQUEST_ID])
    try:
        async with SimulatedCar(bus) as car, SimulatedEcu(ecu_bus) as ecu:
            with pytest.raises(RuntimeError):
                await car.start()
            with pytest.raises(RuntimeError):
                await ecu.start()
        await car.aclose()
        await ecu.aclose()
        # closed, it can be started again: the same car after a restart
        async with car:
            pass
    finally:
        bus.shutdown()
        ecu_bus.shutdown()


@pytest.mark.asyncio
async def test_serial_module_closes_twice_and_takes_its_pty_with_it() -> None:
    async with SerialButtonModule() as module:
        assert module.port_path.startswith("/dev/")
        with pytest.raises(RuntimeError):
            await module.start()
    await module.aclose()
    with pytest.raises(RuntimeError):
        module.port_path  # noqa: B018 - the property raises once closed
