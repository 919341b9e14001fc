"""Shared pieces of the benchmarks: statistics, /proc readers, peer processes, call records.

Every time in the benchmarks is ``time.monotonic()`` (CLOCK_MONOTONIC), which is one clock for
the whole kernel: a time taken in the subscriber process compares with one taken in the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT_TOPIC = "assistance/v1"
FLOOR_TOPIC = "bench/floor"

# The generated bus load (SPEC §2 matrix): this share of the frames are the matrix's cyclic
# frames (VEHICLE_STATUS, TYRE_PRESSURE, SAFETY_STATUS, which pass the agent's filter and are
# decoded); the rest carry IDs the agent filters out.
MATRIX_SHARE = 0.25
BUS_RATES = (2000, 4000, 8000)


# -- statistics -------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p99 of 200 values is the 198th)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """n, p50, p95, p99, max and mean of durations given in seconds, in milliseconds."""
    values = sorted(s * 1000 for s in seconds)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(values[-1], 3),
        "mean": round(sum(values) / len(values), 3),
    }


# -- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int | str = "self", tid: int | None = None) -> float:
    """utime + stime of a process (or one of its threads) from /proc/<pid>/stat, in seconds."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path, encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS from /proc/<pid>/status, in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def system_busy() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine from /proc/stat, in clock ticks."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values) - idle), float(sum(values))


class CpuMeter:
    """CPU % of a process (or of a process minus some of its threads) over an interval.

    ``percent()`` is 100 for one fully used core (as ``top`` shows it). ``busy_percent()`` is
    the whole machine's share of busy CPU time over the same interval (100: all cores busy).
    """

    def __init__(
        self, pid: int | str = "self", exclude: Callable[[], Sequence[int]] | None = None
    ) -> None:
        self.pid = pid
        self._exclude = exclude or (lambda: ())
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._sys0 = (0.0, 0.0)

    def _cpu(self) -> float:
        total = cpu_seconds(self.pid)
        for tid in self._exclude():
            with contextlib.suppress(OSError):
                total -= cpu_seconds(self.pid, tid)
        return total

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._cpu0 = self._cpu()
        self._sys0 = system_busy()
        return self

    def percent(self) -> float:
        elapsed = time.monotonic() - self._t0
        return round(100 * (self._cpu() - self._cpu0) / elapsed, 2) if elapsed > 0 else math.nan

    def busy_percent(self) -> float:
        busy, total = system_busy()
        d_total = total - self._sys0[1]
        return round(100 * (busy - self._sys0[0]) / d_total, 1) if d_total > 0 else math.nan


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "host": os.uname().nodename,
        "kernel": os.uname().release,
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


# -- calls ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Press:
    """One press of CONNECT by the benchmark driver and what came of it (monotonic times)."""

    pressed_at: float  # just before the first pressed frame was sent
    hold_s: float
    threshold_at: float  # the hold threshold (the agent's, or pressed_at + hold_s)
    incident_id: str | None = None
    sequence: int = 1
    held_at_agent: float | None = None  # the agent's own CallRecord.held_at, where we see it
    stored_at: float | None = None  # the agent's CallRecord.stored_at, where we see it
    puback_at: float | None = None
    received_at: float | None = None  # at the raw subscriber


@dataclass(slots=True)
class Series:
    """The presses of one phase, summarised."""

    name: str
    presses: list[Press] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def result(self) -> dict[str, Any]:
        done = [p for p in self.presses if p.incident_id is not None]
        to_sub = [p.received_at - p.threshold_at for p in done if p.received_at is not None]
        to_ack = [p.puback_at - p.threshold_at for p in done if p.puback_at is not None]
        out: dict[str, Any] = {
            "presses": len(self.presses),
            "missed": len(self.presses) - len(done),
            "not_received": sum(1 for p in done if p.received_at is None),
            "no_puback": sum(1 for p in done if p.puback_at is None),
            "to_subscriber_ms": summary_ms(to_sub),
            "to_puback_ms": summary_ms(to_ack),
        }
        stored = [p.stored_at - p.threshold_at for p in done if p.stored_at is not None]
        if stored:
            out["to_disk_ms"] = summary_ms(stored)
        lag = [
            p.held_at_agent - (p.pressed_at + p.hold_s) for p in done if p.held_at_agent is not None
        ]
        if lag:  # the agent's threshold after the driver's: frame transit and timer lateness
            out["agent_threshold_lag_ms"] = summary_ms(lag)
        out.update(self.extra)
        return out


def attach_receipts(presses: Sequence[Press], records: Sequence[dict[str, Any]]) -> None:
    """Fill ``received_at`` from the subscriber's records (the first copy of each request)."""
    first: dict[tuple[str, int], float] = {}
    for rec in records:
        if rec.get("kind") == "request":
            first.setdefault((rec["id"], rec["seq"]), rec["t"])
    for press in presses:
        if press.incident_id is not None:
            press.received_at = first.get((press.incident_id, press.sequence))


def press_dicts(presses: Sequence[Press]) -> list[dict[str, Any]]:
    return [asdict(p) for p in presses]


# -- peer processes ---------------------------------------------------------------------------


class Subscriber:
    """The raw paho subscriber (``bench.subscriber``) in its own process.

    It writes one JSON line per message to ``path`` with the monotonic time of its arrival in
    paho's ``on_message``, and plays the backend: it answers each request with ``ack_status``.
    """

    def __init__(self, port: int, path: Path, *, ack_status: str | None = "closed") -> None:
        self.port = port
        self.path = path
        self.ack_status = ack_status
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Subscriber:
        args = [PYTHON, "-m", "bench.subscriber", "--port", str(self.port), "--out", str(self.path)]
        if self.ack_status:
            args += ["--ack", self.ack_status]
        self.process = await asyncio.create_subprocess_exec(
            *args, cwd=REPO, stdout=asyncio.subprocess.PIPE
        )
        assert self.process.stdout is not None
        async with asyncio.timeout(20):
            line = await self.process.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"subscriber did not start: {line!r}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_process(self.process)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    async def wait_record(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, poll: float = 0.01
    ) -> dict[str, Any]:
        """Poll the record file until a record matches (setup only: the time is the record's)."""
        async with asyncio.timeout(timeout):
            while True:
                for rec in self.records():
                    if predicate(rec):
                        return rec
                await asyncio.sleep(poll)


class Gpsd:
    """``hw-sim gpsd`` (the fake gpsd replaying the A1 near Bern) in its own process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Gpsd:
        from hw_sim.mosquitto import wait_listening  # noqa: PLC0415

        hw_sim = Path(PYTHON).with_name("hw-sim")
        self.process = await asyncio.create_subprocess_exec(
            str(hw_sim), "gpsd", "--port", str(self.port), cwd=REPO, stdout=subprocess.DEVNULL
        )
        await wait_listening("127.0.0.1", self.port, timeout=20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_process(self.process)


class Ecu:
    """The gateway answering UDS (VIN, DTCs): ``hw_sim.ecu.run_ecu`` in its own process.

    (What ``hw-sim ecu`` runs; called directly because ``hw-sim`` does not dispatch ``ecu``.)
    """

    def __init__(self, interface: str, channel: str) -> None:
        self.interface = interface
        self.channel = channel
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Ecu:
        code = (
            "import asyncio; from hw_sim.ecu import run_ecu; "
            f"asyncio.run(run_ecu({self.interface!r}, {self.channel!r}))"
        )
        self.process = await asyncio.create_subprocess_exec(
            PYTHON,
            "-c",
            code,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        async with asyncio.timeout(30):
            line = await self.process.stdout.readline()  # "gateway ECU (UDS ...) on ..."
        if not line:
            raise RuntimeError("hw-sim ecu did not start")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_process(self.process)


async def wait_started(sub: Subscriber, agent: Any, timeout: float) -> dict[str, float | None]:
    """Wait for a started agent process (bench.agent_proc.AgentProcess) to publish its first
    live ``online`` status, and its READY=1 (which may come just after); both times are from
    its exec."""
    online = await sub.wait_record(
        lambda r: (
            r.get("kind") == "status"
            and r.get("state") == "online"
            and not r.get("retain")
            and r["t"] > agent.exec_at
        ),
        timeout=timeout,
    )
    if agent.ready_at is None:
        with contextlib.suppress(TimeoutError):
            await agent.wait_until(lambda: agent.ready_at is not None, timeout=3.0)
    return {
        "ready_s": None if agent.ready_at is None else round(agent.ready_at - agent.exec_at, 3),
        "online_status_s": round(online["t"] - agent.exec_at, 3),
    }


async def stop_process(process: asyncio.subprocess.Process | None, timeout: float = 10) -> None:
    if process is None or process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(timeout):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def mqtt_floor(port: int, subscriber: Subscriber, count: int, size: int) -> dict[str, Any]:
    """paho's raw QoS-1 round trip on loopback: publish -> PUBACK, publish -> subscriber."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "bench.mqtt_floor",
        "--port",
        str(port),
        "--count",
        str(count),
        "--size",
        str(size),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bench.mqtt_floor failed with status {proc.returncode}")
    sent: list[list[float]] = json.loads(out)["sent"]  # [n, published, puback]
    # the last receipts may still be on their way to the record file
    with contextlib.suppress(TimeoutError):
        await subscriber.wait_record(
            lambda r: r.get("kind") == "floor" and r.get("n") == count - 1, timeout=5
        )
    received = {r["n"]: r["t"] for r in subscriber.records() if r.get("kind") == "floor"}
    return {
        "payload_bytes": size,
        "to_puback_ms": summary_ms([ack - pub for _, pub, ack in sent]),
        "to_subscriber_ms": summary_ms(
            [received[int(n)] - pub for n, pub, _ in sent if int(n) in received]
        ),
    }


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def run_quiet(args: Sequence[str]) -> str:
    return subprocess.run(args, check=False, capture_output=True, text=True).stdout.strip()


T = TypeVar("T")


async def repeat_presses(
    press_once: Callable[[], Awaitable[T]], n: int, rng: random.Random
) -> list[T]:
    """``n`` calls, each closed before the next, a few random ms apart (no lock-step)."""
    out = []
    for _ in range(n):
        out.append(await press_once())
        await asyncio.sleep(rng.uniform(0.010, 0.060))
    return out
