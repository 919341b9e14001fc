"""End-to-end protection of CAN frames (SPEC §2): CRC-8/SAE-J1850 and the alive counter.

Byte 0 of a protected frame is the CRC over bytes 1..7; byte 1 bits 0-3 carry an alive
counter that increments by one (mod 16) on every frame. A receiver rejects a frame whose CRC
is wrong or whose counter repeats the previous one; a jump (lost frames) is accepted.
"""

from __future__ import annotations

from enum import Enum

_POLY = 0x1D


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ _POLY) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc8_sae_j1850(data: bytes | bytearray | memoryview) -> int:
    """CRC-8/SAE-J1850: poly 0x1D, init 0xFF, xor-out 0xFF (check("123456789") == 0x4B)."""
    crc = 0xFF
    for byte in data:
        crc = _TABLE[crc ^ byte]
    return crc ^ 0xFF


def protect(body: bytes | bytearray, counter: int) -> bytes:
    """Return the 8-byte frame for ``body`` (bytes 1..7, byte 1 low nibble is overwritten)."""
    if len(body) != 7:
        raise ValueError(f"an E2E frame body is 7 bytes, got {len(body)}")
    payload = bytearray(body)
    payload[0] = (payload[0] & 0xF0) | (counter & 0x0F)
    return bytes([crc8_sae_j1850(payload), *payload])


class E2EResult(Enum):
    OK = "ok"
    BAD_CRC = "bad_crc"
    REPEATED_COUNTER = "repeated_counter"


class E2EReceiver:
    """Checks CRC and alive counter of one protected frame ID; holds the last counter seen."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def check(self, data: bytes | bytearray) -> E2EResult:
        if crc8_sae_j1850(memoryview(data)[1:8]) != data[0]:
            return E2EResult.BAD_CRC
        counter = data[1] & 0x0F
        if counter == self._last:
            return E2EResult.REPEATED_COUNTER
        self._last = counter
        return E2EResult.OK

    def reset(self) -> None:
        """Forget the last counter (after a bus outage the sender may restart anywhere)."""
        self._last = None


class AliveCounter:
    """The sending side: yields 0, 1, ..., 15, 0, ..."""

    __slots__ = ("_next",)

    def __init__(self, start: int = 0) -> None:
        self._next = start & 0x0F

    def next(self) -> int:
        value = self._next
        self._next = (value + 1) & 0x0F
        return value
