"""Serial button adapter (SPEC §3): the roof module on a UART, 115200 8N1.

It only moves bytes: pyserial opens and configures the port (non-blocking), the event loop
watches its file descriptor with ``loop.add_reader``, and every chunk goes through the pure
:mod:`agent.core.lines` (splitter, then decoder). Valid samples go to ``on_button`` with the
monotonic time they arrived, so the agent feeds them into the same
:class:`~agent.core.button.ButtonTracker` as CAN samples: hold, cancel, and "no valid sample for
500 ms is released" all work the same way (the module sends every 100 ms).

A port that cannot be opened, or that fails while open (USB adapter unplugged, the pty's other
side closed), is closed and reopened with capped exponential backoff and full jitter, forever;
``on_state`` hears ``"ok"`` and ``"down"``. The LED mode last sent is sent again on every
reopen, so a restarted module shows the right colour at once.

Rejected lines are counted in :attr:`SerialButtonInput.counters` (reasons as
:data:`~agent.core.lines.REJECT_REASONS`) and logged once per reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, Final

import serial

from agent.backoff import backoff_delays
from agent.core.frames import ButtonState, LedMode
from agent.core.lines import (
    REJECT_REASONS,
    ButtonLine,
    LineRejected,
    LineSplitter,
    ModuleLineDecoder,
    encode_led,
)
from agent.waiters import Waiters

__all__ = ["COUNTER_NAMES", "SerialButtonInput"]

log = logging.getLogger("agent.serial")

READ_CHUNK: Final = 512
COUNTER_NAMES: Final = (
    "lines",  # valid CNBTN/CNCAT lines
    *REJECT_REASONS,  # dropped lines, by reason
    "opens",  # the port was opened
    "open_failures",  # an attempt to open it failed
    "disconnects",  # an open port failed (read error, device gone)
    "led_sent",  # CNLED lines written
    "led_no_port",  # send_led while the port is closed
    "led_send_failed",  # the write failed or was partial (output buffer full)
)


class SerialButtonInput:
    """The roof module on a serial port: button samples and categories in, LED modes out.

    ``port`` is a device path (``/dev/ttyS1``, a udev symlink, a pty). Callbacks run on the
    event loop: ``on_button(state, now)`` for each valid sample, ``on_category(category)``,
    ``on_state("ok" | "down")`` on changes. ``clock``, ``rng`` and the backoff bounds are for
    tests.
    """

    def __init__(
        self,
        port: str,
        baudrate: int = 115_200,
        *,
        on_button: Callable[[ButtonState, float], None],
        on_category: Callable[[str | None], None],
        on_state: Callable[[str], None],
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self._on_button = on_button
        self._on_category = on_category
        self._on_state = on_state
        self._backoff = (backoff_base, backoff_cap)
        self._clock = clock
        self._rng = rng or random.Random()
        self._splitter = LineSplitter()
        self._decoder = ModuleLineDecoder()
        self._serial: Any = None  # serial.Serial while open (pyserial is untyped)
        self._failed: asyncio.Future[BaseException] | None = None
        self._logged: set[str] = set()
        self._waiters = Waiters()
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.state = "unknown"
        self.led_mode: LedMode | None = None  # last mode asked for; re-sent on reopen

    # -- waiting (tests, demo) --------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[SerialButtonInput], bool]) -> None:
        """Wait until ``predicate(self)`` holds, re-checked after every line and state change.

        Bound it with ``asyncio.timeout``.
        """
        await self._waiters.wait(lambda: predicate(self))

    # -- LED --------------------------------------------------------------------------------

    def send_led(self, mode: LedMode) -> bool:
        """Write ``$CNLED,<mode>`` now; False when the port is closed or the write failed.

        The mode is remembered either way and written again when the port (re)opens.
        """
        self.led_mode = mode
        port = self._serial
        if port is None:
            self.counters["led_no_port"] += 1
            return False
        line = encode_led(mode)
        # os.write on the non-blocking descriptor, not Serial.write: pyserial's write with
        # write_timeout=0 retries EAGAIN in a busy loop, which would stall the event loop.
        try:
            written = os.write(port.fileno(), line)
        except BlockingIOError:
            written = 0
        except OSError as exc:  # EIO: the device is gone; the reader will notice it too
            self.counters["led_send_failed"] += 1
            self._log_once("led_write", "LED write to %s failed: %s", self.port, exc)
            self._fail(exc)
            return False
        if written != len(line):
            self.counters["led_send_failed"] += 1
            self._log_once(
                "led_partial", "LED write to %s incomplete: output buffer full", self.port
            )
            return False
        self.counters["led_sent"] += 1
        return True

    # -- the connection ---------------------------------------------------------------------

    async def run(self) -> None:
        """Open the port and read it; on failure close, back off, reopen: until cancelled."""
        loop = asyncio.get_running_loop()
        delays = backoff_delays(*self._backoff, self._rng)
        while True:
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                self.counters["open_failures"] += 1
                if self.state != "down":
                    log.warning("serial button %s cannot be opened: %s", self.port, exc)
                else:
                    log.debug("serial button %s cannot be opened: %s", self.port, exc)
                self._set_state("down")
            else:
                failed: asyncio.Future[BaseException] = loop.create_future()
                fd = port.fileno()
                self._serial, self._failed = port, failed
                self._splitter.reset()
                self._decoder.reset()
                loop.add_reader(fd, self._readable)
                try:
                    self.counters["opens"] += 1
                    log.info("serial button %s open at %d baud", self.port, self.baudrate)
                    self._set_state("ok")
                    if self.led_mode is not None:
                        self.send_led(self.led_mode)
                    reason = await failed
                    self.counters["disconnects"] += 1
                    log.warning("serial button %s failed: %s; reopening", self.port, reason)
                    self._set_state("down")
                    delays = backoff_delays(*self._backoff, self._rng)
                finally:
                    loop.remove_reader(fd)
                    self._serial, self._failed = None, None
                    with contextlib.suppress(serial.SerialException, OSError):
                        port.close()
            await asyncio.sleep(next(delays))

    def _open(self) -> Any:
        # timeout=0: reads return what is there; the descriptor is O_NONBLOCK. exclusive: a
        # second agent on the same port fails to open instead of stealing half the lines.
        return serial.Serial(
            self.port,
            self.baudrate,
            bytesize=serial.EIGHTBITS,
            parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE,
            timeout=0,
            write_timeout=0,
            exclusive=True,
        )

    def _fail(self, exc: BaseException) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(exc)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._on_state(state)
        self._waiters.notify()

    # -- reading ----------------------------------------------------------------------------

    def _readable(self) -> None:
        port = self._serial
        if port is None or (self._failed is not None and self._failed.done()):
            return
        try:
            chunk: bytes = port.read(READ_CHUNK)
        except (serial.SerialException, OSError) as exc:
            self._fail(exc)
            return
        if not chunk:
            return
        now = self._clock()
        for item in self._splitter.feed(chunk):
            self._on_line(item, now)
        self._waiters.notify()

    def _on_line(self, line: bytes | LineRejected, now: float) -> None:
        result = self._decoder.decode(line)
        if isinstance(result, LineRejected):
            self.counters[result.reason] += 1
            shown = "(discarded)" if isinstance(line, LineRejected) else repr(line[:40])
            self._log_once(
                result.reason,
                "serial button %s: dropped a line (%s): %s; further ones are only counted",
                self.port,
                result.reason,
                shown,
            )
            return
        self.counters["lines"] += 1
        if isinstance(result, ButtonLine):
            self._on_button(result.state, now)
        else:
            self._on_category(result.category)

    def _log_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(message, *args)
