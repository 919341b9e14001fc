"""The wall clock on a board without an RTC, and the age of what the outbox keeps (pure)."""

from __future__ import annotations

import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import BUILD_DATE
from agent.core.wallclock import STEP_S, Stamp, WallClock, age_s, settle

FLOOR = datetime(2026, 11, 24, tzinfo=UTC)
TRUE = datetime(2026, 12, 2, 14, 0, 0, tzinfo=UTC)
Y2001 = datetime(2001, 1, 1, tzinfo=UTC)
YEARS_10 = 10 * 365.25 * 86400


def test_a_system_clock_before_the_build_date_is_not_trusted() -> None:
    clock = WallClock(FLOOR)
    assert clock.now(TRUE, 100.0, None).source == "system"
    assert clock.now(Y2001, 100.0, None).source == "unsynced"
    assert clock.now(Y2001, 100.0, None).utc == Y2001
    assert not clock.now(Y2001, 100.0, None).trusted


def test_the_synchronised_signal_counts_where_the_system_has_one() -> None:
    clock = WallClock(FLOOR)
    assert clock.now(TRUE, 100.0, True).source == "system"
    assert clock.now(TRUE, 100.0, False).source == "unsynced"  # timesyncd runs, not synced yet
    assert clock.now(Y2001, 100.0, True).source == "unsynced"  # the floor still holds


def test_gps_time_is_carried_on_the_monotonic_clock_while_the_system_clock_is_wrong() -> None:
    clock = WallClock(FLOOR)
    assert clock.on_gps_time(TRUE, 100.0)
    reading = clock.now(Y2001, 160.5, None)
    assert reading.source == "gps"
    assert reading.utc == TRUE + timedelta(seconds=60.5)
    # the system clock's own steps do not move it
    assert clock.now(Y2001 + timedelta(days=3650), 160.5, None).utc == reading.utc
    # and a trusted system clock wins again
    assert clock.now(TRUE + timedelta(seconds=61), 161.0, None).source == "system"


def test_one_late_or_wrong_tpv_does_not_move_the_gps_clock() -> None:
    clock = WallClock(FLOOR)
    for n in range(5):
        clock.on_gps_time(TRUE + timedelta(seconds=n), 100.0 + n + 0.1)
    clock.on_gps_time(TRUE + timedelta(hours=5), 106.0)
    error = clock.now(Y2001, 110.1, None).utc - (TRUE + timedelta(seconds=10))
    assert abs(error.total_seconds()) < 0.01


def test_gps_time_before_the_build_date_is_refused() -> None:
    clock = WallClock(FLOOR)
    assert not clock.on_gps_time(datetime(2007, 4, 8, tzinfo=UTC), 100.0)  # a week rollover
    assert not clock.has_gps
    assert clock.now(Y2001, 100.0, None).source == "unsynced"


def test_steps_of_the_system_clock_are_seen_slews_are_not() -> None:
    clock = WallClock(FLOOR)
    assert clock.step(Y2001, 10.0) is None
    assert clock.step(Y2001 + timedelta(seconds=5 + STEP_S / 2), 15.0) is None
    step = clock.step(Y2001 + timedelta(seconds=YEARS_10 + 6 + 5), 20.0)
    assert step is not None and abs(step - YEARS_10) < STEP_S


def stamp(wall: float, trusted: bool, boot: str, boot_s: float) -> Stamp:
    return Stamp(wall, trusted, boot, boot_s)


def test_within_a_boot_age_is_the_boot_clock_whatever_the_wall_clock_did() -> None:
    then = stamp(Y2001.timestamp(), False, "b1", 50.0)
    now = stamp(Y2001.timestamp() + YEARS_10, False, "b1", 80.0)
    assert age_s(then, now) == 30.0
    trusted_then = stamp(TRUE.timestamp(), True, "b1", 50.0)
    assert age_s(trusted_then, now) == 30.0  # a clock set back by years: still 30 s


def test_across_boots_only_two_trusted_wall_clocks_tell_an_age() -> None:
    then = stamp(TRUE.timestamp(), True, "b1", 50.0)
    assert age_s(then, stamp(TRUE.timestamp() + 3600, True, "b2", 5.0)) == 3600
    assert age_s(then, stamp(TRUE.timestamp() + YEARS_10, False, "b2", 5.0)) is None
    untrusted = stamp(Y2001.timestamp(), False, "b1", 50.0)
    assert age_s(untrusted, stamp(TRUE.timestamp(), True, "b2", 5.0)) is None
    assert age_s(stamp(1.0, False, "", 0.0), stamp(2.0, False, "", 1.0)) is None


def test_settle_takes_an_unknown_age_into_this_boot_and_dates_it_once_trusted() -> None:
    old = stamp(Y2001.timestamp(), False, "b1", 50.0)
    now = stamp(Y2001.timestamp() + 7, False, "b2", 10.0)
    adopted = settle(old, now)
    assert (adopted.boot_id, adopted.boot_s, adopted.trusted) == ("b2", 10.0, False)
    assert age_s(adopted, now) == 0.0
    later = stamp(TRUE.timestamp(), True, "b2", 40.0)
    dated = settle(adopted, later)
    assert dated.trusted and dated.wall == TRUE.timestamp() - 30.0
    assert age_s(dated, stamp(TRUE.timestamp() + 100, True, "b3", 1.0)) == 130.0
    trusted = stamp(TRUE.timestamp(), True, "b1", 50.0)
    assert settle(trusted, now) == trusted  # its wall time will tell, once trusted again


@given(
    created=st.floats(0, 1e6),
    jump=st.floats(-1e10, 1e10),
    elapsed=st.floats(0, 1e6),
    trusted=st.booleans(),
    trusted_now=st.booleans(),
)
def test_no_step_of_the_wall_clock_makes_a_row_of_this_boot_older(
    created: float, jump: float, elapsed: float, trusted: bool, trusted_now: bool
) -> None:
    wall = TRUE.timestamp()
    then = stamp(wall, trusted, "b", created)
    now = stamp(wall + elapsed + jump, trusted_now, "b", created + elapsed)
    kept = settle(then, now)
    age = age_s(kept, now)
    assert age is not None and age <= elapsed + 1e-6


def test_the_build_date_is_a_date_not_after_the_newest_commit() -> None:
    built = date.fromisoformat(BUILD_DATE)
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%cs"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    assert built <= date.fromisoformat(out)
