"""One simulated installation: the real agent wired to the simulated car, LED and backend.

Used by ``hw-sim demo``, the integration tests and the benchmarks, so all three
exercise the same path: a TOML file loaded through the real config loader, the real agent on a
python-can bus, the simulated car and roof module on the same bus, the backend on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from agent import config as config_module
from agent.inputs.can_bus import open_bus
from agent.inputs.uds import REQUEST_ID
from hw_sim.backend import SimulatedBackend
from hw_sim.car import LedObserver, SimulatedCar, dbc_path, open_sim_bus
from hw_sim.ecu import SimulatedEcu
from hw_sim.matrix import LedMode
from hw_sim.observed import ObservedAgent as Agent
from hw_sim.service import Service

VIN = "YSMFD3KA5PL012345"
COVERAGE_PROFILE = dbc_path().parent / "coverage" / "polestar.toml"
CONTACT = {
    "name": "Anna Muster",
    "phone": "+41 79 123 45 67",
    "email": "anna.muster@example.ch",
    "street": "Bahnhofstrasse 1",
    "postal_code": "3011",
    "city": "Bern",
    "country": "CH",
}
VEHICLE = {
    "registration_plate": "BE 123456",
    "registration_country": "CH",
    "model": "Polestar 2",
    "colour": "Snow",
    "first_registration": "2024-03-15",
}


def config_text(
    state_dir: Path,
    mqtt_port: int,
    gpsd_port: int,
    *,
    interface: str = "virtual",
    channel: str = "connect-sim",
    protocol: str = "5",
) -> str:
    """A complete configuration for a simulated installation on loopback."""
    c, v = CONTACT, VEHICLE
    return f"""\
[can]
interface = "{interface}"
channel = "{channel}"
dbc = "{dbc_path()}"

[gpsd]
host = "127.0.0.1"
port = {gpsd_port}

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
protocol = "{protocol}"
tls = false
allow_insecure = true

[vehicle]
vin = "{VIN}"
registration_plate = "{v["registration_plate"]}"
registration_country = "{v["registration_country"]}"
model = "{v["model"]}"
colour = "{v["colour"]}"
first_registration = {v["first_registration"]}

[contact]
name = "{c["name"]}"
phone = "{c["phone"]}"
email = "{c["email"]}"

[contact.address]
street = "{c["street"]}"
postal_code = "{c["postal_code"]}"
city = "{c["city"]}"
country = "{c["country"]}"

[state]
directory = "{state_dir}"

[coverage]
profile = "{COVERAGE_PROFILE}"
"""


class Scenario(Service):
    """``async with Scenario(dir, mqtt_port, gpsd_port) as s:`` -> s.agent, s.car, s.led, s.backend.

    On entry the agent runs, its LED shows ``ready`` and its status is ``online``. With
    ``car=False`` the simulated car sends nothing (another sender, e.g. a replayed trace, plays
    the car on ``s.channel``) and entry waits only for ``online``: the LED is ``ready`` once a
    button frame has arrived.
    """

    def __init__(
        self,
        directory: Path,
        mqtt_port: int,
        gpsd_port: int,
        *,
        interface: str = "virtual",
        channel: str | None = None,
        protocol: str = "5",
        overrides: Mapping[str, str] | None = None,
        auto_ack: str | None = "received",
        ecu: bool = True,
        ecu_vin: str = VIN,
        backend_port: int | None = None,  # the backend's own way to the broker (not a link's)
        car: bool = True,
        ready_s: float = 10.0,  # how long entry waits for the LED and the status
    ) -> None:
        self.car_running = car
        self.ready_s = ready_s
        self.directory = Path(directory)
        self.channel = channel or f"connect-sim-{os.getpid()}-{id(self)}"
        self.interface = interface
        self.config_path = self.directory / "agent.toml"
        self.config_path.write_text(
            config_text(
                self.directory / "state",
                mqtt_port,
                gpsd_port,
                interface=interface,
                channel=self.channel,
                protocol=protocol,
            )
        )
        self.config = config_module.load(self.config_path, environ={}, overrides=overrides)
        self.agent = Agent(self.config)
        self.backend = SimulatedBackend(
            "127.0.0.1", backend_port or mqtt_port, protocol=protocol, auto_ack=auto_ack
        )
        self.bus = open_sim_bus(interface, self.channel)
        self.car = SimulatedCar(self.bus)
        self.led = LedObserver(self.bus)
        self.ecu_bus = open_bus(interface, self.channel, 500_000, [REQUEST_ID]) if ecu else None
        self.ecu = SimulatedEcu(self.ecu_bus, vin=ecu_vin) if self.ecu_bus is not None else None
        self.stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the simulators and the agent; returns once the agent is ready and online."""
        await self.led.start()
        if self.ecu is not None:
            await self.ecu.start()
        await self.backend.start()
        if self.car_running:
            await self.car.start()
        self._task = asyncio.create_task(self.agent.run(self.stop), name="agent")
        try:
            if self.car_running:
                await self.led.wait_for(LedMode.READY, timeout=self.ready_s)
            await self.backend.wait_status(VIN, "state", "online", timeout=self.ready_s)
        except BaseException:
            await self.aclose()
            raise

    async def stop_agent(self, timeout: float = 15.0) -> None:
        """Stop the agent the way SIGTERM does and wait for it to finish."""
        self.stop.set()
        task, self._task = self._task, None
        if task is not None:
            async with asyncio.timeout(timeout):
                await task

    async def restart_agent(self) -> None:
        """Stop the agent as SIGTERM does and start a new one on the same state and config,
        as systemd would; returns once it is online again."""
        await self.stop_agent()
        self.stop = asyncio.Event()
        self.agent = Agent(self.config)
        self._task = asyncio.create_task(self.agent.run(self.stop), name="agent")
        await self.agent.started.wait()
        await self.agent.wait_until(lambda: self.agent.uplink.connected, 15)

    async def aclose(self) -> None:
        """Stop the agent, then the simulators, and close the buses (safe to call twice)."""
        try:
            await self.stop_agent()
        finally:
            await self.car.aclose()
            await self.led.aclose()
            if self.ecu is not None:
                await self.ecu.aclose()
            for bus in (self.bus, self.ecu_bus):
                if bus is not None:
                    with contextlib.suppress(Exception):
                        bus.shutdown()
            await self.backend.aclose()
