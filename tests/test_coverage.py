"""agent.core.coverage: the Polestar profile's rules, table-driven, and its loader's errors."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import load_profile
from agent.core.coverage import (
    CATEGORIES,
    CoverageProfile,
    CoverageResult,
    LimitCity,
    evaluate,
)
from agent.core.geo import DATA_FILE, Geocoder, Place
from agent.errors import ConfigError

PROFILE_PATH = Path(__file__).resolve().parents[1] / "config" / "coverage" / "polestar.toml"
PROFILE = load_profile(PROFILE_PATH)
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
EARTH_KM = 6371.0088


@pytest.fixture(scope="module")
def geo() -> Iterator[Geocoder]:
    with Geocoder(DATA_FILE) as geocoder:
        yield geocoder


LISTED = {
    "AL", "AD", "AT", "BY", "BE", "BA", "BG", "HR", "CZ", "DK", "EE", "FI", "FR", "DE", "GI",
    "GR", "HU", "IS", "IE", "IT", "LV", "LI", "LT", "LU", "MT", "MD", "MC", "ME", "NL", "MK",
    "NO", "PL", "PT", "RO", "RU", "SM", "RS", "SK", "SI", "ES", "SE", "CH", "TR", "UA", "GB",
    "CY", "AX",
}  # fmt: skip


BERLIN = Place("DE", "Berlin")


def check(
    place: Place | None = BERLIN,
    lat: float | None = 52.52,
    lon: float | None = 13.405,
    *,
    first_registration: date | None = date(2024, 1, 10),
    registration_country: str | None = "DE",
    extension_until: date | None = None,
    category: str = "breakdown",
    immobilised_at: datetime | None = NOW - timedelta(hours=1),
    now: datetime = NOW,
    profile: CoverageProfile = PROFILE,
) -> CoverageResult:
    return evaluate(
        profile,
        place=place,
        lat=lat,
        lon=lon,
        first_registration=first_registration,
        registration_country=registration_country,
        extension_until=extension_until,
        category=category,
        immobilised_at=immobilised_at,
        now=now,
    )


def destination(lat: float, lon: float, bearing_deg: float, km: float) -> tuple[float, float]:
    """The point ``km`` from (lat, lon) on the great circle at ``bearing_deg``."""
    p1, l1, b = math.radians(lat), math.radians(lon), math.radians(bearing_deg)
    d = km / EARTH_KM
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(
        math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return math.degrees(p2), math.degrees(l2)


def gap_km(lat: float, lon: float, city: LimitCity) -> float:
    p1, p2 = math.radians(lat), math.radians(city.lat)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(city.lon - lon) / 2) ** 2
    )
    return 2 * EARTH_KM * math.asin(math.sqrt(h)) - city.ring_km


# -- the profile ------------------------------------------------------------------------------


def test_profile_matches_the_terms() -> None:
    assert PROFILE.countries == LISTED
    assert PROFILE.excluded_areas == {"north-cyprus"}
    ru = PROFILE.limit_for("RU")
    assert ru is not None
    assert ru.within_km == 200
    names = [c.name for c in ru.cities]
    for city in ("Saint Petersburg", "Moscow", "Rostov-on-Don", "Togliatti", "Perm"):
        assert city in names
    assert PROFILE.years == 3
    assert PROFILE.years_for("CH") == 5
    assert PROFILE.years_for("DE") == 3
    assert PROFILE.report_within_hours == 24
    assert PROFILE.covered_events == CATEGORIES - {"other"}


# -- area -------------------------------------------------------------------------------------


@pytest.mark.parametrize("country", sorted(LISTED - {"RU"}))
def test_every_listed_country_is_covered(country: str) -> None:
    result = check(Place(country, "Somewhere"))
    assert result.status == "covered"
    assert result.country_covered is True
    assert result.reasons == ()


@pytest.mark.parametrize("country", ["XK", "VA", "FO", "SJ", "JE", "GG", "IM", "GE", "KZ", "MA"])
def test_unlisted_countries_are_not_covered(country: str) -> None:
    result = check(Place(country, "Somewhere"))
    assert result.status == "not_covered"
    assert result.country_covered is False
    assert result.reasons == (f"outside coverage area: {country} is not a covered country",)


def test_northern_cyprus_is_not_covered_the_republic_is() -> None:
    north = check(Place("CY", "Nicosia", area="north-cyprus"), 35.1850, 33.3620)
    assert north.status == "not_covered"
    assert north.country_covered is False
    assert north.reasons == ("outside coverage area: north-cyprus (CY) is excluded",)
    south = check(Place("CY", "Nicosia"), 35.1667, 33.3600)
    assert south.status == "covered"


@pytest.mark.parametrize(
    ("lat", "lon", "status"),
    [
        (35.1727, 33.3610, "covered"),  # Ledra Street
        (35.1765, 33.3644, "not_covered"),  # Selimiye mosque
        (54.7104, 20.4522, "not_covered"),  # Kaliningrad: RU, far from every listed city
        (59.3705, 28.2140, "covered"),  # Ivangorod: RU, 130 km from Saint Petersburg's ring
        (59.3772, 28.1903, "covered"),  # Narva: EE
        (42.6629, 21.1655, "not_covered"),  # Pristina: XK
        (41.9029, 12.4534, "not_covered"),  # Vatican City
        (45.5, -5.0, "unknown"),  # Bay of Biscay: no country
    ],
)
def test_with_the_geocoder(geo: Geocoder, lat: float, lon: float, status: str) -> None:
    assert check(geo.lookup(lat, lon), lat, lon).status == status


def test_kaliningrad_reason_names_the_nearest_city() -> None:
    result = check(Place("RU", "Kaliningrad"), 54.7104, 20.4522)
    assert result.reasons[0].startswith(
        "outside coverage area: RU beyond 200 km of listed cities (nearest Saint Petersburg, "
    )


_RU = PROFILE.limit_for("RU")
assert _RU is not None
RU_CITIES = _RU.cities


def edge_points(city: LimitCity) -> tuple[tuple[float, float], tuple[float, float]]:
    """Points 0.5 km inside and outside the city's zone, on a bearing away from the others."""
    for bearing in range(0, 360, 15):
        inside = destination(city.lat, city.lon, bearing, city.ring_km + 199.5)
        outside = destination(city.lat, city.lon, bearing, city.ring_km + 200.5)
        if all(gap_km(*outside, other) > 201 for other in RU_CITIES if other is not city):
            return inside, outside
    raise AssertionError(f"no free bearing around {city.name}")


@pytest.mark.parametrize("city", RU_CITIES, ids=[c.name for c in RU_CITIES])
def test_russian_city_zones(city: LimitCity) -> None:
    assert check(Place("RU", city.name), city.lat, city.lon).status == "covered"
    (ilat, ilon), (olat, olon) = edge_points(city)
    inside = check(Place("RU", "x"), ilat, ilon)
    assert inside.status == "covered", inside.reasons
    outside = check(Place("RU", "x"), olat, olon)
    assert outside.status == "not_covered"
    assert outside.country_covered is False
    assert outside.reasons[0].startswith(
        f"outside coverage area: RU beyond 200 km of listed cities (nearest {city.name}, 20"
    )


def test_zone_is_measured_from_the_ring() -> None:
    moscow = next(c for c in RU_CITIES if c.name == "Moscow")
    lat, lon = destination(moscow.lat, moscow.lon, 180, 210)  # 210 km from the centre
    assert check(Place("RU", "x"), lat, lon).status == "covered"  # but 193 km from MKAD


@pytest.mark.parametrize(
    ("lat", "lon"), [(None, None), (math.nan, 37.6), (55.7, math.inf), (95.0, 37.6)]
)
def test_russia_without_a_position_is_unknown(lat: float | None, lon: float | None) -> None:
    result = check(Place("RU", "Moscow"), lat, lon)
    assert result.status == "unknown"
    assert result.country_covered is None
    assert "position is unknown" in result.reasons[0]


@pytest.mark.parametrize(
    ("place", "lat", "lon", "reason"),
    [
        (None, None, None, "country unknown: no valid position"),
        (Place(None, None), 45.5, -5.0, "country unknown: at sea or outside the map"),
        (None, 45.5, -5.0, "country unknown: at sea or outside the map"),
    ],
)
def test_unknown_country(
    place: Place | None, lat: float | None, lon: float | None, reason: str
) -> None:
    result = check(place, lat, lon)
    assert result.status == "unknown"
    assert result.country_covered is None
    assert result.reasons == (reason,)


# -- period -----------------------------------------------------------------------------------


def at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


class Period(NamedTuple):
    first: str | None
    country: str | None
    extension: str | None
    day: str
    status: str
    valid_until: str | None


PERIODS = [
    # three years: to the day before the third anniversary
    Period("2022-03-15", "DE", None, "2025-03-14", "covered", "2025-03-14"),
    Period("2022-03-15", "DE", None, "2025-03-15", "not_covered", "2025-03-14"),
    Period("2022-03-15", "SE", None, "2022-03-15", "covered", "2025-03-14"),
    # five years for cars registered in Switzerland
    Period("2022-03-15", "CH", None, "2025-03-15", "covered", "2027-03-14"),
    Period("2022-03-15", "CH", None, "2027-03-14", "covered", "2027-03-14"),
    Period("2022-03-15", "CH", None, "2027-03-15", "not_covered", "2027-03-14"),
    Period("2022-03-15", "ch", None, "2027-03-14", "covered", "2027-03-14"),
    # 29 February: three years run to 28 February
    Period("2020-02-29", "DE", None, "2023-02-28", "covered", "2023-02-28"),
    Period("2020-02-29", "DE", None, "2023-03-01", "not_covered", "2023-02-28"),
    # an extension prolongs it; an earlier one changes nothing
    Period("2022-03-15", "DE", "2026-06-30", "2026-06-30", "covered", "2026-06-30"),
    Period("2022-03-15", "DE", "2026-06-30", "2026-07-01", "not_covered", "2026-06-30"),
    Period("2022-03-15", "DE", "2024-01-01", "2025-01-01", "covered", "2025-03-14"),
    # no first registration: the extension alone, or nothing
    Period(None, "DE", "2026-06-30", "2026-06-30", "covered", "2026-06-30"),
    Period(None, "DE", "2026-06-30", "2026-07-01", "not_covered", "2026-06-30"),
    Period(None, "DE", None, "2025-01-01", "unknown", None),
    # registration country unknown: 3 or 5 years
    Period("2022-03-15", None, None, "2025-03-14", "covered", None),
    Period("2022-03-15", None, None, "2026-01-01", "unknown", None),
    Period("2022-03-15", None, None, "2027-03-15", "not_covered", None),
    # a first registration after the immobilisation is nonsense
    Period("2026-01-01", "DE", None, "2025-01-01", "unknown", None),
]


@pytest.mark.parametrize(
    "case", PERIODS, ids=[f"{c.first}-{c.country}-{c.extension}-{c.day}" for c in PERIODS]
)
def test_coverage_period(case: Period) -> None:
    when = at(case.day)
    result = check(
        first_registration=date.fromisoformat(case.first) if case.first else None,
        registration_country=case.country,
        extension_until=date.fromisoformat(case.extension) if case.extension else None,
        immobilised_at=when - timedelta(hours=1),
        now=when,
    )
    assert result.status == case.status, result.reasons
    assert result.to_json()["valid_until"] == case.valid_until
    if case.status == "not_covered":
        assert result.reasons == (f"coverage ended {case.valid_until or '2027-03-14'}",)


def test_unknown_registration_country_reason_names_both_ends() -> None:
    result = check(
        first_registration=date(2022, 3, 15),
        registration_country=None,
        immobilised_at=at("2026-01-01"),
        now=at("2026-01-01", 13),
    )
    assert result.reasons == (
        "coverage period unknown: it ended 2025-03-14 or 2027-03-14 depending on the "
        "registration country, which is unknown",
    )


def test_period_is_checked_on_the_day_of_immobilisation() -> None:
    # immobilised on the last day, reported 20 h later on the first day after it
    result = check(
        first_registration=date(2022, 3, 15),
        immobilised_at=at("2025-03-14", 22),
        now=at("2025-03-15", 18),
    )
    assert result.status == "covered"


# -- reporting window -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "within", "status"),
    [
        (timedelta(0), True, "covered"),
        (timedelta(hours=23, minutes=59, seconds=59), True, "covered"),
        (timedelta(hours=24), True, "covered"),
        (timedelta(hours=24, seconds=1), False, "not_covered"),
        (timedelta(days=3), False, "not_covered"),
        (timedelta(minutes=-2), True, "covered"),  # clock skew
        (timedelta(hours=-1), None, "unknown"),  # immobilised in the future
    ],
)
def test_reporting_window(delay: timedelta, within: bool | None, status: str) -> None:
    result = check(immobilised_at=NOW - delay)
    assert result.reported_within_24h is within
    assert result.status == status


def test_late_report_reason() -> None:
    result = check(immobilised_at=NOW - timedelta(hours=30))
    assert result.reasons == ("reported 30.0 h after immobilisation, later than 24 h",)


def test_unknown_immobilisation_time() -> None:
    result = check(immobilised_at=None)
    assert result.reported_within_24h is None
    assert result.status == "unknown"
    assert result.reasons == ("reporting time unknown: no immobilisation time",)


def test_naive_and_offset_times_are_utc_instants() -> None:
    cet = timezone(timedelta(hours=2))
    # 13:00+02:00 is 11:00Z: one hour before NOW
    assert check(immobilised_at=datetime(2025, 6, 1, 13, 0, tzinfo=cet)).reported_within_24h
    naive_now = NOW.replace(tzinfo=None)
    late = check(immobilised_at=naive_now - timedelta(hours=25), now=naive_now)
    assert late.reported_within_24h is False


# -- events -----------------------------------------------------------------------------------


@pytest.mark.parametrize("category", sorted(CATEGORIES - {"other"}))
def test_covered_events(category: str) -> None:
    assert check(category=category).status == "covered"


@pytest.mark.parametrize("category", ["other", "livestock", ""])
def test_unlisted_events_are_unknown(category: str) -> None:
    result = check(category=category)
    assert result.status == "unknown"
    assert result.reasons == (f"event not listed as covered: {category!r}; the operator decides",)


def test_excluded_event_fails(tmp_path: Path) -> None:
    text = (
        PROFILE_PATH.read_text("utf-8").replace('"breakdown", "puncture"', '"puncture"')
        + 'excluded = ["breakdown"]\n'
    )
    path = tmp_path / "p.toml"
    path.write_text(text, "utf-8")
    result = check(category="breakdown", profile=load_profile(path))
    assert result.status == "not_covered"
    assert result.reasons == ("event not covered: breakdown",)


# -- combination and JSON ---------------------------------------------------------------------


def test_failures_come_before_unknowns() -> None:
    result = check(Place("XK", "Pristina"), category="other", immobilised_at=None)
    assert result.status == "not_covered"
    assert result.reasons == (
        "outside coverage area: XK is not a covered country",
        "reporting time unknown: no immobilisation time",
        "event not listed as covered: 'other'; the operator decides",
    )


def test_to_json_is_the_spec_object() -> None:
    result = check()
    assert result.to_json() == {
        "status": "covered",
        "reasons": [],
        "valid_until": "2027-01-09",
        "country_covered": True,
        "reported_within_24h": True,
    }
    json.dumps(check(None, None, None, first_registration=None, immobilised_at=None).to_json())


# -- never raises -----------------------------------------------------------------------------

offsets = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)).map(timezone)
moments = st.datetimes(timezones=st.none() | st.just(UTC) | offsets)
coordinates = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers()
places = st.none() | st.builds(
    Place,
    country=st.none() | st.sampled_from(sorted(LISTED | {"XK", "RU"})) | st.text(max_size=3),
    locality=st.none() | st.text(max_size=5),
    area=st.none() | st.sampled_from(["north-cyprus", "crimea"]) | st.text(max_size=5),
    locality_distance_km=st.none() | st.floats(),
)


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "place": places,
            "lat": coordinates,
            "lon": coordinates,
            "first_registration": st.none() | st.dates(),
            "registration_country": st.none() | st.text(max_size=3) | st.sampled_from(["CH"]),
            "extension_until": st.none() | st.dates(),
            "category": st.text(max_size=12) | st.sampled_from(sorted(CATEGORIES)),
            "immobilised_at": st.none() | moments,
            "now": moments,
        }
    )
)
def test_evaluate_never_raises(inputs: dict[str, Any]) -> None:
    result = evaluate(PROFILE, **inputs)
    assert result.status in ("covered", "not_covered", "unknown")
    assert "coverage check failed" not in result.reasons  # the safety net stayed unused
    assert (result.status == "covered") == (result.reasons == ())
    json.dumps(result.to_json())


@settings(max_examples=200, deadline=None)
@given(lat=st.floats(), lon=st.floats())
def test_geocoder_and_evaluate_never_raise_for_any_coordinate(
    geo: Geocoder, lat: float, lon: float
) -> None:
    place = geo.lookup(lat, lon)
    check(place, lat, lon)


# -- loading errors ---------------------------------------------------------------------------

BASE = PROFILE_PATH.read_text("utf-8")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s + "\n[colour]\nred = 1\n", "unknown key 'colour'; expected one of: name,"),
        (
            lambda s: s.replace("[area]\n", "[area]\nzones = []\n"),
            "unknown key 'area.zones'; expected one of: countries,",
        ),
        (
            lambda s: s.replace('"AL", "AD"', '"AL", "and"'),
            "key 'area.countries[1]': expected an ISO 3166-1 alpha-2 code like \"CH\", got 'and'",
        ),
        (
            lambda s: s.replace("[area.limited.RU]", "[area.limited.KZ]"),
            "key 'area.limited.KZ': expected a country listed in 'area.countries', got 'KZ'",
        ),
        (
            lambda s: s.replace("lat = 55.7558", "lat = 155.7558"),
            "key 'area.limited.RU.cities[1].lat': expected a number from -90.0 to 90.0, "
            "got 155.7558",
        ),
        (
            lambda s: s.replace("ring_km = 17 }", "ring_km = 17, radius = 3 }"),
            "unknown key 'area.limited.RU.cities[1].radius'",
        ),
        (
            lambda s: s.replace("within_km = 200", 'within_km = "200"'),
            "key 'area.limited.RU.within_km': expected a number from 0.0 to 20000.0, got '200'",
        ),
        (
            lambda s: s.replace("years = 3", "years = -3"),
            "key 'period.years': expected a whole number from 0 to 100, got -3",
        ),
        (
            lambda s: s.replace("years = 3", "years = true"),
            "key 'period.years': expected a whole number from 0 to 100, got True",
        ),
        (
            lambda s: s.replace("CH = 5", "CH = 5.5"),
            "key 'period.years_by_registration_country.CH': expected a whole number",
        ),
        (
            lambda s: s.replace("within_hours = 24", "within_hours = -1"),
            "key 'reporting.within_hours': expected a number from 0.0 to",
        ),
        (
            lambda s: s.replace('"fire",\n]', '"fire", "flood",\n]'),
            "key 'events.covered[8]': expected one of accident, breakdown,",
        ),
        (lambda s: s.replace("\nyears = 3\n", "\n"), "missing key 'period.years'"),
        (lambda s: s.replace('name = "Polestar Assistance"', ""), "missing key 'name'"),
        (lambda s: s.replace("[reporting]", "[reporting"), "not valid TOML"),
        (
            lambda s: s.replace("excluded_areas = [", "excluded_areas = ['North Cyprus', "),
            "key 'area.excluded_areas[0]': expected an area name like \"north-cyprus\"",
        ),
    ],
)
def test_profile_errors_name_file_key_and_expectation(
    tmp_path: Path, edit: object, message: str
) -> None:
    assert callable(edit)
    text = edit(BASE)
    assert text != BASE
    path = tmp_path / "broken.toml"
    path.write_text(text, "utf-8")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_missing_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read the coverage profile"):
        load_profile(path)
