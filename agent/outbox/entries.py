"""What the outbox holds: messages (one per kind, incident and sequence), the open incident, and
its limits."""

from __future__ import annotations

from dataclasses import dataclass

EVICTABLE = "update"


@dataclass(frozen=True, slots=True)
class Entry:
    id: int  # negative: held in memory because the disk refused it
    kind: str  # "request" | "cancel" | "update"
    incident_id: str
    sequence: int
    topic: str
    payload: bytes
    created_at: float  # unix time


@dataclass(frozen=True, slots=True)
class StoredIncident:
    """What a restart needs of the open incident (SPEC §5), with no position and no personal
    data (SPEC §6): ``repeat`` is what the last request's repeat is rebuilt from until the
    backend acknowledges it (JSON: its created_at, held_ms and source), None once it has."""

    incident_id: str
    sequence: int
    opened_at: float  # unix time
    acked: bool
    update_sequence: int = 0  # the last update's sequence number
    repeat: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int = 1000
    max_bytes: int = 8 * 1024 * 1024
    retention_s: float = 7 * 86400
