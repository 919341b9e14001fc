#!/usr/bin/env python3
"""``make powercut``: cut the power under the outbox, again and again, and check what survived.

usage: hil/powercut.py [--expect-failure]

An ext4 image (``mkfs.ext4`` on a sparse file) is the UML machine's block device ``/dev/ubda``,
mounted at /run/state inside (hil/run-in-uml.sh, ``HIL_UBD0``). hil/powercut_writer.py stores calls
there through the product's ``agent.outbox.Outbox`` and reports ``COMMITTED <key>`` only after
``Outbox.add`` returned; it removes the oldest messages and checkpoints the WAL as PUBACKs do. The
report is a log on hostfs (one write and fsync per line, straight to the host's file), so after the
cut the host holds exactly what had been reported. At a random moment after the writer is ready, the
UML kernel's whole process group is SIGKILLed (the power cut: the guest's page cache is gone; what
the ubd driver had written is on the image). The next boot mounts the same image (the kernel replays
the ext4 journal), opens the outbox and reports what it holds, and this script checks it against
what the writer had reported before the cut:

- every key reported COMMITTED (and whose removal was not announced) is pending: none lost;
- no key reported REMOVED came back; no key is pending twice; every payload and topic is the
  one that key was written with (sha256), and the row count agrees;
- the open incident is the one last reported saved, with at least the sequence last reported;
- ``PRAGMA integrity_check`` is ok, the outbox quarantined nothing (``*.corrupt-*``), counted
  no open or write error, and runs from disk.

After the last cut one more boot checks, then unmounts cleanly; ``e2fsck -fn`` on the host
must then find the filesystem clean.

Environment: POWERCUT_SEED (default 1), POWERCUT_RUNS (20), POWERCUT_WINDOW_MS (the cut falls
uniformly in 0..this after READY; 1500), POWERCUT_FAULT (passed to the writer: ``report-early``
or ``sync-off``, to show the check fails), POWERCUT_KEEP=1 (keep the image), HIL_CACHE.
Exit status 0 when nothing was lost or damaged; with ``--expect-failure``, 0 only when
something was (the self-test of the check). The last line is
``powercut: N runs, committed K, lost L``.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

HIL_DIR = Path(__file__).resolve().parent
REPO = HIL_DIR.parent
sys.path.insert(0, str(HIL_DIR))
from powercut_writer import payload_for, topic_for  # noqa: E402  (the writer's key scheme)

MOUNT = "/run/state"
IMAGE_MB = 64
BOOT_TIMEOUT_S = 120.0


@dataclass
class Model:
    """What the writer promised, as far as the host saw it."""

    present: set[str] = field(default_factory=set)  # on disk for sure: must be pending
    gone: set[str] = field(default_factory=set)  # reported removed: must not come back
    incident: tuple[str, int, float] | None = None  # last reported saved, not closed since
    committed: int = 0


@dataclass
class Boot:
    lines: list[str]  # the writer's report, in order
    ready_at: float | None
    cut_at: float | None
    rc: int
    stderr: str


@dataclass
class Verdict:
    pending: int = 0
    lost: list[str] = field(default_factory=list)
    back: list[str] = field(default_factory=list)  # removed, yet pending again
    extra: int = 0  # pending with no promise either way (add not yet reported, removal begun)
    problems: list[str] = field(default_factory=list)


def expected_sha(key: str) -> str:
    return hashlib.sha256(payload_for(key)).hexdigest()


def boot(image: Path, run: int, *, verify_only: bool, cut_after_s: float | None) -> Boot:
    """One boot of the writer on ``image``; SIGUSR1 (the power cut) ``cut_after_s`` after READY.

    The writer's report is read from its hostfs log once the machine is gone; its stdout
    only times the cut.
    """
    log = image.with_name(f"report-{run:03d}.log")
    cmd = [str(HIL_DIR / "run-in-uml.sh"), sys.executable, str(HIL_DIR / "powercut_writer.py")]
    cmd += [MOUNT, str(run), str(log)] + (["--verify-only"] if verify_only else [])
    env = dict(os.environ, HIL_UBD0=str(image), HIL_UBD0_MOUNT=MOUNT, HIL_TIMEOUT="300")
    env["HIL_PASS_ENV"] = (env.get("HIL_PASS_ENV", "") + " POWERCUT_FAULT").strip()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        lines: queue.Queue[tuple[float, str] | None] = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.put((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        ready_at = cut_at = None
        start = time.monotonic()
        while True:
            if ready_at is not None and cut_after_s is not None and cut_at is None:
                wait = ready_at + cut_after_s - time.monotonic()
            else:
                wait = start + BOOT_TIMEOUT_S - time.monotonic()
            try:
                item = lines.get(timeout=max(wait, 0.0))
            except queue.Empty:
                if ready_at is not None and cut_at is None and cut_after_s is not None:
                    proc.send_signal(signal.SIGUSR1)  # the power cut
                    cut_at = time.monotonic()
                    continue
                proc.kill()
                break
            if item is None:
                break
            if item[1] == "READY":
                ready_at = item[0]
        rc = proc.wait()
        reader.join()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    # A line is reported once written whole; a torn last line (no newline) is not.
    got = text.split("\n")[:-1]
    return Boot(got, ready_at, cut_at, rc, stderr)


def in_order(key: str) -> tuple[str, int]:
    """kind/incident/sequence, ordered by incident and then sequence."""
    _, _, rest = key.partition("/")
    incident, _, seq = rest.rpartition("/")
    return incident, int(seq) if seq.isdigit() else -1


def check_state(state: dict[str, object], model: Model) -> Verdict:
    v = Verdict()
    pending = state["pending"]
    assert isinstance(pending, list)
    keys = [str(row[0]) for row in pending]
    v.pending = len(keys)
    seen: set[str] = set()
    for key, topic, sha, _row_id in pending:
        if key in seen:
            v.problems.append(f"{key} pending twice")
        seen.add(key)
        kind, _, incident_id = str(key).partition("/")
        incident_id = incident_id.rpartition("/")[0]
        if sha != expected_sha(key) or topic != topic_for(kind, incident_id):
            v.problems.append(f"{key} garbled (payload or topic differs)")
    if state["rows"] != len(keys):
        v.problems.append(f"{state['rows']} rows in the table, {len(keys)} pending")
    v.lost = sorted(model.present - seen, key=in_order)
    v.back = sorted(model.gone & seen, key=in_order)
    v.extra = len(seen - model.present)
    if state["integrity"] != ["ok"]:
        v.problems.append(f"integrity_check: {state['integrity']}")
    if state["corrupt"]:
        v.problems.append(f"quarantined: {state['corrupt']}")
    counters = state["counters"]
    assert isinstance(counters, dict)
    bad = {k: n for k, n in counters.items() if k != "expired"}
    if bad:
        v.problems.append(f"outbox counters: {bad}")
    if state["storage"] != "disk":
        v.problems.append(f"storage is {state['storage']}")
    stored = state["incident"]
    if model.incident is not None:
        want_id, want_seq, want_opened = model.incident
        if stored is None:
            v.problems.append(f"incident {want_id} (sequence {want_seq}) lost")
        else:
            assert isinstance(stored, list)
            got_id, got_seq, got_opened = stored
            if got_id != want_id or got_seq < want_seq or got_opened != want_opened:
                v.problems.append(f"incident {stored}, expected {want_id} seq >= {want_seq}")
    return v


def follow(lines: list[str], model: Model, counts: dict[str, int]) -> None:
    """Apply what the writer reported during a boot to the model."""
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "COMMITTED":
            model.present.add(rest)
            model.committed += 1
            counts["committed"] += 1
        elif word == "REMOVE":  # about to be removed: may be gone now
            model.present.discard(rest)
        elif word == "REMOVED":
            model.gone.add(rest)
            counts["removed"] += 1
        elif word == "SCRUBBED":
            counts["scrubs"] += 1
        elif word == "INCIDENT":
            incident_id, seq, opened = rest.split()
            model.incident = (incident_id, int(seq), float(opened))
        elif word == "CLOSED":
            if model.incident is not None and model.incident[0] == rest:
                model.incident = None
        elif word == "MEMORY":
            counts["memory"] += 1


PHASES = {"ADD": "add", "SAVE": "incident", "REMOVE": "remove", "SCRUB": "checkpoint"}
DONE = {"COMMITTED", "INCIDENT", "REMOVED", "SCRUBBED", "READY", "MEMORY"}


def cut_in(lines: list[str]) -> str:
    """The step the cut fell in: the last one announced and not reported done."""
    for line in reversed(lines):
        word = line.partition(" ")[0]
        if word in PHASES:
            return PHASES[word]
        if word in DONE:
            return "between"  # done, and the next step not announced yet
    return "-"


def fresh_image(prefix: str) -> tuple[Path, Path]:
    """A work directory in the UML cache and an empty ext4 image of IMAGE_MB in it."""
    cache = Path(os.environ.get("HIL_CACHE", REPO / ".cache" / "uml"))
    cache.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=cache))
    image = workdir / "state.ext4"
    with open(image, "wb") as fh:
        fh.truncate(IMAGE_MB * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-F", "-q", "-b", "4096", str(image)], check=True)
    return workdir, image


class Settings(NamedTuple):
    """A power-cut run's knobs, from the environment (POWERCUT_*) and the command line."""

    expect_failure: bool  # --expect-failure: the self-test, which must lose calls
    seed: int
    runs: int
    window_ms: float  # cuts fall uniformly in 0..window_ms
    fault: str  # a self-test's cheat ("" for none)
    keep: bool  # keep the work directory and the image

    @classmethod
    def read(cls, argv: list[str], window_var: str, window_ms: float) -> Settings:
        env = os.environ
        return cls(
            "--expect-failure" in argv,
            int(env.get("POWERCUT_SEED", "1")),
            int(env.get("POWERCUT_RUNS", "20")),
            float(env.get(window_var, str(window_ms))),
            env.get("POWERCUT_FAULT", ""),
            env.get("POWERCUT_KEEP", "0") == "1",
        )


def main(argv: list[str]) -> int:
    expect_failure, seed, runs, window_ms, fault, keep = Settings.read(
        argv, "POWERCUT_WINDOW_MS", 1500.0
    )
    rng = random.Random(seed)
    workdir, image = fresh_image("powercut.")
    print(
        f"powercut: seed {seed}, {runs} runs, cut 0-{window_ms:.0f} ms after READY, "
        f"{IMAGE_MB} MiB ext4 on ubd0, fault {fault or 'none'}",
        flush=True,
    )
    head = (
        f"{'run':>3} {'cut ms':>6} {'cut in':>10} {'added':>5} {'acked':>5} {'ckpt':>4} "
        f"{'pending':>7} {'extra':>5} {'lost':>4} {'back':>4}  checks"
    )
    print(head, flush=True)
    model = Model()
    lost_total = failures = 0
    started = time.monotonic()
    previous: tuple[int, float, str, dict[str, int]] | None = None
    phases: dict[str, int] = {}
    for run in range(1, runs + 2):
        final = run == runs + 1
        cut_ms = None if final else rng.uniform(0.0, window_ms)
        b = boot(
            image, run, verify_only=final, cut_after_s=None if cut_ms is None else cut_ms / 1000
        )
        states = [line for line in b.lines if line.startswith("STATE ")]
        if not states:
            print(f"boot {run}: no STATE from the writer (exit {b.rc}):\n{b.stderr}", flush=True)
            failures += 1
            break
        v = check_state(json.loads(states[0][len("STATE ") :]), model)
        if previous is not None:
            prun, pcut, pop, pcounts = previous
            checks = "ok" if not v.problems else "; ".join(v.problems[:3])
            print(
                f"{prun:>3} {pcut:>6.0f} {pop:>10} {pcounts['committed']:>5} "
                f"{pcounts['removed']:>5} {pcounts['scrubs']:>4} {v.pending:>7} "
                f"{v.extra:>5} {len(v.lost):>4} {len(v.back):>4}  {checks}",
                flush=True,
            )
            if v.lost:
                print(f"    lost: {' '.join(v.lost[:8])}", flush=True)
            if v.back:
                print(f"    came back after REMOVED: {' '.join(v.back[:8])}", flush=True)
        lost_total += len(v.lost)
        failures += bool(v.problems or v.back or v.lost)
        # The state just read is on the image: from here on, it is what must survive.
        model.present = {str(row[0]) for row in json.loads(states[0][6:])["pending"]}
        counts = {"committed": 0, "removed": 0, "scrubs": 0, "memory": 0}
        follow(b.lines, model, counts)
        failures += bool(counts["memory"])
        if final:
            if b.rc != 0:
                print(f"final boot exited {b.rc}:\n{b.stderr}", flush=True)
                failures += 1
            break
        if b.rc != 137 or b.cut_at is None:
            print(f"run {run}: the writer ended before the cut (exit {b.rc}):\n{b.stderr}")
            failures += 1
            break
        assert cut_ms is not None
        previous = (run, cut_ms, cut_in(b.lines), counts)
        phases[previous[2]] = phases.get(previous[2], 0) + 1
    print("cuts fell in: " + ", ".join(f"{k} {n}" for k, n in sorted(phases.items())), flush=True)
    fsck = subprocess.run(
        ["e2fsck", "-fn", str(image)], check=False, capture_output=True, text=True
    )
    print(
        f"e2fsck -fn after the last clean unmount: exit {fsck.returncode}"
        f"{' (clean)' if fsck.returncode == 0 else ': ' + fsck.stdout[-500:]}",
        flush=True,
    )
    failures += fsck.returncode != 0
    elapsed = time.monotonic() - started
    bad = bool(failures or lost_total)
    if keep or (bad and not expect_failure):
        print(f"image kept: {image}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"powercut: {elapsed:.0f} s, seed {seed}, {failures} run(s) with a loss or damage",
        flush=True,
    )
    print(f"powercut: {runs} runs, committed {model.committed}, lost {lost_total}", flush=True)
    if expect_failure:
        return 0 if bad else 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
