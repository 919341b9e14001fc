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
"""

from __future__ import annotations

import logging
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from agent.core.geo import Place
from agent.errors import ConfigError

__all__ = [
    "CATEGORIES",
    "CountryLimit",
    "CoverageProfile",
    "CoverageResult",
    "LimitCity",
    "evaluate",
    "load_profile",
]

log = logging.getLogger("agent.core.coverage")

CATEGORIES = frozenset(
    {
        "breakdown",
        "puncture",
        "flat_battery",
        "key_problem",
        "accident",
        "theft",
        "vandalism",
        "fire",
        "other",
    }
)
_EARTH_RADIUS_KM = 6371.0088
_CLOCK_SKEW = timedelta(minutes=5)
_CODE = re.compile(r"[A-Z]{2}")
_AREA = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")

Status = Literal["covered", "not_covered", "unknown"]


# -- profile ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitCity:
    """A city of a limited country: its centre and the radius of its outer ring, in km."""

    name: str
    lat: float
    lon: float
    ring_km: float


@dataclass(frozen=True, slots=True)
class CountryLimit:
    """A country covered only within ``within_km`` of the rings of its listed cities."""

    country: str
    within_km: float
    cities: tuple[LimitCity, ...]


@dataclass(frozen=True, slots=True)
class CoverageProfile:
    """One programme's coverage terms, as loaded from its TOML file."""

    name: str
    countries: frozenset[str]
    excluded_areas: frozenset[str]
    limits: tuple[CountryLimit, ...]
    years: int
    years_by_registration_country: tuple[tuple[str, int], ...]
    report_within_hours: float
    covered_events: frozenset[str]
    excluded_events: frozenset[str]

    def limit_for(self, country: str) -> CountryLimit | None:
        for limit in self.limits:
            if limit.country == country:
                return limit
        return None

    def years_for(self, registration_country: str) -> int:
        return dict(self.years_by_registration_country).get(registration_country, self.years)


class _Reader:
    """Checks one TOML table, naming the file and the dotted key in every error."""

    def __init__(self, path: Path, table: Mapping[str, Any], prefix: str) -> None:
        self.path = path
        self.table = table
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, key: str, expected: str, got: object) -> ConfigError:
        return ConfigError(f"{self.path}: key '{key}': expected {expected}, got {got!r}")

    def only(self, *allowed: str) -> None:
        for name in self.table:
            if name not in allowed:
                raise ConfigError(
                    f"{self.path}: unknown key '{self.key(name)}'; "
                    f"expected one of: {', '.join(allowed)}"
                )

    def require(self, name: str) -> Any:
        if name not in self.table:
            raise ConfigError(f"{self.path}: missing key '{self.key(name)}'")
        return self.table[name]

    def sub(self, name: str, *, required: bool = True) -> _Reader:
        value = self.require(name) if required else self.table.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(self.key(name), "a table", value)
        return _Reader(self.path, value, f"{self.key(name)}.")

    def string(self, name: str) -> str:
        value = self.require(name)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(self.key(name), "a non-empty string", value)
        return value

    def number(self, name: str, *, minimum: float, maximum: float = math.inf) -> float:
        value = self.require(name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not minimum <= value <= maximum
        ):
            raise self.fail(self.key(name), f"a number from {minimum} to {maximum}", value)
        return float(value)

    def integer(self, value: object, key: str, *, minimum: int, maximum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self.fail(key, f"a whole number from {minimum} to {maximum}", value)
        return value

    def strings(
        self, name: str, check: Callable[[str], bool], expected: str, *, required: bool = True
    ) -> frozenset[str]:
        value = self.require(name) if required else self.table.get(name, [])
        if not isinstance(value, list):
            raise self.fail(self.key(name), f"a list of {expected}", value)
        for i, item in enumerate(value):
            if not isinstance(item, str) or not check(item):
                raise self.fail(f"{self.key(name)}[{i}]", expected, item)
        return frozenset(value)


def _is_code(s: str) -> bool:
    return _CODE.fullmatch(s) is not None


def load_profile(path: Path) -> CoverageProfile:
    """Read a coverage profile; any problem raises ``ConfigError`` naming file, key, expectation."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the coverage profile: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc

    top = _Reader(path, data, "")
    top.only("name", "area", "period", "reporting", "events")
    code = 'an ISO 3166-1 alpha-2 code like "CH"'

    area = top.sub("area")
    area.only("countries", "excluded_areas", "limited")
    countries = area.strings("countries", _is_code, code)
    excluded_areas = area.strings(
        "excluded_areas",
        lambda s: _AREA.fullmatch(s) is not None,
        'an area name like "north-cyprus"',
        required=False,
    )
    limits: list[CountryLimit] = []
    limited = area.sub("limited", required=False)
    for country in sorted(limited.table):
        if not _is_code(country):
            raise ConfigError(f"{path}: key '{limited.key(country)}': expected {code} as name")
        if country not in countries:
            raise ConfigError(
                f"{path}: key '{limited.key(country)}': expected a country listed in "
                f"'area.countries', got {country!r}"
            )
        lim = limited.sub(country)
        lim.only("within_km", "cities")
        within = lim.number("within_km", minimum=0.0, maximum=20_000.0)
        raw_cities = lim.require("cities")
        if not isinstance(raw_cities, list) or not raw_cities:
            raise lim.fail(lim.key("cities"), "a non-empty list of tables", raw_cities)
        cities: list[LimitCity] = []
        for i, raw in enumerate(raw_cities):
            if not isinstance(raw, dict):
                raise lim.fail(f"{lim.key('cities')}[{i}]", "a table", raw)
            city = _Reader(path, raw, f"{lim.key('cities')}[{i}].")
            city.only("name", "lat", "lon", "ring_km")
            cities.append(
                LimitCity(
                    name=city.string("name"),
                    lat=city.number("lat", minimum=-90.0, maximum=90.0),
                    lon=city.number("lon", minimum=-180.0, maximum=180.0),
                    ring_km=city.number("ring_km", minimum=0.0, maximum=500.0),
                )
            )
        limits.append(CountryLimit(country=country, within_km=within, cities=tuple(cities)))

    period = top.sub("period")
    period.only("years", "years_by_registration_country")
    years = period.integer(period.require("years"), period.key("years"), minimum=0, maximum=100)
    by_country = period.sub("years_by_registration_country", required=False)
    per_country: list[tuple[str, int]] = []
    for country, value in sorted(by_country.table.items()):
        if not _is_code(country):
            raise ConfigError(f"{path}: key '{by_country.key(country)}': expected {code} as name")
        per_country.append(
            (country, period.integer(value, by_country.key(country), minimum=0, maximum=100))
        )

    reporting = top.sub("reporting")
    reporting.only("within_hours")
    within_hours = reporting.number("within_hours", minimum=0.0, maximum=24.0 * 366)

    events = top.sub("events")
    events.only("covered", "excluded")
    known = f"one of {', '.join(sorted(CATEGORIES))}"
    covered = events.strings("covered", CATEGORIES.__contains__, known)
    excluded = events.strings("excluded", CATEGORIES.__contains__, known, required=False)
    if covered & excluded:
        raise ConfigError(
            f"{path}: key 'events.excluded': expected events not also covered, "
            f"got {sorted(covered & excluded)!r}"
        )

    return CoverageProfile(
        name=top.string("name"),
        countries=countries,
        excluded_areas=excluded_areas,
        limits=tuple(limits),
        years=years,
        years_by_registration_country=tuple(per_country),
        report_within_hours=within_hours,
        covered_events=covered,
        excluded_events=excluded,
    )


# -- result -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoverageResult:
    """The request's ``coverage`` object (SPEC section 5)."""

    status: Status
    reasons: tuple[str, ...]
    valid_until: date | None
    country_covered: bool | None
    reported_within_24h: bool | None

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
    except Exception:  # a bug here must not cost the driver the call
        log.exception("coverage check failed")
        return CoverageResult("unknown", ("coverage check failed",), None, None, None)
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
