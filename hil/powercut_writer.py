"""The writer inside UML for ``make powercut`` (hil/powercut.py boots it, cuts its power).

usage: powercut_writer.py STATE_DIR RUN LOG [--verify-only]

STATE_DIR must be on an ext4 filesystem on a UML block device (``/dev/ubd*``), never on hostfs
or tmpfs: a power cut must lose the guest's page cache, and only a block device below the
product's files makes that so. The outbox is the product's own ``agent.outbox.Outbox``.

LOG, the report, must be on hostfs: each line is one write(2) that hostfs passes straight to
the host's file (then fsync(2)), so what the host reads after the cut is exactly what was
reported, up to the last line written. (The console is no good for this: lines still on
their way through the guest's tty are lost with the cut, while what they report happened.)

1. Open the outbox as the agent does after a reboot and print ``STATE {json}``: every pending
   message (key, topic, sha256 of its payload), the open incident, ``PRAGMA integrity_check``,
   the ``*.corrupt-*`` files beside it, the storage state and the outbox's counters. The host
   judges it; this script only reports.
2. Unless ``--verify-only``: close the last run's incident, open one for run RUN, print
   ``READY``, then until the host kills the machine: add messages (``COMMITTED <key>`` once
   ``Outbox.add`` returned with the message on disk), save the incident's sequence now and
   then (``INCIDENT <id> <seq> <opened_at>`` once saved), and as PUBACKs would, remove the
   oldest messages (``REMOVED <key>`` once removed) and checkpoint the WAL (``Outbox.scrub``,
   ``SCRUBBED``). Each step is announced before it starts (``ADD <key>``, ``SAVE``,
   ``REMOVE <key>``, ``SCRUB``), so the host knows which one the cut fell in.

``READY`` also goes to stdout (the console): the host times the cut from it.

POWERCUT_FAULT (for proving the check can fail; never in the product):
  report-early   print ``COMMITTED <key>`` before calling ``Outbox.add``
  sync-off       ``PRAGMA synchronous=OFF`` on the outbox's connection after it is opened
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from agent.outbox import Outbox

FAULTS = ("", "report-early", "sync-off")
MAX_S = 60.0  # the host cuts long before; never write for ever if it does not
KEEP = 10  # pending messages kept before an "ack" removes the oldest
ACK = 4  # how many one ack removes


def key_of(kind: str, incident_id: str, sequence: int) -> str:
    return f"{kind}/{incident_id}/{sequence}"


def topic_for(kind: str, incident_id: str) -> str:
    return f"powercut/{incident_id}/{kind}"


def payload_for(key: str) -> bytes:
    """The payload a key is stored with: 100 to 6000 bytes (some beyond a 4 KiB page)."""
    seed = hashlib.sha256(key.encode()).digest()
    size = 100 + int.from_bytes(seed[:4], "big") % 5900
    head = json.dumps({"key": key, "size": size}).encode()
    body = bytearray(head)
    block = seed
    while len(body) < size:
        block = hashlib.sha256(block).digest()
        body += block.hex().encode()
    return bytes(body[:size])


def mount_of(path: Path) -> tuple[str, str, str]:
    """(device, mount point, fs type) of the filesystem holding ``path``."""
    real = os.path.realpath(path)
    best = ("", "", "")
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        for line in fh:
            dev, mnt, fstype = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best[1]):
                best = (dev, mnt, fstype)
    return best


class Report:
    """The hostfs log: one write(2) and one fsync(2) per line, before the next step starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def __call__(self, line: str) -> None:
        data = (line + "\n").encode()
        if os.write(self._fd, data) != len(data):
            raise OSError(f"short write to the report: {line!r}")
        os.fsync(self._fd)


def state(outbox: Outbox, directory: Path) -> dict[str, object]:
    pending = outbox.pending()
    rows: int | None = None
    integrity = ["the outbox is not open on disk"]
    if outbox.is_open:
        rows = int(outbox.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        integrity = [r[0] for r in outbox.db.execute("PRAGMA integrity_check").fetchall()]
    incident = outbox.open_incident()
    return {
        "pending": [
            [
                key_of(e.kind, e.incident_id, e.sequence),
                e.topic,
                hashlib.sha256(e.payload).hexdigest(),
                e.id,
            ]
            for e in pending
        ],
        "rows": rows,
        "integrity": integrity,
        "incident": None
        if incident is None
        else [incident.incident_id, incident.sequence, incident.opened_at],
        "corrupt": sorted(p.name for p in directory.glob("*.corrupt-*")),
        "storage": outbox.storage,
        "counters": outbox.counters,
    }


def write(outbox: Outbox, run: int, fault: str, emit: Report) -> int:
    incident_id = f"run{run:03d}"
    previous = outbox.open_incident()
    if previous is not None:
        outbox.close_incident(previous.incident_id)
        emit(f"CLOSED {previous.incident_id}")
    opened_at = time.time()
    outbox.save_incident(incident_id, 0, opened_at, False)
    emit(f"INCIDENT {incident_id} 0 {opened_at!r}")
    emit("READY")
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    deadline = time.monotonic() + MAX_S
    sequence = 0
    while time.monotonic() < deadline:
        kind = "request" if sequence == 0 else "update"
        key = key_of(kind, incident_id, sequence)
        if fault == "report-early":
            emit(f"COMMITTED {key}")
        emit(f"ADD {key}")
        entry = outbox.add(
            kind, incident_id, sequence, topic_for(kind, incident_id), payload_for(key)
        )
        if entry.id <= 0 or outbox.storage != "disk":
            emit(f"MEMORY {key}")  # the disk refused it: the host counts that as a failure
        elif fault != "report-early":
            emit(f"COMMITTED {key}")
        if sequence % 3 == 2:
            emit("SAVE")
            outbox.save_incident(incident_id, sequence, opened_at, False)
            emit(f"INCIDENT {incident_id} {sequence} {opened_at!r}")
        pending = outbox.pending()
        if len(pending) > KEEP:  # a PUBACK for the oldest, then the uplink's scrub
            for old in pending[:ACK]:
                old_key = key_of(old.kind, old.incident_id, old.sequence)
                emit(f"REMOVE {old_key}")
                outbox.remove(old)
                emit(f"REMOVED {old_key}")
            emit("SCRUB")
            outbox.scrub()
            emit("SCRUBBED")
        sequence += 1
    return 0


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if not a.startswith("--")]
    verify_only = "--verify-only" in argv
    if len(args) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    directory, run, log = Path(args[0]), int(args[1]), Path(args[2])
    fault = os.environ.get("POWERCUT_FAULT", "")
    if fault not in FAULTS:
        print(f"powercut_writer: POWERCUT_FAULT must be one of {FAULTS}", file=sys.stderr)
        return 2
    dev, mnt, fstype = mount_of(directory)
    if fstype != "ext4" or not dev.startswith("/dev/ubd"):
        print(
            f"powercut_writer: {directory} is on {fstype} ({dev} at {mnt}), "
            "not ext4 on a UML block device",
            file=sys.stderr,
        )
        return 2
    if mount_of(log.parent)[2] != "hostfs":
        print(f"powercut_writer: the report {log} must be on hostfs", file=sys.stderr)
        return 2
    emit = Report(log)
    outbox = Outbox(directory).open()
    if fault == "sync-off" and outbox.is_open:
        outbox.db.execute("PRAGMA synchronous=OFF")
    report = state(outbox, directory)
    report["mount"] = [dev, mnt, fstype]
    emit("STATE " + json.dumps(report))
    if verify_only:
        outbox.close()
        return 0
    return write(outbox, run, fault, emit)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
