"""UDS client for the gateway (SPEC §2): the VIN (``0x22 F190``) and the stored DTCs (``0x19 02``).

ISO 14229 over ISO-TP (ISO 15765-2): request ID 0x7E0, response ID 0x7E8, normal 11-bit
addressing, padding 0xCC. The client shares the agent's CAN bus with the button without
reading it: the agent's one bus reader hands 0x7E8 frames to :meth:`UdsClient.feed` (everything
else stays with the matrix decoder) and the client transmits through the ``send`` function it is
given, the same one that sends the LED frames. So there is one socket, one reader, one set of
kernel filters, and the UDS layer never sees a button frame.

Design: can-isotp's :class:`isotp.TransportLayerLogic` does the ISO-TP work (segmentation,
flow control, sequence numbers, padding), driven without its threads: every :meth:`feed` runs
``process()`` once on the event loop, and completed payloads wake the waiting request. The two
services are encoded and decoded here, in small pure functions. udsoncan's ``Client`` is not
used: it is blocking and owns the request timing (P2/P2*), so it would need a worker thread per
call that cannot be cancelled, plus can-isotp's two threads, with frames handed between
threads in both directions; for two fixed services that is more machinery than the codec.

Deadlines: ``timeout`` bounds the whole exchange. A "responsePending" (NRC 0x78) keeps the
request alive, but the final answer must still come within ``timeout``. Requests are
serialised (one at a time on the diagnostic channel); an answer that does not match the
request (a late answer to an earlier one) is counted and skipped.

DTC format: ``"<code>-<FT>:<ST>"``, e.g. ``"P0A0F-1C:2F"``: the first two bytes as the SAE
J2012 five-character code (letter P/C/B/U from bits 15-14, then four hex digits), the third
byte the failure type, then the status byte, all upper-case hex.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import can
import isotp

from agent.backoff import backoff_delays
from agent.core.vin import vin_problem
from agent.errors import AgentError

__all__ = [
    "COUNTER_NAMES",
    "PADDING",
    "REQUEST_ID",
    "RESPONSE_ID",
    "UdsClient",
    "UdsError",
    "UdsMalformedResponse",
    "UdsNegativeResponse",
    "UdsTimeout",
    "decode_dtc_response",
    "decode_vin_response",
    "dtc_request",
    "format_dtc",
    "vin_request",
]

log = logging.getLogger("agent.uds")
_T = TypeVar("_T")

REQUEST_ID: Final = 0x7E0
RESPONSE_ID: Final = 0x7E8
PADDING: Final = 0xCC

SID_READ_DATA_BY_IDENTIFIER: Final = 0x22
SID_READ_DTC_INFORMATION: Final = 0x19
REPORT_DTC_BY_STATUS_MASK: Final = 0x02
DID_VIN: Final = 0xF190
NEGATIVE_RESPONSE: Final = 0x7F
RESPONSE_PENDING: Final = 0x78
POSITIVE_OFFSET: Final = 0x40

#: ISO 14229-1 negative response codes, for messages.
NRC_NAMES: Final = {
    0x10: "generalReject",
    0x11: "serviceNotSupported",
    0x12: "subFunctionNotSupported",
    0x13: "incorrectMessageLengthOrInvalidFormat",
    0x14: "responseTooLong",
    0x21: "busyRepeatRequest",
    0x22: "conditionsNotCorrect",
    0x24: "requestSequenceError",
    0x25: "noResponseFromSubnetComponent",
    0x26: "failurePreventsExecutionOfRequestedAction",
    0x31: "requestOutOfRange",
    0x33: "securityAccessDenied",
    0x72: "generalProgrammingFailure",
    0x78: "requestCorrectlyReceived-ResponsePending",
    0x7E: "subFunctionNotSupportedInActiveSession",
    0x7F: "serviceNotSupportedInActiveSession",
}

COUNTER_NAMES: Final = (
    "requests",  # requests sent
    "answers",  # valid final answers
    "timeouts",  # no final answer within the deadline
    "negative",  # negative responses (other than responsePending)
    "pending",  # responsePending (NRC 0x78) received
    "malformed",  # answers that do not decode (wrong length, bad VIN, ...)
    "unexpected",  # answers that do not belong to the request in flight: skipped
    "unsolicited",  # frames on 0x7E8 while no request was in flight: dropped
    "isotp_errors",  # ISO-TP protocol errors (wrong sequence number, unexpected frame, ...)
    "send_failed",  # the CAN send function refused a frame
)


# -- errors -----------------------------------------------------------------------------------


class UdsError(AgentError):
    """A UDS request failed; the subclass says how."""


class UdsTimeout(UdsError):
    """No final answer within the deadline (ECU silent, asleep, or the bus is down)."""


class UdsNegativeResponse(UdsError):
    """The ECU refused: ``0x7F <service> <nrc>``."""

    def __init__(self, service: int, nrc: int) -> None:
        name = NRC_NAMES.get(nrc, "unknown")
        super().__init__(f"ECU refused service 0x{service:02X}: NRC 0x{nrc:02X} ({name})")
        self.service = service
        self.nrc = nrc


class UdsMalformedResponse(UdsError):
    """An answer to our request that does not decode."""


# -- the two services, pure ---------------------------------------------------------------------


def vin_request() -> bytes:
    return bytes([SID_READ_DATA_BY_IDENTIFIER, DID_VIN >> 8, DID_VIN & 0xFF])


def dtc_request(mask: int) -> bytes:
    if not 0 <= mask <= 0xFF:
        raise ValueError(f"a DTC status mask is one byte, got {mask}")
    return bytes([SID_READ_DTC_INFORMATION, REPORT_DTC_BY_STATUS_MASK, mask])


def decode_vin_response(payload: bytes) -> str:
    """The VIN from ``62 F1 90 <17 bytes>``; raises UdsMalformedResponse."""
    data = payload[3:]
    if len(data) != 17:
        raise UdsMalformedResponse(f"VIN answer has {len(data)} data bytes, expected 17")
    try:
        vin = data.decode("ascii")
    except UnicodeDecodeError:
        raise UdsMalformedResponse(f"VIN answer is not ASCII: {data.hex(' ')}") from None
    problem = vin_problem(vin)
    if problem is not None:
        raise UdsMalformedResponse(f"ECU sent an invalid VIN {vin!r}: {problem}")
    return vin


def format_dtc(dtc: int, status: int) -> str:
    """``0x0A0F1C, 0x2F`` -> ``"P0A0F-1C:2F"`` (SAE J2012 code, failure type, status)."""
    if not (0 <= dtc <= 0xFFFFFF and 0 <= status <= 0xFF):
        raise ValueError(f"a DTC is 3 bytes and its status 1: {dtc:#x}, {status:#x}")
    code = dtc >> 8
    letter = "PCBU"[code >> 14]
    return f"{letter}{(code >> 12) & 0x3:X}{code & 0xFFF:03X}-{dtc & 0xFF:02X}:{status:02X}"


def decode_dtc_response(payload: bytes) -> list[str]:
    """The DTCs from ``59 02 <availability mask> (<3 bytes> <status>)*``, in ECU order."""
    records = payload[3:]
    if len(payload) < 3 or len(records) % 4:
        raise UdsMalformedResponse(
            f"DTC answer of {len(payload)} bytes is not 3 + 4 per DTC: {payload[:16].hex(' ')}"
        )
    return [
        format_dtc(int.from_bytes(records[i : i + 3], "big"), records[i + 3])
        for i in range(0, len(records), 4)
    ]


@dataclass(frozen=True, slots=True)
class _Request:
    name: str  # for messages
    payload: bytes
    echo: bytes  # what a positive answer starts with

    @property
    def service(self) -> int:
        return self.payload[0]


@dataclass(slots=True)
class _Progress:
    pending: bool = False  # the ECU said responsePending at least once


def _classify(request: _Request, answer: bytes) -> str:
    """``"final"``, ``"pending"`` or ``"unrelated"``; raises UdsNegativeResponse."""
    if len(answer) >= 3 and answer[0] == NEGATIVE_RESPONSE and answer[1] == request.service:
        if answer[2] == RESPONSE_PENDING:
            return "pending"
        raise UdsNegativeResponse(request.service, answer[2])
    if answer.startswith(request.echo):
        return "final"
    return "unrelated"


# -- the client ---------------------------------------------------------------------------------

SendFrame = Callable[[int, bytes], bool]


class UdsClient:
    """UDS requests to the gateway over a CAN bus the caller owns and reads.

    ``send(frame_id, data) -> bool`` transmits one classic CAN frame (the agent's
    ``CanInput.send``); the caller hands every received 0x7E8 frame to :meth:`feed`. Both run
    on the event loop thread.
    """

    def __init__(self, send: SendFrame) -> None:
        self._send = send
        self._rx: collections.deque[isotp.CanMessage] = collections.deque()
        self._send_failed = False
        self._layer = isotp.TransportLayerLogic(
            rxfn=self._next_frame,
            txfn=self._transmit,
            address=isotp.Address(
                isotp.AddressingMode.Normal_11bits, txid=REQUEST_ID, rxid=RESPONSE_ID
            ),
            error_handler=self._isotp_error,
            params={
                "tx_padding": PADDING,
                "stmin": 0,
                "blocksize": 0,  # one flow control, then the ECU sends everything
                "wait_func": _no_wait,  # driven by feed(); it never sleeps
            },
        )
        self._lock = asyncio.Lock()
        self._answers: asyncio.Queue[bytes] | None = None  # while a request is in flight
        self._logged: set[str] = set()
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)

    # -- frames in and out ------------------------------------------------------------------

    def feed(self, message: can.Message) -> None:
        """A frame received on the response ID; other IDs and frame kinds are ignored."""
        if (
            message.arbitration_id != RESPONSE_ID
            or message.is_extended_id
            or message.is_error_frame
            or message.is_remote_frame
        ):
            return
        if self._answers is None:
            self.counters["unsolicited"] += 1
            return
        self._rx.append(
            isotp.CanMessage(
                arbitration_id=message.arbitration_id,
                dlc=message.dlc,
                data=bytes(message.data),
                extended_id=False,
                is_fd=message.is_fd,
            )
        )
        self._pump()

    def _next_frame(self, timeout: float) -> isotp.CanMessage | None:
        # can-isotp's receive function; never blocks: frames are queued by feed().
        return self._rx.popleft() if self._rx else None

    def _transmit(self, message: isotp.CanMessage) -> None:
        if not self._send(message.arbitration_id, bytes(message.data)):
            self.counters["send_failed"] += 1
            self._send_failed = True

    def _isotp_error(self, error: Exception) -> None:
        self.counters["isotp_errors"] += 1
        self._log_once("isotp", "ISO-TP error from the gateway: %s", error)

    def _pump(self) -> None:
        self._layer.process(rx_timeout=0.0)
        while (payload := self._layer.recv(block=False)) is not None:
            if self._answers is not None:
                self._answers.put_nowait(bytes(payload))

    # -- requests ---------------------------------------------------------------------------

    async def _exchange(self, request: _Request, timeout: float) -> bytes:
        """Send ``request``; return its final positive answer. Raises UdsError."""
        progress = _Progress()
        try:
            async with asyncio.timeout(timeout), self._lock:
                return await self._in_flight(request, progress)
        except TimeoutError:
            self.counters["timeouts"] += 1
            after = " after responsePending" if progress.pending else ""
            raise UdsTimeout(f"no answer to {request.name} within {timeout:g} s{after}") from None
        except UdsNegativeResponse:
            self.counters["negative"] += 1
            raise

    async def _in_flight(self, request: _Request, progress: _Progress) -> bytes:
        self._layer.reset()  # nothing left over from a request that timed out
        self._rx.clear()
        self._send_failed = False
        answers = self._answers = asyncio.Queue()
        try:
            self._layer.send(request.payload)
            self._pump()
            self.counters["requests"] += 1
            if self._send_failed:
                raise UdsError(f"cannot send {request.name}: the CAN bus is down")
            while True:
                answer = await answers.get()
                verdict = _classify(request, answer)
                if verdict == "final":
                    return answer
                if verdict == "pending":
                    progress.pending = True
                    self.counters["pending"] += 1
                else:
                    self.counters["unexpected"] += 1
                    log.debug("skipped an answer to another request: %s", answer[:8].hex(" "))
        finally:
            self._answers = None
            self._layer.reset()

    async def read_vin(self, timeout: float = 1.0) -> str:
        """The VIN (``0x22 F190``), validated as ISO 3779. Raises UdsError."""
        request = _Request(
            "ReadDataByIdentifier F190 (VIN)", vin_request(), bytes([0x62, 0xF1, 0x90])
        )
        answer = await self._exchange(request, timeout)
        return self._decoded(decode_vin_response, answer)

    async def read_dtcs(self, mask: int = 0xFF, timeout: float = 0.3) -> list[str]:
        """Stored DTCs whose status matches ``mask`` (``0x19 02``), formatted as above."""
        request = _Request(
            f"ReadDTCInformation 02 mask 0x{mask:02X}", dtc_request(mask), bytes([0x59, 0x02])
        )
        answer = await self._exchange(request, timeout)
        return self._decoded(decode_dtc_response, answer)

    def _decoded(self, decode: Callable[[bytes], _T], answer: bytes) -> _T:
        try:
            value = decode(answer)
        except UdsMalformedResponse as exc:
            self.counters["malformed"] += 1
            self._log_once("malformed", "malformed UDS answer: %s", exc)
            raise
        self.counters["answers"] += 1
        return value

    async def read_vin_with_retry(
        self,
        *,
        timeout: float = 1.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        rng: random.Random | None = None,
    ) -> str:
        """Read the VIN until it works: capped, jittered backoff between attempts, forever.

        For a start-up task: until it returns, the agent uses the VIN from its config.
        """
        delays = backoff_delays(backoff_base, backoff_cap, rng)
        attempts = 0
        while True:
            attempts += 1
            try:
                vin = await self.read_vin(timeout)
            except UdsError as exc:
                level = logging.WARNING if attempts == 1 else logging.DEBUG
                log.log(level, "reading the VIN over UDS failed (attempt %d): %s", attempts, exc)
            else:
                if attempts > 1:
                    log.info("read the VIN over UDS after %d attempts", attempts)
                return vin
            await asyncio.sleep(next(delays))

    def _log_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(message, *args)


def _no_wait(seconds: float) -> None:
    return None
