"""Where the car is: the latest GPS fix, whether it can be trusted, and a short trail.

Pure: values in, values out. The monotonic clock (``now``, ``Fix.received``) and the wall
clock (``now_utc``) are passed in by the caller; nothing here reads a clock or does I/O.

``rfc3339_ms`` (the payloads' time format) is re-exported from :mod:`agent.core.clock`, so
there is one implementation whichever module a caller imports it from.

Privacy (SPEC §6): positions live only in this object's memory. The tracker keeps the latest
fix and a trail of at most :data:`TRAIL_LENGTH` earlier positions, nothing else, and no
``repr`` of a position object shows its coordinates, so a stray log line cannot leak one.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

from agent.core.clock import rfc3339_ms

__all__ = [
    "DEFAULT_CURRENT_S",
    "DEFAULT_RECENT_SPACING_M",
    "DEFAULT_RECENT_SPACING_S",
    "TRAIL_LENGTH",
    "TRUST_LIMIT_M",
    "Fix",
    "GpsState",
    "LocationTracker",
    "distance_m",
    "rfc3339_ms",
]


EARTH_RADIUS_M: Final = 6_371_008.8  # IUGG mean radius; plenty for distances of a few km


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in metres between two WGS84 positions."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True, slots=True)
class Fix:
    """One 2D or 3D position fix as gpsd reported it. ``None`` means "not reported", never 0.

    ``horizontal_accuracy_m`` is a 95 % horizontal error radius. The gpsd adapter derives it
    from gpsd's ``eph`` and ``epx``/``epy`` (see ``agent.core.gpsd_reports.horizontal_accuracy``).
    """

    time: datetime | None  # the fix's own UTC time from gpsd, None if gpsd did not report it
    lat: float = field(repr=False)
    lon: float = field(repr=False)
    alt_m: float | None
    heading_deg: float | None
    speed_kmh: float | None
    horizontal_accuracy_m: float | None
    mode: int  # 2 or 3
    received: float  # monotonic time of receipt, in the caller's clock

    def __post_init__(self) -> None:
        if self.mode not in (2, 3):
            raise ValueError(f"a fix has mode 2 or 3, not {self.mode!r}")
        if not (math.isfinite(self.lat) and -90.0 <= self.lat <= 90.0):
            raise ValueError("latitude out of range")
        if not (math.isfinite(self.lon) and -180.0 <= self.lon <= 180.0):
            raise ValueError("longitude out of range")
        if self.time is not None and self.time.utcoffset() is None:
            raise ValueError("fix time must be timezone-aware (UTC)")


GpsState = Literal["fix", "no_fix", "disconnected", "unknown"]

DEFAULT_CURRENT_S: Final = 5.0
# A fix's 95 % horizontal error must be within this for the position to be trusted (eCall's
# "positionCanBeTrusted" rule, SPEC §5).
TRUST_LIMIT_M: Final = 150.0
# The trail ("recent") exists so that the operator can see where the car came from: the
# direction of travel and therefore which carriageway of a motorway, or which side of a
# junction, it stopped on. Points 100 m apart make that direction unambiguous against
# typical 95 % errors of 5-20 m and carriageways some 20-30 m apart, and the two points
# still lie on the same road in town (a block is ~100 m). The 5 s floor keeps two points
# of one burst (or one multipath jump) out: at motorway speed the points end up ~140-170 m
# and 5 s apart, so the two cover the last ~300 m / 10 s. Both conditions must hold, and
# that is what makes a *stopped* car keep its
# approach trail: a car on the hard shoulder adds no new points however long it waits,
# whereas "100 m or 5 s" would, after 10 s, fill the trail with copies of the spot where it
# stands and lose the direction it came from.
DEFAULT_RECENT_SPACING_M: Final = 100.0
DEFAULT_RECENT_SPACING_S: Final = 5.0
# Positions kept besides the latest fix: two for "recent", plus one because the newest trail
# point is usually the current position itself (or too close to it) and is skipped.
TRAIL_LENGTH: Final = 3
RECENT_MAX: Final = 2


@dataclass(frozen=True, slots=True)
class _TrailPoint:
    lat: float = field(repr=False)
    lon: float = field(repr=False)
    time: datetime | None
    received: float


class LocationTracker:
    """Turns fixes and gpsd state changes into the request's ``location`` object.

    ``current_s``: a fix older than this (by receipt) is only "last_known" and never trusted.
    ``recent_spacing_m`` / ``recent_spacing_s``: a position joins the trail only when it is at
    least this far *and* this long after the previous trail point (see the defaults above).
    """

    def __init__(
        self,
        *,
        current_s: float = DEFAULT_CURRENT_S,
        recent_spacing_m: float = DEFAULT_RECENT_SPACING_M,
        recent_spacing_s: float = DEFAULT_RECENT_SPACING_S,
    ) -> None:
        if not current_s > 0:
            raise ValueError("current_s must be positive")
        if not (recent_spacing_m >= 0 and recent_spacing_s >= 0):
            raise ValueError("recent spacings must not be negative")
        if recent_spacing_m == 0 and recent_spacing_s == 0:
            raise ValueError("at least one recent spacing must be positive")
        self._current_s = current_s
        self._spacing_m = recent_spacing_m
        self._spacing_s = recent_spacing_s
        self._last: Fix | None = None
        self._lost = False  # gpsd reported no fix or went away after self._last
        self._state: GpsState = "unknown"
        self._trail: deque[_TrailPoint] = deque(maxlen=TRAIL_LENGTH)

    # -- events -----------------------------------------------------------------------------

    def on_fix(self, fix: Fix) -> None:
        self._last = fix
        self._lost = False
        self._state = "fix"
        if not self._trail or self._spaced(self._trail[-1], fix.lat, fix.lon, fix.received):
            self._trail.append(_TrailPoint(fix.lat, fix.lon, fix.time, fix.received))

    def on_no_fix(self, now: float) -> None:
        """gpsd reports mode 0/1 (or went silent): the last fix, if any, is only last known."""
        del now  # the fix's age is measured from its receipt; kept for a uniform event API
        self._lost = True
        self._state = "no_fix"

    def on_disconnected(self, now: float) -> None:
        del now
        self._lost = True
        self._state = "disconnected"

    # -- queries ----------------------------------------------------------------------------

    @property
    def gps_state(self) -> GpsState:
        """The receiver's state for the status topic; deliberately never a position."""
        return self._state

    def snapshot(self, now: float, now_utc: datetime) -> dict[str, object]:
        """The SPEC §5 ``location`` object, every key present; unknown values are ``None``.

        ``now`` is the monotonic clock (same clock as ``Fix.received``), ``now_utc`` the aware
        wall clock, used only to date trail points whose fix carried no time.
        """
        fix = self._last
        if fix is None:
            return {
                "lat": None,
                "lon": None,
                "alt_m": None,
                "heading_deg": None,
                "speed_kmh": None,
                "horizontal_accuracy_m": None,
                "fix": "none",
                "fix_time": None,
                "fix_age_s": None,
                "trusted": False,
                "country": None,
                "locality": None,
                "recent": [],
            }
        age = max(0.0, now - fix.received)
        current = not self._lost and age <= self._current_s
        accuracy = fix.horizontal_accuracy_m
        return {
            "lat": fix.lat,
            "lon": fix.lon,
            "alt_m": fix.alt_m,
            "heading_deg": fix.heading_deg,
            "speed_kmh": fix.speed_kmh,
            "horizontal_accuracy_m": accuracy,
            "fix": ("3d" if fix.mode == 3 else "2d") if current else "last_known",
            "fix_time": rfc3339_ms(fix.time) if fix.time is not None else None,
            "fix_age_s": round(age, 1),
            "trusted": current and accuracy is not None and accuracy <= TRUST_LIMIT_M,
            "country": None,
            "locality": None,
            "recent": self._recent(fix, now, now_utc),
        }

    # -- internals --------------------------------------------------------------------------

    def _spaced(self, older: _TrailPoint, lat: float, lon: float, received: float) -> bool:
        return (
            received - older.received >= self._spacing_s
            and distance_m(older.lat, older.lon, lat, lon) >= self._spacing_m
        )

    def _recent(self, fix: Fix, now: float, now_utc: datetime) -> list[dict[str, object]]:
        recent: list[dict[str, object]] = []
        ref_lat, ref_lon, ref_received = fix.lat, fix.lon, fix.received
        for point in reversed(self._trail):
            if len(recent) == RECENT_MAX:
                break
            # Skips the current fix itself and a trail point too close to it; the older trail
            # points are spaced among themselves by construction.
            if not self._spaced(point, ref_lat, ref_lon, ref_received):
                continue
            when = point.time
            if when is None:  # date it by its receipt on the wall clock
                when = now_utc - timedelta(seconds=max(0.0, now - point.received))
            recent.append({"lat": point.lat, "lon": point.lon, "time": rfc3339_ms(when)})
            ref_lat, ref_lon, ref_received = point.lat, point.lon, point.received
        return recent
