"""Which wall clock to believe, and how old a stored message is, on a board without an RTC.

Pure: the system time, the monotonic clock, the boot clock and the system's "synchronised"
signal are passed in; nothing here reads a clock or a file.

Until NTP or GPS sets it, a board without a battery-backed real-time clock starts at 1970 or
at its image's build date. :class:`WallClock` decides which wall time to use:

- ``"system"``: the system clock is trusted: not before the package's build date (a time
  before it cannot be right) and, where the system has a "synchronised" signal (systemd-
  timesyncd's ``/run/systemd/timesync/synchronized``), that signal is present;
- ``"gps"``: otherwise, gpsd's TPV ``time`` (of a 2D or 3D fix) carried forward on the
  monotonic clock, which no setting of the wall clock moves;
- ``"unsynced"``: neither: the system time is all there is, and it is marked as such.

A message's age (:func:`age_s`) is measured so that a step of the wall clock, even of years,
cannot make it look old: within one boot by the boot clock (``CLOCK_BOOTTIME``, which counts
suspend and which nothing sets), across boots by wall times only when both ends were read
from a trusted clock; otherwise the age is unknown and the message is kept.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final, Literal

__all__ = ["GPS_SAMPLES", "STEP_S", "Reading", "Source", "Stamp", "WallClock", "age_s", "settle"]

Source = Literal["system", "gps", "unsynced"]

GPS_SAMPLES: Final = 16  # TPV times kept: their median offset is the GPS clock
STEP_S: Final = 2.0  # a change of system minus monotonic time beyond this is a step, not a slew


@dataclass(frozen=True, slots=True)
class Reading:
    """A wall time and where it came from."""

    utc: datetime
    source: Source

    @property
    def trusted(self) -> bool:
        return self.source != "unsynced"


@dataclass(frozen=True, slots=True)
class Stamp:
    """When something was stored, by every clock that helps tell its age later.

    ``wall``: unix time from the best wall clock then; ``trusted``: that clock was trusted
    (system or GPS); ``boot_id``: the kernel's boot id ("" when unknown); ``boot_s``: the boot
    clock (CLOCK_BOOTTIME) then, meaningful within that boot only.
    """

    wall: float
    trusted: bool
    boot_id: str
    boot_s: float


def age_s(then: Stamp, now: Stamp) -> float | None:
    """Seconds since ``then``, or None when no clock can tell (keep it, then)."""
    if then.boot_id and then.boot_id == now.boot_id:
        return max(0.0, now.boot_s - then.boot_s)
    if then.trusted and now.trusted:
        return max(0.0, now.wall - then.wall)
    return None


def settle(then: Stamp, now: Stamp) -> Stamp:
    """The stamp to keep for a stored row so that its age stays measurable.

    A row stamped by an untrusted clock in another boot has an unknown age: it is taken into
    this boot with age zero (a lower bound: it is purged at the earliest one retention period
    from now, never early). A row of this boot stamped by an untrusted clock is dated from the
    boot clock once the clock is trusted, so its age survives the next reboot.
    """
    same_boot = bool(then.boot_id) and then.boot_id == now.boot_id
    if not same_boot and not then.trusted:
        then = replace(then, boot_id=now.boot_id, boot_s=now.boot_s)
        same_boot = bool(now.boot_id)
    if same_boot and not then.trusted and now.trusted:
        then = replace(then, wall=now.wall - (now.boot_s - then.boot_s), trusted=True)
    return then


class WallClock:
    """The wall clock to use: the system's when trusted, else GPS time, else "unsynced".

    ``floor``: the earliest time that can be right (the package's build date).
    """

    def __init__(self, floor: datetime) -> None:
        if floor.tzinfo is None:
            raise ValueError("floor must be timezone-aware")
        self.floor = floor
        self._offsets: deque[float] = deque(maxlen=GPS_SAMPLES)  # GPS time minus monotonic
        self._gps_offset: float | None = None
        self._system_offset: float | None = None  # system time minus monotonic, last seen

    def system_trusted(self, system_utc: datetime, synchronized: bool | None) -> bool:
        """Not before the build date, and synchronised where the system says (None: no signal)."""
        return system_utc >= self.floor and synchronized is not False

    def on_gps_time(self, utc: datetime, received: float) -> bool:
        """The time of a 2D/3D fix, received at monotonic ``received``; False if implausible.

        A receiver's time before the build date (a GPS week-number rollover, a receiver
        without almanac) is not used. TPVs arrive a little after their time, by a varying
        delay; the median of the last few offsets is robust to one late or wrong report.
        """
        if utc < self.floor:
            return False
        self._offsets.append(utc.timestamp() - received)
        self._gps_offset = statistics.median(self._offsets)
        return True

    @property
    def has_gps(self) -> bool:
        return self._gps_offset is not None

    def now(self, system_utc: datetime, mono: float, synchronized: bool | None) -> Reading:
        if self.system_trusted(system_utc, synchronized):
            return Reading(system_utc, "system")
        if self._gps_offset is not None:
            return Reading(datetime.fromtimestamp(mono + self._gps_offset, UTC), "gps")
        return Reading(system_utc, "unsynced")

    def step(self, system_utc: datetime, mono: float) -> float | None:
        """How far the system clock was stepped since the last call (None: not stepped).

        NTP slews small errors and steps large ones; chrony's ``makestep`` or a GPS refclock
        on a board that booted in 1970 steps by decades.
        """
        offset = system_utc.timestamp() - mono
        last, self._system_offset = self._system_offset, offset
        if last is None or abs(offset - last) <= STEP_S:
            return None
        return offset - last
