"""CAN adapter: python-can in, typed frames out; LED frames back onto the bus.

Works on any interface python-can supports. A bus with a file descriptor (SocketCAN) is read
with ``loop.add_reader``; one without (``virtual``, some vendor drivers) by a reader thread that
hands each message to the loop. Kernel filters restrict the socket to the matrix IDs the agent
uses. A bus that fails (interface down, bus-off, driver error) is closed and reopened with
capped, jittered backoff; the agent keeps running meanwhile.

Controller trouble: on SocketCAN the raw socket asks for error frames (``CAN_RAW_ERR_FILTER``
with :data:`agent.core.controller.ERROR_FILTER`: bus-off, controller problems, restarted),
and :class:`agent.core.controller.ControllerTracker` turns them into the state the status
shows (``ok``, ``error_passive``, ``bus_off``, ``down``). The kernel restarts a bus-off
controller after ``restart-ms`` (``systemd/80-can0.network``: ``RestartSec=100ms``) and says
so with a ``CAN_ERR_RESTARTED`` frame. A bus-off that lasts :data:`BUS_OFF_REOPEN_S` (no
``restart-ms`` set) makes the agent reopen the bus with backoff: other python-can interfaces
initialise their controller on open; on SocketCAN the state stays ``bus_off`` until a restart
or a valid frame proves otherwise. Every recovery calls ``on_recovered`` (the E2E receivers
are reset there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can

from agent.backoff import backoff_delays
from agent.config import CanConfig
from agent.core.controller import (
    BUS_OFF,
    ERROR_FILTER,
    ControllerTracker,
    ErrorFrame,
    Transition,
)
from agent.errors import BusError

log = logging.getLogger("agent.can")

MessageHandler = Callable[[can.Message], None]

IFF_UP = 0x1
CANFD_MTU = 72
_CAN_FRAME = struct.Struct("=IB3x8s")  # struct can_frame
_CANFD_FRAME = struct.Struct("=IBB2x64s")  # struct canfd_frame
_EFF, _RTR, _ERR = 0x80000000, 0x40000000, 0x20000000
SOL_CAN_RAW = getattr(socket, "SOL_CAN_RAW", 101)
CAN_RAW_ERR_FILTER = getattr(socket, "CAN_RAW_ERR_FILTER", 2)


def _message(raw: bytes) -> can.Message:
    """A python-can Message from a raw SocketCAN frame (classic or FD)."""
    if len(raw) == _CAN_FRAME.size:
        can_id, length, data = _CAN_FRAME.unpack(raw)
        fd = False
    else:
        can_id, length, _flags, data = _CANFD_FRAME.unpack(raw)
        fd = True
    return can.Message(
        # an error frame's id is its class mask (up to 29 bits), whatever the EFF flag says
        arbitration_id=can_id & (0x1FFFFFFF if can_id & (_EFF | _ERR) else 0x7FF),
        is_extended_id=bool(can_id & _EFF),
        is_remote_frame=bool(can_id & _RTR),
        is_error_frame=bool(can_id & _ERR),
        is_fd=fd,
        dlc=length,
        data=data[:length],
        check=False,
    )


HEALTHY_S = 5.0  # a bus that stayed up this long resets the reopen backoff
BUS_OFF_REOPEN_S = 2.0  # a bus-off the kernel did not restart within this is reopened


class BusOffTimeout(BusError):
    """The controller stayed bus-off: no ``restart-ms`` restarted it."""


def set_error_filter(bus: can.BusABC, mask: int) -> bool:
    """Ask a SocketCAN raw socket for the error frames of ``mask``; False on other buses."""
    sock = getattr(bus, "socket", None)
    if not isinstance(sock, socket.socket) or sock.family != getattr(socket, "AF_CAN", -1):
        return False
    try:
        sock.setsockopt(SOL_CAN_RAW, CAN_RAW_ERR_FILTER, struct.pack("=I", mask))
    except OSError as exc:
        raise BusError(f"cannot set the CAN error filter on {bus.channel_info}: {exc}") from exc
    return True


def open_bus(
    interface: str, channel: str, bitrate: int, filters: list[int] | None = None, **extra: Any
) -> can.BusABC:
    """Open a python-can bus, translating its errors; ``filters`` become kernel filters."""
    can_filters = (
        None
        if filters is None
        else [{"can_id": fid, "can_mask": 0x7FF, "extended": False} for fid in filters]
    )
    try:
        return can.Bus(
            interface=interface, channel=channel, bitrate=bitrate, can_filters=can_filters, **extra
        )
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        raise BusError(f"cannot open CAN {interface}:{channel}: {exc}") from exc


class BusReader:
    """Deliver every message of ``bus`` to ``handler`` on the event loop; report failure once."""

    def __init__(self, bus: can.BusABC, handler: MessageHandler) -> None:
        self.bus = bus
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self.failed: asyncio.Future[BaseException] = self._loop.create_future()
        self._fd = -1
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        try:
            self._fd = bus.fileno()
        except NotImplementedError:
            self._fd = -1
        # SocketCAN: read the socket directly. python-can's recv() costs a select(), a
        # recvmsg() and two clock reads per frame; at a full bus that was most of our CPU.
        self._sock: socket.socket | None = None
        sock = getattr(bus, "socket", None)
        if isinstance(sock, socket.socket) and sock.family == getattr(socket, "AF_CAN", -1):
            sock.setblocking(False)
            self._sock = sock
        if self._sock is not None:
            self._loop.add_reader(self._fd, self._readable_raw)
        elif self._fd >= 0:
            self._loop.add_reader(self._fd, self._readable)
        else:
            self._thread = threading.Thread(
                target=self._run_thread, name=f"can-reader-{bus.channel_info}", daemon=True
            )
            self._thread.start()

    def _readable(self) -> None:
        try:
            # Drain what is queued: one wake-up may cover several frames.
            for _ in range(64):
                message = self.bus.recv(0)
                if message is None:
                    break
                self._handler(message)
        except (can.CanError, OSError, ValueError) as exc:
            self._fail(exc)

    def _readable_raw(self) -> None:
        assert self._sock is not None
        recv = self._sock.recv
        try:
            for _ in range(256):  # drain, but let the loop breathe at a full bus
                try:
                    raw = recv(CANFD_MTU)
                except BlockingIOError:
                    break
                self._handler(_message(raw))
        except (OSError, ValueError, struct.error) as exc:
            self._fail(exc)

    def _run_thread(self) -> None:
        while not self._stopping.is_set():
            try:
                message = self.bus.recv(0.1)
            except (can.CanError, OSError, ValueError) as exc:
                if not self._stopping.is_set():
                    self._loop.call_soon_threadsafe(self._fail, exc)
                return
            if message is not None:
                try:
                    self._loop.call_soon_threadsafe(self._handler, message)
                except RuntimeError:  # loop closed
                    return

    def fail(self, exc: BaseException) -> None:
        """Stop reading and report ``exc`` as the bus's failure (the owner reopens it)."""
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
        if not self.failed.done():
            self.failed.set_result(exc)

    def stop(self) -> None:
        """Stop reading (safe to call twice); the bus itself stays open."""
        self._stopping.set()
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
            self._thread = None


class CanInput:
    """The agent's CAN connection: filtered reception, LED transmission, reopen on failure."""

    def __init__(
        self,
        cfg: CanConfig,
        filters: list[int],
        on_message: MessageHandler,
        on_state: Callable[[str], None],
        *,
        on_recovered: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.filters = filters
        self._on_message = on_message
        self._on_state = on_state
        self._on_recovered = on_recovered
        self._rng = rng or random.Random()
        self._bus: can.BusABC | None = None
        self._reader: BusReader | None = None
        self._bus_off_timer: asyncio.TimerHandle | None = None
        self.controller = ControllerTracker()
        self._counters: dict[str, int] = {}
        self._in_outage = False

    @property
    def state(self) -> str:
        """``unknown``, ``ok``, ``error_passive``, ``bus_off`` or ``down``."""
        return self.controller.state

    @property
    def counters(self) -> dict[str, int]:
        return {**self._counters, **self.controller.counters}

    def _count(self, name: str) -> None:
        self._counters[name] = self._counters.get(name, 0) + 1

    def _apply(self, transition: Transition | None) -> None:
        if transition is None:
            return
        state = transition.state
        if state == BUS_OFF:
            log.warning("CAN %s:%s is bus-off", self.cfg.interface, self.cfg.channel)
            self._arm_bus_off_timer()
        elif self._bus_off_timer is not None:
            self._bus_off_timer.cancel()
            self._bus_off_timer = None
        if transition.recovered:
            log.info("CAN %s:%s recovered: %s", self.cfg.interface, self.cfg.channel, state)
            self._count("can_recoveries")
            if self._on_recovered is not None:
                self._on_recovered()
        self._on_state(state)

    def _arm_bus_off_timer(self) -> None:
        if self._bus_off_timer is not None or self._reader is None:
            return
        reader = self._reader

        def expired() -> None:
            self._bus_off_timer = None
            if self.state == BUS_OFF and reader is self._reader:
                reader.fail(BusOffTimeout(f"bus-off for {BUS_OFF_REOPEN_S:g} s, not restarted"))

        self._bus_off_timer = asyncio.get_running_loop().call_later(BUS_OFF_REOPEN_S, expired)

    def send(self, frame_id: int, data: bytes) -> bool:
        bus = self._bus
        if bus is None:
            self._count("send_no_bus")
            return False
        try:
            bus.send(can.Message(arbitration_id=frame_id, data=data, is_extended_id=False), 0)
        except (can.CanError, OSError) as exc:
            self._count("send_failed")
            log.debug("CAN send of 0x%03X failed: %s", frame_id, exc)
            return False
        return True

    def _receive(self, message: can.Message) -> None:
        if message.is_error_frame:
            self._count("error_frames")
            error = ErrorFrame.decode(message.arbitration_id, message.data)
            self._apply(self.controller.error_frame(error))
            return
        # A data or remote frame: the controller receives (back from a bus-off, if it was).
        if self.controller.state == BUS_OFF:
            self._apply(self.controller.valid_frame())
        if message.is_remote_frame or message.is_extended_id or message.is_fd:
            self._count("foreign_frames")
            return
        self._on_message(message)

    def _link_problem(self) -> str | None:
        """Why a SocketCAN interface cannot carry frames now (down or missing), or None.

        Opening a socket on an interface that is down succeeds, so "open" is not "ok".
        """
        if self.cfg.interface != "socketcan":
            return None
        try:
            flags = int(Path(f"/sys/class/net/{self.cfg.channel}/flags").read_text(), 16)
        except (OSError, ValueError):
            return f"no interface {self.cfg.channel}"
        return None if flags & IFF_UP else f"{self.cfg.channel} is down"

    def _outage(self, reason: object) -> None:
        self._apply(self.controller.failed())
        if not self._in_outage:
            self._in_outage = True
            log.warning(
                "CAN %s:%s unusable: %s; retrying", self.cfg.interface, self.cfg.channel, reason
            )

    def _open(self) -> can.BusABC:
        bus = open_bus(self.cfg.interface, self.cfg.channel, self.cfg.bitrate, self.filters)
        try:
            set_error_filter(bus, ERROR_FILTER)
        except BusError:
            with contextlib.suppress(can.CanError, OSError):
                bus.shutdown()
            raise
        return bus

    async def run(self) -> None:
        """Open the bus and read it; on failure close, back off, reopen: until cancelled."""
        delays = backoff_delays(0.2, 5.0, self._rng)
        while True:
            problem = self._link_problem()
            if problem is not None:
                self._outage(problem)
            else:
                try:
                    bus = self._open()
                except BusError as exc:
                    self._outage(exc)
                else:
                    self._bus = bus
                    reader = self._reader = BusReader(bus, self._receive)
                    opened = time.monotonic()
                    # Reopening a SocketCAN socket does not restart its controller.
                    self._apply(self.controller.opened(keeps_controller=self._socketcan))
                    if self._in_outage:
                        self._in_outage = False
                        log.info("CAN %s:%s open again", self.cfg.interface, self.cfg.channel)
                    else:
                        log.info("CAN %s:%s open", self.cfg.interface, self.cfg.channel)
                    if self.state == BUS_OFF:
                        self._arm_bus_off_timer()
                    try:
                        failure = await reader.failed
                    finally:
                        reader.stop()
                        self._reader = None
                        if self._bus_off_timer is not None:
                            self._bus_off_timer.cancel()
                            self._bus_off_timer = None
                        self._bus = None
                        with contextlib.suppress(can.CanError, OSError):
                            bus.shutdown()
                    if time.monotonic() - opened >= HEALTHY_S:
                        delays = backoff_delays(0.2, 5.0, self._rng)  # it was up: start over
                    if isinstance(failure, BusOffTimeout):
                        self._count("bus_off_reopens")
                        log.warning(
                            "CAN %s:%s: %s; reopening (set restart-ms on the interface)",
                            self.cfg.interface,
                            self.cfg.channel,
                            failure,
                        )
                    else:
                        self._count("bus_failures")
                        self._outage(failure)
            await asyncio.sleep(next(delays))

    @property
    def _socketcan(self) -> bool:
        return self.cfg.interface == "socketcan"
