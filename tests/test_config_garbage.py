"""Config never crashes: any file, any bytes give a one-line error naming the file, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import config
from agent.errors import ConfigError

GARBAGE: dict[str, bytes] = {
    "binary": bytes(range(256)) * 4,
    "invalid-utf8": b'[mqtt]\nhost = "\xff\xfe broker"\n',
    "nested-arrays": b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "nested-tables": b"[" + b".".join(b"a" for _ in range(5_000)) + b"]\nx = 1\n",
    "ten-megabytes": b"# " + b"x" * (10 * 1024 * 1024) + b"\n",
    "nul": b"\x00\x00\x00",
}


def _check_config(path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *command, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _assert_one_line_error(result: subprocess.CompletedProcess[str], path: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_file(tmp_path: Path, kind: str, command: str) -> None:
    path = tmp_path / f"{kind}.toml"
    path.write_bytes(GARBAGE[kind])
    _assert_one_line_error(_check_config(path, command), path)


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_directory_and_fifo(tmp_path: Path, command: str) -> None:
    directory = tmp_path / "dir.toml"
    directory.mkdir()
    _assert_one_line_error(_check_config(directory, command), directory)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # nobody writes to it: opening it for a blocking read would hang
    _assert_one_line_error(_check_config(fifo, command), fifo)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text("[mqtt]\n")
    path.chmod(0)
    # As root a mode-000 file is still readable; run the loader as an unprivileged user then.
    if os.geteuid() == 0:
        tmp_path.chmod(0o755)
        runner = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    else:
        runner = []
    result = subprocess.run(
        [*runner, sys.executable, "-m", "agent", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    _assert_one_line_error(result, path)
    assert "Permission denied" in result.stderr


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2048))
def test_random_bytes_never_crash(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=str(path)):
        config.load(path, environ={})


_scalars = st.one_of(
    st.text(max_size=40), st.integers(), st.floats(allow_nan=True), st.booleans(), st.dates()
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_sections = st.sampled_from(["can", "button", "mqtt", "vehicle", "contact", "state", "gpsd", "x"])
_keys = st.sampled_from(["host", "port", "vin", "name", "hold_ms", "directory", "dbc", "tls", "zz"])


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # inf and nan are TOML too
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (
            f'"{k.encode("unicode_escape").decode("ascii")}" = {_toml_value(v)}'
            for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    return str(value)  # a date


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(doc=st.dictionaries(_sections, st.dictionaries(_keys, _values, max_size=5), max_size=6))
def test_random_toml_never_crashes(tmp_path: Path, doc: dict[str, dict[str, object]]) -> None:
    text = "".join(
        f"[{section}]\n" + "".join(f"{key} = {_toml_value(v)}\n" for key, v in table.items())
        for section, table in doc.items()
    )
    path = tmp_path / "random.toml"
    path.write_text(text)
    try:
        config.load(path, environ={})
    except ConfigError as exc:
        assert str(path) in str(exc)


# -- the coverage profile the file names: the same safe reader, one line naming both files ----

DBC = Path(__file__).resolve().parent.parent / "config" / "connect.dbc"


def _config_naming(tmp_path: Path, profile: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[can]\ndbc = "{DBC}"\n[mqtt]\nhost = "127.0.0.1"\ntls = false\nallow_insecure = true\n'
        '[vehicle]\nvin = "YSMFD3KA5PL012345"\n[contact]\nname = "A"\nphone = "+41 79 123 45 67"\n'
        f'[state]\ndirectory = "state"\n[coverage]\nprofile = "{profile}"\n'
    )
    return path


PROFILE_GARBAGE = {k: GARBAGE[k] for k in ("binary", "invalid-utf8", "nested-arrays", "nul")}


@pytest.mark.parametrize("kind", [*sorted(PROFILE_GARBAGE), "fifo", "directory", "huge"])
def test_garbage_coverage_profile(tmp_path: Path, kind: str) -> None:
    profile = tmp_path / f"{kind}.profile.toml"
    if kind == "fifo":
        os.mkfifo(profile)  # nobody writes to it: a blocking open would hang check-config
    elif kind == "directory":
        profile.mkdir()
    elif kind == "huge":
        profile.write_bytes(GARBAGE["ten-megabytes"])
    else:
        profile.write_bytes(PROFILE_GARBAGE[kind])
    path = _config_naming(tmp_path, profile)
    result = _check_config(path, "check-config")
    _assert_one_line_error(result, path)
    assert f"key 'coverage.profile': {profile}: " in result.stderr


def test_a_long_bad_value_is_echoed_cut(tmp_path: Path) -> None:
    path = _config_naming(tmp_path, tmp_path / "unused.toml")
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={}, overrides={"mqtt.host": "bad host " * 10_000})
    message = str(info.value)
    assert message.startswith(f"{path}: key 'mqtt.host': expected a host name")
    assert message.endswith("…") and len(message) < len(str(path)) + 200
