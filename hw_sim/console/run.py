"""Entry points: ``hw-sim console`` (:func:`run_console`) and ``hw-sim demo --web``
(:func:`run_web_demo`). Both run until cancelled (Ctrl-C) and print the page's address."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hw_sim.backend import SimulatedBackend
from hw_sim.car import LedObserver, SimulatedCar, open_sim_bus
from hw_sim.console.server import ConsoleServer
from hw_sim.demo import log_to_stderr, say
from hw_sim.gpsd import FakeGpsd

if TYPE_CHECKING:
    from hw_sim.scenario import Scenario

__all__ = ["run_console", "run_web_demo", "web_demo"]

log = logging.getLogger("hw_sim.console")


async def run_console(
    host: str,
    port: int,
    broker_host: str,
    broker_port: int,
    *,
    root: str = "assistance/v1",
    protocol: str = "5",
    interface: str | None = None,
    channel: str | None = None,
    gpsd_port: int | None = None,
    hold_ms: int = 2000,
    client_id: str = "assistance-console-sim",
    ready: Callable[[ConsoleServer], None] | None = None,
) -> None:
    """The console against any broker, with its own simulated backend on it.

    With ``channel`` (and ``interface``, default socketcan) the car panel drives a simulated
    car on that CAN bus and shows the LED the agent sends there; with ``gpsd_port`` a fake gpsd
    listens on that port and the car panel steers its route. Without them the page is the
    operator's console alone. ``ready`` is called with the running server (tests, tools).
    """
    async with contextlib.AsyncExitStack() as stack:
        backend = await stack.enter_async_context(
            SimulatedBackend(
                broker_host,
                broker_port,
                root=root,
                protocol=protocol,
                auto_ack=None,
                client_id=client_id,
            )
        )
        car: SimulatedCar | None = None
        led: LedObserver | None = None
        bus_name: str | None = None
        if channel is not None:
            bus_interface = interface or "socketcan"
            bus = open_sim_bus(bus_interface, channel)
            stack.callback(bus.shutdown)
            led = await stack.enter_async_context(LedObserver(bus))
            car = await stack.enter_async_context(SimulatedCar(bus))
            bus_name = f"{bus_interface}:{channel}"
        gps: FakeGpsd | None = None
        if gpsd_port is not None:
            gps = await stack.enter_async_context(FakeGpsd(port=gpsd_port))
        console = await stack.enter_async_context(
            ConsoleServer(
                backend,
                car=car,
                led=led,
                gps=gps,
                host=host,
                port=port,
                hold_ms=hold_ms,
                bus=bus_name,
            )
        )
        say(f"broker:  {broker_host}:{broker_port} (MQTT {protocol}), topics {root}/+/+")
        if bus_name:
            say(f"car:     simulated car and LED on {bus_name}")
        if gps is not None:
            say(f"gpsd:    fake gpsd on 127.0.0.1:{gps.port}, route {gps.route.name!r}")
        say(f"console: {console.url}  (Ctrl-C to stop)")
        if ready is not None:
            ready(console)
        await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def web_demo(
    directory: Path,
    *,
    port: int = 8080,
    host: str = "127.0.0.1",
    embedded_broker: bool = False,
    protocol: str = "5",
    gps_interval: float = 1.0,
) -> AsyncIterator[tuple[ConsoleServer, Scenario]]:
    """The whole loop with the page: broker, fake gpsd, the agent + car + LED + backend of a
    :class:`~hw_sim.scenario.Scenario` (the operator answers by hand), and the console.

    Yields ``(console, scenario)``.
    """
    # hw_sim.demo holds the broker choice; imported here so hw_sim.console stays light
    from hw_sim.demo import any_broker  # noqa: PLC0415
    from hw_sim.scenario import Scenario  # noqa: PLC0415

    async with (
        any_broker(embedded_broker) as (broker_name, mqtt_port),
        FakeGpsd(interval=gps_interval) as gps,
        Scenario(directory, mqtt_port, gps.port, protocol=protocol, auto_ack=None) as sim,
        ConsoleServer(
            sim.backend,
            car=sim.car,
            led=sim.led,
            gps=gps,
            host=host,
            port=port,
            hold_ms=sim.config.button.hold_ms,
            cancel_window_s=sim.config.button.cancel_window_s,
            bus=f"{sim.interface}:{sim.channel}",
        ) as console,
    ):
        log.info("web demo: %s on port %d, fake gpsd on %d", broker_name, mqtt_port, gps.port)
        yield console, sim


async def run_web_demo(
    port: int = 8080,
    *,
    host: str = "127.0.0.1",
    embedded_broker: bool = False,
    protocol: str = "5",
    verbose: bool = False,
) -> None:
    """``hw-sim demo --web``: the whole loop and the page, until Ctrl-C."""
    log_to_stderr(verbose)
    with tempfile.TemporaryDirectory(prefix="connect-web-demo-") as tmp:
        async with web_demo(
            Path(tmp), port=port, host=host, embedded_broker=embedded_broker, protocol=protocol
        ) as (console, _):
            say("agent:   online on a simulated car driving the A1 near Bern")
            say(f"console: {console.url}  (Ctrl-C to stop)")
            say("         hold CONNECT for 2 s on the page; answer the request on the right")
            await asyncio.Event().wait()
