"""Reading a TOML file that may be anything: it never blocks, never reads without bound, and
every failure is one :class:`~agent.errors.ConfigError` line naming the file.

Used for the configuration file and for the coverage profile it names.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

MAX_FILE_BYTES = 1 << 20  # a real configuration is a few KiB, a coverage profile too


def read_bytes(path: Path, *, label: str = "", missing: str | None = None) -> bytes:
    """The file's bytes; never blocks (a FIFO) and never reads more than MAX_FILE_BYTES.

    Errors read ``<path>: cannot read<label>: <why>``; ``missing`` replaces that text when the
    file does not exist.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        if missing is not None:
            raise ConfigError(f"{path}: {missing}") from None
        raise ConfigError(f"{path}: cannot read{label}: {exc.strerror}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read{label}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ConfigError(f"{path}: cannot read{label}: {kind}")
        data = os.read(fd, MAX_FILE_BYTES + 1)  # one byte more tells "too large"
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read{label}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: too large (more than {MAX_FILE_BYTES} bytes)")
    return data


def parse_toml(
    path: Path, data: bytes, then: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The document's tables as tomllib gives them, passed through ``then`` if given (inside
    the guard: a deeply nested document may exhaust the recursion limit there too)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        document = tomllib.loads(text)
        return document if then is None else then(document)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, in document order.

    Recursive: pass it to :func:`parse_toml` as ``then``, inside the guard.
    """
    flat: dict[str, Any] = {}
    for name, value in table.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
