"""The UART roof module on a pseudo-terminal of the kernel the suite runs (issue 16):
``hw-sim serial-button`` on a pty, ``connect-agent run`` with ``button.source = "serial"``
reading it, a hold made on the module, and the LED the agent sends back shown by it.
"""

from __future__ import annotations

import asyncio

import pytest
from hilstack import Child, Stack, program

pytestmark = pytest.mark.asyncio


async def test_a_hold_on_the_serial_roof_module_over_a_pty(stack: Stack) -> None:
    assert await stack.stop_agent() == 0  # the fixture's agent reads the CAN button
    link = stack.directory / "ttyCONNECT"
    module = await Child.spawn(
        "hw-sim serial-button",
        [program("hw-sim"), "serial-button", "--link", str(link)],
        log=stack.directory / "serial.log",
        stdin=True,
    )
    try:
        await module.line("serial button module on", timeout=30)
        serial = f'\n[button]\nsource = "serial"\n\n[serial]\nport = "{link}"\n'
        text = await asyncio.to_thread(stack.config_path.read_text)
        await asyncio.to_thread(stack.config_path.write_text, text + serial)
        await stack.start_agent()
        await stack.wait_status(
            "online with the serial module's button",
            lambda s: s.get("state") == "online" and s.get("button") == "ok",
            timeout=40,
        )
        await module.line("LED ready", timeout=20)
        await module.write("hold 2200\n")
        await module.line("held 2200 ms", timeout=20)
        [request] = await stack.backend.wait_for("request", 1, timeout=20)
        assert request.payload["trigger"]["source"] == "serial"
        assert request.payload["trigger"]["held_ms"] >= 2000
        if "LED connected" not in module.lines:  # it may come while the hold still runs
            await module.line("LED connected", timeout=30)
        assert stack.backend.invalid == []
    finally:
        await module.stop()
