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
import logging
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from agent import config as config_module
from agent.app import Agent
from agent.core.frames import CONNECT_LED, ButtonState, LedMode
from agent.inputs.can_bus import open_bus
from agent.inputs.uds import REQUEST_ID
from bench.busgen import ThreadLoad, frame_mix
from bench.common import (
    BUS_RATES,
    MATRIX_SHARE,
    CpuMeter,
    Gpsd,
    Press,
    Series,
    Subscriber,
    attach_receipts,
    machine,
    mqtt_floor,
    repeat_presses,
    rss_kib,
    write_json,
)
from hw_sim.car import LedObserver, SimulatedCar
from hw_sim.ecu import SimulatedEcu
from hw_sim.mosquitto import Mosquitto, free_port
from hw_sim.scenario import Scenario, config_text

HOLD_MS = 100
CALL_TIMEOUT_S = 5.0


class Rig:
    """The agent and the simulated ECUs on one virtual bus, in this process."""

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
        self.stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sim_threads: list[int] = []

    async def __aenter__(self) -> Rig:
        before = {t.native_id for t in threading.enumerate()}
        self.led.start()
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
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop.set()
        if self._task is not None:
            async with asyncio.timeout(15):
                await self._task
        await self.car.aclose()
        self.led.stop()
        await self.ecu.aclose()
        self.bus.shutdown()
        self.ecu_bus.shutdown()

    def sim_threads(self) -> list[int]:
        """Native ids of the simulator's own threads: roof module reader, the ECU's threads."""
        return list(self._sim_threads)


async def press_once(agent: Agent, car: SimulatedCar, hold_s: float) -> Press:
    """Hold CONNECT until the agent starts the call; wait for delivery, close and LED ready."""
    k = len(agent.calls)
    pressed_at = time.monotonic()
    car.set_button(ButtonState.PRESSED)
    press = Press(pressed_at=pressed_at, hold_s=hold_s, threshold_at=pressed_at + hold_s)
    try:
        await agent.wait_until(lambda: len(agent.calls) > k, hold_s + CALL_TIMEOUT_S)
    except TimeoutError:
        return press  # a missed press
    finally:
        car.set_button(ButtonState.RELEASED)
    call = agent.calls[k]
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


async def presses(
    agent: Agent, car: SimulatedCar, hold_s: float, n: int, rng: random.Random
) -> list[Press]:
    return await repeat_presses(lambda: press_once(agent, car, hold_s), n, rng)


def progress(text: str) -> None:
    print(f"[in-process] {text}", file=sys.stderr, flush=True)


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
                agent, car = rig.agent, rig.car
                result["rss_kib_process_after_start"] = rss_kib()
                progress("warm-up")
                warm = await presses(agent, car, rig.hold_s, 5, rng)
                attach_receipts(warm, sub.records())
                size = max(
                    (r["bytes"] for r in sub.records() if r.get("kind") == "request"), default=2500
                )
                result["request_bytes"] = size

                progress(f"MQTT floor ({args.floor} round trips of {size} bytes)")
                result["mqtt_floor"] = await mqtt_floor(broker.port, sub, args.floor, size)

                progress(f"latency, {args.calls} calls")
                meter = CpuMeter(exclude=rig.sim_threads).start()
                latency = Series("latency")
                latency.presses = await presses(agent, car, rig.hold_s, args.calls, rng)
                latency.extra["agent_cpu_pct"] = meter.percent()
                latency.extra["machine_busy_pct"] = meter.busy_percent()
                attach_receipts(latency.presses, sub.records())
                result["latency"] = latency.result()

                progress(f"idle CPU, {args.idle_s:.0f} s")
                meter = CpuMeter(exclude=rig.sim_threads).start()
                await asyncio.sleep(args.idle_s)
                result["idle"] = {
                    "seconds": args.idle_s,
                    "agent_cpu_pct": meter.percent(),
                    "machine_busy_pct": meter.busy_percent(),
                }

                busload: dict[str, Any] = {}
                frames = frame_mix()
                for rate in args.rates:
                    progress(f"bus load {rate} frames/s, {args.load_calls} calls")
                    gen_bus = open_bus("virtual", rig.channel, 500_000, [CONNECT_LED])
                    load = ThreadLoad(gen_bus, rate, frames).start()
                    await asyncio.sleep(1.0)
                    gen_tid = load.native_id

                    def exclude(gen: int | None = gen_tid) -> Sequence[int]:
                        return [*rig.sim_threads(), *([gen] if gen else [])]

                    meter = CpuMeter(exclude=exclude).start()
                    series = Series(f"busload_{rate}")
                    series.presses = await presses(agent, car, rig.hold_s, args.load_calls, rng)
                    series.extra["agent_cpu_pct"] = meter.percent()
                    series.extra["machine_busy_pct"] = meter.busy_percent()
                    series.extra["generator"] = load.stop()
                    gen_bus.shutdown()
                    attach_receipts(series.presses, sub.records())
                    busload[str(rate)] = series.result()
                result["busload"] = busload
                result["busload_mix"] = {"matrix_share": MATRIX_SHARE, "frames": len(frames)}
                result["rss_kib_process_end"] = rss_kib()
                result["calls_total"] = len(agent.calls)
                result["agent_counters"] = dict(agent.counters) | dict(agent.can.counters)

            if args.scenario:
                progress(f"Scenario as the tests use it (backend in-process), {args.calls} calls")
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
        series.presses = await presses(sim.agent, sim.car, HOLD_MS / 1000, n, rng)
        attach_receipts(series.presses, sub.records())
        return series.result()


def parse_rates(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--load-calls", type=int, default=200)
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--floor", type=int, default=300)
    parser.add_argument("--rates", type=parse_rates, default=list(BUS_RATES))
    parser.add_argument("--scenario", action="store_true")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    result = asyncio.run(run(args))
    result["duration_s"] = round(time.monotonic() - t0, 1)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
