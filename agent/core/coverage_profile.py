"""A coverage profile: one programme's terms, parsed from values (a dict from ``tomllib``).

Pure: no file is read here (``agent.config.profile`` reads the file safely and passes its
tables in). Every problem raises :class:`~agent.errors.ConfigError` naming the source, the
dotted key and what was expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, shown

__all__ = ["CATEGORIES", "CountryLimit", "CoverageProfile", "LimitCity", "parse_profile"]

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
_CODE = re.compile(r"[A-Z]{2}")
_AREA = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


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

    def __init__(self, path: Path | str, table: Mapping[str, Any], prefix: str) -> None:
        self.path = path
        self.table = table
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, key: str, expected: str, got: object) -> ConfigError:
        return ConfigError(f"{self.path}: key '{key}': expected {expected}, got {shown(got)}")

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


def parse_profile(data: Mapping[str, Any], path: Path | str) -> CoverageProfile:
    """A profile from its TOML tables; ``path`` only names the source in error messages."""
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
                f"'area.countries', got {shown(country)}"
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
