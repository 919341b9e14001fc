"""Time conventions of every payload: RFC 3339 UTC with milliseconds, ISO 8601 dates."""

from __future__ import annotations

from datetime import UTC, date, datetime


def rfc3339_ms(moment: datetime) -> str:
    """``2026-11-24T14:16:32.123Z``; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def iso_date(day: date | None) -> str | None:
    return None if day is None else day.isoformat()


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (``Z`` or offset) into an aware UTC datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without offset: {text!r}")
    return moment.astimezone(UTC)
