"""The CONNECT call end to end: real Mosquitto, real gpsd fed by gpsfake, the car on CAN.

The agent, the simulated car and roof module share a python-can virtual bus; the backend
simulator validates everything against the JSON Schemas.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from hw_sim.contract import errors as schema_errors
from hw_sim.gpsd import FakeGpsd, load_route
from hw_sim.matrix import LedMode
from hw_sim.mosquitto import Mosquitto
from hw_sim.scenario import CONTACT, VEHICLE, VIN, Scenario
from hw_sim.serial_button import SerialButtonModule

pytestmark = pytest.mark.asyncio

NOTHING_WINDOW_S = 1.0  # how long "nothing arrives" is watched for


def near_route(lat: float, lon: float, tolerance_m: float = 50.0) -> bool:
    """The position lies on the simulated route (within ``tolerance_m`` of a segment)."""
    points = [(p.lat, p.lon) for p in load_route().points]
    for (lat1, lon1), (lat2, lon2) in itertools.pairwise(points):
        # Project on the segment in a local flat frame: fine for segments of a few hundred m.
        kx = 111_320 * math.cos(math.radians(lat1))
        ky = 110_540
        ax, ay = (lon - lon1) * kx, (lat - lat1) * ky
        bx, by = (lon2 - lon1) * kx, (lat2 - lat1) * ky
        t = max(0.0, min(1.0, (ax * bx + ay * by) / ((bx * bx + by * by) or 1.0)))
        if math.hypot(ax - t * bx, ay - t * by) <= tolerance_m:
            return True
    return False


async def test_short_press_sends_nothing_and_a_hold_sends_exactly_one_request(
    tmp_path: Path, mosquitto: Mosquitto, real_gpsd: tuple[str, int]
) -> None:
    async with Scenario(tmp_path, mosquitto.port, real_gpsd[1]) as sim:
        assert await sim.agent.wait_gps_fix(timeout=15), "real gpsd gave no fix"
        await sim.agent.wait_until(lambda: sim.agent.vin_source == "uds", 10)
        await sim.car.hold(1500)
        with pytest.raises(TimeoutError):
            await sim.backend.wait_for("request", 1, timeout=NOTHING_WINDOW_S)
        assert sim.led.mode is LedMode.READY

        await sim.car.hold(2200)
        [received] = await sim.backend.wait_for("request", 1, timeout=10)
        await sim.led.wait_for(LedMode.CONNECTED, timeout=10)
        with pytest.raises(TimeoutError):
            await sim.backend.wait_for("request", 2, timeout=NOTHING_WINDOW_S)

    request = received.payload
    assert schema_errors("request", request) == []
    assert sim.backend.invalid == []
    assert request["sequence"] == 1
    assert request["trigger"]["source"] == "can"
    assert request["trigger"]["held_ms"] >= 2000
    # 1. and 6.: who the driver is and how to reach them, exactly as configured
    contact = request["contact"]
    assert contact["name"] == CONTACT["name"]
    assert contact["phone"] == CONTACT["phone"]
    assert contact["email"] == CONTACT["email"]
    assert contact["address"] == {
        k: CONTACT[k] for k in ("street", "postal_code", "city", "country")
    }
    # 2. and 3.: which car
    vehicle = request["vehicle"]
    assert vehicle["vin"] == VIN
    assert vehicle["vin_source"] == "uds"  # read from the gateway over UDS
    for key, value in VEHICLE.items():
        assert vehicle[key] == value
    # 4.: where it is: a current, trusted fix on the route gpsd was fed
    location = request["location"]
    assert location["fix"] in ("3d", "2d")
    assert location["trusted"] is True
    assert near_route(location["lat"], location["lon"]), (location["lat"], location["lon"])
    assert location["fix_age_s"] is not None and location["fix_age_s"] < 5
    assert location["country"] == "CH"
    assert location["locality"]
    assert request["coverage"]["status"] == "covered"
    assert request["coverage"]["valid_until"] == "2029-03-14"  # 5 years: registered in CH
    # 5.: what is wrong, from the car's signals
    assert request["problem"]["category"] == "breakdown"
    assert request["problem"]["description"]
    assert request["vehicle_state"]["battery_12v_v"] == 12.6
    assert request["vehicle_state"]["tyre_pressure_kpa"]["fl"] == 250
    assert request["vehicle_state"]["dtcs"] == ["P0A0F-1C:2F", "U0100-00:09", "P0562-00:28"]
    # MQTT 5 contract
    assert received.properties["ContentType"] == "application/json"
    assert received.properties["ResponseTopic"] == f"assistance/v1/{VIN}/ack"
    assert received.properties["CorrelationData"] == request["incident_id"].encode()
    assert sim.led.sequence()[-4:] == ["ready", "calling", "connected", "off"]  # off: stopped
    assert sim.led.bad_frames == 0


async def test_driver_category_and_signals_reach_the_request(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: object
) -> None:
    port = fake_gpsd.port  # type: ignore[attr-defined]
    async with Scenario(tmp_path, mosquitto.port, port) as sim:
        sim.car.set_tyres(rl=120)
        sim.car.set_category("puncture")
        sim.car.set_status(trailer_connected=True)
        await sim.car.hold(2100)
        [received] = await sim.backend.wait_for("request", 1, timeout=10)
    problem = received.payload["problem"]
    assert problem["category"] == "puncture"
    assert problem["evidence"][0] == "driver selected puncture"
    assert any("rear left tyre at 120 kPa" in e for e in problem["evidence"])
    assert received.payload["trigger"]["driver_category"] == "puncture"
    assert received.payload["vehicle_state"]["trailer_connected"] is True


async def test_second_hold_within_the_window_cancels(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: object
) -> None:
    port = fake_gpsd.port  # type: ignore[attr-defined]
    async with Scenario(tmp_path, mosquitto.port, port) as sim:
        await sim.car.hold(2100)
        [request] = await sim.backend.wait_for("request", 1, timeout=10)
        await sim.car.hold(2100)
        [cancel] = await sim.backend.wait_for("cancel", 1, timeout=10)
        await sim.led.wait_for(LedMode.CANCELLED, timeout=5)
        await sim.led.wait_for(LedMode.READY, timeout=10)
        status = sim.backend.status[VIN]
        assert status["open_incident"] is None
    assert cancel.payload["incident_id"] == request.payload["incident_id"]
    assert cancel.payload["sequence"] == 1
    assert schema_errors("cancel", cancel.payload) == []


async def test_hold_after_the_window_resends_the_same_incident(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: object
) -> None:
    port = fake_gpsd.port  # type: ignore[attr-defined]
    overrides = {"button.cancel_window_s": "0.5"}
    async with Scenario(tmp_path, mosquitto.port, port, overrides=overrides) as sim:
        await sim.car.hold(2100)
        await sim.backend.wait_for("request", 1, timeout=10)
        await sim.led.wait_for(LedMode.CONNECTED, timeout=10)
        await sim.car.hold(2100)
        first, second = await sim.backend.wait_for("request", 2, timeout=10)
        assert sim.led.mode is LedMode.CONNECTED  # help is already on its way
    assert second.payload["incident_id"] == first.payload["incident_id"]
    assert (first.payload["sequence"], second.payload["sequence"]) == (1, 2)
    assert sim.backend.duplicates == 0


async def test_mqtt_311_is_selectable(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: object
) -> None:
    port = fake_gpsd.port  # type: ignore[attr-defined]
    async with Scenario(tmp_path, mosquitto.port, port, protocol="3.1.1") as sim:
        await sim.car.hold(2100)
        [received] = await sim.backend.wait_for("request", 1, timeout=10)
        await sim.led.wait_for(LedMode.CONNECTED, timeout=10)
    assert schema_errors("request", received.payload) == []


async def test_status_is_retained_online_then_offline_after_stop(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: object
) -> None:
    port = fake_gpsd.port  # type: ignore[attr-defined]
    async with Scenario(tmp_path, mosquitto.port, port) as sim:
        online = sim.backend.status[VIN]
        assert schema_errors("status", online) == []
        assert online["state"] == "online"
        await sim.stop_agent()
        await sim.backend.wait_status(VIN, "state", "offline", timeout=10)
    # a late subscriber sees the retained offline status, with no position in it
    retained = read_retained(mosquitto.port, f"assistance/v1/{VIN}/status")
    assert retained["state"] == "offline"
    assert not position_like(retained)


async def test_no_online_status_after_the_offline_one(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: object
) -> None:
    """A backend ack or a GPS fix during the stop must not publish ``online`` after the offline
    status: a clean stop sends no Last Will, so the retained status would say online for a car
    whose agent is gone (seen in CI: the ack of a resumed call arrived while closing)."""
    port = fake_gpsd.port  # type: ignore[attr-defined]
    async with Scenario(tmp_path, mosquitto.port, port) as sim:
        closing = asyncio.create_task(sim.agent.uplink.aclose())
        await asyncio.sleep(0)  # offline is published, its PUBACK awaited
        sim.agent.uplink.publish_status()  # what a status change during the stop does
        await closing
        await sim.backend.wait_status(VIN, "state", "offline", timeout=10)
    retained = read_retained(mosquitto.port, f"assistance/v1/{VIN}/status")
    assert retained["state"] == "offline"


def position_like(document: object) -> list[str]:
    """Keys or numbers in ``document`` that could be a position (SPEC §6: none in status)."""
    found: list[str] = []
    if isinstance(document, dict):
        for key, value in document.items():
            if key in ("lat", "lon", "location", "recent", "position"):
                found.append(key)
            found += position_like(value)
    elif isinstance(document, list):
        for value in document:
            found += position_like(value)
    elif isinstance(document, float) and (46 < document < 48 or 7 < document < 8):
        found.append(str(document))
    return found


def read_retained(port: int, topic: str) -> dict[str, object]:
    result: dict[str, object] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)

    def on_message(c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        result.update(json.loads(message.payload))

    client.on_message = on_message
    for _ in range(100):
        client.loop(0.05)
        if result:
            break
    client.disconnect()
    return result


async def test_updates_follow_the_open_incident_and_stop_after_close(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port) as sim:
        sim.agent.update_interval_s = 0.3  # SPEC: at most every 10 s; compressed for the test
        await sim.car.hold(2100)
        [request] = await sim.backend.wait_for("request", 1, timeout=10)
        incident_id = request.payload["incident_id"]
        sim.car.set_status(battery_12v_v=11.2)  # a change the operator should see
        updates = await sim.backend.wait_for("update", 1, timeout=10)
        assert updates[0].payload["incident_id"] == incident_id
        assert schema_errors("update", updates[0].payload) == []
        await sim.agent.wait_until(lambda: sim.agent.outbox.count() == 0, 10)
        sim.backend.ack(VIN, incident_id, "closed")
        await sim.led.wait_for(LedMode.READY, timeout=10)
        count = len(sim.backend.of_kind("update"))
        sim.car.set_status(battery_12v_v=10.5)
        with pytest.raises(TimeoutError):  # no position or state leaves after the close
            await sim.backend.wait_for("update", count + 1, timeout=NOTHING_WINDOW_S)
    sequences = [u.payload["sequence"] for u in sim.backend.of_kind("update")]
    assert sequences == list(range(1, len(sequences) + 1))
    assert any(
        u.payload["vehicle_state"]["battery_12v_v"] == 11.2 for u in sim.backend.of_kind("update")
    )


async def test_serial_button_end_to_end_through_a_pty(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    async with SerialButtonModule() as module:
        overrides = {"button.source": "serial", "serial.port": module.port_path}
        async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port, overrides=overrides) as sim:
            await sim.car.hold(2200)  # the CAN button is not the configured source: ignored
            with pytest.raises(TimeoutError):
                await sim.backend.wait_for("request", 1, timeout=NOTHING_WINDOW_S)
            module.set_category("flat_battery")
            await module.hold(2200)
            [received] = await sim.backend.wait_for("request", 1, timeout=10)
            await module.wait_for_led(LedMode.CONNECTED, timeout=10)
            module.send_raw(b"$CNBTN,P,99*00\r\n")  # garbage: counted, survived
            await sim.agent.wait_until(
                lambda: (
                    sim.agent.serial is not None and sum(sim.agent.serial.counters.values()) > 0
                ),
                10,
            )
    assert received.payload["trigger"]["source"] == "serial"
    assert received.payload["trigger"]["driver_category"] == "flat_battery"
    assert received.payload["problem"]["category"] == "flat_battery"


async def test_vin_mismatch_is_reported(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    other = "YV1XZ8FV1P2001234"
    async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port, ecu_vin=other) as sim:
        await sim.agent.wait_until(lambda: sim.agent.vin_source == "uds", 10)
        await sim.car.hold(2100)
        [received] = await sim.backend.wait_for("request", 1, timeout=10)
        async with asyncio.timeout(10):  # the status carries the mismatch
            while "vin_mismatch" not in sim.backend.status[VIN].get("counters", {}):
                await sim.backend.next_change()
        counters = sim.backend.status[VIN]["counters"]
    assert received.payload["vehicle"]["vin"] == other
    assert received.payload["vehicle"]["vin_source"] == "uds"
    assert any(other in e and VIN in e for e in received.payload["problem"]["evidence"])
    assert counters["vin_mismatch"] == 1
