"""CAN adapter: python-can in, typed frames out; LED frames back onto the bus.

Works on any interface python-can supports. A bus with a file descriptor (SocketCAN) is read
with ``loop.add_reader``; one without (``virtual``, some vendor drivers) by a reader thread that
hands each message to the loop. Kernel filters restrict the socket to the matrix IDs the agent
uses. A bus that fails (interface down, bus-off, driver error) is closed and reopened with
capped, jittered backoff; the agent keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
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
from agent.errors import BusError

log = logging.getLogger("agent.can")

MessageHandler = Callable[[can.Message], None]

IFF_UP = 0x1
CANFD_MTU = 72
_CAN_FRAME = struct.Struct("=IB3x8s")  # struct can_frame
_CANFD_FRAME = struct.Struct("=IBB2x64s")  # struct canfd_frame
_EFF, _RTR, _ERR = 0x80000000, 0x40000000, 0x20000000


def _message(raw: bytes) -> can.Message:
    """A python-can Message from a raw SocketCAN frame (classic or FD)."""
    if len(raw) == _CAN_FRAME.size:
        can_id, length, data = _CAN_FRAME.unpack(raw)
        fd = False
    else:
        can_id, length, _flags, data = _CANFD_FRAME.unpack(raw)
        fd = True
    return can.Message(
        arbitration_id=can_id & (0x1FFFFFFF if can_id & _EFF else 0x7FF),
        is_extended_id=bool(can_id & _EFF),
        is_remote_frame=bool(can_id & _RTR),
        is_error_frame=bool(can_id & _ERR),
        is_fd=fd,
        dlc=length,
        data=data[:length],
        check=False,
    )


HEALTHY_S = 5.0  # a bus that stayed up this long resets the reopen backoff


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
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.filters = filters
        self._on_message = on_message
        self._on_state = on_state
        self._rng = rng or random.Random()
        self._bus: can.BusABC | None = None
        self.state = "unknown"
        self.counters: dict[str, int] = {}
        self._in_outage = False

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._on_state(state)

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
            return
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

    def _outage(self, state: str, reason: object) -> None:
        self._set_state(state)
        if not self._in_outage:
            self._in_outage = True
            log.warning(
                "CAN %s:%s unusable: %s; retrying", self.cfg.interface, self.cfg.channel, reason
            )

    async def run(self) -> None:
        """Open the bus and read it; on failure close, back off, reopen: until cancelled."""
        delays = backoff_delays(0.2, 5.0, self._rng)
        while True:
            problem = self._link_problem()
            if problem is not None:
                self._outage("down", problem)
            else:
                try:
                    bus = open_bus(
                        self.cfg.interface, self.cfg.channel, self.cfg.bitrate, self.filters
                    )
                except BusError as exc:
                    self._outage("down", exc)
                else:
                    self._bus = bus
                    reader = BusReader(bus, self._receive)
                    opened = time.monotonic()
                    self._set_state("ok")
                    if self._in_outage:
                        self._in_outage = False
                        log.info("CAN %s:%s open again", self.cfg.interface, self.cfg.channel)
                    else:
                        log.info("CAN %s:%s open", self.cfg.interface, self.cfg.channel)
                    try:
                        failure = await reader.failed
                    finally:
                        reader.stop()
                        self._bus = None
                        with contextlib.suppress(can.CanError, OSError):
                            bus.shutdown()
                    self._count("bus_failures")
                    if time.monotonic() - opened >= HEALTHY_S:
                        delays = backoff_delays(0.2, 5.0, self._rng)  # it was up: start over
                    code = getattr(failure, "errno", None) or getattr(failure, "error_code", None)
                    down = code in (errno.ENETDOWN, errno.ENODEV) or self._link_problem()
                    self._outage("down" if down else "error", failure)
            await asyncio.sleep(next(delays))
