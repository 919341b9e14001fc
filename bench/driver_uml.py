"""On SocketCAN vcan0 (inside UML): the agent, the car and the bus load in separate processes.

    hil/run-in-uml.sh .venv/bin/python -m bench.driver_uml --out FILE [--calls 200] ...

Run where vcan0 exists, i.e. through ``hil/run-in-uml.sh`` (one CPU inside). This process is
the bench driver: the simulated car and roof module (``SimulatedCar`` and ``LedObserver`` on a
SocketCAN socket filtered for CONNECT_LED). Processes of their own: Mosquitto, the fake gpsd,
the raw subscriber (which acks ``closed``), the gateway ECU answering UDS (``hw-sim ecu``: the
agent reads the VIN at start and the DTCs at every call), the agent (``connect-agent run`` through
``bench.agent_proc``: monotonic log stamps, for its PUBACK times) and, for bus load,
``bench.busgen`` on a raw CAN socket.

Each press: the threshold is the time just before the first pressed frame was sent plus
``hold_ms``; the press is held until the agent logs the stored call (a missed press if it does
not within 5 s), then released; the driver waits for the PUBACK in the agent's log and for the
LED back at ``ready`` (the subscriber's ``closed`` ack), pauses 10-60 ms and presses again.

Also measured here, on the same agent process: exec -> READY (sd_notify) or first ``online``
status, VmRSS after start and after every phase (the calls add up to ``--total-calls``), the
agent's CPU % idle (cyclic traffic only) and under load, and paho's raw QoS-1 floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import can

from agent.core.frames import CONNECT_LED
from agent.inputs.can_bus import BusReader, open_bus
from agent.waiters import Waiters
from bench.agent_proc import AgentProcess
from bench.busgen import encode_frames, frame_mix
from bench.common import (
    MATRIX_SHARE,
    PYTHON,
    REPO,
    CpuMeter,
    Ecu,
    Gpsd,
    Press,
    Subscriber,
    machine,
    rss_kib,
    stop_process,
    wait_started,
)
from bench.driver import (
    CALL_TIMEOUT_S,
    HOLD_MS,
    LoadRun,
    phase_parser,
    press_until_call,
    presses,
    progress,
    run_and_write,
    run_phases,
)
from hw_sim.car import LedObserver, SimulatedCar
from hw_sim.matrix import LedMode
from hw_sim.mosquitto import Mosquitto, free_port
from hw_sim.scenario import config_text
from hw_sim.service import Service

CHANNEL = "vcan0"


class Car(Service):
    """The simulated car and roof module on SocketCAN, with a wake-up on every LED change.

    With an agent attached (:meth:`attach`), the ``bench.driver.Target`` of this bench.
    """

    name = "uml"

    def __init__(self, profile_dir: Path | None = None) -> None:
        self.bus = open_bus("socketcan", CHANNEL, 500_000, [CONNECT_LED])
        self.car = SimulatedCar(self.bus)
        self.led = LedObserver(self.bus)
        self.profile_dir = profile_dir
        self.rss: list[dict[str, int]] = []
        self._waiters = Waiters()
        self._reader: BusReader | None = None
        self._agent: AgentProcess | None = None
        self._closed = False

    def _on_message(self, message: can.Message) -> None:
        before = len(self.led.modes)
        self.led.on_message(message)
        if len(self.led.modes) != before:
            self._waiters.notify()

    async def start(self) -> None:
        self._reader = BusReader(self.bus, self._on_message)
        await self.car.start()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.car.aclose()
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        self.bus.shutdown()

    def ready_since(self, t: float) -> bool:
        modes = self.led.modes
        return bool(modes) and modes[-1][1] == LedMode.READY and modes[-1][0] > t

    async def wait_ready_since(self, t: float, timeout: float) -> None:
        await self._waiters.wait(lambda: self.ready_since(t), timeout)

    # -- bench.driver.Target ----------------------------------------------------------------

    def attach(self, agent: AgentProcess) -> None:
        self._agent = agent

    @property
    def agent(self) -> AgentProcess:
        assert self._agent is not None, "attach() the agent first"
        return self._agent

    async def press(self) -> Press:
        agent = self.agent
        press, call = await press_until_call(agent, self.car, HOLD_MS / 1000)
        if call is None:
            return press  # a missed press
        _, incident_id, sequence = call
        press.incident_id, press.sequence = incident_id, sequence
        key = (incident_id, sequence)
        try:
            await agent.wait_until(
                lambda: key in agent.deliveries and incident_id in agent.closed, CALL_TIMEOUT_S
            )
            await self.wait_ready_since(press.pressed_at, CALL_TIMEOUT_S)
        except TimeoutError:
            progress(self.name, f"call {incident_id} not closed in time")
        press.puback_at = agent.deliveries.get(key)
        return press

    def meter(self) -> CpuMeter:
        return CpuMeter(self.agent.pid).start()

    @contextlib.asynccontextmanager
    async def bus_load(self, rate: int) -> AsyncIterator[LoadRun]:
        gen = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "bench.busgen",
            "--channel",
            CHANNEL,
            "--rate",
            str(rate),
            "--frames",
            encode_frames(frame_mix()),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        assert gen.stdout is not None
        run: LoadRun | None = None
        try:
            async with asyncio.timeout(30):
                await gen.stdout.readline()  # "running"
            await asyncio.sleep(1.0)
            tx0, t0 = vcan_tx_packets(), time.monotonic()
            meter = self.meter()
            gen_meter = CpuMeter(gen.pid).start()

            def measured() -> dict[str, Any]:
                return {
                    "generator_cpu_pct": gen_meter.percent(),
                    "vcan0_frames_per_s": round(
                        (vcan_tx_packets() - tx0) / (time.monotonic() - t0)
                    ),
                }

            run = LoadRun(meter, measured)
            yield run
        finally:
            await stop_process(gen)
            line = await gen.stdout.readline()
            if run is not None:
                run.report = json.loads(line) if line else None

    def profile(self, phase: str) -> contextlib.AbstractAsyncContextManager[Any]:
        return Profiler(self.profile_dir, self.agent.pid, phase)

    def phase_done(self, calls: int) -> None:
        self.rss.append({"calls": calls, "rss_kib": rss_kib(self.agent.pid)})


class Profiler:
    """``py-spy record`` of the agent during one phase (``--profile DIR``), non-blocking."""

    def __init__(self, directory: Path | None, pid: int, name: str) -> None:
        self.path = None if directory is None else directory / f"{name}.txt"
        self.pid = pid
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Profiler:
        py_spy = Path(PYTHON).with_name("py-spy")
        if self.path is not None and py_spy.exists():
            self.process = await asyncio.create_subprocess_exec(
                str(py_spy), "record", "--nonblocking", "-r", "100", "-f", "raw",
                "-o", str(self.path), "-p", str(self.pid),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            await self.process.wait()


def vcan_tx_packets() -> int:
    return int(Path(f"/sys/class/net/{CHANNEL}/statistics/tx_packets").read_text())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(20240807)
    result: dict[str, Any] = {"machine": machine(), "hold_ms": HOLD_MS}
    state_parent = Path(args.state_parent)
    with (
        tempfile.TemporaryDirectory(prefix="bench-uml-") as tmp,
        tempfile.TemporaryDirectory(prefix="bench-uml-state-", dir=state_parent) as state,
    ):
        directory = Path(tmp)
        gpsd_port = free_port()
        async with (
            Mosquitto(persistence=False) as broker,
            Gpsd(gpsd_port),
            Subscriber(broker.port, directory / "subscriber.jsonl") as sub,
            Ecu("socketcan", CHANNEL),
            Car(args.profile) as rig,
        ):
            config = directory / "agent.toml"
            config.write_text(
                config_text(
                    Path(state), broker.port, gpsd_port, interface="socketcan", channel=CHANNEL
                )
            )
            progress(rig.name, "starting the agent")
            agent = AgentProcess(
                config, sets=[f"button.hold_ms={HOLD_MS}"], cwd=REPO, script=args.agent_script
            )
            await agent.start()
            rig.attach(agent)
            try:
                result["startup"] = await wait_started(sub, agent, timeout=60)
                await sub.wait_record(
                    lambda r: r.get("kind") == "status" and r.get("gps") == "fix", timeout=30
                )
                await asyncio.sleep(1.0)
                rig.phase_done(0)
                result.update(await phases(args, rig, sub, broker.port, rng))
            finally:
                code = await agent.stop()
                result["agent_exit_status"] = code
                if code not in (0, None):
                    result["agent_log_tail"] = agent.tail
            result["rss"] = rig.rss
    return result


async def phases(
    args: argparse.Namespace, rig: Car, sub: Subscriber, port: int, rng: random.Random
) -> dict[str, Any]:
    """The shared phases, then calls up to ``--total-calls`` for the memory curve."""
    out, done = await run_phases(rig, sub, port, rng, args)
    out["busload_mix"] = {"matrix_share": MATRIX_SHARE}
    remaining = args.total_calls - done
    if remaining > 0:
        progress(rig.name, f"memory: {remaining} more calls, to {args.total_calls}")
        extra = await presses(rig, remaining, rng)
        done += len(extra)
        out["memory_calls_missed"] = sum(1 for p in extra if p.incident_id is None)
        rig.phase_done(done)
    out["calls_total"] = done
    return out


def main() -> int:
    parser = phase_parser(__doc__.splitlines()[0])
    parser.add_argument("--total-calls", type=int, default=1000)
    parser.add_argument(
        "--state-parent",
        default=str(REPO / ".cache" / "bench"),
        help="where the agent's outbox lives (default: on the host's disk, through hostfs)",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the agent in idle and bus load into DIR"
    )
    parser.add_argument(
        "--agent-script",
        type=Path,
        default=None,
        help="run this Python file instead of bench.agent_proc (e.g. a patched agent)",
    )
    args = parser.parse_args()
    Path(args.state_parent).mkdir(parents=True, exist_ok=True)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    return run_and_write(run, args)


if __name__ == "__main__":
    sys.exit(main())
