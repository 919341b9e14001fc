"""Benchmark the offline geocoder, and the packages it was chosen over, as a printed table.

    .venv/bin/python bench/geo_bench.py                         # agent.core.geo only
    .venv/bin/python bench/geo_bench.py --python /tmp/geo-build/bin/python
        # also timezonefinder, tzfpy and reverse_geocode, where that interpreter has them

Every candidate runs in a fresh interpreter so that its resident memory is its own: VmRSS (and
its anonymous and file-backed parts) from /proc/self/status before the import, after the first
lookup (import plus data load) and after all lookups. Lookups are timed one by one over random
points in Europe (lat 35..71, lon -10..40, seeded), reported as p50/p99/max. "footprint" is the
installed size of the distribution with its runtime dependencies (for agent.core.geo: the module
plus its data file).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "agent.core.geo": ("country+locality", None),
    "timezonefinder": ("time zone", "timezonefinder"),
    "tzfpy": ("time zone", "tzfpy"),
    "reverse_geocode": ("nearest city", "reverse_geocode"),
}


def status_kb() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0])
    return out


def points(n: int) -> list[tuple[float, float]]:
    rng = random.Random(20240605)
    return [(rng.uniform(35.0, 71.0), rng.uniform(-10.0, 40.0)) for _ in range(n)]


def worker(name: str, n: int) -> dict[str, Any]:
    pts = points(n)
    before = status_kb()
    t0 = time.perf_counter()
    if name == "agent.core.geo":
        sys.path.insert(0, str(ROOT))
        geo_module = importlib.import_module("agent.core.geo")
        geo = geo_module.Geocoder(geo_module.DATA_FILE)

        def one(lat: float, lon: float) -> object:
            return geo.lookup(lat, lon)
    elif name == "timezonefinder":
        tf = importlib.import_module("timezonefinder").TimezoneFinder()

        def one(lat: float, lon: float) -> object:
            return tf.timezone_at(lat=lat, lng=lon)
    elif name == "tzfpy":
        tzfpy = importlib.import_module("tzfpy")

        def one(lat: float, lon: float) -> object:
            return tzfpy.get_tz(lon, lat)
    elif name == "reverse_geocode":
        rg = importlib.import_module("reverse_geocode")

        def one(lat: float, lon: float) -> object:
            return rg.get((lat, lon))
    else:
        raise SystemExit(f"unknown candidate {name}")
    one(47.5596, 7.5886)
    load_ms = (time.perf_counter() - t0) * 1e3
    loaded = status_kb()
    times = []
    for lat, lon in pts:
        t = time.perf_counter()
        one(lat, lon)
        times.append(time.perf_counter() - t)
    times.sort()
    return {
        "load_ms": load_ms,
        "p50_ms": times[len(times) // 2] * 1e3,
        "p99_ms": times[int(len(times) * 0.99)] * 1e3,
        "max_ms": times[-1] * 1e3,
        "rss_before": before,
        "rss_loaded": loaded,
        "rss_after": status_kb(),
    }


def footprint_kb(dist_name: str) -> int:
    """Installed size of a distribution and its (non-extra) requirements, in KiB."""
    seen: set[str] = set()
    total = 0
    todo = [dist_name]
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in dist.files or ():
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                total += path.stat().st_size
        todo += [r for r in dist.requires or () if "extra ==" not in r]
    return total // 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="random lookups per candidate")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the others")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--footprint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n)))
        return 0
    if args.footprint:
        print(footprint_kb(args.footprint))
        return 0

    rows = []
    for name, (answers, dist) in CANDIDATES.items():
        python = sys.executable if dist is None else args.python
        cmd = [python, __file__, "--worker", name, "-n", str(args.n)]
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            rows.append((name, answers, None, "not installed" if dist else run.stderr[-200:]))
            continue
        res = json.loads(run.stdout)
        if dist is None:
            foot = sum(
                p.stat().st_size for p in (ROOT / "agent/core/geo.py", ROOT / "agent/data/geo.bin")
            )
            foot //= 1024
        else:
            fp = subprocess.run(
                [python, __file__, "--footprint", dist], capture_output=True, text=True, check=True
            )
            foot = int(fp.stdout)
        rows.append((name, answers, res | {"footprint_kb": foot}, ""))

    head = (
        f"{'candidate':16} {'answers':16} {'load ms':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'RSS before':>10} {'+loaded':>8} {'+after':>8} {'(anon/file)':>13} "
        f"{'footprint':>10}"
    )
    print(f"{args.n} random lookups in Europe; memory in MiB, footprint installed with deps\n")
    print(head)
    print("-" * len(head))
    for name, answers, res, note in rows:
        if res is None:
            print(f"{name:16} {answers:16} {note}")
            continue
        b, lo, af = res["rss_before"], res["rss_loaded"], res["rss_after"]
        anon = (af["RssAnon"] - b["RssAnon"]) / 1024
        split = f"{anon:.1f}/{(af['RssFile'] - b['RssFile']) / 1024:.1f}"
        print(
            f"{name:16} {answers:16} {res['load_ms']:8.1f} {res['p50_ms']:7.3f} "
            f"{res['p99_ms']:7.3f} {res['max_ms']:7.3f} {b['VmRSS'] / 1024:10.1f} "
            f"{(lo['VmRSS'] - b['VmRSS']) / 1024:+8.1f} {(af['VmRSS'] - b['VmRSS']) / 1024:+8.1f} "
            f"{split:>13} {res['footprint_kb'] / 1024:9.1f}M"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
