"""A wrong wall clock for one child process: an ``LD_PRELOAD`` shim built at test time.

``tests/clockshift.c`` shifts ``CLOCK_REALTIME`` (and ``_COARSE``, ``CLOCK_TAI``),
``gettimeofday()`` and ``time()`` by the offset in a file, and leaves ``CLOCK_MONOTONIC`` and
``CLOCK_BOOTTIME`` alone: a board whose RTC-less clock says 2001, or jumps, while its
monotonic clocks run on. Debian's libfaketime cannot do that for Python 3.11 (with the
monotonic clock left real, ``time.sleep()`` fails with "Invalid argument", upstream issue
#426; faked as well, thread waits hang). The offset file is read again every 50 ms, so
rewriting it makes the running process's wall clock jump.

:func:`build` compiles the shim with gcc (skipped without it, failed under CI) and checks it
with a probe process before anything trusts it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from peers import require

SOURCE = Path(__file__).resolve().with_name("clockshift.c")

PROBE = """
import json, threading, time
wall, mono = time.time(), time.monotonic()
time.sleep(0.05)
threading.Event().wait(0.05)
print(json.dumps({"wall": wall, "mono": mono, "slept": time.monotonic() - mono}))
"""


class ShiftedClock:
    """The offset file one or more children read; :meth:`env` is what a child needs."""

    def __init__(self, library: Path, offset_file: Path) -> None:
        self.library = library
        self.offset_file = offset_file
        self.set_offset(0.0)

    def set_offset(self, seconds: float) -> None:
        """Children see real time + ``seconds`` within 50 ms (written whole, then renamed)."""
        partial = self.offset_file.with_suffix(".new")
        partial.write_text(f"{seconds:.6f}\n")
        partial.replace(self.offset_file)
        self.offset = seconds

    def set_wall(self, moment: datetime) -> None:
        """The children's wall clock says ``moment`` now, and runs on from there."""
        self.set_offset(moment.timestamp() - time.time())

    def jump(self, seconds: float) -> None:
        self.set_offset(self.offset + seconds)

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(self.library), "CLOCKSHIFT_FILE": str(self.offset_file)}


def build(directory: Path) -> ShiftedClock:
    """Compile the shim into ``directory`` and prove it with a probe process."""
    gcc = require("gcc")
    library = directory / "clockshift.so"
    subprocess.run(
        [gcc, "-O2", "-shared", "-fPIC", "-Wall", "-Werror", "-o", library, SOURCE, "-ldl"],
        check=True,
        capture_output=True,
    )
    clock = ShiftedClock(library, directory / "clockshift.offset")
    clock.set_offset(-86400.0 * 365)
    before = time.time()
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **clock.env()},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    probe = json.loads(result.stdout)
    shifted = probe["wall"] - before
    if not -86400.0 * 365 - 30 < shifted < -86400.0 * 365 + 30:
        raise AssertionError(f"the shim did not shift the wall clock: {shifted:.0f} s")
    if abs(probe["mono"] - time.monotonic()) > 30 or not 0.1 <= probe["slept"] < 5:
        raise AssertionError(f"the shim disturbed the monotonic clock: {probe}")
    clock.set_offset(0.0)
    return clock
