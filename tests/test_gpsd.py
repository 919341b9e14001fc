"""The gpsd adapter: its pure decoder, then GpsdSource against the fake gpsd and real gpsd.

The fake (``hw_sim.gpsd.FakeGpsd``) is steered into what real gpsd rarely does on cue: no
fix, garbage, dropped clients. Real gpsd runs under gpsfake, fed with the NMEA of the same
route, and must hand over exactly the positions in that NMEA. Every wait is for an event,
bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gpsfake import gpsfake_gpsd
from hypothesis import given, settings
from hypothesis import strategies as st
from peers import free_port

from agent.core.gpsd_reports import BadReport, decode_report, fix_from_tpv, horizontal_accuracy
from agent.core.location import Fix, LocationTracker
from agent.inputs.gpsd import COUNTER_NAMES, GpsdSource
from hw_sim.gpsd import FakeGpsd, Route, load_route, route_samples, route_to_nmea

TIMEOUT = 5.0
ROUTE = load_route()
START = (ROUTE.points[0].lat, ROUTE.points[0].lon)

# A TPV as gpsd 3.22 sends it for an NMEA receiver (RMC + GGA + GSA).
GPSD_TPV = {
    "class": "TPV",
    "device": "/dev/pts/1",
    "mode": 3,
    "time": "2026-11-24T14:16:36.000Z",
    "ept": 0.005,
    "lat": 46.963334333,
    "lon": 7.47,
    "altHAE": 604.0,
    "altMSL": 555.0,
    "alt": 555.0,
    "epv": 29.9,
    "track": 45.0,
    "magtrack": 47.2974,
    "magvar": 2.3,
    "speed": 27.78,
    "geoidSep": 49.0,
    "eph": 17.1,
    "sep": 30.4,
}


class Recorder:
    """A sink that records every call and lets a test wait for a condition on them."""

    def __init__(self) -> None:
        self.fixes: list[Fix] = []
        self.no_fix = 0
        self.disconnected = 0
        self.calls: list[str] = []
        self._changed = asyncio.Event()

    def on_fix(self, fix: Fix) -> None:
        self.fixes.append(fix)
        self._record("fix")

    def on_no_fix(self, now: float) -> None:
        self.no_fix += 1
        self._record("no_fix")

    def on_disconnected(self, now: float) -> None:
        self.disconnected += 1
        self._record("disconnected")

    def _record(self, call: str) -> None:
        self.calls.append(call)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


class Both:
    """Feeds a Recorder (to wait on) and a LocationTracker (to check the outcome)."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.tracker = LocationTracker()

    def on_fix(self, fix: Fix) -> None:
        self.tracker.on_fix(fix)
        self.recorder.on_fix(fix)

    def on_no_fix(self, now: float) -> None:
        self.tracker.on_no_fix(now)
        self.recorder.on_no_fix(now)

    def on_disconnected(self, now: float) -> None:
        self.tracker.on_disconnected(now)
        self.recorder.on_disconnected(now)


def source(port: int, sink: Recorder | Both, *, silence_s: float = 5.0) -> GpsdSource:
    return GpsdSource(
        "127.0.0.1",
        port,
        sink,
        backoff_base=0.01,
        backoff_cap=0.05,
        silence_s=silence_s,
        rng=random.Random(7),
    )


def gps_state(sink: Both) -> str:
    """The status topic's GPS state (a function, so that mypy does not pin it after a check)."""
    return sink.tracker.gps_state


@contextlib.asynccontextmanager
async def running(src: GpsdSource) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``src`` for the block; it must still be running at the end, then it is cancelled."""
    task = asyncio.create_task(src.run(), name="gpsd-under-test")
    try:
        yield task
        assert not task.done(), "GpsdSource.run() ended on its own"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(src: GpsdSource, predicate: Callable[[GpsdSource], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        await src.wait_for(predicate)


def near(fix: Fix, lat: float, lon: float, tolerance_deg: float = 1e-6) -> bool:
    return abs(fix.lat - lat) <= tolerance_deg and abs(fix.lon - lon) <= tolerance_deg


# -- the pure decoder ------------------------------------------------------------------------


def test_decode_report_accepts_a_gpsd_object() -> None:
    assert decode_report(json.dumps(GPSD_TPV).encode() + b"\n")["class"] == "TPV"


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"not json\n", "bad_json"),
        (b'{"class":"TPV",\n', "bad_json"),
        (b"\xff\xfe\x00garbage\n", "bad_json"),
        (b"[1, 2, 3]\n", "bad_json"),
        (b'"TPV"\n', "bad_json"),
        (b"[" * 5000 + b"]" * 5000 + b"\n", "bad_json"),  # deeper than the parser recurses
        (b'{"mode": 3}\n', "bad_report"),
        (b'{"class": 3}\n', "bad_report"),
    ],
)
def test_decode_report_rejects_garbage(line: bytes, kind: str) -> None:
    with pytest.raises(BadReport) as caught:
        decode_report(line)
    assert caught.value.kind == kind


def test_fix_from_a_real_gpsd_tpv() -> None:
    fix, defect = fix_from_tpv(GPSD_TPV, received=12.5)
    assert defect is None
    assert fix is not None
    assert fix.time == datetime(2026, 11, 24, 14, 16, 36, tzinfo=UTC)
    assert (fix.lat, fix.lon) == (46.963334333, 7.47)
    assert fix.alt_m == 604.0  # altHAE, not altMSL
    assert fix.heading_deg == 45.0
    assert fix.speed_kmh == 100.01  # 27.78 m/s
    assert fix.horizontal_accuracy_m == 17.1  # eph; gpsd sent no epx/epy
    assert fix.mode == 3
    assert fix.received == 12.5


def test_absent_values_are_none_never_zero() -> None:
    fix, _ = fix_from_tpv({"class": "TPV", "mode": 3, "lat": 46.9, "lon": 7.4}, 0.0)
    assert fix is not None
    assert fix.time is None
    assert fix.alt_m is None
    assert fix.heading_deg is None
    assert fix.speed_kmh is None
    assert fix.horizontal_accuracy_m is None


def test_legacy_alt_and_no_altitude_for_a_2d_fix() -> None:
    legacy = {"class": "TPV", "mode": 3, "lat": 46.9, "lon": 7.4, "alt": 550.0}
    fix3, _ = fix_from_tpv(legacy, 0.0)
    assert fix3 is not None
    assert fix3.alt_m == 550.0
    fix2, _ = fix_from_tpv({**GPSD_TPV, "mode": 2}, 0.0)
    assert fix2 is not None
    assert fix2.alt_m is None  # a 2D solution assumed its altitude


@pytest.mark.parametrize("mode", [0, 1])
def test_mode_0_and_1_are_no_fix(mode: int) -> None:
    assert fix_from_tpv({"class": "TPV", "mode": mode, "lat": 1.0, "lon": 2.0}, 0.0) == (
        None,
        None,
    )


def test_a_mode_3_tpv_without_position_is_incomplete() -> None:
    # gpsd sends these mid-cycle (seen from gpsd 3.22 after a GSA): not garbage, not a fix
    with pytest.raises(BadReport) as caught:
        fix_from_tpv({"class": "TPV", "mode": 3, "eph": 17.1}, 0.0)
    assert caught.value.kind == "incomplete_tpv"


@pytest.mark.parametrize(
    "change",
    [
        {"mode": None},
        {"mode": "3"},
        {"mode": True},
        {"mode": 4},
        {"lat": "46.9"},
        {"lat": float("nan")},
        {"lon": float("inf")},
        {"lat": 90.5},
        {"lon": 181.0},
        {"speed": "fast"},
        {"eph": [1]},
        {"track": False},
        {"altHAE": float("nan")},
    ],
)
def test_malformed_tpv_is_bad(change: dict[str, object]) -> None:
    with pytest.raises(BadReport) as caught:
        fix_from_tpv({**GPSD_TPV, **change}, 0.0)
    assert caught.value.kind == "bad_tpv"


@pytest.mark.parametrize("time", [17, "yesterday", "2026-13-40T99:00:00Z"])
def test_a_bad_time_keeps_the_fix_without_it(time: object) -> None:
    fix, defect = fix_from_tpv({**GPSD_TPV, "time": time}, 0.0)
    assert defect == "bad_time"
    assert fix is not None
    assert fix.time is None
    assert fix.lat == GPSD_TPV["lat"]


def test_track_is_normalised_and_negative_speed_dropped() -> None:
    fix, _ = fix_from_tpv({**GPSD_TPV, "track": 365.5, "speed": -1.0}, 0.0)
    assert fix is not None
    assert fix.heading_deg == 5.5
    assert fix.speed_kmh is None


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        ({}, None),
        ({"eph": 17.1}, 17.1),
        ({"epx": 3.0, "epy": 4.0}, 5.0),  # per-axis 95 % -> hypot
        ({"epx": 3.0}, None),  # one axis says nothing about the other
        ({"eph": 17.1, "epx": 8.1, "epy": 10.8}, 17.1),  # the larger: eph (HDOP*19 m)
        ({"eph": 2.5, "epx": 8.1, "epy": 10.8}, 13.5),  # a receiver's optimistic 1-sigma eph
        ({"eph": -1.0, "epx": 30.0, "epy": 40.0}, 50.0),
    ],
)
def test_horizontal_accuracy(report: dict[str, object], expected: float | None) -> None:
    assert horizontal_accuracy(report) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=8,
)
tpv_like = st.fixed_dictionaries(
    {"class": st.just("TPV")},
    optional={
        key: json_values | st.floats()
        for key in ("mode", "lat", "lon", "time", "altHAE", "track", "speed", "eph", "epx")
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), tpv_like.map(lambda d: json.dumps(d).encode())))
def test_any_line_is_counted_or_used_never_raised(line: bytes) -> None:
    sink = Recorder()
    src = GpsdSource("127.0.0.1", 1, sink)
    src._on_line(line + b"\n")
    used = len(sink.fixes) + sink.no_fix
    assert used <= 1
    assert sum(src.counters.values()) >= used


# -- against the fake gpsd -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fixes_from_the_fake_gpsd_reach_the_tracker() -> None:
    sink = Both()
    async with FakeGpsd(ROUTE, interval=0.02) as fake:
        src = source(fake.port, sink)
        async with running(src):
            await sink.recorder.wait_for(lambda: len(sink.recorder.fixes) >= 3)
            snap = sink.tracker.snapshot(sink.recorder.fixes[-1].received, datetime.now(UTC))
    first = sink.recorder.fixes[0]
    assert near(first, *START, tolerance_deg=0.01)  # the start of the route (the car moves)
    assert first.mode == 3
    assert first.speed_kmh == pytest.approx(ROUTE.speed_kmh, abs=0.1)
    assert first.alt_m == pytest.approx(ROUTE.points[0].alt_msl_m + 49.5, abs=5)
    assert first.horizontal_accuracy_m == pytest.approx(0.9 * 19)  # eph beats hypot(epx, epy)
    assert snap["fix"] == "3d"
    assert snap["trusted"] is True
    assert gps_state(sink) == "fix"
    assert src.counters["connects"] == 1
    assert src.counters["bad_json"] == src.counters["bad_tpv"] == 0


@pytest.mark.asyncio
async def test_no_fix_then_a_fixed_position() -> None:
    sink = Both()
    async with FakeGpsd(ROUTE, interval=0.02) as fake, running(source(fake.port, sink)):
        await sink.recorder.wait_for(lambda: bool(sink.recorder.fixes))
        fake.set_no_fix()
        await sink.recorder.wait_for(lambda: sink.recorder.no_fix > 0)
        assert gps_state(sink) == "no_fix"
        assert sink.tracker.snapshot(0.0, datetime.now(UTC))["fix"] == "last_known"
        seen = len(sink.recorder.fixes)
        fake.set_position(46.5, 6.6)
        await sink.recorder.wait_for(lambda: len(sink.recorder.fixes) > seen)
    fix = sink.recorder.fixes[-1]
    assert near(fix, 46.5, 6.6)
    assert fix.speed_kmh == 0.0
    assert fix.heading_deg is None
    assert gps_state(sink) == "fix"


@pytest.mark.asyncio
async def test_the_car_stops_at_the_end_of_the_route() -> None:
    short = Route("two points", (ROUTE.points[0], ROUTE.points[1]), speed_kmh=100.0)
    sink = Recorder()
    end = short.points[-1]
    async with (
        FakeGpsd(short, interval=0.01, step_s=10.0) as fake,
        running(source(fake.port, sink)),
    ):
        await sink.wait_for(lambda: any(f.speed_kmh == 0.0 for f in sink.fixes))
    stopped = [f for f in sink.fixes if f.speed_kmh == 0.0]
    assert all(near(f, end.lat, end.lon) for f in stopped)


GARBAGE = [
    b"not json at all\n",
    b"\xff\xfe\x00\x01 binary\n",
    b"[1, 2, 3]\n",
    b"[" * 3000 + b"\n",
    b'{"no": "class"}\n',
    b'{"class":"TPV","mode":3,"lat":"north","lon":7.4}\n',
    b'{"class":"TPV","mode":3,"lat":NaN,"lon":7.4}\n',
    b'{"class":"TPV","mode":"3","lat":46.9,"lon":7.4}\n',
    b'{"class":"TPV","mode":3,"lat":95.0,"lon":7.4}\n',
    b'{"class":"TPV","mode":3,"lat":46.9,"lon":7.4,"time":42}\n',
    b'{"class":"TPV","mode":3,"eph":17.1}\n',
    b"x" * 100_000 + b"\n",
    b"\n",
    b'{"class":"ERROR","message":"Unrecognized request"}\n',
    b'{"class":"SKY","satellites":"many"}\n',
]


@pytest.mark.asyncio
async def test_garbage_is_counted_logged_once_and_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.gpsd")
    sink = Recorder()
    async with FakeGpsd(ROUTE, interval=0.02) as fake:
        src = source(fake.port, sink)
        async with running(src):
            await sink.wait_for(lambda: bool(sink.fixes))
            for _ in range(2):
                fake.send_raw(b"".join(GARBAGE))
            seen = len(sink.fixes)
            await until(src, lambda s: s.counters["line_too_long"] == 2)
            await sink.wait_for(lambda: len(sink.fixes) > seen + 2)  # and life goes on
    counters = src.counters
    assert set(counters) >= set(COUNTER_NAMES)
    assert counters["bad_json"] == 2 * 4
    assert counters["bad_report"] == 2
    assert counters["bad_tpv"] == 2 * 4
    assert counters["bad_time"] == 2  # that fix was kept without its time
    assert counters["incomplete_tpv"] == 2
    assert counters["gpsd_errors"] == 2
    assert counters["connects"] == 1
    assert counters["disconnects"] == 0
    assert sum(f.time is None for f in sink.fixes) == 2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    kinds = [r.args[2] for r in warnings if isinstance(r.args, tuple) and len(r.args) > 2]
    for kind in ("bad_json", "bad_report", "bad_tpv", "bad_time", "line_too_long"):
        assert kinds.count(kind) == 1, kind  # once per kind, not once per line


@pytest.mark.asyncio
async def test_reconnects_after_the_fake_drops_its_clients() -> None:
    sink = Both()
    async with FakeGpsd(ROUTE, interval=0.02) as fake:
        src = source(fake.port, sink)
        async with running(src):
            await sink.recorder.wait_for(lambda: bool(sink.recorder.fixes))
            await fake.disconnect_clients()
            await sink.recorder.wait_for(lambda: sink.recorder.disconnected == 1)
            assert gps_state(sink) == "disconnected"
            after = len(sink.recorder.calls)
            await sink.recorder.wait_for(lambda: "fix" in sink.recorder.calls[after:])
            await fake.disconnect_clients()
            await sink.recorder.wait_for(lambda: sink.recorder.disconnected == 2)
            after = len(sink.recorder.calls)
            await sink.recorder.wait_for(lambda: "fix" in sink.recorder.calls[after:])
    assert src.counters["connects"] == 3
    assert src.counters["disconnects"] == 2
    assert gps_state(sink) == "fix"


@pytest.mark.asyncio
async def test_waits_for_gpsd_that_is_not_there_yet() -> None:
    sink = Both()
    port = free_port()
    src = source(port, sink)
    async with running(src):
        await until(src, lambda s: s.counters["connect_failures"] >= 3)
        assert sink.recorder.disconnected == 1  # one outage, told once
        assert gps_state(sink) == "disconnected"
        assert sink.tracker.snapshot(0.0, datetime.now(UTC))["fix"] == "none"
        async with FakeGpsd(ROUTE, port=port, interval=0.02):
            await sink.recorder.wait_for(lambda: bool(sink.recorder.fixes))
    assert src.counters["connects"] == 1
    assert gps_state(sink) == "fix"


@pytest.mark.asyncio
async def test_a_silent_gpsd_means_no_fix_once_per_silence() -> None:
    sink = Recorder()
    tpv = json.dumps({**GPSD_TPV, "time": None}).encode() + b"\n"
    # One report at start-up (before anyone watches), the next in an hour: a gpsd whose
    # receiver went quiet.
    async with FakeGpsd(ROUTE, interval=3600.0) as fake:
        src = source(fake.port, sink, silence_s=0.1)
        async with running(src):
            await sink.wait_for(lambda: sink.no_fix == 1)
            fake.send_raw(b'{"class":"SKY"}\n')  # not a TPV: the silence goes on, told once
            await until(src, lambda s: s.counters["reports"] >= 4)  # VERSION DEVICES WATCH SKY
            assert sink.no_fix == 1
            fake.send_raw(tpv)  # a fix ends the silence...
            await sink.wait_for(lambda: len(sink.fixes) == 1)
            await sink.wait_for(lambda: sink.no_fix == 2)  # ...and the next one is told again
    assert sink.calls == ["no_fix", "fix", "no_fix"]
    assert src.counters["silences"] == 2
    assert src.counters["connects"] == 1


@pytest.mark.asyncio
async def test_logs_never_show_a_position(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sink = Recorder()
    async with FakeGpsd(ROUTE, interval=0.02) as fake:
        src = source(fake.port, sink)
        async with running(src):
            await sink.wait_for(lambda: len(sink.fixes) >= 3)
            fake.send_raw(b'{"class":"TPV","mode":3,"lat":46.97,"lon":"7.47"}\n')
            await until(src, lambda s: s.counters["bad_tpv"] == 1)
            await fake.disconnect_clients()
            await until(src, lambda s: s.counters["connects"] == 2)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("agent"))
    assert "gpsd" in text
    for fix in sink.fixes:
        assert f"{fix.lat:.3f}" not in text
        assert f"{fix.lon:.3f}" not in text
    assert "46.97" not in text


# -- against real gpsd under gpsfake ---------------------------------------------------------


NMEA_START = datetime(2026, 11, 24, 14, 16, 0, tzinfo=UTC)


@pytest.fixture
def real_gpsd(tmp_path: Path) -> Iterator[tuple[str, int]]:
    with gpsfake_gpsd(route_to_nmea(ROUTE, start=NMEA_START), tmp_path) as address:
        yield address


@pytest.mark.peer("gpsd")
@pytest.mark.asyncio
async def test_real_gpsd_reports_the_route_exactly(real_gpsd: tuple[str, int]) -> None:
    host, port = real_gpsd
    expected = {s.time: s for s in route_samples(ROUTE, start=NMEA_START)}
    sink = Both()
    src = GpsdSource(host, port, sink, backoff_base=0.05, backoff_cap=0.5)
    async with running(src):
        await sink.recorder.wait_for(
            lambda: (
                sum(f.time in expected and f.alt_m is not None for f in sink.recorder.fixes) >= 3
            ),
            timeout=20.0,
        )
        snap = sink.tracker.snapshot(sink.recorder.fixes[-1].received, datetime.now(UTC))
    complete = [f for f in sink.recorder.fixes if f.time in expected and f.alt_m is not None]
    for fix in complete:
        assert fix.time is not None
        sample = expected[fix.time]
        assert near(fix, sample.lat, sample.lon, tolerance_deg=1e-6)
        assert fix.mode == 3
        assert fix.alt_m == pytest.approx(sample.alt_msl_m + ROUTE.geoid_separation_m, abs=0.2)
        assert fix.speed_kmh == pytest.approx(ROUTE.speed_kmh, abs=0.1)
        assert fix.heading_deg == pytest.approx(sample.track_deg, abs=0.1)
        assert fix.horizontal_accuracy_m == pytest.approx(0.9 * 19)  # gpsd: HDOP * P_UERE
    assert snap["fix"] == "3d"
    assert snap["trusted"] is True
    assert src.counters["bad_json"] == src.counters["bad_tpv"] == 0
