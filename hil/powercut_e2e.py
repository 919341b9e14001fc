#!/usr/bin/env python3
"""``make powercut``: the whole agent, a press, the LED ``calling``, the power cut, a reboot.

usage: hil/powercut_e2e.py [--expect-failure]

An ext4 image (``mkfs.ext4`` on a sparse file) is the UML machine's ``/dev/ubda``, mounted at
/run/state (hil/run-in-uml.sh, ``HIL_UBD0``). On every boot hil/powercut_agent.py starts, inside
the machine, Mosquitto, the backend simulator, a link between the agent and the broker, a fake
gpsd, the simulated car on vcan0, and the product, ``connect-agent run``, with its state on the
image. A boot first checks that the calls of the boot before the cut were delivered, then holds
the broker's answer (the link freezes), has the car hold CONNECT for 2.2 s and reports
``CALLING <incident_id>`` on its hostfs log once the LED frame on the bus shows ``calling``.
This script reads that log as it grows (every 2 ms), and a seeded 0..POWERCUT_CUT_MS (50) ms
after the line appeared it cuts the power: SIGUSR1 to run-in-uml.sh, which SIGKILLs the UML
kernel's whole process group (the guest's page cache is gone, the image keeps what the block
driver had written). The next boot, on the same image, has a broker that answers: every call
that showed ``calling`` must reach the backend (same incident_id, sequence 1) within
POWERCUT_DELIVER_S (30 s). After the last cut one more boot checks the deliveries, stops the
agent with SIGTERM (exit 0) and unmounts; ``e2fsck -fn`` must then find the image clean.

Environment: POWERCUT_SEED (1), POWERCUT_RUNS (20), POWERCUT_CUT_MS (50), POWERCUT_DELIVER_S
(30), POWERCUT_FAULT (``tmpfs`` or ``nosync``: the harness cheats, see powercut_agent.py; with
``--expect-failure`` the exit status is 0 only if calls were lost), POWERCUT_KEEP=1, HIL_CACHE.
The last line is ``power cuts: N, calls that showed calling: M, delivered after reboot: D,
lost: L``; exit status 1 on any loss or failed run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HIL_DIR = Path(__file__).resolve().parent
REPO = HIL_DIR.parent
sys.path.insert(0, str(HIL_DIR))
# the same image, mount point and knobs as the outbox run
from powercut import IMAGE_MB, MOUNT, Settings, fresh_image  # noqa: E402

BOOT_TIMEOUT_S = 240.0
POLL_S = 0.002

# POWERCUT_FAULT=nosync: fsync and fdatasync that do nothing, for the agent's process only.
NOSYNC_C = """\
int fsync(int fd) { (void)fd; return 0; }
int fdatasync(int fd) { (void)fd; return 0; }
"""


@dataclass
class Boot:
    lines: list[str]
    rc: int
    seen_at: float | None = None  # when this script read the CALLING line
    cut_at: float | None = None  # when it sent the power cut
    output: str = ""

    def words(self, word: str) -> list[list[str]]:
        return [line.split()[1:] for line in self.lines if line.split()[:1] == [word]]


@dataclass
class Tally:
    cuts: int = 0
    calling: int = 0
    delivered: int = 0
    lost: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def complete_lines(text: str) -> list[str]:
    """A line is reported once written whole; a torn last line (no newline) is not."""
    return text.split("\n")[:-1]


def boot(
    image: Path,
    workdir: Path,
    run: int,
    *,
    expect: list[str],
    final: bool,
    cut_ms: float | None,
    env_extra: dict[str, str],
) -> Boot:
    """One boot of powercut_agent.py; the power cut ``cut_ms`` after its CALLING line."""
    log = workdir / f"report-{run:03d}.log"
    cmd = [str(HIL_DIR / "run-in-uml.sh"), sys.executable, str(HIL_DIR / "powercut_agent.py")]
    cmd += [MOUNT, str(run), str(log)]
    cmd += (["--expect", ",".join(expect)] if expect else []) + (["--final"] if final else [])
    env = dict(os.environ, HIL_UBD0=str(image), HIL_UBD0_MOUNT=MOUNT, HIL_TIMEOUT="300")
    env.update(env_extra)
    passed = "POWERCUT_FAULT POWERCUT_DELIVER_S POWERCUT_NOSYNC_LIB"
    env["HIL_PASS_ENV"] = (env.get("HIL_PASS_ENV", "") + " " + passed).strip()
    log.touch()
    result = Boot([], 0)
    with (
        open(workdir / f"output-{run:03d}.txt", "wb") as out,
        open(log, "rb") as report,
    ):
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        text = ""
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while proc.poll() is None:
            text += report.read().decode(errors="replace")
            if result.seen_at is None and any(
                line.startswith("CALLING ") for line in complete_lines(text)
            ):
                result.seen_at = time.monotonic()
                if cut_ms is not None:
                    time.sleep(max(0.0, result.seen_at + cut_ms / 1000 - time.monotonic()))
                    proc.send_signal(signal.SIGUSR1)  # the power cut
                    result.cut_at = time.monotonic()
                    break
            if time.monotonic() > deadline:
                proc.kill()
                break
            time.sleep(POLL_S)
        result.rc = proc.wait()
        text += report.read().decode(errors="replace")
    result.lines = complete_lines(text)
    result.output = (workdir / f"output-{run:03d}.txt").read_text(errors="replace")
    return result


def build_nosync(workdir: Path) -> Path:
    source = workdir / "nosync.c"
    source.write_text(NOSYNC_C)
    lib = workdir / "nosync.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(source)], check=True)
    return lib


def check_boot(b: Boot, run: int, expect: list[str], final: bool, tally: Tally) -> list[str]:
    """Judge one boot: the deliveries it owed, and (unless final) its call and its cut.
    Returns the calls that showed ``calling`` (owed by the next boot)."""
    delivered = {w[0]: float(w[1]) for w in b.words("DELIVERED")}
    for incident_id in expect:
        if incident_id in delivered:
            tally.delivered += 1
        else:
            tally.lost.append(incident_id)
    for word in ("NOT-UP", "NOT-READY", "NO-CALLING", "NOT-CUT", "LEAK"):
        for w in b.words(word):
            tally.failures.append(f"boot {run}: {word} {' '.join(w)}")
    if final:
        if b.rc != 0 or ["0"] not in b.words("AGENT-EXIT"):
            tally.failures.append(f"boot {run}: final boot exit {b.rc}, {b.words('AGENT-EXIT')}")
        return []
    calling = [w[0] for w in b.words("CALLING")]
    if b.rc != 137 or b.cut_at is None or not calling:
        tally.failures.append(f"boot {run}: no power cut after CALLING (exit {b.rc})")
        return []
    tally.cuts += 1
    tally.calling += len(calling)
    return calling


def main(argv: list[str]) -> int:
    expect_failure, seed, runs, window_ms, fault, keep = Settings.read(
        argv, "POWERCUT_CUT_MS", 50.0
    )
    rng = random.Random(seed)
    workdir, image = fresh_image("powercut-e2e.")
    env_extra = {}
    if fault == "nosync":
        env_extra["POWERCUT_NOSYNC_LIB"] = str(build_nosync(workdir))
    print(
        f"powercut (end to end): seed {seed}, {runs} runs, cut 0-{window_ms:.0f} ms after "
        f"CALLING, {IMAGE_MB} MiB ext4 on ubd0, broker held by a frozen link, "
        f"fault {fault or 'none'}",
        flush=True,
    )
    print(f"{'run':>3} {'cut ms':>6} {'sent ms':>7} {'boot s':>6}  {'incident':<38} the next boot")
    tally = Tally()
    started = time.monotonic()
    expect: list[str] = []
    row: str | None = None
    for run in range(1, runs + 2):
        final = run == runs + 1
        cut_ms = None if final else rng.uniform(0.0, window_ms)
        t0 = time.monotonic()
        b = boot(
            image, workdir, run, expect=expect, final=final, cut_ms=cut_ms, env_extra=env_extra
        )
        lost_before = len(tally.lost)
        failures_before = len(tally.failures)
        calling = check_boot(b, run, expect, final, tally)
        if row is not None:
            delivered = {w[0]: w[1] for w in b.words("DELIVERED")}
            outcome = ", ".join(
                f"delivered, {delivered[i]} s after start" if i in delivered else "LOST"
                for i in expect
            )
            print(f"{row} {outcome or '-'}", flush=True)
        if len(tally.lost) > lost_before:
            print(f"    lost: {' '.join(tally.lost[lost_before:])}", flush=True)
        for problem in tally.failures[failures_before:]:
            print(f"    {problem}\n{b.output[-2000:]}", flush=True)
        if final or not calling:
            break
        assert cut_ms is not None and b.cut_at is not None and b.seen_at is not None
        sent_ms = (b.cut_at - b.seen_at) * 1000
        boot_s = time.monotonic() - t0
        row = f"{run:>3} {cut_ms:>6.1f} {sent_ms:>7.1f} {boot_s:>6.1f}  {calling[0]:<38}"
        expect = calling
    fsck = subprocess.run(
        ["e2fsck", "-fn", str(image)], check=False, capture_output=True, text=True
    )
    print(
        f"e2fsck -fn after the last clean unmount: exit {fsck.returncode}"
        f"{' (clean)' if fsck.returncode == 0 else ': ' + fsck.stdout[-500:]}",
        flush=True,
    )
    if fsck.returncode != 0:
        tally.failures.append("e2fsck")
    bad = bool(tally.failures or tally.lost)
    if keep or (bad and not expect_failure):
        print(f"kept: {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"powercut: {time.monotonic() - started:.0f} s, seed {seed}, "
        f"{len(tally.failures)} failed run(s) or check(s)",
        flush=True,
    )
    print(
        f"power cuts: {tally.cuts}, calls that showed calling: {tally.calling}, "
        f"delivered after reboot: {tally.delivered}, lost: {len(tally.lost)}",
        flush=True,
    )
    if expect_failure:
        return 0 if tally.lost else 1
    return 1 if bad or tally.cuts < runs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
