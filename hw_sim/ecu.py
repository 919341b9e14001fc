"""A simulated gateway ECU answering UDS (SPEC §2) on any python-can bus.

It is a server built the way an independent tool would build one, not a mirror of the
agent's client: can-isotp's threaded :class:`isotp.NotifierBasedCanStack` on the ECU's own bus
object (request ID 0x7E0, response ID 0x7E8, normal 11-bit addressing, padding 0xCC) and a
server thread that answers

* ``22 F1 90`` with ``62 F1 90`` and the 17-character VIN,
* ``19 02 <mask>`` with ``59 02 <availability mask>`` and every stored DTC whose status
  matches the mask (3 bytes + status each),
* anything else with a negative response: ``7F <sid> 11`` (service not supported),
  ``12`` (sub-function), ``13`` (length) or ``31`` (DID out of range).

Fault knobs, settable while it runs: :attr:`delay_s` (answer late), :attr:`silent` (never
answer), :attr:`nrc` (refuse every request with that code, e.g. 0x22 or 0x31),
:attr:`pending` (send that many "responsePending" (NRC 0x78), :attr:`pending_interval_s` apart,
before the answer). ``vin`` may be set to anything, bytes included, to send a bad one.

Give it a bus filtered to 0x7E0 when it shares a process with other bus users.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

import can
import isotp

from agent.inputs.can_bus import open_bus
from hw_sim.service import Service

__all__ = ["DEFAULT_DTCS", "DEFAULT_VIN", "REQUEST_ID", "RESPONSE_ID", "SimulatedEcu", "StoredDtc"]

log = logging.getLogger("hw_sim.ecu")

REQUEST_ID = 0x7E0
RESPONSE_ID = 0x7E8
PADDING = 0xCC
DEFAULT_VIN = "YSMFD3KA5PL012345"  # the simulated installation's VIN (hw_sim.scenario)
AVAILABILITY_MASK = 0xFF


@dataclass(frozen=True, slots=True)
class StoredDtc:
    dtc: int  # 3 bytes: SAE J2012 code (2 bytes) and failure type
    status: int  # ISO 14229 status byte


DEFAULT_DTCS = (
    StoredDtc(0x0A0F1C, 0x2F),  # P0A0F-1C: engine/propulsion failed to start, confirmed
    StoredDtc(0xC10000, 0x09),  # U0100-00: lost communication with the powertrain, pending
    StoredDtc(0x056200, 0x28),  # P0562-00: system voltage low, stored earlier
)


class SimulatedEcu(Service):
    """``async with SimulatedEcu(bus) as ecu:`` answers UDS until the block ends."""

    def __init__(
        self,
        bus: can.BusABC,
        *,
        vin: str | bytes = DEFAULT_VIN,
        dtcs: tuple[StoredDtc, ...] = DEFAULT_DTCS,
    ) -> None:
        self.bus = bus
        self.vin = vin
        self.dtcs = dtcs
        self.delay_s = 0.0
        self.silent = False
        self.nrc: int | None = None
        self.pending = 0
        self.pending_interval_s = 0.05
        self.requests: list[bytes] = []  # every request payload received, in order
        self._notifier: can.Notifier | None = None
        self._stack: isotp.NotifierBasedCanStack | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._received = threading.Condition()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Answer UDS requests from now on, on threads of its own."""
        await asyncio.to_thread(self._start_threads)

    async def aclose(self) -> None:
        """Stop answering (safe to call twice); the bus stays open, it is the caller's."""
        # Joining threads blocks for up to a read timeout: not on the event loop.
        await asyncio.to_thread(self._stop_threads)

    def _start_threads(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the ECU is already running")
        self._stop.clear()
        self._notifier = can.Notifier(self.bus, [], timeout=0.05)
        self._stack = isotp.NotifierBasedCanStack(
            self.bus,
            self._notifier,
            address=isotp.Address(
                isotp.AddressingMode.Normal_11bits, txid=RESPONSE_ID, rxid=REQUEST_ID
            ),
            params={"tx_padding": PADDING, "stmin": 0, "blocksize": 0},
            read_timeout=0.05,
        )
        self._stack.start()
        self._thread = threading.Thread(target=self._serve, name="sim-ecu", daemon=True)
        self._thread.start()

    def _stop_threads(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._stack is not None:
            self._stack.stop()
            self._stack = None
        if self._notifier is not None:
            self._notifier.stop(timeout=5.0)
            self._notifier = None

    # -- serving ----------------------------------------------------------------------------

    def _serve(self) -> None:
        stack = self._stack
        assert stack is not None
        while not self._stop.is_set():
            payload = stack.recv(block=True, timeout=0.05)
            if payload is None:
                continue
            request = bytes(payload)
            with self._received:
                self.requests.append(request)
                self._received.notify_all()
            if self.silent:
                continue
            if self.delay_s > 0 and self._stop.wait(self.delay_s):
                return
            sid = request[0] if request else 0
            for _ in range(self.pending):
                self._send(stack, bytes([0x7F, sid, 0x78]))
                if self._stop.wait(self.pending_interval_s):
                    return
            self._send(stack, self.answer(request))

    def _send(self, stack: isotp.NotifierBasedCanStack, payload: bytes) -> None:
        try:
            stack.send(payload)
        except (RuntimeError, ValueError) as exc:  # queue full, too long: a simulator bug
            log.error("simulated ECU cannot send %s: %s", payload[:8].hex(" "), exc)

    def answer(self, request: bytes) -> bytes:
        """The ECU's answer to one request payload (the fault knobs ``nrc`` included)."""
        if not request:
            return bytes([0x7F, 0x00, 0x13])
        sid = request[0]
        if self.nrc is not None:
            return bytes([0x7F, sid, self.nrc])
        if sid == 0x22:
            if len(request) != 3:
                return bytes([0x7F, sid, 0x13])
            if request[1:3] != b"\xf1\x90":
                return bytes([0x7F, sid, 0x31])
            vin = self.vin.encode("ascii") if isinstance(self.vin, str) else self.vin
            return b"\x62\xf1\x90" + vin
        if sid == 0x19:
            if len(request) < 2:
                return bytes([0x7F, sid, 0x13])
            if request[1] != 0x02:
                return bytes([0x7F, sid, 0x12])
            if len(request) != 3:
                return bytes([0x7F, sid, 0x13])
            mask = request[2]
            records = b"".join(
                d.dtc.to_bytes(3, "big") + bytes([d.status]) for d in self.dtcs if d.status & mask
            )
            return bytes([0x59, 0x02, AVAILABILITY_MASK]) + records
        return bytes([0x7F, sid, 0x11])

    def wait_requests(self, count: int, timeout: float) -> bool:
        """Block until ``count`` requests have arrived (for threads; tests use the async one)."""
        with self._received:
            return self._received.wait_for(lambda: len(self.requests) >= count, timeout)

    async def wait_for_requests(self, count: int, timeout: float = 5.0) -> None:
        if not await asyncio.to_thread(self.wait_requests, count, timeout):
            raise TimeoutError(f"the ECU saw {len(self.requests)} requests, not {count}")


async def run_ecu(interface: str, channel: str, *, vin: str = DEFAULT_VIN) -> None:
    """``hw-sim ecu``: the gateway's UDS server on ``interface:channel`` until cancelled."""
    bus = open_bus(interface, channel, 500_000, [REQUEST_ID])
    try:
        async with SimulatedEcu(bus, vin=vin):
            print(f"gateway ECU (UDS 0x7E0/0x7E8) on {interface}:{channel}", flush=True)
            await asyncio.Event().wait()
    finally:
        bus.shutdown()
