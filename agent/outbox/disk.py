"""The outbox's file and what happens when it fails: opened (a damaged one rescued and
replaced), checked while running, given up for memory when it refuses writes (full,
read-only, I/O errors) and taken back when it works again. Every statement goes through
:meth:`Disk._statement`, so a failure is handled in one place and never escapes.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from agent.core.wallclock import Stamp
from agent.errors import OutboxError
from agent.outbox import sqlite as sqlite_file
from agent.outbox.entries import Entry, Limits, StoredIncident
from agent.outbox.memory import MemoryQueue
from agent.outbox.sqlite import FILENAME
from agent.wallclock import system_stamp

P = ParamSpec("P")
T = TypeVar("T")

RETRY_S = 10.0  # how often a failed disk is tried again

log = logging.getLogger("agent.outbox")


class Disk:
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

    def _insert(self, entry: Entry) -> Entry:
        if self._db is None:
            raise sqlite3.OperationalError("outbox is not open")
        return sqlite_file.insert(self._db, entry)

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
            held = self._statement("reading", sqlite_file.entries) or []  # the file is open
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
        if self._dirty and self._statement("scrubbing", sqlite_file.checkpoint):
            self._dirty = False

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
