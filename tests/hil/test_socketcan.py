"""The agent on real SocketCAN: separate processes on one channel, peers over loopback.

``connect-agent run`` and ``hw-sim car`` are separate processes on the channel (vcan0 in
UML, or a rig's can0); Mosquitto and gpsd (gpsfake) are real; the backend simulator runs in
the test. Frames are also injected and watched with can-utils, and the kernel's own receive
lists are read from /proc/net/can. Run with ``make hil``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter

import can
import pytest
from hilstack import (
    EFF_FLAG,
    SIM_MATRIX,
    Candump,
    Dumped,
    Stack,
    button_frame,
    cansend_arg,
    drain,
    program,
    receive_lists,
    run,
    send,
    sniffer,
)

from agent.inputs.uds import RESPONSE_ID
from hw_sim.contract import errors as schema_errors
from hw_sim.gpsd import load_route
from hw_sim.matrix import (
    AGENT_RECEIVES,
    CONNECT_BUTTON,
    CONNECT_LED,
    ButtonState,
    LedMode,
    e2e_crc,
)
from hw_sim.scenario import CONTACT, VEHICLE, VIN

pytestmark = pytest.mark.asyncio

NOTHING_WINDOW_S = 1.0  # how long "nothing more arrives" is watched for
BUTTON_PERIOD_S = 0.1  # the roof module's cycle (SPEC §2)

# The matrix frames the agent reads, and the gateway ECU's UDS answers.
AGENT_IDS = (*AGENT_RECEIVES, RESPONSE_ID)


def on_route(lat: float, lon: float, margin_deg: float = 0.01) -> bool:
    """Inside the bounding box of the route gpsfake replays (about a kilometre of margin)."""
    points = load_route().points
    lats = [p.lat for p in points]
    lons = [p.lon for p in points]
    return (
        min(lats) - margin_deg <= lat <= max(lats) + margin_deg
        and min(lons) - margin_deg <= lon <= max(lons) + margin_deg
    )


async def delivered(stack: Stack, incident_id: str) -> None:
    """The backend's ack came back: the call is open, acknowledged, nothing pending."""
    await stack.wait_status(
        f"incident {incident_id} delivered",
        lambda s: s.get("open_incident") == incident_id and s.get("outbox_pending") == 0,
        timeout=15,
    )


@pytest.mark.hil_press
async def test_a_hold_on_the_car_delivers_one_request_and_a_short_press_nothing(
    stack: Stack,
) -> None:
    await stack.car_command("battery 10.9")  # the gateway's frame, through the car's stdin
    await stack.hold(1500)
    await stack.hold(2200)
    [received] = await stack.backend.wait_for("request", 1, timeout=15)
    await delivered(stack, received.payload["incident_id"])
    with pytest.raises(TimeoutError):
        await stack.backend.wait_for("request", 2, timeout=NOTHING_WINDOW_S)
    # Had the 1.5 s press opened a call, the 2.2 s hold inside the cancel window would have
    # cancelled it: one request and no cancel means the short press did nothing.
    assert stack.backend.of_kind("cancel") == []

    request = received.payload
    assert schema_errors("request", request) == []
    assert stack.backend.invalid == []
    assert request["sequence"] == 1
    assert request["trigger"]["source"] == "can"
    assert request["trigger"]["held_ms"] >= 2000
    assert stack.backend.duplicates == 0
    contact = request["contact"]
    assert (contact["name"], contact["phone"], contact["email"]) == (
        CONTACT["name"],
        CONTACT["phone"],
        CONTACT["email"],
    )
    assert contact["address"] == {
        k: CONTACT[k] for k in ("street", "postal_code", "city", "country")
    }
    vehicle = request["vehicle"]
    assert (vehicle["vin"], vehicle["vin_source"]) == (VIN, "config")
    for key, value in VEHICLE.items():
        assert vehicle[key] == value
    location = request["location"]  # from gpsd, fed by gpsfake
    assert location["fix"] in ("3d", "2d")
    assert location["trusted"] is True
    assert on_route(location["lat"], location["lon"]), (location["lat"], location["lon"])
    assert request["vehicle_state"]["battery_12v_v"] == 10.9  # over the bus from the car
    assert request["problem"]["category"] == "flat_battery"
    assert received.properties["CorrelationData"] == request["incident_id"].encode()

    assert await stack.stop_agent() == 0  # SIGTERM: a clean stop
    await stack.backend.wait_status(VIN, "state", "offline", timeout=10)


FLOOD = ((0x123, False), (0x7FF, False), (CONNECT_BUTTON, True))  # unused IDs; 29-bit 0x3A1
FLOOD_BATCHES = 10
FLOOD_BATCH = 50  # per ID: small enough for the sniffer's receive buffer between drains


@pytest.mark.hil_socketcan
async def test_kernel_filters_keep_unused_ids_off_the_agents_socket(stack: Stack) -> None:
    settings = stack.settings
    seen: Counter[tuple[int, bool]] = Counter()
    async with sniffer(settings) as watch, sniffer(settings) as flood:
        for _ in range(FLOOD_BATCHES):
            for frame_id, extended in FLOOD:
                for i in range(FLOOD_BATCH):
                    send(
                        flood,
                        can.Message(
                            arbitration_id=frame_id,
                            is_extended_id=extended,
                            data=bytes([i, 0x55, 0xAA, 0, 0, 0, 0, i]),
                        ),
                    )
            want = dict.fromkeys(FLOOD, FLOOD_BATCH)
            seen.update(await asyncio.to_thread(drain, watch, want, 5.0))
    # The bus carried every frame: an unfiltered socket received them all.
    assert seen == dict.fromkeys(FLOOD, FLOOD_BATCHES * FLOOD_BATCH)

    # A marker the agent does receive (a VEHICLE_STATUS with a wrong DLC): once it shows in
    # the status, every frame queued before it has been through the agent's socket.
    await run(program("cansend"), settings.channel, "3B0#00")
    counters = await stack.wait_counters(
        "the marker frame counted", lambda c: c.get("can_bad_dlc", 0) >= 1
    )
    assert counters.get("can_bad_dlc") == 1
    assert "can_unknown_id" not in counters  # no 0x123 / 0x7FF reached the agent
    assert "foreign_frames" not in counters  # nor the 29-bit frames

    # The kernel's receive lists: the agent's socket registered exactly its IDs.
    entries = receive_lists(settings.channel)
    assert entries, "no /proc/net/can receive lists for the channel"
    filters = [e for e in entries if e.rcvlist == "fil"]
    for entry in filters:
        assert entry.can_mask == EFF_FLAG | 0x7FF, entry  # one exact 11-bit ID each
    sockets = {e.socket for e in entries}
    if sockets == {"0" * len(next(iter(sockets)))}:  # %pK hidden: no per-socket view
        assert {e.can_id for e in filters} == set(AGENT_IDS)
        return
    agent_sockets = [
        s for s in sockets if {e.can_id for e in filters if e.socket == s} == set(AGENT_IDS)
    ]
    assert len(agent_sockets) == 1, entries
    [agent_socket] = agent_sockets
    mine = [e for e in entries if e.socket == agent_socket]
    # Nothing but its filters (and the error-frame mask): no catch-all, no other ID.
    assert {e.rcvlist for e in mine} <= {"fil", "err"}, mine
    assert sorted(e.can_id for e in mine if e.rcvlist == "fil") == sorted(AGENT_IDS)
    matched = {e.can_id: e.matches for e in mine if e.rcvlist == "fil"}
    assert matched[CONNECT_BUTTON] > 0  # live: the car's button frames pass the filter


def led_mode(frame: Dumped) -> LedMode:
    return LedMode(SIM_MATRIX.raw_signals(CONNECT_LED, frame.data)["LedMode"])


@pytest.mark.hil_socketcan
@pytest.mark.hil_sim_roof
async def test_cansend_press_starts_a_call_and_candump_sees_the_led(stack: Stack) -> None:
    """The roof module played with can-utils: cansend presses, candump watches the LED."""
    settings = stack.settings
    cansend = program("cansend")
    button_filter = [{"can_id": CONNECT_BUTTON, "can_mask": 0x7FF, "extended": False}]
    buttons = can.Bus(interface="socketcan", channel=settings.channel, can_filters=button_filter)
    try:
        # One of the module's frames is seen on this socket before it stops, so the last one
        # drained below is the last it sent: the agent saw none after it. (Without this wait
        # the socket can see none, and a guessed counter repeats the agent's last in 1 of 16.)
        last = await asyncio.to_thread(buttons.recv, 10)
        assert last is not None, "the car's button module sent nothing for 10 s"
        await stack.car_command("silent on")  # the car's button module stops sending
        while (message := buttons.recv(0)) is not None:
            last = message
    finally:
        buttons.shutdown()
    # Continue the module's alive counter: a repeated one would be dropped (and counted).
    counter = (SIM_MATRIX.raw_signals(CONNECT_BUTTON, last.data)["AliveCounter"] + 1) % 16

    candump = await Candump.start(settings.channel, "3A2:7FF")
    try:
        await candump.next_frame(timeout=10)  # candump is bound: it printed an LED frame
        loop = asyncio.get_running_loop()
        start = loop.time()
        pressed = round(2.2 / BUTTON_PERIOD_S) + 1  # frames at 0, 0.1, ..., 2.2 s
        for i in range(pressed + 3):
            state = ButtonState.PRESSED if i < pressed else ButtonState.RELEASED
            await run(
                cansend, settings.channel, cansend_arg(CONNECT_BUTTON, button_frame(state, counter))
            )
            counter = (counter + 1) & 0x0F
            await asyncio.sleep(max(0.0, start + (i + 1) * BUTTON_PERIOD_S - loop.time()))
        await candump.until(lambda f: led_mode(f) is LedMode.CONNECTED, timeout=15)
    finally:
        await candump.stop()

    frames = candump.frames
    assert {f.frame_id for f in frames} == {0x3A2}
    assert all(len(f.data) == 8 for f in frames)
    assert all(e2e_crc(f.data[1:8]) == f.data[0] for f in frames), frames
    steps = [(b.counter - a.counter) & 0x0F for a, b in itertools.pairwise(frames)]
    assert set(steps) == {1}, [f.counter for f in frames]  # +1 mod 16 on every frame
    modes = [led_mode(f) for f in frames]
    changes = [m for i, m in enumerate(modes) if i == 0 or m != modes[i - 1]]
    assert changes[-2:] == [LedMode.CALLING, LedMode.CONNECTED], changes

    [received] = await stack.backend.wait_for("request", 1, timeout=5)
    assert received.payload["trigger"]["source"] == "can"
    assert received.payload["trigger"]["held_ms"] >= 2000
    # Every cansend frame was accepted: once a marker sent after them (a wrong DLC) is
    # counted, nothing else is.
    await run(cansend, settings.channel, "3B0#00")
    counters = await stack.wait_counters("the marker", lambda c: c.get("can_bad_dlc", 0) >= 1)
    assert counters["can_bad_dlc"] == 1
    for name in ("can_bad_crc", "can_repeated_counter"):
        assert name not in counters, counters


@pytest.mark.hil_socketcan
@pytest.mark.hil_press
async def test_bad_frames_from_cansend_are_ignored_and_counted(stack: Stack) -> None:
    rng = random.Random(10)
    bad_dlc = ["3A1#00112233445566", "3A3#0102030405060708", "3B0#0102", "3B1#0102030405", "3B2#"]
    bad_crc = []
    for _ in range(6):
        body = bytes(rng.randrange(256) for _ in range(7))
        bad_crc.append(cansend_arg(CONNECT_BUTTON, bytes([e2e_crc(body) ^ 0x5A, *body])))
    remote = ["3A1#R"]  # a remote frame with the button's ID passes the filter: foreign
    cansend = program("cansend")
    for frame in bad_dlc + bad_crc + remote:
        await run(cansend, stack.settings.channel, frame)

    counters = await stack.wait_counters(
        "the bad frames counted",
        lambda c: (
            c.get("can_bad_dlc", 0) >= len(bad_dlc)
            and c.get("can_bad_crc", 0) >= len(bad_crc)
            and c.get("foreign_frames", 0) >= len(remote)
        ),
    )
    assert counters["can_bad_dlc"] == len(bad_dlc)
    assert counters["can_bad_crc"] == len(bad_crc)
    assert counters["foreign_frames"] == len(remote)
    assert stack.status()["can"] == "ok"
    assert stack.status()["button"] == "ok"

    await stack.hold(2200)  # and the button still works
    [received] = await stack.backend.wait_for("request", 1, timeout=15)
    await delivered(stack, received.payload["incident_id"])
    assert schema_errors("request", received.payload) == []


@pytest.mark.hil_socketcan
@pytest.mark.hil_link_control
@pytest.mark.hil_press
async def test_interface_down_and_up_is_survived_and_a_call_then_delivered(
    stack: Stack,
) -> None:
    channel = stack.settings.channel
    ip = program("ip")
    first = len(stack.statuses())
    try:
        await run(ip, "link", "set", "dev", channel, "down")
        await stack.wait_status(
            "the bus failure",
            lambda s: any(t["can"] == "down" for t in stack.statuses()[first:]),
            timeout=10,
        )
        # No frame gets through: the button module falls silent for the agent.
        await stack.wait_status("the button silent", lambda s: s["button"] == "silent", 10)
    finally:
        await run(ip, "link", "set", "dev", channel, "up")
    await stack.wait_status(
        "the bus and the button back",
        lambda s: s["can"] == "ok" and s["button"] == "ok",
        timeout=15,
    )
    counters = await stack.wait_counters(
        "a bus failure counted", lambda c: c.get("bus_failures", 0) >= 1
    )
    assert counters["bus_failures"] >= 1

    await stack.hold(2200)
    [received] = await stack.backend.wait_for("request", 1, timeout=15)
    await delivered(stack, received.payload["incident_id"])
    assert received.payload["trigger"]["source"] == "can"


OUTAGE_S = 2.0  # how long the link stays down


@pytest.mark.hil_socketcan
@pytest.mark.hil_link_control
async def test_while_the_link_is_down_the_status_never_says_the_bus_is_ok(stack: Stack) -> None:
    channel = stack.settings.channel
    ip = program("ip")
    try:
        await run(ip, "link", "set", "dev", channel, "down")
        down = len(stack.statuses())
        await stack.wait_status("the button silent", lambda s: s["button"] == "silent", 10)
        await asyncio.sleep(OUTAGE_S)  # the outage itself: the stimulus, not a wait
        during = stack.statuses()[down:]
    finally:
        await run(ip, "link", "set", "dev", channel, "up")
    await stack.wait_status("the bus back", lambda s: s["can"] == "ok", timeout=15)
    assert [s["can"] for s in during if s["can"] == "ok"] == [], [s["can"] for s in during]
