"""The outbox's SQLite file: opened durable and private, checked, and when SQLite says it is
damaged, read for what can be rescued and moved aside."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from agent.outbox.entries import Entry, StoredIncident

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
    closed_at REAL,
    update_sequence INTEGER NOT NULL DEFAULT 0,
    repeat TEXT
);
"""
# columns added since the first release: a file written by it gets them on open
_ADDED = (
    ("incidents", "update_sequence", "INTEGER NOT NULL DEFAULT 0"),
    ("incidents", "repeat", "TEXT"),
)
INCIDENT_COLUMNS = "incident_id, sequence, opened_at, acked, update_sequence, repeat"


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
        with contextlib.suppress(sqlite3.Error, TypeError):
            rows = db.execute(f"SELECT {COLUMNS} FROM messages ORDER BY id").fetchall()
            entries = [Entry(*row) for row in rows]
        with contextlib.suppress(sqlite3.Error, TypeError):
            query = f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE closed_at IS NULL"
            incidents = [incident(row) for row in db.execute(query).fetchall()]
        return entries, incidents
    finally:
        db.close()


def incident(row: tuple[Any, ...]) -> StoredIncident:
    return StoredIncident(row[0], row[1], row[2], bool(row[3]), row[4], row[5])


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


def remove_quarantined(main: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(main) + suffix).unlink()


COLUMNS = "id, kind, incident_id, sequence, topic, payload, created_at"
# SQLITE_CORRUPT and SQLITE_NOTADB: the file is damaged. "Full", "read-only" and "I/O error"
# are storage states and never make the outbox move a file aside.
_CORRUPTION_CODES = frozenset({11, 26})


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPTION_CODES
    return not isinstance(exc, sqlite3.OperationalError)  # our integrity-check failure
