"""Country and nearest locality of a coordinate, offline, from ``agent/data/geo.bin``.

Pure core: values in, values out. The data file is made by ``agent/data/build_geo_data.py``
from OpenStreetMap country boundaries (territorial waters included, via timezone-boundary-builder
and ``timezonefinder-data``) and GeoNames populated places; its docstring says how it is laid
out. A ``Geocoder`` is a plain object over one file, made by whoever needs it (the daemon makes
one over ``DATA_FILE``, the packaged data) and closed by them. It maps the file on its first
lookup, so making one costs nothing and an idle process only keeps the pages its lookups have
touched.

Country lookup
    The border edges live in a quadtree whose leaves hold at most a couple of dozen edges and
    know the region at their centre. A lookup descends to the point's leaf and counts, per
    region, the edges crossed by the segment from the leaf's centre to the point: an odd count
    flips membership. Arithmetic is exact on integers (1e-5 degree, about 1 m), so the answer
    is that of the stored polygons, which are within ``tolerance_m`` (5 m) of OpenStreetMap's.

Areas
    ``Place.country`` is always the ISO 3166-1 code of the sovereign territory (the request's
    ``location.country``). Where a coverage rule has to tell part of a country apart, ``area``
    names that part: ``"north-cyprus"`` for the north of Cyprus under Turkish-Cypriot
    administration (``country`` stays ``"CY"``), ``"crimea"`` for Crimea (``"UA"``). A
    profile lists the areas it excludes; no code knows about Cyprus.

Kosovo
    The boundary data count Kosovo in Serbia. A point the polygons put in Serbia is given to
    Kosovo (``"XK"``, the code the EU and GeoNames use) when its nearest populated place is a
    Kosovar one, which follows the Serbia-Kosovo line to within a few kilometres.

Locality
    The populated place (GeoNames, 1000 inhabitants or more, in the point's country when one is
    within 30 km) with the smallest distance relative to its size: a place's name reaches
    0.5 km for a village, 3 km for a town of 100 000 and at most 20 km, so a point inside Basel
    is "Basel" rather than its nearest suburb, and a point in open country names the nearest
    village.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.errors import AgentError

__all__ = ["DATA_FILE", "BorderRun", "GeoDataError", "Geocoder", "Place"]

DATA_FILE: Final = Path(__file__).resolve().parent.parent / "data" / "geo.bin"
_MAGIC: Final = b"CAGEO\x00\x00\x01"
_EARTH_RADIUS_KM: Final = 6371.0088
_LOCAL_SEARCH_KM: Final = 30.0
_WIDE_SEARCH_KM: Final = 150.0
# Countries whose boundary data include a territory that is told apart by its places.
_SPLIT_BY_PLACES: Final = {"RS": "XK"}


class GeoDataError(AgentError):
    """The geographic data file is missing or not one this code can read."""


@dataclass(frozen=True, slots=True)
class Place:
    """Where a coordinate is.

    ``country``: ISO 3166-1 alpha-2 code, ``None`` at sea beyond territorial waters, outside
    the data's box (Europe from the Azores to the Urals, the Canaries to Svalbard) or for an
    invalid coordinate. ``area``: a part of the country that coverage rules may single out
    (``"north-cyprus"``, ``"crimea"``), else ``None``. ``locality``: name of the populated place
    the point is in or nearest to, ``None`` if none is within 150 km. ``locality_distance_km``:
    distance from that place's centre.
    """

    country: str | None
    locality: str | None
    area: str | None = None
    locality_distance_km: float | None = None


_NOWHERE: Final = Place(country=None, locality=None)


@dataclass(frozen=True, slots=True)
class BorderRun:
    """Consecutive border vertices as stored in one quadtree leaf.

    ``points`` are integer data units (``Geocoder.units_per_degree`` to a degree), x east and
    y north. ``coast``: the run divides a country from the sea rather than from another one.
    """

    coast: bool
    points: tuple[tuple[int, int], ...]


def _distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class Geocoder:
    """Offline country and locality lookup over one data file; thread-safe, lazy.

    A context manager: ``close()`` (or leaving the ``with``) unmaps the file and is safe to
    call twice; a lookup after it maps the file again. Not to be closed while a lookup runs.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._loaded = False
        # set by _load()
        self._mm: mmap.mmap | None = None
        self._units = 0
        self._bbox = (0, 0, 0, 0)
        self._regions: list[tuple[str | None, str | None]] = []
        self._sets: list[frozenset[int]] = []
        self._codes: list[str] = []
        self._grid = (1, 1, 1)
        self._nodes: memoryview = memoryview(b"")
        self._leaves: memoryview = memoryview(b"")
        self._chains: memoryview = memoryview(b"")
        self._cells: memoryview = memoryview(b"")
        self._places: memoryview = memoryview(b"")
        self._names: memoryview = memoryview(b"")
        self._views: list[memoryview] = []  # every view into the map, released by close()
        self.header: dict[str, Any] = {}

    def __enter__(self) -> Geocoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        """Map the data file now (lookups do it on first use); raises ``GeoDataError``."""
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    def close(self) -> None:
        """Unmap the data file; safe to call twice."""
        with self._lock:
            self._loaded = False
            empty = memoryview(b"")
            self._nodes = self._leaves = self._chains = empty
            self._cells = self._places = self._names = empty
            for view in reversed(self._views):
                view.release()
            self._views.clear()
            if self._mm is not None:
                self._mm.close()
                self._mm = None

    def _load(self) -> None:
        path = self._path
        try:
            with path.open("rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            # a lookup reads a few scattered pages: no read-ahead, so RSS grows by those only
            mm.madvise(mmap.MADV_RANDOM)
        except (OSError, ValueError) as exc:
            raise GeoDataError(f"{path}: cannot map the geographic data: {exc}") from exc
        if mm[: len(_MAGIC)] != _MAGIC:
            mm.close()
            raise GeoDataError(f"{path}: not a geo data file of format 1")
        views: list[memoryview] = []
        try:
            (hlen,) = struct.unpack_from("<I", mm, len(_MAGIC))
            start = len(_MAGIC) + 4
            header = json.loads(bytes(mm[start : start + hlen]).decode("utf-8"))
            base = start + hlen + (-(start + hlen)) % 4
            views.append(memoryview(mm))

            def section(name: str, *, ints: bool = True) -> memoryview:
                off, size = header["sections"][name]
                views.append(views[0][base + off : base + off + size])
                if ints:
                    views.append(views[-1].cast("i"))
                return views[-1]

            nodes = section("nodes")
            leaves = section("leaves")
            chains = section("chains")
            cells = section("place_cells")
            places = section("places")
            names = section("names", ints=False)
            self._units = int(header["units_per_degree"])
            x0, y0, x1, y1 = (int(v) for v in header["bbox"])
            self._bbox = (x0, y0, x1, y1)
            self._regions = [(r[0], r[1]) for r in header["regions"]]
            self._sets = [frozenset(int(r) for r in m) for m in header["region_sets"]]
            self._codes = list(header["place_countries"])
            grid = header["place_grid"]
            self._grid = (int(grid["step"]), int(grid["cols"]), int(grid["rows"]))
        except (KeyError, ValueError, TypeError, struct.error) as exc:
            for view in reversed(views):
                view.release()
            mm.close()
            raise GeoDataError(f"{path}: corrupt geo data: {exc!r}") from exc
        self.header = header
        self._nodes, self._leaves, self._chains = nodes, leaves, chains
        self._cells, self._places, self._names = cells, places, names
        self._views = views
        self._mm = mm

    # -- outlines -----------------------------------------------------------------------------

    @property
    def units_per_degree(self) -> int:
        """The data's integer grid: this many units to a degree; maps the file."""
        self.load()
        return self._units

    def border_runs(self, bbox: tuple[float, float, float, float]) -> Iterator[BorderRun]:
        """The border and coast runs of the leaves that meet ``bbox`` (west, south, east, north).

        A run that crosses several leaves comes once for each. Maps the file; raises
        ``GeoDataError`` when it cannot.
        """
        self.load()
        units = self._units
        west, south, east, north = bbox
        qx0, qy0 = math.floor(west * units), math.floor(south * units)
        qx1, qy1 = math.ceil(east * units), math.ceil(north * units)
        nodes, leaves, chains = self._nodes, self._leaves, self._chains
        stack = [(0, *self._bbox)]
        while stack:
            index, x0, y0, x1, y1 = stack.pop()
            if x1 < qx0 or x0 > qx1 or y1 < qy0 or y0 > qy1:
                continue
            v = nodes[index]
            if v >= 0:
                mx, my = (x0 + x1) // 2, (y0 + y1) // 2
                stack += [
                    (v, x0, y0, mx, my),
                    (v + 1, mx, y0, x1, my),
                    (v + 2, x0, my, mx, y1),
                    (v + 3, mx, my, x1, y1),
                ]
                continue
            off = leaves[2 * ~v + 1]
            if off < 0:
                continue
            i = off + 1
            for _ in range(chains[off]):
                coast = chains[i + 1] == 0
                end = i + 4 + chains[i + 2]
                ax, ay = chains[i + 3], chains[i + 4]
                points = [(ax, ay)]
                for step in chains[i + 5 : end]:
                    ax += step >> 16
                    ay += ((step & 0xFFFF) ^ 0x8000) - 0x8000
                    points.append((ax, ay))
                i = end
                yield BorderRun(coast, tuple(points))

    # -- lookup -------------------------------------------------------------------------------

    def lookup(self, lat: float, lon: float) -> Place:
        """The country, area and locality of a WGS84 coordinate.

        Never raises for a bad coordinate: NaN, infinities and latitudes beyond +-90 give a
        ``Place`` with everything ``None``; longitudes are wrapped to [-180, 180).
        """
        if not (math.isfinite(lat) and math.isfinite(lon)) or not -90.0 <= lat <= 90.0:
            return _NOWHERE
        self.load()
        lon = (lon + 180.0) % 360.0 - 180.0
        x = round(lon * self._units)
        y = round(lat * self._units)
        x0, y0, x1, y1 = self._bbox
        if not (x0 <= x < x1 and y0 <= y < y1):
            return _NOWHERE
        country, area = self._regions[self._region_at(x, y)]
        split = _SPLIT_BY_PLACES.get(country) if country is not None else None
        if split is not None:
            nearest = self._nearest_place(x, y, (country, split), by_size=False)
            if nearest is not None and self._codes[self._places[nearest * 4 + 3] & 0xFF] == split:
                country = split
        locality: str | None = None
        distance: float | None = None
        found = self._nearest_place(x, y, (country,) if country else (), by_size=True)
        if found is None:
            found = self._nearest_place(x, y, (), by_size=False)
        if found is not None:
            px, py, name_off, meta = self._places[found * 4 : found * 4 + 4]
            locality = bytes(self._names[name_off : name_off + ((meta >> 8) & 0xFF)]).decode()
            distance = round(_distance_km(lat, lon, py / self._units, px / self._units), 2)
        return Place(country=country, locality=locality, area=area, locality_distance_km=distance)

    def _region_at(self, x: int, y: int) -> int:
        nodes = self._nodes
        x0, y0, x1, y1 = self._bbox
        v = nodes[0]
        while v >= 0:
            mx = (x0 + x1) // 2
            my = (y0 + y1) // 2
            q = 0
            if x >= mx:
                q = 1
                x0 = mx
            else:
                x1 = mx
            if y >= my:
                q |= 2
                y0 = my
            else:
                y1 = my
            v = nodes[v + q]
        leaf = ~v
        members = self._sets[self._leaves[2 * leaf]]
        off: int = self._leaves[2 * leaf + 1]
        if off >= 0:
            members = members ^ self._crossed(off, (x0 + x1) // 2, (y0 + y1) // 2, x, y)
        # two members: land or water that two countries claim (the data keep both); the
        # lower region number answers, the same one every time
        return min(members) if members else 0

    def _crossed(self, off: int, cx: int, cy: int, qx: int, qy: int) -> frozenset[int]:
        """The regions whose border the segment from C to Q crosses an odd number of times.

        An edge A-B crosses C-Q when A and B lie on different sides of the line CQ and C and Q
        on different sides of the line AB, "on the line" counting as the negative side
        throughout: the half-open rule of ray casting, so an edge end on the line is never
        counted twice. Exact on integers. A run is stored as its two regions (the second 0 at
        a coast), its vertex count, its first vertex, then one int32 per further vertex
        holding the step as ``dx << 16 | dy & 0xFFFF``.
        """
        chains = self._chains
        dx = qx - cx
        dy = qy - cy
        odd: set[int] = set()
        i = off + 1
        for _ in range(chains[off]):
            ra = chains[i]
            rb = chains[i + 1]
            end = i + 4 + chains[i + 2]
            ax = chains[i + 3]
            ay = chains[i + 4]
            i += 5
            a_side = dx * (ay - cy) - dy * (ax - cx) > 0
            count = 0
            while i < end:
                step = chains[i]
                i += 1
                bx = ax + (step >> 16)
                by = ay + ((step & 0xFFFF) ^ 0x8000) - 0x8000
                b_side = dx * (by - cy) - dy * (bx - cx) > 0
                if a_side != b_side:
                    ex = bx - ax
                    ey = by - ay
                    if (ex * (cy - ay) - ey * (cx - ax) > 0) != (
                        ex * (qy - ay) - ey * (qx - ax) > 0
                    ):
                        count += 1
                ax = bx
                ay = by
                a_side = b_side
            if count & 1:
                odd ^= {ra, rb} if rb else {ra}
        return frozenset(odd)

    def _nearest_place(
        self, x: int, y: int, countries: tuple[str | None, ...], *, by_size: bool
    ) -> int | None:
        """Index of the best place: by distance, or by distance over the place's reach.

        ``countries`` limits the candidates (empty: any). Searches 30 km when ``by_size``,
        else widens to 150 km until a candidate is found.
        """
        wanted = {self._codes.index(c) for c in countries if c in self._codes}
        if countries and not wanted:
            return None
        step, cols, rows = self._grid
        bx0, by0, _, _ = self._bbox
        units = self._units
        lat = y / units
        kx = math.cos(math.radians(lat)) * 111.195 / units  # km per unit east
        ky = 111.195 / units  # km per unit north
        cells = self._cells
        places = self._places
        col = (x - bx0) // step
        row = (y - by0) // step
        best: int | None = None
        best_score = math.inf
        limit = _LOCAL_SEARCH_KM if by_size else _WIDE_SEARCH_KM
        ring = 0
        while True:
            # the cells at Chebyshev distance ``ring`` from the point's cell
            for r in range(row - ring, row + ring + 1):
                if r < 0 or r >= rows:
                    continue
                edge_row = r in (row - ring, row + ring)
                for c in (
                    range(col - ring, col + ring + 1) if edge_row else (col - ring, col + ring)
                ):
                    if c < 0 or c >= cols:
                        continue
                    k = r * cols + c
                    for p in range(cells[k], cells[k + 1]):
                        meta = places[4 * p + 3]
                        if wanted and (meta & 0xFF) not in wanted:
                            continue
                        ex = (places[4 * p] - x) * kx
                        ey = (places[4 * p + 1] - y) * ky
                        d = math.sqrt(ex * ex + ey * ey)
                        if d > limit:
                            continue
                        score = d / ((meta >> 16) / 100.0) if by_size else d
                        if score < best_score:
                            best, best_score = p, score
            # the next ring is at least this far from the point
            reach = ring * step * min(kx, ky)
            if reach > limit or (best is not None and not by_size and reach > best_score):
                break
            if by_size and best is not None and reach > best_score * 20.0:
                break  # no place reaches further than 20 km
            ring += 1
        return best
