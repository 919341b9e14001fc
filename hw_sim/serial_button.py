"""The roof module on a serial line (SPEC §3), simulated on a pseudo-terminal.

``async with SerialButtonModule() as module:`` creates a pty; the agent opens
``module.port_path`` (the pty's slave side, or a symlink to it) exactly like a UART. The module
sends ``$CNBTN`` on every change and every 100 ms with an incrementing counter, ``$CNCAT`` when
the driver's category changes, and records the ``$CNLED`` modes the agent sends. Closing it is
an unplugged cable for the agent (its reads fail with EIO); a new module on the same ``link``
is the module restarted.

``hw-sim serial-button`` runs one from the command line (:func:`run_serial_button`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import tty
from pathlib import Path

from agent.waiters import Waiters
from hw_sim.button import SimulatedButton
from hw_sim.lines import Bad, Led, LineBuffer, button_line, category_line, parse
from hw_sim.matrix import CATEGORIES, ButtonState, LedMode
from hw_sim.service import Service, cancel_tasks

__all__ = ["COMMANDS_HELP", "SerialButtonModule", "run_serial_button"]

log = logging.getLogger("hw_sim.serial_button")


class SerialButtonModule(SimulatedButton, Service):
    """A roof module behind a pty. Knobs: ``button_silent``, ``period_s``, :meth:`send_raw`."""

    def __init__(self, link: str | Path | None = None, *, period_s: float = 0.1) -> None:
        self.link = Path(link) if link is not None else None
        self.period_s = period_s
        self.button = ButtonState.RELEASED
        self.category: str | None = None
        self.button_silent = False  # a module that stopped talking (the line stays open)
        self.leds: list[tuple[float, LedMode]] = []  # every CNLED received, with its time
        self.rejected: dict[str, int] = {}  # lines from the agent that were not CNLED
        self.sent = 0
        self.dropped = 0  # writes that found the pty full (nobody reading)
        self._counter = 0
        self._master = -1
        self._slave = -1
        self._slave_name = ""
        self._lines = LineBuffer()
        self._task: asyncio.Task[None] | None = None
        self._waiters = Waiters()

    @property
    def port_path(self) -> str:
        """The path the agent opens: the symlink when one was asked for, else the pty."""
        if not self._slave_name:
            raise RuntimeError("the module is not running")
        return str(self.link) if self.link is not None else self._slave_name

    @property
    def led(self) -> LedMode | None:
        return self.leds[-1][1] if self.leds else None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the pty (and the link) and start talking."""
        if self._master >= 0:
            raise RuntimeError("the module is already running")
        self._master, self._slave = os.openpty()
        # Raw, without echo: otherwise the line discipline echoes our own lines back to us
        # until the agent opens the port and pyserial sets it raw. We keep the slave open so
        # that reading the master never fails with EIO while no agent is attached.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self._slave_name = os.ttyname(self._slave)
        if self.link is not None:
            temporary = self.link.with_name(self.link.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            temporary.symlink_to(self._slave_name)
            temporary.replace(self.link)  # atomic: the agent never sees no link mid-restart
        self._lines.clear()
        loop = asyncio.get_running_loop()
        loop.add_reader(self._master, self._readable)
        self._task = asyncio.create_task(self._cycle(), name="sim-serial-button")
        log.info("serial button module on %s", self.port_path)

    async def aclose(self) -> None:
        """Stop and close the pty (safe to call twice): the agent's reads fail with EIO."""
        task, self._task = self._task, None
        await cancel_tasks(task)
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = -1
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1
        if self.link is not None and self._slave_name:
            with contextlib.suppress(OSError):
                if os.readlink(self.link) == self._slave_name:
                    self.link.unlink()
        self._slave_name = ""

    # -- the button -------------------------------------------------------------------------

    def set_category(self, category: str | None) -> None:
        if category is not None and category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}")
        self.category = category
        self.send_raw(category_line(category))

    def send_raw(self, data: bytes) -> bool:
        """Write bytes to the agent as they are (garbage, half lines); False when dropped."""
        if self._master < 0:
            raise RuntimeError("the module is not running")
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0
        if written != len(data):
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def _send_button(self) -> None:
        self.send_raw(button_line(self.button, self._counter))
        self._counter = (self._counter + 1) & 0x0F

    async def _cycle(self) -> None:
        while True:
            if not self.button_silent:
                self._send_button()
            await asyncio.sleep(self.period_s)

    # -- the LED ----------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            chunk = os.read(self._master, 512)
        except BlockingIOError:
            return
        except OSError as exc:  # cannot happen while we hold the slave open; do not spin
            log.warning("serial button module: read failed: %s", exc)
            asyncio.get_running_loop().remove_reader(self._master)
            return
        dropped = self._lines.dropped
        for data in self._lines.feed(chunk):
            result = parse(data)
            if isinstance(result, Led):
                self.leds.append((time.monotonic(), result.mode))
            else:  # the agent sends nothing but CNLED
                reason = result.reason if isinstance(result, Bad) else "unknown_body"
                self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if self._lines.dropped > dropped:
            self.rejected["bad_framing"] = (
                self.rejected.get("bad_framing", 0) + self._lines.dropped - dropped
            )
        self._waiters.notify()

    async def wait_for_led(self, mode: LedMode, timeout: float = 10.0) -> float:
        """Wait until the last CNLED received is ``mode``; returns when it arrived."""
        await self._waiters.wait(lambda: self.led == mode, timeout)
        return self.leds[-1][0]

    async def next_led(self, timeout: float | None = 10.0) -> LedMode:
        """Wait for the next CNLED line, whatever its mode."""
        seen = len(self.leds)
        await self._waiters.wait(lambda: len(self.leds) > seen, timeout)
        return self.leds[seen][1]


# -- hw-sim serial-button ---------------------------------------------------------------------

COMMANDS_HELP = """commands on standard input (one a line):
  hold MS                 press CONNECT for MS milliseconds
  press | release | fault the button state until changed
  silent on|off           stop/resume the module's lines
  category NAME|none      the driver's choice (breakdown, puncture, ..., other)
  garbage                 send a line with a bad checksum
  quit
"""


def _out(text: str) -> None:
    print(text, flush=True)


async def _stdin() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _apply(module: SerialButtonModule, text: str) -> str | None:
    """Apply one command; returns what to print, if anything."""
    words = text.split()
    cmd, rest = words[0].lower(), words[1:]
    states = {
        "press": ButtonState.PRESSED,
        "release": ButtonState.RELEASED,
        "fault": ButtonState.FAULT,
    }
    try:
        if cmd == "help":
            return COMMANDS_HELP
        if cmd == "hold":
            ms = float(rest[0])
            await module.hold(ms)
            return f"held {ms:.0f} ms"
        if cmd in states:
            module.set_button(states[cmd])
        elif cmd == "silent":
            module.button_silent = {"on": True, "off": False}[rest[0]]
        elif cmd == "category":
            module.set_category(None if rest[0] == "none" else rest[0])
        elif cmd == "garbage":
            module.send_raw(button_line(ButtonState.PRESSED, 0, check="00"))
        else:
            return f"unknown command {cmd!r}"
    except (IndexError, KeyError, ValueError) as exc:
        return f"bad arguments for {cmd!r}: {exc}"
    return None


async def run_serial_button(
    link: str | None, *, commands: asyncio.StreamReader | None = None
) -> None:
    """``hw-sim serial-button``: a module on a pty; prints its path and the LED modes.

    With ``link`` a symlink to the pty is (re)created there, so the agent's config can name a
    fixed path. Commands come from standard input (or ``commands``); at its end the module
    keeps running until cancelled.
    """
    async with SerialButtonModule(link) as module:
        _out(f"serial button module on {module.port_path}; type 'help' for commands")
        reader = commands or await _stdin()
        printed = 0

        async def show_leds() -> None:
            nonlocal printed
            while True:
                for _, mode in module.leds[printed:]:
                    _out(f"LED {mode.name.lower()}")
                printed = len(module.leds)
                await module.next_led(timeout=None)

        async with asyncio.TaskGroup() as tg:
            leds = tg.create_task(show_leds(), name="sim-serial-leds")
            while line := (await reader.readline()).decode(errors="replace"):
                text = line.strip()
                if text in ("quit", "exit"):
                    leds.cancel()
                    return
                if text and (reply := await _apply(module, text)):
                    _out(reply)
            await asyncio.Event().wait()  # stdin closed (started in the background): keep going
