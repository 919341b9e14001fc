"""The whole agent on storage a car really has (issue 14): calls get through whatever the state
filesystem does, and the status says where the outbox keeps them. Real faults only: a path
that cannot be a directory, a real tmpfs mounted and filled, a real remount read-only.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from peers import ext4_on_loop, fill, tmpfs

from agent.core.frames import LedMode
from hw_sim.gpsd import FakeGpsd
from hw_sim.mosquitto import Mosquitto
from hw_sim.scenario import VIN, Scenario

pytestmark = pytest.mark.asyncio


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
    with tmpfs(tmp_path / "state", "64k") as state:
        fill(state)
        async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port) as sim:
            await call_gets_through(sim)
            assert sim.agent.outbox.storage == "memory"
            await sim.backend.wait_status(VIN, "storage", "memory", timeout=10)
            assert not list(state.glob("*.corrupt-*"))  # full is not damaged


async def test_a_state_filesystem_that_goes_read_only_while_running(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    """What ext4 does on an I/O error with errors=remount-ro (the kernel's own error path,
    triggered through sysfs): every write fails with EROFS; the call still goes out."""
    with ext4_on_loop(tmp_path / "state", tmp_path / "state.img") as device:
        async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port) as sim:
            await sim.led.wait_for(LedMode.READY, timeout=15)
            assert sim.agent.outbox.storage == "disk"
            trigger = Path(f"/sys/fs/ext4/{device}/trigger_fs_error")
            await asyncio.to_thread(trigger.write_text, "test: flash failed\n")
            await call_gets_through(sim)
            assert sim.agent.outbox.counters["write_errors"] >= 1
            await sim.backend.wait_status(VIN, "storage", "memory", timeout=10)
            assert not list((tmp_path / "state").glob("*.corrupt-*"))


async def test_pages_overwritten_while_running_with_calls_before_and_after(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    """Flash that corrupts under a running agent: the maintenance check (every 60 s; run at
    once here) finds it, the file is replaced, and the calls on both sides get through."""
    async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port, auto_ack="closed") as sim:
        await sim.car.hold(2100)  # the first call, closed by the backend at once
        await sim.backend.wait_for("request", 1, timeout=15)
        await sim.agent.wait_until(lambda: sim.agent.incidents.incident is None, 15)
        await sim.agent.wait_until(lambda: sim.agent.outbox.count() == 0, 15)
        db = sim.agent.outbox.db
        db.execute("CREATE INDEX damage_me ON messages (topic, payload)")
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name='damage_me'").fetchone()
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with (tmp_path / "state" / "outbox.sqlite3").open("r+b") as f:
            f.seek((root[0] - 1) * page_size)
            f.write(b"\xde\xad" * 32)
        assert sim.agent.outbox.check() is False
        await sim.car.hold(2100)  # the second call, into the new file
        requests = await sim.backend.wait_for("request", 2, timeout=15)
        assert len({r.payload["incident_id"] for r in requests}) == 2
        counters = sim.agent._status("online")["counters"]
        assert counters["outbox_replaced_corrupt"] == 1
        assert sim.agent.outbox.storage == "disk"


async def test_the_state_directory_removed_under_a_running_agent(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    """A broker that does not answer keeps the call pending; the directory goes; the check
    moves the call into a new file; the broker comes back and the call is delivered."""
    async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port) as sim:
        await mosquitto.stop()
        await sim.car.hold(2100)
        await sim.led.wait_for(LedMode.CALLING, timeout=10)
        await asyncio.to_thread(subprocess.run, ["rm", "-rf", str(tmp_path / "state")], check=True)
        assert sim.agent.outbox.check() is False
        assert (tmp_path / "state" / "outbox.sqlite3").exists()
        await mosquitto.start()
        [request] = await sim.backend.wait_for("request", 1, timeout=20)
        assert request.payload["incident_id"] == sim.agent.calls[0].incident_id
        assert sim.agent._status("online")["counters"]["outbox_vanished"] == 1
