"""Country borders and coasts around a position, as SVG path data for the operator's map.

The geo core (``agent.core.geo``) answers "which country is this point in" from
``agent/data/geo.bin`` but offers no call that returns outlines. This module reads the border
runs of that same file, through the layout documented in ``agent/data/build_geo_data.py``
(a quadtree whose leaves list the border runs that touch them), for the leaves that meet a
box, snaps them to the map's pixel grid and returns path data. It only reads; if the file is
missing or of another format it returns ``None`` and the page draws its coordinate grid alone.

Pure apart from mapping the file once. A box of a few degrees takes a few milliseconds.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.core.geo import DATA_FILE, Geocoder, GeoDataError

__all__ = ["MAP_HEIGHT", "MAP_WIDTH", "OutlineSource", "Outlines", "region_box"]

MAP_WIDTH: Final = 320
MAP_HEIGHT: Final = 240
LAT_SPAN_DEG: Final = 2.0  # the overview map: about 220 km north to south
_MAGIC: Final = b"CAGEO\x00\x00\x01"
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
    """Reads border runs from the geo data file; thread-safe; ``None`` when it cannot."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or DATA_FILE
        self._geocoder = Geocoder(self.path)
        self._lock = threading.Lock()
        self._loaded = False
        self._usable = False
        self._mm: mmap.mmap | None = None
        self._units = 1
        self._bbox = (0, 0, 0, 0)
        self._nodes: memoryview = memoryview(b"")
        self._leaves: memoryview = memoryview(b"")
        self._chains: memoryview = memoryview(b"")
        self._cache: dict[tuple[float, float, float, float], Outlines] = {}

    def _load(self) -> None:
        try:
            with self.path.open("rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return
        try:
            if mm[: len(_MAGIC)] != _MAGIC:
                mm.close()
                return
            (hlen,) = struct.unpack_from("<I", mm, len(_MAGIC))
            start = len(_MAGIC) + 4
            header = json.loads(bytes(mm[start : start + hlen]).decode("utf-8"))
            base = start + hlen + (-(start + hlen)) % 4
            view = memoryview(mm)

            def section(name: str) -> memoryview:
                off, size = header["sections"][name]
                return view[base + off : base + off + size].cast("i")

            self._nodes = section("nodes")
            self._leaves = section("leaves")
            self._chains = section("chains")
            self._units = int(header["units_per_degree"])
            x0, y0, x1, y1 = (int(v) for v in header["bbox"])
            self._bbox = (x0, y0, x1, y1)
        except (KeyError, ValueError, TypeError, struct.error):
            self._nodes = self._leaves = self._chains = memoryview(b"")
            mm.close()
            return
        self._mm = mm
        self._usable = True

    def close(self) -> None:
        with self._lock:
            self._nodes = self._leaves = self._chains = memoryview(b"")
            self._cache.clear()
            if self._mm is not None:
                self._mm.close()
                self._mm = None
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
                self._load()
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
        units = self._units
        qx0, qy0 = math.floor(west * units), math.floor(south * units)
        qx1, qy1 = math.ceil(east * units), math.ceil(north * units)
        sx = MAP_WIDTH / (qx1 - qx0)
        sy = MAP_HEIGHT / (qy1 - qy0)
        tol = max(1, int(_PIXEL_TOLERANCE / max(sx, sy)))  # data units per snapping cell
        borders: set[tuple[int, int, int, int]] = set()
        coasts: set[tuple[int, int, int, int]] = set()
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
                target = coasts if chains[i + 1] == 0 else borders
                end = i + 4 + chains[i + 2]
                ax, ay = chains[i + 3], chains[i + 4]
                i += 5
                px, py = ax // tol, ay // tol
                while i < end:
                    step = chains[i]
                    i += 1
                    ax += step >> 16
                    ay += ((step & 0xFFFF) ^ 0x8000) - 0x8000
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
