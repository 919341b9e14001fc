"""Real peers for tests: find their programs, free loopback ports, wait for them to listen.

A test that needs a real peer program (mosquitto, gpsd, gpsfake) calls :func:`require`.
Without the program it is skipped on a developer's machine and fails under CI (``CI`` set),
so a green CI always means the real-peer tests ran.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest

from hw_sim.mosquitto import free_port

__all__ = ["free_port", "require", "under_ci", "wait_listening"]


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require(program: str) -> str:
    """Return the path of ``program``; skip (or fail under CI) when it is not installed."""
    for directory in ("", "/usr/sbin/", "/sbin/"):
        path = shutil.which(directory + program) if directory else shutil.which(program)
        if path:
            return path
    message = f"real peer {program!r} is not installed (apt-get install it; .ci/run does)"
    if under_ci():
        pytest.fail(message)
    pytest.skip(message)


def wait_listening(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.02)
