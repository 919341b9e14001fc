"""The durable outbox: every message is on disk before it is published, until its PUBACK.

SQLite in the state directory, WAL mode, ``synchronous=FULL``: a committed call survives a
power cut. Messages keep their insertion order and are unique per (kind, incident_id,
sequence), so re-publishing after a restart carries the original ids. The open incident is
kept too (no personal data: id, sequence, times), so a restart does not forget it.

Nothing here may lose a call:
- A database that cannot be opened or fails its integrity check is moved aside
  (``*.corrupt-N``) and replaced, reported once; it never causes a crash loop.
- A write that fails (full disk, I/O error, a file corrupted under us) keeps the message in
  memory, so it is still published; it is written to disk again as soon as that works.
- Limits (rows, bytes) only ever evict ``update`` messages: a request or a cancel is kept
  beyond the limit, with a warning.
- Deleted rows are overwritten (``secure_delete``): acknowledged personal data does not linger
  in the file. Messages older than the retention period are purged; ages are measured so
  that a step of the wall clock (a board without RTC set by NTP or GPS) never makes an
  undelivered message look old (:mod:`agent.core.wallclock`).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace
from types import TracebackType

from agent.core.wallclock import age_s, settle
from agent.errors import OutboxError
from agent.outbox import sqlite as sqlite_file
from agent.outbox.disk import RETRY_S, Disk
from agent.outbox.entries import Entry, Limits, StoredIncident
from agent.outbox.sqlite import FILENAME

__all__ = ["FILENAME", "RETRY_S", "Entry", "Limits", "Outbox", "StoredIncident"]


log = logging.getLogger("agent.outbox")


class Outbox(Disk):
    def open(self) -> Outbox:
        """Open the database; never refuses for a storage reason.

        A missing, unwritable, read-only or full state directory is a storage state: the
        outbox then runs from memory (``storage == "memory"``), every call is still sent, and
        the disk is tried again at most every ``RETRY_S`` (``retry_disk``), the messages held
        in memory moving onto it once it works. Only a file that SQLite reports as corrupt, or
        that fails its integrity check, is moved aside (after rescuing what can be read).
        """
        try:
            self._open_disk()
        except (OutboxError, OSError, sqlite3.Error) as exc:
            self._count("open_errors")
            self.healthy = False
            self._db = None
            log.error("outbox unavailable (%s); keeping calls in memory and retrying", exc)
        self._last_try = self._monotonic()
        if self._db is not None:
            self.purge_expired()
        return self

    def close(self) -> None:
        self.scrub()
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Outbox:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add(self, kind: str, incident_id: str, sequence: int, topic: str, payload: bytes) -> Entry:
        """Store a message durably (committed and synced) and return it.

        Never raises for a disk problem: the message is then kept in memory and still sent.
        """
        now = self._clock()
        entry = Entry(
            0,
            kind,
            incident_id,
            sequence,
            topic,
            payload,
            now.wall,
            now.trusted,
            now.boot_id,
            now.boot_s,
        )
        held = self._memory.find((kind, incident_id, sequence))
        if held is not None:  # de-duplicated by key, as the disk's UNIQUE is
            return held
        if not self._make_room(entry):
            self._count("updates_dropped")
            log.warning("outbox full: update %s/%d not stored", incident_id, sequence)
            return entry
        if self._db is None:
            self.retry_disk()
        if self._memory and self._db is not None:
            self._flush_memory()
        try:
            return self._insert(entry)
        except sqlite3.Error as exc:
            self._failed(f"storing {kind} {incident_id}/{sequence}", exc)
        return self._memory.hold(entry)

    def _make_room(self, entry: Entry) -> bool:
        """Evict the oldest updates until ``entry`` fits; False if an update does not fit."""
        room, evicted = "fits", 0
        if self._db is None:
            room, evicted = self._memory.make_room(entry)
        else:
            made = self._statement("checking limits", sqlite_file.make_room, entry, self.limits)
            room, evicted = made or ("fits", 0)
        self._count("updates_evicted", evicted)
        if room == "over":
            self._count("over_limit")
            log.warning(
                "outbox over its limits: keeping %s %s/%d anyway",
                entry.kind,
                entry.incident_id,
                entry.sequence,
            )
        return room != "refused"

    def pending(self) -> list[Entry]:
        """Every message not yet acknowledged by the broker, oldest first."""
        return [*(self._statement("reading", sqlite_file.entries) or []), *self._memory]

    def remove(self, entry: Entry) -> None:
        """The broker acknowledged this message (PUBACK): it is no longer ours to keep.

        By its key (kind, incident_id, sequence), never by row id: a file replaced after damage
        numbers its rows again, and a late PUBACK must remove only the message it acknowledges.
        """
        self._memory.remove_key(entry.key)
        if self._statement("deleting", sqlite_file.delete, entry.key) is not None:
            self._dirty = True

    def count(self) -> int:
        return (self._statement("counting", sqlite_file.count) or 0) + len(self._memory)

    def oldest_age_s(self) -> float | None:
        """How long the oldest undelivered message has waited (None: none, or no clock can
        tell); a step of the wall clock does not change it."""
        stamps = [e.stamp for e in self._memory]
        if (first := self._statement("reading", sqlite_file.oldest)) is not None:
            stamps.append(first)
        now = self._clock()
        ages = [age for stamp in stamps if (age := age_s(stamp, now)) is not None]
        return max(ages) if ages else None

    def age_s(self, entry: Entry) -> float | None:
        """How long ``entry`` has waited since it was created (None: no clock can tell)."""
        return age_s(entry.stamp, self._clock())

    def purge_expired(self) -> int:
        """Delete messages and incidents older than the retention period; returns rows gone.

        A row's age is its boot clock's within a boot, and across boots its wall time's only
        when both that and the clock now are trusted; a row no clock can date is kept (see
        :func:`agent.outbox.sqlite.purge`).
        """
        now = self._clock()
        retention = self.limits.retention_s
        if self._incident is not None and self._incident.stamp is not None:
            age = age_s(settle(self._incident.stamp, now), now)
            if age is not None and age > retention:
                self._incident = None
        if now.trusted:  # file times are wall times: personal data too, same retention
            sqlite_file.purge_quarantined(self.path, now.wall - retention)
        if self._db is None or self._memory:
            self.retry_disk()  # called periodically by the agent: the disk's retry tick too
        gone = self._statement("purging", sqlite_file.purge, now, retention)
        if gone is None:
            return 0
        if self._incident is not None:  # purged from the file too, if old enough
            self._incident = self._read_incident()
        if gone:
            self._dirty = True
            self.scrub()
            self._count("expired", gone)
            log.warning("outbox: %d message(s) older than the retention period purged", gone)
        return int(gone)

    # -- incidents --------------------------------------------------------------------------

    def save_incident(
        self,
        incident_id: str,
        sequence: int,
        opened_at: float,
        acked: bool,
        *,
        update_sequence: int = 0,
        repeat: str | None = None,
    ) -> None:
        """Keep what a restart needs of the open incident (see StoredIncident)."""
        known = self._incident
        if known is not None and known.incident_id == incident_id and known.stamp is not None:
            stamp = known.stamp
        else:
            stamp = replace(self._clock(), wall=opened_at)
        self._incident = StoredIncident(
            incident_id, sequence, opened_at, acked, update_sequence, repeat, stamp
        )
        self._write_incident(self._incident)

    def close_incident(self, incident_id: str) -> None:
        """The incident is over: forget it (it holds no personal data, only ids and times)."""
        if self._incident is not None and self._incident.incident_id == incident_id:
            self._incident = None
        self._statement("closing the incident", sqlite_file.delete_incident, incident_id)

    def open_incident(self) -> StoredIncident | None:
        """The incident open when the agent last stopped (or now), if any."""
        return self._incident
