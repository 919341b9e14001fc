"""The board's clocks, read: the system time, the monotonic and boot clocks, the boot id and
systemd-timesyncd's "synchronised" flag, given to the pure :class:`~agent.core.wallclock.
WallClock`, which decides which wall time the agent uses (see there and the README's "The
clock"). GPS time comes in from the agent's gpsd events (:meth:`SystemClock.on_gps_time`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from agent import BUILD_DATE
from agent.core.clock import rfc3339_ms
from agent.core.wallclock import Reading, Source, Stamp, WallClock

__all__ = ["FLOOR", "SYNCHRONIZED", "SystemClock", "boot_id", "synchronized", "system_stamp"]

log = logging.getLogger("agent.clock")

FLOOR = datetime.fromisoformat(BUILD_DATE).replace(tzinfo=UTC)
SYNCHRONIZED = Path("/run/systemd/timesync/synchronized")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """The kernel's id of this boot; "" where there is none (ages then never span boots)."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def boot_s() -> float:
    """CLOCK_BOOTTIME: monotonic, counting suspend, set by nothing."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def synchronized(flag: Path) -> bool | None:
    """systemd-timesyncd touches ``flag`` once it has set the clock; None where it does not run.

    The flag's directory exists while timesyncd runs (its RuntimeDirectory); without it (no
    timesyncd, or chrony instead) there is no signal, and only the build date is checked.
    """
    if flag.exists():
        return True
    return False if flag.parent.is_dir() else None


class SystemClock:
    """The wall clock the agent uses, and the stamps the outbox keeps.

    ``on_step`` hears of a step of the system clock (seconds), on whatever call noticed it:
    schedule work, do not do it inside.
    """

    def __init__(
        self,
        *,
        floor: datetime = FLOOR,
        flag: Path = SYNCHRONIZED,
        on_step: Callable[[float], None] | None = None,
    ) -> None:
        self.core = WallClock(floor)
        self.flag = flag
        self.boot_id = boot_id()
        self._on_step = on_step
        self._source: Source | None = None
        self.counters: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def reading(self) -> Reading:
        system = datetime.now(UTC)
        mono = time.monotonic()
        step = self.core.step(system, mono)
        reading = self.core.now(system, mono, synchronized(self.flag))
        if step is not None:
            self._count("clock_steps")
            log.warning(
                "the system clock was stepped by %+.0f s (now %s)", step, rfc3339_ms(system)
            )
            if self._on_step is not None:
                self._on_step(step)
        if reading.source != self._source:
            self._source = reading.source
            self._log_source(reading, system)
        return reading

    def _log_source(self, reading: Reading, system: datetime) -> None:
        if reading.source == "system":
            log.info("wall clock: the system clock (%s)", rfc3339_ms(system))
            return
        why = (
            f"before the build date {BUILD_DATE}"
            if system < self.core.floor
            else f"not synchronised ({self.flag} missing)"
        )
        if reading.source == "gps":
            log.warning(
                "wall clock: GPS time %s; the system clock %s is %s",
                rfc3339_ms(reading.utc),
                rfc3339_ms(system),
                why,
            )
        else:
            log.warning(
                "wall clock: unsynced; the system clock %s is %s and gpsd has given no time "
                "yet (docs/deploy.md: set the clock from gpsd with chrony)",
                rfc3339_ms(system),
                why,
            )

    @property
    def source(self) -> Source:
        return self.reading().source

    def now_utc(self) -> datetime:
        return self.reading().utc

    def stamp(self) -> Stamp:
        reading = self.reading()
        return Stamp(reading.utc.timestamp(), reading.trusted, self.boot_id, boot_s())

    def on_gps_time(self, utc: datetime, received: float) -> None:
        """The time of a fix from gpsd, received at monotonic ``received``."""
        if not self.core.on_gps_time(utc, received):
            self._count("gps_time_implausible")


_DEFAULT: SystemClock | None = None


def system_stamp() -> Stamp:
    """A stamp from the system clock alone (no GPS): the outbox's default clock."""
    global _DEFAULT  # noqa: PLW0603 - one reader of the boot id per process
    if _DEFAULT is None:
        _DEFAULT = SystemClock()
    return _DEFAULT.stamp()
