"""Country borders and coasts around a position, as SVG path data for the operator's map.

The geo core (``agent.core.geo``) reads ``agent/data/geo.bin``: it answers "which country is
this point in" and lists the border runs near a box (``Geocoder.border_runs``). This module
snaps those runs to the map's pixel grid and returns path data; it never parses the file
itself. If the file is missing or of another format it returns ``None`` and the page draws its
coordinate grid alone.

Pure apart from the geocoder's map. A box of a few degrees takes a few milliseconds.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.core.geo import DATA_FILE, Geocoder, GeoDataError

__all__ = ["MAP_HEIGHT", "MAP_WIDTH", "OutlineSource", "Outlines", "region_box"]

MAP_WIDTH: Final = 320
MAP_HEIGHT: Final = 240
LAT_SPAN_DEG: Final = 2.0  # the overview map: about 220 km north to south
_PIXEL_TOLERANCE: Final = 1.5  # drop vertices closer than this many pixels


@dataclass(frozen=True, slots=True)
class Outlines:
    """Borders between countries and coasts inside ``bbox`` (west, south, east, north).

    Path data are in map pixels: x to the east from the west edge, y to the south from the
    north edge, for a ``width`` x ``height`` map.
    """

    bbox: tuple[float, float, float, float]
    width: int
    height: int
    borders: str
    coasts: str
    labels: tuple[tuple[str, float, float], ...] = ()  # (country code, x, y) in map pixels

    def to_json(self) -> dict[str, Any]:
        return {
            "bbox": list(self.bbox),
            "width": self.width,
            "height": self.height,
            "borders": self.borders,
            "coasts": self.coasts,
            "labels": [{"country": c, "x": x, "y": y} for c, x, y in self.labels],
            "source": "OpenStreetMap boundaries via agent/data/geo.bin",
        }


def region_box(lat: float, lon: float) -> tuple[float, float, float, float]:
    """The overview map's box around a position, centred on a 0.25 degree grid (cacheable).

    Equirectangular with the scale true at the centre: the box is ``LAT_SPAN_DEG`` high and
    as wide as the map's aspect ratio needs at that latitude.
    """
    lat_c = max(-85.0, min(85.0, round(lat * 4) / 4))
    lon_c = round(lon * 4) / 4
    half_lat = LAT_SPAN_DEG / 2
    half_lon = half_lat * (MAP_WIDTH / MAP_HEIGHT) / math.cos(math.radians(lat_c))
    return (lon_c - half_lon, lat_c - half_lat, lon_c + half_lon, lat_c + half_lat)


class OutlineSource:
    """Border outlines from the geo data file; thread-safe; ``None`` when it cannot read it."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or DATA_FILE
        self._geocoder = Geocoder(self.path)
        self._lock = threading.Lock()
        self._loaded = False
        self._usable = False
        self._cache: dict[tuple[float, float, float, float], Outlines] = {}

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
            self._geocoder.close()
            self._usable = False

    def around(self, lat: float, lon: float) -> Outlines | None:
        """Outlines for the overview map around a position, or None without usable data."""
        if not (math.isfinite(lat) and math.isfinite(lon)) or not -90 <= lat <= 90:
            return None
        return self.box(region_box(lat, lon))

    def box(self, bbox: tuple[float, float, float, float]) -> Outlines | None:
        with self._lock:
            if not self._loaded:
                self._loaded = True
                try:
                    self._geocoder.load()
                    self._usable = True
                except GeoDataError:
                    pass
            if not self._usable:
                return None
            cached = self._cache.get(bbox)
            if cached is None:
                cached = self._cache[bbox] = self._outlines(bbox)
                if len(self._cache) > 64:
                    self._cache.pop(next(iter(self._cache)))
            return cached

    def _outlines(self, bbox: tuple[float, float, float, float]) -> Outlines:
        west, south, east, north = bbox
        units = self._geocoder.units_per_degree
        qx0, qy0 = math.floor(west * units), math.floor(south * units)
        qx1, qy1 = math.ceil(east * units), math.ceil(north * units)
        sx = MAP_WIDTH / (qx1 - qx0)
        sy = MAP_HEIGHT / (qy1 - qy0)
        tol = max(1, int(_PIXEL_TOLERANCE / max(sx, sy)))  # data units per snapping cell
        borders: set[tuple[int, int, int, int]] = set()
        coasts: set[tuple[int, int, int, int]] = set()
        for run in self._geocoder.border_runs(bbox):
            target = coasts if run.coast else borders
            (ax, ay), *rest = run.points
            px, py = ax // tol, ay // tol
            for ax, ay in rest:
                qx, qy = ax // tol, ay // tol
                if (qx, qy) != (px, py):
                    seg = (px, py, qx, qy) if (px, py) < (qx, qy) else (qx, qy, px, py)
                    target.add(seg)
                    px, py = qx, qy

        def to_px(gx: int, gy: int) -> str:
            x = ((gx + 0.5) * tol - qx0) * sx
            y = (qy1 - (gy + 0.5) * tol) * sy
            return f"{x:.1f} {y:.1f}"

        def path(segments: set[tuple[int, int, int, int]]) -> str:
            # join segments into polylines so that the path data stay small
            ends: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
            for seg in segments:
                ends.setdefault((seg[0], seg[1]), []).append(seg)
                ends.setdefault((seg[2], seg[3]), []).append(seg)
            used: set[tuple[int, int, int, int]] = set()
            parts: list[str] = []
            for seg in sorted(segments):
                if seg in used:
                    continue
                used.add(seg)
                line = [(seg[0], seg[1]), (seg[2], seg[3])]
                while True:
                    tail = line[-1]
                    nxt = next((s for s in ends[tail] if s not in used), None)
                    if nxt is None:
                        break
                    used.add(nxt)
                    line.append((nxt[2], nxt[3]) if (nxt[0], nxt[1]) == tail else (nxt[0], nxt[1]))
                parts.append("M" + "L".join(to_px(x, y) for x, y in line))
            return "".join(parts)

        return Outlines(
            bbox, MAP_WIDTH, MAP_HEIGHT, path(borders), path(coasts), self._labels(bbox)
        )

    def _labels(
        self, bbox: tuple[float, float, float, float]
    ) -> tuple[tuple[str, float, float], ...]:
        """A country code where each country has most of its samples, through the geocoder."""
        west, south, east, north = bbox
        cols, rows = 9, 7
        samples: dict[str, list[tuple[float, float]]] = {}
        try:
            for r in range(rows):
                for c in range(cols):
                    x = (c + 0.5) / cols * MAP_WIDTH
                    y = (r + 0.5) / rows * MAP_HEIGHT
                    lon = west + x / MAP_WIDTH * (east - west)
                    lat = north - y / MAP_HEIGHT * (north - south)
                    country = self._geocoder.lookup(lat, lon).country
                    if country is not None:
                        samples.setdefault(country, []).append((x, y))
        except GeoDataError:
            return ()
        labels: list[tuple[str, float, float]] = []
        for country, points in sorted(samples.items()):
            if len(points) < 2:
                continue
            mx = sum(p[0] for p in points) / len(points)
            my = sum(p[1] for p in points) / len(points)
            # a sample of the country itself nearest its mean: inside even for odd shapes
            x, y = min(points, key=lambda p: (p[0] - mx) ** 2 + (p[1] - my) ** 2)
            labels.append((country, round(x, 1), round(y, 1)))
        return tuple(labels)
