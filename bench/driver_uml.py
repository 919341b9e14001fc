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
from pathlib import Path
from typing import Any

import can

from agent.core.frames import CONNECT_LED, ButtonState, LedMode
from agent.inputs.can_bus import BusReader, open_bus
from bench.agent_proc import AgentProcess
from bench.busgen import encode_frames, frame_mix
from bench.common import (
    BUS_RATES,
    MATRIX_SHARE,
    PYTHON,
    REPO,
    CpuMeter,
    Ecu,
    Gpsd,
    Press,
    Series,
    Subscriber,
    attach_receipts,
    machine,
    mqtt_floor,
    repeat_presses,
    rss_kib,
    stop_process,
    write_json,
)
from hw_sim.car import LedObserver, SimulatedCar
from hw_sim.mosquitto import Mosquitto, free_port
from hw_sim.scenario import config_text

HOLD_MS = 100
CALL_TIMEOUT_S = 5.0
CHANNEL = "vcan0"


def progress(text: str) -> None:
    print(f"[uml] {text}", file=sys.stderr, flush=True)


class Car:
    """The simulated car and roof module on SocketCAN, with a wake-up on every LED change."""

    def __init__(self) -> None:
        self.bus = open_bus("socketcan", CHANNEL, 500_000, [CONNECT_LED])
        self.car = SimulatedCar(self.bus)
        self.led = LedObserver(self.bus)
        self.changed = asyncio.Event()
        self._reader: BusReader | None = None

    def _on_message(self, message: can.Message) -> None:
        before = len(self.led.modes)
        self.led.on_message(message)
        if len(self.led.modes) != before:
            self.changed.set()

    async def __aenter__(self) -> Car:
        self._reader = BusReader(self.bus, self._on_message)
        await self.car.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.car.aclose()
        if self._reader is not None:
            self._reader.stop()
        self.bus.shutdown()

    def ready_since(self, t: float) -> bool:
        modes = self.led.modes
        return bool(modes) and modes[-1][1] == LedMode.READY and modes[-1][0] > t

    async def wait_ready_since(self, t: float, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while True:
                self.changed.clear()
                if self.ready_since(t):
                    return
                await self.changed.wait()


async def press_once(agent: AgentProcess, rig: Car, hold_s: float) -> Press:
    k = len(agent.calls)
    pressed_at = time.monotonic()
    rig.car.set_button(ButtonState.PRESSED)
    press = Press(pressed_at=pressed_at, hold_s=hold_s, threshold_at=pressed_at + hold_s)
    try:
        await agent.wait_until(lambda: len(agent.calls) > k, hold_s + CALL_TIMEOUT_S)
    except TimeoutError:
        return press  # a missed press
    finally:
        rig.car.set_button(ButtonState.RELEASED)
    _, incident_id, sequence = agent.calls[k]
    press.incident_id, press.sequence = incident_id, sequence
    key = (incident_id, sequence)
    try:
        await agent.wait_until(
            lambda: key in agent.deliveries and incident_id in agent.closed, CALL_TIMEOUT_S
        )
        await rig.wait_ready_since(pressed_at, CALL_TIMEOUT_S)
    except TimeoutError:
        progress(f"call {incident_id} not closed in time")
    press.puback_at = agent.deliveries.get(key)
    return press


async def presses(
    agent: AgentProcess, rig: Car, hold_s: float, n: int, rng: random.Random
) -> list[Press]:
    return await repeat_presses(lambda: press_once(agent, rig, hold_s), n, rng)


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
    hold_s = HOLD_MS / 1000
    result: dict[str, Any] = {"machine": machine(), "hold_ms": HOLD_MS}
    rss: list[dict[str, int]] = []
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
            Car() as rig,
        ):
            config = directory / "agent.toml"
            config.write_text(
                config_text(
                    Path(state), broker.port, gpsd_port, interface="socketcan", channel=CHANNEL
                )
            )
            progress("starting the agent")
            agent = AgentProcess(
                config, sets=[f"button.hold_ms={HOLD_MS}"], cwd=REPO, script=args.agent_script
            )
            await agent.start()
            try:
                online = await sub.wait_record(
                    lambda r: (
                        r.get("kind") == "status"
                        and r.get("state") == "online"
                        and not r.get("retain")
                    ),
                    timeout=60,
                )
                if agent.ready_at is None:
                    with contextlib.suppress(TimeoutError):
                        await agent.wait_until(lambda: agent.ready_at is not None, timeout=3.0)
                result["startup"] = {
                    "ready_s": None
                    if agent.ready_at is None
                    else round(agent.ready_at - agent.exec_at, 3),
                    "online_status_s": round(online["t"] - agent.exec_at, 3),
                }
                await sub.wait_record(
                    lambda r: r.get("kind") == "status" and r.get("gps") == "fix", timeout=30
                )
                await asyncio.sleep(1.0)
                rss.append({"calls": 0, "rss_kib": rss_kib(agent.pid)})
                result.update(await phases(args, agent, rig, sub, broker.port, rng, hold_s, rss))
            finally:
                code = await agent.stop()
                result["agent_exit_status"] = code
                if code not in (0, None):
                    result["agent_log_tail"] = agent.tail
    result["rss"] = rss
    return result


async def phases(  # noqa: PLR0917 - one phase runner, called once
    args: argparse.Namespace,
    agent: AgentProcess,
    rig: Car,
    sub: Subscriber,
    port: int,
    rng: random.Random,
    hold_s: float,
    rss: list[dict[str, int]],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    done = 0

    def note_rss() -> None:
        rss.append({"calls": done, "rss_kib": rss_kib(agent.pid)})

    progress("warm-up")
    warm = await presses(agent, rig, hold_s, 5, rng)
    done += len(warm)
    size = max((r["bytes"] for r in sub.records() if r.get("kind") == "request"), default=2500)
    out["request_bytes"] = size

    progress(f"MQTT floor ({args.floor} round trips of {size} bytes)")
    out["mqtt_floor"] = await mqtt_floor(port, sub, args.floor, size)

    progress(f"latency, {args.calls} calls")
    meter = CpuMeter(agent.pid).start()
    latency = Series("latency")
    latency.presses = await presses(agent, rig, hold_s, args.calls, rng)
    latency.extra["agent_cpu_pct"] = meter.percent()
    latency.extra["machine_busy_pct"] = meter.busy_percent()
    attach_receipts(latency.presses, sub.records())
    out["latency"] = latency.result()
    done += args.calls
    note_rss()

    progress(f"idle CPU, {args.idle_s:.0f} s")
    meter = CpuMeter(agent.pid).start()
    async with Profiler(args.profile, agent.pid, "idle"):
        await asyncio.sleep(args.idle_s)
    out["idle"] = {
        "seconds": args.idle_s,
        "agent_cpu_pct": meter.percent(),
        "machine_busy_pct": meter.busy_percent(),
    }

    busload: dict[str, Any] = {}
    frames = encode_frames(frame_mix())
    for rate in args.rates:
        progress(f"bus load {rate} frames/s, {args.load_calls} calls")
        gen = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "bench.busgen",
            "--channel",
            CHANNEL,
            "--rate",
            str(rate),
            "--frames",
            frames,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        assert gen.stdout is not None
        async with asyncio.timeout(30):
            await gen.stdout.readline()  # "running"
        await asyncio.sleep(1.0)
        tx0, t0 = vcan_tx_packets(), time.monotonic()
        meter = CpuMeter(agent.pid).start()
        gen_meter = CpuMeter(gen.pid).start()
        series = Series(f"busload_{rate}")
        async with Profiler(args.profile, agent.pid, f"busload_{rate}"):
            series.presses = await presses(agent, rig, hold_s, args.load_calls, rng)
        series.extra["agent_cpu_pct"] = meter.percent()
        series.extra["generator_cpu_pct"] = gen_meter.percent()
        series.extra["machine_busy_pct"] = meter.busy_percent()
        series.extra["vcan0_frames_per_s"] = round(
            (vcan_tx_packets() - tx0) / (time.monotonic() - t0)
        )
        await stop_process(gen)
        line = await gen.stdout.readline()
        series.extra["generator"] = json.loads(line) if line else None
        attach_receipts(series.presses, sub.records())
        busload[str(rate)] = series.result()
        done += args.load_calls
        note_rss()
    out["busload"] = busload
    out["busload_mix"] = {"matrix_share": MATRIX_SHARE}

    remaining = args.total_calls - done
    if remaining > 0:
        progress(f"memory: {remaining} more calls, to {args.total_calls}")
        extra = await presses(agent, rig, hold_s, remaining, rng)
        done += len(extra)
        out["memory_calls_missed"] = sum(1 for p in extra if p.incident_id is None)
        note_rss()
    out["calls_total"] = done
    return out


def parse_rates(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--load-calls", type=int, default=200)
    parser.add_argument("--total-calls", type=int, default=1000)
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--floor", type=int, default=300)
    parser.add_argument("--rates", type=parse_rates, default=list(BUS_RATES))
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
    t0 = time.monotonic()
    result = asyncio.run(run(args))
    result["duration_s"] = round(time.monotonic() - t0, 1)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
