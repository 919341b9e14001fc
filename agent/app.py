"""The running agent: one TaskGroup wiring inputs -> core -> outbox -> uplink, and back.

Data flows one way: a CAN frame (:mod:`agent.inputs.vehicle_bus`) or a serial line becomes a
typed event, the pure core decides (the button tracker, the incident controller, the call
policy), the outbox stores, the uplink publishes, and a PUBACK or a backend ack comes back as
an event. The LED and the status are derived by the presenter. Everything here runs on the
event loop thread; this module is the wiring alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from agent import __version__, sdnotify
from agent.assemble import Assembler
from agent.button import ButtonClock, Events
from agent.config import Config
from agent.continuity import Continuity
from agent.core.button import ButtonTracker, Held
from agent.core.clock import rfc3339_ms
from agent.core.frames import ButtonState, LedMode
from agent.core.geo import DATA_FILE, Geocoder
from agent.core.incident import IncidentController, SendRequest, parse_ack
from agent.core.location import Fix, LocationTracker
from agent.core.policy import CallPolicy, Outgoing
from agent.core.request import encode
from agent.errors import Shutdown
from agent.inputs.gpsd import GpsdSource
from agent.inputs.serial_button import SerialButtonInput
from agent.inputs.vehicle_bus import VehicleBus
from agent.observer import CallRecord, Observer, Unobserved
from agent.outbox import Entry, Outbox
from agent.presenter import Counted, Presenter, Sources
from agent.uplink import Uplink
from agent.wallclock import SystemClock

log = logging.getLogger("agent")

STATUS_CHECK_S = 5.0
FLUSH_DEADLINE_S = 5.0
PURGE_EVERY_S = 3600.0
CHECK_EVERY_S = 60.0  # the outbox's maintenance check: a few ms on a small file
UPDATE_CHECK_S = 1.0
DTC_AFTER_CALL_S = 0.2


class Agent:
    def __init__(
        self,
        config: Config,
        *,
        now_utc: Callable[[], datetime] | None = None,
        geocoder: Geocoder | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.config = config
        # the wall clock: the system's when trusted, else GPS time (agent.core.wallclock)
        self.clock = SystemClock(flag=config.clock.synchronized_file, on_step=self._clock_stepped)
        self._now_utc = now_utc or self.clock.now_utc
        self._observer: Observer = observer or Unobserved()
        self.button = ButtonTracker(config.button.hold_ms / 1000)
        self._button = ButtonClock(self.button, self._button_events)
        self.incidents = IncidentController(
            cancel_window_s=config.button.cancel_window_s,
            deliver_timeout_s=config.button.deliver_timeout_s,
        )
        self.policy = CallPolicy(self.incidents, config.mqtt.ack_timeout_s)
        self.location = LocationTracker()
        self.outbox = Outbox(config.state_dir, config.outbox_limits, clock=self.clock.stamp)
        self.continuity = Continuity(
            self.outbox, self.incidents, self.policy, lambda: self._now_utc().timestamp()
        )
        self.source = config.button.source
        self.car = VehicleBus(
            config.can,
            config.vehicle,
            on_button=self._on_can_button,
            on_state=self._on_can_state,
            now_utc=self._now_utc,
        )
        self._own_geocoder = geocoder is None  # made here, so closed here
        self.assembler = Assembler(config, self.car, self.location, geocoder or Geocoder(DATA_FILE))
        self.uplink = Uplink(
            config.mqtt, self.car.vin, self.outbox, self, self._status, clock=self.clock.reading
        )
        self.serial: SerialButtonInput | None = None
        leds: list[Callable[[LedMode], object]] = [self.car.send_led]
        if self.source == "serial":
            assert config.serial.port is not None  # the config loader requires it
            self.serial = SerialButtonInput(
                config.serial.port,
                config.serial.baudrate,
                on_button=self._on_button,
                on_category=self._on_category,
                on_state=lambda state: self._refresh(),
            )
            leds.append(self.serial.send_led)
        self.counters: dict[str, int] = {}
        self.gps = GpsdSource(config.gpsd.host, config.gpsd.port, self)
        counted: dict[str, list[Counted]] = {
            "": [self, self.car, self.assembler, self.car.can, self.uplink, self.clock],
            "outbox_": [self.outbox],
            "uds_": [self.car.uds],
            "gps_": [self.gps],
            "serial_": [self.serial] if self.serial is not None else [],
        }
        self._started = time.monotonic()
        self._since: tuple[str, str] | None = None  # (clock source, since) as last derived
        parts = Sources(
            self._since_text,
            self.button,
            self.location,
            self.car.can,
            self.incidents,
            self.outbox,
            counted,
            lambda: self.clock.source,
            lambda: self.uplink.broker,
        )
        self.presenter = Presenter(
            parts, leds, self.uplink.publish_status, lambda: self.uplink.connected
        )
        self._can_tried = asyncio.Event()  # READY=1 once CAN and the broker were each tried
        self._uplink_tried = asyncio.Event()
        self.started = asyncio.Event()
        self._accepting = True
        self._led_timer: asyncio.TimerHandle | None = None
        self._delivered = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or SIGTERM/SIGINT when installed by the CLI)."""
        self._loop = asyncio.get_running_loop()
        self._button.start(self._loop)
        stop = stop or asyncio.Event()
        with self.outbox:
            self.continuity.restore()
            self.assembler.warm()
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.car.run(), name="can")
                    tg.create_task(self.gps.run(), name="gpsd")
                    tg.create_task(self.uplink.run(), name="uplink")
                    tg.create_task(self.presenter.led_cycle(self.car.send_led), name="led")
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
                        self.car.vin,
                        self.outbox.count(),
                    )
            except* Shutdown:
                log.info("stopped")
            finally:
                self._button.stop()
                if self._own_geocoder:
                    self.assembler.geocoder.close()
                if self._led_timer is not None:
                    self._led_timer.cancel()

    def install_signal_handlers(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    async def _notify_ready(self) -> None:
        """READY=1 once CAN, the outbox and the broker are up, or degraded after trying."""
        await self._can_tried.wait()
        await self._uplink_tried.wait()
        sdnotify.ready(self.presenter.health())

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
        self.presenter.show(LedMode.OFF)
        await self.uplink.aclose()
        raise Shutdown

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- inputs: the button (CAN or serial), the driver's category, the CAN link, the VIN ----

    def _on_can_button(self, state: ButtonState, now: float) -> None:
        if self.source == "can":
            self._on_button(state, now)

    def _on_button(self, state: ButtonState, now: float) -> None:
        if self._accepting:
            self._button.sample(state, now)

    def _on_category(self, category: str | None) -> None:
        self.car.vehicle.category = category

    def _on_can_state(self, state: str) -> None:
        self._can_tried.set()
        self._refresh()

    async def _read_vin(self) -> None:
        await self.car.read_vin()
        self._refresh()

    def _button_events(self, events: Events) -> None:
        for event in events:
            if isinstance(event, Held):
                self._on_hold(event, self.source)
            else:
                log.info("button %s", event.health)
                if event.health == "fault":
                    self._count("button_faults")
                self.incidents.healthy = event.health == "ok"
        if events:  # a plain cyclic sample changes neither the LED nor the status
            self._refresh()
        else:
            self._observer.changed()  # but it may press or release

    # -- the call ---------------------------------------------------------------------------

    def _on_hold(self, held: Held, source: str) -> None:
        now_utc = self._now_utc()
        for action in self.incidents.on_hold(held.at, now_utc, held.held_ms, source):
            if isinstance(action, SendRequest):
                self._store(self._gather(action, time.monotonic()))
                self.continuity.save()
                record = CallRecord(action.incident_id, action.sequence, held.at, time.monotonic())
                self._observer.call_stored(record)
                log.info("call %s sequence %d stored", action.incident_id, action.sequence)
            else:
                self._store(self.policy.cancel(action))
                self.outbox.close_incident(action.incident_id)
                log.info("call %s cancelled by the driver", action.incident_id)
        self.uplink.kick(urgent=True)
        if self._loop is not None:  # fresh codes for the operator, once the call is out
            self._loop.call_later(DTC_AFTER_CALL_S, self.car.read_dtcs)

    def _gather(self, action: SendRequest, now: float) -> Outgoing:
        """The request for ``action``, gathered now, and remembered by the policy as sent."""
        incident = self.incidents.incident
        opened = incident.opened_utc if incident is not None else None
        return self.policy.request_sent(self.assembler.request(action, now, opened), now)

    def _store(self, message: Outgoing) -> Entry:
        topic = self.uplink.topics.for_kind(message.kind)
        data = encode(message.payload)
        return self.outbox.add(message.kind, message.incident_id, message.sequence, topic, data)

    # -- gpsd events (FixSink): the tracker keeps the positions, we watch its state ---------

    def on_fix(self, fix: Fix) -> None:
        if fix.time is not None:  # the GPS clock, for while the system clock is wrong
            self.clock.on_gps_time(fix.time, fix.received)
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
            self._observer.changed()
            self.presenter.publish_if_changed()

    # -- repeats and updates while an incident is open (SPEC §5) ----------------------------

    async def _updates(self) -> None:
        while True:
            await asyncio.sleep(UPDATE_CHECK_S)
            if self._accepting:
                self._maybe_repeat()
                self._maybe_update()

    def _maybe_repeat(self) -> None:
        now = time.monotonic()
        waited = now - self.policy.delivered_at
        repeat = self.policy.repeat(now)
        if repeat is None:
            return
        if isinstance(repeat, SendRequest):  # after a restart: gathered again, same key
            repeat = self._gather(repeat, now)
        self._count("request_repeats")
        log.warning(
            "no answer from the backend for %s/%d after %.0f s: publishing it again",
            repeat.incident_id,
            repeat.sequence,
            waited,
        )
        self.uplink.resubscribe()  # ahead of the repeat: its ack must find a subscription
        self._store(repeat)
        self.uplink.kick()

    def _maybe_update(self) -> None:
        if self.incidents.incident is None:
            return
        now, now_utc = time.monotonic(), self._now_utc()
        location, state = self.assembler.snapshot(now, now_utc)
        update = self.policy.update(now, now_utc, location, state)
        if update is not None:
            self._store(update)
            self.continuity.save()
            self.uplink.kick()

    # -- uplink events (UplinkEvents) -------------------------------------------------------

    def on_delivered(self, entry: Entry) -> None:
        now = time.monotonic()
        self._observer.delivered(entry.kind, entry.incident_id, entry.sequence, now)
        if entry.kind == "request":
            self.incidents.on_delivered(entry.incident_id, entry.sequence)
            self.policy.request_delivered(now)
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
        if self.incidents.incident is None:
            self.outbox.close_incident(ack.incident_id)
        else:
            self.continuity.save()
        self._refresh()

    def on_connection(self, connected: bool) -> None:
        self._uplink_tried.set()
        if self._can_tried.is_set():
            sdnotify.status(self.presenter.health())
        self._refresh()

    # -- LED and status ---------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-derive the LED (sending on change) and publish the status if it changed."""
        self._observer.changed()
        now = time.monotonic()
        self.presenter.show(self.incidents.led(now) if self._accepting else LedMode.OFF)
        if self._led_timer is not None:
            self._led_timer.cancel()
            self._led_timer = None
        deadline = self.incidents.deadline(now)
        if deadline is not None and self._loop is not None:
            self._led_timer = self._loop.call_later(deadline - now, self._refresh)
        self.presenter.publish_if_changed()

    async def _status_watch(self) -> None:
        last_purge = last_check = time.monotonic()
        while True:
            await asyncio.sleep(STATUS_CHECK_S)
            if time.monotonic() - last_check >= CHECK_EVERY_S:
                last_check = time.monotonic()
                self.outbox.check()  # the file still ours, and sound; the disk retried
            if time.monotonic() - last_purge >= PURGE_EVERY_S:
                last_purge = time.monotonic()
                self.outbox.purge_expired()
            self.presenter.publish_if_changed()

    def _status(self, state: str) -> dict[str, Any]:
        return self.presenter.status(state)

    # -- the wall clock ---------------------------------------------------------------------

    def _since_text(self) -> str:
        """When the agent started, by the wall clock in use: derived again when it changes."""
        source = self.clock.source
        if self._since is None or self._since[0] != source:
            started = self._now_utc() - timedelta(seconds=time.monotonic() - self._started)
            self._since = (source, rfc3339_ms(started))
        return self._since[1]

    def _clock_stepped(self, step: float) -> None:
        """The system clock was set (NTP, GPS via chrony, by hand): date what the outbox holds
        by it now (agent.core.wallclock.settle) and show the status; never from inside the
        clock read that noticed it."""
        if self._loop is not None:
            self._loop.call_soon(self._after_step)

    def _after_step(self) -> None:
        if self.outbox.is_open:
            self.outbox.purge_expired()
        self._refresh()
