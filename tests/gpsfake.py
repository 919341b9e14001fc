"""Real gpsd for tests: ``gpsfake`` starts gpsd on a free port and feeds it NMEA through a pty.

gpsfake (Debian package gpsd-clients) runs ``gpsd -N -S <port>`` as its child, opens a
pseudo-terminal as the fake receiver and, once a client has connected, writes the log's
sentences into it, ``cycle`` seconds apart, looping over the log until stopped. Without
gpsfake or gpsd the test is skipped on a developer's machine and fails under CI
(:func:`peers.require`).

Use :func:`gpsfake_gpsd` as a context manager (or through a pytest fixture); it yields
``(host, port)`` and stops gpsfake and its gpsd on exit, whatever happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from peers import free_port, require, wait_listening

HOST = "127.0.0.1"


@contextmanager
def gpsfake_gpsd(
    nmea: str, workdir: Path, *, cycle: float = 0.02, startup_timeout: float = 10.0
) -> Iterator[tuple[str, int]]:
    """Run gpsd fed with ``nmea`` (looped) by gpsfake; yield ``(host, port)``.

    ``workdir`` holds the log, gpsfake's output and its control socket (gpsfake puts that
    in ``$TMPDIR`` and does not always remove it).
    """
    program = require("gpsfake")
    require("gpsd")  # gpsfake looks for it on PATH and /usr/sbin
    log = workdir / "gpsfake.nmea"
    log.write_text(nmea, encoding="ascii")
    output = workdir / "gpsfake.out"
    port = free_port()
    command = [program, "-q", "-P", str(port), "-c", str(cycle), str(log)]
    env = {**os.environ, "TMPDIR": str(workdir)}
    with output.open("wb") as sink:
        # Its own session, so that gpsfake and the gpsd it spawned can be stopped as a group.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
        try:
            try:
                wait_listening(port, timeout=startup_timeout, host=HOST)
            except TimeoutError:
                raise RuntimeError(
                    f"gpsd under gpsfake did not listen on {HOST}:{port}: "
                    + output.read_text(errors="replace")[-2000:]
                ) from None
            yield HOST, port
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to gpsfake (it then terminates its gpsd), SIGKILL to the group if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)
    # gpsd, gpsfake's child, in the session started for them; gone already if gpsfake stopped
    # it (the group then no longer exists).
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=5.0)
