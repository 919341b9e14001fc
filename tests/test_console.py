"""The console's server: pages, assets, the WebSocket and what it drives, against real peers.

The agent, the simulated car and the LED observer share a python-can virtual bus (a
:class:`~hw_sim.scenario.Scenario` whose backend does not answer by itself), Mosquitto carries
MQTT, the fake gpsd drives the route; a WebSocket client stands in for the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import can
import pytest
import pytest_asyncio

from agent.core.frames import (
    ASSIST_CATEGORY,
    SAFETY_STATUS,
    TYRE_PRESSURE,
    VEHICLE_STATUS,
    CategoryFrame,
    Matrix,
    SafetyStatus,
    TyrePressure,
    VehicleStatus,
)
from agent.inputs.can_bus import BusReader
from hw_sim.backend import SimulatedBackend
from hw_sim.car import dbc_path, open_sim_bus
from hw_sim.console import ConsoleServer, run_console, web_demo
from hw_sim.console.board import Board
from hw_sim.console.outlines import OutlineSource
from hw_sim.gpsd import FakeGpsd
from hw_sim.matrix import LedMode
from hw_sim.mosquitto import Mosquitto
from hw_sim.scenario import CONTACT, VEHICLE, VIN, Scenario

WS_TIMEOUT = 10.0
HOLD_S = 2.2  # how long the driver holds CONNECT (an action's duration, not a wait)


# -- helpers ----------------------------------------------------------------------------------


class Page:
    """A WebSocket client standing in for the page: sends actions, waits for messages.

    A reader task takes every message off the socket as it comes, with the time it came, so
    that receipt times are true even while the test is busy holding the button.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[tuple[float, dict[str, Any]]] = []  # (monotonic receipt, message)
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._unclaimed: list[dict[str, Any]] = []

    async def read(self) -> None:
        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                data: dict[str, Any] = json.loads(message.data)
                self.seen.append((time.monotonic(), data))
                self._inbox.put_nowait(data)

    async def send(self, **message: Any) -> None:
        await self.ws.send_str(json.dumps(message))

    async def expect(
        self,
        kind: str,
        where: Callable[[dict[str, Any]], bool] = lambda m: True,
        timeout: float = WS_TIMEOUT,
    ) -> dict[str, Any]:
        """The first message of ``kind`` for which ``where`` holds and that no earlier
        ``expect`` returned, whether it came already or comes within ``timeout``."""
        for data in self._unclaimed:
            if data["type"] == kind and where(data):
                self._unclaimed.remove(data)
                return data
        async with asyncio.timeout(timeout):
            while True:
                data = await self._inbox.get()
                if data["type"] == kind and where(data):
                    return data
                self._unclaimed.append(data)

    def received_at(self, message: dict[str, Any]) -> float:
        return next(at for at, m in self.seen if m is message)


@contextlib.asynccontextmanager
async def open_page(console: ConsoleServer) -> AsyncIterator[Page]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(console.url + "ws") as ws,
    ):
        page = Page(ws)
        reader = asyncio.create_task(page.read(), name="page-reader")
        try:
            yield page
        finally:
            await ws.close()
            await reader


async def hold_from_page(page: Page, seconds: float = HOLD_S) -> None:
    await page.send(type="button", pressed=True)
    await asyncio.sleep(seconds)  # the driver's hold: an action that lasts, not a wait
    await page.send(type="button", pressed=False)


def card_of(message: dict[str, Any]) -> dict[str, Any]:
    card: dict[str, Any] = message["card"]
    return card


@pytest_asyncio.fixture
async def sim(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> AsyncIterator[tuple[ConsoleServer, Scenario, FakeGpsd]]:
    async with (
        Scenario(tmp_path, mosquitto.port, fake_gpsd.port, auto_ack=None) as scenario,
        ConsoleServer(
            scenario.backend,
            car=scenario.car,
            led=scenario.led,
            gps=fake_gpsd,
            port=0,
            hold_ms=scenario.config.button.hold_ms,
            bus=f"virtual:{scenario.channel}",
        ) as console,
    ):
        yield console, scenario, fake_gpsd


@pytest_asyncio.fixture
async def operator_only(mosquitto: Mosquitto) -> AsyncIterator[ConsoleServer]:
    async with (
        SimulatedBackend("127.0.0.1", mosquitto.port, auto_ack=None) as backend,
        ConsoleServer(backend, port=0) as console,
    ):
        yield console


class FrameTap:
    """Reads a virtual bus like another ECU would and keeps the decoded frames by ID."""

    def __init__(self, channel: str) -> None:
        self.bus = open_sim_bus("virtual", channel)
        self.matrix = Matrix.from_file(dbc_path())
        self.frames: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
        self.reader = BusReader(self.bus, self._on_message)

    def _on_message(self, message: can.Message) -> None:
        frame_id = message.arbitration_id
        if frame_id in (VEHICLE_STATUS, TYRE_PRESSURE, SAFETY_STATUS, ASSIST_CATEGORY):
            self.frames.put_nowait((frame_id, self.matrix.decode(frame_id, bytes(message.data))))

    async def expect(self, frame_id: int, where: Callable[[Any], bool]) -> Any:
        async with asyncio.timeout(WS_TIMEOUT):
            while True:
                got_id, frame = await self.frames.get()
                if got_id == frame_id and where(frame):
                    return frame

    def close(self) -> None:
        self.reader.stop()
        self.bus.shutdown()


# -- the board (pure) -------------------------------------------------------------------------


def _request(sequence: int = 1, lat: float = 46.9667, created: str = "2026-11-24T14:16:00.000Z"):
    return {
        "incident_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        "sequence": sequence,
        "created_at": created,
        "contact": {"name": "Anna Muster"},
        "location": {
            "lat": lat,
            "lon": 7.47,
            "fix_time": created,
            "recent": [{"lat": 46.9657, "lon": 7.469, "time": created}],
        },
        "vehicle_state": {"battery_12v_v": 12.6},
        "problem": {"category": "breakdown"},
    }


def test_board_builds_one_card_per_incident_from_requests_resends_updates_and_cancels() -> None:
    board = Board()
    t0 = datetime(2026, 11, 24, 14, 16, 0, 25_000, tzinfo=UTC)
    card = board.on_request(VIN, _request(), t0)
    assert card.state == "new"
    assert card.delay_ms == 25.0
    assert [(p["lat"], p["lon"]) for p in card.trail] == [(46.9657, 7.469), (46.9667, 7.47)]

    assert board.on_request(VIN, _request(), t0).duplicates == 1  # QoS 1 may deliver twice
    resent = board.on_request(
        VIN, _request(2, 46.97, "2026-11-24T14:16:20.000Z"), t0 + timedelta(seconds=20)
    )
    assert resent is card
    assert card.sequences == [1, 2]
    assert card.request is not None and card.request["sequence"] == 2
    assert card.delay_ms == 25.0
    assert card.trail[0]["time"] == "2026-11-24T14:16:00.000Z"

    update = {
        "incident_id": card.incident_id,
        "sequence": 1,
        "sent_at": "2026-11-24T14:16:30.000Z",
        "location": {"lat": 46.98, "lon": 7.48, "fix_time": None, "recent": []},
        "vehicle_state": {"battery_12v_v": 11.1},
    }
    board.on_update(VIN, update, t0 + timedelta(seconds=30))
    assert card.updates == 1
    assert card.location is not None and card.location["lat"] == 46.98
    assert card.vehicle_state == {"battery_12v_v": 11.1}
    assert card.trail[-1] == {"lat": 46.98, "lon": 7.48, "time": "2026-11-24T14:16:30.000Z"}

    board.on_ack(card.incident_id, "assigned", t0 + timedelta(seconds=40), eta_minutes=25)
    assert card.state == "assigned"
    board.on_cancel(VIN, {"incident_id": card.incident_id, "cancelled_at": "x"}, t0)
    assert card.state == "cancelled"
    assert board.on_ack("unknown", "closed", t0) is None

    snapshot = board.snapshot()
    assert [c["incident_id"] for c in snapshot["cards"]] == [card.incident_id]
    json.dumps(snapshot)  # JSON-ready


def test_board_keeps_agents_and_a_bounded_list_of_invalid_messages() -> None:
    board = Board()
    now = datetime(2026, 11, 24, tzinfo=UTC)
    board.on_status(VIN, {"state": "online"}, now)
    board.on_status(VIN, {"state": "offline"}, now)
    assert board.snapshot()["agents"] == [
        {"vin": VIN, "status": {"state": "offline"}, "seen": "2026-11-24T00:00:00.000Z"}
    ]
    for i in range(50):
        board.on_invalid(f"t/{i}", ["bad"] * 9, now)
    assert len(board.invalid) == 20
    assert board.invalid[-1] == {
        "topic": "t/49",
        "problems": ["bad"] * 5,
        "at": "2026-11-24T00:00:00.000Z",
    }


def test_outlines_around_bern_have_borders_and_country_labels() -> None:
    source = OutlineSource()
    try:
        outlines = source.around(46.9667, 7.47)
        assert outlines is not None
        west, south, east, north = outlines.bbox
        assert west < 7.47 < east and south < 46.9667 < north
        assert outlines.borders.startswith("M")
        assert {"CH", "FR", "DE"} <= {code for code, _, _ in outlines.labels}
        assert source.around(46.9667, 7.47) is outlines  # cached
    finally:
        source.close()


def test_outlines_without_data_give_none(tmp_path: Path) -> None:
    missing = OutlineSource(tmp_path / "missing.bin")
    (tmp_path / "other.bin").write_bytes(b"not a geo file at all")
    other = OutlineSource(tmp_path / "other.bin")
    assert missing.around(46.9, 7.4) is None
    assert other.around(46.9, 7.4) is None
    missing.close()
    other.close()


# -- HTTP -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_page_and_assets_are_served_from_the_package_only(
    operator_only: ConsoleServer,
) -> None:
    console = operator_only
    async with aiohttp.ClientSession() as session:
        async with session.get(console.url) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["Cache-Control"] == "no-store"
            page = await response.text()
        assert '<script src="/static/console.js"' in page
        assert 'href="/static/console.css"' in page
        texts = [page]
        for name, content_type in (
            ("console.js", "text/javascript"),
            ("console.css", "text/css"),
            ("favicon.svg", "image/svg+xml"),
        ):
            async with session.get(f"{console.url}static/{name}") as response:
                assert response.status == 200, name
                assert response.content_type == content_type
                texts.append(await response.text())
        # nothing from the network: no CDN, no tiles, no web fonts
        for text in texts:
            for scheme in ("http://", "https://", "//cdn", "@import"):
                assert scheme not in text.replace("http://www.w3.org/2000/svg", "")
        assert sum(len(t.encode()) for t in texts) < 100_000

        for path in ("static/server.py", "static/..%2Fserver.py", "static/index.htm", "nope"):
            async with session.get(console.url + path) as response:
                assert response.status == 404, path

        async with session.get(console.url + "api/state") as response:
            state = await response.json()
            assert state["type"] == "hello"
            assert state["car"] is None
            assert state["cards"] == []

        async with session.get(console.url + "api/outlines?lat=46.97&lon=7.47") as response:
            outlines = await response.json()
            assert outlines["borders"].startswith("M")
            assert any(label["country"] == "CH" for label in outlines["labels"])
        async with session.get(console.url + "api/outlines?lat=north") as response:
            assert response.status == 400


@pytest.mark.asyncio
async def test_other_sites_can_neither_read_the_console_nor_open_its_socket(
    operator_only: ConsoleServer,
) -> None:
    console = operator_only
    async with aiohttp.ClientSession() as session:
        # DNS rebinding: a page of evil.example resolved to 127.0.0.1
        rebinding = {"Host": f"evil.example:{console.port}"}
        async with session.get(console.url + "api/state", headers=rebinding) as response:
            assert response.status == 421
        async with session.get(f"http://localhost:{console.port}/api/state") as response:
            assert response.status == 200
        cross_site = {"Origin": "http://evil.example"}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(console.url + "ws", headers=cross_site)
        assert refused.value.status == 403
        own = {"Origin": f"http://127.0.0.1:{console.port}"}
        async with session.ws_connect(console.url + "ws", headers=own) as ws:
            hello = await ws.receive_json(timeout=WS_TIMEOUT)
            assert hello["type"] == "hello"


# -- the WebSocket and what it drives ---------------------------------------------------------


@pytest.mark.asyncio
async def test_a_hold_from_the_page_shows_the_led_and_the_card_and_the_operators_answer_connects(
    sim: tuple[ConsoleServer, Scenario, FakeGpsd],
) -> None:
    console, scenario, _ = sim
    assert await scenario.agent.wait_gps_fix(timeout=10)
    async with open_page(console) as page:
        hello = await page.expect("hello")
        assert hello["led"]["mode"] == "ready"
        assert hello["config"]["hold_ms"] == 2000
        assert hello["car"]["status"]["battery_12v_v"] == 12.6
        [agent] = hello["agents"]
        assert agent["vin"] == VIN and agent["status"]["state"] == "online"

        await hold_from_page(page)
        led = await page.expect("led", lambda m: m["led"]["mode"] == "calling")
        calling_seen = scenario.led.modes[-1][0]
        message = await page.expect("card")
        card = card_of(message)
        [received] = scenario.backend.of_kind("request")
        print(
            "\nlatency, the LED frame -> the page: "
            f"{(page.received_at(led) - calling_seen) * 1000:.2f} ms; "
            "MQTT request at the backend -> the card on the page: "
            f"{(page.received_at(message) - received.at) * 1000:.2f} ms"
        )

        assert card["state"] == "new"
        assert card["request"]["contact"]["name"] == CONTACT["name"]
        vehicle = card["request"]["vehicle"]
        assert vehicle["registration_plate"] == VEHICLE["registration_plate"]
        assert vehicle["vin"] == VIN
        assert vehicle["vin_source"] in ("uds", "config")  # uds once the gateway answered
        assert card["location"]["trusted"] is True
        assert card["location"]["country"] == "CH"
        assert card["trail"][-1]["lat"] == card["location"]["lat"]
        assert card["request"]["coverage"]["status"] in ("covered", "not_covered", "unknown")
        assert card["delay_ms"] is not None and card["delay_ms"] >= 0
        assert card["request"]["trigger"]["held_ms"] >= 2000

        await page.send(type="ack", incident_id=card["incident_id"], status="received")
        await scenario.led.wait_for(LedMode.CONNECTED, timeout=10)
        await page.expect("led", lambda m: m["led"]["mode"] == "connected")
        answered = await page.expect("card", lambda m: m["card"]["state"] == "received")
        assert [a["status"] for a in answered["card"]["acks"]] == ["received"]
        assert answered["card"]["acks"][0]["automatic"] is False

        await page.send(
            type="ack", incident_id=card["incident_id"], status="assigned", eta_minutes=25
        )
        assigned = await page.expect("card", lambda m: m["card"]["state"] == "assigned")
        assert assigned["card"]["acks"][-1]["eta_minutes"] == 25
        await page.send(type="ack", incident_id=card["incident_id"], status="closed")
        await scenario.led.wait_for(LedMode.READY, timeout=10)
        await page.expect("agent", lambda m: m["agent"]["status"]["open_incident"] is None)
    assert scenario.backend.invalid == []


@pytest.mark.asyncio
async def test_a_short_press_from_the_page_calls_nobody(
    sim: tuple[ConsoleServer, Scenario, FakeGpsd],
) -> None:
    console, scenario, _ = sim
    async with open_page(console) as page:
        await page.expect("hello")
        await hold_from_page(page, 1.0)
        await page.expect("button", lambda m: m["pressed"] is False)
        await scenario.agent.wait_until(lambda: not scenario.agent.button.pressed, timeout=5)
        assert not scenario.agent.calls
        assert scenario.led.mode is LedMode.READY
        assert console.board.cards == {}


@pytest.mark.asyncio
async def test_updates_and_the_drivers_cancel_reach_the_card(
    sim: tuple[ConsoleServer, Scenario, FakeGpsd],
) -> None:
    console, scenario, _ = sim
    scenario.agent.update_interval_s = 0.3  # updates at most this often (10 s in production)
    assert await scenario.agent.wait_gps_fix(timeout=10)
    async with open_page(console) as page:
        await page.expect("hello")
        await hold_from_page(page)
        first = card_of(await page.expect("card"))
        updated = card_of(await page.expect("card", lambda m: m["card"]["updates"] >= 1))
        assert updated["incident_id"] == first["incident_id"]
        assert updated["location"] != first["location"]  # the car drove on
        assert len(updated["trail"]) > len(first["trail"])

        await hold_from_page(page)  # within the cancel window: cancels
        cancelled = card_of(await page.expect("card", lambda m: m["card"]["state"] == "cancelled"))
        assert cancelled["cancelled_at"] is not None
        await page.expect("led", lambda m: m["led"]["mode"] == "cancelled")


@pytest.mark.asyncio
async def test_the_cars_controls_change_its_frames_on_the_bus(
    sim: tuple[ConsoleServer, Scenario, FakeGpsd],
) -> None:
    console, scenario, _ = sim
    tap = FrameTap(scenario.channel)
    try:
        async with open_page(console) as page:
            await page.expect("hello")

            async def set_and_see(name: str, value: object, frame_id: int, check: Any) -> None:
                await page.send(type="set", name=name, value=value)
                await tap.expect(frame_id, check)
                await page.expect("car")

            await set_and_see(
                "battery_12v_v",
                11.2,
                VEHICLE_STATUS,
                lambda f: isinstance(f, VehicleStatus) and f.battery_12v_v == 11.2,
            )
            await set_and_see(
                "ignition",
                "on",
                VEHICLE_STATUS,
                lambda f: isinstance(f, VehicleStatus) and f.ignition == "on",
            )
            await set_and_see(
                "doors_locked",
                True,
                VEHICLE_STATUS,
                lambda f: isinstance(f, VehicleStatus) and f.doors_locked,
            )
            await set_and_see(
                "tyre_fl", 120, TYRE_PRESSURE, lambda f: isinstance(f, TyrePressure) and f.fl == 120
            )
            await set_and_see(
                "tyre_rr",
                None,
                TYRE_PRESSURE,
                lambda f: isinstance(f, TyrePressure) and f.rr is None,
            )
            await set_and_see(
                "airbag_deployed",
                True,
                SAFETY_STATUS,
                lambda f: isinstance(f, SafetyStatus) and f.airbag_deployed,
            )
            await set_and_see(
                "crash_severity",
                2,
                SAFETY_STATUS,
                lambda f: isinstance(f, SafetyStatus) and f.crash_severity == 2,
            )
            await page.send(type="category", value="fire")
            await tap.expect(
                ASSIST_CATEGORY, lambda f: isinstance(f, CategoryFrame) and f.category == "fire"
            )
            car = (await page.expect("car"))["car"]
            assert car["category"] == "fire"
            assert car["tyres"]["fl"] == 120
            assert car["safety"]["airbag_deployed"] is True

            # and the agent reads them: a call now says accident, from the airbag
            assert await scenario.agent.wait_gps_fix(timeout=10)
            await page.send(type="category", value=None)
            await tap.expect(
                ASSIST_CATEGORY, lambda f: isinstance(f, CategoryFrame) and f.category is None
            )
            await hold_from_page(page)
            card = card_of(await page.expect("card"))
            assert card["request"]["problem"]["category"] == "accident"
            assert card["vehicle_state"]["battery_12v_v"] == 11.2
            assert card["vehicle_state"]["tyre_pressure_kpa"]["fl"] == 120
    finally:
        tap.close()


@pytest.mark.asyncio
async def test_bad_actions_from_a_page_are_refused_and_the_socket_goes_on(
    sim: tuple[ConsoleServer, Scenario, FakeGpsd],
) -> None:
    console, scenario, _ = sim
    before = scenario.car.status
    async with open_page(console) as page:
        await page.expect("hello")
        bad: list[object] = [
            "not json",
            [1, 2],
            {"type": "teleport"},
            {"type": "button", "pressed": "yes"},
            {"type": "set", "name": "warp_drive", "value": 1},
            {"type": "set", "name": "battery_12v_v", "value": 99},
            {"type": "set", "name": "battery_12v_v", "value": True},
            {"type": "set", "name": "battery_12v_v", "value": float("nan")},
            {"type": "set", "name": "tyre_fl", "value": 3.5},
            {"type": "set", "name": "ignition", "value": "warp"},
            {"type": "set", "name": "airbag_deployed", "value": 1},
            {"type": "category", "value": "alien_abduction"},
            {"type": "route", "action": "fly"},
            {"type": "accuracy", "value": "perfect"},
            {"type": "ack", "incident_id": "nope", "status": "received"},
        ]
        for message in bad:
            text = message if isinstance(message, str) else json.dumps(message)
            await page.ws.send_str(text)
            error = await page.expect("error")
            assert error["message"], message
        await page.ws.send_bytes(b"\x00")
        await page.expect("error")
        assert scenario.car.status == before
        assert console.rejected == len(bad) + 1

        await page.send(type="set", name="battery_12v_v", value=11.9)
        car = (await page.expect("car"))["car"]
        assert car["status"]["battery_12v_v"] == 11.9


@pytest.mark.asyncio
async def test_the_route_controls_steer_the_fake_gpsd(
    sim: tuple[ConsoleServer, Scenario, FakeGpsd],
) -> None:
    console, _, gps = sim
    async with open_page(console) as page:
        hello = await page.expect("hello")
        assert hello["route"]["mode"] == "drive"

        await page.send(type="route", action="stop")
        assert (await page.expect("route"))["route"]["mode"] == "stop"
        stopped, _ = gps.reports()
        assert stopped["speed"] == 0.0 and "track" not in stopped

        await page.send(type="accuracy", value="poor")
        route = (await page.expect("route"))["route"]
        assert route["accuracy"] == "poor" and route["accuracy_m"] > 150
        await page.send(type="route", action="no_fix")
        await page.expect("route")
        assert gps.reports()[0]["mode"] == 1
        await page.send(type="route", action="drive")
        await page.expect("route")
        assert gps.reports()[0]["mode"] == 3


@pytest.mark.asyncio
async def test_a_page_that_disappears_while_holding_releases_the_button(
    sim: tuple[ConsoleServer, Scenario, FakeGpsd],
) -> None:
    console, scenario, _ = sim
    async with open_page(console) as page:
        await page.expect("hello")
        await page.send(type="button", pressed=True)
        await page.expect("button", lambda m: m["pressed"] is True)
    # the socket closed mid-press: the roof module must not stay pressed
    await scenario.agent.wait_until(lambda: not scenario.agent.button.pressed, timeout=5)
    assert not scenario.agent.calls


# -- the entry points -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_run_console_serves_its_own_backend_and_car_on_any_broker(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    """``hw-sim console``: an agent (with its car) elsewhere on the broker, the console's own
    backend answers it, and the console's car drives its own CAN channel."""
    started: asyncio.Future[ConsoleServer] = asyncio.get_running_loop().create_future()
    channel = f"console-car-{id(started)}"
    tap = FrameTap(channel)
    async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port, auto_ack=None) as scenario:
        task = asyncio.create_task(
            run_console(
                "127.0.0.1",
                0,
                "127.0.0.1",
                mosquitto.port,
                interface="virtual",
                channel=channel,
                client_id="console-under-test",
                ready=started.set_result,
            ),
            name="console",
        )
        try:
            console = await asyncio.wait_for(started, WS_TIMEOUT)
            async with open_page(console) as page:
                hello = await page.expect("hello")
                if not hello["agents"]:  # the retained status may come after the page
                    await page.expect("agent", lambda m: m["agent"]["vin"] == VIN)
                assert hello["car"] is not None and hello["config"]["bus"] == f"virtual:{channel}"
                assert hello["route"] is None

                await scenario.car.hold(2200)
                card = card_of(await page.expect("card"))
                assert card["request"]["contact"]["email"] == CONTACT["email"]
                await page.send(type="ack", incident_id=card["incident_id"], status="received")
                await scenario.led.wait_for(LedMode.CONNECTED, timeout=10)

                await page.send(type="set", name="key_detected", value=False)
                await tap.expect(
                    VEHICLE_STATUS, lambda f: isinstance(f, VehicleStatus) and not f.key_detected
                )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            tap.close()


@pytest.mark.asyncio
async def test_web_demo_runs_the_whole_loop_behind_the_page(tmp_path: Path) -> None:
    """``hw-sim demo --web`` on the embedded broker: agent online, LED ready, a call."""
    async with web_demo(tmp_path, port=0, embedded_broker=True, gps_interval=0.2) as (
        console,
        scenario,
    ):
        assert scenario.backend.auto_ack is None  # the operator answers by hand
        async with open_page(console) as page:
            hello = await page.expect("hello")
            assert hello["led"]["mode"] == "ready"
            assert hello["route"]["name"].startswith("A1")
            assert await scenario.agent.wait_gps_fix(timeout=10)
            await hold_from_page(page)
            card = card_of(await page.expect("card"))
            await page.send(type="ack", incident_id=card["incident_id"], status="received")
            await page.expect("led", lambda m: m["led"]["mode"] == "connected")
