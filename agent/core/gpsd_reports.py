"""gpsd's JSON reports, decoded: one line in, a :class:`~agent.core.location.Fix` out.

Pure: no I/O, no clock (the receive time is passed in). :func:`decode_report` turns one line
into a JSON object with a string ``class``; :func:`fix_from_tpv` turns a TPV report into a fix,
"no fix", or :class:`BadReport`, whose ``kind`` is the counter the adapter
(:mod:`agent.inputs.gpsd`) counts it under. Nothing here logs, and a report's values (a
position) never reach an exception's message: only member names do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from agent.core.location import Fix
from agent.errors import GpsError

__all__ = ["BadReport", "decode_report", "fix_from_tpv", "horizontal_accuracy"]

MS_TO_KMH: Final = 3.6


class BadReport(GpsError):
    """One report from gpsd that cannot be used; ``kind`` is the counter it goes to."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def decode_report(line: bytes) -> dict[str, object]:
    """One line from gpsd as a JSON object with a string ``class``; else :class:`BadReport`."""
    try:
        value = json.loads(line)
    except RecursionError:
        raise BadReport("bad_json", "nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise BadReport("bad_json", f"not UTF-8 at byte {exc.start}") from None
    except ValueError as exc:  # json.JSONDecodeError; its message has positions, no content
        raise BadReport("bad_json", str(exc)) from None
    if not isinstance(value, dict):
        raise BadReport("bad_json", f"a JSON {type(value).__name__}, not an object")
    if not isinstance(value.get("class"), str):
        raise BadReport("bad_report", "no string 'class' member")
    return value


def _number(report: Mapping[str, object], key: str) -> float | None:
    """A numeric member, ``None`` when absent or null (gpsd omits what it does not know).

    Anything else that is not a finite number (a string, a bool, NaN or Infinity, which
    gpsd never sends) makes the whole report :class:`BadReport` ``bad_tpv``: the next TPV is
    at most a second away, a half-trusted one is not worth it.
    """
    value = report.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadReport("bad_tpv", f"{key!r} is a {type(value).__name__}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise BadReport("bad_tpv", f"{key!r} is not finite")
    return number


def _non_negative(report: Mapping[str, object], key: str) -> float | None:
    number = _number(report, key)
    return number if number is not None and number >= 0 else None


def horizontal_accuracy(report: Mapping[str, object]) -> float | None:
    """The fix's 95 % horizontal error radius in metres, from gpsd's error estimates.

    gpsd has two: ``eph`` (horizontal position error) and ``epx``/``epy`` (longitude and
    latitude error). Without receiver figures it derives them from the DOPs with 95 % UEREs:
    ``eph = HDOP * 19 m`` and ``epx``/``epy = XDOP``/``YDOP * 15 m``; receivers that report
    their own estimate (u-blox ``hAcc``, Garmin, SiRF) put it in ``eph`` as is, often at 1 sigma
    (about 68 %), which gpsd documents as "certainty unknown". Per-axis 95 % errors combine
    to ``hypot(epx, epy)``: for a circular error that is a slightly conservative 95 % radius
    (about 98 %), and with DOP-based figures it equals ``HDOP * 15 m``. We take the larger of
    the two estimates that are present, so the trust decision (≤ 150 m) is never made on the
    more optimistic figure; ``None`` when gpsd gave neither.
    """
    eph = _non_negative(report, "eph")
    epx = _non_negative(report, "epx")
    epy = _non_negative(report, "epy")
    per_axis = math.hypot(epx, epy) if epx is not None and epy is not None else None
    candidates = [e for e in (eph, per_axis) if e is not None]
    return round(max(candidates), 2) if candidates else None


def _time(report: Mapping[str, object]) -> datetime | None:
    value = report.get("time")
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadReport("bad_time", f"'time' is a {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadReport("bad_time", "'time' is not ISO 8601") from None
    if moment.tzinfo is None:  # gpsd's time is UTC by definition
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def fix_from_tpv(report: Mapping[str, object], received: float) -> tuple[Fix | None, str | None]:
    """Decode a TPV report: ``(fix, None)``, ``(None, None)`` for no fix, or raise.

    The second element names a tolerated defect (``"bad_time"``: the fix is kept without its
    time). Raises :class:`BadReport` ``incomplete_tpv`` for a mode 2/3 report without a
    position (gpsd emits those mid-cycle) and ``bad_tpv`` for malformed ones.
    """
    mode = report.get("mode")
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 3:
        raise BadReport("bad_tpv", "'mode' missing or not 0-3")
    if mode < 2:
        return None, None
    lat, lon = _number(report, "lat"), _number(report, "lon")
    if lat is None or lon is None:
        raise BadReport("incomplete_tpv", "no lat/lon")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise BadReport("bad_tpv", "lat/lon out of range")
    # Altitude only for a 3D fix: in 2D the receiver assumed it. Prefer altHAE (gpsd >= 3.20),
    # else the legacy 'alt' (older gpsd); both are None when absent, never 0.
    alt = None
    if mode == 3:
        alt = _number(report, "altHAE")
        if alt is None:
            alt = _number(report, "alt")
    track = _number(report, "track")
    speed = _non_negative(report, "speed")
    accuracy = horizontal_accuracy(report)
    defect = None
    try:
        moment = _time(report)
    except BadReport as exc:
        moment, defect = None, exc.kind
    try:
        fix = Fix(
            time=moment,
            lat=lat,
            lon=lon,
            alt_m=round(alt, 2) if alt is not None else None,
            heading_deg=round(track % 360.0, 2) if track is not None else None,
            speed_kmh=round(speed * MS_TO_KMH, 2) if speed is not None else None,
            horizontal_accuracy_m=accuracy,
            mode=mode,
            received=received,
        )
    except ValueError as exc:  # Fix guards its own invariants; nothing may get past them
        raise BadReport("bad_tpv", str(exc)) from None
    return fix, defect
