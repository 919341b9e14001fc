"""The whole agent on storage a car really has (issue 14): calls get through whatever the state
filesystem does, and the status says where the outbox keeps them. Real faults only: a path
that cannot be a directory, a real tmpfs mounted and filled, a real remount read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.frames import LedMode
from hw_sim.gpsd import FakeGpsd
from hw_sim.mosquitto import Mosquitto
from hw_sim.scenario import VIN, Scenario

pytestmark = pytest.mark.asyncio


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = "64k") -> Iterator[Path]:
    """A real, tiny filesystem of its own (root and mount(8) needed, as in CI)."""
    directory.mkdir()
    mounted = (
        os.geteuid() == 0
        and not subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
            check=False,
        ).returncode
    )
    if not mounted:
        pytest.skip("needs root and mount(8) for a real filesystem")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> None:
    with contextlib.suppress(OSError), (directory / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


async def call_gets_through(sim: Scenario) -> None:
    await sim.led.wait_for(LedMode.READY, timeout=15)
    await sim.car.hold(2100)
    [request] = await sim.backend.wait_for("request", 1, timeout=15)
    await sim.led.wait_for(LedMode.CONNECTED, timeout=15)
    assert request.payload["incident_id"] == sim.agent.calls[0].incident_id


async def test_a_state_path_that_cannot_be_a_directory_runs_from_memory(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    (tmp_path / "state").write_text("")  # a regular file where the directory should be
    async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port) as sim:
        await call_gets_through(sim)
        await sim.backend.wait_status(VIN, "storage", "memory", timeout=10)
        assert sim.agent.outbox.counters["open_errors"] == 1


async def test_a_full_state_filesystem_at_start_runs_from_memory(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    with tmpfs(tmp_path / "state") as state:
        fill(state)
        async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port) as sim:
            await call_gets_through(sim)
            assert sim.agent.outbox.storage == "memory"
            await sim.backend.wait_status(VIN, "storage", "memory", timeout=10)
            assert not list(state.glob("*.corrupt-*"))  # full is not damaged


@contextlib.contextmanager
def ext4(directory: Path, image: Path) -> Iterator[str]:
    """A real ext4 on a loop device, ``errors=remount-ro`` as a car's eMMC is mounted; yields
    the device's name under /sys/fs/ext4."""
    directory.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root for a loop device")
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", "-o", "errors=remount-ro", device, str(directory)], check=True)
        try:
            yield Path(device).name
        finally:
            subprocess.run(["umount", "-l", str(directory)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


async def test_a_state_filesystem_that_goes_read_only_while_running(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    """What ext4 does on an I/O error with errors=remount-ro (the kernel's own error path,
    triggered through sysfs): every write fails with EROFS; the call still goes out."""
    with ext4(tmp_path / "state", tmp_path / "state.img") as device:
        async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port) as sim:
            await sim.led.wait_for(LedMode.READY, timeout=15)
            assert sim.agent.outbox.storage == "disk"
            trigger = Path(f"/sys/fs/ext4/{device}/trigger_fs_error")
            await asyncio.to_thread(trigger.write_text, "test: flash failed\n")
            await call_gets_through(sim)
            assert sim.agent.outbox.counters["write_errors"] >= 1
            await sim.backend.wait_status(VIN, "storage", "memory", timeout=10)
            assert not list((tmp_path / "state").glob("*.corrupt-*"))
