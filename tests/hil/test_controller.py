"""The CAN bus as it really fails, on real SocketCAN: bus-off and restart reported by error
frames, the link taken down and up, during a call.

vcan has no controller, so the controller's own report is played from a raw socket: a frame
whose id carries CAN_ERR_FLAG (0x20000000) and the class (0x040 bus-off, 0x100 restarted),
written here with ``struct`` from linux/can/error.h, not with the agent's constants. The
kernel delivers it to sockets that set CAN_RAW_ERR_FILTER for that class, as it delivers a
real controller's. A controller that is bus-off hears nothing: the car is stopped meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import can
import pytest
from hilstack import Candump, Dumped, Stack, button_frame, cansend_arg, program, run

from hw_sim.matrix import CONNECT_BUTTON, ButtonState, LedMode
from hw_sim.scenario import VIN

pytestmark = pytest.mark.asyncio

CAN_FRAME = struct.Struct("=IB3x8s")  # struct can_frame
ERR_FLAG = 0x20000000
ERR_BUSOFF = 0x040
ERR_RESTARTED = 0x100
NOTHING_WINDOW_S = 3.0  # longer than hold_ms (2 s): a call would have started by then


def inject_error(channel: str, classes: int, controller: int = 0) -> None:
    """One error frame on ``channel``, as a controller's driver reports it (DLC 8)."""
    data = bytes([0, controller, 0, 0, 0, 0, 0, 0])
    with socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW) as sock:
        sock.bind((channel,))
        sock.send(CAN_FRAME.pack(ERR_FLAG | classes, 8, data))


def on_vcan(stack: Stack) -> str:
    """The channel, if it is a vcan: an injected error frame must never go on a real wire."""
    channel = stack.settings.channel
    if not channel.startswith("vcan"):
        pytest.skip(f"injects controller error frames: needs a vcan, not {channel}")
    return channel


def changes(values: list[Any]) -> list[Any]:
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def led_mode(frame: Dumped) -> LedMode:
    return LedMode(frame.data[1] >> 4)


async def call_started(stack: Stack) -> str:
    """A hold on the car; the request reached the backend (which does not answer yet)."""
    stack.backend.auto_ack = None
    await stack.hold(2200)
    [received] = await stack.backend.wait_for("request", 1, timeout=15)
    incident: str = received.payload["incident_id"]
    await stack.wait_status("the call open", lambda s: s["open_incident"] == incident, 10)
    return incident


async def acknowledged_on_the_bus(stack: Stack, incident: str) -> None:
    """The backend answers now; the LED on the bus goes connected; nothing is pending."""
    candump = await Candump.start(stack.settings.channel, "3A2:7FF")
    try:
        await candump.next_frame(timeout=10)  # bound: it printed an LED frame
        stack.backend.ack(VIN, incident, "received")
        await candump.until(lambda f: led_mode(f) is LedMode.CONNECTED, timeout=15)
    finally:
        await candump.stop()
    await stack.wait_status(
        f"incident {incident} delivered",
        lambda s: s.get("open_incident") == incident and s.get("outbox_pending") == 0,
        timeout=15,
    )
    keys = {
        (r.payload["incident_id"], r.payload["sequence"]) for r in stack.backend.of_kind("request")
    }
    assert keys == {(incident, 1)}  # one call, re-sent at most, never a second one


async def last_button_counter_after_stopping_the_car(stack: Stack) -> int:
    """Stop the car; the alive counter of the last CONNECT_BUTTON frame it sent."""
    only_button = [{"can_id": CONNECT_BUTTON, "can_mask": 0x7FF, "extended": False}]
    bus = can.Bus(interface="socketcan", channel=stack.settings.channel, can_filters=only_button)
    try:
        await stack.wait_status("the button ok", lambda s: s["button"] == "ok", 10)
        last = await asyncio.to_thread(bus.recv, 5.0)  # the socket is bound: a frame came
        await stack.stop_car()
        while (message := bus.recv(0)) is not None:
            last = message
    finally:
        bus.shutdown()
    assert last is not None, "no CONNECT_BUTTON frame seen"
    return last.data[1] & 0x0F


@pytest.mark.hil_socketcan
@pytest.mark.hil_sim_roof
async def test_bus_off_during_a_call_then_restarted_resets_e2e_and_the_call_is_delivered(
    stack: Stack,
) -> None:
    channel = on_vcan(stack)
    incident = await call_started(stack)
    counter = await last_button_counter_after_stopping_the_car(stack)
    first = len(stack.statuses())

    inject_error(channel, ERR_BUSOFF)
    off = await stack.wait_status("can bus_off", lambda s: s["can"] == "bus_off", 10)
    assert off["open_incident"] == incident  # the stored call stays open
    await stack.wait_status("the button silent", lambda s: s["button"] == "silent", 10)
    assert stack.status()["can"] == "bus_off"  # nothing heard ended it

    inject_error(channel, ERR_RESTARTED)  # what the kernel sends after restart-ms
    await stack.wait_status("can ok", lambda s: s["can"] == "ok", 10)
    assert changes([s["can"] for s in stack.statuses()[first:]]) in (
        ["bus_off", "ok"],
        ["ok", "bus_off", "ok"],  # the button's silence published first
    )

    # The roof module's next frame repeats the alive counter of the last one heard before
    # the bus-off (16 frames went by, say): after a recovery that is no error.
    restarted = len(stack.statuses())
    cansend = program("cansend")
    released = button_frame(ButtonState.RELEASED, counter)
    await run(cansend, channel, cansend_arg(CONNECT_BUTTON, released))
    await run(cansend, channel, "3B0#00")  # a marker: a VEHICLE_STATUS with a wrong DLC
    counters = await stack.wait_counters("the marker", lambda c: c.get("can_bad_dlc", 0) >= 1)
    assert "can_repeated_counter" not in counters, counters
    assert "ok" in [s["button"] for s in stack.statuses()[restarted:]]  # the frame was taken
    assert counters["e2e_resets"] == 1
    assert counters["bus_off_episodes"] == 1
    assert counters["can_restarts"] == 1
    assert counters["can_err_bus_off"] == 1
    assert counters["can_err_restarted"] == 1
    assert "bus_failures" not in counters  # a bus-off is not a socket failure

    await stack.start_car()
    await stack.wait_status("the button back", lambda s: s["button"] == "ok", 10)
    await acknowledged_on_the_bus(stack, incident)


@pytest.mark.hil_socketcan
@pytest.mark.hil_sim_roof
async def test_a_hold_cut_by_a_bus_off_is_a_release_not_a_call(stack: Stack) -> None:
    """SPEC §2: no valid frame for 500 ms is a released button, whatever the driver does."""
    channel = on_vcan(stack)
    car = stack.car
    assert car is not None
    only_button = [{"can_id": CONNECT_BUTTON, "can_mask": 0x7FF, "extended": False}]
    bus = can.Bus(interface="socketcan", channel=channel, can_filters=only_button)
    try:
        await car.write("hold 4000\n")

        def pressed() -> bool:
            while (message := bus.recv(0.5)) is not None:
                if (message.data[1] >> 4) & 0x3 == ButtonState.PRESSED:  # byte 1 bits 4-5
                    return True
            return False

        assert await asyncio.to_thread(pressed), "the car never sent a pressed button"
    finally:
        bus.shutdown()
    await stack.stop_car()  # the agent's controller goes bus-off mid-hold: it hears nothing
    inject_error(channel, ERR_BUSOFF)
    await stack.wait_status("can bus_off", lambda s: s["can"] == "bus_off", 10)
    await stack.wait_status("the button silent", lambda s: s["button"] == "silent", 10)
    with pytest.raises(TimeoutError):
        await stack.backend.wait_for("request", 1, timeout=NOTHING_WINDOW_S)

    inject_error(channel, ERR_RESTARTED)
    await stack.start_car()
    await stack.wait_status(
        "can and button ok", lambda s: (s["can"], s["button"]) == ("ok",) * 2, 10
    )
    assert stack.backend.of_kind("request") == []
    await stack.hold(2200)  # and a hold after the recovery calls
    await stack.backend.wait_for("request", 1, timeout=15)


@pytest.mark.hil_socketcan
@pytest.mark.hil_link_control
@pytest.mark.hil_press
async def test_link_down_and_up_during_a_call_the_call_is_delivered(stack: Stack) -> None:
    channel = stack.settings.channel
    ip = program("ip")
    incident = await call_started(stack)
    first = len(stack.statuses())
    try:
        await run(ip, "link", "set", "dev", channel, "down")
        down = await stack.wait_status("can down", lambda s: s["can"] == "down", 10)
        assert down["open_incident"] == incident
        await stack.wait_status("the button silent", lambda s: s["button"] == "silent", 10)
    finally:
        await run(ip, "link", "set", "dev", channel, "up")
    await stack.wait_status(
        "the bus and the button back", lambda s: (s["can"], s["button"]) == ("ok", "ok"), 15
    )
    assert changes([s["can"] for s in stack.statuses()[first:]]) in (
        ["down", "ok"],
        ["ok", "down", "ok"],
    )
    counters = stack.status()["counters"]
    assert counters["e2e_resets"] >= 1
    assert counters["bus_failures"] >= 1
    assert "can_repeated_counter" not in counters
    await acknowledged_on_the_bus(stack, incident)
