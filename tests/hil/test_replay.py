"""A recorded trace replayed through the kernel: ``hw-sim replay`` on the channel (vcan0 in UML).

The installation of ``tests/hil`` (``connect-agent run``, Mosquitto, gpsd) with the simulated
car stopped once the agent is ready; then ``hw-sim replay`` plays the shipped trace of the
car's puncture scene onto the channel as a separate process. candump watches the
CONNECT_BUTTON frames the kernel carries (re-protected: CRC right, counter +1 mod 16), and the
request the agent makes from the replayed press carries the car's values. Run with ``make hil``.
"""

from __future__ import annotations

import itertools

import pytest
from hilstack import Candump, Child, Stack, program

from hw_sim.car import HEALTHY_SAFETY, HEALTHY_STATUS, HEALTHY_TYRES
from hw_sim.contract import errors as schema_errors
from hw_sim.matrix import CONNECT_BUTTON
from hw_sim.recording import SCENE_CATEGORY, SCENE_HOLD_MS, SCENE_TYRE_KPA
from hw_sim.replay import SIMULATED_CAR_TRACE

pytestmark = pytest.mark.asyncio

TRACE_FRAMES = 74  # lines of hw_sim/data/traces/simulated-car.log
TRACE_BUTTON_FRAMES = 54


def expected_state() -> dict[str, object]:
    """The simulated car's values as the scene leaves them (the rear left tyre at 150 kPa)."""
    s, t, f = HEALTHY_STATUS, HEALTHY_TYRES, HEALTHY_SAFETY
    return {
        "battery_12v_v": s.battery_12v_v,
        "hv_soc_pct": s.hv_soc_pct,
        "range_km": s.range_km,
        "tyre_pressure_kpa": {"fl": t.fl, "fr": t.fr, "rl": SCENE_TYRE_KPA, "rr": t.rr},
        "ignition": s.ignition,
        "speed_kmh": s.speed_kmh,
        "trailer_connected": s.trailer_connected,
        "hazard_lights": s.hazard_lights,
        "doors_locked": s.doors_locked,
        "key_detected": s.key_detected,
        "airbag_deployed": f.airbag_deployed,
        "odometer_km": f.odometer_km,
    }


@pytest.mark.hil_sim_roof
@pytest.mark.hil_socketcan
async def test_a_replayed_trace_through_the_kernel_makes_the_cars_call(stack: Stack) -> None:
    car = stack.car
    assert car is not None
    await car.write("quit\n")  # from now on the trace is the car
    assert await car.stop(grace=10) == 0
    stack.car = None

    s = stack.settings
    candump = await Candump.start(s.channel, f"{CONNECT_BUTTON:03X}:7FF")
    replay = await Child.spawn(
        "hw-sim replay",
        [
            program("hw-sim"),
            "replay",
            str(SIMULATED_CAR_TRACE),
            "--interface",
            s.interface,
            "--channel",
            s.channel,
        ],
        log=stack.directory / "replay.log",
    )
    try:
        [request] = await stack.backend.wait_for("request", 1, timeout=20)
        await replay.line("not sent:", timeout=15)  # the report's last line: it has finished
        assert await replay.stop(grace=10, timeout=5) == 0  # it exits by itself
    finally:
        await candump.stop()
        if replay.returncode is None:
            await replay.stop(timeout=5)

    report = "\n".join(replay.lines)
    assert f"replayed {TRACE_FRAMES} frames from simulated-car.log" in report
    assert f"0x3A1: {TRACE_BUTTON_FRAMES}, 0x3A3: 1, 0x3B0: 6, 0x3B1: 7, 0x3B2: 6" in report
    assert f"re-protected (alive counter + CRC): {TRACE_BUTTON_FRAMES}" in report
    assert "not sent: none" in report

    # what the kernel carried: the replay's button frames, valid for a receiver
    frames = [f for f in candump.frames if f.frame_id == CONNECT_BUTTON]
    assert len(frames) == TRACE_BUTTON_FRAMES
    assert all(f.crc_ok for f in frames)
    assert [f.counter for f in frames] == [i % 16 for i in range(len(frames))]
    pressed = [(f.data[1] >> 4) & 0x3 for f in frames]
    assert [k for k, _ in itertools.groupby(pressed)] == [0, 1, 0]

    payload = request.payload
    assert schema_errors("request", payload) == []
    assert payload["trigger"]["source"] == "can"
    assert SCENE_HOLD_MS - 300 <= payload["trigger"]["held_ms"] <= SCENE_HOLD_MS + 300
    assert payload["trigger"]["driver_category"] == SCENE_CATEGORY
    assert payload["problem"]["category"] == SCENE_CATEGORY
    state = payload["vehicle_state"]
    assert {k: state[k] for k in expected_state()} == expected_state()
