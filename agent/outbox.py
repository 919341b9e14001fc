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
  in the file. Messages older than the retention period are purged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from agent.errors import OutboxError

log = logging.getLogger("agent.outbox")

FILENAME = "outbox.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (kind, incident_id, sequence)
);
CREATE TABLE IF NOT EXISTS incidents (
    incident_id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    closed_at REAL
);
"""
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


class Outbox:
    def __init__(
        self,
        directory: Path,
        limits: Limits | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(directory) / FILENAME
        self.limits = limits or Limits()
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._memory: dict[int, Entry] = {}  # entries the disk refused, by negative id
        self._next_memory_id = -1
        self.counters: dict[str, int] = {}
        self.healthy = True
        self._dirty = False  # rows deleted since the last WAL checkpoint
        self._monotonic = time.monotonic
        self._last_try = float("-inf")

    def _count(self, name: str, n: int = 1) -> None:
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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise OutboxError(f"cannot create state directory {self.path.parent}: {exc}") from exc
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
            rescued = self._salvage()
            self._move_aside(exc)
            try:
                self._db = self._connect()
            except sqlite3.Error as again:
                raise OutboxError(f"cannot create outbox {self.path}: {again}") from again
            for entry in rescued:
                self._insert(entry)
            if rescued:
                self._count("salvaged", len(rescued))
                log.warning("outbox: %d message(s) rescued from the damaged file", len(rescued))
        except OSError as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

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

    def _connect(self) -> sqlite3.Connection:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA secure_delete=ON")
            result = db.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {result}")
            db.executescript(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        for suffix in ("-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists():
                os.chmod(side, 0o600)
        return db

    def _salvage(self) -> list[Entry]:
        """Read what can still be read from a damaged database, read-only."""
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error:
            return []
        try:
            rows = db.execute(
                "SELECT id, kind, incident_id, sequence, topic, payload, created_at "
                "FROM messages ORDER BY id"
            ).fetchall()
            return [Entry(*row) for row in rows]
        except (sqlite3.Error, TypeError):
            return []
        finally:
            db.close()

    def _move_aside(self, reason: Exception) -> None:
        n = 1
        while (aside := self.path.with_name(f"{self.path.name}.corrupt-{n}")).exists():
            n += 1
        log.error("outbox %s is unusable (%s); moved aside to %s", self.path, reason, aside.name)
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        self._count("replaced_corrupt")

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
        if isinstance(exc, sqlite3.DatabaseError) and _is_corruption(exc):
            rescued = [e for e in self._salvage() if e.id > 0]
            self._drop_connection()  # never close(): its scrub would fail and land here again
            try:
                self._move_aside(exc)
                self._db = self._connect()
            except (sqlite3.Error, OSError) as again:
                log.error("cannot replace the outbox: %s", again)
                self._drop_connection()
            for entry in rescued:  # keep them in memory; _flush_memory puts them on disk
                self._memory[self._next_memory_id] = replace(entry, id=self._next_memory_id)
                self._next_memory_id -= 1

    def _drop_connection(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None

    def _flush_memory(self) -> None:
        """Try to put entries held in memory on disk, in order."""
        for memory_id, entry in sorted(self._memory.items(), reverse=True):
            try:
                self._insert(entry)
            except sqlite3.Error:
                return
            del self._memory[memory_id]
            log.info(
                "outbox: %s %s/%d written to disk", entry.kind, entry.incident_id, entry.sequence
            )
        self.healthy = True

    # -- messages ---------------------------------------------------------------------------

    def _insert(self, entry: Entry) -> Entry:
        if self._db is None:
            raise sqlite3.OperationalError("outbox is not open")
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO messages "
            "(kind, incident_id, sequence, topic, payload, created_at) VALUES (?,?,?,?,?,?)",
            (
                entry.kind,
                entry.incident_id,
                entry.sequence,
                entry.topic,
                entry.payload,
                entry.created_at,
            ),
        )
        if cursor.rowcount == 0:  # already stored: idempotent by (kind, incident_id, sequence)
            row = self._db.execute(
                "SELECT id, created_at FROM messages WHERE kind=? AND incident_id=? AND sequence=?",
                (entry.kind, entry.incident_id, entry.sequence),
            ).fetchone()
            return replace(entry, id=row[0], created_at=row[1])
        assert cursor.lastrowid is not None
        return replace(entry, id=cursor.lastrowid)

    def add(self, kind: str, incident_id: str, sequence: int, topic: str, payload: bytes) -> Entry:
        """Store a message durably (committed and synced) and return it.

        Never raises for a disk problem: the message is then kept in memory and still sent.
        """
        entry = Entry(0, kind, incident_id, sequence, topic, payload, self._clock())
        for held in self._memory.values():  # de-duplicated by key, as the disk's UNIQUE is
            if (held.kind, held.incident_id, held.sequence) == (kind, incident_id, sequence):
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
        entry = replace(entry, id=self._next_memory_id)
        self._next_memory_id -= 1
        self._memory[entry.id] = entry
        return entry

    def _make_room_in_memory(self, entry: Entry) -> bool:
        """The same bounds as on disk for what memory holds: only updates are evicted."""
        size = sum(len(e.payload) for e in self._memory.values())
        while (
            len(self._memory) + 1 > self.limits.max_rows
            or size + len(entry.payload) > self.limits.max_bytes
        ):
            updates = [k for k, e in self._memory.items() if e.kind == EVICTABLE]
            if not updates:
                if entry.kind == EVICTABLE:
                    return False
                self._count("over_limit")
                return True
            size -= len(self._memory.pop(max(updates)).payload)  # the oldest: ids count down
            self._count("updates_evicted")
        return True

    def _usage(self) -> tuple[int, int]:
        row = self.db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages")
        rows, size = row.fetchone()
        return int(rows), int(size)

    def _make_room(self, entry: Entry) -> bool:
        """Evict the oldest updates until ``entry`` fits; False if an update does not fit."""
        if self._db is None:
            return self._make_room_in_memory(entry)
        try:
            rows, size = self._usage()
            while rows + 1 > self.limits.max_rows or size + len(entry.payload) > (
                self.limits.max_bytes
            ):
                victim = self.db.execute(
                    "SELECT id, LENGTH(payload) FROM messages WHERE kind=? ORDER BY id LIMIT 1",
                    (EVICTABLE,),
                ).fetchone()
                if victim is None:
                    if entry.kind == EVICTABLE:
                        return False
                    self._count("over_limit")
                    log.warning(
                        "outbox over its limits: keeping %s %s/%d anyway",
                        entry.kind,
                        entry.incident_id,
                        entry.sequence,
                    )
                    return True
                self.db.execute("DELETE FROM messages WHERE id=?", (victim[0],))
                self._count("updates_evicted")
                rows, size = rows - 1, size - int(victim[1])
        except sqlite3.Error as exc:
            self._failed("checking limits", exc)
        return True

    def pending(self) -> list[Entry]:
        """Every message not yet acknowledged by the broker, oldest first."""
        entries: list[Entry] = []
        if self._db is not None:
            try:
                rows = self._db.execute(
                    "SELECT id, kind, incident_id, sequence, topic, payload, created_at "
                    "FROM messages ORDER BY id"
                ).fetchall()
                entries = [Entry(*row) for row in rows]
            except sqlite3.Error as exc:
                self._failed("reading", exc)
        entries += sorted(self._memory.values(), key=lambda e: -e.id)
        return entries

    def remove(self, entry_id: int) -> None:
        """The broker acknowledged the message (PUBACK): it is no longer ours to keep."""
        if entry_id < 0:
            self._memory.pop(entry_id, None)
            return
        if self._db is None:
            return
        try:
            self._db.execute("DELETE FROM messages WHERE id=?", (entry_id,))
            self._dirty = True
        except sqlite3.Error as exc:
            self._failed("deleting", exc)

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
        disk = 0
        if self._db is not None:
            try:
                disk = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
            except sqlite3.Error as exc:
                self._failed("counting", exc)
        return disk + len(self._memory)

    def oldest_created_at(self) -> float | None:
        times = [e.created_at for e in self._memory.values()]
        if self._db is not None:
            try:
                row = self._db.execute("SELECT MIN(created_at) FROM messages").fetchone()
                if row[0] is not None:
                    times.append(float(row[0]))
            except sqlite3.Error as exc:
                self._failed("reading", exc)
        return min(times) if times else None

    def purge_expired(self) -> int:
        """Delete messages and incidents older than the retention period; returns rows gone."""
        cutoff = self._clock() - self.limits.retention_s
        if self._db is None or self._memory:
            self.retry_disk()  # called periodically by the agent: the disk's retry tick too
        if self._db is None:
            return 0
        try:
            gone = self.db.execute("DELETE FROM messages WHERE created_at < ?", (cutoff,)).rowcount
            self.db.execute(
                "DELETE FROM incidents WHERE opened_at < ? OR closed_at < ?", (cutoff, cutoff)
            )
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

    def save_incident(self, incident_id: str, sequence: int, opened_at: float, acked: bool) -> None:
        try:
            self.db.execute(
                "INSERT INTO incidents (incident_id, sequence, opened_at, acked) VALUES (?,?,?,?) "
                "ON CONFLICT(incident_id) DO UPDATE SET sequence=excluded.sequence, "
                "acked=excluded.acked",
                (incident_id, sequence, opened_at, int(acked)),
            )
        except (sqlite3.Error, OutboxError) as exc:
            self._count("write_errors")
            log.error("outbox: cannot save incident state: %s", exc)

    def close_incident(self, incident_id: str) -> None:
        """The incident is over: forget it (it holds no personal data, only ids and times)."""
        try:
            self.db.execute("DELETE FROM incidents WHERE incident_id=?", (incident_id,))
        except (sqlite3.Error, OutboxError) as exc:
            self._count("write_errors")
            log.error("outbox: cannot close incident: %s", exc)

    def open_incident(self) -> StoredIncident | None:
        try:
            row = self.db.execute(
                "SELECT incident_id, sequence, opened_at, acked FROM incidents "
                "WHERE closed_at IS NULL ORDER BY opened_at DESC LIMIT 1"
            ).fetchone()
        except sqlite3.Error as exc:
            self._failed("reading incidents", exc)
            return None
        return None if row is None else StoredIncident(row[0], row[1], row[2], bool(row[3]))


RETRY_S = 10.0  # how often a failed disk is tried again

# SQLITE_CORRUPT and SQLITE_NOTADB: the file is damaged. "Full", "read-only" and "I/O error"
# are storage states and never make the outbox move a file aside.
_CORRUPTION_CODES = frozenset({11, 26})


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPTION_CODES
    return not isinstance(exc, sqlite3.OperationalError)  # our integrity-check failure
