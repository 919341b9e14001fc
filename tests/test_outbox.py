"""The durable outbox: order, idempotence, limits, retention, corruption, disk failures."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peers import fill, tmpfs

from agent.core.wallclock import Stamp
from agent.outbox import FILENAME, Entry, Limits, Outbox

T = "assistance/v1/VIN/request"
ID1 = "11111111-1111-4111-8111-111111111111"
ID2 = "22222222-2222-4222-8222-222222222222"


class Clock:
    """A trusted wall clock and the boot clock, moving together, in one boot."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> Stamp:
        return Stamp(self.now, True, "boot-1", self.now - 1_700_000_000.0)


def test_messages_survive_a_restart_in_order_with_their_ids(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        box.add("request", ID1, 1, T, b'{"a":1}')
        box.add("cancel", ID1, 1, T, b'{"b":2}')
        box.add("request", ID2, 1, T, b'{"c":3}')
        box.save_incident(ID2, 1, time.time(), False)
    with Outbox(tmp_path) as box:
        pending = box.pending()
        assert [(e.kind, e.incident_id, e.sequence) for e in pending] == [
            ("request", ID1, 1),
            ("cancel", ID1, 1),
            ("request", ID2, 1),
        ]
        assert box.open_incident() is not None
        box.remove(pending[0])
        assert box.count() == 2


def test_adding_twice_is_idempotent_and_keeps_the_original(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path, clock=clock) as box:
        first = box.add("request", ID1, 1, T, b"x")
        clock.now += 60
        again = box.add("request", ID1, 1, T, b"x")
        assert again.id == first.id
        assert again.created_at == first.created_at
        assert box.count() == 1


def test_file_is_private(tmp_path: Path) -> None:
    with Outbox(tmp_path / "state") as box:
        box.add("request", ID1, 1, T, b"x")
    mode = stat.S_IMODE((tmp_path / "state" / FILENAME).stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_deleted_personal_data_does_not_linger_in_the_file(tmp_path: Path) -> None:
    secret = b"Anna Muster +41 79 123 45 67"
    with Outbox(tmp_path) as box:
        entry = box.add("request", ID1, 1, T, b'{"contact":"' + secret + b'"}')
        box.remove(entry)
        box.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for path in tmp_path.iterdir():
        assert secret not in path.read_bytes(), path.name


def test_corrupt_file_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"this is not a database" * 100)
    with Outbox(tmp_path) as box:
        assert box.counters["replaced_corrupt"] == 1
        box.add("request", ID1, 1, T, b"x")
        assert box.count() == 1
    assert (tmp_path / f"{FILENAME}.corrupt-1").exists()
    with Outbox(tmp_path) as box:  # and the next start is normal: no crash loop
        assert box.counters.get("replaced_corrupt", 0) == 0
        assert box.count() == 1


def test_limits_evict_only_updates(tmp_path: Path) -> None:
    with Outbox(tmp_path, Limits(max_rows=3, max_bytes=1 << 20)) as box:
        box.add("update", ID1, 1, T, b"u1")
        box.add("update", ID1, 2, T, b"u2")
        box.add("request", ID1, 1, T, b"r1")
        box.add("request", ID2, 1, T, b"r2")  # evicts the oldest update
        assert [(e.kind, e.sequence) for e in box.pending()] == [
            ("update", 2),
            ("request", 1),
            ("request", 1),
        ]
        box.add("cancel", ID1, 1, T, b"c")  # evicts the other update
        box.add("request", ID2, 2, T, b"r3")  # nothing to evict: kept over the limit
        assert box.count() == 4
        assert box.counters["over_limit"] == 1
        box.add("update", ID2, 1, T, b"u3")  # an update that does not fit is dropped
        assert box.count() == 4
        assert box.counters["updates_dropped"] == 1


def test_byte_limit(tmp_path: Path) -> None:
    with Outbox(tmp_path, Limits(max_rows=100, max_bytes=65_536)) as box:
        box.add("update", ID1, 1, T, b"u" * 40_000)
        box.add("request", ID1, 1, T, b"r" * 40_000)
        assert [e.kind for e in box.pending()] == ["request"]


def test_retention_purges_old_messages(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path, Limits(retention_s=86400), clock=clock) as box:
        box.add("request", ID1, 1, T, b"old")
        box.save_incident(ID1, 1, clock.now, False)
        clock.now += 3600
        box.add("request", ID2, 1, T, b"new")
        clock.now += 86400 - 1800
        assert box.purge_expired() == 1
        assert [e.incident_id for e in box.pending()] == [ID2]
        assert box.open_incident() is None


def test_a_filesystem_that_fills_up_while_running_keeps_every_call(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "512k") as mnt:
        box = Outbox(mnt).open()
        try:
            stored = box.add("request", ID1, 1, T, b"on disk")
            fill(mnt)
            big = box.add("request", ID2, 1, T, b"x" * 20_000)  # the WAL cannot grow
            assert big.id < 0 and box.storage == "memory"
            assert box.counters["write_errors"] >= 1
            assert [e.payload for e in box.pending()] == [b"on disk", big.payload]  # all sent
            box.remove(stored)  # delivered while the disk refused
            (mnt / "filler").unlink()  # space again
            box._last_try = float("-inf")  # do not wait RETRY_S for the next try
            box.add("update", ID2, 1, T, b"later")
            assert box.storage == "disk"
            assert [(e.payload, e.id > 0) for e in box.pending()] == [
                (big.payload, True),
                (b"later", True),
            ]
            assert not list(mnt.glob("*.corrupt-*"))
        finally:
            box.close()
        with Outbox(mnt) as again:  # what was delivered meanwhile is not sent again
            assert [e.payload for e in again.pending()] == [big.payload, b"later"]


def test_unusable_state_directory_runs_from_memory_then_moves_to_disk(tmp_path: Path) -> None:
    # A real fault: the state directory's parent is a regular file (ENOTDIR, even for root).
    blocker = tmp_path / "file"
    blocker.write_text("")
    box = Outbox(blocker / "state").open()
    assert box.storage == "memory"
    assert box.counters["open_errors"] == 1
    call = box.add("request", ID1, 1, T, b"call")
    assert [e.payload for e in box.pending()] == [b"call"]
    box.remove(Entry(-999, "request", ID2, 9, T, b"", 0.0))  # unknown, disk-less: no raise
    assert box.purge_expired() == 0
    blocker.unlink()  # the storage comes back
    box._last_try = float("-inf")  # do not wait RETRY_S for the next try
    box.add("cancel", ID1, 1, T, b"cancel")
    assert box.storage == "disk"
    assert [e.payload for e in box.pending()] == [b"call", b"cancel"]
    assert all(e.id > 0 for e in box.pending())
    box.remove(call)  # the PUBACK for the entry the uplink held in memory: by key, on disk now
    assert [e.payload for e in box.pending()] == [b"cancel"]
    box.close()
    with Outbox(blocker / "state") as again:  # and it survives a restart
        assert [e.payload for e in again.pending()] == [b"cancel"]


def test_full_disk_at_start_is_not_mistaken_for_corruption(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "16k") as mnt:  # a real full filesystem
        fill(mnt)
        box = Outbox(mnt).open()
        assert box.storage == "memory"
        box.add("request", ID1, 1, T, b"call")
        assert [e.payload for e in box.pending()] == [b"call"]
        assert "replaced_corrupt" not in box.counters
        assert not list(mnt.glob("*.corrupt-*"))
        box.close()


def test_damaged_file_rescues_readable_messages(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        box.add("request", ID1, 1, T, b"the call")
        box.add("cancel", ID1, 1, T, b"the cancel")
        box.db.execute("CREATE INDEX damage_me ON messages (topic, payload)")
        root = box.db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name='damage_me'"
        ).fetchone()[0]
        page_size = box.db.execute("PRAGMA page_size").fetchone()[0]
        box.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = tmp_path / FILENAME
    data = bytearray(path.read_bytes())
    offset = (root - 1) * page_size
    data[offset : offset + 64] = b"\xde\xad" * 32  # the index page is garbage now
    path.write_bytes(bytes(data))
    with Outbox(tmp_path) as box:
        assert box.counters["replaced_corrupt"] == 1
        assert box.counters["salvaged"] == 2
        assert [e.payload for e in box.pending()] == [b"the call", b"the cancel"]
    assert (tmp_path / f"{FILENAME}.corrupt-1").exists()


def damage_index_page(box: Outbox, path: Path) -> None:
    """Overwrite one b-tree page of the file under the open connection, as flash wear does."""
    box.db.execute("CREATE INDEX IF NOT EXISTS damage_me ON messages (topic, payload)")
    root = box.db.execute("SELECT rootpage FROM sqlite_master WHERE name='damage_me'").fetchone()
    page_size = box.db.execute("PRAGMA page_size").fetchone()[0]
    box.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as f:
        f.seek((root[0] - 1) * page_size)
        f.write(b"\xde\xad" * 32)


def test_damage_found_while_running_loses_nothing_and_a_late_puback_removes_only_its_own(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path).open()
    try:
        first = box.add("request", ID1, 1, T, b"delivered")
        in_flight = box.add("update", ID1, 1, T, b"in flight")  # row 2, published, no PUBACK yet
        box.save_incident(ID1, 1, time.time(), False)
        box.remove(first)  # PUBACKed
        damage_index_page(box, tmp_path / FILENAME)
        assert box.check() is False  # found on a fresh connection
        assert box.counters["replaced_corrupt"] == 1
        assert box.storage == "disk"
        later = box.add("cancel", ID1, 1, T, b"the cancel")  # the new file numbers rows again
        assert later.id == in_flight.id  # the id the uplink still holds now names another row
        box.remove(in_flight)  # the late PUBACK
        assert [e.payload for e in box.pending()] == [b"the cancel"]
        assert box.check() is True
    finally:
        box.close()
    with Outbox(tmp_path) as again:  # the open incident went along to the new file
        assert [e.payload for e in again.pending()] == [b"the cancel"]
        stored = again.open_incident()
        assert stored is not None and stored.incident_id == ID1


def test_a_state_directory_removed_under_the_agent_is_rebuilt_with_every_message(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    box = Outbox(state).open()
    try:
        box.add("request", ID1, 1, T, b"the call")
        box.save_incident(ID1, 1, time.time(), False)
        subprocess.run(["rm", "-rf", str(state)], check=True)  # a cleanup script, a bad update
        box.add("update", ID1, 1, T, b"written into the unlinked file")
        assert box.check() is False
        assert box.counters["vanished"] == 1
        assert (state / FILENAME).exists()
        assert box.check() is True
    finally:
        box.close()
    with Outbox(state) as again:
        assert [e.payload for e in again.pending()] == [
            b"the call",
            b"written into the unlinked file",
        ]
        assert again.open_incident() is not None


def test_a_file_from_the_first_release_gets_the_new_incident_columns(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / FILENAME)
    old.executescript(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,"
        " incident_id TEXT NOT NULL, sequence INTEGER NOT NULL, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, created_at REAL NOT NULL, UNIQUE (kind, incident_id, sequence));"
        "CREATE TABLE incidents (incident_id TEXT PRIMARY KEY, sequence INTEGER NOT NULL,"
        " opened_at REAL NOT NULL, acked INTEGER NOT NULL DEFAULT 0, closed_at REAL);"
    )
    opened = time.time() - 60
    old.execute("INSERT INTO incidents VALUES (?, 2, ?, 0, NULL)", (ID1, opened))
    old.commit()
    old.close()
    with Outbox(tmp_path) as box:
        stored = box.open_incident()
        assert stored is not None
        assert (stored.sequence, stored.update_sequence, stored.repeat) == (2, 0, None)
        box.save_incident(ID1, 2, stored.opened_at, False, update_sequence=4, repeat="{}")
    with Outbox(tmp_path) as box:
        stored = box.open_incident()
        assert stored is not None and (stored.update_sequence, stored.repeat) == (4, "{}")
        assert stored.opened_at == opened
        assert box.counters.get("replaced_corrupt", 0) == 0


def test_only_one_quarantined_file_is_kept_and_it_goes_with_the_retention(
    tmp_path: Path,
) -> None:
    """A quarantined file holds names, phones and positions: never a collection of them."""
    for _ in range(3):
        (tmp_path / FILENAME).write_bytes(b"this is not a database" * 100)
        with Outbox(tmp_path, Limits(retention_s=86400)) as box:
            assert box.counters["replaced_corrupt"] == 1
    assert sorted(p.name for p in tmp_path.glob("*.corrupt-*")) == [f"{FILENAME}.corrupt-3"]
    aside = tmp_path / f"{FILENAME}.corrupt-3"
    with Outbox(tmp_path, Limits(retention_s=86400)) as box:
        old = time.time() - 86400 - 1
        os.utime(aside, (old, old))
        box.purge_expired()
    assert not list(tmp_path.glob("*.corrupt-*"))


PROBE = """
import sys
from agent.outbox import Outbox
box = Outbox(sys.argv[1]).open()
box.add("request", "id", 1, "t", b"the call")
print(box.storage, box.counters.get("open_errors", 0), [e.payload for e in box.pending()])
"""


def test_a_state_directory_of_mode_000_runs_from_memory_for_the_service_user(
    tmp_path: Path,
) -> None:
    """The service runs unprivileged; root would read a mode-000 directory, so the probe runs
    as uid 65534 (setpriv) when the tests run as root."""
    base = Path(tempfile.mkdtemp(prefix="outbox-000-", dir="/tmp"))
    try:
        state = base / "state"
        state.mkdir(mode=0o000)
        state.chmod(0o000)
        runner = []
        if os.geteuid() == 0:
            base.chmod(0o755)
            runner = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        result = subprocess.run(
            [*runner, sys.executable, "-c", PROBE, str(state)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split(maxsplit=2) == ["memory", "1", "[b'the call']\n"]
    finally:
        (base / "state").chmod(0o700)
        shutil.rmtree(base)


class BoardClock:
    """The clocks of a board without RTC: a wall clock that can be wrong and jump, the boot
    clock that runs on, and the boot id."""

    def __init__(self) -> None:
        self.wall = 978_307_200.0  # 2001-01-01: not trusted
        self.trusted = False
        self.boot = "boot-1"
        self.boot_s = 30.0

    def __call__(self) -> Stamp:
        return Stamp(self.wall, self.trusted, self.boot, self.boot_s)

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.boot_s += seconds


TEN_YEARS = 10 * 365.25 * 86400


def test_a_jump_of_the_wall_clock_never_purges_a_pending_call(tmp_path: Path) -> None:
    clock = BoardClock()
    with Outbox(tmp_path, Limits(retention_s=86400), clock=clock) as box:
        box.add("request", ID1, 1, T, b"the call")
        box.save_incident(ID1, 1, clock.wall, False)
        clock.run(60)
        clock.wall += TEN_YEARS  # NTP or GPS steps the clock
        assert box.purge_expired() == 0
        clock.trusted = True
        assert box.purge_expired() == 0
        assert [e.incident_id for e in box.pending()] == [ID1]
        assert box.open_incident() is not None
        age = box.oldest_age_s()
        assert age is not None and 59 < age < 61
        clock.wall -= 2 * TEN_YEARS  # and back: the age is the boot clock's
        assert box.purge_expired() == 0
        clock.run(86400)  # retention still purges what is truly old
        assert box.purge_expired() == 1
        assert box.open_incident() is None


def test_across_a_reboot_only_trusted_clocks_date_a_row(tmp_path: Path) -> None:
    clock = BoardClock()
    clock.wall, clock.trusted = 1_800_000_000.0, True
    with Outbox(tmp_path, Limits(retention_s=86400), clock=clock) as box:
        box.add("request", ID1, 1, T, b"stamped by a trusted clock")
    clock.trusted, clock.wall = False, 1_800_000_000.0
    clock.boot, clock.boot_s = "boot-2", 10.0
    clock.wall += TEN_YEARS
    with Outbox(tmp_path, Limits(retention_s=86400), clock=clock) as box:  # untrusted: kept
        box.add("request", ID2, 1, T, b"stamped by an untrusted clock")
        assert box.count() == 2
    clock.boot, clock.boot_s = "boot-3", 10.0
    clock.wall, clock.trusted = 1_800_000_000.0 + 2 * 86400, True
    with Outbox(tmp_path, Limits(retention_s=86400), clock=clock) as box:
        # the trusted row is two days old: gone; the other's age is unknown: kept, from now
        assert [e.incident_id for e in box.pending()] == [ID2]
        clock.run(86400 - 60)
        assert box.purge_expired() == 0
        clock.run(120)
        assert box.purge_expired() == 1
