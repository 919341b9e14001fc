"""Under systemd (JOURNAL_STREAM set) log lines carry the syslog priority journald reads."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import logging, sys
from agent.cli import setup_logging
setup_logging("DEBUG")
log = logging.getLogger("agent.probe")
log.debug("d"); log.info("i"); log.warning("w"); log.error("e"); log.critical("c")
log.warning("two\\nlines")
"""


def _run(journal: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal:
        env["JOURNAL_STREAM"] = "8:12345"
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stderr.splitlines()


def test_priorities_prefixed_under_journald() -> None:
    lines = _run(journal=True)
    assert lines == [
        "<7>agent.probe: d",
        "<6>agent.probe: i",
        "<4>agent.probe: w",
        "<3>agent.probe: e",
        "<2>agent.probe: c",
        "<4>agent.probe: two",
        "<4>lines",
    ]


def test_no_prefix_on_a_terminal() -> None:
    lines = _run(journal=False)
    assert len(lines) == 7
    assert not any(line.startswith("<") for line in lines)
    assert "WARNING agent.probe: w" in lines[2]
