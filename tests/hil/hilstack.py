"""The HIL installation: every party a real process on one SocketCAN channel (the laptop topology).

``connect-agent run`` and ``hw-sim car`` run as separate processes on the channel; Mosquitto
on loopback, gpsd fed by gpsfake, and the backend simulator in the test process. Tests drive
the car through its stdin and watch the bus with can-utils or an unfiltered python-can socket,
and the agent through what it publishes (the backend's view of the retained status).

Everything waits for an event with a deadline: a line a child prints, a message the backend
receives, a frame on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can

from hw_sim.backend import SimulatedBackend
from hw_sim.car import dbc_path
from hw_sim.matrix import ButtonState, SimMatrix, e2e_crc
from hw_sim.scenario import VIN, config_text

BIN = Path(sys.executable).parent
STOP_TIMEOUT_S = 20.0  # the agent flushes its outbox for up to 5 s on SIGTERM


@dataclass(frozen=True)
class Settings:
    """Where the suite runs: ``HIL_CAN_INTERFACE``, ``HIL_CAN_CHANNEL``, ``HIL_ROOF_MODULE``..."""

    interface: str = "socketcan"
    channel: str = "vcan0"
    roof: str = "sim"  # "sim": hw-sim car's button; "real": a roof module on the bus
    press_cmd: str | None = None  # with a real roof module: a command that presses (relay)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env: Mapping[str, str] = os.environ if environ is None else environ
        roof = env.get("HIL_ROOF_MODULE", "sim")
        if roof not in ("sim", "real"):
            raise ValueError(f"HIL_ROOF_MODULE must be 'sim' or 'real', not {roof!r}")
        return cls(
            interface=env.get("HIL_CAN_INTERFACE", "socketcan"),
            channel=env.get("HIL_CAN_CHANNEL", "vcan0"),
            roof=roof,
            press_cmd=env.get("HIL_PRESS_CMD") or None,
        )

    @property
    def socketcan(self) -> bool:
        return self.interface == "socketcan"


def program(name: str) -> str:
    """The venv's console script, or a program on PATH (and /usr/sbin, /sbin)."""
    for candidate in (str(BIN / name), shutil.which(name), shutil.which(f"/usr/sbin/{name}")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"{name} not found (venv {BIN} or PATH)")


# -- child processes --------------------------------------------------------------------------


class Child:
    """A subprocess whose stdout is read line by line under deadlines; stderr goes to a log."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path | None) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.lines: list[str] = []  # every stdout line read so far

    @classmethod
    async def spawn(
        cls,
        name: str,
        argv: list[str],
        *,
        log: Path | None = None,
        stdin: bool = False,
        stdout: bool = True,
    ) -> Child:
        sink = log.open("ab") if log is not None else None
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
                stderr=sink if sink is not None else asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            if sink is not None:
                sink.close()  # the child has its own descriptor
        return cls(name, process, log)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def line(self, match: str | Callable[[str], bool], timeout: float) -> str:
        """The next stdout line containing ``match`` (or satisfying it), within ``timeout``."""
        stdout = self.process.stdout
        assert stdout is not None, f"{self.name}: stdout is not a pipe"
        accept = match if callable(match) else (lambda text: match in text)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await stdout.readline()
                    if not raw:
                        raise AssertionError(
                            f"{self.name} closed its output (exit {await self.process.wait()}) "
                            f"before printing {match!r}; {self.tail()}"
                        )
                    text = raw.decode(errors="replace").rstrip("\n")
                    self.lines.append(text)
                    if accept(text):
                        return text
        except TimeoutError:
            raise AssertionError(
                f"{self.name} did not print {match!r} within {timeout} s; {self.tail()}"
            ) from None

    async def write(self, text: str) -> None:
        stdin = self.process.stdin
        assert stdin is not None, f"{self.name}: stdin is not a pipe"
        stdin.write(text.encode())
        await stdin.drain()

    async def stop(
        self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S, *, grace: float = 0.0
    ) -> int:
        """Give the child ``grace`` s to exit by itself, then ``sig``; wait for it to exit
        within ``timeout`` (else SIGKILL and fail); close its pipes. Returns its exit status."""
        try:
            if grace > 0 and self.process.returncode is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await self.process.wait()
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(sig)
            try:
                async with asyncio.timeout(timeout):
                    return await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
                raise AssertionError(
                    f"{self.name} did not exit within {timeout} s of {sig!r}"
                ) from None
        finally:
            await self.close_pipes()

    async def close_pipes(self) -> None:
        """Close stdin and read stdout to its end, so asyncio's transport closes cleanly."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
            with contextlib.suppress(ConnectionError):
                await self.process.stdin.wait_closed()
        if self.process.stdout is not None and self.process.returncode is not None:
            rest = await self.process.stdout.read()
            self.lines += rest.decode(errors="replace").splitlines()

    def tail(self, lines: int = 25) -> str:
        text = ""
        if self.log is not None and self.log.exists():
            text = "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        elif self.lines:
            text = "\n".join(self.lines[-lines:])
        return f"last output of {self.name}:\n{text}" if text else f"{self.name} printed nothing"


async def run(*argv: str, timeout: float = 10.0) -> str:
    """Run a short command (cansend, ip); its output; an AssertionError when it fails."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise AssertionError(f"{' '.join(argv)} did not finish within {timeout} s") from None
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {process.returncode}: {text}")
    return text


# -- frames -----------------------------------------------------------------------------------


# The simulators' codec (cantools and crccheck), never the agent's: the rig must not share a
# layout bug with the agent under test.
SIM_MATRIX = SimMatrix(dbc_path())


def button_frame(state: ButtonState, counter: int) -> bytes:
    """A CONNECT_BUTTON frame as the roof module sends it: the matrix layout, CRC and counter."""
    return SIM_MATRIX.encode_button(state, counter=counter)


def cansend_arg(frame_id: int, data: bytes) -> str:
    """``cansend``'s ``<id>#<hex>`` for a classic 11-bit frame."""
    return f"{frame_id:03X}#{data.hex().upper()}"


@dataclass(frozen=True)
class Dumped:
    """One frame candump printed (``-L`` log format)."""

    channel: str
    frame_id: int
    data: bytes

    @property
    def crc_ok(self) -> bool:
        return len(self.data) == 8 and e2e_crc(self.data[1:8]) == self.data[0]

    @property
    def counter(self) -> int:
        return SIM_MATRIX.raw_signals(self.frame_id, self.data)["AliveCounter"]


_LOG_LINE = re.compile(r"^\(\d+\.\d+\)\s+(\S+)\s+([0-9A-Fa-f]{3}|[0-9A-Fa-f]{8})#([0-9A-Fa-f]*)")


def parse_candump_log(line: str) -> Dumped | None:
    match = _LOG_LINE.match(line.strip())
    if match is None:
        return None
    return Dumped(match[1], int(match[2], 16), bytes.fromhex(match[3]))


class Candump:
    """``candump -L <channel>,<filter>`` in the background, its frames parsed."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.frames: list[Dumped] = []
        self._read = 0  # child.lines consumed into frames

    @classmethod
    async def start(cls, channel: str, filters: str) -> Candump:
        child = await Child.spawn("candump", [program("candump"), "-L", f"{channel},{filters}"])
        return cls(child)

    async def next_frame(self, timeout: float) -> Dumped:
        await self.child.line(lambda text: parse_candump_log(text) is not None, timeout)
        self._collect()
        return self.frames[-1]

    def _collect(self) -> None:
        for line in self.child.lines[self._read :]:
            if (frame := parse_candump_log(line)) is not None:
                self.frames.append(frame)
        self._read = len(self.child.lines)

    async def until(self, accept: Callable[[Dumped], bool], timeout: float) -> Dumped:
        """Read frames until one is accepted, within ``timeout`` in all."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.next_frame(max(0.0, deadline - time.monotonic()))
            if accept(frame):
                return frame

    async def stop(self) -> None:
        await self.child.stop(signal.SIGINT, timeout=5)
        self._collect()


# -- the kernel's receive lists ---------------------------------------------------------------

PROC_CAN = Path("/proc/net/can")
EFF_FLAG = 0x80000000


@dataclass(frozen=True)
class Receiver:
    """One entry of /proc/net/can/rcvlist_*: a filter a socket registered on a device."""

    rcvlist: str  # all, fil, inv, sff, eff, err
    device: str
    can_id: int
    can_mask: int
    socket: str  # the socket's address as the kernel prints it (%pK: hashed or hidden)
    matches: int
    ident: str


def receive_lists(device: str) -> list[Receiver]:
    """Every receive-list entry on ``device`` (empty when the kernel has no CAN procfs)."""
    entries = []
    for path in sorted(PROC_CAN.glob("rcvlist_*")):
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) == 7 and words[0] == device and words[5].isdigit():
                entries.append(
                    Receiver(
                        rcvlist=path.name.removeprefix("rcvlist_"),
                        device=words[0],
                        can_id=int(words[1], 16),
                        can_mask=int(words[2], 16),
                        socket=words[4],
                        matches=int(words[5]),
                        ident=words[6],
                    )
                )
    return entries


# -- the installation -------------------------------------------------------------------------


@dataclass
class Stack:
    """The agent, the car, the backend; Mosquitto and gpsd are started by the fixture."""

    settings: Settings
    directory: Path
    mqtt_port: int
    gpsd_port: int
    backend: SimulatedBackend
    car: Child | None = None
    agent: Child | None = None
    ecu: Child | None = None
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config_path = self.directory / "agent.toml"
        self.config_path.write_text(
            config_text(
                self.directory / "state",
                self.mqtt_port,
                self.gpsd_port,
                interface=self.settings.interface,
                channel=self.settings.channel,
            )
        )

    # -- processes ----------------------------------------------------------------------------

    async def start_car(self) -> Child:
        s = self.settings
        self.car = await Child.spawn(
            "hw-sim car",
            [program("hw-sim"), "car", "--interface", s.interface, "--channel", s.channel],
            log=self.directory / "car.log",
            stdin=True,
        )
        await self.car.line("car on", timeout=30)
        if s.roof == "real":
            await self.car_command("silent on")  # the real roof module sends 0x3A1
        return self.car

    async def stop_car(self) -> None:
        """Stop the car at once (SIGINT, even in the middle of a ``hold``): no frame of it
        reaches the bus any more. ``start_car`` starts a new one."""
        car, self.car = self.car, None
        assert car is not None, "the car is not running"
        code = await car.stop(signal.SIGINT, timeout=10)
        assert code == 0, f"hw-sim car exited {code} on SIGINT"

    async def start_ecu(self) -> Child:
        """``hw-sim ecu``: the gateway's UDS server (VIN, DTCs) as its own process."""
        s = self.settings
        self.ecu = await Child.spawn(
            "hw-sim ecu",
            [program("hw-sim"), "ecu", "--interface", s.interface, "--channel", s.channel],
            log=self.directory / "ecu.log",
        )
        await self.ecu.line("gateway ECU", timeout=30)
        return self.ecu

    async def start_agent(self) -> Child:
        self.agent = await Child.spawn(
            "connect-agent",
            [program("connect-agent"), "run", "--config", str(self.config_path)],
            log=self.directory / "agent.log",
            stdout=False,
        )
        return self.agent

    async def stop_agent(self) -> int:
        agent, self.agent = self.agent, None
        assert agent is not None, "the agent is not running"
        return await agent.stop(signal.SIGTERM)

    async def aclose(self) -> list[str]:
        """Stop what still runs; returns problems (a non-zero exit, a traceback) to report."""
        problems = []
        if self.agent is not None:
            code = await self.stop_agent()
            if code != 0:
                problems.append(f"connect-agent exited {code} on SIGTERM")
        car, self.car = self.car, None
        if car is not None:
            if car.returncode is None:
                with contextlib.suppress(ConnectionError):
                    await car.write("quit\n")
            code = await car.stop(grace=10)
            if code != 0:
                problems.append(f"hw-sim car exited {code} after 'quit'")
        ecu, self.ecu = self.ecu, None
        if ecu is not None and (code := await ecu.stop(signal.SIGINT, timeout=10)) != 0:
            problems.append(f"hw-sim ecu exited {code} on SIGINT")
        for name in ("agent.log", "car.log", "ecu.log"):
            path = self.directory / name
            if path.exists() and "Traceback" in path.read_text(errors="replace"):
                problems.append(f"a traceback in {name}")
        return problems

    def logs(self) -> str:
        parts = []
        for name in ("agent.log", "car.log", "ecu.log"):
            path = self.directory / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()
                parts.append(f"--- {name} (last 60 of {len(lines)} lines)")
                parts += lines[-60:]
        return "\n".join(parts)

    # -- the car ------------------------------------------------------------------------------

    async def car_command(self, command: str, timeout: float = 10.0) -> None:
        """Send one stdin command to the car and wait until it has been applied.

        The car answers only some commands, so a marker line follows: the car handles lines
        in order and reports the marker as an unknown command, which proves ``command`` was
        applied. Any other complaint before the marker is a failure.
        """
        car = self.car
        assert car is not None, "the car is not running"
        marker = f"marker-{time.monotonic_ns()}"
        seen = len(car.lines)
        await car.write(f"{command}\n{marker}\n")
        await car.line(marker, timeout)
        complaints = car.lines[seen:-1]
        assert not complaints, f"car answered {command!r} with {complaints}"

    async def hold(self, ms: int) -> None:
        """Press CONNECT for ``ms`` ms: the simulated button, or ``HIL_PRESS_CMD MS``."""
        if self.settings.roof == "real":
            assert self.settings.press_cmd, "a real roof module needs HIL_PRESS_CMD"
            await run(*self.settings.press_cmd.split(), str(ms), timeout=ms / 1000 + 30)
            return
        assert self.car is not None, "the car is not running"
        await self.car.write(f"hold {ms}\n")
        await self.car.line(f"held {ms} ms", timeout=ms / 1000 + 10)

    # -- the agent as the backend sees it -----------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.backend.status.get(VIN, {})

    def statuses(self) -> list[dict[str, Any]]:
        return [r.payload for r in self.backend.of_kind("status") if r.vin == VIN]

    async def wait_status(
        self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """Wait until the agent's latest status satisfies ``predicate``."""
        try:
            async with asyncio.timeout(timeout):
                while not (self.status() and predicate(self.status())):
                    await self.backend.next_change()
        except TimeoutError:
            raise AssertionError(
                f"the agent's status never showed {what} within {timeout} s; "
                f"latest: {self.status()}"
            ) from None
        return self.status()

    async def wait_ready(self, timeout: float = 40.0) -> dict[str, Any]:
        """Online with the bus open, a healthy button, and a GPS fix."""

        def ready(s: dict[str, Any]) -> bool:
            return (
                s.get("state") == "online"
                and s.get("can") == "ok"
                and s.get("gps") == "fix"
                and s.get("button") == "ok"
            )

        return await self.wait_status("online, can ok, button ok, gps fix", ready, timeout)

    async def wait_counters(
        self, what: str, predicate: Callable[[dict[str, int]], bool], timeout: float = 15.0
    ) -> dict[str, int]:
        """Wait for the status counters (published on change, checked every 5 s)."""
        status = await self.wait_status(
            what, lambda s: predicate(s.get("counters", {})), timeout=timeout
        )
        counters: dict[str, int] = status.get("counters", {})
        return counters


@contextlib.asynccontextmanager
async def sniffer(settings: Settings) -> AsyncIterator[can.BusABC]:
    """An unfiltered python-can socket on the channel: what the bus really carries."""
    bus = can.Bus(interface=settings.interface, channel=settings.channel, bitrate=500_000)
    try:
        yield bus
    finally:
        bus.shutdown()


def send(bus: can.BusABC, message: can.Message, timeout: float = 5.0) -> None:
    """Send, waiting while the interface's transmit queue is full (a real can0 has 10 slots)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            bus.send(message, timeout=0.1)
        except can.CanOperationError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)  # ENOBUFS: the controller drains the queue at bus speed
        else:
            return


def drain(
    bus: can.BusABC, want: dict[tuple[int, bool], int], timeout: float
) -> dict[tuple[int, bool], int]:
    """Receive until ``want`` frames per ``(id, extended)`` arrived or ``timeout``; the counts."""
    counts = dict.fromkeys(want, 0)
    deadline = time.monotonic() + timeout
    while any(counts[k] < n for k, n in want.items()) and (left := deadline - time.monotonic()) > 0:
        message = bus.recv(left)
        if message is not None:
            key = (message.arbitration_id, message.is_extended_id)
            if key in counts:
                counts[key] += 1
    return counts
