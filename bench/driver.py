"""The bench driver loop both benches share: the press, and the phases around it.

``bench.inprocess`` (the agent on the ``virtual`` bus in this process) and ``bench.driver_uml``
(the agent as a process of its own on SocketCAN under UML) measure the same phases the same
way; only how the agent runs, how its CPU is metered and how the bus load is made differ.
Each describes that in a :class:`Target`; :func:`run_phases` runs warm-up, the MQTT floor, the
latency calls, idle CPU and one series per bus-load rate, and returns their results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.core.frames import ButtonState
from bench.common import (
    BUS_RATES,
    CpuMeter,
    Press,
    Series,
    Subscriber,
    attach_receipts,
    mqtt_floor,
    repeat_presses,
    write_json,
)
from hw_sim.car import SimulatedCar

HOLD_MS = 100
CALL_TIMEOUT_S = 5.0


class Watched(Protocol):
    """An agent the driver can watch: its stored calls, and a wait on its state."""

    @property
    def calls(self) -> Sequence[Any]: ...

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None: ...


async def press_until_call(
    agent: Watched, car: SimulatedCar, hold_s: float
) -> tuple[Press, Any | None]:
    """Hold CONNECT until the agent stores a call, then release: the press and that call.

    The call is ``None`` for a missed press (none stored within ``CALL_TIMEOUT_S`` past the
    hold threshold).
    """
    k = len(agent.calls)
    pressed_at = time.monotonic()
    car.set_button(ButtonState.PRESSED)
    press = Press(pressed_at=pressed_at, hold_s=hold_s, threshold_at=pressed_at + hold_s)
    try:
        await agent.wait_until(lambda: len(agent.calls) > k, hold_s + CALL_TIMEOUT_S)
    except TimeoutError:
        return press, None
    finally:
        car.set_button(ButtonState.RELEASED)
    return press, agent.calls[k]


@dataclass
class LoadRun:
    """One bus-load series while it runs: the agent's meter, and what the load reports.

    ``measured`` is read before the load stops (the generator's CPU, the bus's frame rate);
    ``report`` is filled when it has stopped (the generator's own count).
    """

    meter: CpuMeter
    measured: Callable[[], dict[str, Any]] = dict
    report: dict[str, Any] | None = field(default=None)


class Target(Protocol):
    """How one bench runs the agent; what :func:`run_phases` needs of it."""

    name: str  # the progress prefix

    async def press(self) -> Press:
        """One press, held to the call, the call delivered and closed."""
        ...

    def meter(self) -> CpuMeter:
        """A started CPU meter of the agent alone."""
        ...

    def bus_load(self, rate: int) -> AbstractAsyncContextManager[LoadRun]:
        """Load the bus at ``rate`` frames/s while the block runs."""
        ...

    def profile(self, phase: str) -> AbstractAsyncContextManager[None]:
        """Profile the agent during ``phase`` (or not)."""
        ...

    def phase_done(self, calls: int) -> None:
        """After each phase of calls, with the calls made so far."""
        ...


@contextlib.asynccontextmanager
async def no_profile(phase: str) -> AsyncIterator[None]:
    yield


def progress(name: str, text: str) -> None:
    print(f"[{name}] {text}", file=sys.stderr, flush=True)


async def presses(target: Target, n: int, rng: random.Random) -> list[Press]:
    return await repeat_presses(target.press, n, rng)


async def measured_series(  # noqa: PLR0917
    target: Target,
    name: str,
    n: int,
    rng: random.Random,
    meter: CpuMeter,
    extra: Callable[[], dict[str, Any]] = dict,
    *,
    profiled: bool = False,
) -> Series:
    """``n`` presses with the agent's CPU over them (and the profiler, if ``profiled``)."""
    series = Series(name)
    async with target.profile(name) if profiled else no_profile(name):
        series.presses = await presses(target, n, rng)
    series.extra["agent_cpu_pct"] = meter.percent()
    series.extra["machine_busy_pct"] = meter.busy_percent()
    series.extra.update(extra())
    return series


async def run_phases(
    target: Target,
    sub: Subscriber,
    broker_port: int,
    rng: random.Random,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], int]:
    """Warm-up, MQTT floor, latency, idle, bus loads: their results and the calls made.

    ``args`` as :func:`phase_parser` makes them: the calls, idle time, floor and rates.
    """
    calls: int = args.calls
    load_calls: int = args.load_calls
    idle_s: float = args.idle_s
    floor: int = args.floor
    rates: Sequence[int] = args.rates
    out: dict[str, Any] = {}
    say = target.name

    progress(say, "warm-up")
    warm = await presses(target, 5, rng)
    done = len(warm)
    attach_receipts(warm, sub.records())
    size = max((r["bytes"] for r in sub.records() if r.get("kind") == "request"), default=2500)
    out["request_bytes"] = size

    progress(say, f"MQTT floor ({floor} round trips of {size} bytes)")
    out["mqtt_floor"] = await mqtt_floor(broker_port, sub, floor, size)

    progress(say, f"latency, {calls} calls")
    latency = await measured_series(target, "latency", calls, rng, target.meter())
    attach_receipts(latency.presses, sub.records())
    out["latency"] = latency.result()
    done += calls
    target.phase_done(done)

    progress(say, f"idle CPU, {idle_s:.0f} s")
    meter = target.meter()
    async with target.profile("idle"):
        await asyncio.sleep(idle_s)
    out["idle"] = {
        "seconds": idle_s,
        "agent_cpu_pct": meter.percent(),
        "machine_busy_pct": meter.busy_percent(),
    }

    busload: dict[str, Any] = {}
    for rate in rates:
        progress(say, f"bus load {rate} frames/s, {load_calls} calls")
        async with target.bus_load(rate) as load:
            series = await measured_series(
                target, f"busload_{rate}", load_calls, rng, load.meter, load.measured, profiled=True
            )
        series.extra["generator"] = load.report
        attach_receipts(series.presses, sub.records())
        busload[str(rate)] = series.result()
        done += load_calls
        target.phase_done(done)
    out["busload"] = busload
    return out, done


# -- the command line both share ---------------------------------------------------------------


def parse_rates(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def phase_parser(description: str) -> argparse.ArgumentParser:
    """``--out`` and the phases' sizes: what both benches take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--load-calls", type=int, default=200)
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--floor", type=int, default=300)
    parser.add_argument("--rates", type=parse_rates, default=list(BUS_RATES))
    return parser


def run_and_write(
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    args: argparse.Namespace,
) -> int:
    """Run a bench, add its duration, write its result to ``args.out``."""
    t0 = time.monotonic()
    result = asyncio.run(run(args))
    result["duration_s"] = round(time.monotonic() - t0, 1)
    write_json(args.out, result)
    return 0
