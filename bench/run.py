"""All the agent's benchmarks: run them, print one table, write the numbers as JSON.

    python -m bench.run [--quick] [--no-uml] [--profile]       (``make bench`` runs this)

1. ``bench.inprocess``: the agent and the simulated car in one process on python-can's
   ``virtual`` bus; latency, bus load (a thread), idle CPU, paho's raw MQTT floor.
2. ``bench.startup``: ``connect-agent run`` from exec to READY (sd_notify; else its first
   ``online`` status), VmRSS after start.
3. ``bench.driver_uml`` through ``hil/run-in-uml.sh``: SocketCAN vcan0 on a UML kernel (one
   CPU), the agent, car, bus load, broker, gpsd and subscriber in separate processes; latency,
   bus load, idle CPU, VmRSS over 1,000 calls, start-up, the MQTT floor there.
4. ``bench.links``: hold threshold -> backend through a simulated link (frozen; 100, 200,
   500 ms one way with 0, 5, 20 % loss) beside the floors measured through the same link.
5. ``bench.links_kernel`` through ``hil/run-in-uml.sh``: 200 ms one way, 20 % loss made by
   the UML kernel's netem, retransmitted by its TCP: bare paho clients with and without the
   agent's socket options, the same through 2 and 5 s blackouts, then the agent's calls.

Each step runs in a fresh process; the results go to ``bench/results/latest.json`` and, for a
full run, ``bench/results/<date>-<host>.json``. ``--quick`` is a smoke run (about 2 minutes):
fewer calls, shorter idle; its numbers are not for comparison. ``--profile`` also records
py-spy profiles of the agent under UML into ``.cache/bench/profile/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import PYTHON, REPO, machine, write_json
from bench.links import rows as link_rows
from bench.links_kernel import rows as kernel_rows

RESULTS = REPO / "bench" / "results"
WORK = REPO / ".cache" / "bench"
MB = 1_000_000 / 1024  # KiB in a (decimal) megabyte

FULL = {
    "inprocess": ["--calls", "200", "--load-calls", "200", "--idle-s", "30", "--scenario"],
    "startup": ["--runs", "5"],
    "uml": ["--calls", "200", "--load-calls", "200", "--total-calls", "1000", "--idle-s", "30"],
    "links": ["--calls", "10"],
    "kernel": ["--calls", "40", "--samples", "400", "--clients", "80", "--blackouts", "2,5"],
}
QUICK = {
    "inprocess": ["--calls", "30", "--load-calls", "30", "--idle-s", "5", "--floor", "100"],
    "startup": ["--runs", "2"],
    "uml": [
        *("--calls", "30", "--load-calls", "30", "--total-calls", "150"),
        *("--idle-s", "5", "--floor", "100"),
    ],
    "links": ["--calls", "3"],
    "kernel": [
        *("--calls", "3", "--samples", "40", "--clients", "10"),
        *("--blackouts", "2", "--blackout-rounds", "1", "--blackout-clients", "5"),
    ],
}


def step(name: str, argv: list[str], out: Path) -> dict[str, Any]:
    print(f"== {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    out.unlink(missing_ok=True)
    t0 = time.monotonic()
    env = dict(os.environ, HIL_TIMEOUT=os.environ.get("HIL_TIMEOUT", "1200"))
    proc = subprocess.run(argv, cwd=REPO, env=env, check=False)
    took = round(time.monotonic() - t0, 1)
    if proc.returncode != 0 or not out.exists():
        print(f"== {name}: FAILED (exit status {proc.returncode})", file=sys.stderr, flush=True)
        return {"error": f"exit status {proc.returncode}", "wall_s": took}
    data: dict[str, Any] = json.loads(out.read_text())
    data["wall_s"] = took
    return data


def module_step(name: str, module: str, args: list[str], *, uml: bool = False) -> dict[str, Any]:
    """``python -m bench.<module> --out <WORK>/<module>.json ARGS``, under UML if ``uml``."""
    out = WORK / f"{module}.json"
    prefix = [str(REPO / "hil" / "run-in-uml.sh")] if uml else []
    return step(name, [*prefix, PYTHON, "-m", f"bench.{module}", "--out", str(out), *args], out)


# -- targets ----------------------------------------------------------------------------------


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it is met (None: not measured)."""
    ip, st, uml = res.get("inprocess", {}), res.get("startup", {}), res.get("uml", {})
    out: list[dict[str, Any]] = []

    def add(
        name: str,
        value: float | None,
        limit: float,
        unit: str,
        *,
        extra_ok: bool = True,
        op: str = "<=",
    ) -> None:
        within = None if value is None else value >= limit if op == ">=" else value <= limit
        met = None if within is None else within and extra_ok
        out.append(
            {"target": name, "value": value, "limit": limit, "unit": unit, "met": met, "op": op}
        )

    def worst_p99(series: dict[str, Any] | None) -> float | None:
        if not series or "to_puback_ms" not in series:
            return None
        values = [series[k].get("p99") for k in ("to_subscriber_ms", "to_puback_ms")]
        return None if None in values else max(values)

    add("p99 press-to-delivery, in-process", worst_p99(_get(ip, "latency")), 10, "ms")
    for label, data in (("in-process", ip), ("UML vcan0", uml)):
        series = _get(data, "busload", "4000")
        missed = None if series is None else series["missed"] + series["not_received"]
        add(
            f"p99 at 4,000 frames/s, {label} (missed {missed})",
            worst_p99(series),
            20,
            "ms",
            extra_ok=missed == 0,
        )
    limit_mib = round(40 * MB / 1024, 1)
    add(
        "VmRSS after start, host", _mib(_get(st, "rss_kib_after_start", "median")), limit_mib, "MiB"
    )
    rss = uml.get("rss") or []
    if rss:
        add("VmRSS after start, UML", _mib(rss[0]["rss_kib"]), limit_mib, "MiB")
        add(
            f"VmRSS after {rss[-1]['calls']} calls, UML", _mib(rss[-1]["rss_kib"]), limit_mib, "MiB"
        )
        add(
            f"VmRSS growth over {rss[-1]['calls']} calls, UML",
            _mib(rss[-1]["rss_kib"] - rss[0]["rss_kib"]),
            2.0,
            "MiB",
        )
    ready = _get(st, "ready_s", "median")
    how = "READY=1" if st.get("sd_notify_ready") else "first online status (no READY=1 yet)"
    add(
        f"start-up, exec -> {how}, host",
        ready if ready is not None else _get(st, "online_status_s", "median"),
        1.0,
        "s",
    )
    add("idle CPU, in-process", _get(ip, "idle", "agent_cpu_pct"), 1.0, "%")
    add("idle CPU, UML agent process", _get(uml, "idle", "agent_cpu_pct"), 1.0, "%")
    within = _get(res, "kernel", "agent calls", "within_2s")
    add(
        "calls within 2 s, 200 ms one way 20 % loss, UML kernel TCP",
        None if within is None else round(100 * within, 1),
        95,
        "%",
        op=">=",
    )
    return out


def _mib(kib: float | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


# -- the table --------------------------------------------------------------------------------


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def latency_rows(label: str, series: dict[str, Any] | None, extra: str = "") -> list[str]:
    if not series:
        return []
    if "to_puback_ms" not in series:
        return [f"{label:<34} (not measured: {_f(series.get('error'))})"]
    rows = []
    for i, (what, key) in enumerate(
        (("-> subscriber", "to_subscriber_ms"), ("-> agent PUBACK", "to_puback_ms"))
    ):
        s = series[key]
        head = label if i == 0 else ""
        tail = ""
        if i == 0:
            missed = series["missed"] + series["not_received"]
            cpu = series.get("agent_cpu_pct")
            tail = f"{missed:>7} {_f(cpu, 1):>7}  {extra}"
        rows.append(
            f"{head:<34} {what:<16} {s['n']:>4} {_f(s['p50']):>7} {_f(s['p95']):>7} "
            f"{_f(s['p99']):>7} {_f(s['max']):>7} {tail}"
        )
    return rows


def _busy(series: dict[str, Any] | None) -> str:
    busy = _get(series or {}, "machine_busy_pct")
    return "" if busy is None else f"machine busy {busy} %"


def _series(step_result: dict[str, Any], key: str) -> dict[str, Any] | None:
    """A phase's results; the step's own error where the whole step failed."""
    if "error" in step_result:
        return step_result
    series: dict[str, Any] | None = step_result.get(key)
    return series


def floor_rows(label: str, floor: dict[str, Any] | None) -> list[str]:
    if not floor:
        return []
    rows = []
    for i, (what, key) in enumerate(
        (("-> subscriber", "to_subscriber_ms"), ("-> PUBACK", "to_puback_ms"))
    ):
        s = floor[key]
        head = f"{label} ({floor['payload_bytes']} B)" if i == 0 else ""
        rows.append(
            f"{head:<34} {what:<16} {s['n']:>4} {_f(s['p50']):>7} {_f(s['p95']):>7} "
            f"{_f(s['p99']):>7} {_f(s['max']):>7}"
        )
    return rows


def table(res: dict[str, Any]) -> str:
    m = res["machine"]
    ip, st, uml = res.get("inprocess", {}), res.get("startup", {}), res.get("uml", {})
    lines = [
        f"connect-agent benchmarks, {res['date']} ({res['mode']} run, {res['wall_s']:.0f} s)",
        f"machine: {m['host']}, {m['nproc']} x {m['cpu_model']}, Linux {m['kernel']}, "
        f"Python {m['python']}; load average before {m['loadavg'][0]}, "
        f"after {res['loadavg_after'][0]}",
        "",
        f"1-2. Hold threshold -> delivery, ms (hold_ms {ip.get('hold_ms', 100)}; "
        f"request {ip.get('request_bytes', '?')} B, MQTT 5, QoS 1, local Mosquitto)",
        f"{'setup':<34} {'to':<16} {'n':>4} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7} "
        f"{'missed':>7} {'CPU %':>7}  bus load reached, whole machine's CPU busy",
    ]
    lines += latency_rows(
        "in-process, virtual bus", _series(ip, "latency"), _busy(_get(ip, "latency"))
    )
    for rate, series in (_get(ip, "busload") or {}).items():
        reached = _get(series, "generator", "rate")
        lines += latency_rows(f"  + {rate} frames/s", series, f"{reached}/s, {_busy(series)}")
    lines += latency_rows("Scenario (backend in-process)", _get(ip, "scenario"))
    disk, lag = _get(ip, "latency", "to_disk_ms"), _get(ip, "latency", "agent_threshold_lag_ms")
    if disk and lag:
        lines += [
            f"  (in-process: threshold -> request on disk p50 {disk['p50']}, p99 {disk['p99']} ms;"
            f" first pressed frame + hold_ms",
            f"   -> the agent's threshold p50 {lag['p50']}, p99 {lag['p99']} ms)",
        ]
    lines += latency_rows(
        "UML vcan0, separate processes", _series(uml, "latency"), _busy(_get(uml, "latency"))
    )
    for rate, series in (_get(uml, "busload") or {}).items():
        reached = _get(series, "generator", "rate")
        lines += latency_rows(f"  + {rate} frames/s", series, f"{reached}/s, {_busy(series)}")
    lines += ["", "floor: paho-mqtt alone, publish at QoS 1 (one process, paho's select loop)"]
    lines += floor_rows("host loopback", _get(ip, "mqtt_floor"))
    lines += floor_rows("UML loopback", _get(uml, "mqtt_floor"))
    share = _get(ip, "busload_mix", "matrix_share")
    lines += [
        "",
        "  CPU %: the agent's utime+stime over the phase (100 = one core); in-process: this",
        "  process minus the threads of the bus load, the roof module's reader and the ECU.",
        "  machine busy: all CPUs of the machine (UML: its one CPU), 100 = all busy.",
        f"  Bus load: {int((share or 0.25) * 100)} % matrix cyclic frames (0x3B0-0x3B2, decoded), "
        "the rest IDs the agent filters out.",
        "  UML threshold = first pressed frame sent + hold_ms; in-process = the agent's held_at.",
        "",
        "3-4. Memory, start-up, idle CPU",
    ]
    rss = uml.get("rss") or []
    lines.append(
        f"  agent VmRSS after start, host (connect-agent run):  "
        f"{_f(_mib(_get(st, 'rss_kib_after_start', 'median')), 1)} MiB (median of "
        f"{len(st.get('runs', []))} starts)"
    )
    if rss:
        trail = ", ".join(f"{r['calls']}: {_f(_mib(r['rss_kib']), 1)}" for r in rss)
        lines.append(f"  agent VmRSS in UML by calls done (MiB):  {trail}")
    ready = st.get("ready_s")
    lines.append(
        "  start-up, host, exec -> READY=1 (sd_notify):  "
        + (
            f"median {ready['median']:.3f} s, max {ready['max']:.3f} s"
            if ready
            else "no READY=1 sent"
        )
    )
    online = st.get("online_status_s")
    if online:
        lines.append(
            "  start-up, host, exec -> first online status at the broker:  "
            f"median {online['median']:.3f} s, max {online['max']:.3f} s"
        )
    us = uml.get("startup")
    if us:
        lines.append(
            "  start-up, UML (first start, 1 CPU):  exec -> READY "
            f"{_f(us.get('ready_s'), 3)} s, -> online status {_f(us.get('online_status_s'), 3)} s"
        )
    for label, data in (("in-process", ip), ("UML", uml)):
        idle = data.get("idle")
        if idle:
            lines.append(
                f"  idle CPU, {label}, {idle['seconds']:.0f} s of cyclic traffic only:  "
                f"{idle['agent_cpu_pct']} % (machine busy {idle['machine_busy_pct']} %)"
            )
    lines += _section(
        res.get("links", {}),
        link_rows,
        "5. Links: hold threshold -> request at the backend, through hw_sim.link to",
        "   Mosquitto; floors measured through the same link (paho, QoS 1)",
    )
    lines += _section(
        res.get("kernel", {}),
        kernel_rows,
        "6. Kernel TCP under netem (UML): arrival at a subscriber on the clean side",
    )
    lines += ["", "Targets"]
    for t in res["targets"]:
        mark = "-" if t["met"] is None else ("met" if t["met"] else "MISSED")
        op = t.get("op", "<=")
        lines.append(
            f"  {t['target']:<62} {_f(t['value']):>8} {t['unit']:<3} {op} {t['limit']:<5} {mark}"
        )
    return "\n".join(lines)


def _section(
    data: dict[str, Any], rows: Callable[[dict[str, Any]], list[str]], *heading: str
) -> list[str]:
    """A step's own rows under its heading, or why it was not measured; nothing if not run."""
    if not data:
        return []
    if "error" in data:
        return ["", *heading, f"  (not measured: {data['error']})"]
    return ["", *heading, *("  " + row for row in rows(data))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--no-uml", action="store_true", help="skip the vcan0/UML part")
    parser.add_argument("--profile", action="store_true", help="py-spy the agent under UML")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    started = datetime.now(UTC)
    t0 = time.monotonic()
    res: dict[str, Any] = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "machine": machine(),
    }
    WORK.mkdir(parents=True, exist_ok=True)
    res["inprocess"] = module_step("in-process", "inprocess", plan["inprocess"])
    res["startup"] = module_step("start-up", "startup", plan["startup"])
    if not args.no_uml:
        uml_args = [*plan["uml"]]
        if args.profile:
            uml_args += ["--profile", str(WORK / "profile")]
        res["uml"] = module_step("UML vcan0", "driver_uml", uml_args, uml=True)
    res["links"] = module_step("links", "links", plan["links"])
    if not args.no_uml:
        res["kernel"] = module_step("kernel links", "links_kernel", plan["kernel"], uml=True)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    res["targets"] = targets(res)
    text = table(res)
    print(text)
    write_json(args.results / "latest.json", res)
    if not args.quick:
        name = f"{started.strftime('%Y-%m-%d')}-{res['machine']['host']}.json"
        write_json(args.results / name, res)
        print(f"\nwritten: {args.results / 'latest.json'}, {args.results / name}")
    else:
        print(f"\nwritten: {args.results / 'latest.json'}")
    steps = ("inprocess", "startup", "uml", "links", "kernel")
    failed = [k for k in steps if "error" in res.get(k, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
