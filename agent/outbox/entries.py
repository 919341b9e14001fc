"""What the outbox holds: messages (one per kind, incident and sequence), the open incident, and
its limits."""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.wallclock import Stamp

EVICTABLE = "update"


@dataclass(frozen=True, slots=True)
class Entry:
    id: int  # negative: held in memory because the disk refused it
    kind: str  # "request" | "cancel" | "update"
    incident_id: str
    sequence: int
    topic: str
    payload: bytes
    created_at: float  # unix time, from the agent's wall clock (see agent.core.wallclock)
    trusted: bool = False  # created_at was read from a trusted clock (system or GPS)
    boot_id: str = ""  # the boot it was stored in, and the boot clock then: its age in that boot
    boot_s: float = 0.0

    @property
    def stamp(self) -> Stamp:
        return Stamp(self.created_at, self.trusted, self.boot_id, self.boot_s)

    @property
    def key(self) -> tuple[str, str, int]:
        """What identifies a message, on disk, in memory and at the backend."""
        return self.kind, self.incident_id, self.sequence


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
    stamp: Stamp | None = None  # when it was first stored: its age (None: a first-release row)


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int = 1000
    max_bytes: int = 8 * 1024 * 1024
    retention_s: float = 7 * 86400
