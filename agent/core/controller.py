"""The CAN controller's state, from SocketCAN error frames and what the bus delivers.

Pure: values in, transitions out. Linux reports a controller's trouble as error frames
(``linux/can/error.h``): the id carries ``CAN_ERR_FLAG`` and a class bit mask, ``data[1]``
details a controller problem. The agent asks the kernel for three classes only
(:data:`ERROR_FILTER`): bus-off, controller problems (warning, passive, overflow, back to
active) and "restarted" (the kernel's ``restart-ms`` brought the controller back).

States (the status topic's ``can``): ``ok``; ``error_passive`` (the controller still
receives, but its error counters passed 127); ``bus_off`` (it neither sends nor receives
until restarted); ``down`` (the interface is down or missing, the socket failed and is being
reopened). ``unknown`` until the bus was opened once.

Recovery from bus-off: a ``CAN_ERR_RESTARTED`` frame, a valid frame received (a controller
that recovered by itself, or a virtual bus with no controller at all), or a reopen after the
interface was down. Each recovery is reported, so the E2E receivers can be reset: frames were
missed, and an alive counter that happens to repeat across the gap is no error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

CAN_ERR_FLAG: Final = 0x20000000
CAN_ERR_MASK: Final = 0x1FFFFFFF

# error classes (the id's bits)
CAN_ERR_TX_TIMEOUT: Final = 0x001
CAN_ERR_LOSTARB: Final = 0x002
CAN_ERR_CRTL: Final = 0x004
CAN_ERR_PROT: Final = 0x008
CAN_ERR_TRX: Final = 0x010
CAN_ERR_ACK: Final = 0x020
CAN_ERR_BUSOFF: Final = 0x040
CAN_ERR_BUSERROR: Final = 0x080
CAN_ERR_RESTARTED: Final = 0x100
CAN_ERR_CNT: Final = 0x200

# data[1] of a CAN_ERR_CRTL frame
CAN_ERR_CRTL_RX_OVERFLOW: Final = 0x01
CAN_ERR_CRTL_TX_OVERFLOW: Final = 0x02
CAN_ERR_CRTL_RX_WARNING: Final = 0x04
CAN_ERR_CRTL_TX_WARNING: Final = 0x08
CAN_ERR_CRTL_RX_PASSIVE: Final = 0x10
CAN_ERR_CRTL_TX_PASSIVE: Final = 0x20
CAN_ERR_CRTL_ACTIVE: Final = 0x40

#: what the agent's raw socket asks for (``CAN_RAW_ERR_FILTER``)
ERROR_FILTER: Final = CAN_ERR_BUSOFF | CAN_ERR_CRTL | CAN_ERR_RESTARTED

OK: Final = "ok"
ERROR_PASSIVE: Final = "error_passive"
BUS_OFF: Final = "bus_off"
DOWN: Final = "down"
UNKNOWN: Final = "unknown"
STATES: Final = (OK, ERROR_PASSIVE, BUS_OFF, DOWN)

#: the counters :class:`ControllerTracker` keeps (zero ones are left out of the status)
COUNTER_NAMES: Final = (
    "can_err_bus_off",  # error frames with CAN_ERR_BUSOFF
    "can_err_restarted",  # ... CAN_ERR_RESTARTED
    "can_err_passive",  # ... CAN_ERR_CRTL, RX or TX passive
    "can_err_warning",  # ... CAN_ERR_CRTL, RX or TX warning
    "can_err_overflow",  # ... CAN_ERR_CRTL, RX or TX buffer overflow
    "can_err_active",  # ... CAN_ERR_CRTL, back to error active
    "can_err_other",  # error frames of classes the filter does not ask for
    "bus_off_episodes",  # times the controller went bus-off
    "bus_off_recoveries",  # times it came back (restarted, valid frames, reopened)
    "can_restarts",  # of those, by the kernel (CAN_ERR_RESTARTED)
)


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """One decoded error frame: its class bits and the controller detail byte."""

    classes: int
    controller: int

    @classmethod
    def decode(cls, can_id: int, data: bytes | bytearray) -> ErrorFrame:
        """From the id (``CAN_ERR_FLAG`` optional) and the data (short data is zero-filled)."""
        return cls(can_id & CAN_ERR_MASK, data[1] if len(data) > 1 else 0)


@dataclass(frozen=True, slots=True)
class Transition:
    """The state changed to ``state``; ``recovered``: back from bus-off or down."""

    state: str
    recovered: bool = False


@dataclass
class ControllerTracker:
    """The controller's state, fed with error frames, valid frames, opens and failures."""

    state: str = UNKNOWN
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))

    def _count(self, name: str) -> None:
        self.counters[name] += 1

    def _to(self, state: str) -> Transition | None:
        if state == self.state:
            return None
        previous, self.state = self.state, state
        recovered = previous in (BUS_OFF, DOWN) and state in (OK, ERROR_PASSIVE)
        if recovered and previous == BUS_OFF:
            self._count("bus_off_recoveries")
        return Transition(state, recovered)

    def error_frame(self, frame: ErrorFrame) -> Transition | None:
        """An error frame arrived; the transition it causes, if any."""
        classes, crtl = frame.classes, frame.controller
        if not classes & ERROR_FILTER:
            self._count("can_err_other")
        if classes & CAN_ERR_CRTL:
            if crtl & (CAN_ERR_CRTL_RX_PASSIVE | CAN_ERR_CRTL_TX_PASSIVE):
                self._count("can_err_passive")
            if crtl & (CAN_ERR_CRTL_RX_WARNING | CAN_ERR_CRTL_TX_WARNING):
                self._count("can_err_warning")
            if crtl & (CAN_ERR_CRTL_RX_OVERFLOW | CAN_ERR_CRTL_TX_OVERFLOW):
                self._count("can_err_overflow")
            if crtl & CAN_ERR_CRTL_ACTIVE:
                self._count("can_err_active")
        if classes & CAN_ERR_BUSOFF:
            self._count("can_err_bus_off")
            if self.state != BUS_OFF:
                self._count("bus_off_episodes")
            return self._to(BUS_OFF)
        if classes & CAN_ERR_RESTARTED:
            self._count("can_err_restarted")
            if self.state == BUS_OFF:
                self._count("can_restarts")
            return self._to(OK)
        if classes & CAN_ERR_CRTL and self.state in (OK, ERROR_PASSIVE):
            if crtl & (CAN_ERR_CRTL_RX_PASSIVE | CAN_ERR_CRTL_TX_PASSIVE):
                return self._to(ERROR_PASSIVE)
            if crtl & CAN_ERR_CRTL_ACTIVE:
                return self._to(OK)
        return None

    def valid_frame(self) -> Transition | None:
        """A data or remote frame arrived: a bus-off controller is receiving again."""
        if self.state == BUS_OFF:
            return self._to(OK)
        return None

    def opened(self, *, keeps_controller: bool) -> Transition | None:
        """The bus was (re)opened on a link that is up.

        ``keeps_controller``: reopening the socket does not restart the controller (SocketCAN
        while the link stayed up), so a bus-off stays until a restart or a valid frame says
        otherwise. Otherwise opening initialises the controller: error active.
        """
        if keeps_controller and self.state in (BUS_OFF, ERROR_PASSIVE):
            return None
        return self._to(OK)

    def failed(self) -> Transition | None:
        """The link is down or missing, or the socket failed: no bus until reopened."""
        return self._to(DOWN)
