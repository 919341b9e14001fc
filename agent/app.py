"""The running agent: one TaskGroup wiring inputs -> core -> outbox -> uplink, and back.

Data flows one way: a CAN frame becomes a typed event, the pure core (button tracker,
incident controller) decides, the outbox stores, the uplink publishes, and a PUBACK or a
backend ack comes back as an event. Everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import can

from agent import __version__, sdnotify
from agent.config import Config
from agent.core.button import ButtonTracker, HealthChanged, Held
from agent.core.clock import rfc3339_ms
from agent.core.coverage import evaluate
from agent.core.frames import (
    CONNECT_LED,
    RECEIVED_IDS,
    ButtonFrame,
    ButtonState,
    CategoryFrame,
    LedMode,
    Matrix,
    Rejected,
    SafetyStatus,
    TyrePressure,
    VehicleStatus,
)
from agent.core.geo import DATA_FILE, Geocoder, GeoDataError, Place
from agent.core.incident import (
    Incident,
    IncidentController,
    SendCancel,
    SendRequest,
    parse_ack,
)
from agent.core.inference import infer
from agent.core.location import Fix, LocationTracker
from agent.core.request import (
    UNKNOWN_COVERAGE,
    UPDATE_MIN_INTERVAL_S,
    Trigger,
    build_cancel,
    build_request,
    build_update,
    update_due,
    vehicle_json,
)
from agent.core.vehicle import VehicleState
from agent.errors import Shutdown
from agent.inputs.can_bus import CanInput
from agent.inputs.gpsd import GpsdSource
from agent.inputs.serial_button import SerialButtonInput
from agent.inputs.uds import RESPONSE_ID as UDS_RESPONSE_ID
from agent.inputs.uds import UdsClient, UdsError
from agent.outbox import Entry, Outbox
from agent.uplink import Uplink

log = logging.getLogger("agent")

LED_CYCLE_S = 0.5
STATUS_CHECK_S = 5.0
FLUSH_DEADLINE_S = 5.0
PURGE_EVERY_S = 3600.0
UPDATE_CHECK_S = 1.0
DTC_TIMEOUT_S = 0.3
DTC_AFTER_CALL_S = 0.2
KEEP_RECORDS = 1000  # calls and deliveries remembered for the demo and the benchmarks


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What the agent did for one call, for the demo and the benchmarks."""

    incident_id: str
    sequence: int
    held_at: float  # monotonic: the hold threshold was reached
    stored_at: float  # monotonic: on disk


class Agent:
    def __init__(self, config: Config, *, now_utc: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self._now_utc = now_utc or (lambda: datetime.now(UTC))
        self.matrix = Matrix.from_file(config.can.dbc)
        self.button = ButtonTracker(config.button.hold_ms / 1000)
        self.incidents = IncidentController(
            cancel_window_s=config.button.cancel_window_s,
            deliver_timeout_s=config.button.deliver_timeout_s,
        )
        self.vehicle = VehicleState()
        self.geocoder = Geocoder(DATA_FILE)
        self.immobilised_since: datetime | None = None  # SAFETY_STATUS Immobilised, wall time
        self.location = LocationTracker()
        self.outbox = Outbox(config.state_dir, config.outbox_limits)
        self.vin = config.vehicle.vin
        self.vin_source = "config"
        self.uplink = Uplink(config.mqtt, self.vin, self.outbox, self, self._status)
        self.source = config.button.source
        self.can = CanInput(
            config.can, [*RECEIVED_IDS, UDS_RESPONSE_ID], self._on_can, self._on_can_state
        )
        self.uds = UdsClient(self.can.send)
        self.serial: SerialButtonInput | None = None
        if self.source == "serial":
            assert config.serial.port is not None  # the config loader requires it
            self.serial = SerialButtonInput(
                config.serial.port,
                config.serial.baudrate,
                on_button=self._on_serial_button,
                on_category=self._on_category,
                on_state=lambda state: self._refresh(),
            )
        self._dtc_task: asyncio.Task[None] | None = None
        # the last bytes and decoding of VEHICLE_STATUS, TYRE_PRESSURE, SAFETY_STATUS
        self._cyclic: dict[int, tuple[bytes, VehicleStatus | TyrePressure | SafetyStatus]] = {}
        self._can_tried = asyncio.Event()  # READY=1 once CAN and the broker were each tried
        self._uplink_tried = asyncio.Event()
        self.gps = GpsdSource(config.gpsd.host, config.gpsd.port, self)
        self.counters: dict[str, int] = {}
        self.led_mode = LedMode.OFF
        self.calls: deque[CallRecord] = deque(maxlen=KEEP_RECORDS)
        self.deliveries: dict[tuple[str, str, int], float] = {}  # (kind, id, seq) -> monotonic
        self.started = asyncio.Event()
        self._since = rfc3339_ms(self._now_utc())
        self._accepting = True
        self._button_timer: asyncio.TimerHandle | None = None
        self._led_timer: asyncio.TimerHandle | None = None
        self._delivered = asyncio.Event()
        self._changed = asyncio.Event()  # any state change: for wait_until()
        self._last_status: dict[str, Any] | None = None
        # what the backend last got for the open incident: (location, vehicle_state), when
        self._last_sent: tuple[dict[str, Any], dict[str, Any]] | None = None
        self._last_sent_at = 0.0
        self._update_seq: dict[str, int] = {}
        self.update_interval_s = UPDATE_MIN_INTERVAL_S
        self._last_request: dict[str, Any] | None = None  # in memory only, for repeats
        self._delivered_at = 0.0  # monotonic: the last request's PUBACK
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or SIGTERM/SIGINT when installed by the CLI)."""
        self._loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        with self.outbox:
            self._restore()
            self._warm_geocoder()
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.can.run(), name="can")
                    tg.create_task(self.gps.run(), name="gpsd")
                    tg.create_task(self.uplink.run(), name="uplink")
                    tg.create_task(self._led_cycle(), name="led")
                    tg.create_task(self._status_watch(), name="status")
                    tg.create_task(self._updates(), name="updates")
                    tg.create_task(self._read_vin(), name="uds-vin")
                    if self.serial is not None:
                        tg.create_task(self.serial.run(), name="serial-button")
                    tg.create_task(self._notify_ready(), name="ready")
                    tg.create_task(sdnotify.watchdog_loop(), name="watchdog")
                    tg.create_task(self._stop_when(stop), name="shutdown")
                    self.started.set()
                    log.info(
                        "connect-agent %s running for VIN %s (%d pending in outbox)",
                        __version__,
                        self.vin,
                        self.outbox.count(),
                    )
            except* Shutdown:
                log.info("stopped")
            finally:
                for timer in (self._button_timer, self._led_timer):
                    if timer is not None:
                        timer.cancel()

    def _warm_geocoder(self) -> None:
        """Map the geodata now (a few ms, a few MB) rather than during the first call."""
        try:
            self.geocoder.load()
        except GeoDataError as exc:
            self._count("geo_errors")
            log.error("offline geocoding unavailable: %s", exc)

    def install_signal_handlers(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    async def _notify_ready(self) -> None:
        """READY=1 once CAN, the outbox and the broker are up, or degraded after trying."""
        await self._can_tried.wait()
        await self._uplink_tried.wait()
        sdnotify.ready(self._health())

    def _health(self) -> str:
        """One line for systemd's status: never a position, never personal data."""
        mqtt = "connected" if self.uplink.connected else "retrying"
        pending = self.outbox.count() if self.outbox.is_open else 0
        return (
            f"CAN {self.can.state}, MQTT {mqtt}, GPS {self.location.gps_state}, {pending} pending"
        )

    async def _stop_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        sdnotify.stopping("flushing the outbox")
        log.info("stopping: no new input; flushing the outbox for up to %.0f s", FLUSH_DEADLINE_S)
        self._accepting = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_DEADLINE_S):
                while self.outbox.count() and self.uplink.connected:
                    self._delivered.clear()
                    await self._delivered.wait()
        pending = self.outbox.count()
        if pending:
            log.warning("%d message(s) stay in the outbox for the next start", pending)
        self._set_led(LedMode.OFF)
        await self.uplink.aclose()
        raise Shutdown

    def _restore(self) -> None:
        stored = self.outbox.open_incident()
        if stored is None:
            return
        now = time.monotonic()
        age = max(0.0, time.time() - stored.opened_at)
        incident = Incident(
            stored.incident_id,
            opened_at=now - age,
            opened_utc=datetime.fromtimestamp(stored.opened_at, UTC),
            sequence=stored.sequence,
            acked=stored.acked,
        )
        for entry in self.outbox.pending():
            if entry.kind == "request" and entry.incident_id == incident.incident_id:
                incident.undelivered[entry.sequence] = now - (time.time() - entry.created_at)
        self.incidents.restore(incident)
        log.info("restored open incident %s (sequence %d)", incident.incident_id, stored.sequence)

    # -- CAN --------------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _on_can(self, message: can.Message) -> None:
        if message.arbitration_id == UDS_RESPONSE_ID:
            self.uds.feed(message)
            return
        now = time.monotonic()
        frame_id, data = message.arbitration_id, bytes(message.data)
        cached = self._cyclic.get(frame_id)
        if cached is not None and cached[0] == data:  # cyclic status, unchanged: no decode
            self.vehicle.update(cached[1], now)
            return
        frame = self.matrix.decode(frame_id, data)
        if isinstance(frame, Rejected):
            self._count(f"can_{frame.reason}")
            if self.counters[f"can_{frame.reason}"] == 1:
                log.warning("ignored CAN frame 0x%03X: %s", frame.frame_id, frame.reason)
            return
        if isinstance(frame, ButtonFrame):
            if self._accepting and self.source == "can":
                self._button_events(self.button.sample(frame.state, now))
        elif isinstance(frame, CategoryFrame):
            self._on_category(frame.category)
        else:
            if isinstance(frame, SafetyStatus):
                if frame.immobilised and self.immobilised_since is None:
                    self.immobilised_since = self._now_utc()
                elif not frame.immobilised:
                    self.immobilised_since = None
                previous = self.vehicle.safety
                if previous is None or previous.active_dtc_count != frame.active_dtc_count:
                    self._read_dtcs()  # the gateway's fault memory changed
            self._cyclic[frame_id] = (data, frame)
            self.vehicle.update(frame, now)

    def _on_category(self, category: str | None) -> None:
        self.vehicle.category = category

    def _on_serial_button(self, state: ButtonState, now: float) -> None:
        if self._accepting:
            self._button_events(self.button.sample(state, now))

    # -- UDS: VIN at start-up, DTCs when they change and at every call ----------------------

    async def _read_vin(self) -> None:
        vin = await self.uds.read_vin_with_retry(timeout=1.0)
        if vin != self.config.vehicle.vin:
            self._count("vin_mismatch")
            log.warning(
                "the gateway's VIN %s differs from the configured %s", vin, self.config.vehicle.vin
            )
        else:
            log.info("VIN confirmed by the gateway")
        self.vin, self.vin_source = vin, "uds"
        self._read_dtcs()
        self._refresh()

    def _read_dtcs(self) -> None:
        """Start a DTC read unless one runs; it never delays a request (SPEC §4: at once)."""
        if self._dtc_task is not None and not self._dtc_task.done():
            return
        if self._loop is None:
            return
        self._dtc_task = self._loop.create_task(self._dtcs(), name="uds-dtcs")

    async def _dtcs(self) -> None:
        try:
            dtcs = await self.uds.read_dtcs(timeout=DTC_TIMEOUT_S)
        except UdsError as exc:
            self._count("dtc_read_failures")
            log.debug("DTC read failed: %s", exc)
            return
        if dtcs != self.vehicle.dtcs:
            self.vehicle.dtcs = dtcs
            log.info("%d DTC(s) stored in the gateway", len(dtcs))

    def _on_can_state(self, state: str) -> None:
        self._can_tried.set()
        if state != "ok":
            self.matrix.reset_counters()
        self._refresh()

    def _button_events(self, events: list[HealthChanged | Held]) -> None:
        for event in events:
            if isinstance(event, Held):
                self._on_hold(event, self.source)
            else:
                log.info("button %s", event.health)
                if event.health == "fault":
                    self._count("button_faults")
                self.incidents.healthy = event.health == "ok"
        self._schedule_button()
        if events:  # a plain cyclic sample changes neither the LED nor the status
            self._refresh()
        else:
            self._changed.set()  # but it may press or release: wake wait_until()

    def _schedule_button(self) -> None:
        if self._button_timer is not None:
            self._button_timer.cancel()
            self._button_timer = None
        deadline = self.button.deadline()
        if deadline is not None and self._loop is not None:
            delay = max(0.0, deadline - time.monotonic())
            self._button_timer = self._loop.call_later(delay, self._button_tick)

    def _button_tick(self) -> None:
        self._button_timer = None
        self._button_events(self.button.tick(time.monotonic()))

    # -- the call ---------------------------------------------------------------------------

    def _on_hold(self, held: Held, source: str) -> None:
        now_utc = self._now_utc()
        for action in self.incidents.on_hold(held.at, now_utc, held.held_ms, source):
            if isinstance(action, SendRequest):
                payload = self._request_payload(action)
                self._last_request = payload
                self._last_sent = (payload["location"], payload["vehicle_state"])
                self._last_sent_at = time.monotonic()
                self._store("request", action.incident_id, action.sequence, payload)
                self.outbox.save_incident(
                    action.incident_id,
                    action.sequence,
                    time.time(),
                    self.incidents.incident is not None and self.incidents.incident.acked,
                )
                self.calls.append(
                    CallRecord(action.incident_id, action.sequence, held.at, time.monotonic())
                )
                log.info("call %s sequence %d stored", action.incident_id, action.sequence)
            elif isinstance(action, SendCancel):
                payload = build_cancel(action.incident_id, action.sequence, action.cancelled_at)
                self._store("cancel", action.incident_id, action.sequence, payload)
                self.outbox.close_incident(action.incident_id)
                log.info("call %s cancelled by the driver", action.incident_id)
        self.uplink.kick()
        if self._loop is not None:  # fresh codes for the operator, once the call is out
            self._loop.call_later(DTC_AFTER_CALL_S, self._read_dtcs)

    def _store(self, kind: str, incident_id: str, sequence: int, payload: dict[str, Any]) -> Entry:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        topic = self.uplink.topics.for_kind(kind)
        return self.outbox.add(kind, incident_id, sequence, topic, data)

    def _request_payload(self, action: SendRequest) -> dict[str, Any]:
        now = time.monotonic()
        status, tyres, safety = self.vehicle.current(now)
        problem = infer(self.vehicle.category, status, tyres, safety)
        if self.vin != self.config.vehicle.vin:
            problem = replace(
                problem,
                evidence=(
                    *problem.evidence,
                    f"the gateway reports VIN {self.vin}, the configuration says "
                    f"{self.config.vehicle.vin}",
                ),
            )
        location = self.location.snapshot(now, action.created_at)
        place = self._locate(location)
        return build_request(
            incident_id=action.incident_id,
            sequence=action.sequence,
            created_at=action.created_at,
            trigger=Trigger(action.source, action.held_ms, self.vehicle.category),
            contact=self.config.contact,
            vehicle=vehicle_json(self.config.vehicle, self.vin, self.vin_source),
            location=location,
            problem=problem,
            vehicle_state=self.vehicle.snapshot(now),
            coverage=self._coverage(location, place, problem.category, action.created_at),
        )

    # -- gpsd events (FixSink): the tracker keeps the positions, we watch its state ---------

    def on_fix(self, fix: Fix) -> None:
        self._gps_event(self.location.on_fix, fix)

    def on_no_fix(self, now: float) -> None:
        self._gps_event(self.location.on_no_fix, now)

    def on_disconnected(self, now: float) -> None:
        self._gps_event(self.location.on_disconnected, now)

    def _gps_event(self, apply: Callable[[Any], None], value: Any) -> None:
        before = self.location.gps_state
        apply(value)
        if self.location.gps_state != before:
            log.info("GPS %s", self.location.gps_state)
            self._changed.set()
            self._publish_status_if_changed()

    # -- updates while an incident is open (SPEC §5) ----------------------------------------

    async def _updates(self) -> None:
        while True:
            await asyncio.sleep(UPDATE_CHECK_S)
            if self._accepting:
                self._maybe_repeat()
                self._maybe_update()

    def _maybe_repeat(self) -> None:
        """The broker has the request but the backend never answered: publish it again.

        An ack can be lost in a broker that dies before delivering it; the same request
        (same id, sequence and created_at: a QoS-style duplicate) makes the backend answer
        again. Every ``ack_timeout_s`` until it does.
        """
        incident, request = self.incidents.incident, self._last_request
        if incident is None or request is None or incident.acked or incident.undelivered:
            return
        if request["incident_id"] != incident.incident_id or request["sequence"] != (
            incident.sequence
        ):
            return
        now = time.monotonic()
        if now - self._delivered_at < self.config.mqtt.ack_timeout_s:
            return
        self._count("request_repeats")
        log.warning(
            "no answer from the backend for %s/%d after %.0f s: publishing it again",
            incident.incident_id,
            incident.sequence,
            now - self._delivered_at,
        )
        self._delivered_at = now
        self._store("request", incident.incident_id, incident.sequence, request)
        self.uplink.kick()

    def _maybe_update(self) -> None:
        incident = self.incidents.incident
        if incident is None:
            return
        now = time.monotonic()
        location = self.location.snapshot(now, self._now_utc())
        state = self.vehicle.snapshot(now)
        self._locate(location)
        since = now - self._last_sent_at
        if not update_due(self._last_sent, location, state, since, self.update_interval_s):
            return
        sequence = self._update_seq.get(incident.incident_id, 0) + 1
        self._update_seq = {incident.incident_id: sequence}
        payload = build_update(incident.incident_id, sequence, self._now_utc(), location, state)
        self._store("update", incident.incident_id, sequence, payload)
        self._last_sent = (location, state)
        self._last_sent_at = now
        self.uplink.kick()

    def _locate(self, location: dict[str, Any]) -> Place | None:
        """Fill country and locality (offline geocoding) into a location snapshot."""
        lat, lon = location.get("lat"), location.get("lon")
        if lat is None or lon is None:
            return None
        try:
            place = self.geocoder.lookup(lat, lon)
        except GeoDataError as exc:
            self._count("geo_errors")
            log.error("offline geocoding unavailable: %s", exc)
            return None
        location["country"] = place.country
        location["locality"] = place.locality
        return place

    def _coverage(
        self, location: dict[str, Any], place: Place | None, category: str, now_utc: datetime
    ) -> dict[str, Any]:
        profile = self.config.coverage
        if profile is None:
            return dict(UNKNOWN_COVERAGE)
        incident = self.incidents.incident
        started = [t for t in (self.immobilised_since, incident and incident.opened_utc) if t]
        vehicle = self.config.vehicle
        result = evaluate(
            profile,
            place=place,
            lat=location.get("lat"),
            lon=location.get("lon"),
            first_registration=vehicle.first_registration,
            registration_country=vehicle.registration_country,
            extension_until=vehicle.coverage_extension_until,
            category=category,
            immobilised_at=min(started) if started else None,
            now=now_utc,
        )
        return result.to_json()

    # -- uplink events (UplinkEvents) -------------------------------------------------------

    def on_delivered(self, entry: Entry) -> None:
        self.deliveries[(entry.kind, entry.incident_id, entry.sequence)] = time.monotonic()
        if len(self.deliveries) > KEEP_RECORDS:
            del self.deliveries[next(iter(self.deliveries))]
        if entry.kind == "request":
            self.incidents.on_delivered(entry.incident_id, entry.sequence)
            self._delivered_at = time.monotonic()
        log.info("%s %s/%d delivered", entry.kind, entry.incident_id, entry.sequence)
        self._delivered.set()
        self._refresh()

    def on_ack(self, payload: bytes) -> None:
        ack = parse_ack(payload)
        if isinstance(ack, str):
            self._count(f"ack_{ack}")
            log.warning("ignored malformed ack: %s", ack)
            return
        if not self.incidents.on_ack(ack, time.monotonic()):
            self._count("ack_unknown_incident")
            log.info("ack %s for incident %s which is not open", ack.status, ack.incident_id)
            return
        log.info("backend: incident %s %s", ack.incident_id, ack.status)
        incident = self.incidents.incident
        if incident is None:
            self.outbox.close_incident(ack.incident_id)
        else:
            self.outbox.save_incident(
                incident.incident_id, incident.sequence, time.time(), incident.acked
            )
        self._refresh()

    def on_connection(self, connected: bool) -> None:
        self._uplink_tried.set()
        if self._can_tried.is_set():
            sdnotify.status(self._health())
        self._refresh()

    # -- LED and status ---------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-derive the LED (sending on change) and publish the status if it changed."""
        self._changed.set()
        now = time.monotonic()
        self._set_led(self.incidents.led(now) if self._accepting else LedMode.OFF)
        if self._led_timer is not None:
            self._led_timer.cancel()
            self._led_timer = None
        deadline = self.incidents.deadline(now)
        if deadline is not None and self._loop is not None:
            self._led_timer = self._loop.call_later(deadline - now, self._refresh)
        self._publish_status_if_changed()

    def _set_led(self, mode: LedMode) -> None:
        if mode == self.led_mode:
            return
        self.led_mode = mode
        log.info("LED %s", mode.name.lower())
        self.can.send(CONNECT_LED, self.matrix.encode_led(mode))
        if self.serial is not None:
            self.serial.send_led(mode)

    async def _led_cycle(self) -> None:
        while True:
            self.can.send(CONNECT_LED, self.matrix.encode_led(self.led_mode))
            await asyncio.sleep(LED_CYCLE_S)

    async def _status_watch(self) -> None:
        last_purge = time.monotonic()
        while True:
            await asyncio.sleep(STATUS_CHECK_S)
            if time.monotonic() - last_purge >= PURGE_EVERY_S:
                last_purge = time.monotonic()
                self.outbox.purge_expired()
            self._publish_status_if_changed()

    def _status(self, state: str) -> dict[str, Any]:
        incident = self.incidents.incident
        oldest = self.outbox.oldest_created_at() if self.outbox.is_open else None
        counters = {**self.counters, **self.can.counters, **self.uplink.counters}
        counters.update({f"outbox_{k}": v for k, v in self.outbox.counters.items()})
        if self.serial is not None:
            counters.update({f"serial_{k}": v for k, v in self.serial.counters.items()})
        counters.update({f"uds_{k}": v for k, v in self.uds.counters.items()})
        counters.update({f"gps_{k}": v for k, v in self.gps.counters.items()})
        return {
            "state": state,
            "since": self._since,
            "version": __version__,
            "button": self.button.health,
            "gps": self.location.gps_state,
            "can": self.can.state if self.can.state in ("ok", "error", "down") else "unknown",
            "open_incident": incident.incident_id if incident else None,
            "outbox_pending": self.outbox.count() if self.outbox.is_open else 0,
            "oldest_pending_s": None if oldest is None else round(time.time() - oldest, 1),
            "counters": {name: n for name, n in sorted(counters.items()) if n},
        }

    def _publish_status_if_changed(self) -> None:
        status = self._status("online")
        comparable = {k: v for k, v in status.items() if k != "oldest_pending_s"}
        if comparable != self._last_status and self.uplink.connected:
            self._last_status = comparable
            self.uplink.publish_status()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds, re-checking on every state change."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_gps_fix(self, timeout: float) -> bool:
        """Wait until gpsd reports a fix; False when none came within ``timeout``."""
        try:
            await self.wait_until(lambda: self.location.gps_state == "fix", timeout)
        except TimeoutError:
            return False
        return True
