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
    incident_id: str
    sequence: int
    opened_at: float  # unix time
    acked: bool


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int = 1000
    max_bytes: int = 8 * 1024 * 1024
    retention_s: float = 7 * 86400
