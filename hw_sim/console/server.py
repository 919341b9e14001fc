"""The console's web server: one page, its assets, a WebSocket of live events, two JSON reads.

:class:`ConsoleServer` sits on top of simulators someone else owns and runs: the backend
(:class:`~hw_sim.backend.SimulatedBackend`, required), and optionally the car
(:class:`~hw_sim.car.SimulatedCar`), the roof module's view of the LED
(:class:`~hw_sim.car.LedObserver`) and the fake gpsd (:class:`~hw_sim.gpsd.FakeGpsd`).
It watches the backend and the LED and pushes every change to each open page over a
WebSocket as it happens; the page sends the driver's and the operator's actions back on the
same socket.

WebSocket messages, JSON objects with a ``type``:

server -> page
    ``hello`` (everything, on connect), ``led``, ``card``, ``agent``, ``invalid``, ``car``,
    ``button``, ``route``, ``error`` (a rejected action, to the page that sent it).
page -> server
    ``button`` {pressed}, ``set`` {name, value}, ``category`` {value}, ``route`` {action},
    ``accuracy`` {value}, ``ack`` {incident_id, status, eta_minutes?, message?}.

The server binds loopback by default, answers only requests whose Host names it, accepts a
WebSocket only from its own page (Origin), and sends a strict Content-Security-Policy: a page on
another site cannot read the requests' personal data or press the button. Nothing is written
to disk; responses are ``no-store`` so the browser keeps no copy either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from aiohttp import WSCloseCode, WSMsgType, web

from hw_sim.backend import Received, SimulatedBackend
from hw_sim.car import LedObserver, SimulatedCar
from hw_sim.console.board import ACK_STATUSES, Board, iso_ms
from hw_sim.console.outlines import OutlineSource, region_box
from hw_sim.contract import errors as schema_errors
from hw_sim.gpsd import FakeGpsd
from hw_sim.matrix import CATEGORIES, ButtonState
from hw_sim.service import Service, cancel_tasks

__all__ = ["CONTROLS", "ConsoleServer", "Control"]

log = logging.getLogger("hw_sim.console")

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
STATIC_FILES: Final = {
    "console.css": "text/css",
    "console.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
CLIENT_QUEUE: Final = 512  # messages a slow page may lag behind before it is dropped
MAX_CLIENT_MESSAGE: Final = 16 * 1024
GOOD_HDOP: Final = 0.9  # about 17 m: a trusted fix
POOR_HDOP: Final = 12.0  # about 230 m: beyond eCall's 150 m, not trusted
_WILDCARD_HOSTS: Final = ("", "0.0.0.0", "::")
_LOOPBACK_NAMES: Final = ("127.0.0.1", "localhost", "[::1]")


def _as_number(value: object) -> float | None:
    """A JSON number as a float; None for anything else (true and false are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class Control:
    """One signal the car panel can set: where it lives on the car and what it accepts."""

    group: str  # "status" (VEHICLE_STATUS), "tyres" (TYRE_PRESSURE), "safety" (SAFETY_STATUS)
    field: str
    kind: str  # "float", "int", "bool", "choice"
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()
    nullable: bool = False  # None sends the matrix's "not available"

    def parse(self, value: object) -> object:
        """The value to set, or ValueError saying what was expected."""
        if value is None and self.nullable:
            return None
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"expected one of {', '.join(self.choices)}")
            return value
        number = _as_number(value)
        if number is None:
            raise ValueError("expected a number")
        if not (math.isfinite(number) and self.low <= number <= self.high):
            raise ValueError(f"expected a number from {self.low:g} to {self.high:g}")
        if self.kind == "int":
            if number != int(number):
                raise ValueError("expected a whole number")
            return int(number)
        return round(number, 2)


# Ranges are what the matrix can carry (SPEC §2) and a car can plausibly show.
CONTROLS: Final = {
    "battery_12v_v": Control("status", "battery_12v_v", "float", 0.0, 16.0, nullable=True),
    "hv_soc_pct": Control("status", "hv_soc_pct", "float", 0.0, 100.0, nullable=True),
    "ignition": Control("status", "ignition", "choice", choices=("off", "acc", "on")),
    "trailer_connected": Control("status", "trailer_connected", "bool"),
    "hazard_lights": Control("status", "hazard_lights", "bool"),
    "doors_locked": Control("status", "doors_locked", "bool"),
    "key_detected": Control("status", "key_detected", "bool"),
    "tyre_fl": Control("tyres", "fl", "int", 0, 500, nullable=True),
    "tyre_fr": Control("tyres", "fr", "int", 0, 500, nullable=True),
    "tyre_rl": Control("tyres", "rl", "int", 0, 500, nullable=True),
    "tyre_rr": Control("tyres", "rr", "int", 0, 500, nullable=True),
    "airbag_deployed": Control("safety", "airbag_deployed", "bool"),
    "crash_severity": Control("safety", "crash_severity", "int", 0, 2),
    "alarm_triggered": Control("safety", "alarm_triggered", "bool"),
    "tamper_detected": Control("safety", "tamper_detected", "bool"),
    "hv_thermal_event": Control("safety", "hv_thermal_event", "bool"),
}


class ClientError(ValueError):
    """An action from a page that cannot be done; the text goes back to that page."""


def _wall(monotonic_at: float) -> datetime:
    """The wall time of a ``time.monotonic()`` reading taken a moment ago."""
    return datetime.now(UTC) - timedelta(seconds=time.monotonic() - monotonic_at)


class _Client:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(CLIENT_QUEUE)
        self.pressing = False


class ConsoleServer(Service):
    """``async with ConsoleServer(backend, car=..., led=..., gps=...) as console:`` serves
    ``console.url`` until the block ends. ``port=0`` picks a free port."""

    def __init__(
        self,
        backend: SimulatedBackend,
        *,
        car: SimulatedCar | None = None,
        led: LedObserver | None = None,
        gps: FakeGpsd | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        hold_ms: int = 2000,
        cancel_window_s: float = 8.0,
        bus: str | None = None,
        outlines: OutlineSource | None = None,
    ) -> None:
        self.backend = backend
        self.car = car
        self.led = led
        self.gps = gps
        self.host = host
        self.port = port
        self.hold_ms = hold_ms
        self.cancel_window_s = cancel_window_s
        self.bus = bus
        self.board = Board()
        self.rejected = 0  # page actions refused
        self.outlines = outlines or OutlineSource()
        self._own_outlines = outlines is None
        self._route_mode = "drive"
        self._clients: set[_Client] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_CLIENT_MESSAGE)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/outlines", self._outlines)
        app.on_shutdown.append(self._close_clients)
        return app

    async def start(self) -> None:
        if self._runner is not None or self._closed:
            raise RuntimeError("a ConsoleServer is started once")
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        address = self._runner.addresses[0]
        self.port = int(address[1])
        self._tasks = [asyncio.create_task(self._watch_backend(), name="console-backend")]
        if self.led is not None:
            self._tasks.append(asyncio.create_task(self._watch_led(), name="console-led"))
        for task in self._tasks:
            task.add_done_callback(self._watcher_ended)
        log.info("console on %s", self.url)

    @staticmethod
    def _watcher_ended(task: asyncio.Task[None]) -> None:
        # a watcher only ends by cancellation; anything else is a bug: say so at once (the
        # exception is raised again by aclose)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "console: %s stopped: %r; the page no longer updates",
                task.get_name(),
                task.exception(),
            )

    async def aclose(self) -> None:
        """Stop serving, close every page's socket and release the button; safe twice."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        await cancel_tasks(*tasks)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self.car is not None and any(c.pressing for c in self._clients):
            self.car.set_button(ButtonState.RELEASED)
        self._clients.clear()
        if self._own_outlines:
            self.outlines.close()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    # -- HTTP -----------------------------------------------------------------------------

    def _host_allowed(self, host_header: str) -> bool:
        if self.host in _WILDCARD_HOSTS:
            return True
        names = {*_LOOPBACK_NAMES, self.host, f"[{self.host}]"}
        return host_header.lower() in {f"{name}:{self.port}" for name in names}

    @web.middleware
    async def _guard(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        # Host: refuses DNS rebinding; Origin: refuses other sites' pages on the socket.
        if not self._host_allowed(request.headers.get("Host", "")):
            raise web.HTTPMisdirectedRequest(text="unknown host\n")
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"http://{request.headers['Host']}":
            raise web.HTTPForbidden(text="cross-origin requests are refused\n")
        response = await handler(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            STATIC_DIR / "index.html", headers={"Content-Type": "text/html; charset=utf-8"}
        )

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            raise web.HTTPNotFound()
        return web.FileResponse(
            STATIC_DIR / name,
            headers={"Content-Type": f"{content_type}; charset=utf-8", "Cache-Control": "no-cache"},
        )

    async def _state(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._hello())

    async def _outlines(self, request: web.Request) -> web.StreamResponse:
        try:
            lat = float(request.query["lat"])
            lon = float(request.query["lon"])
        except (KeyError, ValueError):
            raise web.HTTPBadRequest(text="lat and lon are required numbers\n") from None
        if not (math.isfinite(lat) and math.isfinite(lon) and -85 <= lat <= 85):
            raise web.HTTPBadRequest(text="lat and lon out of range\n")
        outlines = await asyncio.to_thread(self.outlines.around, lat, lon)
        if outlines is None:
            return web.json_response(
                {"bbox": list(region_box(lat, lon)), "borders": "", "coasts": "", "source": None}
            )
        return web.json_response(outlines.to_json())

    # -- WebSocket ------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_CLIENT_MESSAGE)
        await ws.prepare(request)
        client = _Client(ws)
        self._clients.add(client)
        client.queue.put_nowait(json.dumps(self._hello()))
        try:
            async with asyncio.TaskGroup() as tg:
                sender = tg.create_task(self._send_loop(client), name="console-ws-send")
                async for message in ws:
                    if message.type is WSMsgType.TEXT:
                        self._from_page(client, message.data)
                    elif message.type is WSMsgType.BINARY:
                        self._refuse(client, "binary messages are not understood")
                sender.cancel()
        finally:
            self._clients.discard(client)
            if client.pressing:
                client.pressing = False
                self._button_changed()
        return ws

    async def _send_loop(self, client: _Client) -> None:
        while True:
            text = await client.queue.get()
            if text is None:
                await client.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow")
                return
            try:
                await client.ws.send_str(text)
            except ConnectionError:
                return

    async def _close_clients(self, app: web.Application) -> None:
        for client in list(self._clients):
            await client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"console stopping")

    def _broadcast(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
        for client in list(self._clients):
            try:
                client.queue.put_nowait(text)
            except asyncio.QueueFull:
                log.warning("console: a page does not keep up; closing its socket")
                self._clients.discard(client)
                while not client.queue.empty():
                    client.queue.get_nowait()
                client.queue.put_nowait(None)

    def _send(self, client: _Client, message: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            client.queue.put_nowait(json.dumps(message, ensure_ascii=False))

    def _refuse(self, client: _Client, text: str) -> None:
        self.rejected += 1
        if self.rejected == 1:
            log.info("console: refused a page's action: %s", text)
        self._send(client, {"type": "error", "message": text})

    # -- state for the page ---------------------------------------------------------------

    def _hello(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "config": {
                "hold_ms": self.hold_ms,
                "cancel_window_s": self.cancel_window_s,
                "bus": self.bus,
                "root": self.backend.root,
                "broker": f"{self.backend.host}:{self.backend.port}",
                "controls": sorted(CONTROLS),
                "categories": sorted(CATEGORIES, key=CATEGORIES.__getitem__),
            },
            "car": self._car_state(),
            "led": self._led_state(),
            "route": self._route_state(),
            **self.board.snapshot(),
        }

    def _car_state(self) -> dict[str, Any] | None:
        car = self.car
        if car is None:
            return None
        return {
            "button": car.button.name.lower(),
            "category": car.category,
            "status": None if car.status is None else asdict(car.status),
            "tyres": None if car.tyres is None else asdict(car.tyres),
            "safety": None if car.safety is None else asdict(car.safety),
        }

    def _led_state(self) -> dict[str, Any] | None:
        led = self.led
        if led is None:
            return None
        return {
            "mode": None if led.mode is None else led.mode.name.lower(),
            "changes": [
                {"mode": mode.name.lower(), "at": iso_ms(_wall(at))} for at, mode in led.modes[-8:]
            ],
            "frames": led.frames,
            "bad_frames": led.bad_frames,
        }

    def _route_state(self) -> dict[str, Any] | None:
        gps = self.gps
        if gps is None:
            return None
        return {
            "name": gps.route.name,
            "mode": self._route_mode,
            "accuracy": "good" if gps.hdop <= GOOD_HDOP else "poor",
            "accuracy_m": round(gps.hdop * 19.0),
        }

    # -- watching the simulators ----------------------------------------------------------

    async def _watch_backend(self) -> None:
        seen = invalid_seen = 0
        while True:
            # ``received`` and ``invalid`` only grow; the cursors catch every item even when
            # several arrived during one wake-up.
            items = self.backend.received[seen:]
            seen += len(items)
            for item in items:
                self._on_received(item)
            invalid = self.backend.invalid[invalid_seen:]
            invalid_seen += len(invalid)
            for topic, problems in invalid:
                entry = self.board.on_invalid(topic, problems, datetime.now(UTC))
                self._broadcast({"type": "invalid", "invalid": entry})
            await self.backend.next_change()

    def _on_received(self, item: Received) -> None:
        if schema_errors(item.kind, item.payload):
            return  # shown from the backend's list of invalid messages
        arrived = _wall(item.at)
        if item.kind == "status":
            entry = self.board.on_status(item.vin, item.payload, arrived)
            self._broadcast({"type": "agent", "agent": entry})
            return
        if item.kind == "request":
            before = self.board.cards.get(item.payload["incident_id"])
            sequences = len(before.sequences) if before is not None else 0
            card = self.board.on_request(item.vin, item.payload, arrived)
            auto = self.backend.auto_ack
            if auto and len(card.sequences) > sequences:
                self.board.on_ack(card.incident_id, auto, arrived, automatic=True)
        elif item.kind == "update":
            card = self.board.on_update(item.vin, item.payload, arrived)
        elif item.kind == "cancel":
            card = self.board.on_cancel(item.vin, item.payload, arrived)
        else:
            return
        self._broadcast({"type": "card", "card": card.to_json()})

    async def _watch_led(self) -> None:
        assert self.led is not None
        seen = 0
        while True:
            if len(self.led.modes) != seen:
                seen = len(self.led.modes)
                self._broadcast({"type": "led", "led": self._led_state()})
            await self.led.next_change()

    # -- actions from the page ------------------------------------------------------------

    def _from_page(self, client: _Client, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self._refuse(client, "not JSON")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._refuse(client, "expected an object with a type")
            return
        action = {
            "button": self._on_button,
            "set": self._on_set,
            "category": self._on_category,
            "route": self._on_route,
            "accuracy": self._on_accuracy,
            "ack": self._on_ack,
        }.get(message["type"])
        if action is None:
            self._refuse(client, f"unknown message type {message['type']!r}")
            return
        try:
            action(client, message)
        except ClientError as exc:
            self._refuse(client, str(exc))

    def _need_car(self) -> SimulatedCar:
        if self.car is None:
            raise ClientError("no car: the console was started without a CAN bus")
        return self.car

    def _need_gps(self) -> FakeGpsd:
        if self.gps is None:
            raise ClientError("no route: the console was started without a fake gpsd")
        return self.gps

    def _on_button(self, client: _Client, message: dict[str, Any]) -> None:
        self._need_car()
        pressed = message.get("pressed")
        if not isinstance(pressed, bool):
            raise ClientError("button: expected pressed true or false")
        client.pressing = pressed
        self._button_changed()

    def _button_changed(self) -> None:
        """The button is pressed while any page holds it."""
        if self.car is None:
            return
        pressed = any(c.pressing for c in self._clients)
        state = ButtonState.PRESSED if pressed else ButtonState.RELEASED
        if state != self.car.button:
            self.car.set_button(state)
            self._broadcast({"type": "button", "pressed": pressed})

    def _on_set(self, client: _Client, message: dict[str, Any]) -> None:
        car = self._need_car()
        name = message.get("name")
        control = CONTROLS.get(name) if isinstance(name, str) else None
        if control is None:
            raise ClientError(f"set: unknown signal {name!r}")
        try:
            value = control.parse(message.get("value"))
        except ValueError as exc:
            raise ClientError(f"{name}: {exc}") from None
        setter = {"status": car.set_status, "tyres": car.set_tyres, "safety": car.set_safety}
        if getattr(car, control.group) is None:
            raise ClientError(f"{name}: that ECU is silent in this simulation")
        setter[control.group](**{control.field: value})
        self._broadcast({"type": "car", "car": self._car_state()})

    def _on_category(self, client: _Client, message: dict[str, Any]) -> None:
        car = self._need_car()
        value = message.get("value")
        if value is not None and value not in CATEGORIES:
            raise ClientError(f"category: unknown category {value!r}")
        car.set_category(value)
        self._broadcast({"type": "car", "car": self._car_state()})

    def _on_route(self, client: _Client, message: dict[str, Any]) -> None:
        gps = self._need_gps()
        action = message.get("action")
        if action == "drive":
            gps.follow_route()
        elif action == "stop":
            tpv, _ = gps.reports()
            lat, lon = tpv.get("lat"), tpv.get("lon")
            if not isinstance(lat, float | int) or not isinstance(lon, float | int):
                raise ClientError("route: no position to stop at (no fix)")
            gps.set_position(float(lat), float(lon))
        elif action == "no_fix":
            gps.set_no_fix()
        else:
            raise ClientError("route: expected action drive, stop or no_fix")
        self._route_mode = action
        self._broadcast({"type": "route", "route": self._route_state()})

    def _on_accuracy(self, client: _Client, message: dict[str, Any]) -> None:
        gps = self._need_gps()
        value = message.get("value")
        if value not in ("good", "poor"):
            raise ClientError("accuracy: expected good or poor")
        gps.set_hdop(GOOD_HDOP if value == "good" else POOR_HDOP)
        self._broadcast({"type": "route", "route": self._route_state()})

    def _on_ack(self, client: _Client, message: dict[str, Any]) -> None:
        incident_id = message.get("incident_id")
        card = self.board.cards.get(incident_id) if isinstance(incident_id, str) else None
        if card is None:
            raise ClientError("ack: unknown incident")
        status = message.get("status")
        if status not in ACK_STATUSES:
            raise ClientError(f"ack: status must be one of {', '.join(ACK_STATUSES)}")
        eta = message.get("eta_minutes")
        if eta is not None and (
            isinstance(eta, bool) or not isinstance(eta, int) or not 0 <= eta <= 10_000
        ):
            raise ClientError("ack: eta_minutes must be a whole number from 0 to 10000")
        if status == "assigned" and eta is None:
            raise ClientError("ack: an assignment needs an ETA in minutes")
        if status != "assigned":
            eta = None
        text = message.get("message")
        if text is not None and (not isinstance(text, str) or len(text) > 1000):
            raise ClientError("ack: message must be text of at most 1000 characters")
        text = text.strip() if text else None
        self.backend.ack(card.vin, card.incident_id, status, message=text, eta_minutes=eta)
        updated = self.board.on_ack(
            card.incident_id, status, datetime.now(UTC), eta_minutes=eta, message=text
        )
        if updated is not None:
            self._broadcast({"type": "card", "card": updated.to_json()})
