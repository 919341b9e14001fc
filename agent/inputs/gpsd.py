"""gpsd adapter: a TCP client of gpsd's JSON protocol that feeds fixes to the location core.

Two layers, like everywhere in the agent:

* pure decoding in :mod:`agent.core.gpsd_reports`: one line of gpsd JSON in, a
  :class:`~agent.core.location.Fix` / "no fix" / :class:`~agent.core.gpsd_reports.BadReport`
  out; no I/O, no clock;
* :class:`GpsdSource`, which only moves bytes: it connects with asyncio streams, sends
  ``?WATCH={"enable":true,"json":true}``, reads newline-delimited reports and calls its sink,
  reconnecting forever with capped exponential backoff and full jitter.

Bad input (invalid JSON or UTF-8, wrong types, NaN, missing fields, over-long lines) is
counted in :attr:`GpsdSource.counters`, logged once per kind with context, and survived.
Logs carry counts, states and field *names*, never a position (SPEC §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from agent.backoff import backoff_delays
from agent.core.gpsd_reports import BadReport, decode_report, fix_from_tpv
from agent.core.location import Fix
from agent.waiters import Waiters

__all__ = ["COUNTER_NAMES", "MAX_LINE_BYTES", "WATCH_COMMAND", "FixSink", "GpsdSource"]

log = logging.getLogger("agent.gpsd")

WATCH_COMMAND: Final = b'?WATCH={"enable":true,"json":true}\n'
# gpsd's longest reports (SKY with dozens of satellites, DEVICES) are a few KiB; gpsd itself
# caps a JSON response at 10 KiB. A longer line is not gpsd talking: dropped and counted.
MAX_LINE_BYTES: Final = 16 * 1024
DEFAULT_PORT: Final = 2947

COUNTER_NAMES: Final = (
    "connects",  # TCP connections to gpsd established
    "connect_failures",  # connection attempts that failed
    "disconnects",  # established connections that ended
    "reports",  # valid JSON reports received (any class)
    "fixes",  # TPV mode 2/3 with a position, given to the sink
    "no_fix",  # TPV mode 0/1, given to the sink
    "incomplete_tpv",  # TPV mode 2/3 without lat/lon (gpsd sends these mid-cycle): ignored
    "silences",  # no TPV for silence_s: reported as no fix
    "bad_json",  # not JSON, not UTF-8, too deeply nested, or not an object
    "bad_report",  # JSON object without a string "class"
    "bad_tpv",  # TPV with a missing or malformed mode, lat/lon or numeric field
    "bad_time",  # TPV whose time is not an RFC 3339 string: the fix is kept without it
    "line_too_long",  # over MAX_LINE_BYTES before the newline: skipped up to the next one
    "gpsd_errors",  # ERROR reports from gpsd (it did not understand us)
)


class FixSink(Protocol):
    """What the adapter feeds; :class:`~agent.core.location.LocationTracker` is one."""

    def on_fix(self, fix: Fix) -> None: ...
    def on_no_fix(self, now: float) -> None: ...
    def on_disconnected(self, now: float) -> None: ...


# -- the adapter ------------------------------------------------------------------------------


class _Lines:
    """Newline-delimited lines from a stream, each at most ``limit`` bytes.

    An over-long line is skipped up to its newline and reported once as ``None``; the
    skipping state survives a cancelled read (the silence timeout).
    """

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._skipping = False

    async def next(self) -> bytes | None:
        """The next line (with its newline), ``None`` for a dropped over-long one.

        Raises :class:`EOFError` (``IncompleteReadError``) at the end of the stream.
        """
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                # The data stays buffered: drop what was scanned and keep skipping.
                await self._reader.readexactly(exc.consumed)
                self._skipping = True
                continue
            if self._skipping:
                self._skipping = False
                return None
            return line


class GpsdSource:
    """Reads gpsd and tells ``sink`` about fixes, lost fixes and lost connections.

    ``silence_s``: when no usable TPV arrives for this long (gpsd up, its receiver gone
    quiet or unplugged), the sink hears ``on_no_fix``, once per silence: gpsd itself says
    nothing when a receiver stops talking. ``rng`` and ``clock`` are for tests.
    """

    def __init__(
        self,
        host: str,
        port: int,
        sink: FixSink,
        *,
        backoff_base: float = 0.2,
        backoff_cap: float = 10.0,
        connect_timeout: float = 5.0,
        silence_s: float = 5.0,
        max_line: int = MAX_LINE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._sink = sink
        self._backoff = (backoff_base, backoff_cap)
        self._connect_timeout = connect_timeout
        self._silence_s = silence_s
        self._max_line = max_line
        self._clock = clock
        self._rng = rng
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.connected = False
        self._reported_down = False  # the sink has heard on_disconnected for this outage
        self._failures = 0  # failed attempts in the current outage
        self._silent = False  # the sink has heard on_no_fix for the current silence
        self._tpv_seen = False  # a usable TPV arrived since the session last looked
        self._logged: set[str] = set()
        self._waiters = Waiters()

    async def wait_for(self, predicate: Callable[[GpsdSource], bool]) -> None:
        """Wait until ``predicate(self)`` holds, re-checked after every line and state change.

        Bound it with ``asyncio.timeout``.
        """
        await self._waiters.wait(lambda: predicate(self))

    async def run(self) -> None:
        """Connect, read, reconnect; forever, until cancelled. Never raises for gpsd's sake."""
        delays = backoff_delays(*self._backoff, self._rng)
        while True:
            productive = False
            try:
                productive = await self._session()
                reason = "gpsd closed the connection"
            except (OSError, EOFError) as exc:  # refused, reset, timed out (an OSError), EOF
                reason = _describe(exc)
            self._went_down(reason)
            if productive:  # a session that spoke gpsd resets the backoff
                delays = backoff_delays(*self._backoff, self._rng)
            await asyncio.sleep(next(delays))

    # -- one connection -------------------------------------------------------------------

    async def _session(self) -> bool:
        """One connection; returns whether gpsd sent at least one valid report."""
        async with asyncio.timeout(self._connect_timeout):
            reader, writer = await asyncio.open_connection(
                self.host, self.port, limit=self._max_line
            )
        productive = False
        try:
            self._came_up()
            writer.write(WATCH_COMMAND)
            await writer.drain()
            lines = _Lines(reader)
            loop = asyncio.get_running_loop()
            silence_ends = loop.time() + self._silence_s  # unless a TPV comes first
            while True:
                try:
                    async with asyncio.timeout_at(silence_ends):
                        line = await lines.next()
                except TimeoutError:
                    self._on_silence()
                    silence_ends = loop.time() + self._silence_s
                    self._waiters.notify()
                    continue
                except asyncio.IncompleteReadError:
                    return productive
                if line is None:
                    self._bad("line_too_long", f"over {self._max_line} bytes without a newline")
                else:
                    productive = self._on_line(line) or productive
                if self._tpv_seen:  # SKY, DEVICE and garbage do not end a silence
                    self._tpv_seen = False
                    silence_ends = loop.time() + self._silence_s
                self._waiters.notify()
        finally:
            writer.close()
            # A reset from the peer of an already dead connection: it is closed either way.
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _on_line(self, line: bytes) -> bool:
        """Handle one line; returns whether it was a valid gpsd report."""
        if not line.strip():
            return False
        now = self._clock()
        try:
            report = decode_report(line)
        except BadReport as exc:
            self._bad(exc.kind, f"{exc.detail} ({len(line)} bytes)")
            return False
        self.counters["reports"] += 1
        kind = report["class"]
        if kind == "TPV":
            self._on_tpv(report, now)
        elif kind == "VERSION":
            self._log_once(
                "version",
                logging.INFO,
                "gpsd %s, protocol %s.%s",
                _text(report.get("release")),
                _text(report.get("proto_major")),
                _text(report.get("proto_minor")),
            )
        elif kind == "ERROR":
            self.counters["gpsd_errors"] += 1
            self._log_once(
                "gpsd_error",
                logging.WARNING,
                "gpsd reports an error: %s",
                _text(report.get("message"))[:200],
            )
        return True  # SKY, DEVICES, WATCH, DEVICE...: valid, nothing for us

    def _on_tpv(self, report: Mapping[str, object], now: float) -> None:
        try:
            fix, defect = fix_from_tpv(report, now)
        except BadReport as exc:
            if exc.kind == "incomplete_tpv":
                self.counters["incomplete_tpv"] += 1  # normal mid-cycle report: not logged
            else:
                self._bad(exc.kind, f"{exc.detail}; members {_members(report)}")
            return
        self._silent = False
        self._tpv_seen = True
        if defect is not None:
            self._bad(defect, f"kept the fix without its time; members {_members(report)}")
        if fix is None:
            self.counters["no_fix"] += 1
            self._sink.on_no_fix(now)
        else:
            self.counters["fixes"] += 1
            self._sink.on_fix(fix)

    def _on_silence(self) -> None:
        if self._silent:
            return
        self._silent = True
        self.counters["silences"] += 1
        log.info("no TPV from gpsd for %.1f s: reporting no fix", self._silence_s)
        self._sink.on_no_fix(self._clock())

    # -- connection state -----------------------------------------------------------------

    def _came_up(self) -> None:
        self.counters["connects"] += 1
        self.connected = True
        self._silent = False
        if self._failures:
            log.info(
                "reconnected to gpsd at %s:%d after %d failed attempt(s)",
                self.host,
                self.port,
                self._failures,
            )
        elif self._reported_down:
            log.info("reconnected to gpsd at %s:%d", self.host, self.port)
        else:
            log.info("connected to gpsd at %s:%d", self.host, self.port)
        self._failures = 0
        self._reported_down = False
        self._waiters.notify()

    def _went_down(self, reason: str) -> None:
        if self.connected:
            self.counters["disconnects"] += 1
            log.warning("lost gpsd at %s:%d: %s; reconnecting", self.host, self.port, reason)
        else:
            self.counters["connect_failures"] += 1
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            log.log(
                level,
                "cannot reach gpsd at %s:%d: %s (attempt %d); retrying with backoff",
                self.host,
                self.port,
                reason,
                self._failures,
            )
        self.connected = False
        if not self._reported_down:
            self._reported_down = True
            self._sink.on_disconnected(self._clock())
        self._waiters.notify()

    # -- bookkeeping ----------------------------------------------------------------------

    def _bad(self, kind: str, context: str) -> None:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        self._log_once(
            kind,
            logging.WARNING,
            "dropped bad input from gpsd at %s:%d: %s, %s; further ones are "
            "only counted (counters[%r])",
            self.host,
            self.port,
            kind,
            context,
            kind,
        )

    def _log_once(self, key: str, level: int, message: str, *args: object) -> None:
        if key in self._logged:
            return
        self._logged.add(key)
        log.log(level, message, *args)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def _members(report: Mapping[str, object]) -> str:
    """The member names of a report, for context: names only, values could be a position."""
    return ",".join(sorted(str(k) for k in report)[:20])
