"""``hw-sim demo`` (``make demo``, the README's first command) runs the whole loop and exits 0;
``connect-agent`` has no demo (the daemon does not carry its simulators)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.cli import main as agent_main

HW_SIM = [sys.executable, "-c", "import sys; from hw_sim.cli import main; sys.exit(main())"]


def test_hw_sim_demo_delivers_a_valid_request_on_the_embedded_broker() -> None:
    done = subprocess.run(
        [*HW_SIM, "demo", "--embedded-broker"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "schema:  valid" in done.stdout
    assert "LED:     off -> ready -> calling -> connected -> ready" in done.stdout
    assert done.stdout.rstrip().endswith("demo: OK")


def test_connect_agent_has_no_demo(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        agent_main(["demo"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'demo'" in capsys.readouterr().err
