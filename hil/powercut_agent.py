"""The in-UML side of ``make powercut``: the whole agent, a held broker, a press, the LED.

usage: powercut_agent.py STATE_DIR RUN LOG [--expect ID[,ID...]] [--final]

hil/powercut_e2e.py boots this on the UML machine whose ``/dev/ubda`` (an ext4 image) is
mounted at STATE_DIR, and cuts the power while it runs. One boot:

1. The peers, all inside the machine: Mosquitto on loopback, the backend simulator
   (``hw_sim.backend.SimulatedBackend``) subscribed to it directly, ``hw_sim.link.Link`` between
   the agent and Mosquitto, a fake gpsd, and on ``vcan0`` the simulated car, its UDS ECU and an
   observer of the ``CONNECT_LED`` frames (as the roof module sees them).
2. The product: ``connect-agent run --config`` as its own process, its state directory
   ``STATE_DIR/agent`` on the ext4 of the block device (it refuses anything else), its MQTT port
   the link's. ``UP <seconds since it was started>`` once LED frames come (``calling`` while a
   call from before the cut is open) and the backend sees the status ``online``.
3. ``--expect``: the calls that showed ``calling`` before the last power cut. Each must reach
   the backend as a request with that incident_id and sequence 1 within POWERCUT_DELIVER_S
   (30 s): ``DELIVERED <id> <seconds since the agent was started>``, else ``MISSING <id>``.
   Every request the backend stores is reported (``REQUEST <id> <seq>``). The backend then
   closes each incident (ack ``closed``), so the LED goes back to ``ready``.
4. ``--final``: SIGTERM to the agent (``AGENT-EXIT <status>``), and stop. Otherwise the broker's
   answer is held: the link freezes (the agent's connection stays open and carries nothing, so
   no PUBACK can come; ``HELD``), the car holds CONNECT for 2.2 s, and once the LED frame shows
   ``calling`` and the agent logged the call's id: ``CALLING <id>``. Then it waits for the power
   cut (the host cuts 0-50 ms after it reads that line). A request that reached the backend
   while the link was held would make the run worthless: ``LEAK <id>``.

LOG is on hostfs and written as powercut_writer.py writes it (one write and fsync a line), so
the host reads each line at once and exactly what was written before the cut.

POWERCUT_FAULT (the harness cheats, to show the check fails; never in the product):
  tmpfs    STATE_DIR/agent is a fresh tmpfs on every boot, not the block device's ext4
  nosync   the agent runs with POWERCUT_NOSYNC_LIB as LD_PRELOAD: fsync and fdatasync
           return 0 and write nothing (built by the host from a few lines of C)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from powercut_writer import Report, mount_of

from agent.core.frames import LedMode
from agent.inputs.can_bus import open_bus
from agent.inputs.uds import REQUEST_ID
from hw_sim.backend import SimulatedBackend
from hw_sim.car import LedObserver, SimulatedCar, open_sim_bus
from hw_sim.ecu import SimulatedEcu
from hw_sim.gpsd import FakeGpsd
from hw_sim.link import Link
from hw_sim.mosquitto import Mosquitto
from hw_sim.scenario import VIN, config_text

FAULTS = ("", "tmpfs", "nosync")
CHANNEL = "vcan0"
HOLD_MS = 2200
UP_TIMEOUT_S = 60.0
CALLING_TIMEOUT_S = 20.0
WAIT_FOR_CUT_S = 60.0  # the host cuts within 50 ms; never wait for ever if it does not
STORED = re.compile(r"\bcall (\S+) sequence (\d+) stored\b")


class AgentProcess:
    """``connect-agent run`` with its stderr copied to a log and watched for stored calls."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.stored: list[tuple[str, int]] = []
        self.changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="agent-log")

    @classmethod
    async def start(cls, config: Path, log: Path, env: dict[str, str]) -> AgentProcess:
        binary = Path(sys.executable).parent / "connect-agent"
        process = await asyncio.create_subprocess_exec(
            str(binary),
            "run",
            "--config",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(process, log)

    async def _read(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        with self.log.open("ab") as sink:
            while raw := await stderr.readline():
                sink.write(raw)
                sink.flush()
                match = STORED.search(raw.decode(errors="replace"))
                if match:
                    self.stored.append((match.group(1), int(match.group(2))))
                    self.changed.set()

    async def stop(self, timeout: float = 20.0) -> int:
        if self.process.returncode is None:
            self.process.terminate()
        try:
            async with asyncio.timeout(timeout):
                rc = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            rc = await self.process.wait()
        with contextlib.suppress(Exception):
            await self._reader
        return rc


async def poll_until(predicate: Callable[[], bool], timeout: float, every: float = 0.02) -> bool:
    """True once ``predicate()`` holds, False after ``timeout``. The LED observer's and the
    backend's own waiters are not used: the host times the cut from the CALLING line, so it
    must follow the LED frame within a few ms, and polling every 2 ms bounds that."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)
    return True


def prepare_state(base: Path, fault: str) -> Path:
    state = base / "agent"
    state.mkdir(exist_ok=True)
    if fault == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(state)], check=True)
    dev, mnt, fstype = mount_of(state)
    want_ubd = fault != "tmpfs"
    if want_ubd and (fstype != "ext4" or not dev.startswith("/dev/ubd")):
        raise SystemExit(f"powercut_agent: {state} is on {fstype} ({dev} at {mnt}), not ext4/ubd")
    return state


async def run(base: Path, run_no: int, emit: Report, expect: list[str], final: bool) -> int:
    fault = os.environ.get("POWERCUT_FAULT", "")
    deliver_s = float(os.environ.get("POWERCUT_DELIVER_S", "30"))
    state = prepare_state(base, fault)
    work = Path("/run/powercut")
    work.mkdir(exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    agent_log = Path(emit.path).with_name(f"agent-{run_no:03d}.log")
    async with contextlib.AsyncExitStack() as stack:
        if fault == "tmpfs":  # init's unmount of the block device needs it gone
            stack.callback(subprocess.run, ["umount", str(state)], check=False)
        broker = await stack.enter_async_context(Mosquitto(persistence=False))
        link = await stack.enter_async_context(Link(broker.port))
        backend = await stack.enter_async_context(SimulatedBackend("127.0.0.1", broker.port))
        gpsd = await stack.enter_async_context(FakeGpsd(interval=0.5, loop=True))
        bus = open_sim_bus("socketcan", CHANNEL)
        stack.callback(bus.shutdown)
        ecu_bus = open_bus("socketcan", CHANNEL, 500_000, [REQUEST_ID])
        stack.callback(ecu_bus.shutdown)
        led = LedObserver(bus).start()
        stack.callback(led.stop)
        await stack.enter_async_context(SimulatedEcu(ecu_bus, vin=VIN))
        car = await stack.enter_async_context(SimulatedCar(bus))
        config = work / "agent.toml"
        config.touch(mode=0o600)  # it holds the driver's personal data, as in the car
        config.write_text(
            config_text(state, link.port, gpsd.port, interface="socketcan", channel=CHANNEL)
        )
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if fault == "nosync":
            env["LD_PRELOAD"] = os.environ["POWERCUT_NOSYNC_LIB"]
        agent = await AgentProcess.start(config, agent_log, env)
        spawned = time.monotonic()
        stack.push_async_callback(agent.stop)
        emit(f"STARTED fault={fault or 'none'} state={':'.join(mount_of(state))}")
        # Up: the LED frames come (``calling`` when a call is still open from before the cut)
        # and the backend sees the status ``online``.
        up_ok = await poll_until(lambda: led.mode is not None, UP_TIMEOUT_S)
        try:
            await backend.wait_status(VIN, "state", "online", timeout=UP_TIMEOUT_S)
        except TimeoutError:
            up_ok = False
        if not up_ok:
            emit(f"NOT-UP led={led.mode} exit={agent.process.returncode}")
            return 1
        emit(f"UP {time.monotonic() - spawned:.2f}")

        reported: set[tuple[str, int]] = set()

        def report_requests() -> None:
            for key in list(backend.requests):
                if key not in reported:
                    reported.add(key)
                    emit(f"REQUEST {key[0]} {key[1]}")

        for incident_id in expect:
            key = (incident_id, 1)
            got = await poll_until(lambda: key in backend.requests, deliver_s)  # noqa: B023
            report_requests()
            if got:
                emit(f"DELIVERED {incident_id} {time.monotonic() - spawned:.2f}")
                backend.ack(VIN, incident_id, "closed")
            else:
                emit(f"MISSING {incident_id}")
        report_requests()
        if not await poll_until(lambda: led.mode == LedMode.READY, UP_TIMEOUT_S):
            emit(f"NOT-READY led={led.mode}")  # the next press would not open a new call
            return 1
        if final:
            rc = await agent.stop()
            emit(f"AGENT-EXIT {rc}")
            return 0 if rc == 0 else 1

        frozen = link.freeze()
        emit(f"HELD {frozen}")
        hold = asyncio.create_task(car.hold(HOLD_MS), name="hold")
        stack.push_async_callback(lambda: asyncio.wait_for(hold, 10))
        seen = await poll_until(
            lambda: led.mode == LedMode.CALLING and bool(agent.stored), CALLING_TIMEOUT_S, 0.002
        )
        if not seen:
            emit(f"NO-CALLING led={led.mode} stored={agent.stored}")
            return 1
        incident_id, sequence = agent.stored[-1]
        emit(f"CALLING {incident_id} {sequence}")
        print(f"CALLING {incident_id}", flush=True)
        await asyncio.sleep(0.2)
        if any(key[0] == incident_id for key in backend.requests):
            emit(f"LEAK {incident_id}")
        await asyncio.sleep(WAIT_FOR_CUT_S)
        emit("NOT-CUT")
        return 1


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if not a.startswith("--")]
    expect: list[str] = []
    if "--expect" in argv:
        value = argv[argv.index("--expect") + 1]
        expect = [i for i in value.split(",") if i]
        args.remove(value)
    if len(args) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    base, run_no, log = Path(args[0]), int(args[1]), Path(args[2])
    if os.environ.get("POWERCUT_FAULT", "") not in FAULTS:
        print(f"powercut_agent: POWERCUT_FAULT must be one of {FAULTS}", file=sys.stderr)
        return 2
    if mount_of(log.parent)[2] != "hostfs":
        print(f"powercut_agent: the report {log} must be on hostfs", file=sys.stderr)
        return 2
    return asyncio.run(run(base, run_no, Report(log), expect, "--final" in argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
