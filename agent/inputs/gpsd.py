"""gpsd adapter: a TCP client of gpsd's JSON protocol that feeds fixes to the location core.

Two layers, like everywhere in the agent:

* pure decoding (:func:`decode_report`, :func:`fix_from_tpv`, :func:`horizontal_accuracy`):
  one line of gpsd JSON in, a :class:`~agent.core.location.Fix` / "no fix" / :class:`BadReport`
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
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final, Protocol

from agent.backoff import backoff_delays
from agent.core.location import Fix
from agent.errors import GpsError

__all__ = [
    "MAX_LINE_BYTES",
    "WATCH_COMMAND",
    "BadReport",
    "FixSink",
    "GpsdSource",
    "decode_report",
    "fix_from_tpv",
    "horizontal_accuracy",
]

log = logging.getLogger("agent.gpsd")

WATCH_COMMAND: Final = b'?WATCH={"enable":true,"json":true}\n'
# gpsd's longest reports (SKY with dozens of satellites, DEVICES) are a few KiB; gpsd itself
# caps a JSON response at 10 KiB. A longer line is not gpsd talking: dropped and counted.
MAX_LINE_BYTES: Final = 16 * 1024
DEFAULT_PORT: Final = 2947
MS_TO_KMH: Final = 3.6

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


class BadReport(GpsError):
    """One report from gpsd that cannot be used; ``kind`` is the counter it goes to."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class FixSink(Protocol):
    """What the adapter feeds; :class:`~agent.core.location.LocationTracker` is one."""

    def on_fix(self, fix: Fix) -> None: ...
    def on_no_fix(self, now: float) -> None: ...
    def on_disconnected(self, now: float) -> None: ...


# -- pure decoding ---------------------------------------------------------------------------


def decode_report(line: bytes) -> dict[str, object]:
    """One line from gpsd as a JSON object with a string ``class``; else :class:`BadReport`."""
    try:
        value = json.loads(line)
    except RecursionError:
        raise BadReport("bad_json", "nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise BadReport("bad_json", f"not UTF-8 at byte {exc.start}") from None
    except ValueError as exc:  # json.JSONDecodeError; its message has positions, no content
        raise BadReport("bad_json", str(exc)) from None
    if not isinstance(value, dict):
        raise BadReport("bad_json", f"a JSON {type(value).__name__}, not an object")
    if not isinstance(value.get("class"), str):
        raise BadReport("bad_report", "no string 'class' member")
    return value


def _number(report: Mapping[str, object], key: str) -> float | None:
    """A numeric member, ``None`` when absent or null (gpsd omits what it does not know).

    Anything else that is not a finite number (a string, a bool, NaN or Infinity, which
    gpsd never sends) makes the whole report :class:`BadReport` ``bad_tpv``: the next TPV is
    at most a second away, a half-trusted one is not worth it.
    """
    value = report.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadReport("bad_tpv", f"{key!r} is a {type(value).__name__}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise BadReport("bad_tpv", f"{key!r} is not finite")
    return number


def _non_negative(report: Mapping[str, object], key: str) -> float | None:
    number = _number(report, key)
    return number if number is not None and number >= 0 else None


def horizontal_accuracy(report: Mapping[str, object]) -> float | None:
    """The fix's 95 % horizontal error radius in metres, from gpsd's error estimates.

    gpsd has two: ``eph`` (horizontal position error) and ``epx``/``epy`` (longitude and
    latitude error). Without receiver figures it derives them from the DOPs with 95 % UEREs:
    ``eph = HDOP * 19 m`` and ``epx``/``epy = XDOP``/``YDOP * 15 m``; receivers that report
    their own estimate (u-blox ``hAcc``, Garmin, SiRF) put it in ``eph`` as is, often at 1 sigma
    (about 68 %), which gpsd documents as "certainty unknown". Per-axis 95 % errors combine
    to ``hypot(epx, epy)``: for a circular error that is a slightly conservative 95 % radius
    (about 98 %), and with DOP-based figures it equals ``HDOP * 15 m``. We take the larger of
    the two estimates that are present, so the trust decision (≤ 150 m) is never made on the
    more optimistic figure; ``None`` when gpsd gave neither.
    """
    eph = _non_negative(report, "eph")
    epx = _non_negative(report, "epx")
    epy = _non_negative(report, "epy")
    per_axis = math.hypot(epx, epy) if epx is not None and epy is not None else None
    candidates = [e for e in (eph, per_axis) if e is not None]
    return round(max(candidates), 2) if candidates else None


def _time(report: Mapping[str, object]) -> datetime | None:
    value = report.get("time")
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadReport("bad_time", f"'time' is a {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadReport("bad_time", "'time' is not ISO 8601") from None
    if moment.tzinfo is None:  # gpsd's time is UTC by definition
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def fix_from_tpv(report: Mapping[str, object], received: float) -> tuple[Fix | None, str | None]:
    """Decode a TPV report: ``(fix, None)``, ``(None, None)`` for no fix, or raise.

    The second element names a tolerated defect (``"bad_time"``: the fix is kept without its
    time). Raises :class:`BadReport` ``incomplete_tpv`` for a mode 2/3 report without a
    position (gpsd emits those mid-cycle) and ``bad_tpv`` for malformed ones.
    """
    mode = report.get("mode")
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 3:
        raise BadReport("bad_tpv", "'mode' missing or not 0-3")
    if mode < 2:
        return None, None
    lat, lon = _number(report, "lat"), _number(report, "lon")
    if lat is None or lon is None:
        raise BadReport("incomplete_tpv", "no lat/lon")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise BadReport("bad_tpv", "lat/lon out of range")
    # Altitude only for a 3D fix: in 2D the receiver assumed it. Prefer altHAE (gpsd >= 3.20),
    # else the legacy 'alt' (older gpsd); both are None when absent, never 0.
    alt = None
    if mode == 3:
        alt = _number(report, "altHAE")
        if alt is None:
            alt = _number(report, "alt")
    track = _number(report, "track")
    speed = _non_negative(report, "speed")
    accuracy = horizontal_accuracy(report)
    defect = None
    try:
        moment = _time(report)
    except BadReport as exc:
        moment, defect = None, exc.kind
    try:
        fix = Fix(
            time=moment,
            lat=lat,
            lon=lon,
            alt_m=round(alt, 2) if alt is not None else None,
            heading_deg=round(track % 360.0, 2) if track is not None else None,
            speed_kmh=round(speed * MS_TO_KMH, 2) if speed is not None else None,
            horizontal_accuracy_m=accuracy,
            mode=mode,
            received=received,
        )
    except ValueError as exc:  # Fix guards its own invariants; nothing may get past them
        raise BadReport("bad_tpv", str(exc)) from None
    return fix, defect


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
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[GpsdSource], bool]) -> None:
        """Wait until ``predicate(self)`` holds, re-checked after every line and state change.

        Bound it with ``asyncio.timeout``.
        """
        while not predicate(self):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

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
                    self._notify()
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
                self._notify()
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
        self._notify()

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
        self._notify()

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
