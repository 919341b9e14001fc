"""The durable outbox: every message is on disk before it is published, until its PUBACK.

SQLite in the state directory, WAL mode, ``synchronous=FULL``: a committed call survives a
power cut. Messages keep their insertion order and are unique per (kind, incident_id,
sequence), so re-publishing after a restart carries the original ids. The open incident is
kept too (no personal data: id, sequence, times), so a restart does not forget it.

A database that cannot be opened or fails its integrity check is moved aside (``*.corrupt-N``)
and replaced, reported once; it never causes a crash loop.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
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


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / FILENAME
        self._db: sqlite3.Connection | None = None
        self.replaced_corrupt = 0

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> Outbox:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise OutboxError(f"cannot create state directory {self.path.parent}: {exc}") from exc
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            self._move_aside(exc)
            try:
                self._db = self._connect()
            except sqlite3.Error as again:
                raise OutboxError(f"cannot create outbox {self.path}: {again}") from again
        return self

    def _connect(self) -> sqlite3.Connection:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            result = db.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {result}")
            db.executescript(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _move_aside(self, reason: Exception) -> None:
        n = 1
        while (aside := self.path.with_name(f"{self.path.name}.corrupt-{n}")).exists():
            n += 1
        log.error("outbox %s is unusable (%s); moved aside to %s", self.path, reason, aside.name)
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        self.replaced_corrupt += 1

    def close(self) -> None:
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

    # -- messages ---------------------------------------------------------------------------

    def add(self, kind: str, incident_id: str, sequence: int, topic: str, payload: bytes) -> Entry:
        """Store a message durably (committed and synced) and return it."""
        now = time.time()
        try:
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO messages "
                "(kind, incident_id, sequence, topic, payload, created_at) VALUES (?,?,?,?,?,?)",
                (kind, incident_id, sequence, topic, payload, now),
            )
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot store {kind} {incident_id}/{sequence}: {exc}") from exc
        if cursor.rowcount == 0:  # already stored: idempotent by (kind, incident_id, sequence)
            row = self.db.execute(
                "SELECT id, created_at FROM messages WHERE kind=? AND incident_id=? AND sequence=?",
                (kind, incident_id, sequence),
            ).fetchone()
            return Entry(row[0], kind, incident_id, sequence, topic, payload, row[1])
        assert cursor.lastrowid is not None
        return Entry(cursor.lastrowid, kind, incident_id, sequence, topic, payload, now)

    def pending(self) -> list[Entry]:
        rows = self.db.execute(
            "SELECT id, kind, incident_id, sequence, topic, payload, created_at "
            "FROM messages ORDER BY id"
        ).fetchall()
        return [Entry(*row) for row in rows]

    def remove(self, entry_id: int) -> None:
        """The broker acknowledged the message (PUBACK): it is no longer ours to keep."""
        self.db.execute("DELETE FROM messages WHERE id=?", (entry_id,))

    def count(self) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(row[0])

    def oldest_created_at(self) -> float | None:
        row = self.db.execute("SELECT MIN(created_at) FROM messages").fetchone()
        return None if row[0] is None else float(row[0])

    # -- incidents --------------------------------------------------------------------------

    def save_incident(self, incident_id: str, sequence: int, opened_at: float, acked: bool) -> None:
        self.db.execute(
            "INSERT INTO incidents (incident_id, sequence, opened_at, acked) VALUES (?,?,?,?) "
            "ON CONFLICT(incident_id) DO UPDATE SET sequence=excluded.sequence, "
            "acked=excluded.acked",
            (incident_id, sequence, opened_at, int(acked)),
        )

    def close_incident(self, incident_id: str) -> None:
        self.db.execute(
            "UPDATE incidents SET closed_at=? WHERE incident_id=?", (time.time(), incident_id)
        )

    def open_incident(self) -> StoredIncident | None:
        row = self.db.execute(
            "SELECT incident_id, sequence, opened_at, acked FROM incidents "
            "WHERE closed_at IS NULL ORDER BY opened_at DESC LIMIT 1"
        ).fetchone()
        return None if row is None else StoredIncident(row[0], row[1], row[2], bool(row[3]))
