"""The coverage profile file: read safely, then parsed from values by the pure core."""

from __future__ import annotations

from pathlib import Path

from agent.config.files import parse_toml, read_bytes
from agent.core.coverage_profile import CoverageProfile, parse_profile


def load_profile(path: Path) -> CoverageProfile:
    """Read a coverage profile; any problem raises ``ConfigError`` naming file, key, expectation.

    Never blocks or crashes: a FIFO, a directory, binary bytes, a huge or deeply nested file
    each give one line, as for the configuration file itself.
    """
    path = Path(path)
    return parse_profile(parse_toml(path, read_bytes(path, label=" the coverage profile")), path)
