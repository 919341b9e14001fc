"""agent.core.geo against the packaged data: countries, borders, exceptions, the sea."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from agent.core.geo import DATA_FILE, Geocoder, GeoDataError, Place

# A point in the capital (or main town) of every country the Polestar terms list.
CAPITALS = {
    "AL": (41.3275, 19.8187, "Tirana"),
    "AD": (42.5063, 1.5218, "Andorra la Vella"),
    "AT": (48.2082, 16.3738, "Vienna"),
    "BY": (53.9006, 27.5590, "Minsk"),
    "BE": (50.8503, 4.3517, "Brussels"),
    "BA": (43.8563, 18.4131, "Sarajevo"),
    "BG": (42.6977, 23.3219, "Sofia"),
    "HR": (45.8150, 15.9819, "Zagreb"),
    "CZ": (50.0875, 14.4213, None),
    "DK": (55.6761, 12.5683, "Copenhagen"),
    "EE": (59.4370, 24.7536, "Tallinn"),
    "FI": (60.1699, 24.9384, "Helsinki"),
    "FR": (48.8566, 2.3522, "Paris"),
    "DE": (52.5200, 13.4050, None),  # a district of Berlin
    "GI": (36.1408, -5.3536, "Gibraltar"),
    "GR": (37.9838, 23.7275, "Athens"),
    "HU": (47.4979, 19.0402, "Budapest"),
    "IS": (64.1466, -21.9426, "Reykjavík"),
    "IE": (53.3498, -6.2603, "Dublin"),
    "IT": (41.9028, 12.4964, "Rome"),
    "LV": (56.9496, 24.1052, "Riga"),
    "LI": (47.1410, 9.5215, "Vaduz"),
    "LT": (54.6872, 25.2797, "Vilnius"),
    "LU": (49.6116, 6.1319, "Luxembourg"),
    "MT": (35.8989, 14.5146, "Valletta"),
    "MD": (47.0105, 28.8638, "Chisinau"),
    "MC": (43.7384, 7.4246, "Monaco"),
    "ME": (42.4304, 19.2594, "Podgorica"),
    "NL": (52.3676, 4.9041, "Amsterdam"),
    "MK": (41.9981, 21.4254, "Skopje"),
    "NO": (59.9139, 10.7522, "Oslo"),
    "PL": (52.2297, 21.0122, "Warsaw"),
    "PT": (38.7223, -9.1393, "Lisbon"),
    "RO": (44.4268, 26.1025, "Bucharest"),
    "RU": (55.7558, 37.6173, "Moscow"),
    "SM": (43.9356, 12.4473, "San Marino"),
    "RS": (44.7866, 20.4489, "Belgrade"),
    "SK": (48.1486, 17.1077, "Bratislava"),
    "SI": (46.0569, 14.5058, "Ljubljana"),
    "ES": (40.4168, -3.7038, "Madrid"),
    "SE": (59.3293, 18.0686, "Stockholm"),
    "CH": (46.9480, 7.4474, "Bern"),
    "TR": (39.9334, 32.8597, "Ankara"),
    "UA": (50.4501, 30.5234, "Kyiv"),
    "GB": (51.5074, -0.1278, "London"),
    "CY": (34.6841, 33.0379, "Limassol"),
}


class Case(NamedTuple):
    name: str
    lat: float
    lon: float
    country: str | None
    area: str | None
    locality: str | None  # None: not checked


BORDERS = [
    # Basel: the tripoint of CH, DE and FR, built up on all three sides
    Case("Basel Marktplatz", 47.5583, 7.5883, "CH", None, "Basel"),
    Case("Basel St. Johann", 47.5680, 7.5760, "CH", None, "Basel"),
    Case("Riehen", 47.5788, 7.6468, "CH", None, "Riehen"),
    Case("Weil am Rhein", 47.5934, 7.6206, "DE", None, "Weil am Rhein"),
    Case("Saint-Louis", 47.5900, 7.5600, "FR", None, "Saint-Louis"),
    Case("Huningue", 47.5920, 7.5830, "FR", None, None),
    # Geneva and its French suburbs
    Case("Geneva", 46.2044, 6.1432, "CH", None, "Geneva"),
    Case("Thônex", 46.1970, 6.2010, "CH", None, None),
    Case("Gaillard", 46.1850, 6.2080, "FR", None, "Gaillard"),
    Case("Annemasse", 46.1934, 6.2342, "FR", None, "Annemasse"),
    # Strasbourg and Kehl, either end of the Europabrücke over the Rhine
    Case("Strasbourg", 48.5734, 7.7521, "FR", None, "Strasbourg"),
    Case("Europabrücke west end", 48.5697, 7.7990, "FR", None, "Strasbourg"),
    Case("Europabrücke east end", 48.5700, 7.8040, "DE", None, "Kehl"),
    Case("Kehl", 48.5728, 7.8155, "DE", None, "Kehl"),
    # Narva and Ivangorod, the fortresses face each other across the Narva river
    Case("Narva", 59.3772, 28.1903, "EE", None, "Narva"),
    Case("Narva castle", 59.3760, 28.2020, "EE", None, "Narva"),
    Case("Ivangorod fortress", 59.3735, 28.2125, "RU", None, "Ivangorod"),
    Case("Ivangorod", 59.3705, 28.2140, "RU", None, "Ivangorod"),
    # Nicosia's Green Line: Ledra Street south of it, the Selimiye mosque north of it
    Case("Nicosia, Ledra Street", 35.1727, 33.3610, "CY", None, "Nicosia"),
    Case("Nicosia, south", 35.1667, 33.3600, "CY", None, "Nicosia"),
    Case("Nicosia, Selimiye mosque", 35.1765, 33.3644, "CY", "north-cyprus", "Nicosia"),
    Case("Nicosia, north", 35.1850, 33.3620, "CY", "north-cyprus", "Nicosia"),
    Case("Kyrenia", 35.3364, 33.3173, "CY", "north-cyprus", "Kyrenia"),
    Case("Famagusta", 35.1200, 33.9400, "CY", "north-cyprus", "Famagusta"),
    Case("Limassol", 34.6841, 33.0379, "CY", None, "Limassol"),
    # Kaliningrad: Russian, between Poland and Lithuania
    Case("Kaliningrad", 54.7104, 20.4522, "RU", None, "Kaliningrad"),
    # small states and their neighbours
    Case("Gibraltar", 36.1408, -5.3536, "GI", None, "Gibraltar"),
    Case("La Línea", 36.1650, -5.3480, "ES", None, "La Línea de la Concepción"),
    Case("Monaco", 43.7384, 7.4246, "MC", None, "Monaco"),
    Case("Beausoleil", 43.7440, 7.4230, "FR", None, "Beausoleil"),
    Case("San Marino", 43.9356, 12.4473, "SM", None, "San Marino"),
    Case("Rimini", 44.0678, 12.5695, "IT", None, "Rimini"),
    Case("Vaduz", 47.1410, 9.5215, "LI", None, "Vaduz"),
    Case("Buchs SG", 47.1670, 9.4780, "CH", None, "Buchs"),
    Case("Andorra la Vella", 42.5063, 1.5218, "AD", None, "Andorra la Vella"),
    Case("Puigcerdà", 42.4316, 1.9276, "ES", None, "Puigcerdà"),
    Case("Bourg-Madame", 42.4326, 1.9434, "FR", None, None),
    Case("Vatican City", 41.9029, 12.4534, "VA", None, "Vatican City"),
    # enclaves and exclaves
    Case("Büsingen (DE in CH)", 47.6969, 8.6900, "DE", None, "Büsingen"),
    Case("Schaffhausen", 47.6960, 8.6340, "CH", None, "Schaffhausen"),
    Case("Llívia (ES in FR)", 42.4642, 1.9800, "ES", None, "Llívia"),
    Case("Campione d'Italia (IT in CH)", 45.9686, 8.9708, "IT", None, None),
    Case("Baarle-Hertog (BE in NL)", 51.4388, 4.9305, "BE", None, None),
    Case("Baarle-Nassau", 51.4443, 4.9290, "NL", None, "Baarle-Nassau"),
    # other territories a profile may have to name
    Case("Mariehamn, Åland", 60.0973, 19.9348, "AX", None, "Mariehamn"),
    Case("Simferopol, Crimea", 44.9521, 34.1024, "UA", "crimea", "Simferopol"),
    Case("Pristina, Kosovo", 42.6629, 21.1655, "XK", None, "Pristina"),
    Case("Mitrovica, Kosovo", 42.8900, 20.8700, "XK", None, None),
    Case("Raška, Serbia", 43.2857, 20.6125, "RS", None, "Raška"),
    Case("Perm", 58.0105, 56.2502, "RU", None, "Perm"),
]

SEA = [
    # territorial waters belong to the coast's country
    Case("Øresund ferry near Helsingør", 56.0400, 12.6300, "DK", None, "Helsingør"),
    Case("Øresund ferry near Helsingborg", 56.0400, 12.6800, "SE", None, "Helsingborg"),
    Case("Channel, 5 km off Dover", 51.0800, 1.4000, "GB", None, "Dover"),
    Case("Channel, 5 km off Calais", 51.0000, 1.8000, "FR", None, "Calais"),
    Case("Gulf of Genoa, 4 km out", 44.3700, 8.9300, "IT", None, "Genoa"),
    Case("Gulf of Finland off Tallinn", 59.5000, 24.7500, "EE", None, None),
    # open sea is nobody's
    Case("Bay of Biscay", 45.5, -5.0, None, None, None),
    Case("North Sea", 56.0, 3.0, None, None, None),
]


@pytest.fixture(scope="module")
def geo() -> Iterator[Geocoder]:
    with Geocoder(DATA_FILE) as geocoder:
        yield geocoder


@pytest.mark.parametrize(
    ("country", "lat", "lon", "locality"), [(k, *v) for k, v in CAPITALS.items()]
)
def test_every_listed_country(
    geo: Geocoder, country: str, lat: float, lon: float, locality: str | None
) -> None:
    place = geo.lookup(lat, lon)
    assert place.country == country
    assert place.area is None
    if locality is not None:
        assert place.locality == locality
    assert place.locality_distance_km is not None
    assert place.locality_distance_km < 10


@pytest.mark.parametrize("case", BORDERS, ids=[c.name for c in BORDERS])
def test_borders_and_exceptions(geo: Geocoder, case: Case) -> None:
    place = geo.lookup(case.lat, case.lon)
    assert (place.country, place.area) == (case.country, case.area)
    if case.locality is not None:
        assert place.locality == case.locality


@pytest.mark.parametrize("case", SEA, ids=[c.name for c in SEA])
def test_at_sea(geo: Geocoder, case: Case) -> None:
    place = geo.lookup(case.lat, case.lon)
    assert (place.country, place.area) == (case.country, None)
    if case.locality is not None:
        assert place.locality == case.locality


def test_open_sea_far_out_has_no_locality(geo: Geocoder) -> None:
    assert geo.lookup(40.0, -25.0) == Place(country=None, locality=None)


@pytest.mark.parametrize(
    ("lat", "lon"),
    [
        (math.nan, 7.5),
        (47.5, math.nan),
        (math.inf, 7.5),
        (47.5, -math.inf),
        (90.5, 7.5),
        (-91.0, 0.0),
        (40.7128, -74.0060),  # New York: outside the data's box
        (-33.9, 18.4),  # Cape Town
    ],
)
def test_invalid_or_outside_gives_nothing(geo: Geocoder, lat: float, lon: float) -> None:
    assert geo.lookup(lat, lon) == Place(country=None, locality=None)


def test_longitude_wraps(geo: Geocoder) -> None:
    assert geo.lookup(47.5583, 7.5883 + 360.0).country == "CH"
    assert geo.lookup(47.5583, 7.5883 - 720.0).country == "CH"


def test_locality_distance_is_that_of_the_place(geo: Geocoder) -> None:
    near = geo.lookup(47.5934, 7.6206)
    assert near.locality == "Weil am Rhein"
    assert near.locality_distance_km is not None
    assert near.locality_distance_km < 0.5


def test_two_geocoders_on_one_file_are_independent_and_close_their_maps() -> None:
    code = (
        "import agent.core.geo as g\n"
        "maps = lambda: open('/proc/self/maps').read().count('geo.bin')\n"
        "a, b = g.Geocoder(g.DATA_FILE), g.Geocoder(g.DATA_FILE)\n"
        "made = maps()\n"
        "ca, cb = a.lookup(47.5583, 7.5883).country, b.lookup(46.948, 7.4474).country\n"
        "both = maps()\n"
        "a.close(); a.close()\n"
        "after_a = maps(); still = b.lookup(47.5583, 7.5883).country\n"
        "b.close(); b.close()\n"
        "print(ca, cb, still, made, both, after_a, maps())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[:3] == ["CH", "CH", "CH"]
    made, both, after_a, after_b = (int(n) for n in out[3:])
    assert made == 0  # making one maps nothing: the first lookup does
    assert both >= 2  # one map each
    assert 1 <= after_a < both  # closing one leaves the other's
    assert after_b == 0


def test_lookup_after_close_maps_the_file_again() -> None:
    other = Geocoder(DATA_FILE)
    assert other.lookup(47.5583, 7.5883).country == "CH"
    other.close()
    assert other.lookup(47.5583, 7.5883).country == "CH"
    other.close()


def test_import_does_not_map_the_data() -> None:
    code = (
        "import agent.core.geo as g\n"
        "maps = lambda: open('/proc/self/maps').read().count('geo.bin')\n"
        "before = maps(); geo = g.Geocoder(g.DATA_FILE); made = maps()\n"
        "geo.lookup(47.5, 7.6)\n"
        "print(before, made, maps())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[:2] == ["0", "0"]
    assert int(out[2]) >= 1


def test_missing_data_file(tmp_path: Path) -> None:
    geo = Geocoder(tmp_path / "nope.bin")
    with pytest.raises(GeoDataError, match=r"nope\.bin"):
        geo.lookup(47.5, 7.6)


def test_foreign_data_file(tmp_path: Path) -> None:
    path = tmp_path / "geo.bin"
    path.write_bytes(b"not a geo file at all")
    with pytest.raises(GeoDataError, match="not a geo data file"):
        Geocoder(path).load()


def test_truncated_data_file(tmp_path: Path) -> None:
    path = tmp_path / "geo.bin"
    path.write_bytes(DATA_FILE.read_bytes()[:200])
    with pytest.raises(GeoDataError, match="corrupt"):
        Geocoder(path).load()


def test_data_file_was_built_by_the_committed_script(geo: Geocoder) -> None:
    from agent.data import build_geo_data as build  # noqa: PLC0415 - a tool, not a runtime module

    geo.load()
    assert geo.header["sources"] == build.PINNED
    assert geo.header["tolerance_m"] == build.TOLERANCE_M
    assert geo.header["bbox"] == list(build.bbox_units())
    assert DATA_FILE.read_bytes().startswith(build.MAGIC)


def test_border_runs_near_basel_and_dover(geo: Geocoder) -> None:
    units = geo.units_per_degree
    basel = list(geo.border_runs((7.5, 47.5, 7.7, 47.6)))
    assert basel and not any(run.coast for run in basel)
    assert all(len(run.points) >= 2 for run in basel)
    # some vertex lies in the box: the CH/DE/FR tripoint is at about 7.589 E, 47.590 N
    assert any(
        7.5 <= x / units <= 7.7 and 47.5 <= y / units <= 47.6
        for run in basel
        for x, y in run.points
    )
    assert any(run.coast for run in geo.border_runs((1.2, 51.0, 1.5, 51.2)))
    assert list(geo.border_runs((-30.0, 40.0, -29.9, 40.1))) == []  # open Atlantic
