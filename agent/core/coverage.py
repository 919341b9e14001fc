"""The coverage check: is this call covered by the assistance terms? Advisory, pure, total.

The terms are data, a profile file (``config/coverage/polestar.toml`` is the Polestar one), so
another programme's rules load without a code change. :func:`evaluate` takes every fact as a
value, the clock included, and never raises: a missing or nonsensical input makes its rule
``unknown``, because coverage never blocks a call and the backend has the final word.

Four rules, each passing, failing or unknown:

area
    The country of the position must be listed and the position must not be in an excluded
    area (``Place.area``, e.g. ``"north-cyprus"``). A country with a limit (Russia) is covered
    only within ``within_km`` of the ring of a listed city: each city is a centre and the
    radius of its outer ring, and the distance is measured from that ring.
period
    Cover runs for ``years`` from the first registration (per registration country where the
    profile says so: 5 years in CH), to the day before that anniversary, or to the vehicle
    profile's extension end date when that is later. The date checked is the day of
    immobilisation (of the call if that is unknown), in UTC.
reporting
    The immobilisation must be reported within ``within_hours`` of it happening (inclusive).
events
    The problem category must be a covered event; one the profile excludes fails, one it does
    not list at all (``other``) is ``unknown``: the operator decides.

The status is ``not_covered`` when any rule fails, else ``unknown`` when any is unknown, else
``covered``. ``reasons`` has one line for every rule that did not pass, failures first, and is
empty when covered.

The profile itself is parsed from values by :mod:`agent.core.coverage_profile`; the file is
read by ``agent.config.profile``. Nothing here reads a file or logs: a bug in a rule is
returned as ``CoverageResult.error`` for the caller to log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from agent.core.coverage_profile import CATEGORIES, CountryLimit, CoverageProfile, LimitCity
from agent.core.geo import Place

__all__ = [
    "CATEGORIES",
    "CountryLimit",
    "CoverageProfile",
    "CoverageResult",
    "LimitCity",
    "evaluate",
]

_EARTH_RADIUS_KM = 6371.0088
_CLOCK_SKEW = timedelta(minutes=5)

Status = Literal["covered", "not_covered", "unknown"]


# -- result -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoverageResult:
    """The request's ``coverage`` object (SPEC section 5)."""

    status: Status
    reasons: tuple[str, ...]
    valid_until: date | None
    country_covered: bool | None
    reported_within_24h: bool | None
    error: str | None = None  # a bug in a rule ("coverage check failed"), for the caller to log

    def to_json(self) -> dict[str, object]:
        return {
            "status": self.status,
            "reasons": list(self.reasons),
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "country_covered": self.country_covered,
            "reported_within_24h": self.reported_within_24h,
        }


@dataclass(frozen=True, slots=True)
class _Verdict:
    ok: bool | None  # True passes, False fails, None unknown
    reason: str = ""


# -- rules ------------------------------------------------------------------------------------


def _distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def _valid_position(lat: float | None, lon: float | None) -> tuple[float, float] | None:
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return float(lat), float(lon)


def _fmt_km(km: float) -> str:
    return f"{km:.0f} km" if km >= 10 else f"{km:.1f} km"


def _area_rule(
    profile: CoverageProfile, place: Place | None, position: tuple[float, float] | None
) -> _Verdict:
    country = place.country if isinstance(place, Place) else None
    if not isinstance(country, str) or not country:
        if position is None:
            return _Verdict(None, "country unknown: no valid position")
        return _Verdict(None, "country unknown: at sea or outside the map")
    if country not in profile.countries:
        return _Verdict(False, f"outside coverage area: {country} is not a covered country")
    area = place.area if isinstance(place, Place) else None
    if isinstance(area, str) and area in profile.excluded_areas:
        return _Verdict(False, f"outside coverage area: {area} ({country}) is excluded")
    limit = profile.limit_for(country)
    if limit is None:
        return _Verdict(True)
    rule = f"{country} is covered only within {_fmt_km(limit.within_km)} of listed cities"
    if position is None:
        return _Verdict(None, f"coverage area unknown: {rule} and the position is unknown")
    lat, lon = position
    beyond = [(_distance_km(lat, lon, c.lat, c.lon) - c.ring_km, c.name) for c in limit.cities]
    gap, nearest = min(beyond)
    if gap <= limit.within_km:
        return _Verdict(True)
    return _Verdict(
        False,
        f"outside coverage area: {country} beyond {_fmt_km(limit.within_km)} of listed cities "
        f"(nearest {nearest}, {_fmt_km(gap)} from its ring)",
    )


def _anniversary_eve(start: date, years: int) -> date:
    """The last day of ``years`` years from ``start`` (29 February counts to 28 February)."""
    year = start.year + years
    if year > date.max.year:
        return date.max
    try:
        anniversary = start.replace(year=year)
    except ValueError:  # 29 February in a common year: the cover runs to the 28th
        return date(year, 2, 28)
    return anniversary - timedelta(days=1)


def _period_rule(
    profile: CoverageProfile,
    first_registration: date | None,
    registration_country: str | None,
    extension_until: date | None,
    day: date,
) -> tuple[_Verdict, date | None]:
    first = first_registration if isinstance(first_registration, date) else None
    ext = extension_until if isinstance(extension_until, date) else None
    if isinstance(first, datetime):
        first = first.date()
    if isinstance(ext, datetime):
        ext = ext.date()
    if first is None:
        if ext is None:
            return _Verdict(None, "coverage period unknown: no first registration date"), None
        ends = {ext}
    else:
        if first > day:
            return (
                _Verdict(
                    None,
                    f"coverage period unknown: first registration {first} is after "
                    f"the immobilisation on {day}",
                ),
                None,
            )
        reg = registration_country.strip().upper() if isinstance(registration_country, str) else ""
        if reg:
            possible = {profile.years_for(reg)}
        else:
            possible = {profile.years} | {y for _, y in profile.years_by_registration_country}
        ends = {_anniversary_eve(first, y) for y in possible}
        if ext is not None:
            ends = {max(end, ext) for end in ends}
    valid_until = next(iter(ends)) if len(ends) == 1 else None
    if all(day <= end for end in ends):
        return _Verdict(True), valid_until
    if all(day > end for end in ends):
        return _Verdict(False, f"coverage ended {max(ends).isoformat()}"), valid_until
    return (
        _Verdict(
            None,
            "coverage period unknown: it ended "
            + " or ".join(e.isoformat() for e in sorted(ends))
            + " depending on the registration country, which is unknown",
        ),
        None,
    )


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _reporting_rule(
    profile: CoverageProfile, immobilised_at: datetime | None, now: datetime | None
) -> _Verdict:
    if not isinstance(immobilised_at, datetime):
        return _Verdict(None, "reporting time unknown: no immobilisation time")
    if not isinstance(now, datetime):
        return _Verdict(None, "reporting time unknown: no current time")
    try:
        delay = _utc(now) - _utc(immobilised_at)
    except (OverflowError, ValueError):
        return _Verdict(None, "reporting time unknown: times out of range")
    hours = delay / timedelta(hours=1)
    if delay < -_CLOCK_SKEW:
        return _Verdict(None, "reporting time unknown: immobilisation time is in the future")
    if hours <= profile.report_within_hours:
        return _Verdict(True)
    return _Verdict(
        False,
        f"reported {hours:.1f} h after immobilisation, "
        f"later than {profile.report_within_hours:g} h",
    )


def _event_rule(profile: CoverageProfile, category: str) -> _Verdict:
    if category in profile.covered_events:
        return _Verdict(True)
    if category in profile.excluded_events:
        return _Verdict(False, f"event not covered: {category}")
    return _Verdict(None, f"event not listed as covered: {category!r}; the operator decides")


def _incident_day(immobilised_at: datetime | None, now: datetime | None) -> date | None:
    for moment in (immobilised_at, now):
        if isinstance(moment, datetime):
            try:
                return _utc(moment).date()
            except (OverflowError, ValueError):
                continue
    return None


def evaluate(
    profile: CoverageProfile,
    *,
    place: Place | None,
    lat: float | None,
    lon: float | None,
    first_registration: date | None,
    registration_country: str | None,
    extension_until: date | None,
    category: str,
    immobilised_at: datetime | None,
    now: datetime,
) -> CoverageResult:
    """Check one call against a profile. Never raises; see the module docstring for the rules."""
    try:
        position = _valid_position(lat, lon)
        area = _area_rule(profile, place, position)
        day = _incident_day(immobilised_at, now)
        if day is None:
            period, valid_until = _Verdict(None, "coverage period unknown: no date"), None
        else:
            period, valid_until = _period_rule(
                profile, first_registration, registration_country, extension_until, day
            )
        reporting = _reporting_rule(profile, immobilised_at, now)
        event = _event_rule(profile, category)
    except Exception as exc:  # a bug here must not cost the driver the call
        failure = f"{type(exc).__name__}: {exc}"
        return CoverageResult("unknown", ("coverage check failed",), None, None, None, failure)
    verdicts = (area, period, reporting, event)
    status: Status
    if any(v.ok is False for v in verdicts):
        status = "not_covered"
    elif any(v.ok is None for v in verdicts):
        status = "unknown"
    else:
        status = "covered"
    reasons = tuple(v.reason for v in verdicts if v.ok is False) + tuple(
        v.reason for v in verdicts if v.ok is None
    )
    return CoverageResult(
        status=status,
        reasons=reasons,
        valid_until=valid_until,
        country_covered=area.ok,
        reported_within_24h=reporting.ok,
    )
