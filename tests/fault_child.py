"""A whole installation in a child process, for the crash tests: ``python fault_child.py
DIR MQTT_PORT GPSD_PORT press|resume``.

``press``: once gpsd gave a fix, hold CONNECT 2.2 s, print ``STORED <incident_id>`` once the
call is on disk, then keep running (the parent SIGKILLs or SIGTERMs it), printing
``STEPPED <messages pending>`` each time the agent has seen a step of the system clock and
dealt with it (tests/clockshift.py makes one). ``resume``: just run the agent (the parent
watches the backend, then sends SIGTERM).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import config
from hw_sim.car import SimulatedCar, open_sim_bus
from hw_sim.observed import ObservedAgent as Agent
from hw_sim.scenario import config_text


async def main(directory: Path, mqtt_port: int, gpsd_port: int, mode: str) -> None:
    channel = f"fault-child-{directory.name}"
    path = directory / "agent.toml"
    path.write_text(config_text(directory / "state", mqtt_port, gpsd_port, channel=channel))
    cfg = config.load(path, environ={}, overrides={"mqtt.reconnect_max_s": "0.5"})
    agent = Agent(cfg)
    stop = asyncio.Event()
    agent.install_signal_handlers(stop)
    bus = open_sim_bus("virtual", channel)
    try:
        async with asyncio.TaskGroup() as tg, SimulatedCar(bus) as car:
            tg.create_task(agent.run(stop))
            await agent.started.wait()
            await agent.wait_until(lambda: agent.can.state == "ok", 10)  # listening on CAN
            print("RUNNING", flush=True)
            reporter = None
            if mode == "press":
                await agent.wait_gps_fix(10)
                await car.hold(2200)  # the call is stored at the 2 s threshold, before release
                print(f"STORED {agent.calls[0].incident_id}", flush=True)
                reporter = asyncio.create_task(report_steps(agent), name="report-steps")
            await stop.wait()
            if reporter is not None:
                reporter.cancel()
    finally:
        bus.shutdown()


async def report_steps(agent: Agent) -> None:
    def steps() -> int:
        return agent.clock.counters.get("clock_steps", 0)

    while True:
        seen = steps()
        await agent.wait_until(lambda: steps() > seen, 3600)  # noqa: B023 - seen is this turn's
        # the step's handling (call_soon) ran before this task was woken
        print(f"STEPPED {agent.outbox.count()}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
