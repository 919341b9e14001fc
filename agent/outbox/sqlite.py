"""The outbox's SQLite file: opened durable and private, checked, and when SQLite says it is
damaged, read for what can be rescued and moved aside."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.core.wallclock import Stamp, age_s, settle
from agent.errors import OutboxError
from agent.outbox.entries import EVICTABLE, Entry, Limits, StoredIncident

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
    trusted INTEGER NOT NULL DEFAULT 0,
    boot_id TEXT NOT NULL DEFAULT '',
    boot_s REAL NOT NULL DEFAULT 0,
    UNIQUE (kind, incident_id, sequence)
);
CREATE TABLE IF NOT EXISTS incidents (
    incident_id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    closed_at REAL,
    update_sequence INTEGER NOT NULL DEFAULT 0,
    repeat TEXT,
    trusted INTEGER NOT NULL DEFAULT 0,
    boot_id TEXT NOT NULL DEFAULT '',
    boot_s REAL NOT NULL DEFAULT 0
);
"""
# columns added since the first release: a file written by it gets them on open
# A first-release row's time was the system clock's, the only one it had: taken as trusted
# (as that release did), with no boot id (agent.core.wallclock.age_s then goes by wall time).
_STAMP = (
    ("trusted", "INTEGER NOT NULL DEFAULT 1"),
    ("boot_id", "TEXT NOT NULL DEFAULT ''"),
    ("boot_s", "REAL NOT NULL DEFAULT 0"),
)
_ADDED = (
    ("incidents", "update_sequence", "INTEGER NOT NULL DEFAULT 0"),
    ("incidents", "repeat", "TEXT"),
    *(("messages", column, kind) for column, kind in _STAMP),
    *(("incidents", column, kind) for column, kind in _STAMP),
)
INCIDENT_COLUMNS = (
    "incident_id, sequence, opened_at, acked, update_sequence, repeat, trusted, boot_id, boot_s"
)


@dataclass(frozen=True, slots=True)
class Opened:
    db: sqlite3.Connection
    damaged: Exception | None = None  # the file was damaged, moved aside and replaced
    rescued: list[Entry] = field(default_factory=list)  # what could be read from it
    incidents: list[StoredIncident] = field(default_factory=list)


def open_file(path: Path) -> Opened:
    """Open the outbox at ``path``, creating its directory (0700); a damaged file is read for
    what can be rescued, moved aside and replaced. Raises OutboxError for a storage problem."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise OutboxError(f"cannot create state directory {path.parent}: {exc}") from exc
    try:
        return Opened(connect(path))
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc
        rescued, incidents = salvage(path)
        try:
            move_aside(path, exc)
            db = connect(path)
        except (OSError, sqlite3.Error) as again:
            raise OutboxError(f"cannot create outbox {path}: {again}") from again
        if rescued:
            log.warning("outbox: %d message(s) rescued from the damaged file", len(rescued))
        return Opened(db, exc, rescued, incidents)
    except OSError as exc:
        raise OutboxError(f"cannot open outbox {path}: {exc}") from exc


def connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the database, mode 0600, WAL, synced, checked; raises sqlite3.Error."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA secure_delete=ON")
        result = db.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {result}")
        db.executescript(_SCHEMA)
        for table, column, kind in _ADDED:
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    except sqlite3.Error:
        db.close()
        raise
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            os.chmod(side, 0o600)
    return db


def salvage(path: Path) -> tuple[list[Entry], list[StoredIncident]]:
    """Read what can still be read from a damaged database, read-only: messages, incidents."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return [], []
    try:
        entries: list[Entry] = []
        incidents: list[StoredIncident] = []
        for columns in (COLUMNS, FIRST_COLUMNS):  # a first-release file has no stamps
            with contextlib.suppress(sqlite3.Error, TypeError):
                rows = db.execute(f"SELECT {columns} FROM messages ORDER BY id").fetchall()
                entries = [message(row) for row in rows]
                break
        for columns in (INCIDENT_COLUMNS, FIRST_INCIDENT_COLUMNS):
            with contextlib.suppress(sqlite3.Error, TypeError):
                query = f"SELECT {columns} FROM incidents WHERE closed_at IS NULL"
                incidents = [incident(row) for row in db.execute(query).fetchall()]
                break
        return entries, incidents
    finally:
        db.close()


def incident(row: tuple[Any, ...]) -> StoredIncident:
    trusted, boot, boot_s = row[6:9] if len(row) > 6 else (True, "", 0.0)
    stamp = Stamp(row[2], bool(trusted), boot, boot_s)
    return StoredIncident(row[0], row[1], row[2], bool(row[3]), row[4], row[5], stamp)


def message(row: tuple[Any, ...]) -> Entry:
    """A message from a row of COLUMNS (or of a first-release file's FIRST_COLUMNS)."""
    trusted, boot, boot_s = row[7:10] if len(row) > 7 else (True, "", 0.0)
    return Entry(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(trusted), boot, boot_s
    )


def quick_check(path: Path) -> str | None:
    """SQLite's quick_check on a fresh read-only connection: None when sound, else what failed."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        db.close()
    return None if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:3])


def identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file now at ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def move_aside(path: Path, reason: Exception) -> None:
    """Rename the file (and its WAL and SHM) to the next ``*.corrupt-N``, keeping only that one.

    A quarantined file holds what the damaged one held (names, phones, positions): one is kept
    for a post-mortem, never a collection of them, and it goes with the retention period.
    """
    earlier = quarantined(path)
    n = 1 + max((int(p.name.rsplit("-", 1)[1]) for p in earlier), default=0)
    aside = path.with_name(f"{path.name}.corrupt-{n}")
    log.error("outbox %s is unusable (%s); moved aside to %s", path, reason, aside.name)
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(Path(str(aside) + suffix))
    for old in earlier:
        remove_quarantined(old)


def quarantined(path: Path) -> list[Path]:
    """The ``*.corrupt-N`` main files beside ``path``."""
    prefix = f"{path.name}.corrupt-"
    with contextlib.suppress(OSError):
        return [
            p
            for p in path.parent.iterdir()
            if p.name.startswith(prefix) and p.name[len(prefix) :].isdigit()
        ]
    return []


def purge_quarantined(path: Path, cutoff: float) -> None:
    """Remove the quarantined files last written before ``cutoff`` (unix time)."""
    for old in quarantined(path):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                remove_quarantined(old)
                log.info("outbox: quarantined %s purged after the retention period", old.name)


def remove_quarantined(main: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(main) + suffix).unlink()


FIRST_COLUMNS = "id, kind, incident_id, sequence, topic, payload, created_at"
COLUMNS = f"{FIRST_COLUMNS}, trusted, boot_id, boot_s"
FIRST_INCIDENT_COLUMNS = "incident_id, sequence, opened_at, acked, update_sequence, repeat"
# SQLITE_CORRUPT and SQLITE_NOTADB: the file is damaged. "Full", "read-only" and "I/O error"
# are storage states and never make the outbox move a file aside.
_CORRUPTION_CODES = frozenset({11, 26})


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPTION_CODES
    return not isinstance(exc, sqlite3.OperationalError)  # our integrity-check failure


# -- statements on an open file (each may raise sqlite3.Error) ------------------------------


def insert(db: sqlite3.Connection, entry: Entry) -> Entry:
    """Store ``entry``; idempotent by (kind, incident_id, sequence): the stored one wins."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO messages (kind, incident_id, sequence, topic, payload, "
        "created_at, trusted, boot_id, boot_s) VALUES (?,?,?,?,?,?,?,?,?)",
        (
            entry.kind,
            entry.incident_id,
            entry.sequence,
            entry.topic,
            entry.payload,
            entry.created_at,
            int(entry.trusted),
            entry.boot_id,
            entry.boot_s,
        ),
    )
    if cursor.rowcount == 0:  # already stored
        row = db.execute(
            f"SELECT {COLUMNS} FROM messages WHERE kind=? AND incident_id=? AND sequence=?",
            entry.key,
        ).fetchone()
        stored = message(row)
        return replace(stored, topic=entry.topic, payload=entry.payload)
    assert cursor.lastrowid is not None
    return replace(entry, id=cursor.lastrowid)


def make_room(db: sqlite3.Connection, entry: Entry, limits: Limits) -> tuple[str, int]:
    """Evict the oldest updates until ``entry`` fits: ("fits" | "over" | "refused", evicted),
    as :meth:`MemoryQueue.make_room` does for what memory holds."""
    row = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages")
    rows, size = (int(n) for n in row.fetchone())
    evicted = 0
    while rows + 1 > limits.max_rows or size + len(entry.payload) > limits.max_bytes:
        victim = db.execute(
            "SELECT id, LENGTH(payload) FROM messages WHERE kind=? ORDER BY id LIMIT 1",
            (EVICTABLE,),
        ).fetchone()
        if victim is None:
            return ("refused" if entry.kind == EVICTABLE else "over"), evicted
        db.execute("DELETE FROM messages WHERE id=?", (victim[0],))
        evicted += 1
        rows, size = rows - 1, size - int(victim[1])
    return "fits", evicted


def write_incident(db: sqlite3.Connection, incident: StoredIncident) -> None:
    """Insert or update the incident; its stamp is the first write's (when it was opened)."""
    stamp = incident.stamp or Stamp(incident.opened_at, True, "", 0.0)
    db.execute(
        f"INSERT INTO incidents ({INCIDENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT(incident_id) DO UPDATE SET sequence=excluded.sequence, "
        "acked=excluded.acked, update_sequence=excluded.update_sequence, "
        "repeat=excluded.repeat",
        (
            incident.incident_id,
            incident.sequence,
            incident.opened_at,
            int(incident.acked),
            incident.update_sequence,
            incident.repeat,
            int(stamp.trusted),
            stamp.boot_id,
            stamp.boot_s,
        ),
    )


def read_incident(db: sqlite3.Connection) -> StoredIncident | None:
    row = db.execute(
        f"SELECT {INCIDENT_COLUMNS} FROM incidents "
        "WHERE closed_at IS NULL ORDER BY opened_at DESC LIMIT 1"
    ).fetchone()
    return None if row is None else incident(row)


def entries(db: sqlite3.Connection) -> list[Entry]:
    """Every message in the file, oldest first."""
    return [message(row) for row in db.execute(f"SELECT {COLUMNS} FROM messages ORDER BY id")]


def delete(db: sqlite3.Connection, key: tuple[str, str, int]) -> bool:
    """Delete the message with ``key``; True (deleted or not there): the WAL needs a scrub."""
    db.execute("DELETE FROM messages WHERE kind=? AND incident_id=? AND sequence=?", key)
    return True


_AGED = (("messages", "id", "created_at"), ("incidents", "incident_id", "opened_at"))


def purge(db: sqlite3.Connection, now: Stamp, retention_s: float) -> int:
    """Delete messages and incidents older than ``retention_s``; returns the messages gone.

    Ages are :func:`~agent.core.wallclock.age_s`: a step of the wall clock never makes a row
    look old, a row whose age no clock can tell is kept, and each row's stamp is first
    :func:`~agent.core.wallclock.settle`-d (taken into this boot, dated once trusted), in one
    transaction.
    """
    gone = 0
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, ident, wall in _AGED:
            query = f"SELECT {ident}, {wall}, trusted, boot_id, boot_s FROM {table}"
            for key, at, trusted, boot, boot_s in db.execute(query).fetchall():
                then = Stamp(float(at), bool(trusted), str(boot), float(boot_s))
                kept = settle(then, now)
                age = age_s(kept, now)
                if age is not None and age > retention_s:
                    db.execute(f"DELETE FROM {table} WHERE {ident}=?", (key,))
                    gone += table == "messages"
                elif kept != then:
                    db.execute(
                        f"UPDATE {table} SET {wall}=?, trusted=?, boot_id=?, boot_s=? "
                        f"WHERE {ident}=?",
                        (kept.wall, int(kept.trusted), kept.boot_id, kept.boot_s, key),
                    )
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    return gone


def oldest(db: sqlite3.Connection) -> Stamp | None:
    """The stamp of the oldest message (the first stored: rows keep their order)."""
    row = db.execute(
        "SELECT created_at, trusted, boot_id, boot_s FROM messages ORDER BY id LIMIT 1"
    ).fetchone()
    return None if row is None else Stamp(float(row[0]), bool(row[1]), str(row[2]), float(row[3]))


def count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])


def delete_incident(db: sqlite3.Connection, incident_id: str) -> None:
    db.execute("DELETE FROM incidents WHERE incident_id=?", (incident_id,))


def checkpoint(db: sqlite3.Connection) -> bool:
    """Copy the WAL into the database and truncate it; True once done."""
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return True
