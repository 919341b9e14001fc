"""``make fleet`` in small: 20 simulated cars, real Mosquitto, a real 3-node NATS cluster, one kill.

The fleet runs as ``python -m bench.fleet`` does under ``make fleet``; its oracle is the backend
simulator (paho, not the cars' codec), which must have received every request and cancel the
cars sent. The same run with the cars' re-sending switched off must report a loss: the kill
comes before the PUBACK of the calls written just before it, so the check can fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from peers import require

REPO = Path(__file__).resolve().parent.parent
TINY = ["--cars", "20", "--kills", "1", "--quick", "--storm-window", "2", "--outage", "1"]


def fleet(*extra: str) -> subprocess.CompletedProcess[str]:
    require("mosquitto")
    require("nats-server")
    return subprocess.run(
        [sys.executable, "-m", "bench.fleet", *TINY, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def last_line(run: subprocess.CompletedProcess[str]) -> str:
    lines = run.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def test_a_tiny_fleet_loses_nothing_when_a_node_dies() -> None:
    run = fleet()
    assert last_line(run) == "failover: 1 node kills, lost: 0", run.stdout + run.stderr
    assert run.returncode == 0
    assert "reconnect after Mosquitto restart" in run.stdout
    assert "keep-alive 300 s" in run.stdout


def test_without_resending_the_check_reports_the_loss() -> None:
    run = fleet("--no-resend", "--settle", "15")  # what is lost does not come later
    line = last_line(run)
    assert line.startswith("failover: 1 node kills, lost: "), run.stdout + run.stderr
    assert int(line.rsplit(" ", 1)[1]) > 0, run.stdout
    assert run.returncode == 1
