"""In-process: the real agent and the simulated ECUs on python-can's ``virtual`` bus.

    python -m bench.inprocess --out FILE [--calls 200] [--idle-s 30] [--rates 2000,4000,8000]

One process holds the agent (its TaskGroup on the event loop, its CAN reader thread) and the
simulated car, roof module and gateway ECU (UDS: the agent reads the VIN at start and the DTCs
at every call), as ``hw_sim.scenario.Scenario`` wires them, with two changes so that the
event loop does nothing but the agent's work and the car's: the backend is the raw subscriber
process (``bench.subscriber``, which acks ``closed`` at once), and the roof module's bus
filters for CONNECT_LED (as its controller would), so bus load is not forwarded to the event
loop by the simulator. Mosquitto and the fake gpsd run as processes of their own.

Each press: the car sends CONNECT pressed; when the agent reaches the hold threshold
(``CallRecord.held_at``) it stores and publishes the request; the car releases; the raw
subscriber records the arrival and acks ``closed``; the agent's LED goes back to ``ready``;
then a random pause of 10-60 ms and the next press. Latency: threshold -> subscriber, and
threshold -> the agent's PUBACK (``Agent.deliveries``).

CPU %: utime+stime of this process minus the threads of the bus load, the roof module's
reader and the ECU (/proc/self/task/<tid>/stat): the agent plus the simulated car's ~13
frames/s (sent from the event loop). The simulator threads still share the GIL with the agent.
``--scenario`` also runs the plain latency through ``Scenario`` itself (backend in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from agent import config as config_module
from agent.core.frames import CONNECT_LED
from agent.inputs.can_bus import open_bus
from agent.inputs.uds import REQUEST_ID
from bench.busgen import ThreadLoad, frame_mix
from bench.common import (
    MATRIX_SHARE,
    CpuMeter,
    Gpsd,
    Press,
    Series,
    Subscriber,
    attach_receipts,
    machine,
    repeat_presses,
    rss_kib,
)
from bench.driver import (
    CALL_TIMEOUT_S,
    HOLD_MS,
    LoadRun,
    no_profile,
    phase_parser,
    press_until_call,
    progress,
    run_and_write,
    run_phases,
)
from hw_sim.car import LedObserver, SimulatedCar
from hw_sim.ecu import SimulatedEcu
from hw_sim.matrix import LedMode
from hw_sim.mosquitto import Mosquitto, free_port
from hw_sim.observed import ObservedAgent as Agent
from hw_sim.scenario import Scenario, config_text
from hw_sim.service import Service


class Rig(Service):
    """The agent and the simulated ECUs on one virtual bus, in this process: a ``Target``."""

    name = "in-process"

    def __init__(self, directory: Path, mqtt_port: int, gpsd_port: int, hold_ms: int) -> None:
        channel = f"bench-{os.getpid()}"
        path = directory / "agent.toml"
        path.write_text(config_text(directory / "state", mqtt_port, gpsd_port, channel=channel))
        cfg = config_module.load(path, environ={}, overrides={"button.hold_ms": str(hold_ms)})
        self.agent = Agent(cfg)
        self.hold_s = hold_ms / 1000
        self.channel = channel
        self.bus = open_bus("virtual", channel, 500_000, [CONNECT_LED], receive_own_messages=False)
        self.car = SimulatedCar(self.bus)
        self.led = LedObserver(self.bus)
        self.ecu_bus = open_bus("virtual", channel, 500_000, [REQUEST_ID])
        self.ecu = SimulatedEcu(self.ecu_bus)
        self.frames = frame_mix()
        self.stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sim_threads: list[int] = []

    async def start(self) -> None:
        before = {t.native_id for t in threading.enumerate()}
        await self.led.start()
        await self.ecu.start()
        self._sim_threads = [
            t.native_id
            for t in threading.enumerate()
            if t.native_id not in before and t.native_id is not None
        ]
        await self.car.start()
        self._task = asyncio.create_task(self.agent.run(self.stop), name="agent")
        agent = self.agent
        await agent.wait_until(
            lambda: agent.led_mode == LedMode.READY and agent.uplink.connected, timeout=15
        )
        if not await agent.wait_gps_fix(timeout=15):
            raise RuntimeError("no GPS fix from the fake gpsd")

    async def aclose(self) -> None:
        self.stop.set()
        task, self._task = self._task, None
        if task is not None:
            async with asyncio.timeout(15):
                await task
        await self.car.aclose()
        await self.led.aclose()
        await self.ecu.aclose()
        self.bus.shutdown()
        self.ecu_bus.shutdown()

    def sim_threads(self) -> list[int]:
        """Native ids of the simulator's own threads: roof module reader, the ECU's threads."""
        return list(self._sim_threads)

    # -- bench.driver.Target ----------------------------------------------------------------

    async def press(self) -> Press:
        return await press_once(self.agent, self.car, self.hold_s)

    def meter(self) -> CpuMeter:
        return CpuMeter(exclude=self.sim_threads).start()

    @contextlib.asynccontextmanager
    async def bus_load(self, rate: int) -> AsyncIterator[LoadRun]:
        gen_bus = open_bus("virtual", self.channel, 500_000, [CONNECT_LED])
        load = ThreadLoad(gen_bus, rate, self.frames).start()
        run: LoadRun | None = None
        try:
            await asyncio.sleep(1.0)
            gen_tid = load.native_id

            def exclude(gen: int | None = gen_tid) -> Sequence[int]:
                return [*self.sim_threads(), *([gen] if gen else [])]

            run = LoadRun(CpuMeter(exclude=exclude).start())
            yield run
        finally:
            report = load.stop()
            gen_bus.shutdown()
            if run is not None:
                run.report = report

    def profile(self, phase: str) -> contextlib.AbstractAsyncContextManager[None]:
        return no_profile(phase)

    def phase_done(self, calls: int) -> None:
        pass


async def press_once(agent: Agent, car: SimulatedCar, hold_s: float) -> Press:
    """Hold CONNECT until the agent starts the call; wait for delivery, close and LED ready."""
    press, call = await press_until_call(agent, car, hold_s)
    if call is None:
        return press  # a missed press
    press.incident_id, press.sequence = call.incident_id, call.sequence
    press.held_at_agent = press.threshold_at = call.held_at
    press.stored_at = call.stored_at
    key = ("request", call.incident_id, call.sequence)
    try:
        await agent.wait_until(
            lambda: (
                key in agent.deliveries
                and agent.incidents.incident is None
                and agent.led_mode == LedMode.READY
            ),
            CALL_TIMEOUT_S,
        )
    except TimeoutError:
        logging.getLogger("bench").warning("call %s not closed in time", call.incident_id)
    press.puback_at = agent.deliveries.get(key)
    return press


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(20240806)
    result: dict[str, Any] = {"machine": machine(), "hold_ms": HOLD_MS}
    with tempfile.TemporaryDirectory(prefix="bench-inproc-") as tmp:
        directory = Path(tmp)
        logging.basicConfig(
            filename=directory / "agent.log",
            level=logging.INFO,
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        )
        gpsd_port = free_port()
        async with (
            Mosquitto(persistence=False) as broker,
            Gpsd(gpsd_port),
            Subscriber(broker.port, directory / "subscriber.jsonl") as sub,
        ):
            result["rss_kib_process_before_agent"] = rss_kib()
            async with Rig(directory, broker.port, gpsd_port, HOLD_MS) as rig:
                agent = rig.agent
                result["rss_kib_process_after_start"] = rss_kib()
                phases, _ = await run_phases(rig, sub, broker.port, rng, args)
                result.update(phases)
                result["busload_mix"] = {"matrix_share": MATRIX_SHARE, "frames": len(rig.frames)}
                result["rss_kib_process_end"] = rss_kib()
                result["calls_total"] = len(agent.calls)
                result["agent_counters"] = dict(agent.counters) | dict(agent.can.counters)

            if args.scenario:
                progress(
                    rig.name,
                    f"Scenario as the tests use it (backend in-process), {args.calls} calls",
                )
                (directory / "scenario").mkdir()
                result["scenario"] = await scenario_latency(
                    directory / "scenario", (broker.port, gpsd_port), sub, args.calls, rng
                )
    return result


async def scenario_latency(
    directory: Path, ports: tuple[int, int], sub: Subscriber, n: int, rng: random.Random
) -> dict[str, Any]:
    """The plain latency through ``Scenario`` itself: its backend validates on this loop."""
    mqtt_port, gpsd_port = ports
    async with Scenario(
        directory,
        mqtt_port,
        gpsd_port,
        overrides={"button.hold_ms": str(HOLD_MS)},
        auto_ack="closed",
    ) as sim:
        await sim.agent.wait_gps_fix(timeout=15)
        series = Series("scenario")
        series.presses = await repeat_presses(
            lambda: press_once(sim.agent, sim.car, HOLD_MS / 1000), n, rng
        )
        attach_receipts(series.presses, sub.records())
        return series.result()


def main(argv: Sequence[str] | None = None) -> int:
    parser = phase_parser(__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="store_true")
    return run_and_write(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
