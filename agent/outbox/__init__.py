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

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Concatenate, ParamSpec, TypeVar

from agent.core.wallclock import Stamp, age_s, settle
from agent.errors import OutboxError
from agent.outbox import sqlite as sqlite_file
from agent.outbox.entries import Entry, Limits, StoredIncident
from agent.outbox.memory import MemoryQueue
from agent.outbox.sqlite import FILENAME
from agent.wallclock import system_stamp

__all__ = ["FILENAME", "RETRY_S", "Entry", "Limits", "Outbox", "StoredIncident"]

P = ParamSpec("P")
T = TypeVar("T")

RETRY_S = 10.0  # how often a failed disk is tried again

log = logging.getLogger("agent.outbox")


class Outbox:
    def __init__(
        self,
        directory: Path,
        limits: Limits | None = None,
        *,
        clock: Callable[[], Stamp] = system_stamp,
    ) -> None:
        self.path = Path(directory) / FILENAME
        self.limits = limits or Limits()
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._memory = MemoryQueue(self.limits)  # what the disk refused
        self.counters: dict[str, int] = {}
        self.healthy = True
        self._dirty = False  # rows deleted since the last WAL checkpoint
        self._monotonic = time.monotonic
        self._last_try = float("-inf")
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._incident: StoredIncident | None = None  # the open incident, whatever the disk does
        self._on_disk: set[tuple[str, str, int]] = set()  # keys the file held when it failed

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            self.counters[name] = self.counters.get(name, 0) + n

    # -- lifecycle --------------------------------------------------------------------------

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

    def _open_disk(self) -> None:
        opened = sqlite_file.open_file(self.path)
        self._db = opened.db
        if opened.damaged is not None:
            self._count("replaced_corrupt")
            for entry in opened.rescued:
                self._insert(entry)
            for incident in opened.incidents:
                self._write_incident(incident)
            self._count("salvaged", len(opened.rescued))
        self._identity = sqlite_file.identity(self.path)
        if self._incident is not None:  # kept in memory while the disk refused it
            self._write_incident(self._incident)
        elif (stored := self._read_incident()) is not None:
            self._incident = stored

    @property
    def storage(self) -> str:
        """``"disk"`` while the database works, ``"memory"`` while calls are held in memory."""
        return "disk" if self._db is not None and not self._memory else "memory"

    def retry_disk(self) -> bool:
        """Try the disk again (at most every RETRY_S) and move what memory holds onto it."""
        now = self._monotonic()
        if now - self._last_try < RETRY_S:
            return self._db is not None
        self._last_try = now
        if self._db is None:
            try:
                self._open_disk()
            except (OutboxError, OSError, sqlite3.Error):
                return False
            log.info("outbox: the disk works again")
        if self._memory:
            self._flush_memory()
        return self._db is not None and not self._memory

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

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    def _failed(self, what: str, exc: sqlite3.Error | OutboxError | OSError) -> None:
        """A write or read failed: report it once per episode; a corrupt file is replaced."""
        self._count("write_errors")
        if self.healthy:
            log.error("outbox %s failed: %s; keeping messages in memory", what, exc)
        self.healthy = False
        if isinstance(exc, sqlite3.DatabaseError) and sqlite_file.is_corruption(exc):
            rescued, _ = sqlite_file.salvage(self.path)
            self._drop_connection()  # never close(): its scrub would fail and land here again
            with contextlib.suppress(OSError):
                sqlite_file.move_aside(self.path, exc)
                self._count("replaced_corrupt")
            self._rehome(rescued)
        elif self._db is not None:
            self._degrade()

    def _degrade(self) -> None:
        """The disk refuses (full, read-only, I/O error): carry on from memory, all of it.

        Every row the file holds moves into memory, so nothing on disk waits unseen for the
        disk to come back; the disk is retried every RETRY_S. Which keys the file holds is
        remembered, so that what was delivered meanwhile is deleted from it on the way back.
        """
        assert self._db is not None
        try:
            rows = sqlite_file.entries(self._db)
        except sqlite3.Error:
            rows, _ = sqlite_file.salvage(self.path)
        self._drop_connection()  # never close(): its scrub would fail and land here again
        self._last_try = self._monotonic()
        self._memory.hold_first(rows)
        self._on_disk = {e.key for e in rows}

    def _rehome(self, rows: list[Entry]) -> None:
        """Start a new file with ``rows`` (oldest first) and what memory holds, in that order.

        Until the new file takes them, they wait in memory; the open incident goes along.
        """
        self._memory.hold_first(rows)
        try:
            self._open_disk()
        except (OutboxError, OSError, sqlite3.Error) as again:
            log.error("cannot start a new outbox: %s", again)
            self._drop_connection()
            return
        self._flush_memory()

    def _drop_connection(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None

    def _flush_memory(self) -> None:
        """Try to put entries held in memory on disk, in order."""
        held = {e.key for e in self._memory}
        for gone in self._on_disk - held:  # delivered while the disk refused: not again
            try:
                sqlite_file.delete(self.db, gone)
            except sqlite3.Error:
                return
            self._dirty = True
        self._on_disk = set()
        for entry in list(self._memory):
            try:
                self._insert(entry)
            except sqlite3.Error:
                return
            self._memory.remove(entry.id)
            log.info(
                "outbox: %s %s/%d written to disk", entry.kind, entry.incident_id, entry.sequence
            )
        self.healthy = True

    # -- messages ---------------------------------------------------------------------------

    def _insert(self, entry: Entry) -> Entry:
        if self._db is None:
            raise sqlite3.OperationalError("outbox is not open")
        return sqlite_file.insert(self._db, entry)

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

    def check(self) -> bool:
        """Periodic maintenance: is the file at our path still the one we write, and sound?

        A state directory removed or replaced under us leaves writes going into an unlinked
        file, gone at the next start: every message moves into a new file. Damage is looked for
        with quick_check on a fresh read-only connection (this one's cache can hide it); a
        damaged file is replaced, its readable rows rescued. True when the disk is fine.
        """
        if self._db is None:
            self.retry_disk()
            return False
        if sqlite_file.identity(self.path) != self._identity:
            self._count("vanished")
            log.error("outbox %s vanished; moving its messages to a new file", self.path)
            held = [e for e in self.pending() if e.id > 0]  # still readable: the file is open
            self._drop_connection()
            self._rehome(held)
            return False
        problem = sqlite_file.quick_check(self.path)
        if problem is None:
            return True
        self._failed("checking", sqlite3.DatabaseError(f"integrity check failed: {problem}"))
        return False

    def scrub(self) -> None:
        """Copy the WAL back and truncate it: deleted personal data must not linger there.

        ``secure_delete`` zeroes the page in its new version, but the old version stays in the
        write-ahead log until a checkpoint. The uplink calls this right after handling a PUBACK
        (not inside it, which would delay the delivery by a sync); a no-op when nothing was
        deleted since the last time.
        """
        if not self._dirty or self._db is None:
            return
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._dirty = False
        except sqlite3.Error as exc:
            self._failed("scrubbing", exc)

    def count(self) -> int:
        return (self._statement("counting", sqlite_file.count) or 0) + len(self._memory)

    def oldest_age_s(self) -> float | None:
        """How long the oldest undelivered message has waited (None: none, or no clock can
        tell); a step of the wall clock does not change it."""
        stamps = [e.stamp for e in self._memory]
        if self._db is not None:
            try:
                first = sqlite_file.oldest(self._db)
            except sqlite3.Error as exc:
                self._failed("reading", exc)
            else:
                stamps += [] if first is None else [first]
        now = self._clock()
        ages = [age for stamp in stamps if (age := age_s(stamp, now)) is not None]
        return max(ages) if ages else None

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
        if self._db is None:
            return 0
        try:
            gone = sqlite_file.purge(self.db, now, retention)
            self._incident = self._read_incident() if self._incident is not None else None
        except sqlite3.Error as exc:
            self._failed("purging", exc)
            return 0
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

    def _write_incident(self, incident: StoredIncident) -> None:
        self._statement("saving the incident", sqlite_file.write_incident, incident)

    def _read_incident(self) -> StoredIncident | None:
        return self._statement("reading incidents", sqlite_file.read_incident)

    def _statement(
        self,
        what: str,
        statement: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T | None:
        """``statement(db, *args)`` on the open file; None without one or when it fails (the
        failure reported and handled once, by :meth:`_failed`)."""
        if self._db is None:
            return None
        try:
            return statement(self._db, *args, **kwargs)
        except sqlite3.Error as exc:
            self._failed(what, exc)
            return None
