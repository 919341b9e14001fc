"""The location core: current / last known / none, the eCall trust rule, the recent trail.

Every clock is injected: ``received`` and ``now`` are plain monotonic numbers, ``now_utc`` a
fixed aware datetime.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import clock
from agent.core.location import (
    DEFAULT_RECENT_SPACING_M,
    TRAIL_LENGTH,
    TRUST_LIMIT_M,
    Fix,
    LocationTracker,
    distance_m,
    rfc3339_ms,
)

T0 = datetime(2026, 11, 24, 14, 16, 32, 123456, tzinfo=UTC)
NOW_UTC = datetime(2026, 11, 24, 14, 30, 0, tzinfo=UTC)
BERN = (46.9663, 7.4693)
KEYS = {
    "lat",
    "lon",
    "alt_m",
    "heading_deg",
    "speed_kmh",
    "horizontal_accuracy_m",
    "fix",
    "fix_time",
    "fix_age_s",
    "trusted",
    "country",
    "locality",
    "recent",
}
M_PER_DEG_LAT = 111_195.0  # on the 6371.0088 km sphere


def fix(
    received: float = 100.0,
    *,
    lat: float = BERN[0],
    lon: float = BERN[1],
    mode: int = 3,
    accuracy: float | None = 12.0,
    time: datetime | None = T0,
    alt: float | None = 604.5,
    heading: float | None = 33.6,
    speed: float | None = 100.0,
) -> Fix:
    return Fix(
        time=time,
        lat=lat,
        lon=lon,
        alt_m=alt,
        heading_deg=heading,
        speed_kmh=speed,
        horizontal_accuracy_m=accuracy,
        mode=mode,
        received=received,
    )


def north(metres: float) -> float:
    """Latitude ``metres`` north of Bern."""
    return BERN[0] + metres / M_PER_DEG_LAT


# -- current, last known, none ---------------------------------------------------------------


def test_no_fix_ever_gives_fix_none_and_every_key_null() -> None:
    tracker = LocationTracker()
    snap = tracker.snapshot(10.0, NOW_UTC)
    assert set(snap) == KEYS
    assert snap["fix"] == "none"
    assert snap["trusted"] is False
    assert snap["recent"] == []
    assert all(snap[k] is None for k in KEYS - {"fix", "trusted", "recent"})
    assert tracker.gps_state == "unknown"


def test_no_fix_after_lost_gpsd_is_still_none() -> None:
    tracker = LocationTracker()
    tracker.on_disconnected(1.0)
    tracker.on_no_fix(2.0)
    assert tracker.snapshot(3.0, NOW_UTC)["fix"] == "none"
    assert tracker.gps_state == "no_fix"


@pytest.mark.parametrize(("mode", "expected"), [(3, "3d"), (2, "2d")])
def test_a_fresh_fix_is_current(mode: int, expected: str) -> None:
    tracker = LocationTracker()
    tracker.on_fix(fix(100.0, mode=mode))
    snap = tracker.snapshot(101.26, NOW_UTC)
    assert set(snap) == KEYS
    assert snap["fix"] == expected
    assert (snap["lat"], snap["lon"]) == BERN
    assert snap["alt_m"] == 604.5
    assert snap["heading_deg"] == 33.6
    assert snap["speed_kmh"] == 100.0
    assert snap["horizontal_accuracy_m"] == 12.0
    assert snap["fix_time"] == "2026-11-24T14:16:32.123Z"
    assert snap["fix_age_s"] == 1.3
    assert snap["trusted"] is True
    assert snap["country"] is None
    assert snap["locality"] is None
    assert tracker.gps_state == "fix"


def test_fix_is_current_up_to_current_s_and_last_known_after() -> None:
    tracker = LocationTracker(current_s=5.0)
    tracker.on_fix(fix(100.0))
    at_limit = tracker.snapshot(105.0, NOW_UTC)
    assert at_limit["fix"] == "3d"
    assert at_limit["trusted"] is True
    stale = tracker.snapshot(105.001, NOW_UTC)
    assert stale["fix"] == "last_known"
    assert stale["trusted"] is False
    assert stale["lat"] == BERN[0]  # the position is still given, flagged as last known
    assert stale["fix_age_s"] == 5.0
    assert tracker.gps_state == "fix"  # the state is gpsd's; staleness is the snapshot's


@pytest.mark.parametrize(
    ("event", "state"), [("on_no_fix", "no_fix"), ("on_disconnected", "disconnected")]
)
def test_losing_the_fix_makes_it_last_known_at_once(event: str, state: str) -> None:
    tracker = LocationTracker()
    tracker.on_fix(fix(100.0))
    getattr(tracker, event)(100.5)
    snap = tracker.snapshot(100.6, NOW_UTC)
    assert snap["fix"] == "last_known"
    assert snap["trusted"] is False
    assert (snap["lat"], snap["lon"]) == BERN
    assert snap["fix_age_s"] == 0.6
    assert tracker.gps_state == state
    tracker.on_fix(fix(101.0))
    assert tracker.snapshot(101.0, NOW_UTC)["fix"] == "3d"
    assert tracker.gps_state == "fix"


def test_age_never_negative_when_the_clock_is_behind_the_receipt() -> None:
    tracker = LocationTracker()
    tracker.on_fix(fix(100.0))
    snap = tracker.snapshot(99.0, NOW_UTC)
    assert snap["fix_age_s"] == 0.0
    assert snap["fix"] == "3d"


# -- trusted: eCall's rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accuracy", "trusted"),
    [(0.0, True), (TRUST_LIMIT_M, True), (150.01, False), (1000.0, False), (None, False)],
)
def test_trusted_needs_known_accuracy_within_150_m(accuracy: float | None, trusted: bool) -> None:
    tracker = LocationTracker()
    tracker.on_fix(fix(100.0, accuracy=accuracy))
    assert tracker.snapshot(100.0, NOW_UTC)["trusted"] is trusted


def test_a_2d_fix_can_be_trusted() -> None:
    tracker = LocationTracker()
    tracker.on_fix(fix(100.0, mode=2, accuracy=40.0))
    snap = tracker.snapshot(100.0, NOW_UTC)
    assert snap["fix"] == "2d"
    assert snap["trusted"] is True


# -- null never 0 ----------------------------------------------------------------------------


def test_unreported_values_are_null_never_zero() -> None:
    tracker = LocationTracker()
    tracker.on_fix(fix(100.0, accuracy=None, time=None, alt=None, heading=None, speed=None))
    snap = tracker.snapshot(100.0, NOW_UTC)
    for key in ("alt_m", "heading_deg", "speed_kmh", "horizontal_accuracy_m", "fix_time"):
        assert snap[key] is None, key
    assert snap["fix_age_s"] == 0.0  # the age is known from the receipt even without a time


def test_real_zeros_stay_zero() -> None:
    tracker = LocationTracker()
    tracker.on_fix(fix(100.0, lat=0.0, lon=0.0, alt=0.0, heading=0.0, speed=0.0, accuracy=0.0))
    snap = tracker.snapshot(100.0, NOW_UTC)
    for key in ("lat", "lon", "alt_m", "heading_deg", "speed_kmh", "horizontal_accuracy_m"):
        assert snap[key] == 0.0, key
        assert snap[key] is not None


# -- recent ----------------------------------------------------------------------------------


def drive(tracker: LocationTracker, seconds: int, speed_ms: float, start_s: float = 0.0) -> float:
    """Fixes once a second driving north from Bern; returns the distance driven (m)."""
    for i in range(seconds + 1):
        t = start_s + i
        tracker.on_fix(
            fix(100.0 + t, lat=north(speed_ms * i), time=T0 + timedelta(seconds=t), speed=0.0)
        )
    return speed_ms * seconds


def assert_spaced(snap: dict[str, object], tracker_m: float, tracker_s: float) -> None:
    """Newest first, each point far enough and early enough before the next newer one."""
    recent = snap["recent"]
    assert isinstance(recent, list)
    newer_lat, newer_lon = snap["lat"], snap["lon"]
    newer_time = clock.parse_rfc3339(str(snap["fix_time"]))
    for point in recent:
        assert set(point) == {"lat", "lon", "time"}
        when = clock.parse_rfc3339(point["time"])
        assert (newer_time - when).total_seconds() >= tracker_s
        assert isinstance(newer_lat, float)
        assert isinstance(newer_lon, float)
        assert distance_m(point["lat"], point["lon"], newer_lat, newer_lon) >= tracker_m
        newer_lat, newer_lon, newer_time = point["lat"], point["lon"], when


def test_recent_on_the_motorway_newest_first_at_most_two() -> None:
    tracker = LocationTracker(recent_spacing_m=100.0, recent_spacing_s=5.0)
    drive(tracker, 120, speed_ms=33.3)  # 120 km/h for two minutes
    snap = tracker.snapshot(220.0, NOW_UTC)
    recent = snap["recent"]
    assert isinstance(recent, list)
    assert len(recent) == 2
    assert_spaced(snap, 100.0, 5.0)
    # the time floor governs at this speed: the two points are 5 s (~167 m) apart
    assert [p["time"] for p in recent] == [
        rfc3339_ms(T0 + timedelta(seconds=115)),
        rfc3339_ms(T0 + timedelta(seconds=110)),
    ]


def test_recent_in_town_is_spaced_by_distance() -> None:
    tracker = LocationTracker(recent_spacing_m=100.0, recent_spacing_s=5.0)
    drive(tracker, 60, speed_ms=8.0)  # ~30 km/h: 100 m take 12.5 s
    snap = tracker.snapshot(160.0, NOW_UTC)
    assert len(snap["recent"]) == 2  # type: ignore[arg-type]
    assert_spaced(snap, 100.0, 5.0)


def test_a_car_stopped_on_the_hard_shoulder_keeps_its_approach() -> None:
    tracker = LocationTracker()
    driven = drive(tracker, 60, speed_ms=30.0)
    stop_lat = north(driven)
    # then it stands for ten minutes, the fix jittering by a metre or two
    for i in range(1, 601):
        jitter = 2.0 * math.sin(i) / M_PER_DEG_LAT
        tracker.on_fix(fix(160.0 + i, lat=stop_lat + jitter, time=T0 + timedelta(seconds=60 + i)))
    snap = tracker.snapshot(760.0, NOW_UTC)
    recent = snap["recent"]
    assert isinstance(recent, list)
    assert len(recent) == 2
    assert_spaced(snap, DEFAULT_RECENT_SPACING_M, 5.0)
    # both points lie behind the car, south of where it stands: the direction it came from
    assert all(p["lat"] < stop_lat for p in recent)


def test_no_recent_from_the_same_spot_or_the_same_second() -> None:
    tracker = LocationTracker()
    for i in range(300):  # parked: five minutes at one spot
        tracker.on_fix(fix(100.0 + i, time=T0 + timedelta(seconds=i)))
    assert tracker.snapshot(400.0, NOW_UTC)["recent"] == []
    tracker2 = LocationTracker()
    for i in range(10):  # a burst of far-apart fixes within one second (jumps)
        tracker2.on_fix(fix(100.0 + i / 10, lat=north(500.0 * i)))
    assert tracker2.snapshot(101.0, NOW_UTC)["recent"] == []


def test_recent_time_falls_back_to_the_receipt_on_the_wall_clock() -> None:
    tracker = LocationTracker()
    tracker.on_fix(fix(100.0, time=None))
    tracker.on_fix(fix(110.0, lat=north(300.0), time=None))
    snap = tracker.snapshot(112.0, NOW_UTC)
    assert snap["recent"] == [
        {"lat": BERN[0], "lon": BERN[1], "time": rfc3339_ms(NOW_UTC - timedelta(seconds=12))}
    ]


def test_recent_is_reported_for_a_last_known_fix_too() -> None:
    tracker = LocationTracker()
    tracker.on_fix(fix(100.0))
    tracker.on_fix(fix(110.0, lat=north(300.0)))
    tracker.on_disconnected(111.0)
    snap = tracker.snapshot(500.0, NOW_UTC)
    assert snap["fix"] == "last_known"
    assert len(snap["recent"]) == 1  # type: ignore[arg-type]


def test_only_the_last_few_positions_are_kept() -> None:
    """Privacy (SPEC §6): however long the drive, the tracker holds a bounded trail."""
    tracker = LocationTracker()
    drive(tracker, 3600, speed_ms=30.0)
    assert len(tracker._trail) <= TRAIL_LENGTH
    assert len(tracker.snapshot(3700.0, NOW_UTC)["recent"]) == 2  # type: ignore[arg-type]


def test_no_repr_shows_a_position() -> None:
    text = repr(fix(lat=46.123456, lon=7.654321))
    assert "46.12" not in text
    assert "7.65" not in text


# -- invariants under any sequence of events -------------------------------------------------

events = st.lists(
    st.one_of(
        st.tuples(
            st.just("fix"),
            st.floats(0.1, 30.0),  # seconds since the previous event
            st.floats(-300.0, 300.0),  # metres north of Bern
            st.sampled_from([2, 3]),
            st.one_of(st.none(), st.floats(0.0, 400.0)),
        ),
        st.tuples(st.sampled_from(["no_fix", "disconnected"]), st.floats(0.1, 30.0)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events, st.floats(0.0, 60.0))
def test_snapshot_invariants(
    sequence: list[tuple[object, ...]],
    later: float,
) -> None:
    tracker = LocationTracker()
    now = 0.0
    for event in sequence:
        kind, dt = event[0], event[1]
        assert isinstance(dt, float)
        now += dt
        if kind == "fix":
            _, _, metres, mode, accuracy = event
            assert isinstance(metres, float)
            assert isinstance(mode, int)
            assert accuracy is None or isinstance(accuracy, float)
            when = T0 + timedelta(seconds=now)
            tracker.on_fix(fix(now, lat=north(metres), mode=mode, accuracy=accuracy, time=when))
        elif kind == "no_fix":
            tracker.on_no_fix(now)
        else:
            tracker.on_disconnected(now)
    snap = tracker.snapshot(now + later, NOW_UTC)
    assert set(snap) == KEYS
    recent = snap["recent"]
    assert isinstance(recent, list)
    assert len(recent) <= 2
    assert len(tracker._trail) <= TRAIL_LENGTH
    if snap["trusted"]:
        assert snap["fix"] in ("2d", "3d")
        accuracy = snap["horizontal_accuracy_m"]
        assert isinstance(accuracy, float)
        assert accuracy <= TRUST_LIMIT_M
    if snap["fix"] == "none":
        assert snap["lat"] is None
        assert recent == []
    else:
        age = snap["fix_age_s"]
        assert isinstance(age, float)
        assert age >= 0
        assert_spaced(snap, DEFAULT_RECENT_SPACING_M, 5.0)


# -- helpers and guards ----------------------------------------------------------------------


def test_rfc3339_ms_is_the_shared_one() -> None:
    assert rfc3339_ms is clock.rfc3339_ms
    assert rfc3339_ms(T0) == "2026-11-24T14:16:32.123Z"
    cet = datetime(2026, 11, 24, 15, 16, 32, 999999, tzinfo=UTC).astimezone()
    assert rfc3339_ms(cet) == "2026-11-24T15:16:32.999Z"


def test_distance_m() -> None:
    assert distance_m(46.0, 7.0, 47.0, 7.0) == pytest.approx(M_PER_DEG_LAT, rel=1e-4)
    assert distance_m(*BERN, *BERN) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": 1}, "mode"),
        ({"mode": 0}, "mode"),
        ({"lat": 90.5}, "latitude"),
        ({"lon": -180.5}, "longitude"),
        ({"lat": math.nan}, "latitude"),
    ],
)
def test_fix_guards_its_invariants(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fix(**kwargs)  # type: ignore[arg-type]


def test_fix_time_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone"):
        fix(time=datetime(2026, 11, 24, 14, 0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"current_s": 0.0}, "current_s"),
        ({"recent_spacing_m": -1.0}, "negative"),
        ({"recent_spacing_m": 0, "recent_spacing_s": 0}, "positive"),
    ],
)
def test_tracker_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocationTracker(**kwargs)
