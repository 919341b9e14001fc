"""Real peers for tests: find their programs, free loopback ports, wait for them to listen.

A test that needs a real peer program (mosquitto, gpsd, gpsfake) calls :func:`require`.
Without the program it is skipped on a developer's machine and fails under CI (``CI`` set),
so a green CI always means the real-peer tests ran.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hw_sim.mosquitto import free_port

__all__ = [
    "ext4_on_loop",
    "fill",
    "free_port",
    "require",
    "tmpfs",
    "under_ci",
    "wait_listening",
]


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require(program: str) -> str:
    """Return the path of ``program``; skip (or fail under CI) when it is not installed."""
    for directory in ("", "/usr/sbin/", "/sbin/"):
        path = shutil.which(directory + program) if directory else shutil.which(program)
        if path:
            return path
    message = f"real peer {program!r} is not installed (apt-get install it; .ci/run does)"
    unavailable(message)


def unavailable(message: str) -> None:
    """Skip on a developer's machine; fail under CI, where every real peer must be there."""
    if under_ci():
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A real, tiny filesystem of its own at ``directory`` (root and mount(8) needed)."""
    directory.mkdir()
    mounted = (
        os.geteuid() == 0
        and not subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
            check=False,
        ).returncode
    )
    if not mounted:
        unavailable("needs root and mount(8) for a real filesystem")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


@contextlib.contextmanager
def ext4_on_loop(directory: Path, image: Path) -> Iterator[str]:
    """A real ext4 on a loop device, ``errors=remount-ro`` as a car's eMMC is mounted; yields
    the device's name under /sys/fs/ext4."""
    directory.mkdir()
    if os.geteuid() != 0:
        unavailable("needs root for a loop device")
    losetup = require("losetup")
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run([require("mkfs.ext4"), "-q", "-F", str(image)], check=True)
    device = subprocess.run(
        [losetup, "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", "-o", "errors=remount-ro", device, str(directory)], check=True)
        try:
            yield Path(device).name
        finally:
            subprocess.run(["umount", "-l", str(directory)], check=False)
    finally:
        subprocess.run([losetup, "-d", device], check=False)


def fill(directory: Path) -> None:
    """Write a file in ``directory`` until its filesystem is full."""
    with contextlib.suppress(OSError), (directory / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


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
