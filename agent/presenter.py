"""What the driver and the operator see: the CONNECT LED and the retained status.

Both are derived from the state, never set by hand: the LED is sent on every change (and
repeated every ``LED_CYCLE_S`` as the matrix requires), the status is published when it
differs from the last one published.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agent import __version__
from agent.core.button import ButtonTracker
from agent.core.frames import LedMode
from agent.core.incident import IncidentController
from agent.core.location import LocationTracker
from agent.core.request import build_status
from agent.inputs.can_bus import CanInput
from agent.outbox import Outbox

log = logging.getLogger("agent")

LED_CYCLE_S = 0.5


class Counted(Protocol):
    @property
    def counters(self) -> Mapping[str, int]: ...


@dataclass(frozen=True, slots=True)
class Sources:
    """What the status is derived from; ``counted`` maps a prefix ("" for none) to parts."""

    since: Callable[[], str]
    button: ButtonTracker
    location: LocationTracker
    can: CanInput
    incidents: IncidentController
    outbox: Outbox
    counted: Mapping[str, list[Counted]]
    clock: Callable[[], str]  # the wall clock in use: "system" | "gps" | "unsynced"
    broker: Callable[[], str] | None = None  # host:port of the MQTT broker in use


class Presenter:
    def __init__(
        self,
        sources: Sources,
        leds: list[Callable[[LedMode], object]],
        publish: Callable[[], None],
        connected: Callable[[], bool],
    ) -> None:
        self.sources = sources
        self._leds = leds  # the CAN frame, and the serial module when there is one
        self._publish = publish
        self._connected = connected
        self.led_mode = LedMode.OFF
        self._last_status: dict[str, Any] | None = None

    def status(self, state: str) -> dict[str, Any]:
        parts = self.sources
        incident = parts.incidents.incident
        oldest = parts.outbox.oldest_age_s() if parts.outbox.is_open else None
        counters: dict[str, int] = {}
        for prefix, counted in parts.counted.items():
            for part in counted:
                counters.update({prefix + k: v for k, v in part.counters.items()})
        return build_status(
            state,
            since=parts.since(),
            version=__version__,
            button=parts.button.health,
            gps=parts.location.gps_state,
            can=parts.can.state,
            open_incident=incident.incident_id if incident else None,
            outbox_pending=parts.outbox.count() if parts.outbox.is_open else 0,
            oldest_pending_s=oldest,
            storage=parts.outbox.storage,
            clock=parts.clock(),
            broker=parts.broker() if parts.broker is not None else None,
            counters=counters,
        )

    def health(self) -> str:
        """One line for systemd's status: never a position, never personal data."""
        parts = self.sources
        mqtt = "connected" if self._connected() else "retrying"
        pending = parts.outbox.count() if parts.outbox.is_open else 0
        gps = parts.location.gps_state
        memory = ", outbox in memory" if parts.outbox.storage == "memory" else ""
        clock = parts.clock()
        clock = "" if clock == "system" else f", clock {clock}"
        return f"CAN {parts.can.state}, MQTT {mqtt}, GPS {gps}, {pending} pending{memory}{clock}"

    def show(self, mode: LedMode) -> None:
        if mode == self.led_mode:
            return
        self.led_mode = mode
        log.info("LED %s", mode.name.lower())
        for send in self._leds:
            send(mode)

    async def led_cycle(self, send: Callable[[LedMode], None]) -> None:
        while True:
            send(self.led_mode)
            await asyncio.sleep(LED_CYCLE_S)

    def publish_if_changed(self) -> None:
        status = self.status("online")
        comparable = {k: v for k, v in status.items() if k != "oldest_pending_s"}
        if comparable != self._last_status and self._connected():
            self._last_status = comparable
            self._publish()
