"""A slow, lossy path made by the kernel: ``tc`` netem on loopback, for one TCP port only.

Only inside a kernel the caller started itself (the UML machine of ``hil/run-in-uml.sh``):
netem on a real host's loopback would slow every other process on it. ``port_netem(port,
spec)`` sends every packet to or from ``port`` on ``lo`` through ``netem spec`` (for example
``"delay 200ms loss 20%"``) and leaves all other loopback traffic alone: the car's link is
lossy, the broker's link to the backend is not. TCP then retransmits as the kernel does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path


def in_uml() -> bool:
    """True inside a User-Mode Linux kernel."""
    with contextlib.suppress(OSError):
        return "UML" in Path("/proc/cpuinfo").read_text() or os.uname().release.endswith("um")
    return False


async def tc(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "tc", *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"tc {' '.join(argv)}: exit {process.returncode}: {text.strip()}")
    return text


async def change_netem(spec: str, device: str = "lo") -> None:
    """Change the netem that :func:`port_netem` put on ``device`` (e.g. ``"loss 100%"`` for a
    blackout and back), in place: the port's connections stay open."""
    await tc(
        "qdisc", "change", "dev", device, "parent", "1:3", "handle", "30:", "netem", *spec.split()
    )


@contextlib.asynccontextmanager
async def port_netem(port: int, spec: str, device: str = "lo") -> AsyncIterator[None]:
    """Packets to or from TCP ``port`` on ``device`` go through ``netem spec``; removed after.
    One at a time per device; :func:`change_netem` changes it while it is on."""
    if not in_uml():
        raise RuntimeError("netem on loopback only inside the UML kernel (hil/run-in-uml.sh)")
    # a prio qdisc whose every priority maps to band 1:2 (untouched); the filters move the
    # port's packets, both directions, into band 1:3, which holds the netem
    root = ["dev", device, "root", "handle", "1:"]
    await tc("qdisc", "add", *root, "prio", "bands", "3", "priomap", *["1"] * 16)
    try:
        band = ["dev", device, "parent", "1:3", "handle", "30:"]
        await tc("qdisc", "add", *band, "netem", *spec.split())
        for field in ("dport", "sport"):
            match = ["u32", "match", "ip", field, str(port), "0xffff", "flowid", "1:3"]
            await tc("filter", "add", "dev", device, "parent", "1:", "protocol", "ip", *match)
        yield
    finally:
        await tc("qdisc", "del", "dev", device, "root")
